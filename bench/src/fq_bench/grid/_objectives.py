"""Each fairness objective against the group-blind control (issue 19): ``objectives.md``/``.csv``.

From the cell frame alone, for every sweep variant of an objective's field (:data:`OBJECTIVE_FIELDS`:
``fair_loss=<name>``, ``fair_ema=<m>``) of a method that trains with L_fair
(:data:`~fq_bench.grid._config.FAIR_METHODS`), per (dataset, model, method, budget, objective):
the mean WorstAcc and AvgAcc over seeds, and against ``blind`` (group-blind bits, no L_fair; the
same budget, seed, FP32 checkpoint and training batches) the frontier's statistics: the paired
WorstAcc change with its 95% t-interval over seeds, its test-image interval and verdict
(:func:`~fq_bench.grid._frontier.paired_worst`), the paired AvgAcc change with its interval,
and the collapse count (seeds whose WorstAcc falls more than
:data:`~fq_bench.grid._frontier.COLLAPSE_DROP` below the control's). Budget ``""`` rows are Table
1's palette (compared with a Table 1 ``blind`` cell when one was run).

Plots: ``objectives_frontier.png`` (WorstAcc against average bits, one line per objective, the
control dashed) and ``objectives_group_loss.png`` (per-group training loss by epoch, one seed, one
panel per objective).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ._cells import CellKey, atomic_write_bytes
from ._frontier import (
    COLLAPSE_DROP,
    format_interval,
    format_points,
    paired_differences,
    paired_worst,
    t_interval,
)
from ._names import CONTROL_METHOD, FAIR_METHODS, MODEL_LABELS, NAME_SWEEPS
from ._order import sort_rows

#: Sweep fields whose variants are objectives of L_fair.
OBJECTIVE_FIELDS: tuple[str, ...] = ("fair_loss", "fair_ema")

#: objectives.csv's columns, in order (accuracies as fractions; ``target_bits`` null for Table 1).
OBJECTIVES_COLUMNS: tuple[str, ...] = (
    "dataset", "model", "method", "method_label", "objective", "variant", "target_bits",
    "avg_bits", "seeds", "worst_acc_mean", "avg_acc_mean", "d_worst_vs_blind",
    "d_worst_vs_blind_low", "d_worst_vs_blind_high", "d_worst_vs_blind_img_low",
    "d_worst_vs_blind_img_high", "d_worst_vs_blind_verdict",
    "d_avg_vs_blind", "d_avg_vs_blind_low", "d_avg_vs_blind_high", "collapses_vs_blind",
)  # fmt: skip


def objective_label(variant: str) -> str:
    """``"fair_loss=dro"`` -> ``"dro"``; another field's variant stays as it is."""
    name, _, value = variant.partition("=")
    return value if name in NAME_SWEEPS else variant


def _objective_rank(variant: str) -> int:
    """``fair_loss=<name>`` in ``fq_baq.FAIR_LOSSES`` order, then any other variant."""
    from fq_baq import FAIR_LOSSES

    name, _, value = variant.partition("=")
    return FAIR_LOSSES.index(value) if name == "fair_loss" else len(FAIR_LOSSES)


def objective_cells(cells: pl.DataFrame) -> pl.DataFrame:
    """The cells of :func:`objectives_frame`: objective variants of the L_fair methods, with an
    ``objective`` column (:func:`objective_label`)."""
    field_name = pl.col("variant").str.split_exact("=", 1).struct.field("field_0")
    part = cells.filter(
        field_name.is_in(list(OBJECTIVE_FIELDS)) & pl.col("method").is_in(list(FAIR_METHODS))
    )
    labels = [objective_label(v) for v in part["variant"].to_list()]
    return part.with_columns(pl.Series("objective", labels, dtype=pl.String))


