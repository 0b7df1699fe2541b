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

from dataclasses import dataclass

import torch

from ._assignment import check_bits
from ._granularity import Granularity

_EPS = 1e-8
#: Number of distinct bit codes used to key (channel, bit) groups at PARAM granularity.
_BIT_CODES = 33


class RoundSTE(torch.autograd.Function):
    """``round(x)`` in forward; identity in backward (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer (ties to even) with the straight-through gradient ``d/dx := 1``."""
    return RoundSTE.apply(x)


def scope_view(
    t: torch.Tensor, weight_shape: torch.Size | tuple[int, ...], granularity: Granularity
) -> torch.Tensor:
    """Reshape a scope-shaped tensor so that it broadcasts against a weight of ``weight_shape``.

    ``(1,)`` -> ``(1, 1, ...)``; ``(O,)`` -> ``(O, 1, ...)``; a per-parameter tensor is returned as is.
    """
    nd = len(weight_shape)
    if granularity is Granularity.TENSOR:
        return t.reshape((1,) * nd)
    if granularity is Granularity.CHANNEL:
        return t.reshape((weight_shape[0],) + (1,) * (nd - 1))
    return t


def q_levels(bits: torch.Tensor) -> torch.Tensor:
    """``Q_b = 2^(b-1) - 1`` for ``b >= 2`` and 1 elsewhere (where it is unused); keeps bits' grad."""
    b = bits if bits.is_floating_point() else bits.to(torch.float32)
    return torch.where(b >= 2, torch.exp2(b - 1) - 1, torch.ones_like(b))


def _group_reduce(values: torch.Tensor, key: torch.Tensor, n_groups: int, how: str) -> torch.Tensor:
    """Reduce ``values`` (weight-shaped) over groups ``key`` (same shape) and gather back per element."""
    flat = values.reshape(-1)
    out = torch.zeros(n_groups, dtype=values.dtype, device=values.device)
    if how == "amax":
        out.scatter_reduce_(0, key.reshape(-1), flat, reduce="amax", include_self=True)
    else:  # mean
        out.scatter_reduce_(0, key.reshape(-1), flat, reduce="mean", include_self=False)
    return out[key.reshape(-1)].reshape(values.shape)


def _param_key(bit_codes: torch.Tensor) -> torch.Tensor:
    """Group index ``channel * 33 + bit`` for per-parameter bits of a weight-shaped tensor."""
    o = bit_codes.shape[0]
    chan = torch.arange(o, device=bit_codes.device).reshape((o,) + (1,) * (bit_codes.dim() - 1))
    return (chan * _BIT_CODES + bit_codes.to(torch.int64)).expand(bit_codes.shape).contiguous()


def scope_absmax(
    w: torch.Tensor, granularity: Granularity, key: torch.Tensor | None = None
) -> torch.Tensor:
    """``max |w|`` over each scope, broadcastable to ``w``; PARAM needs the (channel, bit) ``key``."""
    a = w.detach()
    # max(amax, -amin) rather than vector_norm(ord=inf) or abs().amax(): two vectorized
    # reductions and no temporary, about 10x faster on CPU (it runs every QAT forward).
    if granularity is Granularity.TENSOR:
        return torch.maximum(a.amax(), a.amin().neg()).reshape((1,) * a.dim())
    if granularity is Granularity.CHANNEL:
        rows = a.reshape(a.shape[0], -1)
        out = torch.maximum(rows.amax(dim=1), rows.amin(dim=1).neg_())
        return out.reshape((a.shape[0],) + (1,) * (a.dim() - 1))
    assert key is not None  # internal invariant, not user input
    return _group_reduce(a.abs(), key, a.shape[0] * _BIT_CODES, "amax")


def scope_absmean(
    w: torch.Tensor, granularity: Granularity, key: torch.Tensor | None = None
) -> torch.Tensor:
    """``mean |w|`` over each scope (the 1-bit magnitude), broadcastable to ``w``, in ``w``'s dtype.

    Accumulated in float64 (where the device has it): the mean of ``n`` copies of one float32
    value is then exactly that value, so 1-bit quantization is idempotent and a packed export
    reloaded into a wrapped model reproduces the forward bit for bit.
    """
    acc = torch.float32 if w.device.type == "mps" else torch.float64
    a = w.detach().abs().to(acc)
    if granularity is Granularity.TENSOR:
        out = a.mean().reshape((1,) * a.dim())
    elif granularity is Granularity.CHANNEL:
        out = a.mean(dim=tuple(range(1, a.dim())), keepdim=True)
    else:
        assert key is not None  # internal invariant, not user input
        out = _group_reduce(a, key, a.shape[0] * _BIT_CODES, "mean")
    return out.to(w.dtype)


