"""Your own data: any labelled image source with any group column, in the canonical form."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import polars as pl

from ._assemble import assemble
from ._common import CANONICAL_COLUMNS, DataError, require_columns
from ._hub import RawTable, images_from_paths, read_hub, resolve_source

logger = logging.getLogger("fq_data")

_TABLE_READERS = {
    ".csv": lambda p: pl.read_csv(p, infer_schema_length=0),
    ".tsv": lambda p: pl.read_csv(p, separator="\t", infer_schema_length=0),
    ".jsonl": pl.read_ndjson,
    ".parquet": pl.read_parquet,
}


def _value_names(values: pl.Series, given: Sequence[str] | None) -> list[str]:
    """Sorted distinct values as strings: numerically when every value is a number.

    ``given``: the source's ``ClassLabel`` names, kept in their order (unused names included, so
    the indices mean what they meant in the source).
    """
    if given is not None:
        return list(given)
    distinct = [str(v) for v in values.drop_nulls().unique().to_list()]
    try:
        return sorted(distinct, key=lambda v: (float(v), v))
    except ValueError:
        return sorted(distinct)


def _codes(values: pl.Series, names: Sequence[str], *, column: str) -> np.ndarray:
    """Index of each value in ``names`` (-1 for null); a value not in ``names`` raises."""
    index = {n: i for i, n in enumerate(names)}
    raw = values.to_list()
    out = np.array([-1 if v is None else index.get(str(v), -2) for v in raw], dtype=np.int64)
    if (out == -2).any():
        bad = sorted({str(raw[i]) for i in np.flatnonzero(out == -2)})
        raise DataError(f"column {column!r}: value(s) {bad[:10]} not among {list(names)[:20]}")
    return out


def _blank_to_null(values: pl.Series) -> pl.Series:
    if values.dtype == pl.String:
        return values.str.strip_chars().replace("", None)
    return values


def _find_table(folder: Path, image_col: str) -> Path | None:
    """The one metadata table directly in ``folder`` that holds ``image_col``, if any."""
    tables = sorted(p for p in folder.iterdir() if p.suffix.lower() in _TABLE_READERS)
    holding = []
    for p in tables:
        head = (
            pl.read_csv(p, n_rows=0, separator="\t" if p.suffix.lower() == ".tsv" else ",").columns
            if p.suffix.lower() in (".csv", ".tsv")
            else _TABLE_READERS[p.suffix.lower()](p).columns
        )
        if image_col in head:
            holding.append(p)
    if len(holding) > 1:
        raise DataError(
            f"{folder}: several tables hold column {image_col!r}: {[p.name for p in holding]}; "
            "pass the one to use as the source"
        )
    return holding[0] if holding else None


def _read_table_of_paths(table: Path, image_col: str) -> RawTable:
    """A CSV/TSV/JSONL/parquet table whose ``image_col`` holds image paths (relative to it)."""
    meta = _TABLE_READERS[table.suffix.lower()](table)
    require_columns(meta.columns, (image_col,), what=os.fspath(table))
    rel = meta[image_col].cast(pl.String).to_list()
    if any(v is None or not v.strip() for v in rel):
        n = sum(v is None or not v.strip() for v in rel)
        raise DataError(f"{table}: {n} row(s) with an empty {image_col!r} (image path)")
    paths = [str(table.parent / v.strip()) for v in rel]
    meta = meta.with_columns(pl.Series(image_col, [v.strip() for v in rel]))
    return RawTable(images=images_from_paths(paths), meta=meta, given_split=None)


def read_source(source: str | os.PathLike[str], *, image_col: str) -> RawTable:
    """Read ``source`` into a :class:`RawTable` (see :func:`load_dataset` for the forms)."""
    resolved = resolve_source(os.fspath(source))
    if isinstance(resolved, Path):
        if resolved.is_file() and resolved.suffix.lower() in _TABLE_READERS:
            with_paths = resolved.suffix.lower() != ".parquet" or (
                image_col in pl.read_parquet_schema(resolved)
                and pl.read_parquet_schema(resolved)[image_col] == pl.String
            )
            if with_paths:
                return _read_table_of_paths(resolved, image_col)
        elif resolved.is_dir():
            table = _find_table(resolved, image_col)
            if table is not None:
                return _read_table_of_paths(table, image_col)
    return read_hub(os.fspath(source), image_col=image_col)


def load_dataset(
    source: str | os.PathLike[str],
    *,
    image_col: str,
    label_col: str,
    group_col: str,
    test_fraction: float = 0.2,
    seed: int = 0,
    split_file: str | os.PathLike[str] | None = None,
    strict: bool = False,
    verify_images: bool = True,
    skipped_out: str | os.PathLike[str] | None = None,
) -> datasets.DatasetDict:
    """Any labelled image source with any group column, as a canonical ``DatasetDict``.

    ``source`` is one of:

    - a table file (``.csv``, ``.tsv``, ``.jsonl``, or ``.parquet`` with a string ``image_col``)
      whose ``image_col`` holds image paths relative to the table's folder (or absolute);
    - a folder holding one such table directly (e.g. ``images/`` plus ``labels.csv`` with a
      ``file`` column: ``image_col="file"``);
    - anything ``datasets`` reads: an imagefolder with ``metadata.csv``/``.jsonl`` (its image
      column is ``image``), a parquet folder, a ``save_to_disk`` folder, or a Hub id
      (``owner/name``; ``hf://owner/name`` forces the Hub).

    A local path that does not exist raises :class:`DataError` at once, naming it.

    Labels and groups may hold any values (strings or ints): class and group names are their
    distinct values as strings, sorted (numerically when all are numbers), or the source's
    ``ClassLabel`` names in their order. Rows with an empty label or group are dropped and
    counted in a warning. The other columns are kept as raw attributes (a column named like a
    canonical one, ``image``/``label``/``group``/``id``, gets the suffix ``_raw``); ``id`` is the
    source's ``id`` column, else the image path, else the row number. Split: ``split_file``
    (CSV with ``id`` or ``image_col``, and ``split``) if given, else the source's own
    ``train``/``test``, else stratified by label x group (``test_fraction``, seeded). Missing or
    corrupt images are skipped and listed (``strict=True``: raise), as for every source.
    """
    for name, col in (("image_col", image_col), ("label_col", label_col), ("group_col", group_col)):
        if not isinstance(col, str) or not col:
            raise ValueError(f"{name} must be a non-empty column name, got {col!r}")
    if len({image_col, label_col, group_col}) < 3:
        raise ValueError(
            f"image_col, label_col and group_col must be three different columns, got "
            f"{image_col!r}, {label_col!r}, {group_col!r}"
        )
    src = os.fspath(source)
    table = read_source(src, image_col=image_col)
    raw = table.meta
    image_key = image_col if image_col in raw.columns else None
    require_columns(raw.columns, (label_col, group_col), what=f"source {src!r}")
    labels = _blank_to_null(raw[label_col])
    groups = _blank_to_null(raw[group_col])
    keep = (labels.is_not_null() & groups.is_not_null()).to_numpy()
    n_dropped = int((~keep).sum())
    if n_dropped:
        logger.warning(
            "%s: dropped %d row(s) with an empty %r or %r", src, n_dropped, label_col, group_col
        )
    class_names = _value_names(labels.filter(pl.Series(keep)), table.class_names.get(label_col))
    group_names = _value_names(groups.filter(pl.Series(keep)), table.class_names.get(group_col))
    for what, names in (("label", class_names), ("group", group_names)):
        if not names:
            raise DataError(f"source {src!r}: no row has a {what}")
    if "id" in raw.columns:
        ids = raw["id"].cast(pl.String)
    elif image_key is not None:
        ids = raw[image_key].cast(pl.String)
    else:
        ids = pl.Series([str(i) for i in range(raw.height)])
    extras = raw.drop([c for c in (image_key, label_col, group_col) if c is not None])
    extras = extras.rename({c: f"{c}_raw" for c in extras.columns if c in CANONICAL_COLUMNS})
    meta = pl.concat(
        [
            pl.DataFrame(
                {
                    "id": ids,
                    "label": _codes(labels, class_names, column=label_col),
                    "group": _codes(groups, group_names, column=group_col),
                }
            ),
            extras,
        ],
        how="horizontal",
    ).filter(pl.Series(keep))
    images, given_split = table.kept(keep)
    return assemble(
        name="custom",
        source=src,
        images=images,
        meta=meta,
        class_names=class_names,
        group_names=group_names,
        given_split=given_split,
        split_file=split_file,
        id_cols=("id", image_col),
        seed=seed,
        test_fraction=test_fraction,
        strict=strict,
        verify_images=verify_images,
        skipped_out=skipped_out,
        description=f"custom data from {src}; label={label_col}; group={group_col}",
    )
