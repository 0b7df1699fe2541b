"""The grid on a user's own data: ``--dataset NAME=SOURCE`` with string groups, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from fq_bench.grid import DEFAULT, CellStore, main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_own_folder_runs_table1_cells_and_the_report(tmp_path: Path, own_folder) -> None:
    own_folder(tmp_path / "mine")
    out = tmp_path / "out"
    args = [
        "--dataset", f"mine={tmp_path / 'mine'}", "--image-column", "mine=file",
        "--label-column", "mine=dx", "--group-column", "mine=skin",
        "--models", "tiny_cnn", "--methods", "fp32", "u4", "fq-qat", "guo", "--seeds", "0",
        "--image-size", "16", "--batch-size", "16", "--fp32-epochs", "1", "--epochs", "1",
        "--calib-batches", "2", "--no-progress", "--threads", "1", "--budgets",
        "--frontier-methods", "--bootstrap-resamples", "50", "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    cells = CellStore(out).all()
    assert sorted((k.dataset, k.method) for k, _ in cells) == [
        ("mine", m) for m in ("fp32", "fq-qat", "guo", "u4")
    ]
    by = {k.method: r for k, r in cells}
    assert by["u4"]["cost"]["avg_bits"] == 4.0
    for res in by.values():
        assert len(res["group_acc"]) == 4  # dark, light, medium, olive
        assert res["data"]["semisynthetic"] is False
    assert "mine" in (out / "table.md").read_text()


def test_custom_dataset_flags_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["--dataset", "fitzpatrick17k=x", "--no-progress"])
    assert "NAME=SOURCE with NAME not one of fitzpatrick17k, isic2019" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--dataset", "mine=x", "--datasets", "mine", "theirs", "--no-progress"])
    assert "unknown name(s) ['theirs']; valid: fitzpatrick17k, isic2019, mine" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main(["--group-column", "mine=skin", "--no-progress"])
    assert "--group-column 'mine=skin': expected DATASET=COLUMN" in capsys.readouterr().err
    with pytest.raises(ValueError, match="group_columns: 'x' is not a custom dataset"):
        DEFAULT.replace(custom_datasets=(("mine", "d"),), group_columns=(("x", "g"),))
    # a custom dataset changes the FP32 checkpoint's fingerprint
    from fq_bench.grid._config import FP32_FIELDS

    mine = DEFAULT.replace(custom_datasets=(("mine", "d"),), datasets=("mine",))
    assert mine.fingerprint(FP32_FIELDS) != DEFAULT.fingerprint(FP32_FIELDS)
    # a missing folder: the data error names it, one line, before anything trains
    assert main(["--dataset", f"mine={tmp_path / 'gone'}", "--models", "tiny_cnn", "--methods",
                 "fp32", "--seeds", "0", "--no-progress", "--out", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "o" / "checkpoints").exists()
