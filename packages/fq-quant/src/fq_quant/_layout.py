"""Scope layout of a model: per layer, the shape of its bit tensor and the parameters per scope."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ._granularity import Granularity
from ._layers import QUANTIZABLE_TYPES, quantizable_layers


@dataclass(frozen=True, kw_only=True)
class LayerScopes:
    """The scopes of one quantizable layer.

    Attributes:
        name: qualified module name.
        weight_shape: shape of the weight, output channel first (``[O, I, kh, kw]`` or ``[O, I]``).
        scope_shape: shape of the layer's bit tensor at the layout's granularity.
        params_per_scope: weights in each scope (the same for every scope of a layer).
    """

    name: str
    weight_shape: tuple[int, ...]
    scope_shape: tuple[int, ...]
    params_per_scope: int

    @property
    def num_scopes(self) -> int:
        """Number of scopes (elements of the bit tensor)."""
        return math.prod(self.scope_shape)

    @property
    def num_params(self) -> int:
        """Number of weights in the layer."""
        return math.prod(self.weight_shape)


@dataclass(frozen=True)
class ScopeLayout:
    """Per-layer scope shapes of a model at one granularity; build it with :meth:`from_model`.

    Example: timm ``resnet18`` at ``CHANNEL`` granularity has 21 layers; ``conv1`` (weight
    ``[64, 3, 7, 7]``) has scope shape ``(64,)`` and 147 parameters per scope.
    """

    granularity: Granularity
    layers: Mapping[str, LayerScopes]

    def __post_init__(self) -> None:
        object.__setattr__(self, "granularity", Granularity.parse(self.granularity))
        if not self.layers:
            raise ValueError("layers must name at least one quantizable layer; got none")

    @classmethod
    def from_model(cls, model: nn.Module, granularity: Granularity | str) -> ScopeLayout:
        """The layout of every ``nn.Conv2d`` / ``nn.Linear`` weight of ``model`` at ``granularity``."""
        g = Granularity.parse(granularity)
        layers = {}
        for name, module in quantizable_layers(model).items():
            shape = _weight_shape(name, module)
            scope = g.scope_shape(shape)
            layers[name] = LayerScopes(
                name=name,
                weight_shape=shape,
                scope_shape=scope,
                params_per_scope=math.prod(shape) // math.prod(scope),
            )
        return cls(g, layers)

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, name: str) -> LayerScopes:
        try:
            return self.layers[name]
        except KeyError:
            raise KeyError(
                f"unknown layer {name!r}; the layout has {list(self.layers)[:8]}..."
            ) from None

    @property
    def num_scopes(self) -> int:
        """Total number of scopes over all layers."""
        return sum(s.num_scopes for s in self.layers.values())

    @property
    def num_params(self) -> int:
        """Total number of quantized weights over all layers."""
        return sum(s.num_params for s in self.layers.values())

    def params_per_scope(self, name: str) -> torch.Tensor:
        """``int64`` tensor of ``name``'s scope shape, each entry the parameters in that scope."""
        s = self[name]
        return torch.full(s.scope_shape, s.params_per_scope, dtype=torch.int64)

    def check_tensors(self, tensors: Mapping[str, torch.Tensor], *, what: str) -> None:
        """Raise ``ValueError`` unless ``tensors`` has exactly this layout's layers and scope shapes."""
        missing = [n for n in self.layers if n not in tensors]
        extra = [n for n in tensors if n not in self.layers]
        if missing or extra:
            raise ValueError(
                f"{what} does not match the model's layers: missing {missing[:5]}, "
                f"unknown {extra[:5]} (the model has {len(self.layers)} quantizable layers)"
            )
        for name, t in tensors.items():
            want = self.layers[name].scope_shape
            if tuple(t.shape) != want:
                raise ValueError(
                    f"{what} for layer {name!r} has shape {tuple(t.shape)}; "
                    f"the {self.granularity.value} scope shape of that layer is {want}"
                )


def _weight_shape(name: str, module: nn.Module) -> tuple[int, ...]:
    if not isinstance(module, QUANTIZABLE_TYPES):
        raise TypeError(
            f"layer {name!r} is a {type(module).__name__}; only nn.Conv2d and nn.Linear are quantizable"
        )
    weight = module.weight
    # A parametrized module exposes the original (float) weight here; its shape is the same.
    return tuple(int(d) for d in weight.shape)
