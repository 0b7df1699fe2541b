"""Tables from cell files alone: polars frames, then Markdown, CSV and LaTeX text.

Table 1's columns: Dataset, Model, Method, AvgBits, GBOPs (the paper's convention,
``paper_gops``), GBOPs (true, ``gbops``), AvgAcc, WorstAcc, Gap (percent), EOpp0, EOdd; each as
mean and sample std over seeds (std is left out with a single seed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from ._cells import CellKey, CellStore, atomic_write_bytes
from ._config import DATASETS, METHOD_IDS

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
_KEY_COLS = ("dataset", "model", "method", "variant")
_LABEL_COLS = ("dataset_label", "model_label", "method_label")


def cells_frame(cells: Iterable[tuple[CellKey, dict[str, Any]]]) -> pl.DataFrame:
    """One row per cell: key, labels, and the Table 1 metrics (fractions, not percent)."""
    rows = []
    for key, res in cells:
        m, c, lab = res["metrics"], res["cost"], res["labels"]
        rows.append(
            {
                **key.to_dict(),
                "dataset_label": lab["dataset"],
                "model_label": lab["model"],
                "method_label": lab["method"],
                "avg_bits": float(c["avg_bits"]),
                "paper_gops": float(c["paper_gops"]),
                "gbops": float(c["gbops"]),
                **{k: float(m[k]) for k in ("avg_acc", "worst_acc", "gap", "eopp0", "eodd")},
                "semisynthetic": bool(res.get("data", {}).get("semisynthetic", False)),
            }
        )
    schema = {
        "dataset": pl.String, "model": pl.String, "method": pl.String, "seed": pl.Int64,
        "variant": pl.String, "dataset_label": pl.String, "model_label": pl.String,
        "method_label": pl.String, **{k: pl.Float64 for k in METRIC_IDS}, "semisynthetic": pl.Boolean,
    }  # fmt: skip
    return pl.DataFrame(rows, schema=schema)


def _std(col: str) -> pl.Expr:
    # sample std; NaN (not 0, not null) when a single seed leaves it undefined
    return (
        pl.when(pl.len() > 1)
        .then(pl.col(col).std(ddof=1))
        .otherwise(float("nan"))
        .alias(f"{col}_std")
    )


def summary_frame(cells: pl.DataFrame) -> pl.DataFrame:
    """Mean and std over seeds per (dataset, model, method, variant), in Table 1 order.

    Order: datasets as in :data:`DATASETS`, models by first appearance, methods as in Table 1,
    variants by field then numeric value.
    """
    if cells.is_empty():
        raise ValueError("no finished cells to summarize")
    model_order = {m: i for i, m in enumerate(dict.fromkeys(cells["model"].to_list()))}
    agg = cells.group_by(list(_KEY_COLS)).agg(
        *(pl.col(c).first() for c in _LABEL_COLS),
        pl.len().alias("n_seeds"),
        *(pl.col(c).mean().alias(f"{c}_mean") for c in METRIC_IDS),
        *(_std(c) for c in METRIC_IDS),
    )
    var_field = pl.col("variant").str.split_exact("=", 1).struct.field("field_0")
    var_value = pl.col("variant").str.split_exact("=", 1).struct.field("field_1").cast(pl.Float64)
    agg = agg.with_columns(
        pl.col("dataset")
        .replace_strict({d: i for i, d in enumerate(DATASETS)}, default=99)
        .alias("_d"),
        pl.col("model").replace_strict(model_order, default=99).alias("_m"),
        pl.col("method")
        .replace_strict({m: i for i, m in enumerate(METHOD_IDS)}, default=99)
        .alias("_k"),
        var_field.fill_null("").alias("_vf"),
        var_value.fill_null(0.0).alias("_vv"),
    )
    agg = agg.sort(["_d", "_m", "_vf", "_vv", "_k"]).drop(["_d", "_m", "_k", "_vf", "_vv"])
    cols = [*_KEY_COLS, *_LABEL_COLS, "n_seeds"]
    for c in METRIC_IDS:
        cols += [f"{c}_mean", f"{c}_std"]
    return agg.select(cols)


def _cell(mean: float, std: float, scale: float, dec: int, always_std: bool) -> str:
    text = f"{mean * scale:.{dec}f}"
    if not math.isnan(std) and (always_std or std > 0):
        text += f" ± {std * scale:.{dec}f}"
    return text


def _rows(summary: pl.DataFrame) -> tuple[list[str], list[list[str]]]:
    with_variant = any(summary["variant"].to_list())
    header = ["Dataset", "Model", "Method", *(["Variant"] if with_variant else [])]
    header += [h for _, h, _, _ in COLUMNS] + ["Seeds"]
    rows = []
    for r in summary.iter_rows(named=True):
        row = [r["dataset_label"], r["model_label"], r["method_label"]]
        if with_variant:
            row.append(r["variant"])
        for cid, _, scale, dec in COLUMNS:
            # cost columns show a spread only when it exists (learned bits); metrics always
            always = cid not in ("avg_bits", "paper_gops", "gbops")
            row.append(_cell(r[f"{cid}_mean"], r[f"{cid}_std"], scale, dec, always))
        row.append(str(r["n_seeds"]))
        rows.append(row)
    return header, rows


def to_markdown(summary: pl.DataFrame) -> str:
    """A GitHub Markdown table (numbers right-aligned)."""
    header, rows = _rows(summary)
    n_text = 4 if "Variant" in header else 3
    align = ["---"] * n_text + ["---:"] * (len(header) - n_text)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(summary: pl.DataFrame) -> str:
    """Machine-readable: one row per table row, ``<metric>_mean``/``<metric>_std`` columns (raw
    units: fractions for accuracies, bits, GBOPs), 6 decimals."""
    return summary.write_csv(float_precision=6)


def _tex_escape(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("_", r"\_"),
        ("#", r"\#"),
    ):
        text = text.replace(a, b)
    return text


def to_latex(summary: pl.DataFrame, *, caption: str = "") -> str:
    """A booktabs ``table`` environment (``\\pm`` for the spread)."""
    header, rows = _rows(summary)
    n_text = 4 if "Variant" in header else 3
    spec = "l" * n_text + "r" * (len(header) - n_text)
    out = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
    ]
    out.append(" & ".join(_tex_escape(h) for h in header) + r" \\")
    out.append(r"\midrule")
    for r in rows:
        out.append(" & ".join(_tex_escape(c).replace(" ± ", r"$\pm$") for c in r) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        out.append(rf"\caption{{{_tex_escape(caption)}}}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def observations(summary: pl.DataFrame) -> list[str]:
    """Plain-language deltas vs FP32 (worst-group and average accuracy), computed, per cell group."""
    lines = []
    t1 = summary.filter(pl.col("variant") == "")
    for (ds, mo), part in t1.group_by(["dataset_label", "model_label"], maintain_order=True):
        by = {r["method"]: r for r in part.iter_rows(named=True)}
        if "fp32" not in by:
            continue
        ref = by["fp32"]
        bits = []
        for meth in METHOD_IDS[1:]:
            if meth in by:
                r = by[meth]
                dw = 100 * (r["worst_acc_mean"] - ref["worst_acc_mean"])
                da = 100 * (r["avg_acc_mean"] - ref["avg_acc_mean"])
                bits.append(f"{r['method_label']} {da:+.1f}/{dw:+.1f}")
        if bits:
            lines.append(
                f"{ds} {mo}: AvgAcc/WorstAcc change vs FP32 in points: " + ", ".join(bits) + "."
            )
    return lines


@dataclass(frozen=True, kw_only=True)
class Report:
    """The rebuilt report: the frames and the text written to ``table.md``/``.csv``/``.tex``."""

    cells: pl.DataFrame
    summary: pl.DataFrame
    markdown: str
    csv: str
    latex: str
    semisynthetic: bool
    notes: tuple[str, ...]
    plots: tuple[Path, ...]

    def text(self) -> str:
        """What the CLI prints: the data caveat, the table, and the observations."""
        head = "Table 1 (mean ± std over seeds; accuracies and Gap in %)"
        lines = [head]
        if self.semisynthetic:
            lines.append(
                "DATA IS SEMI-SYNTHETIC: real metadata rows (labels, groups) with generated "
                "pixels, not the paper's images; numbers are not comparable with the paper."
            )
        return "\n".join([*lines, "", self.markdown, *self.notes])


def build_report(root: str | Path, *, plots: bool = True) -> Report:
    """Rebuild ``table.md``, ``table.csv``, ``table.tex`` and the plots from ``root/cells`` alone."""
    root = Path(root)
    cells = cells_frame(CellStore(root).all())
    summary = summary_frame(cells)
    semi = bool(cells["semisynthetic"].any())
    md, csv = to_markdown(summary), to_csv(summary)
    caption = "FairQuant grid" + (" on semi-synthetic data" if semi else "")
    tex = to_latex(summary, caption=caption)
    header = "semi-synthetic data (real metadata, generated pixels)\n\n" if semi else ""
    atomic_write_bytes(root / "table.md", (header + md).encode())
    atomic_write_bytes(root / "table.csv", csv.encode())
    atomic_write_bytes(root / "table.tex", tex.encode())
    made: tuple[Path, ...] = ()
    if plots:
        from ._plots import make_plots

        made = tuple(make_plots(root, cells, CellStore(root).all()))
    return Report(
        cells=cells,
        summary=summary,
        markdown=md,
        csv=csv,
        latex=tex,
        semisynthetic=semi,
        notes=tuple(observations(summary)),
        plots=made,
    )
