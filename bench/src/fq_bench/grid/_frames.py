"""The cell files as polars frames: one row per cell, per group, per layer; Table 1's summary."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import polars as pl

from ._cells import CellKey
from ._order import sort_rows

#: (column id, header, scale, decimals, show std) in table order.
COLUMNS: tuple[tuple[str, str, float, int], ...] = (
    ("avg_bits", "AvgBits", 1.0, 2),
    ("paper_gops", "GBOPs", 1.0, 3),
    ("gbops", "GBOPs (true)", 1.0, 2),
    ("avg_acc", "AvgAcc", 100.0, 2),
    ("worst_acc", "WorstAcc", 100.0, 2),
    ("gap", "Gap", 100.0, 2),
    ("eopp0", "EOpp0", 1.0, 3),
    ("eodd", "EOdd", 1.0, 3),
)
METRIC_IDS: tuple[str, ...] = tuple(c[0] for c in COLUMNS)
_KEY_COLS = ("dataset", "model", "method", "variant", "budget")
_LABEL_COLS = ("dataset_label", "model_label", "method_label")
#: Metrics with a per-cell stratified bootstrap interval (``<m>_boot_low``/``<m>_boot_high``).
BOOT_IDS: tuple[str, ...] = ("worst_acc", "avg_acc", "gap")


def _boot(res: dict[str, Any], metric: str, side: int) -> float:
    pair = res.get("bootstrap", {}).get(metric)
    return float(pair[side]) if pair else math.nan


def cells_frame(cells: Iterable[tuple[CellKey, dict[str, Any]]]) -> pl.DataFrame:
    """One row per cell: key, labels, the Table 1 metrics (fractions, not percent), the packed
    size in bytes, the frontier target (``target_bits``, null off the frontier) and each cell's
    bootstrap interval (``<metric>_boot_low``/``_high``, NaN when none was computed), and its
    per-image test outcome (``test_correct``, ``test_group``: lists, for paired image intervals)."""
    rows = []
    for key, res in cells:
        m, c, lab = res["metrics"], res["cost"], res["labels"]
        rows.append(
            {
                **key.to_dict(),
                "dataset_label": lab["dataset"],
                "model_label": lab["model"],
                "method_label": lab["method"],
                "target_bits": key.budget_bits,
                "avg_bits": float(c["avg_bits"]),
                "paper_gops": float(c["paper_gops"]),
                "gbops": float(c["gbops"]),
                "size_bytes": float(c.get("size_bytes", math.nan)),
                **{k: float(m[k]) for k in ("avg_acc", "worst_acc", "gap", "eopp0", "eodd")},
                **{f"{k}_boot_low": _boot(res, k, 0) for k in BOOT_IDS},
                **{f"{k}_boot_high": _boot(res, k, 1) for k in BOOT_IDS},
                "semisynthetic": bool(res.get("data", {}).get("semisynthetic", False)),
                **_test_columns(res),
            }
        )
    schema: dict[str, pl.DataType | type[pl.DataType]] = {
        "dataset": pl.String, "model": pl.String, "method": pl.String, "seed": pl.Int64,
        "variant": pl.String, "budget": pl.String, "dataset_label": pl.String,
        "model_label": pl.String, "method_label": pl.String, "target_bits": pl.Float64,
        **{k: pl.Float64 for k in METRIC_IDS}, "size_bytes": pl.Float64,
        **{f"{k}_boot_{s}": pl.Float64 for s in ("low", "high") for k in BOOT_IDS},
        "semisynthetic": pl.Boolean, "test_correct": pl.List(pl.Boolean),
        "test_group": pl.List(pl.Int64),
    }  # fmt: skip
    return pl.DataFrame(rows, schema=schema).select(list(schema))


def _test_columns(res: dict[str, Any]) -> dict[str, list[Any] | None]:
    """``test_correct`` (prediction == label) and ``test_group`` per test image, in the test
    set's order; null for a cell that stored no predictions."""
    test = res.get("test")
    if not test:
        return {"test_correct": None, "test_group": None}
    correct = [p == y for p, y in zip(test["predictions"], test["labels"], strict=True)]
    return {"test_correct": correct, "test_group": list(test["groups"])}


