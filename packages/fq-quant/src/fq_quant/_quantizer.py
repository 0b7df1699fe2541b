"""The weight fake-quantizer of METHOD.md section 2, vectorized over mixed bit-widths.

One pass quantizes a whole layer whatever mix of bit-widths its scopes carry: bits are broadcast
per scope, the scale is a per-scope (or per (channel, bit) group) max, and the special widths
0 (pruned), 1 (sign x mean magnitude) and 32 (float) are merged in with ``torch.where``.

Gradient rule (the paper's "common surrogate"): rounding is straight-through, so the gradient
with respect to the weight is the identity for every bit-width; the scale's max is a constant
in backward. When the bit tensor is floating point and requires grad (BAQ), gradient reaches the
bits through ``s(b) = max|w| / Q_b`` and ``Q_b = 2^(b-1) - 1`` (METHOD.md section 6).
"""

from __future__ import annotations

import torch

from ._assignment import check_bits
from ._buffers import WeightBuffer
from ._codes import (
    NO_SPECIAL,
    SpecialWidths,
    checked_bits,
    param_groups,
    q_levels,
    round_codes,
    scope_absmean,
    scope_scales,
    scope_view,
)
from ._granularity import Granularity


class RoundSTE(torch.autograd.Function):
    """``round(x)`` in forward; identity in backward (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer (ties to even) with the straight-through gradient ``d/dx := 1``."""
    return RoundSTE.apply(x)


def _quantize(
    w: torch.Tensor,
    bits_b: torch.Tensor,
    granularity: Granularity,
    special: SpecialWidths,
    groups: torch.Tensor | None,
) -> torch.Tensor:
    """Autograd-visible quantizer; ``bits_b`` is broadcastable to ``w`` (float or int)."""
    q = q_levels(bits_b).to(w.dtype)
    s = scope_scales(w, q, granularity, groups)
    r = round_ste(w / s)
    # clamp to [-Q, Q] written with strict comparisons: torch.clamp splits the gradient between
    # input and bound when they tie (the max element, where w / s = Q), halving the weight's STE
    # gradient there; here a tie keeps the identity gradient.
    w_hat = s * torch.where(r > q, q, torch.where(r < -q, -q, r))
    if special.one:
        a = scope_absmean(w, granularity, groups)
        sign = w + (a * torch.sign(w.detach()) - w).detach()  # straight-through
        w_hat = torch.where(bits_b == 1, sign, w_hat)
    if special.zero:
        w_hat = torch.where(bits_b == 0, w - w.detach(), w_hat)  # value 0, identity gradient
    if special.full:
        w_hat = torch.where(bits_b >= 32, w, w_hat)
    return w_hat


