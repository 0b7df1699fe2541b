"""The package stands alone: importing it pulls in no torch, and it installs without torch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "packages" / "fq-fairmetrics"


def test_import_does_not_load_torch_scipy_or_polars():
    code = (
        "import sys, fq_fairmetrics as fm\n"
        "fm.group_report([0, 1], [0, 0], sensitive_features=['a', 'b'])\n"
        "heavy = [m for m in ('torch', 'scipy', 'polars') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.pop("UV_PROJECT_ENVIRONMENT", None)
    return env


@pytest.mark.slow
def test_installs_into_a_clean_venv_without_torch(tmp_path):
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    env = _clean_env()
    uv = shutil.which("uv")
    if uv:
        subprocess.run(
            [uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True, env=env
        )
        subprocess.run(
            [uv, "pip", "install", "-q", "--python", str(python), str(PACKAGE)], check=True, env=env
        )
    else:  # plain pip works too
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", str(PACKAGE)], check=True, env=env
        )
    code = (
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('torch') is None, 'torch got installed'\n"
        "import fq_fairmetrics as fm\n"
        "r = fm.group_report([0, 1, 1], [0, 1, 0], sensitive_features=['a', 'b', 'b'])\n"
        "assert r.gap == 0.5, r\n"
        "assert fm.seed_summary([1.0, 2.0]).mean == 1.5\n"
        "try:\n"
        "    import fq_fairmetrics.torch\n"
        "except ImportError as exc:\n"
        "    assert 'fq-fairmetrics[torch]' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('fq_fairmetrics.torch imported without torch')\n"
    )
    subprocess.run([str(python), "-c", code], check=True, env=env, cwd=tmp_path)
