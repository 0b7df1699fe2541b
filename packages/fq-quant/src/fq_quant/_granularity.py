"""Quantization granularity: which weights share one bit-width (a *scope*)."""

from __future__ import annotations

from enum import Enum


class Granularity(str, Enum):
    """How a layer's weight ``W`` of shape ``[O, I, kh, kw]`` (conv) or ``[O, I]`` (linear) splits into scopes.

    A scope is the set of weights that share one bit-width. The *scope shape* is the shape of the
    per-layer bit tensor (see :class:`fq_quant.ScopeLayout`):

    ==========  ==============================  =========================================
    value       scopes per layer                scope shape for a conv ``[64, 3, 7, 7]``
    ==========  ==============================  =========================================
    ``TENSOR``  1                               ``(1,)``
    ``CHANNEL`` ``O`` (one per output channel)  ``(64,)``
    ``PARAM``   one per weight element          ``(64, 3, 7, 7)``
    ==========  ==============================  =========================================

    At ``PARAM`` granularity the quantization scale is shared per (output channel, bit-width) group
    (METHOD.md section 1).
    """

    TENSOR = "tensor"
    CHANNEL = "channel"
    PARAM = "param"

    @classmethod
    def parse(cls, value: Granularity | str) -> Granularity:
        """Return ``value`` as a :class:`Granularity`; accepts the enum or its string value."""
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            allowed = ", ".join(repr(g.value) for g in cls)
            raise ValueError(f"granularity must be one of {allowed}; got {value!r}") from None

    def scope_shape(self, weight_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The bit-tensor shape of a weight of ``weight_shape`` at this granularity.

        >>> from fq_quant import Granularity
        >>> [g.scope_shape((64, 3, 7, 7)) for g in Granularity]
        [(1,), (64,), (64, 3, 7, 7)]
        """
        if self is Granularity.TENSOR:
            return (1,)
        if self is Granularity.CHANNEL:
            return (int(weight_shape[0]),)
        return tuple(int(d) for d in weight_shape)
