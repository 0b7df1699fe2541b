"""Reading any source ``datasets`` can read (hub id, parquet folder, imagefolder, save_to_disk)."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import polars as pl

from ._common import DataError, default_cache_dir, quiet_datasets, require_columns

logger = logging.getLogger("fq_data")


@dataclass(frozen=True, kw_only=True)
class RawTable:
    """A source read into one image column and one metadata table, aligned row by row.

    ``images``: a one-column dataset ``image`` (``Image(decode=False)``); ``meta``: the other
    columns (``ClassLabel`` columns as their names); ``given_split``: ``[N]`` codes 0 train /
    1 test when the source came split, else None.
    """

    images: datasets.Dataset
    meta: pl.DataFrame
    given_split: np.ndarray | None
    class_names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Columns that were ``ClassLabel`` in the source -> their names, in the source's order."""

    def kept(self, keep: np.ndarray) -> tuple[datasets.Dataset, np.ndarray | None]:
        """The images and the given split of the rows where ``keep`` (``[N]`` bool) holds."""
        idx = np.flatnonzero(keep)
        split = None if self.given_split is None else self.given_split[idx]
        return self.images.select(idx), split


_HUB_ID = re.compile(r"^(hf://)?[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".arrow")


def resolve_source(source: str) -> Path | str:
    """A local path (that exists) or a Hugging Face Hub id; a missing local path fails at once.

    ``source`` is local when it exists, or when it cannot be a Hub id: it starts with ``/``, ``.``
    or ``~``, ends with a table suffix (``.csv``, ``.parquet``, ...), has no ``/`` or more than one,
    or its first component is an existing folder (``data/fitz17k`` with ``data/`` present). A Hub
    id is ``owner/name`` (``hf://owner/name`` forces the Hub). A missing local path raises
    :class:`DataError` naming it, instead of ``datasets`` retrying the Hub for tens of seconds.
    """
    if source.startswith("hf://"):
        return source.removeprefix("hf://")
    path = Path(source).expanduser()
    if path.exists():
        return path
    first = Path(source).parts[0] if Path(source).parts else ""
    looks_local = (
        not _HUB_ID.match(source)
        or source.startswith((".", "~"))
        or source.lower().endswith(_TABLE_SUFFIXES)
        or (first and Path(first).is_dir())
    )
    if looks_local:
        raise DataError(
            f"source {source!r}: no such file or folder (resolved to {path.resolve()}); "
            "give an existing local path, or a Hugging Face Hub id as owner/name or "
            "hf://owner/name"
        )
    return source


def _check_imagefolder_metadata(folder: Path) -> None:
    """``datasets``' imagefolder joins metadata on a ``file_name`` column: say so up front."""
    for meta in sorted(folder.rglob("metadata.*")):
        if meta.suffix == ".csv":
            columns = pl.read_csv(meta, n_rows=0).columns
        elif meta.suffix == ".jsonl":
            columns = pl.read_ndjson(meta, n_rows=1).columns
        else:
            continue
        if "file_name" not in columns:
            raise DataError(
                f"{meta}: an image folder's metadata file needs a 'file_name' column (the image "
                f"path relative to it; datasets' imagefolder convention); columns found: "
                f"{sorted(columns)}. Rename the column, or read the folder with "
                "fq_data.load_dataset(folder, image_col=<your column>, ...)"
            )


def _open(source: str) -> datasets.DatasetDict:
    resolved = resolve_source(source)
    path = resolved if isinstance(resolved, Path) else None
    if path is not None and path.is_dir():
        _check_imagefolder_metadata(path)
    if (
        path is not None
        and path.is_dir()
        and ((path / "dataset_dict.json").exists() or (path / "state.json").exists())
    ):
        loaded = datasets.load_from_disk(str(path))
    else:
        cache = default_cache_dir() / "hf"
        target = str(resolved)
        if path is not None and path.is_file():
            # a single table file: datasets reads it through its format's builder
            kind = {".tsv": "csv", ".jsonl": "json"}.get(path.suffix.lower(), path.suffix[1:])
            loaded = datasets.load_dataset(kind, data_files=target, cache_dir=str(cache))
        else:
            try:
                loaded = datasets.load_dataset(target, cache_dir=str(cache))
            except ConnectionError as exc:
                raise DataError(
                    f"source {source!r}: not a local file or folder, and the Hugging Face Hub "
                    f"could not be reached for it ({exc})"
                ) from exc
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


@quiet_datasets()
def read_hub(source: str | os.PathLike[str], *, image_col: str = "image") -> RawTable:
    """Read ``source`` with ``datasets`` and flatten it to a :class:`RawTable`.

    Splits: ``train`` and ``test`` if the source has both (kept as given); a single split of any
    name is taken whole (and split later); other extra splits are ignored with a log line.
    """
    dd = _open(os.fspath(source))
    if "train" in dd and "test" in dd:
        names = ["train", "test"]
    elif len(dd) == 1:
        names = list(dd)
    elif "train" in dd:
        names = ["train"]
    else:
        raise DataError(
            f"{source}: cannot tell the training split among {sorted(dd)}; "
            "expected 'train' (and optionally 'test')"
        )
    ignored = sorted(set(dd) - set(names))
    if ignored:
        logger.info("%s: ignoring split(s) %s", source, ignored)
    for name in names:
        require_columns(dd[name].column_names, (image_col,), what=f"{source} split {name!r}")
    # class mappings must agree between given splits, or label indices mean different classes
    for col, feat in dd[names[0]].features.items():
        if isinstance(feat, datasets.ClassLabel):
            for other in names[1:]:
                feat2 = dd[other].features.get(col)
                if isinstance(feat2, datasets.ClassLabel) and feat2.names != feat.names:
                    raise DataError(
                        f"{source}: class mappings of column {col!r} differ between "
                        f"splits: {names[0]} {feat.names} vs {other} {feat2.names}"
                    )
    images, metas = [], []
    class_names = {
        col: tuple(feat.names)
        for col, feat in dd[names[0]].features.items()
        if isinstance(feat, datasets.ClassLabel) and col != image_col
    }
    for name in names:
        ds = dd[name]
        img = ds.select_columns([image_col])
        if image_col != "image":
            img = img.rename_column(image_col, "image")
        images.append(img.cast_column("image", datasets.Image(decode=False)))
        meta = ds.remove_columns([image_col]).to_polars()
        for col, feat in ds.features.items():
            if isinstance(feat, datasets.ClassLabel) and col != image_col:
                meta = meta.with_columns(
                    pl.col(col).map_elements(feat.int2str, return_dtype=pl.String)
                )
        metas.append(meta)
    given = None
    if len(names) == 2:
        given = np.concatenate(
            [np.zeros(len(dd["train"]), np.int64), np.ones(len(dd["test"]), np.int64)]
        )
    return RawTable(
        images=datasets.concatenate_datasets(images),
        meta=pl.concat(metas, how="diagonal_relaxed"),
        given_split=given,
        class_names=class_names,
    )


def images_from_paths(paths: list[str]) -> datasets.Dataset:
    """A one-column ``image`` dataset referencing files by path (decoded lazily)."""
    feats = datasets.Features({"image": datasets.Image(decode=False)})
    return datasets.Dataset.from_dict({"image": paths}, features=feats)


def index_image_files(root: Path) -> dict[str, str]:
    """Map file stem -> path for every image file under ``root`` (recursive)."""
    found: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in {".jpg", ".jpeg", ".png"} and p.is_file():
            found.setdefault(p.stem, str(p))
    return found
