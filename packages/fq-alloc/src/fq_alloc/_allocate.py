"""Quantile tiering (METHOD.md section 5) and its average-bits budget variant."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from fq_quant import BitAssignment, ImportanceMap, ScopeLayout
from torch import nn

from ._containers import allocate_containers
from ._palette import Palette, cumulative_levels
from ._ranking import Ranking

Weighting = Literal["scopes", "params"]
WEIGHTINGS: tuple[str, ...] = ("scopes", "params")
Cost = Literal["packed", "container"]
COSTS: tuple[str, ...] = ("packed", "container")
#: ``allocate_to_budget`` guarantees the parameter-weighted average within this many bits.
BUDGET_TOL = 0.05


def allocate(
    importance_map: ImportanceMap,
    palette: Palette,
    *,
    weighting: Weighting = "scopes",
    layout: ScopeLayout | nn.Module | None = None,
) -> BitAssignment:
    """Give every scope a bit-width from ``palette`` by quantile tiering of its importance.

    All scopes of all layers form one vector ``I``; the least important ``p_1`` share get ``b_1``
    bits, the next ``p_2`` share ``b_2`` bits, and so on (METHOD.md section 5). Ties are broken
    deterministically by the scope's position in the map (layer order, then row-major): of two
    equal scores, the earlier scope ranks lower. So a strictly more important scope never gets
    fewer bits, and the result depends only on the order of the scores (any strictly increasing
    transform of them gives the same assignment).

    Args:
        importance_map: one float score per scope (larger = more important).
        palette: bit-widths and their proportions.
        weighting: ``"scopes"`` counts scopes (the paper): tier ``k`` holds ``p_k * N`` scopes within
            one. ``"params"`` counts parameters: tier ``k`` holds ``p_k`` of the parameters within
            the largest scope's parameter count, so the parameter-weighted average bits is close
            to ``palette.avg_bits``. Needs ``layout``.
        layout: the model's :class:`~fq_quant.ScopeLayout` (or the model itself); when given, the
            map's layers and scope shapes are checked against it.

    Returns:
        A :class:`~fq_quant.BitAssignment` with the map's granularity and layers.
    """
    imap, pal, layout = _check_inputs(importance_map, palette, layout)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}; got {weighting!r}")
    sizes = None
    if weighting == "params":
        if layout is None:
            raise ValueError(
                'weighting="params" needs layout= (the model or its ScopeLayout) for parameter counts'
            )
        sizes = _sizes(imap, layout)
    ranking = Ranking(_flat_scores(imap), sizes)
    return _assignment(imap, ranking.tiers(pal.levels), pal.bits)


def budget_palette(bits: Sequence[int], target_avg_bits: float) -> Palette:
    """The maximum-entropy palette over ``bits`` whose average bits is ``target_avg_bits``.

    Proportions ``p_k ∝ exp(lam * b_k)`` (an exponential tilt of the uniform palette), with
    ``lam`` solved by bisection so that ``sum p_k b_k = target``: every bit-width is used, the
    spread is as wide as the mean allows, and the proportions move smoothly with the target.
    """
    pal, target = _check_budget(bits, target_avg_bits)
    if len(pal.bits) == 1 or target in (pal.bits[0], pal.bits[-1]):
        return _degenerate(pal.bits, target)
    tilt = _Tilt(pal.bits)
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if _mean(pal.bits, tilt(mid)) < target:
            lo = mid
        else:
            hi = mid
    return Palette(pal.bits, tilt((lo + hi) / 2))


def allocate_to_budget(
    importance_map: ImportanceMap,
    bits: Sequence[int] = (2, 3, 4, 5, 6, 7, 8),
    target_avg_bits: float = 4.3,
    *,
    layout: ScopeLayout | nn.Module,
    cost: Cost = "packed",
) -> BitAssignment:
    """Allocate ``bits`` by importance so the parameter-weighted average is ``target_avg_bits``.

    ``cost`` says what the average counts:

    * ``"packed"`` (default): each weight's own bit-width, the size of a sub-byte packed file
      (:func:`fq_quant.export_packed`, :meth:`~fq_quant.BitAssignment.avg_bits`). Rule below.
    * ``"container"``: each weight's storage container width in a runtime file such as
      :func:`fq_quant.export_onnx` (per layer INT4, INT8 or INT16, set by its widest channel:
      :func:`fq_quant.container_avg_bits`). Each layer gets one container and the widest of
      ``bits`` that fits it, more important layers (mean importance quantile) the wider ones,
      chosen exactly so that the container average is at most ``target_avg_bits`` and as close as
      the layers' sizes allow (details: ``fq_alloc._containers``). ``ValueError`` when the target
      is below the narrowest container (4 bits with INT4).

    Rule of ``"packed"``: proportions come from the exponential-tilt family of :func:`budget_palette`
    (``p_k ∝ exp(lam * b_k)``), tiered with ``weighting="params"``. Since the realised average
    is nondecreasing in ``lam`` (the tilt shifts every cumulative level down), ``lam`` is found by
    bisection on the *realised* average of the actual scopes, not the nominal one, so the result
    is as close to the target as this monotone family allows: within ``0.05`` bits (usually far
    closer; at ``CHANNEL`` granularity within one channel's parameters). Raises ``ValueError``
    naming the closest reachable average when no allocation is within ``0.05`` bits (e.g. at
    ``TENSOR`` granularity with one dominant layer).
    """
    pal, target = _check_budget(bits, target_avg_bits)
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}; got {cost!r}")
    if layout is None:
        raise ValueError("layout is required (the model or its ScopeLayout) for parameter counts")
    imap, _, _ = _check_inputs(importance_map, pal, None)
    layout = _check_layout(imap, layout)
    sizes = _sizes(imap, layout)
    ranking = Ranking(_flat_scores(imap), sizes)
    if cost == "container":
        return allocate_containers(imap, ranking, sizes, layout, pal.bits, target)

    def realised(props: tuple[float, ...]) -> float:
        # the tilt's proportions are valid by construction: no Palette to build and check per try
        return ranking.tier_mean(cumulative_levels(props), pal.bits)

    if len(pal.bits) == 1 or target in (pal.bits[0], pal.bits[-1]):
        best = _degenerate(pal.bits, target).proportions
    else:
        tilt = _Tilt(pal.bits)
        lo, hi = -1e3, 1e3
        best, best_err = tilt(lo), math.inf
        for _ in range(100):
            before = (lo, hi)
            mid = (lo + hi) / 2
            props = tilt(mid)
            avg = realised(props)
            if abs(avg - target) < best_err:
                best, best_err = props, abs(avg - target)
            if avg < target:
                lo = mid
            else:
                hi = mid
            # (lo, hi) unchanged: lo and hi are adjacent floats and mid is one of them, so every
            # further try repeats this one (same proportions, no strictly smaller error) and
            # changes nothing; stopping here gives the result of all 100 tries (about 55 in use).
            if best_err < 1e-9 or (lo, hi) == before:
                break
    avg = realised(best)
    if abs(avg - target) > BUDGET_TOL:
        raise ValueError(
            f"target_avg_bits={target!r} cannot be met within {BUDGET_TOL} bits at "
            f"{imap.granularity.value} granularity with bits={pal.bits}: the closest monotone "
            f"allocation averages {avg:.4f} bits (scopes are too coarse; use a finer granularity)"
        )
    return _assignment(imap, ranking.tiers(Palette(pal.bits, best).levels), pal.bits)


# -- helpers ------------------------------------------------------------------------------------
def _check_inputs(
    importance_map: ImportanceMap, palette: Palette, layout: ScopeLayout | nn.Module | None
) -> tuple[ImportanceMap, Palette, ScopeLayout | None]:
    if not isinstance(importance_map, ImportanceMap):
        raise TypeError(
            f"importance_map must be an fq_quant.ImportanceMap; got {type(importance_map).__name__}"
        )
    if not isinstance(palette, Palette):
        raise TypeError(f"palette must be an fq_alloc.Palette; got {type(palette).__name__}")
    if layout is None:
        return importance_map, palette, None
    return importance_map, palette, _check_layout(importance_map, layout)


def _check_layout(imap: ImportanceMap, layout: ScopeLayout | nn.Module) -> ScopeLayout:
    """``layout`` (or the model's layout at the map's granularity), checked against ``imap``."""
    if isinstance(layout, nn.Module):
        layout = ScopeLayout.from_model(layout, imap.granularity)
    if not isinstance(layout, ScopeLayout):
        raise TypeError(
            f"layout must be a ScopeLayout or an nn.Module; got {type(layout).__name__}"
        )
    imap.check(layout)
    return layout


def _sizes(imap: ImportanceMap, layout: ScopeLayout) -> torch.Tensor:
    """Parameters per scope in the map's flattened order, ``int64 [N]``."""
    return torch.cat(
        [
            torch.full((s.numel(),), layout[n].params_per_scope, dtype=torch.int64)
            for n, s in imap.scores.items()
        ]
    )


def _flat_scores(imap: ImportanceMap) -> torch.Tensor:
    """All scores in map order, in their common dtype (float64 if mixed): ordering is exact either way."""
    dtypes = {s.dtype for s in imap.scores.values()}
    dtype = torch.float32 if dtypes == {torch.float32} else torch.float64
    return torch.cat([s.detach().reshape(-1).to("cpu", dtype) for s in imap.scores.values()])


def _assignment(imap: ImportanceMap, tiers: np.ndarray, bits: tuple[int, ...]) -> BitAssignment:
    flat = torch.from_numpy(np.take(np.asarray(bits, dtype=np.uint8), tiers))
    chunks = flat.split([s.numel() for s in imap.scores.values()])
    return BitAssignment(
        imap.granularity,
        {n: c.reshape(s.shape) for (n, s), c in zip(imap.scores.items(), chunks, strict=True)},
    )


def _check_budget(bits: Sequence[int], target_avg_bits: float) -> tuple[Palette, float]:
    if isinstance(bits, (str, bytes)) or not hasattr(bits, "__iter__"):
        raise TypeError(f"bits must be a sequence of ints; got {bits!r}")
    bits_t = tuple(bits)
    if not bits_t:
        raise ValueError("bits is empty; give one or more bit-widths, e.g. (2, 3, 4, 5, 6, 7, 8)")
    n = len(bits_t)
    pal = Palette(bits_t, (1.0 / n,) * n)  # validates the bit-widths
    if isinstance(target_avg_bits, bool) or not isinstance(target_avg_bits, (int, float)):
        raise TypeError(f"target_avg_bits must be a number; got {target_avg_bits!r}")
    target = float(target_avg_bits)
    if not math.isfinite(target) or not pal.bits[0] <= target <= pal.bits[-1]:
        raise ValueError(
            f"target_avg_bits must lie in [{pal.bits[0]}, {pal.bits[-1]}] (the bits' range); got {target_avg_bits!r}"
        )
    return pal, target


class _Tilt:
    """The exponential tilt of ``bits``: ``lam -> p_k ∝ exp(lam * z_k)``, ``z`` the bits scaled to
    [0, 1], shifted by ``max z`` (``lam > 0``) or ``min z`` so the exponent never overflows. The
    shifted ``z`` are computed once: a search calls this for many ``lam``."""

    def __init__(self, bits: tuple[int, ...]) -> None:
        z = np.asarray(bits, dtype=np.float64)
        z = (z - z[0]) / (z[-1] - z[0])
        self._above, self._below = z - z.max(), z - z.min()

    def __call__(self, lam: float) -> tuple[float, ...]:
        w = np.exp(lam * (self._above if lam > 0 else self._below))
        return tuple((w / w.sum()).tolist())


def _mean(bits: tuple[int, ...], props: Sequence[float]) -> float:
    return math.fsum(b * p for b, p in zip(bits, props, strict=True))


def _degenerate(bits: tuple[int, ...], target: float) -> Palette:
    props = [0.0] * len(bits)
    props[0 if target == bits[0] else -1] = 1.0
    return Palette(bits, tuple(props))
