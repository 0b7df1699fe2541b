"""Learnable bit-widths (METHOD.md section 6): one logit ``theta`` per scope, a parametrization.

``b_cont = b_min + (b_max - b_min) * |tanh(theta)|``, ``b = round_ste(b_cont)``, and the weight is
fake-quantized with ``b`` so that the task loss reaches ``theta`` through the scale ``s(b)`` and the
level count ``Q_b`` (the public implementation's ``w + (w_hat - w).detach()`` cuts exactly
this path).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from fq_quant import (
    BitAssignment,
    Granularity,
    ScopeLayout,
    WeightBuffer,
    fake_quantize,
    float_weight,
    q_levels,
    quantizable_layers,
    round_codes,
    round_ste,
    scope_scales,
    scope_view,
)
from torch import nn
from torch.nn.utils import parametrize

_LN2 = math.log(2.0)


def clip_margin(bit_min: int, bit_max: int) -> float:
    """Lower clip ``r_lo`` of the warm-start ratio ``r``; the upper clip is ``1 - r_lo``.

    METHOD.md's ``[0.05, 0.95]`` when ``bit_max - bit_min <= 8``; wider ranges narrow it to
    ``0.4 / (bit_max - bit_min)`` so an endpoint scope starts 0.4 bits inside the range and still
    rounds to its warm-start value (with ``[0.05, 0.95]``, 2..16 would start 0.7 bits off).
    """
    span = bit_max - bit_min
    return 0.05 if span <= 8 else 0.4 / span


def theta_from_bits(bits: torch.Tensor, bit_min: int, bit_max: int) -> torch.Tensor:
    """``theta = atanh(r)``, ``r = (bits - bit_min) / (bit_max - bit_min)`` clipped (float32).

    The clip is :func:`clip_margin`'s ``[r_lo, 1 - r_lo]``, so ``round(b_cont) == bits``:

    >>> import torch
    >>> from fq_baq import theta_from_bits
    >>> theta_from_bits(torch.tensor([2, 5, 8]), 2, 8)  # r = 0.05, 0.5, 0.95
    tensor([0.0500, 0.5493, 1.8318])
    """
    span = bit_max - bit_min
    if span == 0:
        return torch.full(bits.shape, math.atanh(0.5), dtype=torch.float32)
    lo = clip_margin(bit_min, bit_max)
    r = ((bits.to(torch.float64) - bit_min) / span).clamp(lo, 1.0 - lo)
    return torch.atanh(r).to(torch.float32)


class _LearnableFakeQuant(torch.autograd.Function):
    """Per-tensor / per-channel fake-quantization with float bits; gradient to weight and bits.

    Forward: ``s = max|w| / Q_b``, ``w_hat = s * round(w / s)`` with fq_quant's
    :func:`~fq_quant.scope_scales` and :func:`~fq_quant.round_codes`, so values are bit-identical
    to :func:`fq_quant.quantize_model`. Backward equals the
    autograd graph of ``s(b) * clamp(round_ste(w / s(b)), -Q_b, Q_b)`` with ``max|w|`` constant:
    ``dL/dw = g`` and ``dL/dQ = sum_scope g * (w - w_hat) / Q`` (the clamp is never active since
    ``|w| <= max|w|``), ``dQ/db = ln2 * (Q + 1)``. It saves only ``w`` and ``w_hat`` (which the
    conv saves anyway), not the five weight-sized intermediates of the graph. ``w_hat`` and the
    backward's ``(w - w_hat) * grad`` are written into :class:`fq_quant.WeightBuffer` memory,
    reused across steps when released.
    """

    @staticmethod
    def forward(ctx, w, bits_b, granularity, buffers=None):
        with torch.no_grad():
            q = q_levels(bits_b).to(w.dtype)
            s = scope_scales(w, q, granularity)
            dest = None if buffers is None else buffers[0].take(w.shape, w.dtype, w.device)
            out = round_codes(w, s, out=dest).mul_(s)
        ctx.save_for_backward(w, out, q)
        ctx.scratch = None if buffers is None else buffers[1]
        return out

    @staticmethod
    def backward(ctx, grad):
        w, out, q = ctx.saved_tensors
        grad_bits = None
        if ctx.needs_input_grad[1]:
            rows = q.numel()  # 1 scope (tensor) or O scopes (channel), each a contiguous block
            # scratch memory only when backward itself is not recorded (create_graph=True)
            reuse = ctx.scratch is not None and not torch.is_grad_enabled()
            dest = ctx.scratch.take(w.shape, w.dtype, w.device) if reuse else None
            # sum_scope grad * (w - w_hat): product in place in the scratch memory, then one
            # row sum (a third cheaper on CPU than a batched matmul of 1 x K by K x 1 blocks)
            if dest is not None:
                prod = torch.sub(w, out, out=dest).mul_(grad)
            else:
                prod = torch.sub(w, out) * grad
            gq = prod.reshape(rows, -1).sum(dim=1).reshape(q.shape)
            grad_bits = (gq * (_LN2 * (q + 1) / q)).to(torch.float32)
        return grad, grad_bits, None, None


class LearnableBitsQuantizer(nn.Module):
    """``torch.nn.utils.parametrize`` module that fake-quantizes a weight with learnable bits.

    Attributes:
        theta: ``nn.Parameter`` of the scope shape (``(1,)``, ``(O,)`` or the weight shape),
            float32 logits; an ordinary parameter, so DDP keeps it in sync across ranks.
        theta_init: buffer, ``theta`` at construction (the ``bit_reg="anchor"`` reference).
    """

    theta_init: torch.Tensor  # a buffer, registered in __init__

    def __init__(
        self,
        theta: torch.Tensor,
        *,
        bit_min: int,
        bit_max: int,
        granularity: Granularity | str,
        weight_shape: tuple[int, ...],
    ):
        super().__init__()
        self.granularity = Granularity.parse(granularity)
        self.weight_shape = tuple(int(d) for d in weight_shape)
        want = self.granularity.scope_shape(self.weight_shape)
        if tuple(theta.shape) != want:
            raise ValueError(f"theta has shape {tuple(theta.shape)}; expected scope shape {want}")
        self.bit_min, self.bit_max = int(bit_min), int(bit_max)
        self.theta = nn.Parameter(theta.detach().clone().to(torch.float32))
        self.register_buffer("theta_init", theta.detach().clone().to(torch.float32))
        # memory of the output and of backward's w - w_hat, reused across steps when released
        self._memory = (WeightBuffer(), WeightBuffer())

    def continuous_bits(self) -> torch.Tensor:
        """``b_cont`` per scope (float32, scope shape), differentiable in ``theta``."""
        span = self.bit_max - self.bit_min
        return self.bit_min + span * torch.tanh(self.theta).abs()

    def bits(self) -> torch.Tensor:
        """``round_ste(b_cont)``: integral float bits per scope, straight-through gradient."""
        return round_ste(self.continuous_bits())

    def rounded_bits(self) -> torch.Tensor:
        """The current integer bits (``uint8``, scope shape, on ``theta``'s device; no gradient)."""
        with torch.no_grad():
            return torch.round(self.continuous_bits()).to(torch.uint8)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        bits = self.bits()
        if self.granularity is Granularity.PARAM:
            # Scale per (channel, bit) group: fq_quant's graph path (no fused kernel for PARAM).
            return fake_quantize(weight, bits, self.granularity, check=False)
        return _LearnableFakeQuant.apply(
            weight,
            scope_view(bits, weight.shape, self.granularity),
            self.granularity,
            self._memory,
        )

    def extra_repr(self) -> str:
        return (
            f"granularity={self.granularity.value}, scopes={self.theta.numel()}, "
            f"bits={self.bit_min}..{self.bit_max}"
        )


def _unparametrize(layer: nn.Module) -> None:
    """Remove any weight parametrization, keeping the float (original) weight."""
    if parametrize.is_parametrized(layer, "weight"):
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)


