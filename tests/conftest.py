"""Shared pytest setup: a derandomized hypothesis profile for CI, a private cache for every test,
small image folders in the original dataset layouts, a clean venv per package, and README runs."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

if TYPE_CHECKING:
    import polars as pl

ROOT = Path(__file__).resolve().parents[1]

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=60)
settings.load_profile("ci" if os.environ.get("CI", "").lower() == "true" else "dev")


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


# ---- small image folders in the original layouts, from real metadata rows ----


def jpeg_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def fitz_rows(per_type: int = 8, n_unknown: int = 2, seed: int = 0) -> pl.DataFrame:
    """Real Fitzpatrick17k rows: ``per_type`` per skin type 1..6 drawn from the two commonest
    three-partition classes' rows, plus ``n_unknown`` rows with type -1."""
    import polars as pl
    from fq_data import METADATA_DIR

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
    import polars as pl
    from fq_data import generate_lesion_images

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
    import polars as pl
    from fq_data import METADATA_DIR, generate_lesion_images

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


# ---- a user's own image folder: string labels and groups ----

#: Group words of :func:`write_own_folder` (the first is the largest group).
SKIN = ("light", "medium", "dark", "olive")


def write_own_folder(root: Path, n: int = 96, groups: tuple[str, ...] = SKIN) -> Path:
    """``root/pics/<i>.png`` (16 px, one flat colour) and ``root/labels.csv`` (``file``, ``dx``,
    ``skin`` as words): half the rows in ``groups[0]``, the rest spread over the others; the
    class (``nevus``/``melanoma``) is in the colour, shaded by group, so a model can learn it."""
    import polars as pl
    from PIL import Image

    (root / "pics").mkdir(parents=True)
    rows = []
    for i in range(n):
        lab = ("nevus", "melanoma")[i % 2]
        grp = groups[0] if i % 8 < 4 else groups[1 + (i // 8) % (len(groups) - 1)]
        shade = 60 + 40 * groups.index(grp)
        colour = (shade + 80, shade // 2, shade // 2) if lab == "melanoma" else (shade,) * 3
        Image.new("RGB", (16, 16), colour).save(root / "pics" / f"{i}.png")
        rows.append({"file": f"pics/{i}.png", "dx": lab, "skin": grp})
    pl.DataFrame(rows).write_csv(root / "labels.csv")
    return root


@pytest.fixture(scope="session")
def own_folder() -> Callable[..., Path]:
    """:func:`write_own_folder`, for tests of a user's own data (conftest is not importable)."""
    return write_own_folder


# ---- packaging: one workspace package alone in a fresh venv ----


def _clean_env() -> dict[str, str]:
    """This process's environment without the workspace venv's hold on imports and uv."""
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "UV_PROJECT_ENVIRONMENT")
    return {k: v for k, v in os.environ.items() if k not in drop}


@dataclass(frozen=True)
class CleanVenv:
    """A fresh venv holding one package (as a built wheel, not editable) and its dependencies."""

    python: Path
    env: dict[str, str]

    def run(self, code: str, cwd: Path) -> str:
        """Run ``code`` with the venv's python in ``cwd`` (outside the repo); return its stdout."""
        out = subprocess.run(
            [str(self.python), "-c", code], env=self.env, cwd=cwd, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout


@pytest.fixture
def clean_venv(tmp_path: Path) -> Callable[[str], CleanVenv]:
    """``install(package)``: a fresh venv with only the workspace member ``package`` installed.

    With uv: ``uv sync --package <package> --no-dev --no-editable`` into the new venv, against
    the committed lock and offline (the wheels are those the workspace sync put in uv's cache),
    so the dependency set is exactly the lock's for that package, no extra and no network.
    Without uv: ``pip install packages/<package>`` into a plain venv.
    """

    def install(package: str) -> CleanVenv:
        venv = tmp_path / f"venv-{package}"
        env = _clean_env()
        uv = shutil.which("uv")
        if uv:
            subprocess.run(
                [uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True, env=env
            )
            sync = [uv, "sync", "-q", "--package", package, "--locked", "--offline"]
            subprocess.run(
                [*sync, "--no-dev", "--no-editable"],
                check=True,
                cwd=ROOT,
                env={**env, "UV_PROJECT_ENVIRONMENT": str(venv)},
            )
        else:  # plain pip works too
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
            path = ROOT / "packages" / package
            subprocess.run(
                [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(path)],
                check=True,
                env=env,
            )
        return CleanVenv(python=venv / "bin" / "python", env=env)

    return install


# ---- README examples: the first python block must run as a file ----


@pytest.fixture
def run_readme_example(tmp_path: Path) -> Callable[..., str]:
    """``run(readme, *, edit=None, threads=1)``: run the first python block of ``readme`` as a
    script (``edit(code) -> code`` first, if given); return its stdout.

    It runs in a bare environment (no inherited variables, a temp HOME and cache, the working
    directory ``tmp_path``), so an example that only works on the author's machine fails here.
    ``threads`` sets ``OMP_NUM_THREADS`` (one thread: the shared CI machine's fastest setting,
    and the one the READMEs' printed numbers were measured with). ``ONEDNN_MAX_CPU_ISA=AVX2``:
    torch's CPU convolutions (oneDNN) pick their kernels by the CPU's instruction set, and the
    AVX-512 kernels round differently from the AVX2 ones; a seeded training run then ends on other
    weights, and a 600-image demo's metrics move by several points. Capped at AVX2, which every
    x86-64 CPU of the last decade has, the printed numbers are the same on this machine and on an
    AVX2-only one.
    """

    def run(
        readme: Path, *, edit: Callable[[str], str] | None = None, threads: int | None = 1
    ) -> str:
        blocks = readme_python_blocks(readme)
        assert blocks, f"{readme} has no python example"
        script = tmp_path / "example.py"
        script.write_text(edit(blocks[0]) if edit else blocks[0])
        env = {
            "FQ_CACHE_DIR": str(tmp_path / "cache"),
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
        }
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
        out = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
            cwd=tmp_path,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    return run


def readme_python_blocks(readme: Path) -> list[str]:
    """Every python code block of ``readme``, in order."""
    return re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.S)
