"""The rehearsal of a grid, cut down to ``tiny_cnn`` at 16 px: every cell measured, the GPU-hour
projection against a hand computation, FLOPs against hand-counted MACs and fq_fairmetrics, and a
cell that cannot run failing loudly under its own name."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fq_bench.grid import PAPER, TinyCNN
from fq_bench.grid import _methods as grid_methods
from fq_bench.grid import _models as grid_models
from fq_bench.grid._cells import grid_cells
from fq_bench.grid._measure import StepClock
from fq_bench.grid._names import METHOD_GROUPINGS, TRAINING_METHODS
from fq_bench.grid._projection import (
    Throughput,
    metadata_rows,
    model_flops,
    project_grid,
)
from fq_bench.grid._rehearsal import (
    ALLOCATION_ONLY,
    RehearsalError,
    rehearsal_config,
    rehearse,
    training_plan,
)
from torch import nn

pytestmark = pytest.mark.usefixtures("one_thread")

#: A cut-down paper grid: both datasets, Table 1 rows of each kind, two frontier methods at two
#: budgets (blind trains at 3 bits, FQ-QAT at 4; each checked at its other budget through its
#: allocation and the evaluation forward).
TINY = PAPER.replace(
    models=("tiny_cnn",),
    image_size=16,
    pretrained=False,
    methods=("fp32", "u4", "guo", "fq-baq"),
    frontier_methods=("blind", "fq-qat"),
    budgets=(3.0, 4.0),
)
ROWS = {"fitzpatrick17k": 16577, "isic2019": 25331}


# ------------------------------------------------------------------------------------ projection
def test_projection_matches_a_hand_computation() -> None:
    grid = TINY.replace(
        datasets=("fitzpatrick17k",),
        methods=("fp32", "u4", "fq-qat"),
        frontier_methods=("blind", "guo"),
        budgets=(3.0,),
        seeds=(0, 1),
        batch_size=10,
        fp32_epochs=3,
        epochs=2,
        calib_batches=4,
        test_fraction=0.2,
    )
    gpu = Throughput(name="test", peak_tflops=1.0, utilisation=0.5)
    p = project_grid(
        grid,
        flops_per_image={"tiny_cnn": 1000.0},
        dataset_rows={"fitzpatrick17k": 105},
        throughput=gpu,
        fp32_epochs={"tiny_cnn": 3},
    )
    # 105 rows: 21 test, 84 train = 8 full batches of 10 (the last 4 images dropped)
    by = {s.stage: s for s in p.stages}
    # FP32: 2 seeds x 3 epochs x 80 images x 3 x 1000 FLOPs
    assert by["fp32"].steps == 2 * 3 * 8 and by["fp32"].flops == 1_440_000
    # calibration: 2 seeds x 3 groupings (type: fq-qat; pooled: blind; binary: guo) x 4 x 10
    assert by["calibration"].runs == 6 and by["calibration"].flops == 6 * 40 * 3000
    # fine-tunes: per seed fq-qat, blind@3, guo@3 = 6 runs x 2 epochs x 80 images x 3000
    assert by["fine-tune"].runs == 6 and by["fine-tune"].flops == 2_880_000
    # evaluation: 5 cells per seed x 2 seeds x 21 images x 1000
    assert by["evaluation"].runs == 10 and by["evaluation"].flops == 210_000
    total = 1_440_000 + 720_000 + 2_880_000 + 210_000
    assert math.isclose(p.gpu_hours, total / 0.5e12 / 3600, rel_tol=1e-12)
    assert "50% assumed utilisation" in p.markdown()


def test_projection_refuses_missing_inputs_and_bad_gpus() -> None:
    with pytest.raises(ValueError, match="tiny_cnn"):
        project_grid(TINY, flops_per_image={}, dataset_rows=ROWS, throughput=_gpu())
    with pytest.raises(ValueError, match="utilisation"):
        Throughput(name="x", peak_tflops=100.0, utilisation=1.5)
    with pytest.raises(ValueError, match="bundled metadata"):
        metadata_rows("mine")


def _gpu() -> Throughput:
    return Throughput(name="test", peak_tflops=1.0, utilisation=0.5)


def test_metadata_rows_are_the_real_dataset_sizes() -> None:
    assert metadata_rows("fitzpatrick17k") == 16577
    assert metadata_rows("isic2019") == 25331


def test_model_flops_are_twice_the_hand_counted_macs() -> None:
    # TinyCNN at 16 px, 5 classes: conv 3->8 3x3 at 16x16, conv 8->16 3x3 stride 2 -> 8x8, fc 16->5
    macs = 16 * 16 * 3 * 8 * 9 + 8 * 8 * 8 * 16 * 9 + 16 * 5
    assert model_flops("tiny_cnn", num_classes=5, image_size=16) == 2 * macs
    assert isinstance(TinyCNN(5), nn.Module)


def test_model_flops_agree_with_fq_fairmetrics_macs_on_a_resnet() -> None:
    from fq_bench.grid import build_model
    from fq_fairmetrics import cost_report
    from fq_fairmetrics.torch import layer_costs

    model = build_model("resnet18", num_classes=3, image_size=32)
    macs = cost_report(layer_costs(model, torch.zeros(1, 3, 32, 32))).macs
    assert model_flops("resnet18", num_classes=3, image_size=32) == 2 * macs


# ------------------------------------------------------------------------------------ measuring
def test_step_clock_times_each_optimizer_step_and_eval_forward() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with StepClock() as clock:
        for _ in range(3):
            model(torch.randn(5, 4)).sum().backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            model(torch.randn(6, 4))
        # a quantized weight computed outside the forward (a parametrization), a lone layer
        from torch.nn.utils import parametrize

        parametrize.register_parametrization(model[0], "weight", nn.Identity())
        _ = model[0].weight
        model[2](torch.randn(3, 8))
    assert len(clock.steps) == 3 and all(s > 0 for s in clock.steps)
    assert len(clock.eval_per_image) == 1 and clock.eval_median > 0
    # hooks removed: nothing more is recorded
    model.train()
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    assert len(clock.steps) == 3


_PEAK_SCRIPT = """
import torch
from fq_bench.grid._measure import PeakMemory
with PeakMemory() as mem:
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB
    del block
