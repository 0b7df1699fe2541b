"""The ``ablations`` and ``paper`` presets of the grid, end to end, offline and tiny.

Ablations: FQ-BAQ sweeps on ``tiny_cnn`` (120 semi-synthetic images at 16 px, one-epoch schedules,
3 seeds), the ablation table checked against a recomputation from the cell JSON files (mean,
sample std, Student-t 95% interval with ``scipy.stats.t``), the figure, ``--report``, resume.

Paper: the paper preset with a local ``--weights`` folder (a timm ``test_resnet`` state dict saved
with safetensors) and a local real-format Fitzpatrick17k folder, shrunk to 32 px and one epoch;
the FP32 checkpoint must start from the file's weights and the table must say the data is real.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from fq_bench.grid import ABLATIONS, CellStore, build_model, main
from fq_bench.grid import _models as grid_models
from fq_bench.grid._cli import build_parser, config_from_args
from scipy import stats

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (see conftest)


# ------------------------------------------------------------------------------------ ablations
ABL_ARGS = [
    "--preset", "ablations", "--datasets", "fitzpatrick17k", "--models", "tiny_cnn",
    "--seeds", "0", "1", "2", "--n-images", "120", "--image-size", "16", "--batch-size", "32",
    "--fp32-epochs", "1", "--epochs", "1", "--calib-batches", "2", "--no-progress",
    "--sweep", "lambda_fair=0,0.5", "--sweep", "lambda_bits=0.1",
]  # fmt: skip
METRICS = ("avg_bits", "gbops", "avg_acc", "worst_acc", "gap", "eopp0", "eodd")


@pytest.fixture(scope="module")
def ablation_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("ablations")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FQ_CACHE_DIR", str(tmp_path_factory.mktemp("cache_ablations")))
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main([*ABL_ARGS, "--out", str(out)]) == 0
    return out, buf.getvalue()


def _recompute(out: Path) -> dict[tuple[str, float], dict[str, tuple[float, float, float, float]]]:
    """From the raw cell JSON files: (field, value) -> metric -> (mean, std, ci_low, ci_high)."""
    by: dict[tuple[str, float], dict[str, list[float]]] = {}
    for path in sorted((out / "cells").glob("*.json")):
        body = json.loads(path.read_text())
        name, value = body["key"]["variant"].split("=")
        res = body["result"]
        vals = {**res["metrics"], **res["cost"]}
        for m in METRICS:
            by.setdefault((name, float(value)), {}).setdefault(m, []).append(float(vals[m]))
    table = {}
    for k, metrics in by.items():
        table[k] = {}
        for m, xs in metrics.items():
            a = np.asarray(xs, dtype=np.float64)
            mean, std = a.mean(), a.std(ddof=1)
            half = stats.t.ppf(0.975, df=len(a) - 1) * std / math.sqrt(len(a))
            table[k][m] = (mean, std, mean - half, mean + half)
    return table


def test_ablations_cells_and_table_match_a_recomputation(ablation_run: tuple[Path, str]) -> None:
    out, stdout = ablation_run
    cells = CellStore(out).all()
    # 1 dataset x 1 model x 3 seeds x 3 variants (lambda_fair 0, 0.5; lambda_bits 0.1), FQ-BAQ
    assert len(cells) == 9
    assert {k.method for k, _ in cells} == {"fq-baq"}
    assert sorted({k.variant for k, _ in cells}) == [
        "lambda_bits=0.1", "lambda_fair=0", "lambda_fair=0.5",
    ]  # fmt: skip
    # the override reached the trainer: BAQ's history records the lambda_bits it used
    for key, res in cells:
        want = 0.1 if key.variant == "lambda_bits=0.1" else ABLATIONS.lambda_bits
        assert math.isclose(res["history"][-1]["lambda_bits"], want, rel_tol=1e-6)
    ab = pl.read_csv(out / "ablation.csv")
    expect = _recompute(out)
    assert ab.height == len(expect) == 3
    for r in ab.iter_rows(named=True):
        assert r["n_seeds"] == 3
        for m in METRICS:
            got = (r[f"{m}_mean"], r[f"{m}_std"], r[f"{m}_ci95_low"], r[f"{m}_ci95_high"])
            want = expect[(r["field"], r["value"])][m]
            # the CSV keeps 6 decimals
            assert np.allclose(got, want, rtol=0, atol=1e-6), (r["field"], r["value"], m)
    # the reference row is the run's own value (the preset's lambda_fair 0.5), only that one
    refs = {(r["field"], r["value"]): r["ref"] for r in ab.iter_rows(named=True)}
    assert refs == {("lambda_fair", 0.0): False, ("lambda_fair", 0.5): True,
                    ("lambda_bits", 0.1): False}  # fmt: skip
    # the Markdown row prints mean ± std [low, high] in percent, 2 decimals, from the same numbers
    md = (out / "ablation.md").read_text()
    mean, std, lo, hi = (100 * x for x in expect[("lambda_fair", 0.5)]["worst_acc"])
    row = next(line for line in md.splitlines() if "| lambda_fair | 0.5 (ref) |" in line)
    assert f"| {mean:.2f} ± {std:.2f} [{lo:.2f}, {hi:.2f}] |" in row
    assert "Data: FitzP.: SEMI-SYNTHETIC" in md and "Weights: random initialization" in md
    assert "95% t-interval" in stdout and "0.5 (ref)" in stdout
    # an ablation-only run has no Table 1 rows, so no table.* files
    assert not (out / "table.md").exists()


def test_ablations_figure_and_report_rebuild_and_resume(
    ablation_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = ablation_run
    png = out / "ablation_fitzpatrick17k.png"
    img = __import__("matplotlib.image", fromlist=["imread"]).imread(png)
    assert img.ndim == 3 and img.shape[0] > 400 and img.shape[1] > 400
    before = {p.name: p.read_bytes() for p in out.glob("ablation.*")}
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    for p in out.glob("ablation*"):
        p.unlink()
    assert main(["--report", str(out)]) == 0
    assert {p.name: p.read_bytes() for p in out.glob("ablation.*")} == before
    assert png.is_file()
    capsys.readouterr()
    # a second run reuses all 9 cells and rewrites none of them
    assert main([*ABL_ARGS, "--out", str(out), "--no-plots"]) == 0
    assert "0 cell(s) computed, 9 reused" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")} == mtimes


# ---------------------------------------------------------------------------------------- paper
@pytest.fixture
def weights_dir(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """``DIR/test_resnet.safetensors``: a timm state dict (1000-class head) from seed 123."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(123)
    sd = {k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()}
    folder = tmp_path / "weights"
    folder.mkdir()
    save_file(sd, folder / "test_resnet.safetensors")
    return folder, sd


