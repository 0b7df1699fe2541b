"""Final projection of learned continuous bits onto an average-bits budget (METHOD.md sec. 6, ours).

Rule: every scope's continuous bits are shifted by one common offset ``delta`` before rounding,
``b_j = clamp(floor(b_cont_j - delta + 1/2), bit_min, bit_max)``. The parameter-weighted average
is non-increasing in ``delta``; bisection finds the offset where it crosses the target, so the
scopes whose ``b_cont`` lies closest to a rounding boundary (the smallest margin, the ones the
trained model is least committed to) move first. Scopes tied at the crossing (e.g. untrained
scopes sharing one logit) move in layer order, one at a time, stopping where the average is
closest to the target. The error is at most half of one scope's parameter share.
"""

from __future__ import annotations

import torch

_BISECT_STEPS = 80


def _bits_at(b_cont: torch.Tensor, delta: float, lo: int, hi: int) -> torch.Tensor:
    return torch.floor(b_cont - delta + 0.5).clamp_(lo, hi)


def project_to_budget(
    b_cont: torch.Tensor,
    weights: torch.Tensor,
    target: float,
    *,
    bit_min: int,
    bit_max: int,
) -> torch.Tensor:
    """Integer bits per scope whose ``weights``-weighted mean is closest to ``target``.

    Args:
        b_cont: ``[S]`` continuous bits of all scopes (any float dtype).
        weights: ``[S]`` parameters per scope (>= 0, not all 0).
        target: average bits per parameter, in ``[bit_min, bit_max]``.

    Returns:
        ``[S]`` int64 bits in ``[bit_min, bit_max]``.
    """
    b = b_cont.detach().to(torch.float64).reshape(-1)
    w = weights.detach().to(torch.float64).reshape(-1)
    total = float(w.sum())

    def avg(delta: float) -> float:
        return float((_bits_at(b, delta, bit_min, bit_max) * w).sum()) / total

    span = float(bit_max - bit_min) + 1.0
    a = float(b.min()) - bit_max - 1.0  # avg(a) == bit_max >= target
    c = float(b.max()) - bit_min + 1.0  # avg(c) == bit_min <= target
    a, c = min(a, -span), max(c, span)
    if avg(0.0) == target:
        return _bits_at(b, 0.0, bit_min, bit_max).to(torch.int64)
    for _ in range(_BISECT_STEPS):  # invariant: avg(a) >= target > avg(c)
        mid = 0.5 * (a + c)
        if avg(mid) >= target:
            a = mid
        else:
            c = mid
    hi_bits = _bits_at(b, a, bit_min, bit_max)
    lo_bits = _bits_at(b, c, bit_min, bit_max)
    # Scopes that drop between a and c, taken in scope order; choose how many to drop.
    moving = torch.nonzero(hi_bits != lo_bits).reshape(-1)
    drop = (hi_bits - lo_bits)[moving] * w[moving]
    start = float((hi_bits * w).sum()) / total
    avgs = start - torch.cat([torch.zeros(1, dtype=torch.float64), drop.cumsum(0)]) / total
    k = int(torch.argmin((avgs - target).abs()))
    out = hi_bits.clone()
    out[moving[:k]] = lo_bits[moving[:k]]
    return out.to(torch.int64)
