"""Fault injection (issue 25), the grid's side: a user's own data through ``run_grid.py``.

Results that follow the data (a changed folder is recomputed, never mixed with old cells), small
and empty groups recorded in the cells and shown in the report, notes derived from the run, the
grid's split shown by ``fq_data inspect``, and bad input as one ``error:`` line. Grid runs use
``tiny_cnn`` at 16 px with one-epoch schedules on :func:`conftest.write_own_folder`'s folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fq_bench.grid import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _args(src: Path, out: Path, *extra: str) -> list[str]:
    """The grid on ``src`` as dataset ``mine``: FP32 and U4 of ``tiny_cnn``, one seed."""
    return [
        "--dataset", f"mine={src}", "--image-column", "mine=file", "--label-column", "mine=dx",
        "--group-column", "mine=skin", "--models", "tiny_cnn", "--methods", "fp32", "u4",
        "--seeds", "0", "--image-size", "16", "--batch-size", "16", "--fp32-epochs", "1",
        "--epochs", "1", "--calib-batches", "2", "--no-progress", "--threads", "1", "--budgets",
        "--frontier-methods", "--bootstrap-resamples", "0", "--no-plots", "--out", str(out),
        *extra,
    ]  # fmt: skip


# ---------------------------------------------------------------- 10. errors as one line


def test_a_data_error_is_one_line_and_exit_2(tmp_path: Path, own_folder, capsys) -> None:
    src = own_folder(tmp_path / "mine")
    args = _args(src, tmp_path / "out")
    args[args.index("mine=dx")] = "mine=diagnosis"  # no such column
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "diagnosis" in lines[0], err
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize("where", ["proc", "below a file"])
def test_an_unwritable_out_fails_before_any_work(
    tmp_path: Path, own_folder, capsys, where: str
) -> None:
    src = own_folder(tmp_path / "mine")
    if where == "proc":
        out, says = Path("/proc/self/fq_results"), "is under /proc"
    else:
        (tmp_path / "file").write_text("x")
        out, says = tmp_path / "file" / "sub", "not writable"
    with pytest.raises(SystemExit) as exc:
        main(_args(src, out))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"--out {out}: {says}" in err and "Traceback" not in err