def attach_learnable_bits(
    model: nn.Module,
    *,
    bit_min: int,
    bit_max: int,
    granularity: Granularity | str,
    warm_start: BitAssignment | None = None,
) -> dict[str, LearnableBitsQuantizer]:
    """Register a :class:`LearnableBitsQuantizer` on every Conv2d/Linear weight, in place.

    A fixed-bits quantizer already on a layer is replaced (its float weight is kept). With
    ``warm_start`` each scope starts at its bits (``round(b_cont) == b_init`` at the first
    forward); without, every scope starts at ``bit_max``. Returns the quantizers by layer name.

    Raises ``ValueError`` when the warm start's granularity or layout does not match, or when its
    bits lie outside ``[bit_min, bit_max]``.
    """
    g = Granularity.parse(granularity)
    layout = ScopeLayout.from_model(model, g)
    if warm_start is not None:
        if not isinstance(warm_start, BitAssignment):
            raise TypeError(f"warm_start must be a BitAssignment; got {type(warm_start).__name__}")
        if warm_start.granularity is not g:
            raise ValueError(
                f"warm_start granularity {warm_start.granularity.value!r} does not match the "
                f"config's {g.value!r}"
            )
        warm_start.check(layout)
        for name, b in warm_start.bits.items():
            bad = (b < bit_min) | (b > bit_max)
            if bool(bad.any()):
                raise ValueError(
                    f"warm_start bits for layer {name!r} contain {int(b[bad][0])}; BAQ needs bits "
                    f"in [bit_min, bit_max] = [{bit_min}, {bit_max}]"
                )
    layers = quantizable_layers(model)
    for name, layer in layers.items():
        if not bool(torch.isfinite(float_weight(layer)).all()):
            raise ValueError(f"layer {name!r} has NaN or inf weights")
    out: dict[str, LearnableBitsQuantizer] = {}
    for name, layer in layers.items():
        shape = layout[name].scope_shape
        init = (
            warm_start.bits[name]
            if warm_start is not None
            else torch.full(shape, bit_max, dtype=torch.int64)
        )
        w = float_weight(layer)
        q = LearnableBitsQuantizer(
            theta_from_bits(init, bit_min, bit_max).to(w.device),
            bit_min=bit_min,
            bit_max=bit_max,
            granularity=g,
            weight_shape=layout[name].weight_shape,
        )
        _unparametrize(layer)
        parametrize.register_parametrization(layer, "weight", q)
        out[name] = q
    return out


