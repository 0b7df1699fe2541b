"""The frontier (issue 15): budgets, the group-blind control, paired intervals, the verdict rule.

The end-to-end runs use ``tiny_cnn`` on 120 semi-synthetic images at 16 px with one-epoch
schedules; every number the frontier files print is recomputed here from the cell files with
scipy's t quantile and numpy, independently of the report's code.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from fq_bench.grid import DEFAULT, SMOKE, CellKey, CellStore, build_report, grid_cells, run_grid
from fq_bench.grid._config import CALIBRATION_FIELDS
from fq_bench.grid._frames import cells_frame
from fq_bench.grid._frontier import (
    FRONTIER_COLUMNS,
    effects_frame,
    frontier_frame,
    paired_worst,
    resampled_worst,
    verdict,
)
from scipy import stats

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (see conftest)

FRONTIER = SMOKE.replace(
    methods=("fp32", "u4", "u2"),
    seeds=(0, 1),
    progress=False,
    budgets=(2.5, 4.0),
    frontier_methods=("blind", "blind-fair", "fq-alloc", "fq-qat", "fq-baq"),
    bootstrap_resamples=200,
)


@pytest.fixture(scope="module")
def frontier_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """The tiny frontier, run once; counts how often FP32 training and calibration ran."""
    import fq_baq
    import fq_importance

    out = tmp_path_factory.mktemp("frontier")
    calls = {"fp32": 0, "calibrate": 0}
    fit, calibrate = fq_baq.FP32Trainer.fit, fq_importance.calibrate

    def counting_fit(self, *a, **k):  # type: ignore[no-untyped-def]
        calls["fp32"] += 1
        return fit(self, *a, **k)

    def counting_calibrate(*a, **k):  # type: ignore[no-untyped-def]
        calls["calibrate"] += 1
        return calibrate(*a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FQ_CACHE_DIR", str(tmp_path_factory.mktemp("cache_frontier")))
        mp.setattr(fq_baq.FP32Trainer, "fit", counting_fit)
        mp.setattr(fq_importance, "calibrate", counting_calibrate)
        summary = run_grid(FRONTIER, out)
    assert len(summary.computed) == len(grid_cells(FRONTIER)) == 2 * (3 + 2 * 5)
    build_report(out)
    return out, calls


def _cells(root: Path) -> list[tuple[CellKey, dict]]:
    return CellStore(root).all()


def test_every_mixed_cell_ends_within_005_bits_of_its_budget(frontier_run) -> None:
    root, _ = frontier_run
    budget_cells = [(k, r) for k, r in _cells(root) if k.budget]
    assert len(budget_cells) == 2 * 2 * 5
    for key, res in budget_cells:
        assert abs(res["cost"]["avg_bits"] - float(key.budget)) <= 0.05, key.id
        assert res["target_bits"] == float(key.budget)


def test_fp32_and_calibrations_are_shared_across_budgets(frontier_run) -> None:
    root, calls = frontier_run
    # one FP32 training per seed, one calibration per (seed, grouping): type and pooled
    assert calls == {"fp32": 2, "calibrate": 4}
    assert len(list((root / "checkpoints").glob("*.safetensors"))) == 2
    names = sorted(p.name for p in (root / "calibration").glob("*.safetensors"))
    assert [n.split("__")[-1] for n in names] == ["grape-pooled.safetensors", "grape-type.safetensors"] * 2  # fmt: skip


def test_blind_calibration_equals_calibrate_with_one_group(frontier_run) -> None:
    """The pooled calibration on disk is ``calibrate`` on the same batches with every group 0."""
    from fq_bench.grid._artifacts import load_group_importance
    from fq_bench.grid._cells import stable_seed
    from fq_bench.grid._checkpoints import fresh_model
    from fq_bench.grid._data import Batches, load_data
    from fq_bench.grid._processes import seed_everything
    from fq_importance import calibrate
    from safetensors.torch import load_file

    root, _ = frontier_run
    data = load_data(FRONTIER, "fitzpatrick17k")
    stored = load_group_importance(
        root / "calibration" / "fitzpatrick17k__tiny_cnn__s0__grape-pooled.safetensors",
        fingerprint=FRONTIER.fingerprint(CALIBRATION_FIELDS),
    )
    assert stored is not None and list(stored.importance) == [0]
    model = fresh_model(FRONTIER, "tiny_cnn", data, pretrained=False)
    model.load_state_dict(
        load_file(root / "checkpoints" / "fitzpatrick17k__tiny_cnn__s0.safetensors")
    )
    s = stable_seed("calib", "fitzpatrick17k", "tiny_cnn", 0, "pooled")
    seed_everything(s)
    loader = data.reseed(s)
    one_group = [(x, y, torch.zeros_like(g)) for x, y, g in Batches(loader, FRONTIER.calib_batches)]
    direct = calibrate(model, one_group, metric="grape", batches=FRONTIER.calib_batches,
                       progress=False)  # fmt: skip
    assert list(direct.importance) == [0] and direct.counts == stored.counts
    for name, t in direct.importance[0].items():
        assert torch.equal(t, stored.importance[0][name]), name


def _t(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% t-interval, computed here from scratch (not through seed_summary)."""
    n = len(values)
    mean = float(np.mean(values))
    half = stats.t.ppf(0.975, n - 1) * float(np.std(values, ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half


def _num(text: str) -> float | None:
    return None if text == "" else float(text)


def test_every_frontier_interval_recomputed_from_the_cell_files(frontier_run) -> None:
    root, _ = frontier_run
    by: dict[tuple[str, str], dict[int, dict]] = {}
    for key, res in _cells(root):
        by.setdefault((key.method, key.budget), {})[key.seed] = res
    with open(root / "frontier.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(FRONTIER_COLUMNS)
    assert len(rows) == 3 + 2 * 5  # fp32, u4, u2 and 5 methods at 2 budgets
    for row in rows:
        budget = "" if row["method"] in ("fp32", "u4", "u2") else _fmt(row["target_bits"])
        seeds = by[(row["method"], budget)]
        worst = np.array([seeds[s]["metrics"]["worst_acc"] for s in sorted(seeds)])
        for got, want in zip(("worst_acc_mean", "worst_acc_low", "worst_acc_high"), _t(worst),
                             strict=True):  # fmt: skip
            assert float(row[got]) == pytest.approx(want, abs=2e-6), (row["method"], got)
        assert row["seeds"] == "2"
        if row["method"] in ("fp32", "u4", "u2", "blind"):
            assert row["d_worst_vs_blind"] == "" and row["d_worst_vs_blind_verdict"] == ""
            continue
        control = by[("blind", budget)]
        d = worst - np.array([control[s]["metrics"]["worst_acc"] for s in sorted(seeds)])
        mean, low, high = _t(d)
        assert float(row["d_worst_vs_blind"]) == pytest.approx(mean, abs=2e-6)
        if math.isnan(low):  # identical seeds: a zero-width interval
            assert row["d_worst_vs_blind_low"] in ("", "NaN", "nan")
        else:
            assert float(row["d_worst_vs_blind_low"]) == pytest.approx(low, abs=2e-6)
            assert float(row["d_worst_vs_blind_high"]) == pytest.approx(high, abs=2e-6)
        img_low, img_high = (
            float(row["d_worst_vs_blind_img_low"]),
            float(row["d_worst_vs_blind_img_high"]),
        )
        assert img_low <= img_high  # every cell stored its predictions: the interval exists
        seed_side = 0 if math.isnan(low) else (1 if low > 0 else -1 if high < 0 else 0)
        image_side = 1 if img_low > 0 else -1 if img_high < 0 else 0
        resolved = seed_side != 0 and seed_side == image_side
        assert row["d_worst_vs_blind_verdict"] == ("resolved" if resolved else "not resolved")
        assert int(row["collapses_vs_blind"]) == int((d < -0.05).sum())


def _fmt(text: str) -> str:
    v = float(text)
    return str(int(v)) if v == int(v) else repr(v)


def test_each_cell_metric_and_bootstrap_interval_recomputed_from_its_predictions(
    frontier_run,
) -> None:
    from fq_fairmetrics import bootstrap_ci

    root, _ = frontier_run
    for key, res in _cells(root):
        y = np.array(res["test"]["labels"])
        p = np.array(res["test"]["predictions"])
        g = np.array(res["test"]["groups"])
        # worst-group accuracy by hand
        accs = [float((p[g == k] == y[g == k]).mean()) for k in np.unique(g)]
        assert res["metrics"]["worst_acc"] == pytest.approx(min(accs), abs=1e-12), key.id
        assert res["metrics"]["avg_acc"] == pytest.approx(float(np.mean(accs)), abs=1e-12)
        ci = bootstrap_ci(y, p, sensitive_features=g, n_resamples=200, seed=0,
                          group_names=list(range(len(res["group_names"]))))  # fmt: skip
        for m in ("worst_acc", "avg_acc", "gap"):
            lo, hi = res["bootstrap"][m]
            assert (lo, hi) == ci.interval(m), (key.id, m)
            assert lo <= res["metrics"][m] + 1e-12 and res["metrics"][m] - 1e-12 <= hi


def test_per_seed_values_and_training_histories_are_kept(frontier_run) -> None:
    root, _ = frontier_run
    seeds = pl.read_csv(root / "frontier_seeds.csv")
    assert seeds.height == 2 * (3 + 2 * 5)
    assert {"seed", "worst_acc", "worst_acc_boot_low", "worst_acc_boot_high"} <= set(seeds.columns)
    for key, res in _cells(root):
        if not key.budget:
            continue
        (epoch,) = res["history"]
        assert {"task_loss", "fair_loss", "worst_group_loss", "group_loss"} <= set(epoch)
        finite = [v for v in epoch["group_loss"] if v is not None and math.isfinite(v)]
        assert epoch["worst_group_loss"] == max(finite)
    fair = [r for k, r in _cells(root) if k.method == "fq-qat"]
    blind = [r for k, r in _cells(root) if k.method == "blind"]
    assert all(r["history"][0]["fair_loss"] > 0 for r in fair + blind)  # logged in both


def test_paired_methods_share_the_training_seed() -> None:
    from fq_bench.grid._cell_run import cell_seed

    a = CellKey(dataset="fitzpatrick17k", model="resnet18", method="blind", seed=1, budget="3")
    b = CellKey(dataset="fitzpatrick17k", model="resnet18", method="fq-qat", seed=1, budget="2.5")
    c = CellKey(dataset="fitzpatrick17k", model="resnet18", method="fq-qat", seed=2, budget="3")
    assert cell_seed(a) == cell_seed(b) != cell_seed(c)


def test_outputs_and_summary(frontier_run) -> None:
    root, _ = frontier_run
    for name in ("frontier.md", "frontier.csv", "frontier_seeds.csv", "frontier_effects.csv",
                 "frontier.png", "group_drop.png"):  # fmt: skip
        assert (root / name).stat().st_size > 0, name
    report = build_report(root, plots=False)
    assert len(report.frontier_summary) == 2  # one line per budget
    for line, budget in zip(report.frontier_summary, ("2.5", "4"), strict=True):
        assert f", {budget} bits: best for the worst group: " in line
        assert "resolved" in line
    effects = pl.read_csv(root / "frontier_effects.csv")
    assert effects.height == 2 * 4  # 4 contrasts per budget
    assert set(effects["effect"]) == {
        "allocation, without L_fair", "allocation, with L_fair",
        "fairness term, group-blind bits", "fairness term, balanced bits",
    }  # fmt: skip


def test_shards_and_resume_across_budgets_give_the_uninterrupted_frontier(
    frontier_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = frontier_run
    out = tmp_path / "sharded"
    monkeypatch.setenv("FQ_CACHE_DIR", str(tmp_path / "cache"))
    # shard 0 of 2, then shard 1 of 2 with one of shard 0's budget cells deleted (resume)
    run_grid(FRONTIER, out, shard=(0, 2))
    first = sorted((out / "cells").glob("*__b*.json"))
    first[0].unlink()
    summary = run_grid(FRONTIER, out, shard=(1, 2))
    assert summary.skipped == []
    summary = run_grid(FRONTIER, out)
    assert [c.id for c in summary.computed] == [first[0].stem]
    build_report(out, plots=False)
    want = pl.read_csv(root / "frontier.csv")
    got = pl.read_csv(out / "frontier.csv")
    assert got.equals(want)


# -- the verdict rule and the paired statistics on constructed data ----------------------------
def test_verdict_rule() -> None:
    """Both intervals (seeds, test images) must exclude 0, on the same side."""
    assert verdict(0.01, 0.2, 0.005, 0.1) == "resolved"
    assert verdict(-0.3, -0.001, -0.2, -0.01) == "resolved"
    assert verdict(-0.01, 0.2, 0.01, 0.2) == "not resolved"  # seeds include 0
    assert verdict(0.01, 0.2, -0.01, 0.2) == "not resolved"  # test images include 0
    assert verdict(0.01, 0.2, -0.2, -0.01) == "not resolved"  # opposite sides
    assert verdict(0.0, 0.2, 0.01, 0.2) == "not resolved"  # touching 0 is not excluding it
    assert verdict(math.nan, math.nan, 0.01, 0.2) == "not resolved"  # one seed: no interval
    assert verdict(0.01, 0.2, math.nan, math.nan) == "not resolved"  # no stored predictions


def _test_set(correct: dict[int, int], n: int = 100) -> dict:
    """A test set of ``n`` images per group (all label 0); group ``g``'s first ``correct[g]``
    images are predicted right, the rest wrong."""
    groups = [g for g in correct for _ in range(n)]
    preds = [0 if i < correct[g] else 1 for g in correct for i in range(n)]
    return {"labels": [0] * len(groups), "groups": groups, "predictions": preds}


def _hand(method: str, seed: int, worst: float, budget: str = "3") -> tuple[CellKey, dict]:
    """A cell whose worst group (0 of 2, 100 test images each) has accuracy ``worst``."""
    key = CellKey(dataset="fitzpatrick17k", model="resnet18", method=method, seed=seed,
                  budget=budget)  # fmt: skip
    res = {
        "metrics": {"avg_acc": worst + 0.1, "worst_acc": worst, "gap": 0.2, "eopp0": 0.0,
                    "eodd": 0.0},
        "cost": {"avg_bits": float(budget), "gbops": 1.0, "paper_gops": 0.1, "size_bytes": 10.0},
        "labels": {"dataset": "FitzP.", "model": "ResNet18", "method": method},
        "test": _test_set({0: round(100 * worst), 1: round(100 * worst) + 20}),
    }  # fmt: skip
    return key, res


def test_the_same_one_image_on_every_seed_is_not_resolved() -> None:
    """Five seeds, each wrong on the same one test image that blind gets right: the seed
    interval has zero width and excludes 0, but a new test set of the same group sizes lacks
    that image with probability (1 - 1/100)^100 = 0.37, so the image interval reaches 0."""
    raw = []
    for s, base in enumerate((0.70, 0.75, 0.72, 0.78, 0.74)):
        blind = _hand("blind", s, base)
        key, res = _hand("fq-qat", s, base - 0.01)
        res["test"] = {**blind[1]["test"], "predictions": [1, *blind[1]["test"]["predictions"][1:]]}
        raw += [blind, (key, res)]
    row = frontier_frame(cells_frame(raw)).filter(pl.col("method") == "fq-qat").row(0, named=True)
    assert row["d_worst_vs_blind"] == pytest.approx(-0.01)
    low, high = row["d_worst_vs_blind_low"], row["d_worst_vs_blind_high"]
    assert math.isnan(low) or high < 0  # seeds alone: zero width (NaN when numpy says so)
    assert row["d_worst_vs_blind_img_low"] == pytest.approx(-0.01 * 2, abs=0.011)
    assert row["d_worst_vs_blind_img_high"] == 0.0
    assert row["d_worst_vs_blind_verdict"] == "not resolved"


def test_image_interval_matches_the_paired_normal_approximation() -> None:
    """One group of n = 400 test images; A alone is right on 30, B alone on 10: the paired
    difference is d = 20/400 = 0.05 with bootstrap variance (p_a + p_b - d^2) / n, p_a = 30/400,
    p_b = 10/400 (hand-worked); the percentile interval is d +- 1.96 sd to Monte Carlo error."""
    n, both = 400, 300

    def cell(method: str, right: range) -> tuple[CellKey, dict]:
        preds = [0 if i in right else 1 for i in range(n)]
        key = CellKey(dataset="d", model="m", method=method, seed=0, budget="3")
        res = {"metrics": {"avg_acc": 0.0, "worst_acc": sum(p == 0 for p in preds) / n, "gap": 0.0,
                           "eopp0": 0.0, "eodd": 0.0},
               "cost": {"avg_bits": 3.0, "gbops": 1.0, "paper_gops": 0.1, "size_bytes": 1.0},
               "labels": {"dataset": "d", "model": "m", "method": method},
               "test": {"labels": [0] * n, "groups": [0] * n, "predictions": preds}}  # fmt: skip
        return key, res

    a = cell("fq-qat", range(both + 30))  # right on the shared 300 and 30 more
    b = cell("blind", [*range(both), *range(both + 30, both + 40)])  # the 300 and 10 others
    frame = cells_frame([a, b])
    pw = paired_worst(frame.filter(pl.col("method") == "fq-qat"),
                      frame.filter(pl.col("method") == "blind"), resamples=20000)  # fmt: skip
    d, pa, pb = 20 / n, 30 / n, 10 / n
    sd = math.sqrt((pa + pb - d * d) / n)
    assert pw.mean == pytest.approx(d)
    assert pw.image_low == pytest.approx(d - 1.959964 * sd, abs=0.004)
    assert pw.image_high == pytest.approx(d + 1.959964 * sd, abs=0.004)
    assert math.isnan(pw.low) and pw.verdict == "not resolved"  # one seed: no seed interval


def test_unit_weights_give_each_cells_own_worst_acc(frontier_run) -> None:
    """The resampling engine on the original sample (every image once) is the stored metric."""
    root, _ = frontier_run
    for _, res in _cells(root)[:6]:
        groups = np.asarray(res["test"]["groups"])
        correct = np.asarray(res["test"]["predictions"]) == np.asarray(res["test"]["labels"])
        ones = {int(g): np.ones((1, int((groups == g).sum()))) for g in np.unique(groups)}
        got = resampled_worst(correct, groups, ones)
        assert got[0] == pytest.approx(res["metrics"]["worst_acc"], abs=1e-12)


def test_paired_difference_on_constructed_cells() -> None:
    """Three seeds; FQ-QAT beats blind by exactly 2, 3 and 4 points: mean 3, sample std 1, so the
    95% interval is 3 +- t(0.975, 2) * 1 / sqrt(3) = 3 +- 2.4841 points: [0.516, 5.484],
    resolved. Lin et al. is 1 point above on seeds 0, 1 and 1 below on seed 2: mean 1/3, std
    1.1547, interval 0.333 +- 2.8685, not resolved."""
    raw = []
    for s, base in enumerate((0.50, 0.60, 0.55)):
        raw.append(_hand("blind", s, base))
        raw.append(_hand("fq-qat", s, base + (0.02, 0.03, 0.04)[s]))
        raw.append(_hand("lin", s, base + (0.01, 0.01, -0.01)[s]))
    fr = frontier_frame(cells_frame(raw))
    qat = fr.filter(pl.col("method") == "fq-qat").row(0, named=True)
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) = 4.3027
    assert qat["d_worst_vs_blind"] == pytest.approx(0.03)
    assert qat["d_worst_vs_blind_low"] == pytest.approx(0.03 - 0.01 * half)
    assert qat["d_worst_vs_blind_high"] == pytest.approx(0.03 + 0.01 * half)
    assert qat["d_worst_vs_blind_verdict"] == "resolved"
    lin = fr.filter(pl.col("method") == "lin").row(0, named=True)
    assert lin["d_worst_vs_blind"] == pytest.approx(0.01 / 3)
    sd = float(np.std([0.01, 0.01, -0.01], ddof=1))
    assert lin["d_worst_vs_blind_high"] == pytest.approx(0.01 / 3 + sd * half)
    assert lin["d_worst_vs_blind_verdict"] == "not resolved"
    blind = fr.filter(pl.col("method") == "blind").row(0, named=True)
    assert blind["d_worst_vs_blind"] is None
    # pairing is by seed: shuffling the order the cells come in changes nothing
    assert frontier_frame(cells_frame(raw[::-1])).equals(fr)


def test_collapse_count_and_effects_on_constructed_cells() -> None:
    raw = []
    for s in range(3):
        raw.append(_hand("blind", s, 0.6))
        raw.append(_hand("blind-fair", s, 0.6 - (0.10 if s == 1 else 0.0)))  # seed 1 collapses
        raw.append(_hand("fq-alloc", s, 0.62))
        raw.append(_hand("fq-qat", s, 0.61))
    fr = frontier_frame(cells_frame(raw))
    assert fr.filter(pl.col("method") == "blind-fair")["collapses_vs_blind"].item() == 1
    assert fr.filter(pl.col("method") == "fq-alloc")["collapses_vs_blind"].item() == 0
    eff = effects_frame(cells_frame(raw))
    got = {r["effect"]: r["d_worst"] for r in eff.iter_rows(named=True)}
    assert got == pytest.approx({
        "allocation, without L_fair": 0.02,          # fq-alloc - blind
        "allocation, with L_fair": 0.01 + 0.1 / 3,   # fq-qat - blind-fair
        "fairness term, group-blind bits": -0.1 / 3,  # blind-fair - blind
        "fairness term, balanced bits": -0.01,       # fq-qat - fq-alloc
    })  # fmt: skip


def test_minimal_detectable_effect_and_seeds_needed_on_constructed_cells() -> None:
    """Issue 24 section 3: beside each unresolved verdict, the smallest effect the run would have
    seen, recomputed by hand from the per-seed spread and the image draws; one seed explains
    itself instead of printing NaN; the summary sizes the seeds for the largest effect."""
    from fq_bench.grid._frontier import effects_markdown, frontier_markdown, seeds_needed_sentences

    raw = []
    for s, base in enumerate((0.50, 0.60, 0.55)):
        raw.append(_hand("blind", s, base))
        raw.append(_hand("lin", s, base + (0.01, 0.01, -0.01)[s]))
    fr = frontier_frame(cells_frame(raw))
    lin = fr.filter(pl.col("method") == "lin").row(0, named=True)
    sd = float(np.std([0.01, 0.01, -0.01], ddof=1))
    seed_part = (stats.t.ppf(0.975, 2) + stats.t.ppf(0.8, 2)) * sd / math.sqrt(3)
    assert lin["d_worst_vs_blind_mde"] >= seed_part - 1e-12  # the image part may be larger
    text = frontier_markdown(fr)
    assert f"not resolved; effects above {100 * lin['d_worst_vs_blind_mde']:.1f} points" in text

    same_raw = []
    for s, base in enumerate((0.50, 0.60, 0.55)):  # identical predictions on every seed
        same_raw += [_hand("blind", s, base), _hand("lin", s, base)]
    same = frontier_frame(cells_frame(same_raw))
    assert "no spread to size an effect" in frontier_markdown(same)
    one = frontier_frame(cells_frame(raw[:2]))  # seed 0 only
    row = one.filter(pl.col("method") == "lin").row(0, named=True)
    assert math.isnan(row["d_worst_vs_blind_mde"])
    assert "one seed: no seed spread measured" in frontier_markdown(one)
    assert "nan" not in frontier_markdown(one).lower()

    raw = []
    for s in range(3):
        raw.append(_hand("blind", s, 0.6))
        raw.append(_hand("blind-fair", s, 0.6 + (0.01, 0.02, 0.03)[s]))
        raw.append(_hand("fq-alloc", s, 0.6))
        raw.append(_hand("fq-qat", s, 0.6 + (0.01, 0.02, 0.03)[s]))
    eff = effects_frame(cells_frame(raw))
    fair = eff.filter(pl.col("effect") == "fairness term, group-blind bits").row(0, named=True)
    assert fair["d_worst_mde"] > 0 and "effects above" in effects_markdown(eff)
    sentence = seeds_needed_sentences(eff)[("fitzpatrick17k", "resnet18", 3.0)]
    assert "fairness term, group-blind bits (+2.0 points)" in sentence
    assert (f"would need {fair['seeds_needed']} seeds" in sentence) or (
        fair["seeds_needed"] is None and "more test images are needed" in sentence
    )


def test_budget_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="budgets"):
        DEFAULT.replace(budgets=(1.5,))
    with pytest.raises(ValueError, match="frontier_methods"):
        DEFAULT.replace(frontier_methods=("u4",))
    with pytest.raises(ValueError, match="budgets/frontier_methods"):
        DEFAULT.replace(budgets=())
    with pytest.raises(ValueError, match="palette"):
        DEFAULT.replace(palette_props=(0.5, 0.5, 0.5))


def test_budget_cell_ids_are_exact_and_round_trip() -> None:
    cells = grid_cells(DEFAULT.replace(budgets=(2.25, 3.0, 3.2345678)))
    ids = {c.budget for c in cells if c.budget}
    assert ids == {"2.25", "3", "3.2345678"}
    for c in cells:
        assert CellKey.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_cli_budgets_take_commas_or_spaces_and_frontier_can_be_switched_off() -> None:
    from fq_bench.grid._cli import build_parser, config_from_args

    parser = build_parser()
    for argv in (["--budgets", "2.5,3,3.5,4"], ["--budgets", "2.5", "3", "3.5,4"]):
        config = config_from_args(parser.parse_args(argv), parser)
        assert config.budgets == (2.5, 3.0, 3.5, 4.0)
    off = config_from_args(parser.parse_args(["--budgets", "--frontier-methods"]), parser)
    assert off.budgets == () and off.frontier_methods == ()
    with pytest.raises(SystemExit):
        config_from_args(parser.parse_args(["--budgets", "2.5,x"]), parser)
    with pytest.raises(SystemExit):  # 9 bits is past budget_bits' 8
        config_from_args(parser.parse_args(["--budgets", "9"]), parser)


def test_sweep_values_are_named_exactly_not_rounded() -> None:
    from fq_bench.grid._cells import variant_name

    # ":g" wrote both as "0.123457": two different values would have shared one cell
    a, b = variant_name("lambda_fair", 0.1234567), variant_name("lambda_fair", 0.1234568)
    assert a == "lambda_fair=0.1234567" != b
    key = CellKey(dataset="fitzpatrick17k", model="m", method="fq-baq", seed=0, variant=a)
    assert key.override == ("lambda_fair", 0.1234567)
    assert variant_name("lr_bits", 3e-3) == "lr_bits=0.003"


def test_the_default_gives_every_group_at_least_150_test_images() -> None:
    from fq_bench.grid._data import load_data

    data = load_data(DEFAULT, "fitzpatrick17k")
    groups = np.array([int(g) for _, _, gb in data.loaders.test for g in gb])
    counts = np.bincount(groups, minlength=len(data.loaders.group_names))
    assert len(counts) == 6 and counts.min() >= 150, counts
    assert data.n_train == 960  # the training set is the one the default always had


@pytest.mark.parametrize("bits", [None, 4])
def test_cell_size_is_the_size_of_the_packed_export(tmp_path: Path, bits: int | None) -> None:
    """The table's size_bytes is what ``export_packed`` writes (BatchNorm buffers and the header
    included), for a quantized cell and for FP32 (every weight at 32 bits)."""
    from fq_bench.grid._checkpoints import fresh_model
    from fq_bench.grid._data import load_data
    from fq_bench.grid._evaluation import evaluate
    from fq_bench.grid._methods import MethodOutput
    from fq_quant import BitAssignment, Granularity, ScopeLayout, export_packed, quantize_model

    config = FRONTIER.replace(bootstrap_resamples=0)
    data = load_data(config, "fitzpatrick17k")
    model = fresh_model(config, "tiny_cnn", data, pretrained=False)
    layout = ScopeLayout.from_model(model, Granularity.CHANNEL)
    assignment = None if bits is None else BitAssignment.uniform(layout, bits)
    if assignment is not None:
        model = quantize_model(model, assignment)
    res = evaluate(MethodOutput(model=model, assignment=assignment), data, config,
                   torch.device("cpu"))  # fmt: skip
    path = tmp_path / "m.safetensors"
    export_packed(model, path, assignment=assignment or BitAssignment.uniform(layout, 32))
    assert res["cost"]["size_bytes"] == path.stat().st_size
    assert any("running_mean" in k for k in model.state_dict())  # the buffers a params count missed


def test_export_onnx_writes_each_quantized_cell_once(tmp_path: Path, monkeypatch) -> None:
    """``--export onnx``: one integer-weight ONNX file per quantized cell computed (none for FP32),
    with every layer stored as integers; a re-run keeps the files (ONNX Runtime equality is
    tested in tests/fq_quant/test_onnx.py)."""
    from fq_bench.grid import main

    monkeypatch.setenv("FQ_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    args = ["--models", "tiny_cnn", "--methods", "fp32", "u4", "--seeds", "0", "--image-size",
            "16", "--n-images", "120", "--batch-size", "32", "--fp32-epochs", "1", "--epochs", "1",
            "--calib-batches", "2", "--no-progress", "--budgets", "3", "--frontier-methods",
            "blind", "--min-test-per-group", "0", "--bootstrap-resamples", "0", "--threads", "1",
            "--export", "onnx", "--no-plots", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    files = sorted(p.name for p in (out / "onnx").glob("*.onnx"))
    assert files == [
        "fitzpatrick17k__tiny_cnn__blind__s0__b3.onnx",
        "fitzpatrick17k__tiny_cnn__u4__s0.onnx",
    ]
    import onnx

    model = onnx.load(out / "onnx" / files[1])
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 3  # two convs and the head, all stored as integers
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "onnx").glob("*.onnx")}
    for cell in (out / "cells").glob("*__u4__*.json"):
        cell.unlink()  # recompute one cell: its existing file is kept, not rewritten
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "onnx").glob("*.onnx")} == mtimes


