"""Reading any source ``datasets`` can read (hub id, parquet folder, imagefolder, save_to_disk)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
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


def _open(source: str) -> datasets.DatasetDict:
    path = Path(source)
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        loaded = datasets.load_from_disk(str(path))
    else:
        cache = default_cache_dir() / "hf"
        loaded = datasets.load_dataset(str(source), cache_dir=str(cache))
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
