"""Finding the layers that get quantized."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

#: Module types whose ``weight`` is quantized (METHOD.md: every Conv2d and Linear, first and last included).
QUANTIZABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every ``nn.Conv2d`` and ``nn.Linear`` of ``model`` (subclasses included), by qualified name.

    Order is module order (``model.named_modules()``), so the first and last layers are included
    and the dict is stable across calls. Raises ``ValueError`` when the model has none.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, QUANTIZABLE_TYPES) and name
    }
    if not layers:
        raise ValueError(
            f"model {type(model).__name__} has no quantizable layer (nn.Conv2d or nn.Linear)"
        )
    return layers


def float_weight(layer: nn.Module) -> torch.Tensor:
    """The float weight of a Conv2d/Linear layer: the parameter itself, also when it is wrapped.

    For a layer carrying a weight parametrization (:func:`quantize_model`, fq-baq's learnable bits)
    this is ``layer.parametrizations.weight.original``, the trainable float tensor; otherwise
    ``layer.weight``. Same shape and dtype as the weight; no copy.
    """
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight
