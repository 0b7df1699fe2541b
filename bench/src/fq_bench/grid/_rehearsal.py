"""A dress rehearsal of a grid: every cell at the grid's shapes, each stage cut to a batch or two.

Before GPU hours are booked for a grid (the paper's: two datasets, four backbones at 224 px, every
method and budget), :func:`rehearse` runs each of its cells through the grid's own code (FP32
training, calibration per grouping, the method, evaluation), but with one seed, one epoch of
``batches`` batches per stage, a small batch and random weights (unless ``--weights``).
:func:`training_plan` says which cells train: every Table 1 cell, and each frontier method of a
(dataset, model) at one of its budgets (the budgets taken in turn over the methods, so every budget
is trained by some method); at its other budgets a method is checked through its allocation, the
quantized model and the evaluation forward (:func:`fq_bench.grid._methods.allocation_only`): the
training loop is the same at every budget, the bits are what differ. A cell
that cannot run (a shape, an op, memory) is named; the run ends with :class:`RehearsalError`
listing every such cell. It measures per cell the peak memory and the median time per training
step and per evaluated image (:mod:`._measure`), and projects the full grid's GPU-hours from
counted FLOPs (:mod:`._projection`).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ._cells import CellKey, grid_cells
from ._config import GridConfig
from ._measure import PeakMemory, StepClock
from ._names import METHOD_GROUPINGS, TRAINING_METHODS
from ._projection import (
    DEFAULT_GPU,
    GPUS,
    PAPER_FP32_EPOCHS,
    Projection,
    Throughput,
    metadata_rows,
    model_flops,
    project_grid,
)
from ._rehearsal_report import write_rehearsal

#: Batch size of a rehearsal on the CPU (a GPU rehearsal uses the grid's own batch size).
CPU_BATCH_SIZE = 2


class RehearsalError(RuntimeError):
    """Cells of the grid that cannot run: ``failed`` holds ``(cell id, error)`` pairs."""

    def __init__(self, failed: list[tuple[str, str]]):
        self.failed = failed
        lines = "\n".join(f"  {cell}: {err}" for cell, err in failed)
        super().__init__(f"{len(failed)} cell(s) of the grid cannot run:\n{lines}")


@dataclass(kw_only=True)
class StageRecord:
    """One measured stage: a cell (``stage`` = its method kind) or a (dataset, model)'s FP32
    training or calibration. Seconds are wall time; memory in bytes (:class:`PeakMemory`)."""

    name: str
    dataset: str
    model: str
    stage: str
    batch_size: int
    steps: int = 0
    step_s: float = math.nan
    eval_s_per_image: float = math.nan
    seconds: float = math.nan
    peak_bytes: float = math.nan
    start_bytes: float = math.nan
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(kw_only=True)
class Rehearsal:
    """What :func:`rehearse` measured and projected, and where it wrote it."""

    grid: GridConfig
    config: GridConfig
    device: str
    records: list[StageRecord]
    flops_per_image: dict[str, float]
    projection: Projection
    seconds: float
    cpu_seconds: float
    out: Path

    @property
    def failed(self) -> list[tuple[str, str]]:
        return [(r.name, r.error) for r in self.records if r.error]


def rehearsal_config(
    grid: GridConfig, *, batch_size: int, batches: int = 1, bootstrap_resamples: int = 20
) -> GridConfig:
    """The config a rehearsal of ``grid`` runs: the grid's datasets, models, methods, budgets,
    image size and data sources, with its first seed, ``batch_size``, one epoch per stage,
    ``batches`` calibration batches, random weights unless ``grid`` has a ``weights_dir``, and
    enough semi-synthetic rows that the test split holds ``batches`` batches."""
    for name, value in (("batch_size", batch_size), ("batches", batches)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid; allowed: an int >= 1")
    rows = max(20, math.ceil(2 * batches * batch_size / grid.test_fraction))
    return grid.replace(
        seeds=grid.seeds[:1],
        batch_size=batch_size,
        n_images=rows,
        fp32_epochs=1,
        epochs=1,
        calib_batches=batches,
        min_test_per_group=0,
        bootstrap_resamples=min(grid.bootstrap_resamples, bootstrap_resamples),
        pretrained=grid.pretrained and grid.weights_dir is not None,
        progress=False,
    )


#: The stage of a cell checked through its allocation and evaluation forward, not trained.
ALLOCATION_ONLY = "allocation + forward"


def training_plan(cells: list[CellKey]) -> dict[str, bool]:
    """Cell id -> whether the rehearsal trains it (``True``) or checks it through allocation,
    quantized model and evaluation forward only (``False``).

    Every cell trains except frontier cells of an allocating method
    (:data:`~fq_bench.grid._names.METHOD_GROUPINGS`): of those, each (dataset, model, seed,
    method, variant) trains at one budget, the ``j``-th allocating frontier method of its
    (dataset, model, seed) at the ``j % n``-th of its ``n`` budgets (sorted), so that with at
    least as many methods as budgets every budget is trained by some method."""
    plan = {c.id: True for c in cells}
    series: dict[tuple[str, str, int, str, str], list[CellKey]] = {}
    for c in cells:
        if c.budget and c.method in METHOD_GROUPINGS:
            series.setdefault((c.dataset, c.model, c.seed, c.method, c.variant), []).append(c)
    order: dict[tuple[str, str, int], list[str]] = {}
    for dataset, model, seed, method, _ in series:
        mine = order.setdefault((dataset, model, seed), [])
        if method not in mine:
            mine.append(method)
    for (dataset, model, seed, method, _), keys in series.items():
        keys = sorted(keys, key=lambda k: k.budget_bits or 0.0)
        j = order[(dataset, model, seed)].index(method)
        for i, key in enumerate(keys):
            plan[key.id] = i == j % len(keys)
    return plan


def _kind(method: str) -> str:
    if method == "fp32":
        return "fp32 (as trained)"
    return "fine-tune" if method in TRAINING_METHODS else "ptq"


def _error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text[:300]


def _measured(
    record: StageRecord, device: torch.device, work: Callable[[], Any], fail_fast: bool
) -> Any:
    """Run ``work`` under the clock and the memory gauge, filling ``record``; an exception is
    recorded (and raised again, naming the record, with ``fail_fast``)."""
    t0 = time.perf_counter()
    result = None
    with PeakMemory(device) as mem, StepClock(device) as clock:
        try:
            result = work()
        except Exception as exc:
            record.error = _error(exc)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if fail_fast:
                raise RehearsalError([(record.name, record.error)]) from exc
    record.seconds = time.perf_counter() - t0
    record.peak_bytes, record.start_bytes = mem.peak_bytes, mem.start_bytes
    record.steps, record.step_s = len(clock.steps), clock.step_median
    record.eval_s_per_image = clock.eval_median
    return result


def _say(text: str, progress: bool) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def rehearse(
    grid: GridConfig,
    out: str | Path,
    *,
    batch_size: int | None = None,
    batches: int = 1,
    throughput: Throughput | None = None,
    dataset_rows: dict[str, int] | None = None,
    fail_fast: bool = False,
    progress: bool = True,
) -> Rehearsal:
    """Rehearse every cell of ``grid`` (see the module docstring); write ``out/rehearsal.md``,
    ``out/rehearsal_cells.csv`` and ``out/projection.md``; raise :class:`RehearsalError` naming
    every cell that failed (after writing the tables).

    Args:
        grid: the grid to rehearse, e.g. the ``paper`` preset with the user's overrides.
        out: the run folder (created). FP32 checkpoints and calibrations go to a temporary
            folder, so every stage is measured on every rehearsal.
        batch_size: images per batch (default: the grid's on a GPU, :data:`CPU_BATCH_SIZE` on
            the CPU). Peak GPU memory at the grid's batch size needs a GPU rehearsal.
        batches: batches per stage (FP32 epoch, calibration, fine-tune epoch, test split).
        throughput: the assumed GPU of the projection (default ``GPUS[DEFAULT_GPU]``).
        dataset_rows: dataset -> rows of the real data for the projection (default: the bundled
            metadata, :func:`fq_bench.grid._projection.metadata_rows`).
        fail_fast: raise at the first cell that fails instead of running the others.
        progress: one line per stage on stderr.
    """
    from ._cell_run import check_cells
    from ._checkpoints import RunPaths
    from ._data import load_data
    from ._models import check_pretrained_sources
    from ._processes import init_processes, run_device

    t_start, cpu_start = time.perf_counter(), time.process_time()
    out = Path(out)
    init_processes(grid)
    device = run_device(grid)
    if batch_size is None:
        batch_size = grid.batch_size if device.type == "cuda" else CPU_BATCH_SIZE
    config = rehearsal_config(grid, batch_size=batch_size, batches=batches)
    check_pretrained_sources(
        config.models, pretrained=config.pretrained, weights_dir=config.weights_dir
    )
    cells = grid_cells(config)
    check_cells(config, cells)
    # before anything runs: a dataset the projection cannot size (a custom one) fails now
    rows = dataset_rows or {d: metadata_rows(d) for d in grid.datasets}
    records: list[StageRecord] = []
    classes: dict[str, int] = {}
    done = 0
    with tempfile.TemporaryDirectory(prefix="fq-rehearsal-") as tmp, warnings.catch_warnings():
        # a batch or two of calibration cannot hold every group: expected here, not in the grid
        warnings.filterwarnings(
            "ignore", message=r"group\(s\) .* never appeared", category=UserWarning
        )
        paths = RunPaths(root=Path(tmp))
        for dataset in config.datasets:
            mine = [c for c in cells if c.dataset == dataset]
            load = StageRecord(
                name=f"{dataset}: data", dataset=dataset, model="", stage="data", batch_size=0
            )
            data = _measured(
                load,
                device,
                partial(load_data, config, dataset, rows_per_split=batches * batch_size),
                fail_fast,
            )
            records.append(load)
            if data is None:
                records += _skipped(mine, config, f"data failed: {load.error}")
                continue
            classes.setdefault(dataset, data.loaders.num_classes)
            for model in config.models:
                todo = [c for c in mine if c.model == model]
                records += _rehearse_model(
                    todo, config, data, paths, device, fail_fast, progress, done, len(cells)
                )  # fmt: skip
                done += len(todo)
    flops = {m: _flops(m, max(classes.values(), default=2), grid.image_size) for m in grid.models}
    projection = project_grid(
        grid,
        flops_per_image=flops,
        dataset_rows=rows,
        throughput=throughput or GPUS[DEFAULT_GPU],
        fp32_epochs=PAPER_FP32_EPOCHS if grid.preset == "paper" else None,
    )
    result = Rehearsal(
        grid=grid,
        config=config,
        device=str(device),
        records=records,
        flops_per_image=flops,
        projection=projection,
        seconds=time.perf_counter() - t_start,
        cpu_seconds=time.process_time() - cpu_start,
        out=out,
    )
    write_rehearsal(result)
    if result.failed:
        raise RehearsalError(result.failed)
    return result


def _flops(model: str, num_classes: int, image_size: int) -> float:
    """:func:`model_flops`, NaN for a model that cannot run at ``image_size`` (its cells say why)."""
    try:
        return model_flops(model, num_classes=num_classes, image_size=image_size)
    except Exception:
        return math.nan


def _skipped(cells: list[CellKey], config: GridConfig, why: str) -> list[StageRecord]:
    return [
        StageRecord(
            name=c.id,
            dataset=c.dataset,
            model=c.model,
            stage=_kind(c.method),
            batch_size=config.batch_size,
            error=why,
        )
        for c in cells
    ]


def _rehearse_model(
    cells: list[CellKey],
    config: GridConfig,
    data: Any,
    paths: Any,
    device: torch.device,
    fail_fast: bool,
    progress: bool,
    done: int,
    total: int,
) -> list[StageRecord]:
    """FP32 training, each calibration grouping and every cell of one (dataset, model)."""
    from ._cell_run import run_cell
    from ._checkpoints import CalibrationCache, fp32_state

    if not cells:
        return []
    dataset, model, seed = cells[0].dataset, cells[0].model, cells[0].seed
    b = config.batch_size
    out: list[StageRecord] = []
    fp32 = StageRecord(
        name=f"{dataset}__{model}: fp32", dataset=dataset, model=model, stage="fp32", batch_size=b
    )
    state = _measured(fp32, device, lambda: fp32_state(config, paths, data, model, seed), fail_fast)
    out.append(fp32)
    _say(f"{fp32.name}: {_line(fp32)}", progress)
    if fp32.error:
        return out + _skipped(cells, config, f"FP32 training failed: {fp32.error}")
    cache = CalibrationCache(config, paths, data, model, seed, state, device)
    broken: dict[str, str] = {}
    for grouping in dict.fromkeys(
        METHOD_GROUPINGS[c.method] for c in cells if c.method in METHOD_GROUPINGS
    ):
        rec = StageRecord(
            name=f"{dataset}__{model}: calibration ({grouping})",
            dataset=dataset,
            model=model,
            stage=f"calibration ({grouping})",
            batch_size=b,
        )
        _measured(rec, device, partial(cache, grouping), fail_fast)
        rec.steps = config.calib_batches
        rec.step_s = rec.seconds / config.calib_batches
        out.append(rec)
        _say(f"{rec.name}: {_line(rec)}", progress)
        if rec.error:
            broken[grouping] = rec.error
    plan = training_plan(cells)
    for i, key in enumerate(cells):
        trained = plan[key.id]
        stage = _kind(key.method) if trained else ALLOCATION_ONLY
        rec = StageRecord(name=key.id, dataset=dataset, model=model, stage=stage, batch_size=b)
        needs = METHOD_GROUPINGS.get(key.method, "")
        if needs in broken:
            rec.error = f"calibration ({needs}) failed: {broken[needs]}"
        else:
            method = None if trained else partial(_allocation_only, method=key.method)
            _measured(
                rec,
                device,
                partial(run_cell, key, config, data, state, cache, device, method=method),
                fail_fast,
            )
        out.append(rec)
        _say(f"[{done + i + 1}/{total}] {key.id}: {_line(rec)}", progress)
    return out


def _allocation_only(ctx: Any, *, method: str) -> Any:
    from ._methods import allocation_only

    return allocation_only(ctx, method)


def _line(rec: StageRecord) -> str:
    if rec.error:
        return f"FAILED {rec.error}"
    step = f", {rec.step_s:.2f} s/step x {rec.steps}" if rec.steps else ""
    return f"ok in {rec.seconds:.1f} s{step}, peak {rec.peak_bytes / 2**20:.0f} MiB"