def groups_frame(cells: Iterable[tuple[CellKey, dict[str, Any]]]) -> pl.DataFrame:
    """Long form of every cell's per-group test accuracy: one row per (cell, group), with the
    cell's key and labels, ``group`` (name), ``group_index``, ``n`` and ``acc`` (fraction, NaN
    for a group without test images)."""
    rows = []
    for key, res in cells:
        for i, (name, acc, n) in enumerate(
            zip(res["group_names"], res["group_acc"], res["group_n"], strict=True)
        ):
            rows.append(
                {
                    **key.to_dict(),
                    "dataset_label": res["labels"]["dataset"],
                    "model_label": res["labels"]["model"],
                    "method_label": res["labels"]["method"],
                    "group": str(name),
                    "group_index": i,
                    "n": int(n),
                    "acc": math.nan if acc is None else float(acc),
                }
            )
    schema: dict[str, pl.DataType | type[pl.DataType]] = {
        "dataset": pl.String, "model": pl.String, "method": pl.String, "seed": pl.Int64,
        "variant": pl.String, "budget": pl.String, "dataset_label": pl.String,
        "model_label": pl.String, "method_label": pl.String, "group": pl.String,
        "group_index": pl.Int64, "n": pl.Int64, "acc": pl.Float64,
    }  # fmt: skip
    return pl.DataFrame(rows, schema=schema).select(list(schema))


def layer_bits_frame(cells: Iterable[tuple[CellKey, dict[str, Any]]]) -> pl.DataFrame:
    """One row per (cell, quantized layer): key, labels, ``layer``, ``bits`` (mean over the
    layer's channels) and ``n_params``; empty for float cells."""
    rows = []
    for key, res in cells:
        for position, (name, bits, n) in enumerate(res.get("layer_bits", [])):
            rows.append(
                {
                    **key.to_dict(),
                    "dataset_label": res["labels"]["dataset"],
                    "model_label": res["labels"]["model"],
                    "layer": str(name),
                    "position": position,
                    "bits": float(bits),
                    "n_params": int(n),
                }
            )
    schema: dict[str, pl.DataType | type[pl.DataType]] = {
        "dataset": pl.String, "model": pl.String, "method": pl.String, "seed": pl.Int64,
        "variant": pl.String, "budget": pl.String, "dataset_label": pl.String,
        "model_label": pl.String, "layer": pl.String, "position": pl.Int64,
        "bits": pl.Float64, "n_params": pl.Int64,
    }  # fmt: skip
    return pl.DataFrame(rows, schema=schema).select(list(schema))


def sample_std(col: str) -> pl.Expr:
    # sample std; NaN (not 0, not null) when a single seed leaves it undefined
    return (
        pl.when(pl.len() > 1)
        .then(pl.col(col).std(ddof=1))
        .otherwise(float("nan"))
        .alias(f"{col}_std")
    )


def table1_cells(frame: pl.DataFrame) -> pl.DataFrame:
    """The rows of ``frame`` that belong to Table 1: no ablation variant, no frontier budget."""
    keep = pl.col("variant") == ""
    if "budget" in frame.columns:
        keep = keep & (pl.col("budget") == "")
    return frame.filter(keep)


def summary_frame(cells: pl.DataFrame) -> pl.DataFrame:
    """Mean and std over seeds per (dataset, model, method, variant, budget), in the grid's
    order (:mod:`fq_bench.grid._order`)."""
    if cells.is_empty():
        raise ValueError("no finished cells to summarize")
    agg = cells.group_by(list(_KEY_COLS), maintain_order=True).agg(
        *(pl.col(c).first() for c in _LABEL_COLS),
        pl.len().alias("n_seeds"),
        *(pl.col(c).mean().alias(f"{c}_mean") for c in METRIC_IDS),
        *(sample_std(c) for c in METRIC_IDS),
    )
    cols = [*_KEY_COLS, *_LABEL_COLS, "n_seeds"]
    for c in METRIC_IDS:
        cols += [f"{c}_mean", f"{c}_std"]
    return sort_rows(agg.select(cols))
