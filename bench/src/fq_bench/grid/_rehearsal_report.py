"""The rehearsal's tables: per (dataset, model) and per cell, the projection, written atomically."""

from __future__ import annotations

import csv
import io
import math
import os
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fq_data import atomic_write_bytes

if TYPE_CHECKING:
    from ._rehearsal import Rehearsal, StageRecord

#: Columns of ``rehearsal_cells.csv`` (seconds, bytes; NaN where a stage has no such figure).
CELL_COLUMNS: tuple[str, ...] = (
    "name",
    "dataset",
    "model",
    "stage",
    "batch_size",
    "steps",
    "step_s",
    "eval_s_per_image",
    "seconds",
    "peak_bytes",
    "start_bytes",
    "error",
)


def _median(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def _fmt(value: float, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if not math.isfinite(value) else f"{value * scale:.{digits}f}"


@dataclass(frozen=True, kw_only=True)
class ModelRow:
    """One (dataset, model) of a rehearsal: median seconds per FP32 training step, per
    calibration batch (model build included), per fine-tune step (over the cells), ms per
    evaluated image, the largest peak memory of any of its stages [MiB], the achieved TFLOP/s of
    the fine-tune steps (``3 x`` the forward FLOPs of a batch / the step time), cells and failed."""

    dataset: str
    model: str
    fp32_step_s: float
    calibration_batch_s: float
    finetune_step_s: float
    eval_ms_per_image: float
    peak_mib: float
    finetune_tflops: float
    cells: int
    failed: int


def model_rows(result: Rehearsal) -> list[ModelRow]:
    """One :class:`ModelRow` per (dataset, model) of ``result``, in run order."""
    rows: list[ModelRow] = []
    keys = dict.fromkeys((r.dataset, r.model) for r in result.records if r.model)
    for dataset, model in keys:
        mine = [r for r in result.records if (r.dataset, r.model) == (dataset, model)]
        cells = [r for r in mine if ":" not in r.name]

        def step(stage: str, recs: list[StageRecord] = mine) -> float:
            return _median([r.step_s for r in recs if r.stage.startswith(stage) and not r.error])

        fine = step("fine-tune")
        flops = result.flops_per_image.get(model, math.nan)
        peaks = [r.peak_bytes for r in mine if math.isfinite(r.peak_bytes)]
        rows.append(
            ModelRow(
                dataset=dataset,
                model=model,
                fp32_step_s=step("fp32"),
                calibration_batch_s=step("calibration"),
                finetune_step_s=fine,
                eval_ms_per_image=1e3 * _median([r.eval_s_per_image for r in cells]),
                peak_mib=max(peaks) / 2**20 if peaks else math.nan,
                finetune_tflops=(
                    3 * flops * result.config.batch_size / fine / 1e12 if fine > 0 else math.nan
                ),
                cells=len(cells),
                failed=sum(bool(r.error) for r in cells),
            )
        )
    return rows


def models_markdown(result: Rehearsal) -> str:
    """:func:`model_rows` as a markdown table."""
    lines = [
        "| dataset | model | FP32 s/step | calib. s/batch | fine-tune s/step | eval ms/img "
        "| peak MiB | fine-tune TFLOP/s | cells | failed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in model_rows(result):
        lines.append(
            f"| {r.dataset} | {r.model} | {_fmt(r.fp32_step_s)} | "
            f"{_fmt(r.calibration_batch_s)} | {_fmt(r.finetune_step_s)} | "
            f"{_fmt(r.eval_ms_per_image, digits=1)} | {_fmt(r.peak_mib, digits=0)} | "
            f"{_fmt(r.finetune_tflops, digits=4)} | {r.cells} | {r.failed} |"
        )
    return "\n".join(lines)


def cells_csv(records: list[StageRecord]) -> str:
    """Every measured stage and cell as CSV (:data:`CELL_COLUMNS`)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CELL_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow(r.to_dict())
    return buf.getvalue()


def plan_text(records: list[StageRecord]) -> str:
    """Which cells trained and which were checked through allocation and forward only."""
    from ._rehearsal import ALLOCATION_ONLY

    cells = [r for r in records if ":" not in r.name]
    alloc = [r for r in cells if r.stage == ALLOCATION_ONLY]
    return (
        f"What ran: {len(cells) - len(alloc)} cells end to end (FP32 as trained, post-training "
        f"quantization, and every fine-tune: each Table 1 cell, each frontier method of a "
        f"(dataset, model) at one budget, the budgets taken in turn over the methods); "
        f"{len(alloc)} frontier cells (a method at its other budgets) checked through their "
        f"allocation, the quantized model and the evaluation forward only, not trained "
        f"(stage `{ALLOCATION_ONLY}`). Every budget of every (dataset, model, method) was "
        f"allocated, quantized and evaluated; {sum(r.steps > 0 for r in cells)} cells ran a "
        f"training step."
    )


def summary_text(result: Rehearsal) -> str:
    """The rehearsal in words and tables: what ran where, per model, the projection, failures."""
    c = result.config
    try:
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        load = "n/a"
    mem = "GPU memory allocated" if result.device.startswith("cuda") else "peak resident set"
    parts = [
        f"# Rehearsal of the {result.grid.preset} grid",
        "",
        f"{len([r for r in result.records if ':' not in r.name])} cells on {result.device}, "
        f"{c.image_size} px, batch {c.batch_size}, {c.calib_batches} batch(es) per stage, seed "
        f"{c.seeds[0]}, {'weights from ' + str(c.weights_dir) if c.pretrained else 'random init'}"
        f"; wall {result.seconds:.0f} s, CPU {result.cpu_seconds:.0f} s (this process, all "
        f"threads); load average at the end {load} "
        f"({os.cpu_count()} CPUs). Memory: {mem} of the stage [MiB].",
        "",
        plan_text(result.records),
        "",
        models_markdown(result),
        "",
        "## Projected cost of the full grid",
        "",
        result.projection.markdown(),
    ]
    if result.failed:
        parts += ["", f"## {len(result.failed)} cell(s) cannot run", ""]
        parts += [f"- {name}: {err}" for name, err in result.failed]
    return "\n".join(parts) + "\n"


def write_rehearsal(result: Rehearsal) -> None:
    """Write ``rehearsal.md``, ``rehearsal_cells.csv`` and ``projection.md`` under
    ``result.out`` (atomically) and print the summary."""
    result.out.mkdir(parents=True, exist_ok=True)
    text = summary_text(result)
    atomic_write_bytes(result.out / "rehearsal.md", text.encode())
    atomic_write_bytes(result.out / "rehearsal_cells.csv", cells_csv(result.records).encode())
    atomic_write_bytes(result.out / "projection.md", (result.projection.markdown() + "\n").encode())
    print(text)
