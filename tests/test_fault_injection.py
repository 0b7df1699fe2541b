"""Fault injection: each fault either gives the table of a clean run or a clear, early error.

Issue 18's cases: two configs in one results folder, byte flips in FP32 checkpoints and
calibrations, truncated artifacts, duplicate metadata rows, a failing cell among good ones, two
runs into one folder, rows of scores with no finite value, bad command lines. Grid runs use
``tiny_cnn`` on 120 semi-synthetic images at 16 px with one-epoch schedules (seconds each).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fq_bench.grid import SMOKE, CellKey, CellStore, build_report, main, run_grid
from fq_bench.grid._cells import select_config
from fq_data import atomic_write_bytes
from fq_quant import tensors_sha256

ROOT = Path(__file__).resolve().parents[1]
TINY = SMOKE.replace(methods=("fp32", "u4", "lin"), bootstrap_resamples=0, progress=False)
TINY_ARGS = [
    "--preset", "smoke", "--methods", "fp32", "u4", "lin", "--bootstrap-resamples", "0",
    "--no-progress", "--threads", "1", "--no-plots",
]  # fmt: skip
CKPT = Path("checkpoints") / "fitzpatrick17k__tiny_cnn__s0.safetensors"
CALIB = Path("calibration") / "fitzpatrick17k__tiny_cnn__s0__grape-type.safetensors"


def _key(method: str, seed: int = 0) -> CellKey:
    return CellKey(dataset="fitzpatrick17k", model="tiny_cnn", method=method, seed=seed)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny grid, run once without faults: the table every faulted run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FQ_CACHE_DIR", str(tmp_path_factory.mktemp("cache_ref")))
        summary = run_grid(TINY, out)
    assert not summary.failed and len(summary.computed) == 3
    build_report(out, plots=False)
    return out


@pytest.fixture
def copy_of(reference: Path, tmp_path: Path):
    def make(name: str = "copy") -> Path:
        out = tmp_path / name
        shutil.copytree(reference, out)
        return out

    return make


def _flip(path: Path, at_end: int = 64) -> None:
    """Flip bytes in the data section (the last bytes of a safetensors file are tensor data)."""
    blob = bytearray(path.read_bytes())
    for i in range(len(blob) - at_end, len(blob) - at_end + 4):
        blob[i] ^= 0xFF
    path.write_bytes(bytes(blob))


# ---------------------------------------------------------------- 1. one config per table


def test_two_configs_in_one_folder_are_never_averaged(tmp_path: Path) -> None:
    a = TINY.replace(methods=("fp32",), seeds=(0, 1))
    b = TINY.replace(methods=("fp32",), seeds=(0,), fp32_epochs=2)
    mixed, alone = tmp_path / "mixed", tmp_path / "alone"
    run_grid(a, mixed)
    run_grid(b, mixed)
    run_grid(b, alone)
    rep = build_report(mixed, plots=False)
    assert rep.summary["n_seeds"].to_list() == [1]
    # a's seed-1 cell stays on disk, named, and the table is b's alone, byte for byte
    assert [k.seed for k in rep.ignored] == [1] and len(CellStore(mixed).all()) == 2
    assert "1 cell(s) of another config or data ignored" in rep.text()
    build_report(alone, plots=False)
    assert (mixed / "table.csv").read_text() == (alone / "table.csv").read_text()


def test_report_flag_follows_the_same_rule(tmp_path: Path, capsys) -> None:
    a = TINY.replace(methods=("fp32",), seeds=(0, 1))
    run_grid(a, tmp_path / "r")
    run_grid(a.replace(seeds=(0,), fp32_epochs=2), tmp_path / "r")
    assert main(["--report", str(tmp_path / "r"), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "1 cell(s) of another config or data ignored" in out
    # without config.json each model keeps the fingerprint most of its cells carry
    (tmp_path / "r" / "config.json").unlink()
    rep = build_report(tmp_path / "r", plots=False)
    assert len(rep.ignored) == 1


def test_select_config_keeps_the_majority_without_a_record() -> None:
    entries = [(_key("fp32", s), fp, {}) for s, fp in ((0, "a"), (1, "b"), (2, "b"))]
    kept, ignored = select_config(entries, None)
    assert [k.seed for k, _ in kept] == [1, 2] and [k.seed for k in ignored] == [0]
    kept, ignored = select_config(entries, {"tiny_cnn": "a"})
    assert [k.seed for k, _ in kept] == [0] and len(ignored) == 2


# ---------------------------------------------------------------- 2. verified artifacts


@pytest.mark.parametrize("artifact,cell", [(CKPT, "u4"), (CALIB, "lin")])
def test_flipped_artifact_bytes_are_recomputed(
    artifact: Path, cell: str, copy_of, reference: Path, caplog
) -> None:
    out = copy_of()
    good = (out / artifact).read_bytes()
    _flip(out / artifact)
    CellStore(out).path(_key(cell)).unlink()
    with caplog.at_level(logging.WARNING, logger="fq_bench.grid"):
        summary = run_grid(TINY, out)
    assert "do not match their content hash" in caplog.text
    assert [k.method for k in summary.computed] == [cell]
    # recomputed, not reused: the same tensors as the clean run, and the same table
    assert tensors_sha256((out / artifact).read_bytes()) == tensors_sha256(good)
    build_report(out, plots=False)
    assert (out / "table.csv").read_text() == (reference / "table.csv").read_text()


def test_truncated_and_empty_artifacts_are_recomputed(copy_of, reference: Path, caplog) -> None:
    out = copy_of()
    blob = (out / CKPT).read_bytes()
    (out / CKPT).write_bytes(blob[: len(blob) // 2])
    (out / CALIB).write_bytes(b"")
    CellStore(out).path(_key("lin")).unlink()
    with caplog.at_level(logging.WARNING, logger="fq_bench.grid"):
        run_grid(TINY, out)
    assert str(out / CKPT) in caplog.text and str(out / CALIB) in caplog.text
    build_report(out, plots=False)
    assert (out / "table.csv").read_text() == (reference / "table.csv").read_text()


def test_tensors_sha256_covers_dtype_shape_and_data() -> None:
    import torch
    from safetensors.torch import save

    base = tensors_sha256(save({"w": torch.arange(6, dtype=torch.float32)}))
    assert base == tensors_sha256(save({"w": torch.arange(6, dtype=torch.float32)}, {"m": "x"}))
    for other in (
        {"w": torch.arange(6, dtype=torch.int32)},  # same bytes length, another dtype
        {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)},
        {"v": torch.arange(6, dtype=torch.float32)},
        {"w": torch.arange(6, dtype=torch.float32) + 1},
    ):
        assert tensors_sha256(save(other)) != base


# ---------------------------------------------------------------- 7. one failing cell


def test_a_failing_cell_is_recorded_and_the_others_run(
    copy_of, reference: Path, monkeypatch, capsys
) -> None:
    from fq_bench.grid import _methods

    out = copy_of()
    for path in (out / "cells").glob("*.json"):
        path.unlink()

    def boom(ctx):
        raise FloatingPointError("non-finite loss at epoch 0")

    monkeypatch.setitem(_methods.METHODS, "u4", boom)
    assert main([*TINY_ARGS, "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "1 cell(s) FAILED" in printed
    assert "fitzpatrick17k__tiny_cnn__u4__s0: FloatingPointError: non-finite loss" in printed
    store = CellStore(out)
    assert [(k.method, e) for k, e in store.failures()] == [
        ("u4", "FloatingPointError: non-finite loss at epoch 0")
    ]
    assert sorted(k.method for k, _ in store.all()) == ["fp32", "lin"]
    rep = build_report(out, plots=False)
    assert "fitzpatrick17k__tiny_cnn__u4__s0: FloatingPointError" in rep.text()
    with pytest.raises(FloatingPointError):
        main([*TINY_ARGS, "--out", str(out), "--fail-fast"])
    # fixed: the next run computes the failed cell only, clears its record, gives the table
    monkeypatch.undo()
    summary = run_grid(TINY, out)
    assert [k.method for k in summary.computed] == ["u4"] and not store.failures()
    build_report(out, plots=False)
    assert (out / "table.csv").read_text() == (reference / "table.csv").read_text()


# ---------------------------------------------------------------- 9. claims, concurrent runs


def test_claims_are_respected_and_stale_ones_taken_over(tmp_path: Path) -> None:
    import socket

    store, key = CellStore(tmp_path), _key("u4")
    assert store.claim(key) and store.claim(key)  # ours, and ours again
    store.release(key)
    assert not store.claim_path(key).exists()
    # a live process of this host holds it (our parent): respected
    other = {"host": socket.gethostname(), "pid": os.getppid(), "time": 1e18}
    store.claim_path(key).write_text(json.dumps(other))
    assert store.claimed_by_other(key) and not store.claim(key)
    # its owner is gone: stale, taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.claim_path(key).write_text(json.dumps({**other, "pid": dead.pid}))
    assert not store.claimed_by_other(key) and store.claim(key)


def test_two_runs_into_one_folder_compute_each_cell_once(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "shared"
    cmd = [sys.executable, str(ROOT / "bench" / "run_grid.py"), *TINY_ARGS, "--out", str(out)]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()[-2000:]
    computed = 0
    for stdout, _ in outs:
        line = next(ln for ln in stdout.decode().splitlines() if "cell(s) computed" in ln)
        computed += int(line.split()[0])
    assert computed == 3  # each of the three cells by exactly one of the two runs
    assert not list((out / "claims").glob("*.claim"))
    assert (out / "table.csv").read_text() == (reference / "table.csv").read_text()


# ---------------------------------------------------------------- 10. file modes


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_results_follow_the_umask(tmp_path: Path, mask: int, mode: int) -> None:
    old = os.umask(mask)
    try:
        atomic_write_bytes(tmp_path / "f.json", b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == mode


# ---------------------------------------------------------------- 6 and 8. early, clear errors


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--palette-props", "0.5", "0.5", "0.5"], "proportions must sum to 1"),
        (["--bit-min", "3"], "warm-start bit-widths [2] are outside [bit_min, bit_max]"),
        (["--shard", "2/2"], "--shard i/n needs 0 <= i < n"),
        (["--shard=-1/2"], "--shard i/n needs 0 <= i < n"),
        (["--shard", "-1/2"], "--shard: expected one argument"),
        (["--data-source", "fitzpatrick17k=/no/such/folder"], "/no/such/folder does not exist"),
    ],
)
def test_bad_configurations_fail_before_any_training(
    tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    methods = ["--methods", "fp32", "lin", "fq-baq"]
    with pytest.raises(SystemExit) as exc:
        main([*TINY_ARGS, *methods, *extra, "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "checkpoints").exists()  # nothing trained


def test_out_pointing_at_a_file_is_a_cli_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit):
        main([*TINY_ARGS, "--out", str(tmp_path / "file")])
    assert "is a file; give a folder" in capsys.readouterr().err


@pytest.mark.parametrize("fault", ["truncated", "another architecture"])
def test_bad_weights_file_is_named_before_training(tmp_path: Path, capsys, fault: str) -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "weights"
    folder.mkdir()
    path = folder / "test_resnet.safetensors"
    if fault == "truncated":
        sd = {k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()}
        save_file(sd, path)
        path.write_bytes(path.read_bytes()[:-100])
    else:
        save_file({"blocks.0.weight": torch.zeros(3, 3)}, path)
    args = ["--models", "test_resnet", "--weights", str(folder), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit):
        main([*TINY_ARGS, *args])
    err = capsys.readouterr().err
    assert f"weights file {path}" in err
    assert ("unreadable" if fault == "truncated" else "does not hold 'test_resnet' weights") in err
