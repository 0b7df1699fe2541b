"""Your own data: any labelled image source with any group column, in the canonical form."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Sequence
from pathlib import Path

import datasets
import numpy as np
import polars as pl

from ._assemble import assemble
from ._common import CANONICAL_COLUMNS, DataError, require_columns
from ._hub import RawTable, images_from_paths, read_hub, resolve_source
from ._split import DEFAULT_TEST_FRACTION

logger = logging.getLogger("fq_data")

_TABLE_READERS = {
    ".csv": lambda p: pl.read_csv(p, infer_schema_length=0),
    ".tsv": lambda p: pl.read_csv(p, separator="\t", infer_schema_length=0),
    ".jsonl": pl.read_ndjson,
    ".parquet": pl.read_parquet,
}

#: Cell values read as missing in a label or group column (after stripping spaces): pandas'
#: default ``na_values`` list, which polars/pandas users expect. A float NaN (parquet, JSON) is
#: missing too. Pass ``missing_values=MISSING_VALUES - {"NA"}`` (``--keep-value NA``) to keep a
#: literal value as a class or group.
MISSING_VALUES: frozenset[str] = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    }
)


def _read_table(path: Path, *, header_only: bool = False) -> pl.DataFrame:
    """One metadata table; an empty or unreadable file is a :class:`DataError` naming it."""
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the table file is empty (0 bytes); expected a header row")
    suffix = path.suffix.lower()
    try:
        if header_only and suffix in (".csv", ".tsv"):
            return pl.read_csv(path, n_rows=0, separator="\t" if suffix == ".tsv" else ",")
        return _TABLE_READERS[suffix](path)
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the table ({type(exc).__name__}: {exc})") from exc


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


def _as_missing(values: pl.Series, missing: frozenset[str]) -> pl.Series:
    """``values`` with every missing marker (stripped strings in ``missing``, float NaN) null."""
    if values.dtype == pl.String:
        stripped = values.str.strip_chars()
        return stripped.replace(sorted(missing), None) if missing else stripped
    if values.dtype.is_float():
        return values.fill_nan(None)
    return values


def _check_missing_values(missing_values: Collection[str]) -> frozenset[str]:
    if isinstance(missing_values, str) or not all(isinstance(v, str) for v in missing_values):
        raise ValueError(
            "missing_values must be a collection of strings (e.g. fq_data.MISSING_VALUES - "
            f"{{'NA'}}); got {missing_values!r}"
        )
    return frozenset(v.strip() for v in missing_values)


def _find_table(folder: Path, image_col: str) -> Path | None:
    """The one metadata table directly in ``folder`` that holds ``image_col``, if any."""
    tables = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in _TABLE_READERS and p.is_file()
    )
    holding, columns = [], {}
    for p in tables:
        columns[p.name] = _read_table(p, header_only=True).columns
        if image_col in columns[p.name]:
            holding.append(p)
    if len(holding) > 1:
        raise DataError(
            f"{folder}: several tables hold column {image_col!r}: {[p.name for p in holding]}; "
            "pass the one to use as the source"
        )
    # a user's own table (not datasets' imagefolder metadata.*) without the image column: name
    # its columns, instead of falling back to the imagefolder reader and its 'image' column
    own = {k: v for k, v in columns.items() if not k.startswith("metadata.")}
    if not holding and own and not any(p.suffix.lower() == ".parquet" for p in tables):
        found = "; ".join(f"{name}: {sorted(cols)}" for name, cols in own.items())
        raise DataError(
            f"{folder}: no table holds the image column {image_col!r} (image_col); columns "
            f"found: {found}. Pass image_col= the column that holds the image paths"
        )
    return holding[0] if holding else None


def _resolve_paths(
    table: Path, rel: list[str], *, allow_outside_root: bool
) -> tuple[list[str], list[str]]:
    """``(files, keys)`` of each row's image: the resolved file (symlinks followed), and its key,
    the path relative to the dataset root (the table's folder, resolved) in ``/`` form, or the
    resolved absolute path of a file outside the root (only with ``allow_outside_root``)."""
    root = table.parent.resolve()
    files, keys, outside = [], [], []
    for v in rel:
        p = Path(v)
        full = (p if p.is_absolute() else root / p).resolve()
        files.append(str(full))
        if full.is_relative_to(root):
            keys.append(full.relative_to(root).as_posix())
        else:
            keys.append(full.as_posix())
            outside.append(v)
    if outside and not allow_outside_root:
        listed = ", ".join(repr(v) for v in outside[:5]) + (" ..." if len(outside) > 5 else "")
        raise DataError(
            f"{table}: {len(outside)} image path(s) lead outside the dataset folder {root} once "
            f"resolved (absolute, '..' or a symlink): {listed}; move the images under it, or "
            "pass allow_outside_root=True (--allow-outside-root) to read them"
        )
    return files, keys


def _read_table_of_paths(table: Path, image_col: str, *, allow_outside_root: bool) -> RawTable:
    """A CSV/TSV/JSONL/parquet table whose ``image_col`` holds image paths (relative to it).

    ``image_col`` in the returned meta holds each image's normalised key (see
    :func:`_resolve_paths`), so spellings of one file (``./a.png``, ``x/../a.png``) agree.
    """
    meta = _read_table(table)
    require_columns(meta.columns, (image_col,), what=os.fspath(table))
    rel = meta[image_col].cast(pl.String).to_list()
    if any(v is None or not v.strip() for v in rel):
        n = sum(v is None or not v.strip() for v in rel)
        raise DataError(f"{table}: {n} row(s) with an empty {image_col!r} (image path)")
    files, keys = _resolve_paths(
        table, [v.strip() for v in rel], allow_outside_root=allow_outside_root
    )
    meta = meta.with_columns(pl.Series(image_col, keys))
    return RawTable(images=images_from_paths(files), meta=meta, given_split=None)


def read_source(
    source: str | os.PathLike[str], *, image_col: str, allow_outside_root: bool = False
) -> RawTable:
    """Read ``source`` into a :class:`RawTable` (see :func:`load_dataset` for the forms)."""
    resolved = resolve_source(os.fspath(source))
    if isinstance(resolved, Path):
        if resolved.is_file() and resolved.suffix.lower() in _TABLE_READERS:
            with_paths = resolved.suffix.lower() != ".parquet" or (
                image_col in pl.read_parquet_schema(resolved)
                and pl.read_parquet_schema(resolved)[image_col] == pl.String
            )
            if with_paths:
                return _read_table_of_paths(
                    resolved, image_col, allow_outside_root=allow_outside_root
                )
        elif resolved.is_dir():
            table = _find_table(resolved, image_col)
            if table is not None:
                return _read_table_of_paths(table, image_col, allow_outside_root=allow_outside_root)
    return read_hub(os.fspath(source), image_col=image_col)


def _first_of_each_file(src: str, keys: pl.Series, *, strict: bool) -> np.ndarray:
    """Mask ``[N]`` keeping the first row naming each image file (``keys``: resolved paths)."""
    first = keys.is_first_distinct().to_numpy()
    n_dup = int((~first).sum())
    if n_dup:
        listed = keys.filter(pl.Series(~first)).unique(maintain_order=True).to_list()[:5]
        if strict:
            raise DataError(
                f"{src}: {n_dup} row(s) name an image file an earlier row names (strict=True): "
                f"{listed}"
            )
        logger.warning(
            "%s: dropped %d row(s) naming an image file an earlier row names (kept the first of "
            "each): %s",
            src,
            n_dup,
            listed,
        )
    return first


def load_dataset(
    source: str | os.PathLike[str],
    *,
    image_col: str,
    label_col: str,
    group_col: str,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
    split_file: str | os.PathLike[str] | None = None,
    strict: bool = False,
    verify_images: bool = True,
    skipped_out: str | os.PathLike[str] | None = None,
    missing_values: Collection[str] = MISSING_VALUES,
    allow_outside_root: bool = False,
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
    ``ClassLabel`` names in their order. Rows with a missing label or group (an empty cell, a
    marker in ``missing_values``, default :data:`MISSING_VALUES`: ``NA``, ``NaN``, ``null``,
    ``None``, ``N/A``, ...; a float NaN) are dropped and counted in a warning.

    Image paths are resolved (symlinks followed) before anything else: spellings of one file
    (``img/1.png``, ``./img/1.png``, ``img/../img/1.png``) are one image, whose id is its path
    relative to the table's folder, and a row naming a file an earlier row named is dropped with
    a warning (``strict=True``: :class:`DataError`). A path leading outside the table's folder
    (absolute, ``..``, or a symlink to elsewhere) is a :class:`DataError` unless
    ``allow_outside_root=True``. The other columns are kept as raw attributes (a column named like a
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
    missing = _check_missing_values(missing_values)
    src = os.fspath(source)
    table = read_source(src, image_col=image_col, allow_outside_root=allow_outside_root)
    raw = table.meta
    image_key = image_col if image_col in raw.columns else None
    require_columns(raw.columns, (label_col, group_col), what=f"source {src!r}")
    labels = _as_missing(raw[label_col], missing)
    groups = _as_missing(raw[group_col], missing)
    keep = (labels.is_not_null() & groups.is_not_null()).to_numpy()
    n_dropped = int((~keep).sum())
    if n_dropped:
        logger.warning(
            "%s: dropped %d row(s) with a missing %r or %r (empty, or a marker of "
            "fq_data.MISSING_VALUES such as NA, NaN, null)",
            src,
            n_dropped,
            label_col,
            group_col,
        )
    if image_key is not None and "id" in raw.columns:
        keep &= _first_of_each_file(src, raw[image_key], strict=strict)
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
