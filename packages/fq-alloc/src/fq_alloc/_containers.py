"""Budgeted allocation when the budget is the shipped size: each layer pays for its container.

A runtime file stores each layer's codes in one INT4, INT8 or INT16 tensor
(:func:`fq_quant.weight_container`), so every weight costs its layer's container width and a
channel narrower than its container saves nothing. The rule (``cost="container"`` of
:func:`fq_alloc.allocate_to_budget`):

* each layer chooses a container ``c`` (INT4, INT8, INT16, or float when the bits include 32);
  its scopes all get the widest palette width that fits ``c`` (narrower would only lose accuracy);
* the choice maximizes ``sum_l n_l * b_l * u_l`` subject to ``sum_l n_l * w_l <= target * N``
  (``n_l`` weights, ``b_l`` bits and ``w_l`` container width of layer ``l``, ``N`` all weights),
  where ``u_l`` is the layer's mean importance quantile: the parameter-weighted mean over its
  scopes of the scope's midpoint in the global weighted ranking (the same ranking as tiering, so
  only the order of the scores matters). More important layers get the wider containers;
* solved exactly (a multiple-choice knapsack in integer bits, by a Pareto frontier over layers),
  so the container average never exceeds the target; ties go to the narrower container.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import torch
from fq_quant import CONTAINER_BITS, BitAssignment, ImportanceMap, ScopeLayout

from ._ranking import Ranking

_FLOAT = 32


def container_options(bits: Sequence[int]) -> list[tuple[int, int]]:
    """``(container width, bits)`` choices a layer has with palette ``bits``, narrowest first.

    Each container's bits are the widest palette width it holds; a wider container that would
    hold no wider width is left out (it costs more for the same weights).
    """
    coded = sorted(b for b in bits if b < _FLOAT)
    out: list[tuple[int, int]] = []
    for width in CONTAINER_BITS.values():
        fit = [b for b in coded if b <= width]
        if fit and (not out or fit[-1] > out[-1][1]):
            out.append((width, fit[-1]))
    if _FLOAT in bits:
        out.append((_FLOAT, _FLOAT))
    return out


def layer_quantiles(ranking: Ranking, sizes: torch.Tensor, counts: Sequence[int]) -> np.ndarray:
    """Parameter-weighted mean importance quantile of each layer (float64 ``[L]``).

    ``sizes``: parameters per scope in map order; ``counts``: scopes per layer, in map order.
    """
    q = ranking.quantiles() * sizes.numpy().astype(np.float64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    mass = np.add.reduceat(q, starts) if q.size else np.zeros(0)
    params = np.add.reduceat(sizes.numpy().astype(np.float64), starts)
    return mass / params


def choose_containers(
    params: Sequence[int],
    quantiles: np.ndarray,
    options: list[tuple[int, int]],
    capacity: int,
) -> list[int]:
    """Option index per layer maximizing ``sum n_l * b_l * u_l`` with ``sum n_l * w_l <= capacity``.

    Exact: the frontier of (cost, value) pairs over the layers so far, kept Pareto-optimal
    (a pair survives only if no cheaper-or-equal pair has at least its value), and pruned of
    pairs that cannot fit the cheapest choice of the remaining layers. Raises ``ValueError`` when
    even the narrowest container everywhere exceeds ``capacity``.
    """
    n = np.asarray(params, dtype=np.int64)
    widths = np.asarray([w for w, _ in options], dtype=np.int64)
    bits = np.asarray([b for _, b in options], dtype=np.float64)
    suffix_min = np.concatenate([np.cumsum((n * widths[0])[::-1])[::-1], [0]])
    if suffix_min[0] > capacity:
        raise ValueError("infeasible")  # the caller words the message
    cost = np.zeros(1, dtype=np.int64)
    value = np.zeros(1, dtype=np.float64)
    parents: list[tuple[np.ndarray, np.ndarray]] = []
    for layer in range(len(n)):
        k = len(options)
        c = (cost[None, :] + (n[layer] * widths)[:, None]).reshape(-1)
        v = (value[None, :] + (n[layer] * bits * quantiles[layer])[:, None]).reshape(-1)
        src = np.tile(np.arange(cost.size), k)
        opt = np.repeat(np.arange(k), cost.size)
        keep = c + suffix_min[layer + 1] <= capacity
        c, v, src, opt = c[keep], v[keep], src[keep], opt[keep]
        order = np.lexsort((opt, -v, c))  # cost up, value down, narrower option first
        c, v, src, opt = c[order], v[order], src[order], opt[order]
        best_before = np.concatenate([[-np.inf], np.maximum.accumulate(v)[:-1]])
        front = v > best_before
        cost, value = c[front], v[front]
        parents.append((src[front], opt[front]))
    pick = int(np.argmax(value))  # values rise with cost on the frontier: the last, unique max
    choice = [0] * len(n)
    for layer in range(len(n) - 1, -1, -1):
        src, opt = parents[layer]
        choice[layer] = int(opt[pick])
        pick = int(src[pick])
    return choice


def allocate_containers(
    imap: ImportanceMap,
    ranking: Ranking,
    sizes: torch.Tensor,
    layout: ScopeLayout,
    bits: tuple[int, ...],
    target: float,
) -> BitAssignment:
    """The container-cost allocation of the module docstring (inputs already checked)."""
    options = container_options(bits)
    if not options:
        raise ValueError(f"bits={bits} fit no container")
    names = list(imap.scores)
    params = [layout[name].num_params for name in names]
    counts = [imap.scores[name].numel() for name in names]
    total = sum(params)
    # Exact integer budget in bits: floor of the exact product, so the average never exceeds it.
    capacity = math.floor(Fraction(target) * total)
    quantiles = layer_quantiles(ranking, sizes, counts)
    try:
        choice = choose_containers(params, quantiles, options, capacity)
    except ValueError:
        least = options[0][0]
        raise ValueError(
            f"target_avg_bits={target!r} is below the narrowest container: with bits={bits} every "
            f"weight is stored in at least {least} bits (cost='container'); use a target >= "
            f"{least}, or cost='packed' for a sub-byte packed file"
        ) from None
    return BitAssignment(
        imap.granularity,
        {
            name: torch.full(imap.scores[name].shape, options[k][1], dtype=torch.uint8)
            for name, k in zip(names, choice, strict=True)
        },
    )
