"""The scale and rounding arithmetic of METHOD.md section 2, written once.

For a scope with bit-width ``b`` and ``Q_b = 2^(b-1) - 1``:

* ``b >= 2``: scale ``s = max(max|w|, 1e-8) / Q_b``, integer code ``q = round(w / s)`` (ties to
  even; ``|q| <= Q_b`` because ``|w| <= max|w|``), dequantized ``s * q``;
* ``b = 1``: scale ``a = mean|w|``, code ``sign(w)`` in {-1, 0, 1}, dequantized ``a * sign(w)``;
* ``b = 0`` (pruned) and ``b = 32`` (float) carry no code.

Every consumer computes with these functions: the fake-quantizers (:func:`fake_quantize`, the
``FixedBitsQuantizer`` parametrization, fq-baq's learnable-bits kernel), the packed export and any
exporter of integer weights (:func:`quantize_codes`, :func:`dequantize`). A *scope* is one bit
tensor element (see :class:`Granularity`); at ``PARAM`` granularity the scale is shared per
(output channel, bit-width) group, keyed by :func:`param_groups`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._assignment import check_bits
from ._granularity import Granularity

#: Lower bound of ``max|w|`` in the scale ``s = max|w| / Q_b``, so an all-zero scope has ``s > 0``.
SCALE_FLOOR = 1e-8
#: Number of distinct bit codes (0..32) used to key (channel, bit) groups at PARAM granularity.
BIT_CODES = 33
#: The dtype of :func:`quantize_codes`' codes: holds ``[-Q_16, Q_16]``.
CODES_DTYPE = torch.int16


def scope_view(
    t: torch.Tensor, weight_shape: torch.Size | tuple[int, ...], granularity: Granularity
) -> torch.Tensor:
    """Reshape a scope-shaped tensor so that it broadcasts against a weight of ``weight_shape``.

    ``(1,)`` -> ``(1, 1, ...)``; ``(O,)`` -> ``(O, 1, ...)``; a per-parameter tensor is returned as is.

    >>> import torch
    >>> from fq_quant import Granularity, scope_view
    >>> scope_view(torch.zeros(64), (64, 3, 7, 7), Granularity.CHANNEL).shape
    torch.Size([64, 1, 1, 1])
    """
    nd = len(weight_shape)
    if granularity is Granularity.TENSOR:
        return t.reshape((1,) * nd)
    if granularity is Granularity.CHANNEL:
        return t.reshape((weight_shape[0],) + (1,) * (nd - 1))
    return t


def q_levels(bits: torch.Tensor) -> torch.Tensor:
    """``Q_b = 2^(b-1) - 1`` for ``b >= 2`` and 1 elsewhere (where it is unused); keeps bits' grad.

    Float32 for integer ``bits``, ``bits``' dtype otherwise; same shape as ``bits``.

    >>> import torch
    >>> from fq_quant import q_levels
    >>> q_levels(torch.tensor([0, 1, 2, 4, 8]))
    tensor([  1.,   1.,   1.,   7., 127.])
    """
    b = bits if bits.is_floating_point() else bits.to(torch.float32)
    return torch.where(b >= 2, torch.exp2(b - 1) - 1, torch.ones_like(b))


def param_groups(bits: torch.Tensor) -> torch.Tensor:
    """The (output channel, bit-width) group of each weight at ``PARAM`` granularity.

    Args:
        bits: weight-shaped integral bits (any dtype), output channel first.

    Returns:
        ``int64`` tensor of ``bits``' shape holding ``channel * 33 + bit``: weights with equal keys
        share one scale.
    """
    o = bits.shape[0]
    chan = torch.arange(o, device=bits.device).reshape((o,) + (1,) * (bits.dim() - 1))
    return (chan * BIT_CODES + bits.to(torch.int64)).expand(bits.shape).contiguous()


def _group_reduce(values: torch.Tensor, groups: torch.Tensor, how: str) -> torch.Tensor:
    """Reduce ``values`` (weight-shaped) over ``groups`` (same shape) and gather back per element."""
    flat = values.reshape(-1)
    out = torch.zeros(values.shape[0] * BIT_CODES, dtype=values.dtype, device=values.device)
    if how == "amax":
        out.scatter_reduce_(0, groups.reshape(-1), flat, reduce="amax", include_self=True)
    else:  # mean
        out.scatter_reduce_(0, groups.reshape(-1), flat, reduce="mean", include_self=False)
    return out[groups.reshape(-1)].reshape(values.shape)


def _need_groups(groups: torch.Tensor | None) -> torch.Tensor:
    if groups is None:
        raise ValueError("PARAM granularity needs groups= (fq_quant.param_groups(bits))")
    return groups


def scope_absmax(
    weight: torch.Tensor, granularity: Granularity, groups: torch.Tensor | None = None
) -> torch.Tensor:
    """``max |w|`` over each scope (no gradient), broadcastable to ``weight``, in its dtype.

    ``(1, 1, ...)`` per tensor, ``(O, 1, ...)`` per channel; weight-shaped per parameter, where the
    maximum runs over each (channel, bit) group of ``groups`` (:func:`param_groups`).
    """
    a = weight.detach()
    # max(amax, -amin): two vectorized reductions and no weight-sized temporary, unlike
    # abs().amax() (the reduction runs every training forward).
    if granularity is Granularity.TENSOR:
        return torch.maximum(a.amax(), a.amin().neg()).reshape((1,) * a.dim())
    if granularity is Granularity.CHANNEL:
        rows = a.reshape(a.shape[0], -1)
        out = torch.maximum(rows.amax(dim=1), rows.amin(dim=1).neg_())
        return out.reshape((a.shape[0],) + (1,) * (a.dim() - 1))
    return _group_reduce(a.abs(), _need_groups(groups), "amax")


def scope_absmean(
    weight: torch.Tensor, granularity: Granularity, groups: torch.Tensor | None = None
) -> torch.Tensor:
    """``mean |w|`` over each scope (the 1-bit scale ``a``), shaped as :func:`scope_absmax`.

    Accumulated in float64 (where the device has it) and returned in ``weight``'s dtype: the mean
    of ``n`` copies of one float32 value is then exactly that value, so 1-bit quantization is
    idempotent and a packed export reloaded into a wrapped model reproduces the forward bit for bit.
    """
    acc = torch.float32 if weight.device.type == "mps" else torch.float64
    a = weight.detach().abs().to(acc)
    if granularity is Granularity.TENSOR:
        out = a.mean().reshape((1,) * a.dim())
    elif granularity is Granularity.CHANNEL:
        out = a.mean(dim=tuple(range(1, a.dim())), keepdim=True)
    else:
        out = _group_reduce(a, _need_groups(groups), "mean")
    return out.to(weight.dtype)


def scope_scales(
    weight: torch.Tensor,
    levels: torch.Tensor,
    granularity: Granularity,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """The uniform quantizer's scale ``s = max(max|w|, 1e-8) / Q_b`` of each scope.

    Args:
        weight: float weight, output channel first.
        levels: ``Q_b`` (:func:`q_levels`) in ``weight``'s dtype, broadcastable to ``weight``
            (:func:`scope_view` of the per-scope values, or weight-shaped at ``PARAM``).
        granularity: scope granularity; ``PARAM`` also needs ``groups`` (:func:`param_groups`).

    Returns:
        A fresh tensor of ``levels``' broadcast shape against the :func:`scope_absmax` shape
        (callers may modify it in place). ``max|w|`` is a constant for autograd; gradient reaches
        ``levels`` when it requires grad (learnable bits).
    """
    m = scope_absmax(weight, granularity, groups).clamp_min_(SCALE_FLOOR)
    return m / levels if levels.requires_grad else m.div_(levels)


def round_codes(
    weight: torch.Tensor, scales: torch.Tensor, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``round(w / s)`` (ties to even) in ``weight``'s dtype and shape, no gradient.

    ``round_codes(w, s).mul_(s)`` is the fake-quantized weight of the ``b >= 2`` scopes, computed
    with one weight-sized allocation; with ``out`` (a tensor of ``weight``'s shape and dtype, e.g.
    from :class:`WeightBuffer`) it is written there and nothing is allocated.
    """
    if out is None:
        return torch.div(weight.detach(), scales.detach()).round_()
    return torch.div(weight.detach(), scales.detach(), out=out).round_()


@dataclass(frozen=True)
class SpecialWidths:
    """Which special bit-widths (0, 1, 32) occur; python bools, so a hot path needs no host sync."""

    zero: bool
    one: bool
    full: bool

    @classmethod
    def of(cls, bits: torch.Tensor) -> SpecialWidths:
        """Inspect ``bits`` (one host synchronization)."""
        b = bits.detach()
        return cls(bool((b == 0).any()), bool((b == 1).any()), bool((b >= 32).any()))


NO_SPECIAL = SpecialWidths(False, False, False)


def checked_bits(
    weight: torch.Tensor, bits: torch.Tensor | int, granularity: Granularity, *, check: bool
) -> torch.Tensor:
    """``bits`` as a tensor on ``weight``'s device, validated against ``weight`` when ``check``.

    An int becomes a tensor of the scope shape, a list or numpy array a tensor; a float (even
    ``4.0``) is refused (``TypeError``), as one width is an int. Raises ``TypeError``/``ValueError`` naming the
    argument for a non-float weight, a weight without an output-channel dim, a wrong bit shape,
    non-finite weights or bits outside {0, 1, 2..16, 32} (floating bits: integral, in [2, 16]).
    """
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError("weight must be a floating-point torch.Tensor")
    if weight.dim() < 2:
        raise ValueError(
            f"weight must have an output-channel dim and at least one more; got shape {tuple(weight.shape)}"
        )
    want = granularity.scope_shape(tuple(weight.shape))
    if isinstance(bits, (bool, float, np.floating)):
        raise TypeError(
            f"bits must be an int, or a tensor/array/list of the scope shape {want}; got "
            f"{type(bits).__name__} {bits!r} (for one width everywhere pass an int, e.g. 4)"
        )
    if isinstance(bits, (int, np.integer)):
        bits = torch.full(want, int(bits), dtype=torch.int64, device=weight.device)
    elif isinstance(bits, (list, tuple, np.ndarray)):
        bits = torch.as_tensor(np.asarray(bits))
    elif not isinstance(bits, torch.Tensor):
        raise TypeError(
            f"bits must be an int, or a tensor/array/list of the scope shape {want}; got "
            f"{type(bits).__name__}"
        )
    if check:
        if tuple(bits.shape) != want:
            raise ValueError(
                f"bits has shape {tuple(bits.shape)}; the {granularity.value} scope shape of a weight {tuple(weight.shape)} is {want}"
            )
        if not bool(torch.isfinite(weight).all()):
            raise ValueError("weight contains NaN or inf")
        if not bits.is_floating_point():
            check_bits(bits, name="<weight>")
        elif bool(((bits < 2) | (bits > 16) | (bits != bits.round())).any()):
            raise ValueError("floating-point bits must be integral values in [2, 16]")
    return bits.to(weight.device)