def objectives_frame(cells: pl.DataFrame) -> pl.DataFrame:
    """One row per (dataset, model, method, budget, objective): :data:`OBJECTIVES_COLUMNS`.

    ``cells``: :func:`fq_bench.grid._report.cells_frame`. Objectives in ``fq_baq.FAIR_LOSSES``
    order (``gap`` first), other objective variants after them; rows without a ``blind`` cell at
    their budget leave the ``*_vs_blind`` columns null.
    """
    part = objective_cells(cells)
    rows: list[dict[str, Any]] = []
    keys = ["dataset", "model", "method", "budget", "variant"]
    for (ds, mo, me, bu, var), group in part.group_by(keys, maintain_order=True):
        group = group.sort("seed")
        row: dict[str, Any] = {
            "dataset": ds, "model": mo, "method": me, "method_label": group["method_label"][0],
            "objective": group["objective"][0], "variant": var, "budget": bu,
            "target_bits": float(bu) if bu else None, "avg_bits": float(np.mean(group["avg_bits"].to_numpy())),
            "seeds": group.height, "worst_acc_mean": float(np.mean(group["worst_acc"].to_numpy())),
            "avg_acc_mean": float(np.mean(group["avg_acc"].to_numpy())),
        }  # fmt: skip
        row |= dict.fromkeys(OBJECTIVES_COLUMNS[11:])
        control = cells.filter(
            (pl.col("dataset") == ds) & (pl.col("model") == mo) & (pl.col("budget") == bu)
            & (pl.col("method") == CONTROL_METHOD) & (pl.col("variant") == "")
        )  # fmt: skip
        pw = paired_worst(group, control)
        if pw.values.size:
            a_mean, a_low, a_high = t_interval(paired_differences(group, control, "avg_acc"))
            row |= {
                "d_worst_vs_blind": pw.mean, "d_worst_vs_blind_low": pw.low,
                "d_worst_vs_blind_high": pw.high, "d_worst_vs_blind_img_low": pw.image_low,
                "d_worst_vs_blind_img_high": pw.image_high,
                "d_worst_vs_blind_verdict": pw.verdict,
                "d_avg_vs_blind": a_mean, "d_avg_vs_blind_low": a_low,
                "d_avg_vs_blind_high": a_high,
                "collapses_vs_blind": int((pw.values < -COLLAPSE_DROP).sum()),
            }  # fmt: skip
        rows.append(row)
    schema: dict[str, Any] = {c: pl.Float64 for c in OBJECTIVES_COLUMNS}
    for c in ("dataset", "model", "method", "method_label", "objective", "variant",
              "d_worst_vs_blind_verdict"):  # fmt: skip
        schema[c] = pl.String
    schema |= {"seeds": pl.Int64, "collapses_vs_blind": pl.Int64, "budget": pl.String}
    frame = pl.DataFrame(rows, schema=schema)
    # objectives in fq_baq's order (gap first), other variants after them; then the grid's order
    frame = frame.with_columns(
        pl.col("variant").map_elements(_objective_rank, return_dtype=pl.Int64).alias("_o")
    )
    frame = sort_rows(frame.sort("_o", maintain_order=True))
    return frame.select(list(OBJECTIVES_COLUMNS))