def test_export_onnx_int8_audits_each_cell_per_group_beside_it(tmp_path: Path, monkeypatch) -> None:
    """``--export onnx-int8``: beside each quantized cell, the int8-activation file and its
    audit against FP32 and against the weight-only file, one row per group, whose accuracies
    are those of the FP32 cell's own evaluation; the report gathers sizes in exports.md."""
    import json

    from fq_bench.grid import main

    monkeypatch.setenv("FQ_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    args = ["--models", "tiny_cnn", "--methods", "fp32", "u4", "--seeds", "0", "--image-size",
            "16", "--n-images", "120", "--batch-size", "32", "--fp32-epochs", "1", "--epochs", "1",
            "--calib-batches", "2", "--no-progress", "--min-test-per-group", "0",
            "--bootstrap-resamples", "0", "--threads", "1",
            "--export", "onnx-int8", "--no-plots", "--out", str(out)]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # too few test images per group for a 1-point margin
        assert main(args) == 0
    cell = "fitzpatrick17k__tiny_cnn__u4__s0"
    for suffix in (".onnx", ".int8.onnx", ".packed.safetensors", ".audit.json", ".audit.md"):
        assert (out / "onnx" / f"{cell}{suffix}").is_file(), suffix
    audit = json.loads((out / "onnx" / f"{cell}.audit.json").read_text())
    fp32 = json.loads(next((out / "cells").glob("*__fp32__*.json")).read_text())
    fp32 = fp32.get("result", fp32)
    rows = {k: audit["comparisons"][k]["rows"] for k in ("int8", "int8_vs_onnx")}
    groups = [r for r in rows["int8"] if r["kind"] == "group"]
    assert len(groups) >= 2
    assert sum(r["n"] for r in groups) == fp32["data"]["n_test"]
    # the FP32 side of the audit is the FP32 cell's own per-group accuracy
    acc = {str(g): 100 * a for g, a in zip(fp32["group_names"], fp32["group_acc"], strict=True)}
    for r in groups:
        assert r["reference_acc"] == pytest.approx(acc[r["group"]], abs=1e-6)
    # the weight-only side against the int8 file: the same images, the int8 file's accuracy
    int8_acc = {r["group"]: r["candidate_acc"] for r in groups}
    for r in rows["int8_vs_onnx"]:
        if r["kind"] == "group":
            assert r["candidate_acc"] == pytest.approx(int8_acc[r["group"]])
    md = (out / "exports.md").read_text()
    assert cell in md and "int8" in md
    sizes = json.loads((out / "onnx" / f"{cell}.sizes.json").read_text())
    assert sizes["packed_bytes"] == (out / "onnx" / f"{cell}.packed.safetensors").stat().st_size
    assert sizes["int8_bytes"] == (out / "onnx" / f"{cell}.int8.onnx").stat().st_size
    assert sizes["avg_bits"] == pytest.approx(4.0)