def quantize_codes(
    weight: torch.Tensor, bits: torch.Tensor | int, granularity: Granularity | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes and scales of ``weight`` at per-scope ``bits`` (METHOD.md section 2).

    Args:
        weight: float weight ``[O, I, kh, kw]`` or ``[O, I]`` (output channel first), finite.
        bits: integer bit-width per scope, shaped as the scope shape (``(1,)``, ``(O,)`` or
            ``weight.shape``), values in {0, 1, 2..16, 32}; or one int for every scope.
        granularity: scope granularity.

    Returns:
        ``(codes, scales)``. ``codes``: ``int16``, ``weight``'s shape, in ``[-Q_b, Q_b]``: ``round(w / s)``
        for ``b >= 2``, ``sign(w)`` for ``b = 1``, 0 for ``b = 0`` and ``b = 32``. ``scales``:
        ``weight``'s dtype, the scope shape (``(1,)`` per tensor, ``(O,)`` per channel; weight-shaped
        per parameter, each weight carrying its (channel, bit) group's scale): ``max(max|w|, 1e-8)
        / Q_b`` for ``b >= 2``, ``mean|w|`` for ``b = 1``, 0 for ``b = 0`` and ``b = 32``.
        ``dequantize(codes, scales, granularity)`` equals :func:`fake_quantize` bit for bit on
        every scope with ``b < 32``; ``b = 32`` scopes keep ``w`` itself.

    >>> import torch
    >>> from fq_quant import dequantize, fake_quantize, quantize_codes
    >>> w = torch.tensor([[0.5, -1.0, 0.25], [2.0, 1.0, -0.5]])
    >>> codes, scales = quantize_codes(w, torch.tensor([2, 3]), "channel")
    >>> codes
    tensor([[ 0, -1,  0],
            [ 3,  2, -1]], dtype=torch.int16)
    >>> scales
    tensor([1.0000, 0.6667])
    >>> torch.equal(dequantize(codes, scales, "channel"), fake_quantize(w, torch.tensor([2, 3]), "channel"))
    True
    """
    g = Granularity.parse(granularity)
    bits = checked_bits(weight, bits, g, check=True)
    if bits.is_floating_point():
        raise TypeError(f"bits must have an integer dtype; got {bits.dtype}")
    bits_b = scope_view(bits, weight.shape, g)
    groups = param_groups(bits) if g is Granularity.PARAM else None
    special = SpecialWidths.of(bits)
    with torch.no_grad():
        s = scope_scales(weight, q_levels(bits_b).to(weight.dtype), g, groups)
        codes = round_codes(weight, s)
        if special.one:
            one = bits_b == 1
            codes = torch.where(one, torch.sign(weight), codes)
            s = torch.where(one, scope_absmean(weight, g, groups), s)
        if special.zero or special.full:
            none = (bits_b == 0) | (bits_b >= 32)
            codes = torch.where(none, 0.0, codes)
            s = torch.where(none, 0.0, s)
    return codes.to(CODES_DTYPE), s.reshape(g.scope_shape(tuple(weight.shape)))


def dequantize(
    codes: torch.Tensor, scales: torch.Tensor, granularity: Granularity | str
) -> torch.Tensor:
    """``s * q``: the weight the codes stand for, in ``scales``' dtype and ``codes``' shape.

    Args:
        codes: integer (or integral float) codes, weight-shaped, as :func:`quantize_codes` returns.
        scales: per-scope scales of the scope shape at ``granularity`` (weight-shaped per parameter).
        granularity: scope granularity of ``scales``.
    """
    g = Granularity.parse(granularity)
    want = g.scope_shape(tuple(codes.shape))
    if tuple(scales.shape) != want:
        raise ValueError(
            f"scales has shape {tuple(scales.shape)}; the {g.value} scope shape of codes "
            f"{tuple(codes.shape)} is {want}"
        )
    return scope_view(scales, codes.shape, g) * codes.to(scales.dtype)
