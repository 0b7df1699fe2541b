"""Finding the layers that get quantized."""

from __future__ import annotations

from torch import nn

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
