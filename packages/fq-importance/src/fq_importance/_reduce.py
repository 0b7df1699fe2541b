"""Reducing per-group importance maps to one map (METHOD.md section 4)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from fq_quant import ImportanceMap

from ._group_importance import GroupImportance

Reducer = Literal["balanced", "max", "mean", "cvar", "subtractive"]
REDUCERS: tuple[str, ...] = ("balanced", "max", "mean", "cvar", "subtractive")


def reduce(
    group_importance: GroupImportance,
    reducer: Reducer = "balanced",
    *,
    cvar_alpha: float = 0.1,
    beta: float = 1.0,
    privileged: int | None = None,
) -> ImportanceMap:
    """Combine the ``G`` group maps ``I^g`` into one :class:`~fq_quant.ImportanceMap`, per scope.

    Reducers (all groups of ``group_importance`` take part, including a zero-count group):

    * ``"balanced"`` (the paper's default): group mass ``M_g`` = sum of ``I^g`` over all scopes of
      all layers, share ``p_g = M_g / sum M``, ``I = max_g I^g / p_g`` (``p_g = 1/G`` when all mass
      is zero; a group with zero mass contributes 0). Needs non-negative scores.
    * ``"max"``: ``max_g I^g``. ``"mean"``: ``mean_g I^g``.
    * ``"cvar"``: mean of the ``ceil((1 - cvar_alpha) G)`` largest ``I^g`` (``0 <= cvar_alpha < 1``;
      ``0`` is the mean, values near 1 approach the max).
    * ``"subtractive"`` (FairQuantize-style, exactly two groups): ``I = I^unpriv - beta * I^priv``.
      ``privileged`` names the privileged group id; by default the group with more samples in
      ``counts`` (the majority group, the lower id on a tie). May be negative.
    """
    if not isinstance(group_importance, GroupImportance):
        raise TypeError(
            f"group_importance must be a GroupImportance; got {type(group_importance).__name__}"
        )
    if reducer not in REDUCERS:
        raise ValueError(f"reducer must be one of {REDUCERS}; got {reducer!r}")
    gi = group_importance
    stacked = {
        n: torch.stack([gi.importance[g][n] for g in gi.groups]).to(torch.float64)
        for n in gi.layers
    }
    if reducer == "balanced":
        scores = _balanced(stacked)
    elif reducer == "max":
        scores = {n: s.amax(0) for n, s in stacked.items()}
    elif reducer == "mean":
        scores = {n: s.mean(0) for n, s in stacked.items()}
    elif reducer == "cvar":
        k = _cvar_k(cvar_alpha, len(gi.groups))
        scores = {n: s.topk(k, dim=0).values.mean(0) for n, s in stacked.items()}
    else:
        scores = _subtractive(gi, stacked, beta, privileged)
    dtype = next(iter(gi.importance.values()))[gi.layers[0]].dtype
    return ImportanceMap(gi.granularity, {n: s.to(dtype) for n, s in scores.items()})


def _balanced(stacked: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any(bool((s < 0).any()) for s in stacked.values()):
        raise ValueError(
            'reducer "balanced" needs non-negative importances (group masses); got negative scores'
        )
    masses = [s.flatten(1).sum(1) for s in stacked.values()]
    mass = sum(masses[1:], masses[0])  # [G], float64
    total = mass.sum()
    share = mass / total if total > 0 else torch.full_like(mass, 1 / len(mass))
    # A zero-mass group has an all-zero map (scores >= 0): its term is 0, not 0/0.
    inv = torch.where(share > 0, 1 / share, torch.zeros_like(share))
    return {n: (s * inv.reshape(-1, *([1] * (s.dim() - 1)))).amax(0) for n, s in stacked.items()}


def _cvar_k(alpha: float, groups: int) -> int:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < 1:
        raise ValueError(f"cvar_alpha must be a number in [0, 1); got {alpha!r}")
    # round() first so that e.g. (1 - 0.1) * 10 = 9.000000000000002 does not become 10.
    return max(1, math.ceil(round((1 - alpha) * groups, 9)))


def _subtractive(
    gi: GroupImportance, stacked: dict[str, torch.Tensor], beta: float, privileged: int | None
) -> dict[str, torch.Tensor]:
    if len(gi.groups) != 2:
        raise ValueError(
            f'reducer "subtractive" needs exactly two groups; got {len(gi.groups)}: {list(gi.groups)}'
        )
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta):
        raise ValueError(f"beta must be a finite number; got {beta!r}")
    if privileged is None:
        privileged = max(gi.groups, key=lambda g: (gi.counts[g], -g))
    elif privileged not in gi.groups:
        raise ValueError(
            f"privileged must be one of the groups {list(gi.groups)}; got {privileged!r}"
        )
    p = gi.groups.index(privileged)
    return {n: s[1 - p] - beta * s[p] for n, s in stacked.items()}
