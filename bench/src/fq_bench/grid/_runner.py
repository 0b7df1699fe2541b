"""Run the grid: the plan of :func:`run_grid` (cells to do, claims and execution, the summary).

Reproducibility: every cell seeds the global RNGs, the loader and its trainer from
:func:`~._cell_run.cell_seed`, so its numbers do not depend on which cells ran before it in the
process (or in which shard). The seed depends on (dataset, model, seed) alone: every fine-tune of
one seed sees the same batches in the same order with the same augmentation (common random
numbers), so a paired difference between two methods measures the methods, not two different data
orders. Under ``accelerate launch`` every process runs every cell together (the trainers use all
GPUs); only the main process writes files.

Where each part lives: processes (:mod:`._processes`), data (:mod:`._data`), evaluation
(:mod:`._evaluation`), checkpoints and calibrations (:mod:`._checkpoints`), one cell
(:mod:`._cell_run`), claims and execution (:mod:`._execution`), progress (:mod:`._progress`).
"""

from __future__ import annotations

import time
from pathlib import Path

from ._cell_run import check_cells, write_run_config
from ._cells import grid_cells, shard_cells
from ._config import GridConfig
from ._execution import GridRun, RunSummary
from ._models import check_pretrained_sources
from ._processes import distributed, init_processes, is_main_process


def run_grid(
    config: GridConfig,
    out: str | Path,
    *,
    shard: tuple[int, int] = (0, 1),
    fail_fast: bool = False,
    export: str | None = None,
) -> RunSummary:
    """Compute every missing cell of ``config`` (this shard's share) into ``out``.

    Finished cells (valid checksum, same config fingerprint) are skipped; FP32 checkpoints and
    calibrations under ``out`` are reused. Every cell's configuration is checked before anything
    is loaded (:func:`~._cell_run.check_cells`). A cell is claimed before it is computed
    (``CellStore.claim``), so shards and duplicate launches into one folder share the work; a
    cell another live run holds is waited for at the end. A cell that raises is recorded under
    ``out/failed/`` and in ``RunSummary.failed`` and the other cells still run, unless
    ``fail_fast`` (or several processes, which must stay in step), where the error propagates.
    ``export="onnx"`` also writes each quantized cell to ``out/onnx/<cell id>.onnx`` (with its
    packed file and sizes); ``"onnx-int8"`` also with int8 activations, audited per group against
    FP32 and the weight-only file (``<cell id>.audit.json``/``.md``, ``fq_bench.grid._exports``).
    Does not build the report (see ``build_report``).
    """
    t_start = time.perf_counter()
    out = Path(out)
    if export not in (None, "onnx", "onnx-int8"):
        raise ValueError(f"export={export!r} is invalid; allowed: None, 'onnx', 'onnx-int8'")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out={str(out)!r} is a file; give a folder for the results")
    # 1. the cells to do, checked before anything is loaded or trained: missing weights files,
    # an unreachable hub, a cell whose configuration would fail
    check_pretrained_sources(
        config.models, pretrained=config.pretrained, weights_dir=config.weights_dir
    )
    cells = shard_cells(grid_cells(config), *shard)
    check_cells(config, cells)
    # 2. the processes, then which cells are finished and which this run computes
    init_processes(config)
    export_dir = out / "onnx" if export is not None else None
    run = GridRun(
        config,
        out,
        cells,
        fail_fast=fail_fast or distributed(),
        export_dir=export_dir,
        export_int8=export == "onnx-int8",
    )
    if is_main_process():
        write_run_config(out, config, run.content)
    # 3. a positive control (non-default variant) first checks, on FP32 alone, that the model
    # reads the planted cue (the FP32 checkpoints it trains are the cells' own)
    if config.variant != "shared-cues" and is_main_process() and not distributed():
        from ._positive_control import measure_precondition

        measure_precondition(config, out)
    # 4. claim and compute each cell to do; wait for those another live run holds
    summary = run.execute()
    # 5. what was done (the tables: build_report)
    summary.seconds = time.perf_counter() - t_start
    return summary
