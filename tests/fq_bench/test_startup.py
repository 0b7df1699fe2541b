"""The command lines answer ``--help`` and a mistyped flag without importing the heavy libraries.

Each command runs in a fresh interpreter (as a user starts it) under a wrapper that, after the
command exits, prints which of torch, torchvision, datasets and timm ended up in ``sys.modules``.
The behaviour asserted is what gets imported, never how long it takes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "datasets", "timm")

#: Runs argv[1:] as ``python -m MODULE ...`` or ``python SCRIPT ...`` would, then prints the
#: heavy modules imported and the exit status as one JSON line on stderr.
WRAPPER = textwrap.dedent(
    """
    import json, runpy, sys
    HEAVY = sys.argv.pop(1).split(",")
    target, *args = sys.argv[1:]
    code = 0
    try:
        if target.startswith("-m="):
            sys.argv = [target[3:], *args]
            runpy.run_module(target[3:], run_name="__main__", alter_sys=True)
        else:
            sys.argv = [target, *args]
            runpy.run_path(target, run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    loaded = [m for m in HEAVY if m in sys.modules]
    print("IMPORTED " + json.dumps({"loaded": loaded, "code": code}), file=sys.stderr)
    """
)


def _imported(target: str, *args: str) -> tuple[list[str], int, str]:
    """(heavy modules imported, exit status, stdout) of one command in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, ",".join(HEAVY), target, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("IMPORTED ")]
    assert line, proc.stderr[-2000:]
    got = json.loads(line[-1][len("IMPORTED ") :])
    return got["loaded"], got["code"], proc.stdout


COMMANDS = {
    "fq_data": ("-m=fq_data",),
    "fq_data prepare": ("-m=fq_data", "prepare"),
    "run_grid": ("bench/run_grid.py",),
    "ptq_probe": ("bench/ptq_probe.py",),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_imports_no_heavy_library(name: str) -> None:
    loaded, code, out = _imported(*COMMANDS[name], "--help")
    assert code == 0
    assert "usage:" in out  # the help was printed, so the check ran where the user waits
    assert loaded == []


@pytest.mark.parametrize("name", ["run_grid", "ptq_probe"])
def test_mistyped_flag_fails_without_heavy_library(name: str) -> None:
    loaded, code, _ = _imported(*COMMANDS[name], "--no-such-flag")
    assert code == 2  # argparse's error
    assert loaded == []


def test_wrapper_sees_a_heavy_import(tmp_path: Path) -> None:
    """The check can fail: a command that does import torch is reported as such."""
    script = tmp_path / "imports_torch.py"
    script.write_text("import torch\n")
    loaded, code, _ = _imported(str(script))
    assert code == 0
    assert "torch" in loaded


def test_config_defaults_pass_the_packages_own_checks() -> None:
    """GridConfig skips fq_baq's and fq_alloc's checks for its defaults (so the presets build
    without torch): the defaults must pass them, and a non-default value is still checked."""
    import dataclasses

    from fq_alloc import Palette
    from fq_baq import BAQConfig
    from fq_bench.grid import GridConfig

    d = {f.name: f.default for f in dataclasses.fields(GridConfig)}
    BAQConfig(
        fair_loss=d["fair_loss"],
        fair_tau=d["fair_tau"],
        dro_eta=d["dro_eta"],
        fair_ema=d["fair_ema"],
    )
    Palette(d["palette_bits"], d["palette_props"])
    for name in ("baq_bits", "budget_bits"):
        Palette(d[name], (1.0 / len(d[name]),) * len(d[name]))
    with pytest.raises(ValueError, match="fair_loss"):
        GridConfig(fair_loss="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="baq_bits"):
        GridConfig(baq_bits=(2, 3, 33), baq_warm_avg_bits=3.0)


def test_lazy_names_resolve() -> None:
    """Every public name of the lazily importing packages is still there, from its home."""
    import fq_bench.grid as grid
    import fq_data

    for module in (fq_data, grid):
        for name in module.__all__:
            assert getattr(module, name) is not None, (module.__name__, name)
        with pytest.raises(AttributeError, match="no_such_name"):
            module.no_such_name  # noqa: B018
