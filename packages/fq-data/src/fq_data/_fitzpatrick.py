"""Fitzpatrick17k: groups from the Fitzpatrick skin type, sources in every supported form."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import datasets
import numpy as np
import polars as pl

from ._assemble import assemble
from ._common import DataError, require_columns
from ._hub import RawTable, images_from_paths, index_image_files, read_hub
from ._split import DEFAULT_TEST_FRACTION

logger = logging.getLogger("fq_data")

Grouping = Literal["type", "binary"]
GROUP_NAMES: dict[str, tuple[str, ...]] = {
    "type": ("1", "2", "3", "4", "5", "6"),
    "binary": ("1-3", "4-6"),
}
CSV_NAME = "fitzpatrick17k.csv"


def fitzpatrick_groups(values: pl.Series, *, grouping: Grouping) -> np.ndarray:
    """Group index per row, -1 for unknown type (``-1`` or empty), from Fitzpatrick types 1..6.

    ``type``: type t -> group t-1 (6 groups). ``binary``: types 1-3 -> 0, 4-6 -> 1.
    Any other value raises :class:`DataError` listing the offending values.
    """
    if grouping not in GROUP_NAMES:
        raise ValueError(f"grouping must be one of {sorted(GROUP_NAMES)}, got {grouping!r}")
    as_int = values.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
    raw = values.cast(pl.String).to_list()
    num = as_int.to_numpy()
    unknown = np.isnan(num) & np.array([r is None or r.strip() == "" for r in raw])
    unknown |= num == -1
    valid = np.isin(num, [1, 2, 3, 4, 5, 6])
    bad = ~(valid | unknown)
    if bad.any():
        found = sorted({str(raw[i]) for i in np.flatnonzero(bad)})
        raise DataError(
            f"unknown Fitzpatrick type value(s) {found[:10]} in column "
            f"{values.name!r}; allowed: 1..6, or -1/empty for unknown. For other group values "
            "use fq_data.load_dataset(source, image_col=, label_col=, group_col=) "
            "(command line: python -m fq_data inspect custom SOURCE --group-col ...)"
        )
    types = np.where(valid, num, 0).astype(np.int64)
    if grouping == "type":
        return np.where(valid, types - 1, -1)
    return np.where(valid, (types >= 4).astype(np.int64), -1)


def canonical_fitzpatrick_meta(
    raw: pl.DataFrame,
    *,
    label_col: str,
    group_col: str,
    grouping: Grouping,
    warn_unknown: bool = True,
) -> tuple[np.ndarray, pl.DataFrame, list[str]]:
    """``(keep mask [N], canonical meta of kept rows, class names)`` from the raw CSV columns."""
    require_columns(raw.columns, (label_col, group_col), what="fitzpatrick17k metadata")
    groups = fitzpatrick_groups(raw[group_col], grouping=grouping)
    labels = raw[label_col].cast(pl.String)
    keep = (groups >= 0) & labels.is_not_null().to_numpy()
    n_unknown = int((groups < 0).sum())
    if n_unknown:
        # a warning for the user's metadata; the copy shipped for semi-synthetic data is known
        logger.log(
            logging.WARNING if warn_unknown else logging.INFO,
            "fitzpatrick17k: dropped %d row(s) with unknown Fitzpatrick type (-1 or empty)",
            n_unknown,
        )
    n_nolabel = int(labels.is_null().sum())
    if n_nolabel:
        logger.info("fitzpatrick17k: dropped %d row(s) with no %r", n_nolabel, label_col)
    class_names = sorted(set(labels.filter(pl.Series(keep)).to_list()))
    index = {c: i for i, c in enumerate(class_names)}
    id_col = next((c for c in ("md5hash", "id") if c in raw.columns), None)
    ids = (
        raw[id_col].cast(pl.String)
        if id_col is not None
        else pl.Series([str(i) for i in range(raw.height)])
    )
    extras = raw
    if label_col != "label" and "label" in raw.columns:
        extras = extras.rename({"label": "condition"})
    elif "label" in raw.columns:
        extras = extras.with_columns(pl.col("label").alias("condition"))
    extras = extras.drop([c for c in ("label", "group", "id") if c in extras.columns])
    extras = extras.with_columns(
        [
            pl.col(c).cast(pl.String).cast(pl.Int64, strict=False)
            for c in ("fitzpatrick_scale", "fitzpatrick_centaur")
            if c in extras.columns
        ]
    )
    meta = pl.DataFrame(
        {
            "id": ids,
            "label": [index.get(v, -1) for v in labels.to_list()],
            "group": groups,
        }
    ).with_columns(pl.col("label").cast(pl.Int64), pl.col("group").cast(pl.Int64))
    meta = pl.concat([meta, extras], how="horizontal").filter(pl.Series(keep))
    return keep, meta, class_names


def _read_layout(root: Path) -> RawTable:
    csv = root / CSV_NAME if root.is_dir() else root
    raw = pl.read_csv(csv, infer_schema_length=0)  # strings; groups parsed explicitly
    require_columns(raw.columns, ("md5hash",), what=os.fspath(csv))
    files = index_image_files(csv.parent)
    paths = [files.get(h, str(csv.parent / f"{h}.jpg")) for h in raw["md5hash"].to_list()]
    return RawTable(images=images_from_paths(paths), meta=raw, given_split=None)


def is_fitzpatrick_layout(source: str | os.PathLike[str]) -> bool:
    """True for a folder holding ``fitzpatrick17k.csv`` (or that CSV itself)."""
    p = Path(source)
    return (p.is_dir() and (p / CSV_NAME).is_file()) or (p.is_file() and p.suffix == ".csv")


def load_fitzpatrick17k(
    source: str | os.PathLike[str],
    *,
    grouping: Grouping = "type",
    seed: int = 0,
    label_col: str = "label",
    group_col: str = "fitzpatrick_scale",
    image_col: str = "image",
    test_fraction: float = DEFAULT_TEST_FRACTION,
    split_file: str | os.PathLike[str] | None = None,
    strict: bool = False,
    verify_images: bool = True,
    skipped_out: str | os.PathLike[str] | None = None,
) -> datasets.DatasetDict:
    """Fitzpatrick17k as a canonical ``DatasetDict`` (``train``/``test``; image, label, group).

    ``source``: a folder in the original layout (``fitzpatrick17k.csv`` plus ``<md5hash>.jpg``
    files anywhere below it), or anything ``datasets.load_dataset`` reads (hub id, parquet folder
    such as the output of ``python -m fq_data prepare fitzpatrick17k``, imagefolder), or a
    ``save_to_disk`` folder. ``label_col``: ``label`` (114 conditions), ``nine_partition_label``
    or ``three_partition_label``. ``grouping``: ``type`` (6 groups "1".."6") or ``binary``
    ("1-3", "4-6"); unknown type (-1) rows are dropped and counted in a warning. Raw attributes
    (``fitzpatrick_scale``, ``condition``, partitions, ``qc``, ...) are kept. Split: the source's
    ``split_file`` if given, else the source's own train/test if it has both,
    else stratified by label x group (seeded).
    """
    src = os.fspath(source)
    if is_fitzpatrick_layout(src):
        table = _read_layout(Path(src))
    else:
        table = read_hub(src, image_col=image_col)
    keep, meta, class_names = canonical_fitzpatrick_meta(
        table.meta, label_col=label_col, group_col=group_col, grouping=grouping
    )
    images, given_split = table.kept(keep)
    return assemble(
        name="fitzpatrick17k",
        source=src,
        images=images,
        meta=meta,
        class_names=class_names,
        group_names=GROUP_NAMES[grouping],
        given_split=given_split,
        split_file=split_file,
        id_cols=("id", "md5hash"),
        seed=seed,
        test_fraction=test_fraction,
        strict=strict,
        verify_images=verify_images,
        skipped_out=skipped_out,
        description=f"Fitzpatrick17k from {src}; label={label_col}; grouping={grouping}",
    )
