"""Each package installs alone from its built wheel and its README example runs there.

``uv build --all-packages`` once per session; then, per package, a fresh venv gets the package's
third-party dependencies from the committed lock (offline, from uv's cache) and the package's
wheel with ``--find-links`` to the built siblings, so a workspace sibling can only come from its
wheel, at the exact pinned version. The README's first python example then runs with that venv's
python outside the repository and must print what the README shows (when it shows it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UV = shutil.which("uv")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(UV is None, reason="needs uv (CI installs it: .ci/run)"),
]

#: package -> (extras installed with it, module to import); the extras are what its README's
#: example needs beyond the package (declared in its pyproject as ``examples``)
PACKAGES = {
    "fq-quant": ("examples", "fq_quant"),
    "fq-fairmetrics": ("torch", "fq_fairmetrics"),
    "fq-importance": ("examples", "fq_importance"),
    "fq-alloc": ("", "fq_alloc"),
    "fq-baq": ("", "fq_baq"),
    "fq-data": ("", "fq_data"),
    "fq-bench": ("", "fq_bench"),
}
NUMBER = re.compile(r"-?\d+\.\d+|-?\d+")


def _env() -> dict[str, str]:
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "UV_PROJECT_ENVIRONMENT")
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every workspace member built once as a wheel (offline: the build backend is cached)."""
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [UV, "build", "--all-packages", "--wheel", "-q", "--offline", "-o", str(dist)],
        check=True,
        cwd=ROOT,
        env=_env(),
    )
    return dist


def _install(package: str, extra: str, dist: Path, venv: Path) -> Path:
    env = _env()
    subprocess.run([UV, "venv", "-q", "--python", sys.executable, str(venv)], check=True, env=env)
    sync = [UV, "sync", "-q", "--package", package, "--no-dev", "--locked", "--offline"]
    sync += ["--no-install-workspace", "--link-mode", "symlink"]
    if extra:
        sync += ["--extra", extra]
    subprocess.run(sync, check=True, cwd=ROOT, env={**env, "UV_PROJECT_ENVIRONMENT": str(venv)})
    (wheel,) = dist.glob(f"{package.replace('-', '_')}-*.whl")
    spec = f"{package}[{extra}] @ {wheel.as_uri()}" if extra else str(wheel)
    python = venv / "bin" / "python"
    subprocess.run(
        [UV, "pip", "install", "-q", "--offline", "--link-mode", "symlink", "--python",
         str(python), "--find-links", str(dist), spec],
        check=True, env=env,
    )  # fmt: skip
    return python


@pytest.mark.parametrize("package", list(PACKAGES))
def test_wheel_installs_alone_and_its_readme_example_runs(package, wheels, tmp_path) -> None:
    extra, module = PACKAGES[package]
    python = _install(package, extra, wheels, tmp_path / "venv")
    where = subprocess.run(
        [str(python), "-c", f"import {module}; print({module}.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    ).stdout  # fmt: skip
    assert "site-packages" in where and str(ROOT) not in where  # the wheel, not the source tree
    folder = ROOT / ("bench" if package == "fq-bench" else f"packages/{package}")
    text = (folder / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    if package == "fq-bench":
        assert not blocks  # bench's README documents commands, not a python example
        return
    script = tmp_path / "example.py"
    script.write_text(blocks[0])
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1",
           "FQ_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    run = subprocess.run(
        [str(python), str(script)], capture_output=True, text=True, cwd=tmp_path, env=env,
        timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip(), f"{package}: the README example prints nothing when run as a file"
    shown = re.search(r"```python\n.*?```\n\nprints\n\n```\n(.*?)```", text, re.S)
    if shown:
        assert NUMBER.sub("#", run.stdout) == NUMBER.sub("#", shown.group(1))
        for got, want in zip(
            NUMBER.findall(run.stdout), NUMBER.findall(shown.group(1)), strict=True
        ):
            assert float(got) == pytest.approx(float(want), rel=1e-6, abs=1e-9), run.stdout