def test_paper_preset_offline_uses_the_weights_file_and_real_data(
    fitz_layout, weights_dir, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file

    root, rows = fitz_layout(per_type=8)
    folder, file_sd = weights_dir
    out = tmp_path / "paper"
    args = [
        "--preset", "paper", "--datasets", "fitzpatrick17k", "--models", "test_resnet",
        "--data-source", f"fitzpatrick17k={root}", "--weights", str(folder),
        "--image-size", "32", "--batch-size", "16", "--seeds", "0", "--methods", "fp32", "u4", "--budgets", "--frontier-methods",
        "--fp32-epochs", "1", "--epochs", "1", "--calib-batches", "2", "--no-progress",
        # a vanishing FP32 learning rate: AdamW's steps (~1e-30) round away on every conv weight,
        # so the saved checkpoint must hold the file's weights bit for bit
        "--lr-fp32", "1e-30", "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    stdout = capsys.readouterr().out
    ckpt = load_file(out / "checkpoints" / "fitzpatrick17k__test_resnet__s0.safetensors")
    convs = [k for k, v in file_sd.items() if v.ndim == 4]
    assert len(convs) > 5
    for k in convs:
        assert torch.equal(ckpt[k], file_sd[k]), k
    # ... and not what the grid's own seeded random init would have given
    torch.manual_seed(0)
    fresh = build_model("test_resnet", num_classes=ckpt["fc.weight"].shape[0], image_size=32)
    assert not torch.equal(fresh.state_dict()[convs[0]], ckpt[convs[0]])
    assert ckpt["fc.weight"].shape[0] != file_sd["fc.weight"].shape[0]  # the head was replaced
    # the cells and the table say real data from that folder, never semi-synthetic
    cells = CellStore(out).all()
    assert {k.method for k, _ in cells} == {"fp32", "u4"}
    for _, res in cells:
        assert res["data"]["semisynthetic"] is False and res["data"]["source"] == str(root)
    n_known = rows.filter(pl.col("fitzpatrick_scale") != "-1").height
    assert res["data"]["n_train"] + res["data"]["n_test"] == n_known
    table = (out / "table.md").read_text()
    assert "semi-synthetic" not in table.lower() and "semi-synthetic" not in stdout.lower()
    assert f"Data: FitzP.: real images from {root}" in table
    assert f"Weights: ImageNet-pretrained, loaded from {folder}/<model>.safetensors" in table
    assert "semi-synthetic" not in (out / "table.tex").read_text().lower()
    # every cell records the weights file and the sha256 of its bytes
    wfile = folder / "test_resnet.safetensors"
    digest = hashlib.sha256(wfile.read_bytes()).hexdigest()
    for _, res in cells:
        assert res["weights"] == {"file": str(wfile.resolve()), "sha256": digest}
    # replacing the file under the same name makes checkpoint and cells stale: all recomputed,
    # and the new checkpoint starts from the new file
    from safetensors.torch import save_file

    new_sd = {k: (v + 1.0 if v.is_floating_point() else v) for k, v in file_sd.items()}
    save_file(new_sd, wfile)
    capsys.readouterr()
    assert main(args) == 0
    assert "2 cell(s) computed, 0 reused" in capsys.readouterr().out
    ckpt = load_file(out / "checkpoints" / "fitzpatrick17k__test_resnet__s0.safetensors")
    assert torch.equal(ckpt[convs[0]], new_sd[convs[0]])
    new_digest = hashlib.sha256(wfile.read_bytes()).hexdigest()
    assert {res["weights"]["sha256"] for _, res in CellStore(out).all()} == {new_digest}


def test_run_grid_checks_pretrained_sources_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the Python API fails as early as the CLI: nothing is loaded or written
    from fq_bench.grid import DEFAULT, run_grid

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(grid_models, "_hub_cached", lambda name: False)
    out = tmp_path / "never"
    with pytest.raises(RuntimeError, match="--weights DIR"):
        run_grid(DEFAULT.replace(pretrained=True, progress=False), out)
    with pytest.raises(FileNotFoundError, match="resnet18.safetensors"):
        run_grid(DEFAULT.replace(pretrained=True, weights_dir=str(tmp_path)), out)
    assert not out.exists()


def test_pretrained_without_reachable_hub_fails_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub counts as unreachable
    monkeypatch.setattr(grid_models, "_hub_cached", lambda name: False)
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exc:
        main(["--preset", "paper", "--no-progress", "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--weights DIR" in err and "unreachable" in err and "resnet50" in err
    assert not out.exists()  # nothing was loaded or written
    with pytest.raises(SystemExit):
        main(["--preset", "paper", "--weights", str(tmp_path), "--out", str(out)])
    assert f"{tmp_path}/resnet18.safetensors" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--preset", "paper", "--models", "tiny_cnn", "--out", str(out)])
    assert "custom models without ImageNet weights" in capsys.readouterr().err
    assert not out.exists()


def test_weights_flag_implies_pretrained_and_tiny_vit_builds(weights_dir) -> None:
    folder, _ = weights_dir
    parser = build_parser()
    args = parser.parse_args(["--models", "test_resnet", "--weights", str(folder)])
    config = config_from_args(args, parser)
    assert config.pretrained and config.weights_dir == str(folder)
    with pytest.raises(ValueError, match="weights_dir"):
        config.replace(pretrained=False)
    # TinyViT takes no img_size argument (the paper preset builds it at any --image-size)
    model = build_model("tiny_vit_5m_224", num_classes=3, image_size=32).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_sweeps_run_only_the_methods_they_change(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    # lambda_fair enters FQ-QAT and FQ-BAQ; the default preset's other six rows are dropped
    args = parser.parse_args(["--sweep", "lambda_fair=0,1", "--models", "tiny_cnn"])
    assert config_from_args(args, parser).methods == ("fq-qat", "fq-baq")
    # lr_bits is BAQ's alone, so FQ-QAT would only repeat one cell per swept value
    with pytest.raises(SystemExit):
        main(["--sweep", "lr_bits=0.01,0.1", "--methods", "fq-qat", "fq-baq", "--no-progress"])
    err = capsys.readouterr().err
    assert "['fq-qat'] do not use every swept field" in err and "allowed: fq-baq" in err


def test_a_sweeps_reference_point_is_the_plain_cell_computed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lambda_fair=0.5 and lambda_bits=0.01 are the run's own values: both variants are the plain
    FQ-BAQ cell, so they are trained once, read the same, and equal Table 1's FQ-BAQ cell."""
    from fq_bench.grid import _methods, run_grid
    from fq_bench.grid._cli import build_parser, config_from_args

    calls: list[float] = []
    real = _methods.METHODS["fq-baq"]

    def counting(ctx):
        calls.append(ctx.config.lambda_bits)
        return real(ctx)

    monkeypatch.setitem(_methods.METHODS, "fq-baq", counting)
    parser = build_parser()
    base = [*ABL_ARGS[: ABL_ARGS.index("--sweep")], "--seeds", "0"]  # the last --seeds wins
    sweeps = ["--sweep", "lambda_fair=0.5", "--sweep", "lambda_bits=0.01,0.1"]
    config = config_from_args(parser.parse_args([*base, *sweeps]), parser)
    assert (config.lambda_fair, config.lambda_bits) == (0.5, 0.01)
    run_grid(config, tmp_path / "ab")
    assert sorted(calls) == [0.01, 0.1]  # three variants, two trainings
    cells = {k.variant: r for k, r in CellStore(tmp_path / "ab").all()}
    assert cells["lambda_fair=0.5"] == cells["lambda_bits=0.01"]
    # Table 1's FQ-BAQ cell under the same config is the same computation
    run_grid(config.replace(sweeps=()), tmp_path / "t1")
    [(_, plain)] = CellStore(tmp_path / "t1").all()
    for field in ("metrics", "group_acc", "cost", "history"):
        assert plain[field] == cells["lambda_fair=0.5"][field], field
    # resume: a missing reference cell is restored from its finished twin, without training
    calls.clear()
    ref = next(p for p in (tmp_path / "ab" / "cells").glob("*.json") if "lambda_fair" in p.name)
    body = ref.read_bytes()
    ref.unlink()
    run_grid(config, tmp_path / "ab")
    assert calls == [] and ref.read_bytes() == body
