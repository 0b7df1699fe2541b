"""ISIC 2019: label from the one-hot ground truth, group from sex (female / male / unknown)."""

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

UnknownSex = Literal["group", "drop"]
ISIC_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
"""The 8 training classes, in the ground-truth CSV's column order (UNK has no training image)."""
GT_NAME = "ISIC_2019_Training_GroundTruth.csv"
META_NAME = "ISIC_2019_Training_Metadata.csv"
INPUT_DIR = "ISIC_2019_Training_Input"
_UNKNOWN_SEX = {"", "unknown", "nan", "none", "null"}


def sex_groups(values: pl.Series, *, unknown_sex: UnknownSex) -> tuple[np.ndarray, tuple[str, ...]]:
    """``(group index per row, group names)``; -1 marks a dropped row (unknown under ``drop``)."""
    if unknown_sex not in ("group", "drop"):
        raise ValueError(f"unknown_sex must be 'group' or 'drop', got {unknown_sex!r}")
    raw = [None if v is None else str(v).strip().lower() for v in values.to_list()]
    bad = sorted({v for v in raw if v is not None and v not in _UNKNOWN_SEX | {"female", "male"}})
    if bad:
        raise DataError(
            f"unknown sex value(s) {bad[:10]} in column {values.name!r}; allowed: "
            "female, male, or empty/unknown"
        )
    unknown_code = 2 if unknown_sex == "group" else -1
    code = {"female": 0, "male": 1}
    groups = np.array([code.get(v, unknown_code) if v else unknown_code for v in raw], np.int64)
    names = ("female", "male", "unknown") if unknown_sex == "group" else ("female", "male")
    return groups, names


def diagnosis_from_onehot(gt: pl.DataFrame) -> pl.Series:
    """The class name per row from the one-hot ground truth; rows not one-hot raise DataError."""
    require_columns(gt.columns, ("image", *ISIC_CLASSES), what=GT_NAME)
    onehot = gt.select([pl.col(c).cast(pl.Float64) for c in ISIC_CLASSES]).to_numpy()
    ok = (np.isclose(onehot.sum(axis=1), 1.0)) & np.isclose(onehot.max(axis=1), 1.0)
    if "UNK" in gt.columns:  # UNK has no training image; a row marked UNK is not usable
        ok &= np.isclose(gt["UNK"].cast(pl.Float64).fill_null(0.0).to_numpy(), 0.0)
    if not ok.all():
        bad = gt["image"].filter(pl.Series(~ok)).to_list()
        raise DataError(
            f"{GT_NAME}: {len(bad)} row(s) are not one-hot over {list(ISIC_CLASSES)} "
            f"(UNK or malformed): {bad[:10]}"
        )
    return pl.Series("diagnosis", [ISIC_CLASSES[i] for i in onehot.argmax(axis=1)])


def read_isic_metadata(gt_csv: Path, meta_csv: Path) -> pl.DataFrame:
    """Ground truth joined with metadata on ``image``; adds the ``diagnosis`` column."""
    gt = pl.read_csv(gt_csv, infer_schema_length=0)
    md = pl.read_csv(meta_csv, infer_schema_length=0)
    require_columns(md.columns, ("image", "sex"), what=meta_csv.name)
    out = gt.select("image").with_columns(diagnosis_from_onehot(gt))
    out = out.join(md, on="image", how="left")
    if "age_approx" in out.columns:
        out = out.with_columns(pl.col("age_approx").cast(pl.Float64, strict=False))
    return out


