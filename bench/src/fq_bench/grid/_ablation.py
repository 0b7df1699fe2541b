"""The ablation table: FQ-BAQ with one hyper-parameter swept at a time, over seeds.

Ablation cells (a ``variant`` ``"<field>=<value>"``) go to their own table, ``ablation.md``/
``.csv``/``.tex``: one row per swept value with mean ± sample std and the 95% Student-t interval
over seeds (METHOD.md section 7); the row whose value equals the run's own setting of the field
(``config.json``; the GridConfig default without one) is marked ``ref``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl

from ._config import GridConfig
from ._frames import COLUMNS, METRIC_IDS
from ._names import NAME_SWEEPS, SWEEPABLE, same_swept_value
from ._order import sort_rows
from ._tables import booktabs

ABLATION_COLUMNS: tuple[tuple[str, str, float, int], ...] = tuple(
    (cid, head, scale, 3 if cid == "gbops" else dec)
    for cid, head, scale, dec in COLUMNS
    if cid != "paper_gops"
)


def run_config(root: str | Path) -> dict[str, Any] | None:
    """The ``config`` dict of ``root/config.json`` (written by ``run_grid``), or ``None``."""
    try:
        return dict(json.loads((Path(root) / "config.json").read_text())["config"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def reference_values(config: dict[str, Any] | None) -> dict[str, float]:
    """The run's own value of every sweepable field (GridConfig defaults without a config)."""
    base = GridConfig().to_dict()
    src = config or {}
    return {f: float(src.get(f, base[f])) for f in SWEEPABLE if f not in NAME_SWEEPS}


def ablation_cells(cells: pl.DataFrame) -> pl.DataFrame:
    """The cells of the ablation table: numeric sweep variants off the frontier (a sweep of
    names, or a variant at a budget, goes to :mod:`fq_bench.grid._objectives`)."""
    field_name = pl.col("variant").str.split_exact("=", 1).struct.field("field_0")
    keep = (pl.col("variant") != "") & (pl.col("budget") == "")
    return cells.filter(keep & ~field_name.is_in(list(NAME_SWEEPS)))


def ablation_frame(cells: pl.DataFrame, reference: dict[str, float]) -> pl.DataFrame:
    """One row per (dataset, model, method, swept field, value) over the ablation cells.

    Columns: keys, labels, ``field``, ``value``, ``ref`` (value == the run's own setting),
    ``n_seeds``, and per metric ``<m>_mean``, ``<m>_std`` (ddof=1), ``<m>_ci95_low``,
    ``<m>_ci95_high`` (Student t, ``fq_fairmetrics.seed_summary``; NaN with one seed), in raw
    units (fractions, bits). Order: datasets as :data:`DATASETS`, models as in Table 1,
    fields by first appearance, values ascending.
    """
    from fq_fairmetrics import seed_summary

    ab = ablation_cells(cells)
    if ab.is_empty():
        raise ValueError("no ablation cells to summarize")
    split = pl.col("variant").str.split_exact("=", 1).struct
    ab = ab.with_columns(
        split.field("field_0").alias("field"),
        split.field("field_1").cast(pl.Float64).alias("value"),
    )
    rows = []
    keys = ["dataset", "model", "method", "variant", "field", "value"]
    for (ds, mo, me, var, fld, val), part in ab.group_by(keys, maintain_order=True):
        ref = reference.get(fld)
        row: dict[str, Any] = {
            "dataset": ds, "model": mo, "method": me, "variant": var,
            "dataset_label": part["dataset_label"][0], "model_label": part["model_label"][0],
            "method_label": part["method_label"][0], "field": fld, "value": float(val),
            "ref": ref is not None and same_swept_value(val, ref),
            "n_seeds": part.height,
        }  # fmt: skip
        for c in METRIC_IDS:
            st = seed_summary(part[c].to_numpy())
            row |= {
                f"{c}_mean": st.mean, f"{c}_std": st.std,
                f"{c}_ci95_low": st.ci95_low, f"{c}_ci95_high": st.ci95_high,
            }  # fmt: skip
        rows.append(row)
    return sort_rows(pl.DataFrame(rows))


def _ab_cell(r: dict[str, Any], cid: str, scale: float, dec: int) -> str:
    mean, std = r[f"{cid}_mean"] * scale, r[f"{cid}_std"] * scale
    if math.isnan(std):
        return f"{mean:.{dec}f}"
    lo, hi = r[f"{cid}_ci95_low"] * scale, r[f"{cid}_ci95_high"] * scale
    return f"{mean:.{dec}f} ± {std:.{dec}f} [{lo:.{dec}f}, {hi:.{dec}f}]"


def _ablation_rows(ab: pl.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["Dataset", "Model", "Method", "Swept", "Value"]
    header += [h for _, h, _, _ in ABLATION_COLUMNS] + ["Seeds"]
    rows = []
    for r in ab.iter_rows(named=True):
        value = f"{r['value']:g}" + (" (ref)" if r["ref"] else "")
        row = [r["dataset_label"], r["model_label"], r["method_label"], r["field"], value]
        row += [_ab_cell(r, cid, scale, dec) for cid, _, scale, dec in ABLATION_COLUMNS]
        rows.append(row + [str(r["n_seeds"])])
    return header, rows


def ablation_markdown(ab: pl.DataFrame) -> str:
    """Markdown: ``mean ± std [95% t-interval]`` per cell; ``(ref)`` marks the run's own value."""
    header, rows = _ablation_rows(ab)
    align = ["---"] * 5 + ["---:"] * (len(header) - 5)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def ablation_latex(ab: pl.DataFrame, *, caption: str = "") -> str:
    """A booktabs table of :func:`ablation_markdown`'s rows."""
    header, rows = _ablation_rows(ab)
    return booktabs(header, rows, n_text=5, size=r"\scriptsize", caption=caption)
