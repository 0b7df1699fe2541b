"""The grid: cell keys, shards, the checksummed store, resume after SIGKILL, tables, CLI errors.

End-to-end runs use ``tiny_cnn`` (two convs and a linear head) on 120 semi-synthetic images at
16 px with one-epoch schedules, so a whole grid takes seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fq_bench.grid import (
    DEFAULT,
    SMOKE,
    CellKey,
    CellStore,
    GridConfig,
    build_report,
    grid_cells,
    main,
    parse_shard,
    run_grid,
    shard_cells,
)
from fq_bench.grid._config import _NOT_FINGERPRINTED, FP32_FIELDS

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (see conftest)

ROOT = Path(__file__).resolve().parents[2]
TINY_ARGS = ["--preset", "smoke", "--no-progress", "--threads", "1"]
TINY = SMOKE.replace(progress=False)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny grid run once, uninterrupted, in this process."""
    out = tmp_path_factory.mktemp("full")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FQ_CACHE_DIR", str(tmp_path_factory.mktemp("cache_full")))
        summary = run_grid(TINY, out)
    assert [c.method for c in summary.computed] == ["fp32", "u4", "fq-qat"]
    build_report(out)
    return out


def test_tiny_grid_end_to_end(full_run: Path) -> None:
    store = CellStore(full_run)
    cells = store.all()
    assert sorted(k.method for k, _ in cells) == ["fp32", "fq-qat", "u4"]
    for name in ("table.md", "table.csv", "table.tex", "table1_bits.png", "group_accuracy.png"):
        assert (full_run / name).stat().st_size > 0, name
    assert len(list((full_run / "checkpoints").glob("*.safetensors"))) == 1
    assert len(list((full_run / "calibration").glob("*grape-type.safetensors"))) == 1
    by = {k.method: r for k, r in cells}
    assert by["fp32"]["cost"]["avg_bits"] == 32.0
    assert by["u4"]["cost"]["avg_bits"] == 4.0
    assert 2.0 < by["fq-qat"]["cost"]["avg_bits"] < 8.0
    # paper_gops = 2 * MACs * bits / 32 / 1e9 and gbops = MACs * bits * 32 / 1e9 (uniform bits)
    macs = by["u4"]["cost"]["macs"]
    assert math.isclose(by["u4"]["cost"]["paper_gops"], 2 * macs * 4 / 32 / 1e9, rel_tol=1e-9)
    assert math.isclose(by["fp32"]["cost"]["gbops"], macs * 32 * 32 / 1e9, rel_tol=1e-9)
    for res in by.values():
        accs = [a for a in res["group_acc"] if not math.isnan(a)]
        assert math.isclose(res["metrics"]["avg_acc"], sum(accs) / len(accs), abs_tol=1e-12)
        assert math.isclose(res["metrics"]["worst_acc"], min(accs), abs_tol=1e-12)
        assert res["data"]["semisynthetic"] is True
    # a second run finds every cell finished and computes nothing
    again = run_grid(TINY, full_run)
    assert again.computed == [] and len(again.skipped) == 3


def _cli(out: Path, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "run_grid.py"),
        *TINY_ARGS,
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ)
    )