class _FixedFakeQuant(torch.autograd.Function):
    """Fake-quantize with frozen integer bits: the value of :func:`_quantize`, identity backward.

    Identical in value and gradient to the autograd graph (the STE makes ``d w_hat / d w = 1``),
    but it stores nothing for backward and runs in-place, which keeps QAT close to FP32 speed.
    """

    @staticmethod
    def forward(ctx, w, q, bits_b, granularity, special, groups, buffer=None):
        with torch.no_grad():
            s = scope_scales(w, q, granularity, groups)
            dest = None if buffer is None else buffer.take(w.shape, w.dtype, w.device)
            # |w| <= max|w| = s * q, so round(w / s) already lies in [-q, q]: no clamp needed.
            out = round_codes(w, s, out=dest).mul_(s)
            if special.one:
                a = scope_absmean(w, granularity, groups)
                out = torch.where(bits_b == 1, a * torch.sign(w), out)
            if special.zero:
                out = torch.where(bits_b == 0, torch.zeros_like(out), out)
            if special.full:
                out = torch.where(bits_b >= 32, w, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None, None, None, None


def fake_quantize(
    weight: torch.Tensor,
    bits: torch.Tensor | int,
    granularity: Granularity | str,
    *,
    check: bool = True,
) -> torch.Tensor:
    """Quantize-dequantize ``weight`` with a bit-width per scope (METHOD.md section 2).

    Args:
        weight: ``[O, I, kh, kw]`` or ``[O, I]`` float weight, output channel first.
        bits: bit-width per scope, shaped as the scope shape of ``weight`` at ``granularity``
            (``(1,)``, ``(O,)`` or ``weight.shape``), or one int for every scope. Integer bits must be
            in {0, 1, 2..16, 32}. Floating bits that require grad (integral values, e.g. from
            :func:`round_ste`, in ``[2, 16]``) receive gradient through the scale and ``Q_b``.
        granularity: scope granularity.
        check: validate shapes and values (one host sync); hot loops pass ``False``.

    Returns:
        ``w_hat`` with ``weight``'s shape and dtype. For ``b >= 2``: ``s * clamp(round(w / s), -Q, Q)``
        with ``Q = 2^(b-1) - 1`` and ``s = max|w| / Q`` over the scope (per (channel, bit) group at
        PARAM granularity); ``b = 1``: ``mean|w| * sign(w)``; ``b = 0``: 0; ``b = 32``: ``w``.

    >>> import torch
    >>> from fq_quant import fake_quantize
    >>> w = torch.tensor([[2.0, -2.0, 1.5, 0.5]])  # 2 bits: Q = 1, s = max|w| = 2
    >>> fake_quantize(w, 2, "channel")
    tensor([[ 2., -2.,  2.,  0.]])
    >>> fake_quantize(w, 1, "channel")  # mean|w| * sign(w)
    tensor([[ 1.5000, -1.5000,  1.5000,  1.5000]])
    """
    g = Granularity.parse(granularity)
    bits = checked_bits(weight, bits, g, check=check)
    bits_b = scope_view(bits, weight.shape, g)
    groups = param_groups(bits.detach().round()) if g is Granularity.PARAM else None
    if bits.is_floating_point() and bits.requires_grad:
        return _quantize(weight, bits_b, g, NO_SPECIAL, groups)
    special = SpecialWidths.of(bits)
    q = q_levels(bits_b).to(weight.dtype)
    return _FixedFakeQuant.apply(weight, q, bits_b, g, special, groups)


class FixedBitsQuantizer(torch.nn.Module):
    """Fake-quantizes one layer's weight with frozen bits; a ``torch.nn.utils.parametrize`` module.

    The bit tensor is a buffer (saved in ``state_dict``); levels, group keys and which special
    widths occur are precomputed once, so ``forward`` does no host-device synchronization.
    """

    bits: torch.Tensor  # buffer: bit-width per scope (scope shape)

    def __init__(
        self,
        bits: torch.Tensor,
        granularity: Granularity | str,
        weight_shape: tuple[int, ...],
        *,
        name: str = "<layer>",
    ):
        super().__init__()
        self.granularity = Granularity.parse(granularity)
        self.weight_shape = tuple(weight_shape)
        want = self.granularity.scope_shape(self.weight_shape)
        if tuple(bits.shape) != want:
            raise ValueError(
                f"bits for layer {name!r} have shape {tuple(bits.shape)}; expected scope shape {want}"
            )
        self.register_buffer("bits", check_bits(bits, name=name))
        self._memory = WeightBuffer()  # the output's memory, reused across steps when released
        self._refresh()

    def _refresh(self) -> None:
        self._special = SpecialWidths.of(self.bits)
        bits_b = scope_view(self.bits, self.weight_shape, self.granularity)
        self._bits_b = bits_b.to(torch.int16)
        self._q = q_levels(bits_b.to(torch.float32))
        self._groups = param_groups(self.bits) if self.granularity is Granularity.PARAM else None

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._refresh()

    def _apply(self, fn, recurse=True):
        # Keep the precomputed helpers on the same device as the buffers.
        out = super()._apply(fn, recurse)
        dev = self.bits.device
        self._bits_b, self._q = self._bits_b.to(dev), self._q.to(dev)
        if self._groups is not None:
            self._groups = self._groups.to(dev)
        return out

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        q = self._q if self._q.dtype == weight.dtype else self._q.to(weight.dtype)
        return _FixedFakeQuant.apply(
            weight, q, self._bits_b, self.granularity, self._special, self._groups, self._memory
        )

    def extra_repr(self) -> str:
        return f"granularity={self.granularity.value}, scopes={self.bits.numel()}"
