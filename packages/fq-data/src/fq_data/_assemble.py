"""From (raw images, metadata table) to the canonical ``DatasetDict``: check images, split, build.

Every source (original layouts, hub/parquet, the semi-synthetic generator) ends here, so the
canonical form, the skip list for bad images, and the split rules live in one place.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import datasets
import numpy as np
import polars as pl
from PIL import Image as PILImage

from ._common import DataError, atomic_write_csv, default_cache_dir, quiet_datasets
from ._split import DEFAULT_TEST_FRACTION, read_split_file, stratified_split

logger = logging.getLogger("fq_data")


def open_image(ref: dict | str, *, draft_size: int | None = None) -> PILImage.Image:
    """Open and fully decode one image from a datasets ``Image(decode=False)`` value or a path.

    ``draft_size`` lets JPEG decode at a reduced scale (much faster); a truncated or corrupt file
    still raises, because the whole stream is read.
    """
    if isinstance(ref, dict):
        data, path = ref.get("bytes"), ref.get("path")
        src = io.BytesIO(data) if data is not None else path
    else:
        src = ref
    if src is None:
        raise FileNotFoundError("image has neither bytes nor path")
    if isinstance(src, str):
        kind = not_a_regular_file(src)
        if kind is not None:  # a FIFO would block the read forever, a device never end
            raise OSError(f"{src}: not a regular file ({kind})")
    img = PILImage.open(src)
    try:
        if draft_size is not None and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        img.load()
    except BaseException:
        img.close()  # a corrupt file must not leave its handle open (ResourceWarning)
        raise
    return img


def not_a_regular_file(path: str) -> str | None:
    """None for a regular file (symlinks followed), else what it is: ``"fifo"``, ``"socket"``,
    ``"character device"``, ``"block device"``, ``"directory"``; ``"missing"`` if absent."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    if stat.S_ISREG(mode):
        return None
    for test, name in (
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "directory"),
    ):
        if test(mode):
            return name
    return "special file"


def _check_one(ref: dict | str | None) -> str | None:
    if ref is None:
        return "missing"
    path = ref if isinstance(ref, str) else ref.get("path")
    has_bytes = isinstance(ref, dict) and ref.get("bytes") is not None
    if not has_bytes:
        kind = "missing" if path is None else not_a_regular_file(path)
        if kind == "missing":
            return "missing"
        if kind is not None:
            return f"not a regular file ({kind})"
    try:
        open_image(ref, draft_size=32).close()
    except Exception as exc:  # PIL raises many types for corrupt data; all mean "corrupt"
        return f"corrupt: {type(exc).__name__}: {exc}"[:200]
    return None


@quiet_datasets()
def check_images(images: datasets.Dataset, *, workers: int = 4) -> list[str | None]:
    """For each row of a one-column ``image`` dataset: None if it decodes, else the reason."""
    raw = images.cast_column("image", datasets.Image(decode=False))
    reasons: list[str | None] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for batch in raw.iter(batch_size=256):
            reasons.extend(pool.map(_check_one, batch["image"]))
    return reasons


def _skipped_path(name: str, source: str, skipped_out: str | os.PathLike[str] | None) -> Path:
    if skipped_out is not None:
        return Path(skipped_out)
    digest = hashlib.sha1(source.encode()).hexdigest()[:10]
    return default_cache_dir() / "skipped" / f"{name}-{digest}.csv"


def _first_of_each_id(name: str, ids: pl.Series, *, strict: bool) -> np.ndarray:
    """Mask ``[N]`` keeping the first row of each id; repeats are refused under ``strict``,
    else dropped with a warning that counts them."""
    first = ids.is_first_distinct().to_numpy()
    n_dup = int((~first).sum())
    if n_dup:
        repeated = ids.filter(pl.Series(~first)).unique(maintain_order=True).to_list()
        listed = ", ".join(map(str, repeated[:5])) + (" ..." if len(repeated) > 5 else "")
        if strict:
            raise DataError(f"{name}: {n_dup} row(s) repeat an earlier id (strict=True): {listed}")
        logger.warning(
            "%s: dropped %d row(s) repeating an earlier id (kept the first of each): %s",
            name,
            n_dup,
            listed,
        )
    return first


def _check_classes_and_groups(
    name: str,
    labels: np.ndarray,
    groups: np.ndarray,
    parts: dict[str, np.ndarray],
    class_names: Sequence[str],
    group_names: Sequence[str],
) -> None:
    """Refuse a single-class task; warn about groups without a test row."""
    present = np.unique(labels[np.concatenate(list(parts.values()))])
    if len(present) < 2:
        only = [class_names[int(c)] for c in present]
        raise DataError(
            f"{name}: every usable row has the label {only}: a classifier needs at least two "
            "classes (its accuracy would be 100% and every gap 0 by construction); check the "
            "label column"
        )
    in_test = np.bincount(groups[parts["test"]], minlength=len(group_names))
    in_train = np.bincount(groups[parts["train"]], minlength=len(group_names))
    empty = [group_names[i] for i in range(len(group_names)) if in_test[i] == 0 and in_train[i]]
    if empty:
        logger.warning(
            "%s: group(s) %s have no test image: their accuracy cannot be measured and every "
            "fairness metric leaves them out (add images, or a split file giving them test rows)",
            name,
            empty,
        )