def objectives_markdown(frame: pl.DataFrame) -> str:
    """Markdown of :func:`objectives_frame` (points, 95% t-interval over seeds)."""
    header = ["Model", "Budget", "Method", "Objective", "WorstAcc", "AvgAcc", "ΔWorst vs blind",
              "test images", "Verdict", "ΔAvg vs blind", "Collapses", "Seeds"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join(["---"] * 4 + ["---:"] * 4 + ["---"] + ["---:"] * 3) + " |"]  # fmt: skip
    for r in frame.iter_rows(named=True):
        has = r["d_worst_vs_blind"] is not None
        lines.append("| " + " | ".join([
            MODEL_LABELS.get(r["model"], r["model"]),
            "palette" if r["target_bits"] is None else f"{r['target_bits']:g}",
            r["method_label"], r["objective"],
            format_points(r["worst_acc_mean"]), format_points(r["avg_acc_mean"]),
            (f"{format_points(r['d_worst_vs_blind'], True)} "
             f"{format_interval(r['d_worst_vs_blind_low'], r['d_worst_vs_blind_high'], True)}")
            if has else "",
            format_interval(r["d_worst_vs_blind_img_low"], r["d_worst_vs_blind_img_high"], True)
            if has else "",
            r["d_worst_vs_blind_verdict"] or "",
            (f"{format_points(r['d_avg_vs_blind'], True)} "
             f"{format_interval(r['d_avg_vs_blind_low'], r['d_avg_vs_blind_high'], True)}")
            if has else "",
            "" if r["collapses_vs_blind"] is None else str(r["collapses_vs_blind"]),
            str(r["seeds"]),
        ]) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def objectives_plot(frame: pl.DataFrame, cells: pl.DataFrame, path: Path) -> Path | None:
    """WorstAcc (mean over seeds) against average bits: one panel per (dataset, model, method),
    one line per objective, the ``blind`` control's means dashed. ``None`` without budgets."""
    from ._plots import new_panels, save_png

    fr = frame.filter(pl.col("target_bits").is_not_null())
    if fr.is_empty():
        return None
    panels = list(dict.fromkeys(fr.select("dataset", "model", "method").iter_rows()))
    fig, axes = new_panels(len(panels), width=5.5, height=4.0)
    objectives = list(dict.fromkeys(fr["objective"].to_list()))
    for ax, (ds, mo, me) in zip(axes, panels, strict=True):
        here = fr.filter((pl.col("dataset") == ds) & (pl.col("model") == mo)
                         & (pl.col("method") == me))  # fmt: skip
        for i, obj in enumerate(objectives):
            line = here.filter(pl.col("objective") == obj).sort("avg_bits")
            if not line.is_empty():
                ax.plot(line["avg_bits"].to_numpy(), 100 * line["worst_acc_mean"].to_numpy(),
                        "-o", ms=4, color=f"C{i % 10}", label=obj)  # fmt: skip
        control = cells.filter(
            (pl.col("dataset") == ds) & (pl.col("model") == mo) & (pl.col("budget") != "")
            & (pl.col("method") == CONTROL_METHOD) & (pl.col("variant") == "")
        ).group_by("budget").agg(pl.col("avg_bits").mean(), pl.col("worst_acc").mean())  # fmt: skip
        if not control.is_empty():
            control = control.sort("avg_bits")
            ax.plot(control["avg_bits"].to_numpy(), 100 * control["worst_acc"].to_numpy(),
                    "--", color="k", label="blind (control)")  # fmt: skip
        ax.set_title(f"{MODEL_LABELS.get(mo, mo)}: {here['method_label'][0]}")
        ax.set_xlabel("average bits per weight")
        ax.set_ylabel("WorstAcc (%), mean over seeds")
        ax.legend(fontsize=7)
    return save_png(fig, path)


def loss_plot_cells(
    raw: Iterable[tuple[CellKey, dict[str, Any]]],
) -> tuple[str, int, list[tuple[CellKey, dict[str, Any]]]]:
    """What :func:`group_loss_plot` draws: ``(budget, seed, cells)``, the cells in objective order.

    One method (the first L_fair method), one budget (the smallest), one seed: the one holding
    the lowest test WorstAcc among those cells (the smallest such seed on ties), so that where an
    objective collapses on some seed, the curves show how. Empty cells when there is nothing to
    draw.
    """
    picked = [
        (k, r) for k, r in raw
        if k.variant.partition("=")[0] in OBJECTIVE_FIELDS and k.method in FAIR_METHODS
        and r.get("history")
    ]  # fmt: skip
    if not picked:
        return "", 0, []
    method = min((k.method for k, _ in picked), key=FAIR_METHODS.index)
    picked = [(k, r) for k, r in picked if k.method == method]
    budget = min((k.budget for k, _ in picked), key=lambda b: math.inf if not b else float(b))
    at_budget = [(k, r) for k, r in picked if k.budget == budget]
    seed = min(at_budget, key=lambda kr: (kr[1]["metrics"]["worst_acc"], kr[0].seed))[0].seed
    first = [(k, r) for k, r in at_budget if k.seed == seed]
    first.sort(key=lambda kr: _objective_rank(kr[0].variant))
    return budget, seed, first


def group_loss_plot(raw: Iterable[tuple[CellKey, dict[str, Any]]], path: Path) -> Path | None:
    """Per-group training loss by epoch of the cells :func:`loss_plot_cells` picks, one panel per
    objective; ``None`` without such cells."""
    from ._plots import new_panels, save_png

    budget, seed, first = loss_plot_cells(raw)
    if not first:
        return None
    fig, axes = new_panels(len(first), width=4.0, height=3.2)
    for ax, (key, res) in zip(axes, first, strict=True):
        curves = np.array([h["group_loss"] for h in res["history"]], dtype=float)  # [E, G]
        epochs = np.arange(1, curves.shape[0] + 1)
        names = res.get("group_names", range(curves.shape[1]))
        for g, name in zip(range(curves.shape[1]), names, strict=False):
            ax.plot(epochs, curves[:, g], "-o", ms=3, label=str(name))
        where = f"{budget} bits" if budget else "palette"
        ax.set_title(f"{objective_label(key.variant)} ({res['labels']['method']}, {where}, "
                     f"seed {seed})", fontsize=8)  # fmt: skip
        ax.set_xlabel("epoch")
        ax.set_ylabel("training CE (nats)")
        ax.legend(fontsize=6)
    return save_png(fig, path)


def write_objectives(
    root: Path,
    cells: pl.DataFrame,
    raw: Iterable[tuple[CellKey, dict[str, Any]]],
    *,
    head: str = "",
    plots: bool = True,
) -> tuple[pl.DataFrame | None, list[str], list[Path]]:
    """Write ``objectives.md``/``.csv`` (and the two plots) when ``cells`` hold objective variants.

    Returns the frame (``None`` without such cells), the table files and the plot files written.
    """
    if objective_cells(cells).is_empty():
        return None, [], []
    frame = objectives_frame(cells)
    intro = (
        "Each L_fair objective against the group-blind control (blind: no L_fair) at the same "
        "budget, paired by seed; points, 95% t-interval over seeds; test images: the 95% "
        "interval of the same mean over resamples of the test set; resolved = both intervals "
        f"exclude 0; collapses = seeds whose WorstAcc falls more than {100 * COLLAPSE_DROP:g} "
        "points below blind's.\n\n"
    )
    atomic_write_bytes(root / "objectives.md", (head + intro + objectives_markdown(frame)).encode())
    atomic_write_bytes(root / "objectives.csv", frame.write_csv(float_precision=6).encode())
    made: list[Path] = []
    if plots:
        for p in (
            objectives_plot(frame, cells, root / "objectives_frontier.png"),
            group_loss_plot(raw, root / "objectives_group_loss.png"),
        ):
            if p is not None:
                made.append(p)
    return frame, ["objectives.md", "objectives.csv"], made
