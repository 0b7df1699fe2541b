"""Rank-based tiering of one global score vector: the engine behind :func:`fq_alloc.allocate`.

Scopes are ranked by ``(score, global index)``: ascending score, ties broken by the position in the
importance map's flattened order (layer order, then row-major inside a layer), the earlier scope
ranking lower. The scope of rank ``r`` sits at the *midpoint* of its weight in the cumulative
distribution, ``m_r = W_(<r) + w_r / 2`` (``w_r`` = 1 per scope, or its parameter count), and goes
to tier ``k`` = the number of cumulative levels ``c_j`` with ``c_j * W <= m_r``. Each tier boundary
therefore lands within half a scope's weight of its level, so each tier's share is met within one
scope (one scope's parameters).

Two paths compute the same ranks:
* equal weights (``weighting="scopes"``, or every scope the same size, e.g. ``PARAM`` granularity):
  the boundaries are known arithmetically, and one selection (``numpy.partition``, O(N)) finds
  the score at each boundary rank; tiers follow from ``searchsorted`` against those K-1 values
  plus an exact tie correction by index. No full sort: 11.2M scopes cost a fraction of a second.
* unequal weights (``weighting="params"`` at ``CHANNEL``/``TENSOR`` granularity; N is small):
  one stable sort, cumulative parameter counts, and ``searchsorted`` of the levels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class Ranking:
    """Precomputed ranking of ``scores`` (float64 ``[N]``) weighted by ``sizes`` (int ``[N]`` or None)."""

    def __init__(self, scores: torch.Tensor, sizes: torch.Tensor | None = None) -> None:
        self.scores = _as_numpy(scores)
        self.n = int(self.scores.size)
        self.size: int | None = 1
        self._order: np.ndarray | None = None
        if sizes is not None:
            s = sizes.detach().to("cpu", torch.int64).numpy()
            if s.size != self.n:
                raise ValueError(f"sizes has {s.size} entries; scores has {self.n}")
            if s.size and int(s.min()) == int(s.max()):
                self.size = int(s[0])
            else:
                self.size = None
                self._order = np.argsort(self.scores, kind="stable")
                self._cum = np.concatenate([[0], np.cumsum(s[self._order])])  # [N + 1] int64
                # Twice the midpoint, exact in int64 (and in float64 below 2**53).
                self._mid2 = (self._cum[1:] + self._cum[:-1]).astype(np.float64)
        self.total = self.n * self.size if self.size is not None else int(self._cum[-1])

    def cuts(self, levels: Sequence[float]) -> np.ndarray:
        """Tier boundaries: ``cut_k`` = number of scopes whose midpoint lies below ``c_k * W``."""
        target2 = 2.0 * np.asarray(levels, dtype=np.float64) * self.total
        if self.size is not None:
            # midpoint (twice): (2r + 1) * size < target2  <=>  r < (target2 / size - 1) / 2
            y = (target2 / self.size - 1.0) / 2.0
            return np.clip(np.ceil(y), 0, self.n).astype(np.int64)
        return np.searchsorted(self._mid2, target2, side="left").astype(np.int64)

    def tier_mean(self, levels: Sequence[float], values: Sequence[int]) -> float:
        """``sum_k values[k] * W_k / W``, ``W_k`` the weight (scopes or parameters) of tier ``k``
        at ``levels``: the weight-averaged value when every scope of tier ``k`` carries the integer
        ``values[k]`` (e.g. an allocation's average bits), without building the tiers.

        Exact integer sums in plain Python: a search calls it once per try, and numpy's per-call
        overhead on a handful of tiers cost more than the arithmetic.
        """
        cuts = self.cuts(levels)
        upper = (cuts * self.size).tolist() if self.size is not None else self._cum[cuts].tolist()
        acc, prev = 0, 0
        for v, edge in zip(values, [*upper, self.total], strict=True):
            acc += int(v) * (edge - prev)
            prev = edge
        return float(acc) / self.total

    def quantiles(self) -> np.ndarray:
        """Each scope's midpoint ``m_r / W`` in the weighted ranking, float64 ``[N]`` in (0, 1).

        In input order; depends only on the order of the scores (ties by index, as everywhere).
        """
        out = np.empty(self.n, dtype=np.float64)
        if self._order is not None:
            out[self._order] = self._mid2 / (2.0 * self.total)
        else:
            order = np.argsort(self.scores, kind="stable")
            out[order] = (np.arange(self.n, dtype=np.float64) + 0.5) / self.n
        return out

    def tiers(self, levels: Sequence[float]) -> np.ndarray:
        """Tier index (``uint8 [N]``, 0 = least important) of every scope, in input order."""
        cuts = self.cuts(levels)
        if len(cuts) > 255:
            raise ValueError(f"at most 256 tiers are supported; got {len(cuts) + 1}")
        if self._order is not None:
            out = np.empty(self.n, dtype=np.uint8)
            out[self._order] = np.searchsorted(cuts, np.arange(self.n), side="right")
            return out
        return _tiers_by_selection(self.scores, cuts)


def _tiers_by_selection(x: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """``#{k : rank(i) >= cut_k}`` for every ``i``, ranks by ``(x, index)``, without sorting ``x``."""
    n = x.size
    base = int((cuts <= 0).sum())
    inner = cuts[(cuts > 0) & (cuts < n)]
    tier = np.full(n, base, dtype=np.uint8)
    if inner.size == 0:
        return tier
    part = np.partition(x, np.unique(inner))
    values = part[inner]  # score at each boundary rank, nondecreasing
    for v in values:  # a few comparison passes beat a binary search per element
        tier += x > v
    for cut, v in zip(inner.tolist(), values, strict=True):
        # Among scopes equal to v, the first (cut - #{x < v}) by index stay below this boundary.
        equal = np.flatnonzero(x == v)
        below = cut - int(np.count_nonzero(x < v))
        tier[equal[below:]] += 1
    return tier


def _as_numpy(scores: torch.Tensor) -> np.ndarray:
    """CPU numpy view/copy; float32 stays float32 (ranks are exact in the input dtype)."""
    s = scores.detach().to("cpu")
    if s.dtype not in (torch.float32, torch.float64):
        s = s.to(torch.float64)
    return s.contiguous().numpy()
