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
    try:
        for name in assignment.bits:
            if name not in layout.layers and name in modules:
                raise TypeError(
                    f"layer {name!r} is a {type(modules[name]).__name__}; only nn.Conv2d and "
                    "nn.Linear weights are quantizable"
                )
        assignment.check(layout)
    except (TypeError, ValueError) as exc:
        raise type(exc)(
            f"assignment does not match model: {first_difference(assignment, layout)}. Was it "
            "made for another model (or before unpack_attention)? Build it from this model's "
            f"ScopeLayout.from_model(model, granularity). Details: {exc}"
        ) from None
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


def first_difference(assignment: BitAssignment, layout: ScopeLayout) -> str:
    """The first layer, in module order, where ``assignment`` and ``layout`` differ, described.

    Compares granularity, then each position's layer name, then its scope shape.
    """
    if assignment.granularity is not layout.granularity:
        return (
            f"granularity {assignment.granularity.value!r} in the assignment, "
            f"{layout.granularity.value!r} in the model's layout"
        )
    ours, theirs = list(assignment.bits), list(layout.layers)
    for i in range(max(len(ours), len(theirs))):
        a = ours[i] if i < len(ours) else None
        m = theirs[i] if i < len(theirs) else None
        a_shape = tuple(assignment.bits[a].shape) if a is not None else None
        m_shape = layout.layers[m].scope_shape if m is not None else None
        if a != m:
            return (
                f"first differing layer: quantizable layer #{i} is {a!r} (scope shape {a_shape}) "
                f"in the assignment, {m!r} (scope shape {m_shape}) in the model; the assignment "
                f"has {len(ours)} layers, the model {len(theirs)}"
            )
        if a_shape != m_shape:
            return (
                f"first differing layer: {a!r} has shape {a_shape} in the assignment, scope "
                f"shape {m_shape} in the model"
            )
    return "the layers agree"


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
    quantizers: dict[str, FixedBitsQuantizer] = {}
    for name, layer in quantizable_layers(model).items():
        if not parametrize.is_parametrized(layer, "weight"):
            raise ValueError(f"layer {name!r} is not quantized; call quantize_model first")
        q = next(layer.get_submodule("parametrizations.weight").children())
        if not isinstance(q, FixedBitsQuantizer):
            raise TypeError(f"layer {name!r} carries a {type(q).__name__}, not fixed bits")
        quantizers[name] = q
    *_, last = quantizers.values()  # quantizable_layers raised if there was none
    return BitAssignment(last.granularity, {n: q.bits.cpu() for n, q in quantizers.items()})