print(mem.start_bytes, mem.peak_bytes)
"""


def test_peak_memory_sees_an_allocation_inside_the_block() -> None:
    # a fresh process: in a long test session the allocator may serve the block from memory an
    # earlier test left resident, which is right for the gauge but not what this test checks
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True, check=True
    ).stdout.split()
    start, peak = float(out[-2]), float(out[-1])
    assert math.isfinite(peak) and peak - start >= 60 * 2**20


# ------------------------------------------------------------------------------------ rehearsal
def test_rehearsal_config_cuts_the_grid_but_keeps_its_shapes() -> None:
    c = rehearsal_config(PAPER, batch_size=2)
    assert (c.image_size, c.models, c.datasets, c.budgets) == (
        224,
        PAPER.models,
        PAPER.datasets,
        PAPER.budgets,
    )
    assert (c.seeds, c.fp32_epochs, c.epochs, c.calib_batches, c.pretrained) == (
        (0,),
        1,
        1,
        1,
        False,
    )
    assert len(grid_cells(c)) == 2 * 4 * (7 + 7 * 4)
    with pytest.raises(ValueError, match="batches"):
        rehearsal_config(PAPER, batch_size=2, batches=0)


@pytest.fixture(scope="module")
def tiny_rehearsal(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("rehearsal")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FQ_CACHE_DIR", str(tmp_path_factory.mktemp("cache_rehearsal")))
        return rehearse(TINY, out, batch_size=4, dataset_rows=ROWS, progress=False), out


def test_rehearsal_measures_every_cell(tiny_rehearsal) -> None:
    result, out = tiny_rehearsal
    cells = {c.id: c for c in grid_cells(result.config)}
    assert len(cells) == 2 * (4 + 2 * 2)
    measured = {r.name: r for r in result.records}
    assert set(cells) <= set(measured)
    trained = {
        "blind": "3",
        "fq-qat": "4",
    }  # the j-th frontier method at the j-th budget
    for cid, key in cells.items():
        r = measured[cid]
        assert not r.error
        assert math.isfinite(r.peak_bytes) and r.peak_bytes > 0, cid
        # every cell, trained or not, ran its evaluation forward
        assert math.isfinite(r.seconds) and math.isfinite(r.eval_s_per_image), cid
        if key.budget and key.budget != trained[key.method]:
            assert r.stage == ALLOCATION_ONLY and r.steps == 0, cid
        elif key.method in TRAINING_METHODS:  # one epoch of one batch
            assert r.steps == 1 and math.isfinite(r.step_s) and r.step_s > 0, cid
        else:
            assert r.steps == 0
    # FP32 trained one step per dataset, and each grouping the methods need was calibrated once
    for ds in TINY.datasets:
        assert measured[f"{ds}__tiny_cnn: fp32"].steps == 1
        wanted = {METHOD_GROUPINGS[m] for m in ("guo", "fq-baq", "blind", "fq-qat")}
        got = {r.stage for r in result.records if r.dataset == ds and "calibration" in r.stage}
        assert got == {f"calibration ({g})" for g in wanted}
    with open(out / "rehearsal_cells.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["name"] for r in rows} == set(measured)
    text = (out / "rehearsal.md").read_text()
    assert "tiny_cnn" in text and "GPU-hours" in text and "cannot run" not in text
    # 2 datasets x (4 Table 1 + 2 trained frontier) end to end, 2 x 2 allocation-only
    assert "What ran: 12 cells end to end" in text and "4 frontier cells" in text
    assert "8 cells ran a training step" in text  # per dataset guo, fq-baq, blind@3, fq-qat@4


def test_the_paper_plan_trains_every_method_and_checks_every_budget() -> None:
    cells = grid_cells(rehearsal_config(PAPER, batch_size=2))
    plan = training_plan(cells)
    assert set(plan) == {c.id for c in cells}  # every cell of every budget is checked
    frontier = [c for c in cells if c.budget]
    assert all(plan[c.id] for c in cells if not c.budget)  # Table 1: every cell trains
    for d in PAPER.datasets:
        for m in PAPER.models:
            mine = [c for c in frontier if (c.dataset, c.model) == (d, m)]
            for method in PAPER.frontier_methods:  # each method trained at exactly one budget
                assert sum(plan[c.id] for c in mine if c.method == method) == 1, (d, m, method)
            # and every budget trained by some method
            assert {c.budget for c in mine if plan[c.id]} == {c.budget for c in mine}
    # 8 (dataset, model) x (7 Table 1 + 7 frontier) trained or kept, of 280
    assert sum(plan.values()) == 8 * (7 + 7) and len(plan) == 280


def test_an_untrained_budget_that_cannot_allocate_fails_under_its_own_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = grid_methods.method_allocation

    def picky(ctx, method):  # type: ignore[no-untyped-def]
        if method == "blind" and ctx.budget == 4.0:
            raise RuntimeError("no bits at 4")
        return real(ctx, method)

    monkeypatch.setattr(grid_methods, "method_allocation", picky)
    grid = TINY.replace(datasets=("isic2019",), methods=("fp32",))
    with pytest.raises(RehearsalError) as info:
        rehearse(grid, tmp_path, batch_size=4, dataset_rows=ROWS, progress=False)
    assert [c for c, _ in info.value.failed] == ["isic2019__tiny_cnn__blind__s0__b4"]
    assert "no bits at 4" in info.value.failed[0][1]


def test_rehearsal_projects_the_full_grid_not_the_cut_one(tiny_rehearsal) -> None:
    result, _ = tiny_rehearsal
    p = project_grid(
        TINY,
        flops_per_image=result.flops_per_image,
        dataset_rows=ROWS,
        throughput=result.projection.throughput,
    )
    assert math.isclose(result.projection.gpu_hours, p.gpu_hours, rel_tol=1e-12)
    fp32 = [s for s in result.projection.stages if s.stage == "fp32"]
    assert all(s.runs == len(TINY.seeds) for s in fp32)  # three seeds, not the rehearsal's one


def test_every_method_asks_for_the_grouping_it_is_listed_with() -> None:
    assert set(METHOD_GROUPINGS) | {"fp32-ft"} == set(TRAINING_METHODS)
    asked: list[str] = []

    def calibration(grouping: str):
        asked.append(grouping)
        raise LookupError("stop here")

    ctx = grid_methods.CellContext(
        config=TINY,
        model=TinyCNN(3),
        train_loader=[],
        calibration=calibration,
        privileged_binary=0,
        seed=0,
    )
    for method, grouping in METHOD_GROUPINGS.items():
        with pytest.raises(LookupError):
            grid_methods.METHODS[method](ctx)
        assert asked[-1] == grouping, method


def test_a_model_that_refuses_the_image_size_fails_naming_its_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Needs32(nn.Module):
        def __init__(self, num_classes: int):
            super().__init__()
            self.fc = nn.Linear(3 * 32 * 32, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1))

    monkeypatch.setitem(grid_models.CUSTOM_MODELS, "needs_32", lambda c, _s: Needs32(c))
    grid = TINY.replace(datasets=("isic2019",), models=("tiny_cnn", "needs_32"))
    with pytest.raises(RehearsalError) as info:
        rehearse(grid, tmp_path, batch_size=4, dataset_rows=ROWS, progress=False)
    failed = dict(info.value.failed)
    bad = [c.id for c in grid_cells(rehearsal_config(grid, batch_size=4)) if c.model == "needs_32"]
    assert set(bad) <= set(failed) and all("shapes" in failed[c] for c in bad)
    assert not [c for c in failed if "tiny_cnn" in c]  # the other model still ran
    assert "isic2019__needs_32__fq-baq__s0" in str(info.value)
    assert "cannot run" in (tmp_path / "rehearsal.md").read_text()


def test_a_failing_method_fails_loudly_and_fail_fast_stops_at_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(ctx: object) -> object:
        raise RuntimeError("injected failure")

    monkeypatch.setitem(grid_methods.METHODS, "guo", broken)
    grid = TINY.replace(datasets=("fitzpatrick17k",), frontier_methods=(), budgets=())
    with pytest.raises(RehearsalError, match=r"fitzpatrick17k__tiny_cnn__guo__s0: RuntimeError"):
        rehearse(grid, tmp_path / "a", batch_size=4, dataset_rows=ROWS, progress=False)
    with pytest.raises(RehearsalError) as info:
        rehearse(
            grid, tmp_path / "b", batch_size=4, dataset_rows=ROWS, progress=False, fail_fast=True
        )
    assert [c for c, _ in info.value.failed] == ["fitzpatrick17k__tiny_cnn__guo__s0"]
    assert not (tmp_path / "b" / "rehearsal.md").exists()  # stopped before any table


# ------------------------------------------------------------------------------------ data cut
def test_spread_rows_alternates_the_binary_sides_then_takes_turns() -> None:
    from fq_bench.grid._data import spread_rows

    # Fitzpatrick types 1-6 as ids 0-5: 0-2 one side, 3-5 the other; ids 2 and 4 absent here
    groups = np.array([0, 0, 0, 3, 3, 1, 5])
    # sides: [0, 1] and [3, 5] -> group order 0, 3, 1, 5; rows in turns: 0, 3, 5, 6, 1, 4, 2
    assert spread_rows(groups, [0, 0, 0, 1, 1, 1], 5).tolist() == [0, 3, 5, 6, 1]
    # ISIC: female 0, male 1, unknown -1 last
    assert spread_rows(np.array([2, 2, 0, 0, 1]), [0, 1, -1], 5).tolist() == [2, 4, 0, 3, 1]
    # no binary grouping: the groups in id order
    assert spread_rows(np.array([1, 0, 1]), None, 2).tolist() == [1, 0]


# ------------------------------------------------------------------------------------ command line
CLI_TINY = [
    "--rehearsal", "--preset", "paper", "--models", "tiny_cnn", "--image-size", "16",
    "--no-pretrained", "--datasets", "isic2019", "--methods", "fp32", "guo",
    "--frontier-methods", "blind", "--budgets", "3", "--rehearsal-batch-size", "4",
    "--no-progress", "--gpu", "h100-bf16", "--utilisation", "0.5",
]  # fmt: skip


def test_the_command_line_rehearses_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fq_bench.grid import main

    assert main([*CLI_TINY, "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "rehearsal passed" in text and "H100 SXM BF16" in text and "50% assumed" in text
    with open(tmp_path / "rehearsal_cells.csv", newline="") as fh:
        names = {r["name"] for r in csv.DictReader(fh)}
    assert {"isic2019__tiny_cnn__guo__s0", "isic2019__tiny_cnn__blind__s0__b3"} <= names


def test_preset_rehearsal_is_the_paper_grid_and_bad_flags_are_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fq_bench.grid import main
    from fq_bench.grid._cli import build_parser, config_from_args

    parser = build_parser()
    args = parser.parse_args(["--preset", "rehearsal"])
    # the paper's grid, from random weights (no hub, no --weights needed)
    assert config_from_args(args, parser) == PAPER.replace(pretrained=False)
    for flags, named in (
        (["--shard", "1/2"], "--shard"),
        (["--rehearsal-batches", "0"], "--rehearsal-batches"),
        (["--utilisation", "2"], "utilisation"),
    ):
        with pytest.raises(SystemExit):
            main([*CLI_TINY, *flags])
        assert named in capsys.readouterr().err
