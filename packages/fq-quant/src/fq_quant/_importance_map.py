"""Importance scores per scope: what a reducer returns and what an allocator takes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ._granularity import Granularity
from ._layout import ScopeLayout


@dataclass(frozen=True, eq=False)
class ImportanceMap:
    """One non-negative-or-signed float score per scope (larger = more important).

    Attributes:
        granularity: the scope granularity the score tensors are shaped for.
        scores: layer name -> float tensor of that layer's scope shape (see :class:`ScopeLayout`).

    Build it by hand to allocate bits from your own scores. Scores must be finite; they are copied
    on construction (a later in-place change of the caller's tensors does not reach the map).
    """

    granularity: Granularity
    scores: Mapping[str, torch.Tensor]

    def __post_init__(self) -> None:
        object.__setattr__(self, "granularity", Granularity.parse(self.granularity))
        if not isinstance(self.scores, Mapping) or not self.scores:
            raise ValueError("scores must be a non-empty mapping of layer name -> score tensor")
        clean = {}
        for name, s in self.scores.items():
            if not isinstance(s, torch.Tensor):
                raise TypeError(
                    f"scores for layer {name!r} must be a torch.Tensor; got {type(s).__name__}"
                )
            s = s.detach().to(s.dtype if s.is_floating_point() else torch.float32, copy=True)
            if not bool(torch.isfinite(s).all()):
                raise ValueError(f"scores for layer {name!r} contain NaN or inf")
            clean[str(name)] = s
        object.__setattr__(self, "scores", clean)

    def check(self, layout: ScopeLayout) -> None:
        """Raise ``ValueError`` unless granularity, layer names and scope shapes match ``layout``."""
        if layout.granularity is not self.granularity:
            raise ValueError(
                f"importance granularity {self.granularity.value!r} does not match the layout's "
                f"{layout.granularity.value!r}"
            )
        layout.check_tensors(self.scores, what="importance map")

    def flatten(self) -> torch.Tensor:
        """All scores concatenated in layer order, ``float64 [total_scopes]`` on the CPU."""
        return torch.cat([s.reshape(-1).to("cpu", torch.float64) for s in self.scores.values()])