def learnable_quantizers(model: nn.Module) -> dict[str, LearnableBitsQuantizer]:
    """The :class:`LearnableBitsQuantizer` of each quantizable layer that carries one, by name."""
    found = {}
    for name, layer in quantizable_layers(model).items():
        if parametrize.is_parametrized(layer, "weight"):
            for p in layer.get_submodule("parametrizations.weight").children():
                if isinstance(p, LearnableBitsQuantizer):
                    found[name] = p
    return found


def learned_assignment(model: nn.Module) -> BitAssignment:
    """The :class:`BitAssignment` ``round(b_cont)`` of a model carrying learnable bits (CPU)."""
    return assignment_of(learnable_quantizers(model))


def assignment_of(quantizers: Mapping[str, LearnableBitsQuantizer]) -> BitAssignment:
    """The :class:`BitAssignment` ``round(b_cont)`` of learnable quantizers by layer name (CPU)."""
    if not quantizers:
        raise ValueError("model carries no LearnableBitsQuantizer; wrap it with BAQTrainer first")
    g = next(iter(quantizers.values())).granularity
    return BitAssignment(g, {n: q.rounded_bits().cpu() for n, q in quantizers.items()})


def detach_learnable_bits(model: nn.Module) -> None:
    """Remove the learnable-bits parametrizations, keeping the float weights, in place."""
    for name in learnable_quantizers(model):
        _unparametrize(dict(model.named_modules())[name])
