"""The calibration result: one importance map per sensitive group."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from fq_quant import Granularity, ImportanceMap

#: Importance metrics of METHOD.md section 3 (per weight element ``i``, group ``g``).
METRICS: tuple[str, ...] = ("grape", "taylor", "gradient", "hessian")


@dataclass(frozen=True, kw_only=True, eq=False)
class GroupImportance:
    """Per-group importance maps from :func:`fq_importance.calibrate` (or built by hand).

    Attributes:
        importance: group id -> layer name -> float tensor of the layer's scope shape; every group
            has the same layers and shapes. Scores are sums over the calibration batches.
        counts: group id -> number of samples of that group seen (0 for a group that never appeared;
            its map is all zeros).
        metric: one of ``METRICS``.
        granularity: the scope granularity of the tensors.
        batches: number of calibration batches visited.
    """

    importance: Mapping[int, Mapping[str, torch.Tensor]]
    counts: Mapping[int, int]
    metric: str
    granularity: Granularity
    batches: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "granularity", Granularity.parse(self.granularity))
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}; got {self.metric!r}")
        if isinstance(self.batches, bool) or not isinstance(self.batches, int) or self.batches < 0:
            raise ValueError(f"batches must be an int >= 0; got {self.batches!r}")
        if not isinstance(self.importance, Mapping) or not self.importance:
            raise ValueError(
                "importance must be a non-empty mapping of group id -> {layer: tensor}"
            )
        groups = sorted(_group_id(g) for g in self.importance)
        if (
            not isinstance(self.counts, Mapping)
            or sorted(_group_id(g) for g in self.counts) != groups
        ):
            raise ValueError(
                f"counts must have exactly the groups of importance {groups}; got {list(self.counts)}"
            )
        counts = {}
        for g in groups:
            c = self.counts[g]
            if isinstance(c, bool) or not isinstance(c, int) or c < 0:
                raise ValueError(f"counts[{g}] must be an int >= 0; got {c!r}")
            counts[g] = c
        ref = self.importance[groups[0]]
        importance = {}
        for g in groups:
            maps = self.importance[g]
            if not isinstance(maps, Mapping) or list(maps) != list(ref):
                raise ValueError(
                    f"importance[{g}] must have the layers of importance[{groups[0]}] in the same order"
                )
            # ImportanceMap validates tensors (float, finite) for us.
            checked = ImportanceMap(self.granularity, maps).scores
            for name, t in checked.items():
                if t.shape != ref[name].shape:
                    raise ValueError(
                        f"importance[{g}][{name!r}] has shape {tuple(t.shape)}; "
                        f"importance[{groups[0]}][{name!r}] has {tuple(ref[name].shape)}"
                    )
            importance[g] = checked
        object.__setattr__(self, "importance", importance)
        object.__setattr__(self, "counts", counts)

    @property
    def groups(self) -> tuple[int, ...]:
        """The group ids, ascending."""
        return tuple(self.importance)

    @property
    def layers(self) -> tuple[str, ...]:
        """The layer names, in module order."""
        return tuple(next(iter(self.importance.values())))

    def group_map(self, group: int) -> ImportanceMap:
        """The importance map of one group (e.g. to allocate for that group alone)."""
        if group not in self.importance:
            raise KeyError(f"unknown group {group!r}; groups are {self.groups}")
        return ImportanceMap(self.granularity, self.importance[group])


def _group_id(g: object) -> int:
    if isinstance(g, bool) or not isinstance(g, int) or g < 0:
        raise TypeError(f"group ids must be ints >= 0; got {g!r}")
    return g