def canonical_isic_meta(
    raw: pl.DataFrame, *, label_col: str, group_col: str, id_col: str, unknown_sex: UnknownSex
) -> tuple[np.ndarray, pl.DataFrame, list[str], tuple[str, ...]]:
    """``(keep [N], canonical meta of kept rows, class names, group names)``."""
    require_columns(raw.columns, (label_col, group_col), what="isic2019 metadata")
    groups, group_names = sex_groups(raw[group_col], unknown_sex=unknown_sex)
    labels = raw[label_col].cast(pl.String).to_list()
    found = {v for v in labels if v is not None}
    class_names = list(ISIC_CLASSES) if found <= set(ISIC_CLASSES) else sorted(found)
    index = {c: i for i, c in enumerate(class_names)}
    keep = (groups >= 0) & np.array([v is not None for v in labels])
    if (groups < 0).any():
        logger.info("isic2019: dropped %d row(s) with unknown sex", int((groups < 0).sum()))
    ids = (
        raw[id_col].cast(pl.String)
        if id_col in raw.columns
        else pl.Series([str(i) for i in range(raw.height)])
    )
    extras = raw.drop([c for c in (id_col, "label", "group", "id") if c in raw.columns])
    if label_col != "diagnosis" and "diagnosis" not in extras.columns:
        extras = extras.with_columns(raw[label_col].cast(pl.String).alias("diagnosis"))
    meta = pl.DataFrame(
        {
            "id": ids,
            "label": [index.get(v, -1) for v in labels],
            "group": groups,
        }
    ).with_columns(pl.col("label").cast(pl.Int64), pl.col("group").cast(pl.Int64))
    meta = pl.concat([meta, extras], how="horizontal").filter(pl.Series(keep))
    return keep, meta, class_names, group_names


def is_isic_layout(source: str | os.PathLike[str]) -> bool:
    """True for a folder holding ``ISIC_2019_Training_GroundTruth.csv``."""
    p = Path(source)
    return p.is_dir() and (p / GT_NAME).is_file()


def _read_layout(root: Path) -> RawTable:
    if not (root / META_NAME).is_file():
        raise DataError(f"{root}: {GT_NAME} found but {META_NAME} is missing (sex comes from it)")
    raw = read_isic_metadata(root / GT_NAME, root / META_NAME)
    img_root = root / INPUT_DIR if (root / INPUT_DIR).is_dir() else root
    files = index_image_files(img_root)
    paths = [files.get(i, str(img_root / f"{i}.jpg")) for i in raw["image"].to_list()]
    return RawTable(images=images_from_paths(paths), meta=raw, given_split=None)


def load_isic2019(
    source: str | os.PathLike[str],
    *,
    unknown_sex: UnknownSex = "group",
    seed: int = 0,
    label_col: str | None = None,
    group_col: str = "sex",
    image_col: str = "image",
    test_fraction: float = DEFAULT_TEST_FRACTION,
    split_file: str | os.PathLike[str] | None = None,
    strict: bool = False,
    verify_images: bool = True,
    skipped_out: str | os.PathLike[str] | None = None,
) -> datasets.DatasetDict:
    """ISIC 2019 as a canonical ``DatasetDict`` (``train``/``test``; image, label, group).

    ``source``: a folder in the original layout (``ISIC_2019_Training_GroundTruth.csv``,
    ``ISIC_2019_Training_Metadata.csv``, images ``ISIC_2019_Training_Input/<image>.jpg``), or a
    source ``datasets`` reads, whose ``label_col`` (default ``label``) holds class names or a
    ``ClassLabel``. Label: the 8 training classes (``MEL, NV, BCC, AK, BKL, DF, VASC, SCC``; the
    one-hot ground truth's argmax). Groups: ``female``, ``male``, ``unknown`` (the paper) or,
    with ``unknown_sex="drop"``, the unknown rows dropped. Raw ``sex``, ``age_approx``,
    ``anatom_site_general``, ``lesion_id``, ``diagnosis`` are kept. Split as in
    :func:`load_fitzpatrick17k`.
    """
    src = os.fspath(source)
    if is_isic_layout(src):
        table = _read_layout(Path(src))
        label_col, id_col = label_col or "diagnosis", "image"
    else:
        table = read_hub(src, image_col=image_col)
        label_col, id_col = label_col or "label", "id"
    keep, meta, class_names, group_names = canonical_isic_meta(
        table.meta, label_col=label_col, group_col=group_col, id_col=id_col, unknown_sex=unknown_sex
    )
    images, given_split = table.kept(keep)
    return assemble(
        name="isic2019",
        source=src,
        images=images,
        meta=meta,
        class_names=class_names,
        group_names=group_names,
        given_split=given_split,
        split_file=split_file,
        id_cols=("id", "image"),
        seed=seed,
        test_fraction=test_fraction,
        strict=strict,
        verify_images=verify_images,
        skipped_out=skipped_out,
        description=f"ISIC 2019 from {src}; unknown_sex={unknown_sex}",
    )
