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


# ---------------------------------------------------------------- 1. results follow the data


def _change(src: Path) -> int:
    """The probe's edit of a user's folder: every label flipped and 40 rows removed; returns the
    rows left."""
    import polars as pl

    table = pl.read_csv(src / "labels.csv")
    flip = pl.when(pl.col("dx") == "nevus").then(pl.lit("melanoma")).otherwise(pl.lit("nevus"))
    table = table.with_columns(flip.alias("dx"))[40:]
    table.write_csv(src / "labels.csv")
    return table.height


def test_a_changed_folder_is_recomputed_never_mixed(tmp_path: Path, own_folder, capsys) -> None:
    import json

    from fq_bench.grid import CellStore, build_report
    from safetensors import safe_open

    src, out = own_folder(tmp_path / "mine"), tmp_path / "out"
    ckpt = out / "checkpoints" / "mine__tiny_cnn__s0.safetensors"

    def checkpoint_fp() -> str:
        with safe_open(str(ckpt), "pt") as f:
            return f.metadata()["fingerprint"]

    assert main(_args(src, out)) == 0
    assert "2 cell(s) computed, 0 reused" in capsys.readouterr().out
    before, old_config = checkpoint_fp(), json.loads((out / "config.json").read_text())
    assert main(_args(src, out)) == 0  # the same data: every result reused
    assert "0 cell(s) computed, 2 reused" in capsys.readouterr().out

    rows = _change(src)
    # and a method added, as in the probe: it must not be evaluated beside old cells
    assert main([*_args(src, out), "--methods", "fp32", "u4", "u8"]) == 0
    assert "3 cell(s) computed, 0 reused" in capsys.readouterr().out
    assert checkpoint_fp() != before  # the FP32 reference retrained on the new labels
    content = old_config["data"]["mine"]["content_sha256"]
    assert len(content) == 64
    cells = CellStore(out).all()
    assert len(cells) == 3
    for _, res in cells:
        assert res["data"]["n_train"] + res["data"]["n_test"] == rows
        assert res["data"]["content_sha256"] not in (None, content)
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["data"]["mine"]["content_sha256"] == cells[0][1]["data"]["content_sha256"]
    rep = build_report(out, plots=False)
    assert len(rep.ignored) == 0 and rep.cells.height == 3


def test_the_default_data_keeps_its_cell_fingerprints() -> None:
    """Semi-synthetic data adds nothing to the fingerprints (the config determines it), so the
    default run's old cell files stay valid; data read from a source adds its content."""
    from fq_bench.grid import DEFAULT
    from fq_bench.grid._cell_run import cell_fingerprint, fingerprint_key

    plain = cell_fingerprint(DEFAULT, "resnet18")
    assert cell_fingerprint(DEFAULT, "resnet18", None) == plain
    assert fingerprint_key("fitzpatrick17k", "resnet18", None) == "resnet18"
    a, b = (cell_fingerprint(DEFAULT, "resnet18", c * 64) for c in "ab")
    assert len({plain, a, b}) == 3
    assert fingerprint_key("mine", "resnet18", "a" * 64) == "mine/resnet18"


# ---------------------------------------------------------------- 5 and 12. notes from the run


def test_notes_describe_the_run_and_show_its_split(tmp_path: Path, own_folder, capsys) -> None:
    import json
    import re
    import shlex

    from fq_bench.grid import DEFAULT, CellStore
    from fq_data.__main__ import main as data_main

    src, out = own_folder(tmp_path / "mine"), tmp_path / "out"
    assert main(_args(src, out)) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "config.json").read_text())["config"]["notes"]
    for text in (printed, "\n".join(saved)):
        # the default preset's note is false here: not semi-synthetic, not resnet18, not 150
        assert "semi-synthetic" not in text.lower() and "resnet18" not in text
        assert "150 test images" not in text and DEFAULT.notes[0] not in text
        assert f"This run: your data 'mine' from {src}; tiny_cnn from random initialization " in (
            text
        )
        assert "at 16 px; 1 FP32 and 1 fine-tune epoch(s); seed(s) 0; 0.4 of each" in text
    # 12: the inspect command printed shows the split the grid's cells were computed on
    cmd = re.search(r"`(python -m fq_data inspect [^`]*)`", printed)
    assert cmd is not None and "--test-fraction 0.4" in cmd.group(1)
    n_test = CellStore(out).all()[0][1]["data"]["n_test"]
    assert data_main(shlex.split(cmd.group(1))[3:]) == 0
    assert f"  test: {n_test} rows" in capsys.readouterr().out