@dataclass(frozen=True)
class _Special:
    """Which special bit-widths occur (python bools, so the hot path needs no host sync)."""

    zero: bool
    one: bool
    full: bool

    @classmethod
    def of(cls, bits: torch.Tensor) -> _Special:
        b = bits.detach()
        return cls(bool((b == 0).any()), bool((b == 1).any()), bool((b >= 32).any()))


NO_SPECIAL = _Special(False, False, False)


def _quantize(
    w: torch.Tensor,
    bits_b: torch.Tensor,
    granularity: Granularity,
    special: _Special,
    key: torch.Tensor | None,
) -> torch.Tensor:
    """Autograd-visible quantizer; ``bits_b`` is broadcastable to ``w`` (float or int)."""
    q = q_levels(bits_b).to(w.dtype)
    s = scope_absmax(w, granularity, key).clamp_min(_EPS) / q
    r = round_ste(w / s)
    # clamp to [-Q, Q] written with strict comparisons: torch.clamp splits the gradient between
    # input and bound when they tie (the max element, where w / s = Q), halving the weight's STE
    # gradient there; here a tie keeps the identity gradient.
    w_hat = s * torch.where(r > q, q, torch.where(r < -q, -q, r))
    if special.one:
        a = scope_absmean(w, granularity, key)
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
    def forward(ctx, w, q, bits_b, granularity, special, key):  # type: ignore[override]
        with torch.no_grad():
            s = scope_absmax(w, granularity, key).clamp_min_(_EPS).div_(q)
            # |w| <= max|w| = s * q, so round(w / s) already lies in [-q, q]: no clamp needed.
            out = torch.div(w, s).round_().mul_(s)
            if special.one:
                a = scope_absmean(w, granularity, key)
                out = torch.where(bits_b == 1, a * torch.sign(w), out)
            if special.zero:
                out = torch.where(bits_b == 0, torch.zeros_like(out), out)
            if special.full:
                out = torch.where(bits_b >= 32, w, out)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad, None, None, None, None, None


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
    """
    g = Granularity.parse(granularity)
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError("weight must be a floating-point torch.Tensor")
    if weight.dim() < 2:
        raise ValueError(
            f"weight must have an output-channel dim and at least one more; got shape {tuple(weight.shape)}"
        )
    want = g.scope_shape(tuple(weight.shape))
    if isinstance(bits, int):
        bits = torch.full(want, bits, dtype=torch.int64, device=weight.device)
    if check:
        if tuple(bits.shape) != want:
            raise ValueError(
                f"bits has shape {tuple(bits.shape)}; the {g.value} scope shape of a weight {tuple(weight.shape)} is {want}"
            )
        if not bool(torch.isfinite(weight).all()):
            raise ValueError("weight contains NaN or inf")
        if not bits.is_floating_point():
            check_bits(bits, name="<fake_quantize>")
        elif bool(((bits < 2) | (bits > 16) | (bits != bits.round())).any()):
            raise ValueError("floating-point bits must be integral values in [2, 16]")
    bits = bits.to(weight.device)
    bits_b = scope_view(bits, weight.shape, g)
    key = _param_key(bits.detach().round()) if g is Granularity.PARAM else None
    if bits.is_floating_point() and bits.requires_grad:
        return _quantize(weight, bits_b, g, NO_SPECIAL, key)
    special = _Special.of(bits)
    q = q_levels(bits_b).to(weight.dtype)
    return _FixedFakeQuant.apply(weight, q, bits_b, g, special, key)


class FixedBitsQuantizer(torch.nn.Module):
    """Fake-quantizes one layer's weight with frozen bits; a ``torch.nn.utils.parametrize`` module.

    The bit tensor is a buffer (saved in ``state_dict``); levels, group keys and which special
    widths occur are precomputed once, so ``forward`` does no host-device synchronization.
    """

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
        self._refresh()

    def _refresh(self) -> None:
        self._special = _Special.of(self.bits)
        bits_b = scope_view(self.bits, self.weight_shape, self.granularity)
        self._bits_b = bits_b.to(torch.int16)
        self._q = q_levels(bits_b.to(torch.float32))
        self._key = _param_key(self.bits) if self.granularity is Granularity.PARAM else None

    def _load_from_state_dict(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(*args, **kwargs)
        self._refresh()

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # Keep the precomputed helpers on the same device as the buffers.
        out = super()._apply(fn, recurse)
        dev = self.bits.device
        self._bits_b, self._q = self._bits_b.to(dev), self._q.to(dev)
        if self._key is not None:
            self._key = self._key.to(dev)
        return out

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        q = self._q if self._q.dtype == weight.dtype else self._q.to(weight.dtype)
        return _FixedFakeQuant.apply(
            weight, q, self._bits_b, self.granularity, self._special, self._key
        )

    def extra_repr(self) -> str:
        return f"granularity={self.granularity.value}, scopes={self.bits.numel()}"
