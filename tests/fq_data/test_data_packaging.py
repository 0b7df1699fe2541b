"""fq-data stands alone: it installs into a clean venv without the quantization packages or the
grid's tools, its metadata and ``py.typed`` ship in the wheel, and importing it loads none of
timm, matplotlib or accelerate."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("timm", "matplotlib", "accelerate")
OURS = ("fq_quant", "fq_fairmetrics", "fq_importance", "fq_alloc", "fq_baq", "fq_bench")


def test_import_does_not_load_the_grid_tools():
    code = (
        "import importlib.util, sys\n"
        f"present = [m for m in {HEAVY!r} if importlib.util.find_spec(m) is not None]\n"
        f"assert present == list({HEAVY!r}), present  # installed here, so the check can fail\n"
        "import fq_data\n"
        "fq_data.build_semisynthetic(n=20, image_size=8)\n"
        f"loaded = [m for m in {HEAVY + OURS!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_installs_and_runs_alone_in_a_clean_venv(clean_venv, tmp_path):
    venv = clean_venv("fq-data")
    code = (
        "import importlib.util, pathlib\n"
        f"extra = [m for m in {HEAVY + OURS!r} if importlib.util.find_spec(m) is not None]\n"
        "assert not extra, f'installed with fq-data: {extra}'\n"
        "import fq_data\n"
        "from fq_data.__main__ import main\n"
        "root = pathlib.Path(fq_data.__file__).parent\n"
        "assert 'site-packages' in root.parts, root  # the built wheel, not the source tree\n"
        "assert (root / 'py.typed').is_file()\n"
        "assert (fq_data.METADATA_DIR / 'fitzpatrick17k.csv').is_file()\n"
        "dd = fq_data.load_semisynthetic('isic2019', n=60, image_size=8, min_test_per_group=5)\n"
        "loaders = fq_data.make_loaders(dd, image_size=8, batch_size=4, train=True, seed=0)\n"
        "x, y, g = next(iter(loaders.train))\n"
        "assert tuple(x.shape) == (4, 3, 8, 8), x.shape\n"
        "assert main(['prepare', 'semisynthetic', '--n', '40', '--image-size', '8']) == 0\n"
        "print('ok', len(dd['test']))\n"
    )
    out = venv.run(code, cwd=tmp_path)
    assert "semi-synthetic fitzpatrick17k" in out and out.rstrip().splitlines()[-1].startswith("ok")
