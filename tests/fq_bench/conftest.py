"""Fixtures for fq_bench tests: a private cache dir, and small image folders in the original
layouts built from real metadata rows with generated pixels."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
from fq_bench.data import generate_lesion_images
from fq_bench.data._common import METADATA_DIR
from PIL import Image


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Every test writes its caches (semi-synthetic, decoded tensors, skip lists) to a temp dir."""
    monkeypatch.setenv("FQ_CACHE_DIR", str(tmp_path_factory.mktemp("fq_cache")))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: two OpenMP threads on a shared 2-core machine spin against each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def fitz_rows(per_type: int = 8, n_unknown: int = 2, seed: int = 0) -> pl.DataFrame:
    """Real Fitzpatrick17k rows: ``per_type`` per skin type 1..6 drawn from the two commonest
    three-partition classes' rows, plus ``n_unknown`` rows with type -1."""
    df = pl.read_csv(METADATA_DIR / "fitzpatrick17k.csv", infer_schema_length=0)
    rng = np.random.default_rng(seed)
    parts = []
    for t in ["1", "2", "3", "4", "5", "6"]:
        for cls in ["non-neoplastic", "malignant"]:
            sub = df.filter(
                (pl.col("fitzpatrick_scale") == t) & (pl.col("three_partition_label") == cls)
            )
            k = per_type // 2
            parts.append(sub[np.sort(rng.choice(sub.height, k, replace=False))])
    unk = df.filter(pl.col("fitzpatrick_scale") == "-1")
    parts.append(unk[:n_unknown])
    return pl.concat(parts)


def write_fitz_images(rows: pl.DataFrame, folder: Path, size: int = 32) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    labels = (rows["three_partition_label"] == "malignant").cast(pl.Int64).to_numpy()
    types = rows["fitzpatrick_scale"].cast(pl.Int64).to_numpy().clip(1, 6)
    pix = generate_lesion_images(labels, types, num_classes=3, image_size=size, seed=1)
    out = {}
    for h, arr in zip(rows["md5hash"].to_list(), pix, strict=True):
        out[h] = jpeg_bytes(arr)
        (folder / f"{h}.jpg").write_bytes(out[h])
    return out


@pytest.fixture
def fitz_layout(tmp_path: Path) -> Callable[..., tuple[Path, pl.DataFrame]]:
    """Build ``root/fitzpatrick17k.csv`` + ``root/images/<md5hash>.jpg`` from real rows."""

    def make(per_type: int = 8, n_unknown: int = 2, size: int = 32) -> tuple[Path, pl.DataFrame]:
        root = tmp_path / "fitz"
        rows = fitz_rows(per_type, n_unknown)
        root.mkdir()
        rows.write_csv(root / "fitzpatrick17k.csv")
        write_fitz_images(rows, root / "images", size)
        return root, rows

    return make


@pytest.fixture
def isic_layout(tmp_path: Path) -> Callable[..., tuple[Path, pl.DataFrame, pl.DataFrame]]:
    """Build the ISIC 2019 layout from real rows: 5 per class, 3 with unknown sex."""

    def make(size: int = 32) -> tuple[Path, pl.DataFrame, pl.DataFrame]:
        gt = pl.read_csv(METADATA_DIR / "ISIC_2019_Training_GroundTruth.csv", infer_schema_length=0)
        md = pl.read_csv(METADATA_DIR / "ISIC_2019_Training_Metadata.csv", infer_schema_length=0)
        picks = []
        for cls in ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]:
            picks += gt.filter(pl.col(cls) == "1.0")["image"].head(5).to_list()
        picks += md.filter(pl.col("sex").is_null())["image"].head(3).to_list()
        picks = sorted(set(picks))
        gt_s = gt.filter(pl.col("image").is_in(picks))
        md_s = md.filter(pl.col("image").is_in(picks))
        root = tmp_path / "isic"
        (root / "ISIC_2019_Training_Input").mkdir(parents=True)
        gt_s.write_csv(root / "ISIC_2019_Training_GroundTruth.csv")
        md_s.write_csv(root / "ISIC_2019_Training_Metadata.csv")
        labels = np.arange(len(picks)) % 8
        pix = generate_lesion_images(
            labels, np.ones(len(picks), np.int64), num_classes=8, image_size=size, seed=2
        )
        for name, arr in zip(gt_s["image"].to_list(), pix, strict=True):
            (root / "ISIC_2019_Training_Input" / f"{name}.jpg").write_bytes(jpeg_bytes(arr))
        return root, gt_s, md_s

    return make


@pytest.fixture
def data_helpers() -> SimpleNamespace:
    """The builders above, for tests that need them directly (conftest is not importable)."""
    return SimpleNamespace(
        jpeg_bytes=jpeg_bytes, fitz_rows=fitz_rows, write_fitz_images=write_fitz_images
    )