def test_preset_notes_only_while_they_hold() -> None:
    import inspect

    from fq_bench.grid import DEFAULT, PRESETS
    from fq_bench.grid._notes import run_notes
    from fq_data import DEFAULT_TEST_FRACTION, build_semisynthetic, load_semisynthetic

    for preset in PRESETS.values():  # a preset as it is keeps its notes
        assert run_notes(preset) == preset.notes
    assert run_notes(DEFAULT.replace(progress=False, cpu=True)) == DEFAULT.notes
    for change in ({"models": ("resnet50",)}, {"image_size": 64}, {"min_test_per_group": 0}):
        (line,) = run_notes(DEFAULT.replace(**change))
        assert line.startswith("This run: semi-synthetic FitzP. data") and line != DEFAULT.notes[0]
    line = run_notes(DEFAULT.replace(min_test_per_group=0))[0]
    assert "resnet18 from random initialization at 32 px" in line and "test images" not in line
    mine = DEFAULT.replace(notes=("my own note",))
    assert run_notes(mine.replace(models=("resnet50",))) == ("my own note",)
    # the semi-synthetic loaders share fq_data's one default test fraction
    for fn in (load_semisynthetic, build_semisynthetic):
        assert inspect.signature(fn).parameters["test_fraction"].default is DEFAULT_TEST_FRACTION


# ---------------------------------------------------------------- 4. small and empty groups


def test_small_and_empty_groups_are_recorded_and_shown(tmp_path: Path, own_folder) -> None:
    import warnings

    import numpy as np
    import polars as pl
    from fq_bench.grid import CellStore, build_report
    from fq_fairmetrics import MIN_GROUP_N, SmallGroupWarning, margin_sample_size
    from PIL import Image

    src = own_folder(tmp_path / "mine")
    Image.new("RGB", (16, 16), (9, 9, 9)).save(src / "pics" / "rare.png")
    table = pl.read_csv(src / "labels.csv")
    rare = pl.DataFrame({"file": ["pics/rare.png"], "dx": ["nevus"], "skin": ["rare"]})
    pl.concat([table, rare]).write_csv(src / "labels.csv")  # one image: no test image
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(_args(src, out)) == 0
    assert not [w for w in seen if issubclass(w.category, SmallGroupWarning)]
    cells = dict(CellStore(out).all())
    res = next(iter(cells.values()))
    sizes = dict(zip(res["group_names"], res["group_n"], strict=True))
    assert res["empty_groups"] == ["rare"] and sizes["rare"] == 0
    small = sorted(n for n, k in sizes.items() if 0 < k < MIN_GROUP_N)
    assert small and sorted(res["small_groups"]) == small
    text = build_report(out, plots=False).text()
    assert "Groups: mine: no test image in 'rare'" in text
    listed = ", ".join(f"{n!r} ({sizes[n]})" for n in res["small_groups"])
    assert f"Groups: mine: fewer than {MIN_GROUP_N} test images in {listed}" in text
    # the margin line: margin_sample_size at the FP32 vs U4 disagreement, every group below it
    fp32, u4 = (
        np.asarray(r["test"]["predictions"]) for k, r in sorted(cells.items()) if not k.budget
    )
    needed = margin_sample_size(1.0, discordance=float((fp32 != u4).mean()))
    assert f"needs about {needed} test images per group" in text
    below = ", ".join(f"{n!r} ({k})" for n, k in sizes.items() if 0 < k < needed)
    assert f"fewer in {below}." in text
    assert "Groups: mine: fewer than" in (out / "table.md").read_text()