def test_sigkill_then_resume_gives_the_same_table(full_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    proc = _cli(out, "--no-plots")
    deadline = time.monotonic() + 120
    while not list(out.glob("cells/*.json")):
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    finished = len(list((out / "cells").glob("*.json")))
    assert 1 <= finished <= 3
    proc = _cli(out, "--no-plots")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert f"{3 - finished} cell(s) computed, {finished} reused" in stdout.decode()
    assert (out / "table.csv").read_text() == (full_run / "table.csv").read_text()
    assert (out / "table.md").read_text() == (full_run / "table.md").read_text()


def test_union_of_shards_is_the_grid(full_run: Path, tmp_path: Path) -> None:
    config = DEFAULT.replace(
        datasets=("fitzpatrick17k", "isic2019"), models=("a", "b"), seeds=(0, 1, 2)
    )
    cells = grid_cells(config)
    per_seed = len(DEFAULT.methods) + len(DEFAULT.budgets) * len(DEFAULT.frontier_methods)
    assert len(cells) == 2 * 2 * per_seed * 3 == len({c.id for c in cells})
    assert len(DEFAULT.methods) == 9  # Table 1 + U3, U2 (extra)
    assert len(DEFAULT.budgets) * len(DEFAULT.frontier_methods) == 12  # 3 budgets x the 2x2
    for n in (1, 2, 5):
        shards = [shard_cells(cells, i, n) for i in range(n)]
        ids = [c.id for s in shards for c in s]
        assert sorted(ids) == sorted(c.id for c in cells)  # a partition: no cell twice, none lost
        assert shard_cells(list(reversed(cells)), 0, n) == list(reversed(shards[0]))
    # two shards run into one folder give the uninterrupted table
    out = tmp_path / "sharded"
    done = [run_grid(TINY, out, shard=(i, 2)).computed for i in range(2)]
    assert sorted(len(d) for d in done) == [1, 2]
    build_report(out, plots=False)
    assert (out / "table.csv").read_text() == (full_run / "table.csv").read_text()


def test_corrupt_cell_is_recomputed(full_run: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(full_run, out)
    key = CellKey(dataset="fitzpatrick17k", model="tiny_cnn", method="u4", seed=0)
    path = CellStore(out).path(key)
    path.write_bytes(path.read_bytes()[:-40])  # a partial write
    assert CellStore(out).read(key) is None
    edited = CellStore(out).path(
        CellKey(dataset="fitzpatrick17k", model="tiny_cnn", method="fp32", seed=0)
    )
    edited.write_text(edited.read_text().replace('"avg_bits": 32.0', '"avg_bits": 31.0'))
    summary = run_grid(TINY, out)
    assert sorted(c.method for c in summary.computed) == ["fp32", "u4"]
    build_report(out, plots=False)
    assert (out / "table.csv").read_text() == (full_run / "table.csv").read_text()


def _hand_cell(method: str, label: str, seed: int, acc: tuple[float, float], bits: float) -> dict:
    return {
        "metrics": {
            "avg_acc": sum(acc) / 2, "worst_acc": min(acc), "gap": abs(acc[0] - acc[1]),
            "eopp0": 0.01 * (seed + 1), "eodd": 0.1 * (seed + 1),
        },
        "cost": {"avg_bits": bits, "gbops": 2.0 * bits, "paper_gops": 0.01 * bits},
        "labels": {"dataset": "FitzP.", "model": "ResNet18", "method": label},
        "group_names": ["1", "2"], "group_acc": list(acc), "group_n": [5, 5],
        "layer_bits": [], "data": {"semisynthetic": True},
    }  # fmt: skip


def test_table_format_against_hand_made_cells(tmp_path: Path) -> None:
    store = CellStore(tmp_path)
    cells = [
        # FQ-QAT, seeds 0 and 1: AvgAcc (0.5+0.7)/2 = 0.6 and (0.6+0.8)/2 = 0.7 -> 65.00 ± 7.07
        # (sample std of {60, 70} = 10/sqrt(2) = 7.071); WorstAcc {50, 60} -> 55.00 ± 7.07;
        # Gap {20, 20} -> 20.00 ± 0.00; EOpp0 {0.01, 0.02} -> 0.015 ± 0.007; EOdd {0.1, 0.2}
        # -> 0.150 ± 0.071; bits 5 in both seeds -> no spread shown for the cost columns
        ("fq-qat", "FQ-QAT", 0, (0.5, 0.7), 5.0),
        ("fq-qat", "FQ-QAT", 1, (0.6, 0.8), 5.0),
        # FP32 with one seed: no std at all
        ("fp32", "FP32", 0, (0.75, 0.25), 32.0),
    ]
    for method, label, seed, acc, bits in cells:
        key = CellKey(dataset="fitzpatrick17k", model="resnet18", method=method, seed=seed)
        store.write(key, _hand_cell(method, label, seed, acc, bits), fingerprint="x")
    report = build_report(tmp_path, plots=False)
    assert report.markdown == (
        "| Dataset | Model | Method | AvgBits | GBOPs | GBOPs (true) | AvgAcc | WorstAcc | Gap | EOpp0 | EOdd | Seeds |\n"
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        "| FitzP. | ResNet18 | FP32 | 32.00 | 0.320 | 64.00 | 50.00 | 25.00 | 50.00 | 0.010 | 0.100 | 1 |\n"
        "| FitzP. | ResNet18 | FQ-QAT | 5.00 | 0.050 | 10.00 | 65.00 ± 7.07 | 55.00 ± 7.07 | 20.00 ± 0.00 | 0.015 ± 0.007 | 0.150 ± 0.071 | 2 |\n"
    )  # fmt: skip
    header, fp32, qat = report.csv.splitlines()
    assert header == (
        "dataset,model,method,variant,dataset_label,model_label,method_label,n_seeds,"
        "avg_bits_mean,avg_bits_std,paper_gops_mean,paper_gops_std,gbops_mean,gbops_std,"
        "avg_acc_mean,avg_acc_std,worst_acc_mean,worst_acc_std,gap_mean,gap_std,"
        "eopp0_mean,eopp0_std,eodd_mean,eodd_std"
    )
    assert fp32 == (
        'fitzpatrick17k,resnet18,fp32,"",FitzP.,ResNet18,FP32,1,32.000000,NaN,0.320000,NaN,'
        "64.000000,NaN,0.500000,NaN,0.250000,NaN,0.500000,NaN,0.010000,NaN,0.100000,NaN"
    )
    assert qat == (
        'fitzpatrick17k,resnet18,fq-qat,"",FitzP.,ResNet18,FQ-QAT,2,5.000000,0.000000,0.050000,'
        "0.000000,10.000000,0.000000,0.650000,0.070711,0.550000,0.070711,0.200000,0.000000,"
        "0.015000,0.007071,0.150000,0.070711"
    )
    assert r"65.00$\pm$7.07" in report.latex
    assert (tmp_path / "table.md").read_text().endswith(report.markdown)
    assert "SEMI-SYNTHETIC" in report.text()


def test_typos_are_errors_listing_valid_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--methods", "fp32", "fq-bq"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "fq-bq" in err and "'fq-baq'" in err and "'lin'" in err
    with pytest.raises(SystemExit):
        main(["--models", "resnt18", "--no-progress"])
    err = capsys.readouterr().err
    assert "resnt18" in err and "resnet18" in err and "tiny_vit_5m_224" in err
    with pytest.raises(
        ValueError,
        match="valid names: fp32, u8, u7, u6, u5, u4, u3, u2, fp32-ft, blind, blind-fair, fq-alloc, lin, guo",
    ):
        GridConfig(methods=("fp32", "U4"))
    with pytest.raises(SystemExit):
        main(["--sweep", "lambda_bit=0.1,1", "--no-progress"])
    assert "lambda_bits" in capsys.readouterr().err
    with pytest.raises(ValueError, match="0 <= i < n"):
        parse_shard("2/2")


def test_observations_pair_methods_with_fp32_by_seed() -> None:
    import polars as pl
    from fq_bench.grid._tables import observations

    def row(method: str, label: str, seed: int, avg: float, worst: float, variant: str = ""):
        return {"dataset": "fitzpatrick17k", "model": "resnet18", "method": method, "seed": seed,
                "variant": variant, "dataset_label": "FitzP.", "model_label": "ResNet18",
                "method_label": label, "avg_acc": avg, "worst_acc": worst}  # fmt: skip

    cells = pl.DataFrame(
        [
            *(row("fp32", "FP32", s, a, w) for s, a, w in [(0, .85, .80), (1, .86, .82), (2, .84, .78)]),
            *(row("u4", "U4", s, a, w) for s, a, w in [(0, .84, .75), (1, .86, .80), (2, .83, .74)]),
            row("fq-baq", "FQ-BAQ", 1, 0.90, 0.90),  # one seed: paired with FP32 seed 1 only
            row("fq-baq", "FQ-BAQ", 0, 0.10, 0.10, variant="lambda_fair=0"),  # ablation: ignored
        ]
    )  # fmt: skip
    # U4 - FP32 per seed: AvgAcc -1, 0, -1 -> mean -0.67, sample std 0.58;
    # WorstAcc -5, -2, -4 -> mean -3.67, std sqrt(((-4/3)^2 + (5/3)^2 + (-1/3)^2) / 2) = 1.53.
    # FQ-BAQ (seed 1 only): +4.0 / +8.0, no std.
    assert observations(cells) == [
        "FitzP. ResNet18: AvgAcc / WorstAcc change vs FP32 in points, paired by seed (3 seeds; "
        "mean ± std): U4 -0.7 ± 0.6 / -3.7 ± 1.5, FQ-BAQ +4.0 / +8.0."
    ]
    assert observations(cells.filter(pl.col("method") != "fp32")) == []
    # with the control: fine-tuned rows are also paired with it (U4 is not a fine-tune)
    ctrl = pl.DataFrame(
        [row("fp32-ft", "FP32 + FT (control)", 1, 0.88, 0.85), row("u3", "U3", 1, 0.8596, 0.80)]
    )
    lines = observations(pl.concat([cells, ctrl]))
    assert len(lines) == 2
    # U3: -0.04 rounds to zero and prints as +0.0, not -0.0
    assert "U3 +0.0 / -2.0, FP32 + FT (control) +2.0 / +3.0, FQ-BAQ +4.0 / +8.0." in lines[0]
    assert lines[1] == (
        "FitzP. ResNet18: AvgAcc / WorstAcc change vs FP32 + FT (control: the same extra "
        "training, unquantized) in points, paired by seed (1 seed; mean ± std): FQ-BAQ +2.0 / +5.0."
    )


def test_label_column_chooses_the_class_granularity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import polars as pl
    from fq_data import METADATA_DIR
    from safetensors.torch import load_file

    real = pl.read_csv(METADATA_DIR / "fitzpatrick17k.csv", infer_schema_length=0)
    n_nine = real["nine_partition_label"].drop_nulls().n_unique()
    assert n_nine == 9
    base = [*TINY_ARGS, "--methods", "fp32"]  # FP32 only
    out = tmp_path / "nine"
    args = [*base, "--label-column", "fitzpatrick17k=nine_partition_label", "--out", str(out)]
    assert main(args) == 0
    head = load_file(out / "checkpoints" / "fitzpatrick17k__tiny_cnn__s0.safetensors")
    assert head["head.weight"].shape[0] == n_nine  # the default column has 3 classes
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["label_columns"] == [["fitzpatrick17k", "nine_partition_label"]]
    # a column the metadata does not have: one error line listing the columns found, exit 2
    assert (
        main([*base, "--label-column", "fitzpatrick17k=diagnosis_x", "--out", str(tmp_path / "x")])
        == 2
    )
    err = capsys.readouterr().err
    assert re.search(r"^error: .*missing column\(s\) \['diagnosis_x'\].*columns found", err, re.M)
    with pytest.raises(SystemExit):
        main([*base, "--label-column", "fitzpatrick=label"])
    assert "DATASET=COLUMN with DATASET in fitzpatrick17k, isic2019" in capsys.readouterr().err
    with pytest.raises(ValueError, match="label_columns: unknown dataset 'isic'"):
        DEFAULT.replace(label_columns=(("isic", "diagnosis"),))
    # the class column changes the FP32 checkpoint's fingerprint; leaving it unset keeps results
    # written before the field existed valid (the field is left out of the hash when empty)
    nine = DEFAULT.replace(label_columns=(("fitzpatrick17k", "nine_partition_label"),))
    assert nine.fingerprint(FP32_FIELDS) != DEFAULT.fingerprint(FP32_FIELDS)
    before = dataclasses.asdict(DEFAULT)  # the hash as computed before the fields existed
    # (fields added later are left out at their defaults: issue 17's datasets, issue 19's
    # objective, issue 24's variant, issue 27's allocation cost)
    for k in ("label_columns", "custom_datasets", "image_columns", "group_columns", "fair_loss",
              "fair_tau", "dro_eta", "fair_ema", "variant", "alloc_cost",
              *_NOT_FINGERPRINTED):  # fmt: skip
        before.pop(k)
    digest = hashlib.sha256(json.dumps(before, sort_keys=True, default=str).encode())
    assert DEFAULT.fingerprint() == digest.hexdigest()[:16]


def test_a_registered_torchvision_vit_gets_its_attention_quantized(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision
    from fq_bench.grid import CUSTOM_MODELS

    def vit(num_classes: int, image_size: int):
        return torchvision.models.VisionTransformer(
            image_size=image_size, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16,
            mlp_dim=32, num_classes=num_classes,
        )  # fmt: skip

    monkeypatch.setitem(CUSTOM_MODELS, "tv_vit", vit)
    run_grid(TINY.replace(models=("tv_vit",), methods=("u4",)), tmp_path)
    [(_, cell)] = CellStore(tmp_path).all()
    names = {name for name, _, _ in cell["layer_bits"]}
    attn = "encoder.layers.encoder_layer_0.self_attention"
    assert {f"{attn}.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")} <= names
    # every weight matrix but the two embeddings is quantized at 4 bits
    model = vit(3, 16)
    matrices = sum(p.numel() for n, p in model.named_parameters() if p.dim() >= 2)
    embeddings = model.class_token.numel() + model.encoder.pos_embedding.numel()
    assert cell["cost"]["n_params"] == matrices - embeddings
    assert cell["cost"]["avg_bits"] == 4.0


def test_fp32_ft_control_is_the_fine_tune_schedule_without_quantization(tmp_path: Path) -> None:
    """The control cell equals an independent re-run: FP32Trainer from the checkpoint with the
    fine-tunes' lr, epochs and the cell's seed, evaluated unquantized (avg bits 32)."""
    import numpy as np
    import torch
    from fq_baq import BAQConfig, FP32Trainer
    from fq_bench.grid._cell_run import cell_seed
    from fq_bench.grid._checkpoints import fresh_model
    from fq_bench.grid._data import load_data
    from fq_bench.grid._processes import seed_everything
    from safetensors.torch import load_file

    cfg = TINY.replace(methods=("fp32", "fp32-ft"))
    run_grid(cfg, tmp_path)
    cells = {k.method: r for k, r in CellStore(tmp_path).all()}
    got = cells["fp32-ft"]
    assert got["cost"]["avg_bits"] == 32.0 and len(got["history"]) == cfg.epochs
    assert got["labels"]["method"] == "FP32 + FT (control)"

    data = load_data(cfg, "fitzpatrick17k")
    key = next(k for k, _ in CellStore(tmp_path).all() if k.method == "fp32-ft")
    s = cell_seed(key)  # every fine-tune of a seed trains on the same batches
    seed_everything(s)
    model = fresh_model(cfg, "tiny_cnn", data, pretrained=False)
    ckpt = tmp_path / "checkpoints" / "fitzpatrick17k__tiny_cnn__s0.safetensors"
    model.load_state_dict(load_file(str(ckpt)))
    res = FP32Trainer(
        model, BAQConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, epochs=cfg.epochs,
                         lambda_fair=0.0, seed=s, cpu=True, progress=False)
    ).fit(data.reseed(s))  # fmt: skip
    res.model.eval()
    with torch.no_grad():
        pred = torch.cat([res.model(x).argmax(1) for x, _, _ in data.loaders.test]).numpy()
    y = np.concatenate([yb.numpy() for _, yb, _ in data.loaders.test])
    g = np.concatenate([gb.numpy() for _, _, gb in data.loaders.test])
    accs = [float((pred[g == k] == y[g == k]).mean()) for k in range(6)]
    assert got["group_acc"] == pytest.approx(accs, abs=1e-12)
    # the training itself (accuracies on 48 test images are too coarse to tell schedules apart)
    assert [h["task_loss"] for h in got["history"]] == [h.task_loss for h in res.history]


def test_a_cell_is_the_same_whether_its_calibration_was_computed_or_loaded(tmp_path: Path) -> None:
    """Calibration reads the cell's own train loader; it must leave its shuffle as it found it.

    In A, FQ-QAT's cell computes the calibration; in B, Lin et al.'s cell computed it first (same
    'type' grouping) and FQ-QAT's cell only loads it. FQ-QAT must be bit-identical in both."""
    run_grid(TINY.replace(methods=("fq-qat",)), tmp_path / "a")
    run_grid(TINY.replace(methods=("lin",)), tmp_path / "b")
    run_grid(TINY.replace(methods=("fq-qat",)), tmp_path / "b")
    [(_, a)] = CellStore(tmp_path / "a").all()
    b = {k.method: r for k, r in CellStore(tmp_path / "b").all()}["fq-qat"]
    assert a["history"] == b["history"]
    assert a["group_acc"] == b["group_acc"] and a["cost"] == b["cost"]