@quiet_datasets()
def assemble(
    *,
    name: str,
    source: str,
    images: datasets.Dataset,
    meta: pl.DataFrame,
    class_names: Sequence[str],
    group_names: Sequence[str],
    given_split: np.ndarray | None = None,
    split_file: str | os.PathLike[str] | None = None,
    id_cols: Sequence[str] = ("id",),
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    strict: bool = False,
    verify_images: bool = True,
    skipped_out: str | os.PathLike[str] | None = None,
    description: str = "",
) -> datasets.DatasetDict:
    """Build the canonical ``DatasetDict`` (splits ``train``/``test``).

    ``images``: one column ``image`` (any ``Image`` feature), aligned with ``meta``, whose columns
    are ``id`` (str), ``label`` and ``group`` (int indices into the names) and raw attributes.
    ``given_split``: ``[N]`` codes 0 train / 1 test from the source, used when no ``split_file``.
    Bad images are dropped, counted in a log line, and listed in a CSV (``skipped_out`` or a file in
    the cache dir); under ``strict`` they raise :class:`DataError` instead. Nothing is returned
    half-built: every check runs before any split is assembled. Rows repeating an earlier row's
    ``id`` are dropped with a warning (under ``strict``: :class:`DataError`), so no id is ever in
    both splits.
    """
    if len(images) != meta.height:
        raise ValueError(f"images ({len(images)}) and meta ({meta.height}) differ in length")
    keep = _first_of_each_id(name, meta["id"], strict=strict)
    if verify_images:
        reasons = check_images(images)
        bad = [(i, r) for i, r in enumerate(reasons) if r is not None]
        if bad:
            ids = meta["id"].to_list()
            if strict:
                listed = ", ".join(f"{ids[i]} ({r})" for i, r in bad[:10])
                raise DataError(
                    f"{name}: {len(bad)} missing or corrupt image(s) (strict=True): "
                    f"{listed}{' ...' if len(bad) > 10 else ''}"
                )
            out = _skipped_path(name, source, skipped_out)
            atomic_write_csv(out, ("id", "reason"), ((ids[i], r) for i, r in bad))
            logger.warning(
                "%s: skipped %d missing or corrupt image(s); list written to %s",
                name,
                len(bad),
                out,
            )
            keep[[i for i, _ in bad]] = False

    labels = meta["label"].to_numpy()
    groups = meta["group"].to_numpy()
    if split_file is not None:
        code = read_split_file(split_file, meta["id"].to_list(), id_cols=id_cols)
        unlisted = int(((code < 0) & keep).sum())
        if unlisted:
            logger.info(
                "%s: %d row(s) not in split file %s dropped", name, unlisted, os.fspath(split_file)
            )
        keep &= code >= 0
        is_test = code == 1
    elif given_split is not None:
        is_test = np.asarray(given_split) == 1
    else:
        is_test = np.zeros(meta.height, dtype=bool)
        idx = np.flatnonzero(keep)
        is_test[idx] = stratified_split(
            labels[idx], groups[idx], test_fraction=test_fraction, seed=seed
        )
    parts = {"train": np.flatnonzero(keep & ~is_test), "test": np.flatnonzero(keep & is_test)}
    for split, idx in parts.items():
        if len(idx) == 0:
            raise DataError(
                f"{name}: split {split!r} is empty after filtering ({int(keep.sum())} usable rows)"
            )
    _check_classes_and_groups(name, labels, groups, parts, class_names, group_names)

    meta_feats = datasets.Features.from_arrow_schema(meta.to_arrow().schema)
    meta_feats["id"] = datasets.Value("string")
    meta_feats["label"] = datasets.ClassLabel(names=list(class_names))
    meta_feats["group"] = datasets.ClassLabel(names=list(group_names))
    built = {}
    for split, idx in parts.items():
        meta_ds = datasets.Dataset.from_dict(
            meta[idx].to_dict(as_series=False), features=meta_feats
        )
        img_ds = images.select(idx).flatten_indices()
        ds = datasets.concatenate_datasets([img_ds, meta_ds], axis=1)
        ds = ds.cast_column("image", datasets.Image())
        order = ["image", "label", "group", "id"]
        ds = ds.select_columns(order + [c for c in ds.column_names if c not in order])
        ds.info.description = description
        built[split] = ds
    return datasets.DatasetDict(built)
