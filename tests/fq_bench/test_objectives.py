"""The fairness objectives on the grid (issue 19): ``--fair-loss``, a sweep of names next to the
numeric sweeps, sweep variants of frontier cells, and ``objectives.md``/``.csv``.

The end-to-end run is the frontier's tiny one (``tiny_cnn``, 16 px, 120 semi-synthetic images,
one epoch, two seeds) at one budget with ``blind`` and ``blind-fair`` and a sweep over every
objective; every number of ``objectives.csv`` is recomputed here from the cell files with numpy
and scipy's t quantile, independently of the report's code.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from fq_baq import FAIR_LOSSES
from fq_bench.grid import DEFAULT, CellKey, CellStore, build_parser, grid_cells, main
from fq_bench.grid._cells import canonical_key, variant_name
from fq_bench.grid._cli import config_from_args
from scipy import stats

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (see conftest)

TINY = [
    "--models", "tiny_cnn", "--seeds", "0", "1", "--image-size", "16", "--n-images", "120",
    "--batch-size", "16", "--fp32-epochs", "1", "--epochs", "1", "--calib-batches", "2",
    "--min-test-per-group", "0", "--bootstrap-resamples", "0", "--no-progress", "--cpu",
    "--no-plots",
]  # fmt: skip
SWEEP = ["--methods", "--budgets", "3", "--frontier-methods", "blind", "blind-fair",
         "--sweep", "fair_loss=" + ",".join(FAIR_LOSSES)]  # fmt: skip


def _config(argv: list[str]):
    parser = build_parser()
    return config_from_args(parser.parse_args(argv), parser)


def test_name_sweep_cells_next_to_numeric_sweeps() -> None:
    config = _config([*TINY, *SWEEP, "--sweep", "lambda_fair=0.25"])
    assert config.methods == () and config.sweeps[0] == ("fair_loss", FAIR_LOSSES)
    ids = [c.id for c in grid_cells(config) if c.seed == 0]
    base = "fitzpatrick17k__tiny_cnn"
    # plain frontier cells first, then each variant of the methods the field changes (the
    # control, blind, has no L_fair: no variant); lambda_fair changes fq-qat/fq-baq only
    assert ids == [
        f"{base}__blind__s0__b3", f"{base}__blind-fair__s0__b3",
        *(f"{base}__blind-fair__s0__b3__fair_loss={n}" for n in FAIR_LOSSES),
    ]  # fmt: skip
    # a numeric sweep keeps its exact cell ids
    numeric = DEFAULT.replace(methods=("fq-baq",), sweeps=(("lambda_fair", (0.25, 1e-7)),))
    assert [c.variant for c in grid_cells(numeric) if c.seed == 0 and not c.budget] == [
        "lambda_fair=0.25",
        "lambda_fair=1e-07",
    ]
    key = CellKey(dataset="d", model="m", method="fq-qat", seed=0, budget="3", variant="")
    dro = CellKey(**{**key.to_dict(), "variant": variant_name("fair_loss", "dro")})
    gap = CellKey(**{**key.to_dict(), "variant": variant_name("fair_loss", "gap")})
    assert dro.override == ("fair_loss", "dro")
    assert canonical_key(gap, config) == key and canonical_key(dro, config) == dro
    ema = CellKey(**{**key.to_dict(), "variant": variant_name("fair_ema", 0.9)})
    assert ema.override == ("fair_ema", 0.9)


def test_bad_objectives_fail_early_with_the_allowed_values() -> None:
    with pytest.raises(SystemExit):
        _config([*TINY, "--fair-loss", "max"])
    with pytest.raises(ValueError, match="sweeps\\[fair_loss\\].*fair_loss must be one of"):
        DEFAULT.replace(methods=("fq-qat",), sweeps=(("fair_loss", ("gap", "maxx")),))
    with pytest.raises(ValueError, match="fair_ema"):
        DEFAULT.replace(fair_ema=1.5)
    # methods that do not train with L_fair would recompute the same cell per objective
    with pytest.raises(ValueError, match="do not use every swept field"):
        DEFAULT.replace(methods=("fq-alloc",), sweeps=(("fair_loss", ("gap", "dro")),))
    # Table 1 may be left out only when a frontier is run
    with pytest.raises(ValueError, match="methods"):
        DEFAULT.replace(methods=(), budgets=(), frontier_methods=())


def test_objective_fields_change_the_fingerprint_only_off_their_defaults() -> None:
    assert DEFAULT.replace(fair_loss="gap", fair_ema=0.0).fingerprint() == DEFAULT.fingerprint()
    for change in ({"fair_loss": "dro"}, {"dro_eta": 0.5}, {"fair_tau": 0.3}, {"fair_ema": 0.5}):
        assert DEFAULT.replace(**change).fingerprint() != DEFAULT.fingerprint(), change


def _t(values: np.ndarray) -> tuple[float, float, float]:
    mean = float(values.mean())
    half = stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size)
    return mean, mean - half, mean + half


def test_sweep_end_to_end_and_objectives_recomputed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main([*TINY, *SWEEP, "--out", str(out)]) == 0
    cells = dict(CellStore(out).all())
    assert len(cells) == 2 * (2 + len(FAIR_LOSSES))
    by = {(k.method, k.variant, k.seed): r for k, r in cells.items()}
    for seed in (0, 1):
        # the sweep's gap point is the plain blind-fair cell, computed once
        assert by["blind-fair", "fair_loss=gap", seed] == by["blind-fair", "", seed]
        # and each objective trained with its own L_fair: the logged values differ
        logged = {n: by["blind-fair", f"fair_loss={n}", seed]["history"][0]["fair_loss"]
                  for n in FAIR_LOSSES}  # fmt: skip
        assert len({round(v, 9) for v in logged.values()}) == len(FAIR_LOSSES), logged
        assert logged["worst"] > logged["gap"] > 0  # max_g L_g > max_g L_g - min_g L_g
    with open(out / "objectives.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["objective"] for r in rows] == list(FAIR_LOSSES)
    for r in rows:
        assert (r["method"], float(r["target_bits"]), r["seeds"]) == ("blind-fair", 3.0, "2")
        var = f"fair_loss={r['objective']}"
        worst = np.array([by["blind-fair", var, s]["metrics"]["worst_acc"] for s in (0, 1)])
        avg = np.array([by["blind-fair", var, s]["metrics"]["avg_acc"] for s in (0, 1)])
        c_worst = np.array([by["blind", "", s]["metrics"]["worst_acc"] for s in (0, 1)])
        c_avg = np.array([by["blind", "", s]["metrics"]["avg_acc"] for s in (0, 1)])
        assert float(r["worst_acc_mean"]) == pytest.approx(worst.mean(), abs=1e-6)
        assert float(r["avg_acc_mean"]) == pytest.approx(avg.mean(), abs=1e-6)
        d = worst - c_worst
        for name, diff in (("d_worst_vs_blind", d), ("d_avg_vs_blind", avg - c_avg)):
            mean, low, high = _t(diff)
            assert float(r[name]) == pytest.approx(mean, abs=1e-6)
            # (equal differences: a zero-width interval at the mean)
            low, high = (low, high) if np.ptp(diff) > 0 else (mean, mean)
            assert float(r[f"{name}_low"]) == pytest.approx(low, abs=1e-6)
            assert float(r[f"{name}_high"]) == pytest.approx(high, abs=1e-6)
        assert int(r["collapses_vs_blind"]) == int((d < -0.05).sum())
    text = (out / "objectives.md").read_text()
    assert all(f"| {n} |" in text for n in FAIR_LOSSES)
    # the frontier's own tables keep to the plain cells: one blind-fair row, two seeds
    with open(out / "frontier.csv", newline="") as f:
        frontier = [r for r in csv.DictReader(f) if r["method"] == "blind-fair"]
    assert len(frontier) == 1 and frontier[0]["seeds"] == "2"


def test_group_loss_plot_shows_the_seed_with_the_lowest_worst_group() -> None:
    """The loss-curve panels show one seed: the one where some objective left the worst group
    lowest (a collapse, if any), at the smallest budget, of the first L_fair method."""
    from fq_bench.grid._objectives import loss_plot_cells

    def cell(method: str, seed: int, variant: str, budget: str, worst: float):
        key = CellKey(dataset="d", model="m", method=method, seed=seed, variant=variant,
                      budget=budget)  # fmt: skip
        return key, {"metrics": {"worst_acc": worst}, "history": [{"group_loss": [0.5, 0.4]}]}

    raw = [
        cell("blind-fair", 0, "fair_loss=dro", "3", 0.80),
        cell("blind-fair", 0, "fair_loss=lse", "3", 0.79),
        cell("blind-fair", 1, "fair_loss=dro", "3", 0.81),
        cell("blind-fair", 1, "fair_loss=lse", "3", 0.10),  # seed 1 collapses under lse
        cell("blind-fair", 2, "fair_loss=lse", "4", 0.05),  # a larger budget: not drawn
        cell("fq-qat", 0, "fair_loss=lse", "3", 0.01),  # a later method: not drawn
        cell("blind", 1, "", "3", 0.80),  # no objective variant
    ]
    budget, seed, cells = loss_plot_cells(raw)
    assert (budget, seed) == ("3", 1)
    assert [k.variant for k, _ in cells] == ["fair_loss=lse", "fair_loss=dro"]  # FAIR_LOSSES order
    assert loss_plot_cells(raw[-1:]) == ("", 0, [])
