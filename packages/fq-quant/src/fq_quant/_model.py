"""Wrapping a model so that its Conv2d/Linear weights are fake-quantized in forward."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._assignment import BitAssignment
from ._attention import bare_attention_modules
from ._layers import float_weight, quantizable_layers
from ._layout import ScopeLayout
from ._quantizer import FixedBitsQuantizer


def quantize_model(model: nn.Module, assignment: BitAssignment) -> nn.Module:
    """Make every quantizable layer of ``model`` compute with fake-quantized weights, in place.

    Uses ``torch.nn.utils.parametrize``: ``layer.weight`` becomes ``Q(layer.parametrizations.weight.original)``,
    so any Conv2d/Linear subclass (timm's, torchvision's) works unchanged, the float weights stay
    trainable (QAT), and the bits live in ``state_dict`` as buffers. Returns ``model``.

    Raises ``ValueError`` if the assignment's layers, shapes or granularity do not match the model,
    or if a weight is not finite; a model already quantized is re-assigned its new bits. Warns
    when ``model`` holds ``nn.MultiheadAttention`` modules, whose query/key/value projections are
    bare parameters that stay in float: :func:`fq_quant.unpack_attention` makes them layers.
    """
    if not isinstance(assignment, BitAssignment):
        raise TypeError(f"assignment must be a BitAssignment; got {type(assignment).__name__}")
    bare = bare_attention_modules(model)
    if bare:
        warnings.warn(
            f"{len(bare)} nn.MultiheadAttention module(s) (first: {bare[0]!r}) keep their "
            "query/key/value projections in float32 (a bare in_proj_weight, not a layer); call "
            "fq_quant.unpack_attention(model) before quantize_model to quantize them",
            UserWarning,
            stacklevel=2,
        )
    layout = ScopeLayout.from_model(model, assignment.granularity)
    modules = dict(model.named_modules())
    for name in assignment.bits:
        if name not in layout.layers and name in modules:
            raise TypeError(
                f"layer {name!r} is a {type(modules[name]).__name__}; only nn.Conv2d and nn.Linear "
                "weights are quantizable"
            )
    assignment.check(layout)
    layers = quantizable_layers(model)
    for name, layer in layers.items():
        weight = float_weight(layer).detach()
        finite = torch.isfinite(weight)
        if not bool(finite.all()):
            bad = float(weight[~finite][0])
            raise ValueError(f"layer {name!r} has a non-finite weight ({bad}); cannot quantize it")
    for name, layer in layers.items():
        bits = assignment.bits[name].to(float_weight(layer).device)
        q = FixedBitsQuantizer(bits, assignment.granularity, layout[name].weight_shape, name=name)
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
        parametrize.register_parametrization(layer, "weight", q)
    return model


def strip_quantization(model: nn.Module) -> nn.Module:
    """Remove the fake-quantizers in place, baking the quantized weights into plain parameters."""
    for layer in quantizable_layers(model).values():
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    return model


def is_quantized(model: nn.Module) -> bool:
    """True when any quantizable layer of ``model`` carries a fake-quantizer."""
    return any(parametrize.is_parametrized(m, "weight") for m in quantizable_layers(model).values())


def current_assignment(model: nn.Module) -> BitAssignment:
    """The :class:`BitAssignment` a model wrapped by :func:`quantize_model` computes with."""
    bits, granularity = {}, None
    for name, layer in quantizable_layers(model).items():
        if not parametrize.is_parametrized(layer, "weight"):
            raise ValueError(f"layer {name!r} is not quantized; call quantize_model first")
        q = layer.parametrizations.weight[0]
        if not isinstance(q, FixedBitsQuantizer):
            raise TypeError(f"layer {name!r} carries a {type(q).__name__}, not fixed bits")
        bits[name], granularity = q.bits.cpu(), q.granularity
    return BitAssignment(granularity, bits)
