"""A palette: the bit-widths an allocation may use and the share of scopes (or parameters) per width."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fq_quant import ALLOWED_BITS

#: Tolerance on ``sum(proportions) == 1``.
PROPORTION_TOL = 1e-6


@dataclass(frozen=True)
class Palette:
    """Bit-widths ``b_1 < ... < b_K`` and the proportion ``p_k`` of scopes that get ``b_k`` bits.

    Attributes:
        bits: strictly increasing bit-widths, each in ``fq_quant.ALLOWED_BITS`` (0, 1, 2..16, 32).
        proportions: one share per bit-width, each ``>= 0``, summing to 1 within ``1e-6``.

    Example: ``Palette((2, 4, 8), (0.2, 0.4, 0.4))`` gives the least important 20 % of scopes
    2 bits, the next 40 % 4 bits and the most important 40 % 8 bits (METHOD.md section 5).
    """

    bits: tuple[int, ...]
    proportions: tuple[float, ...]

    def __post_init__(self) -> None:
        bits = _int_tuple(self.bits)
        props = _float_tuple(self.proportions)
        if not bits:
            raise ValueError("bits must name at least one bit-width; got ()")
        bad = [b for b in bits if b not in ALLOWED_BITS]
        if bad:
            raise ValueError(f"bits contain {bad[0]!r}; allowed bit-widths are 0, 1, 2..16 and 32")
        if any(a >= b for a, b in zip(bits, bits[1:], strict=False)):
            raise ValueError(f"bits must be strictly increasing (sorted, unique); got {bits}")
        if len(props) != len(bits):
            raise ValueError(
                f"proportions must have one entry per bit-width ({len(bits)} for bits={bits}); "
                f"got {len(props)}: {props}"
            )
        if any(not math.isfinite(p) or p < 0 for p in props):
            raise ValueError(f"proportions must be finite and >= 0; got {props}")
        total = math.fsum(props)
        if abs(total - 1.0) > PROPORTION_TOL:
            raise ValueError(
                f"proportions must sum to 1 (within {PROPORTION_TOL:g}); got {props} (sum {total!r})"
            )
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "proportions", props)

    @property
    def avg_bits(self) -> float:
        """``sum_k p_k b_k``: the nominal average bits per *scope* (channel at channel granularity).

        The average per *weight*, what the model stores, depends on which scopes get which width:
        ``allocate(...).avg_bits(layout)``. 2/4/8 at 0.2/0.4/0.4 is 5.2 per scope but 3.8 per
        weight on resnet18 and 6.1 on mobilenet_v3. With ``weighting="params"`` the proportions
        count weights, and this is the per-weight average (within one scope).
        """
        return math.fsum(p * b for p, b in zip(self.proportions, self.bits, strict=True))

    @property
    def levels(self) -> tuple[float, ...]:
        """Cumulative levels ``c_k = (p_1 + ... + p_k) / sum p`` for ``k < K`` (the quantile levels)."""
        return cumulative_levels(self.proportions)


def cumulative_levels(proportions: Sequence[float]) -> tuple[float, ...]:
    """:attr:`Palette.levels` of already valid ``proportions`` (``K`` floats >= 0, sum 1), unchecked.

    The one formula of the levels: hot loops that try many proportions (the budget search of
    :func:`fq_alloc.allocate_to_budget`) call it without building and validating a palette each time.
    """
    total = math.fsum(proportions)
    out, acc = [], 0.0
    for p in proportions[:-1]:
        acc += p
        out.append(min(acc / total, 1.0))
    return tuple(out)


def _int_tuple(values: Sequence[int] | int) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"bits must be a sequence of ints; got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) and not (hasattr(v, "__index__")):
            raise TypeError(f"bits must be ints; got {v!r} in {values!r}")
        out.append(int(v))
    return tuple(out)


def _float_tuple(values: Sequence[float]) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"proportions must be a sequence of numbers; got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool):
            raise TypeError(f"proportions must be numbers; got {v!r} in {values!r}")
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            raise TypeError(f"proportions must be numbers; got {v!r} in {values!r}") from None
    return tuple(out)
