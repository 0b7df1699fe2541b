"""Fault injection: each fault either gives the table of a clean run or a clear, early error.

Issue 18's cases: two configs in one results folder, byte flips in FP32 checkpoints and
calibrations, truncated artifacts, duplicate metadata rows, a failing cell among good ones, two
runs into one folder, rows of scores with no finite value, bad command lines. Grid runs use
``tiny_cnn`` on 120 semi-synthetic images at 16 px with one-epoch schedules (seconds each).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import datasets
import numpy as np
import polars as pl
import pytest
from fq_bench.grid import DEFAULT, CellKey, CellStore, build_report, main, run_grid
from fq_bench.grid._cells import select_config
from fq_data import DataError, atomic_write_bytes, load_fitzpatrick17k, load_isic2019
from fq_quant import tensors_sha256

ROOT = Path(__file__).resolve().parents[1]
TINY = DEFAULT.replace(
    models=("tiny_cnn",),
    methods=("fp32", "u4", "lin"),
    seeds=(0,),
    image_size=16,
    n_images=120,
    batch_size=32,
    fp32_epochs=1,
    epochs=1,
    calib_batches=2,
    progress=False,
    budgets=(),
    frontier_methods=(),
    min_test_per_group=0,
    bootstrap_resamples=0,
)
TINY_ARGS = [
    "--models", "tiny_cnn", "--methods", "fp32", "u4", "lin", "--seeds", "0",
    "--image-size", "16", "--n-images", "120", "--batch-size", "32", "--fp32-epochs", "1",
    "--epochs", "1", "--calib-batches", "2", "--no-progress", "--threads", "1",
    "--budgets", "--frontier-methods", "--min-test-per-group", "0",
    "--bootstrap-resamples", "0", "--no-plots",
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
    assert "1 cell(s) of another config ignored" in rep.text()
    build_report(alone, plots=False)
    assert (mixed / "table.csv").read_text() == (alone / "table.csv").read_text()


def test_report_flag_follows_the_same_rule(tmp_path: Path, capsys) -> None:
    a = TINY.replace(methods=("fp32",), seeds=(0, 1))
    run_grid(a, tmp_path / "r")
    run_grid(a.replace(seeds=(0,), fp32_epochs=2), tmp_path / "r")
    assert main(["--report", str(tmp_path / "r"), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "1 cell(s) of another config ignored" in out
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


# ---------------------------------------------------------------- 4. duplicate rows


def _no_id_in_both(dd: datasets.DatasetDict) -> set[str]:
    train, test = set(dd["train"]["id"]), set(dd["test"]["id"])
    assert train.isdisjoint(test)
    assert len(train) == len(dd["train"]) and len(test) == len(dd["test"])
    return train | test


def test_duplicate_fitzpatrick_rows_are_dropped_or_refused(fitz_layout, caplog) -> None:
    root, rows = fitz_layout(per_type=12)
    known = rows.filter(pl.col("fitzpatrick_scale") != "-1")
    pl.concat([rows, known[:10]]).write_csv(root / "fitzpatrick17k.csv")
    with pytest.raises(DataError, match="10 row.s. repeat an earlier id .strict=True."):
        load_fitzpatrick17k(root, strict=True)
    with caplog.at_level(logging.WARNING, logger="fq_data"):
        dd = load_fitzpatrick17k(root, label_col="three_partition_label")
    assert "dropped 10 row(s) repeating an earlier id" in caplog.text
    assert "dropped 2 row(s) with unknown Fitzpatrick type" in caplog.text  # a warning now
    assert _no_id_in_both(dd) == set(known["md5hash"])


def test_duplicate_isic_rows_are_dropped(isic_layout, caplog) -> None:
    root, gt, _ = isic_layout()
    pl.concat([gt, gt[:4]]).write_csv(root / "ISIC_2019_Training_GroundTruth.csv")
    with caplog.at_level(logging.WARNING, logger="fq_data"):
        dd = load_isic2019(root)
    assert "repeating an earlier id" in caplog.text
    assert _no_id_in_both(dd) == set(gt["image"])


def test_a_given_split_with_an_id_on_both_sides_keeps_it_once(fitz_layout, tmp_path) -> None:
    root, _ = fitz_layout()
    ref = load_fitzpatrick17k(root, label_col="three_partition_label")
    leak = datasets.DatasetDict(
        {"train": ref["train"], "test": datasets.concatenate_datasets([ref["test"], ref["train"]])}
    )
    leak.save_to_disk(str(tmp_path / "saved"))
    dd = load_fitzpatrick17k(tmp_path / "saved", label_col="label")
    assert _no_id_in_both(dd) == set(ref["train"]["id"]) | set(ref["test"]["id"])


@pytest.mark.parametrize("name", ["fitzpatrick17k", "isic2019"])
def test_semisynthetic_splits_share_no_id(name: str) -> None:
    from fq_data import load_semisynthetic

    dd = load_semisynthetic(name, n=120, image_size=8, min_test_per_group=5)
    _no_id_in_both(dd)


def test_corrupt_jpeg_leaves_no_open_file(tmp_path: Path, data_helpers) -> None:
    from fq_data import decode_images

    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = data_helpers.jpeg_bytes(pixels)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    ds = datasets.Dataset.from_dict(
        {"image": [str(tmp_path / "cut.jpg")]},
        features=datasets.Features({"image": datasets.Image()}),
    )
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(OSError, match="truncated"):
            decode_images(ds, 16, cache=False)
        gc.collect()
    assert not [w for w in seen if issubclass(w.category, ResourceWarning)]


# ---------------------------------------------------------------- 5 and 8. fairness metrics


def test_rows_without_a_finite_score_are_refused() -> None:
    from fq_fairmetrics import group_report

    y, g = np.array([0, 1, 1]), np.array([0, 0, 1])
    for bad in ([-np.inf, -np.inf], [np.inf, np.inf]):
        scores = np.array([[2.0, 1.0], bad, [0.0, 1.0]])
        with pytest.raises(ValueError, match="1 row.s. with no finite score .first: row 1"):
            group_report(y, scores, sensitive_features=g)
    # one finite score is enough: +inf wins its row, -inf loses it
    scores = np.array([[2.0, -np.inf], [np.inf, 1.0], [0.0, 1.0]])
    assert group_report(y, scores, sensitive_features=g).overall_acc == pytest.approx(2 / 3)


def test_none_in_sensitive_features_is_named() -> None:
    from fq_fairmetrics import group_report

    with pytest.raises(ValueError, match=r"sensitive_features contains None .*index 2"):
        group_report([0, 1, 1], [0, 1, 0], sensitive_features=["a", "b", None])


def test_allocate_to_budget_without_bits_says_so() -> None:
    import torch
    from fq_alloc import allocate_to_budget
    from fq_quant import Granularity, ImportanceMap, ScopeLayout

    layout = ScopeLayout.from_model(torch.nn.Sequential(torch.nn.Linear(3, 4)), Granularity.CHANNEL)
    imap = ImportanceMap("channel", {"0": torch.rand(4)})
    for bits in ((), []):
        with pytest.raises(ValueError, match="bits is empty"):
            allocate_to_budget(imap, bits, 4.0, layout=layout)


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
        main([*TINY_ARGS[2:], *args])
    err = capsys.readouterr().err
    assert f"weights file {path}" in err
    assert ("unreadable" if fault == "truncated" else "does not hold 'test_resnet' weights") in err


# ---------------------------------------------------------------- 3. packed files


def _packed(tmp_path: Path) -> tuple[Path, dict]:
    import torch
    from fq_quant import BitAssignment, Granularity, ScopeLayout, export_packed, quantize_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    layout = ScopeLayout.from_model(model, Granularity.CHANNEL)
    bits = {
        n: torch.tensor([2, 4, 8, 4, 2, 8][: s.scope_shape[0]]) for n, s in layout.layers.items()
    }
    wrapped = quantize_model(model, BitAssignment(Granularity.CHANNEL, bits))
    path = export_packed(wrapped, tmp_path / "m.safetensors")
    with torch.no_grad():
        ref = {k: v.clone() for k, v in wrapped.state_dict().items()}
    return path, ref


def _rewrite(path: Path, *, tensors=None, meta=None, rehash: bool = True) -> None:
    """Re-save ``path`` with edited tensors/metadata; ``rehash``: a content hash computed as the
    format documents it (canonical JSON of the other metadata, then ``tensors_sha256``)."""
    import hashlib

    from safetensors.torch import load, save

    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    old_meta = json.loads(blob[8 : 8 + n])["__metadata__"]
    t = load(blob)
    t = tensors(t) if tensors else t
    m = meta(dict(old_meta)) if meta else dict(old_meta)
    if rehash:
        body = {k: v for k, v in m.items() if k != "content_sha256"}
        h = hashlib.sha256(json.dumps(body, sort_keys=True).encode())
        h.update(tensors_sha256(save(t, metadata=body)).encode())
        m["content_sha256"] = h.hexdigest()
    path.write_bytes(save(t, metadata=m))


def test_packed_file_faults_are_refused_with_the_path(tmp_path: Path) -> None:
    from fq_quant import load_packed

    path, _ = _packed(tmp_path)
    good = path.read_bytes()
    load_packed(path)
    # a flipped byte in a tensor
    _flip(path, at_end=8)
    with pytest.raises(ValueError, match=f"{path}: content hash mismatch"):
        load_packed(path)

    # a changed bit width in the header: the hash, and, rehashed, the code stream's length
    def wider(m: dict) -> dict:
        a = json.loads(m["assignment"])
        a["bits"]["0"]["values"] = [8] * len(a["bits"]["0"]["values"])
        return {**m, "assignment": json.dumps(a)}

    for rehash, message in ((False, "content hash mismatch"), (True, "code stream holds")):
        path.write_bytes(good)
        _rewrite(path, meta=wider, rehash=rehash)
        with pytest.raises(ValueError, match=f"{path}: .*{message}"):
            load_packed(path)

    # a NaN scale, even under a valid hash
    def nan_scale(t: dict) -> dict:
        s = t["0.weight:scales"].clone()
        s[1] = float("nan")
        return {**t, "0.weight:scales": s}

    path.write_bytes(good)
    _rewrite(path, tensors=nan_scale)
    with pytest.raises(ValueError, match=r"layer '0': 1 non-finite scale"):
        load_packed(path)
    # truncated, empty
    for blob in (good[: len(good) // 2], b""):
        path.write_bytes(blob)
        with pytest.raises(ValueError, match=f"{path}: not a readable safetensors file"):
            load_packed(path)


def test_packed_version_1_is_read_with_a_warning(tmp_path: Path) -> None:
    import torch
    from fq_quant import load_packed

    path, ref = _packed(tmp_path)
    state, _ = load_packed(path)

    def v1(m: dict) -> dict:
        return {k: v for k, v in m.items() if k != "content_sha256"} | {
            "format": "fq_quant.packed/1"
        }

    _rewrite(path, meta=v1, rehash=False)
    with pytest.warns(UserWarning, match="version 1 carries no content hash"):
        old, _ = load_packed(path)
    assert all(torch.equal(old[k], state[k]) for k in state)


def test_fake_quantize_bits_types_accepted_or_refused_clearly() -> None:
    import torch
    from fq_quant import fake_quantize

    w = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    want = fake_quantize(w, torch.tensor([4, 4, 4]), "channel")
    for bits in (4, np.int64(4), [4, 4, 4], np.array([4, 4, 4]), (4, 4, 4)):
        assert torch.equal(fake_quantize(w, bits, "channel"), want)
    for bits in (4.0, np.float32(4), True, None, "4"):
        with pytest.raises(TypeError, match="bits must be an int, or a tensor/array/list"):
            fake_quantize(w, bits, "channel")


def test_calibration_labels_outside_the_classes_name_the_batch() -> None:
    import torch
    from fq_importance import calibrate

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x = torch.randn(4, 3, 2, 2)
    g = torch.tensor([0, 0, 1, 1])
    batches = [(x, torch.tensor([0, 1, 2, 0]), g), (x, torch.tensor([0, 3, 2, 7]), g)]
    with pytest.raises(ValueError, match=r"batch 1 has label\(s\) \[3, 7\] outside 0..2"):
        calibrate(model, batches, metric="grape", device="cpu", progress=False)
