"""Shared pieces of the data path: errors, canonical schema, cache directory, atomic writes."""

from __future__ import annotations

import contextlib
import csv
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import datasets

from ._io import atomic_write_bytes

SEMISYNTHETIC_MARKER = "semi-synthetic"
"""The plain words every semi-synthetic dataset carries in ``Dataset.info.description``."""

CANONICAL_COLUMNS = ("image", "label", "group", "id")
"""Columns every canonical split has, in this order; raw attributes follow."""

METADATA_DIR = Path(__file__).resolve().parent / "_metadata"
"""The copied real metadata CSVs (see ``_metadata/README.md`` for provenance and licences)."""


class DataError(ValueError):
    """Bad input data: a missing column, an unknown value, an empty split, a corrupt image, ..."""


def require_columns(found: Sequence[str], required: Iterable[str], *, what: str) -> None:
    """Raise :class:`DataError` naming the missing columns and listing the columns found."""
    missing = [c for c in required if c not in found]
    if missing:
        raise DataError(f"{what}: missing column(s) {missing}; columns found: {sorted(found)}")


def default_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir`` if given, else ``$FQ_CACHE_DIR``, else ``~/.cache/fq_bench``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("FQ_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "fq_bench"


def atomic_write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Write a small CSV atomically (used for skip lists and failure manifests)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def dataset_info(dd: datasets.DatasetDict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(class_names, group_names)`` of a canonical DatasetDict (checked first)."""
    check_canonical(dd)
    feats = dd["train"].features
    return tuple(feats["label"].names), tuple(feats["group"].names)


def is_semisynthetic(dd: datasets.DatasetDict | datasets.Dataset) -> bool:
    """True when the data is semi-synthetic (real metadata, generated pixels)."""
    splits = dd.values() if isinstance(dd, datasets.DatasetDict) else [dd]
    return any(SEMISYNTHETIC_MARKER in (s.info.description or "") for s in splits)


def check_canonical(dd: datasets.DatasetDict) -> None:
    """Raise :class:`DataError` unless ``dd`` has the canonical form.

    Canonical: splits ``train`` and ``test``, both non-empty, each with ``image`` (``Image``),
    ``label`` and ``group`` (``ClassLabel``) columns whose class names agree between the splits.
    """
    if not isinstance(dd, datasets.DatasetDict):
        raise TypeError(f"dataset_dict must be a datasets.DatasetDict, got {type(dd).__name__}")
    missing = [s for s in ("train", "test") if s not in dd]
    if missing:
        raise DataError(f"dataset_dict: missing split(s) {missing}; splits found: {sorted(dd)}")
    for name in ("train", "test"):
        ds = dd[name]
        require_columns(ds.column_names, ("image", "label", "group"), what=f"split {name!r}")
        if len(ds) == 0:
            raise DataError(f"split {name!r} is empty")
        if not isinstance(ds.features["image"], datasets.Image):
            raise DataError(
                f"split {name!r}: column 'image' must be datasets.Image, "
                f"got {ds.features['image']!r}"
            )
        for col in ("label", "group"):
            if not isinstance(ds.features[col], datasets.ClassLabel):
                raise DataError(
                    f"split {name!r}: column {col!r} must be datasets.ClassLabel, "
                    f"got {ds.features[col]!r}"
                )
    for col in ("label", "group"):
        a, b = dd["train"].features[col].names, dd["test"].features[col].names
        if a != b:
            raise DataError(
                f"class mappings of column {col!r} differ between splits: train {a} vs test {b}"
            )


class quiet_datasets(contextlib.ContextDecorator):
    """Silence ``datasets`` progress bars inside a library call, then restore them.

    Library code never prints; ``datasets`` shows tqdm bars for flatten/save/load by default.
    Usable as a context manager or a decorator.
    """

    def __enter__(self) -> quiet_datasets:
        self._was_enabled = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._was_enabled:
            datasets.enable_progress_bars()
