"""A dataset as the grid uses it: loaded once per process, its loaders, its binary grouping."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

if TYPE_CHECKING:
    from fq_data import SynthName, SynthVariant

    from ._config import GridConfig


def binary_grouping(group_names: tuple[str, ...]) -> tuple[list[int], tuple[str, str]]:
    """Map the dataset's groups onto two (``-1`` = left out) for the subtractive reducer.

    Fitzpatrick types ``1``-``3`` -> 0 and ``4``-``6`` -> 1; ISIC ``female`` -> 0, ``male`` -> 1,
    other (unknown sex) -> -1; a dataset with two groups keeps them.
    """
    names = [str(n) for n in group_names]
    if names and set(names) <= {"1", "2", "3", "4", "5", "6"}:
        return [0 if int(n) <= 3 else 1 for n in names], ("1-3", "4-6")
    if "female" in names and "male" in names:
        return [{"female": 0, "male": 1}.get(n, -1) for n in names], ("female", "male")
    if len(names) == 2:
        return [0, 1], (names[0], names[1])
    raise ValueError(f"no binary grouping known for groups {names}; Guo et al. needs two groups")


def grouping_map(data: DataBundle, grouping: str) -> list[int] | None:
    """Group id -> calibration group for ``grouping``: ``"type"`` keeps the dataset's groups
    (``None``), ``"binary"`` maps onto two (:func:`binary_grouping`), ``"pooled"`` puts every
    sample in group 0 (the group-blind control's one pooled loss)."""
    if grouping == "type":
        return None
    if grouping == "binary":
        return data.binary_map
    if grouping == "pooled":
        return [0] * len(data.loaders.group_names)
    raise ValueError(f"grouping={grouping!r} is invalid; allowed: 'type', 'binary', 'pooled'")


class RemapGroups:
    """A loader whose group ids go through ``mapping`` (rows mapped to -1 are dropped)."""

    def __init__(self, loader: Any, mapping: list[int]):
        self.loader, self.mapping = loader, torch.tensor(mapping, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for x, y, g in self.loader:
            gb = self.mapping[g]
            keep = gb >= 0
            if not bool(keep.all()):
                x, y, gb = x[keep], y[keep], gb[keep]
            if len(gb):
                yield x, y, gb


class Batches:
    """``n`` batches from ``loader``, running over as many epochs as needed (calibration)."""

    def __init__(self, loader: Any, n: int):
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Any]:
        seen = 0
        while seen < self.n:
            for batch in self.loader:
                yield batch
                seen += 1
                if seen == self.n:
                    return


@dataclass(kw_only=True)
class DataBundle:
    """One dataset, loaded and decoded once per process, with its loaders."""

    name: str
    source: str
    loaders: Any
    semisynthetic: bool
    n_train: int
    n_test: int
    binary_map: list[int]
    binary_names: tuple[str, str]
    privileged_binary: int
    #: ``fq_data.dataset_fingerprint(dd, images="content")`` of a dataset read from a source
    #: (custom, Hub, a real folder): its labels, groups, rows, split and image bytes. ``None`` for
    #: semi-synthetic data, which the config's fields (and the generator's cache key) determine.
    content: str | None = None

    def reseed(self, seed: int) -> Any:
        """The train loader, its shuffling and augmentation reset to ``seed`` at epoch 0."""
        sampler = self.loaders.train.batch_sampler
        sampler.seed = int(seed)
        sampler.set_epoch(0)
        return self.loaders.train


def spread_rows(groups: np.ndarray, binary_map: list[int] | None, n: int) -> np.ndarray:
    """The indices of ``n`` rows of a split (``groups``: its group ids, ``[N]``) taken in turn
    from each group, in their order within the group; the groups take turns so that consecutive
    ones alternate between the two sides of ``binary_map`` (group id -> 0, 1, or -1: neither),
    the sides' groups first. Any two consecutive rows then span both sides where the split has
    both (a rehearsal's batch of two calibrates Guo et al.'s binary grouping)."""
    ids = sorted({int(g) for g in groups})
    if binary_map is None:
        order = ids
    else:
        side = {k: [g for g in ids if binary_map[g] == k] for k in (0, 1, -1)}
        pairs = [g for pair in itertools.zip_longest(side[0], side[1]) for g in pair]
        order = [g for g in pairs if g is not None] + side[-1]
    rows = [list(np.flatnonzero(groups == g)) for g in order]
    turns = [i for turn in itertools.zip_longest(*rows) for i in turn if i is not None]
    return np.asarray(turns[:n], dtype=np.int64)


def _cut(dd: Any, rows: int) -> Any:
    """``dd`` with at most ``rows`` rows per split (:func:`spread_rows`)."""
    from fq_data import dataset_info

    _, group_names = dataset_info(dd)
    try:
        binary: list[int] | None = binary_grouping(group_names)[0]
    except ValueError:
        binary = None
    for split in ("train", "test"):
        groups = np.asarray(dd[split]["group"], dtype=np.int64)
        dd[split] = dd[split].select(spread_rows(groups, binary, rows).tolist())
    return dd


def load_data(config: GridConfig, dataset: str, *, rows_per_split: int | None = None) -> DataBundle:
    """Load ``dataset`` (semi-synthetic unless a source is configured) and build its loaders.

    ``rows_per_split``: keep at most that many rows of the train and the test split, taken in
    turn from each group (:func:`spread_rows`; the rehearsal's stages of a batch or two). Data
    read from a source also gets its content fingerprint (``DataBundle.content``).
    """
    from fq_data import is_semisynthetic, make_loaders

    source = config.data_source(dataset)
    label_col = config.label_column(dataset)
    if source == "semisynthetic":
        from fq_data import load_semisynthetic

        dd = load_semisynthetic(
            cast("SynthName", dataset),  # GridConfig.__post_init__ checked the name
            n=config.n_images,
            image_size=config.image_size,
            seed=0,
            test_fraction=config.test_fraction,
            label_col=label_col,
            min_test_per_group=config.min_test_per_group,
            variant=cast("SynthVariant", config.variant),  # checked by GridConfig
        )
    elif config.is_custom(dataset):
        from fq_data import load_dataset

        cols = config.custom_columns(dataset)
        dd = load_dataset(
            source,
            seed=0,
            test_fraction=config.test_fraction,
            image_col=cols["image_col"],
            label_col=cols["label_col"],
            group_col=cols["group_col"],
        )
    elif dataset == "fitzpatrick17k":
        from fq_data import load_fitzpatrick17k

        dd = load_fitzpatrick17k(
            source, seed=0, test_fraction=config.test_fraction, label_col=label_col or "label"
        )
    else:
        from fq_data import load_isic2019

        dd = load_isic2019(source, seed=0, test_fraction=config.test_fraction, label_col=label_col)
    if rows_per_split is not None:
        dd = _cut(dd, rows_per_split)
    loaders = make_loaders(
        dd, image_size=config.image_size, batch_size=config.batch_size, train=True, seed=0
    )
    train_groups = torch.as_tensor(np.asarray(dd["train"]["group"], dtype=np.int64))
    try:
        mapping, names = binary_grouping(loaders.group_names)
    except ValueError:  # any other groups (a user's own): the largest against the rest
        sizes = torch.bincount(train_groups, minlength=len(loaders.group_names))
        top = int(sizes.argmax())
        mapping = [1 if k == top else 0 for k in range(len(loaders.group_names))]
        names = ("rest", str(loaders.group_names[top]))
    content = None
    if source != "semisynthetic":
        from fq_data import dataset_fingerprint

        content = dataset_fingerprint(dd, images="content")
    binary = torch.tensor(mapping)[train_groups]
    counts = [int((binary == k).sum()) for k in (0, 1)]
    return DataBundle(
        name=dataset,
        source=source,
        loaders=loaders,
        semisynthetic=is_semisynthetic(dd),
        n_train=len(dd["train"]),
        n_test=len(dd["test"]),
        binary_map=mapping,
        binary_names=names,
        privileged_binary=int(counts[1] > counts[0]),
        content=content,
    )
