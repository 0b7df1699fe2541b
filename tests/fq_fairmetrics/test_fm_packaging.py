"""The package stands alone: importing it pulls in no torch, and it installs without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_import_does_not_load_torch_scipy_or_polars():
    code = (
        "import sys, fq_fairmetrics as fm\n"
        "fm.group_report([0, 1], [0, 0], sensitive_features=['a', 'b'])\n"
        "heavy = [m for m in ('torch', 'scipy', 'polars') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_installs_into_a_clean_venv_without_torch(clean_venv, tmp_path):
    venv = clean_venv("fq-fairmetrics")
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
    venv.run(code, cwd=tmp_path)
