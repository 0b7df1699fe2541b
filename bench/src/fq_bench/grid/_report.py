"""Tables from cell files alone: polars frames, then Markdown, CSV and LaTeX text.

Table 1's columns: Dataset, Model, Method, AvgBits, GBOPs (the paper's convention,
``paper_gops``), GBOPs (true, ``gbops``), AvgAcc, WorstAcc, Gap (percent), EOpp0, EOdd; each as
mean and sample std over seeds (std is left out with a single seed).

Ablation cells (a ``variant`` ``"<field>=<value>"``) go to their own table, ``ablation.md``/
``.csv``/``.tex``: one row per swept value with mean ± sample std and the 95% Student-t interval
over seeds (METHOD.md section 7); the row whose value equals the run's own setting of the field
(``config.json``; the GridConfig default without one) is marked ``ref``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from ._cells import CellKey, CellStore, atomic_write_bytes, read_cell_fingerprints, select_config
from ._config import (
    DATASET_LABELS,
    DATASETS,
    METHOD_IDS,
    NAME_SWEEPS,
    SWEEPABLE,
    GridConfig,
    same_swept_value,
)
from ._frontier import (
    best_lines,
    effects_frame,
    effects_markdown,
    frontier_frame,
    frontier_markdown,
    has_frontier,
    seeds_frame,
)
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


def _std(col: str) -> pl.Expr:
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
        *(_std(c) for c in METRIC_IDS),
    )
    cols = [*_KEY_COLS, *_LABEL_COLS, "n_seeds"]
    for c in METRIC_IDS:
        cols += [f"{c}_mean", f"{c}_std"]
    return sort_rows(agg.select(cols))


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
    return summary.drop("budget").write_csv(float_precision=6)


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


def _booktabs(
    header: list[str], rows: list[list[str]], *, n_text: int, size: str, caption: str
) -> str:
    """A booktabs ``table``: ``n_text`` left-aligned columns, the rest right-aligned."""
    spec = "l" * n_text + "r" * (len(header) - n_text)
    out = [r"\begin{table}[t]", r"\centering", size, rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    out.append(" & ".join(_tex_escape(h) for h in header) + r" \\")
    out.append(r"\midrule")
    for r in rows:
        out.append(" & ".join(_tex_escape(c).replace(" ± ", r"$\pm$") for c in r) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        out.append(rf"\caption{{{_tex_escape(caption)}}}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def to_latex(summary: pl.DataFrame, *, caption: str = "") -> str:
    """A booktabs ``table`` environment (``\\pm`` for the spread)."""
    header, rows = _rows(summary)
    n_text = 4 if "Variant" in header else 3
    return _booktabs(header, rows, n_text=n_text, size=r"\small", caption=caption)


#: The rows that train after FP32 (compared with the ``fp32-ft`` control when it was run).
FINE_TUNED: tuple[str, ...] = ("lin", "guo", "fq-qat", "fq-baq")


def _paired_changes(part: pl.DataFrame, ref_method: str, methods: tuple[str, ...]) -> list[str]:
    """``"<label> <dAvg> / <dWorst>"`` per method of ``methods`` present, paired by seed."""
    ref = part.filter(pl.col("method") == ref_method).select("seed", "avg_acc", "worst_acc")
    bits = []
    for meth in methods:
        rows = part.filter(pl.col("method") == meth)
        paired = rows.join(ref, on="seed", suffix="_ref")
        if paired.is_empty():
            continue
        parts = []
        for col in ("avg_acc", "worst_acc"):
            d = 100 * (paired[col] - paired[f"{col}_ref"]).to_numpy()
            mean = d.mean() if round(d.mean(), 1) != 0 else 0.0  # no "-0.0"
            parts.append(f"{mean:+.1f}" + (f" ± {d.std(ddof=1):.1f}" if len(d) > 1 else ""))
        bits.append(f"{rows['method_label'][0]} {parts[0]} / {parts[1]}")
    return bits


def observations(cells: pl.DataFrame) -> list[str]:
    """Per (dataset, model): each method's AvgAcc/WorstAcc change vs FP32 in points, and, when the
    ``fp32-ft`` control was run, each fine-tuned method's change vs that control.

    ``cells``: :func:`cells_frame`. Changes are paired by seed (a method's cell starts from the
    FP32 checkpoint of its seed), then summarized as mean ± sample std over the paired seeds (the
    std is left out with one seed). Ablation variants are ignored.
    """
    lines = []
    t1 = table1_cells(cells)
    for (ds, mo), part in t1.group_by(["dataset_label", "model_label"], maintain_order=True):
        for ref_method, methods, what in (
            ("fp32", METHOD_IDS[1:], "FP32"),
            ("fp32-ft", FINE_TUNED, "FP32 + FT (control: the same extra training, unquantized)"),
        ):
            n = part.filter(pl.col("method") == ref_method).height
            bits = _paired_changes(part, ref_method, methods) if n else []
            if bits:
                lines.append(
                    f"{ds} {mo}: AvgAcc / WorstAcc change vs {what} in points, paired by seed "
                    f"({n} seed{'s' if n > 1 else ''}; mean ± std): " + ", ".join(bits) + "."
                )
    return lines


#: Ablation table columns: (column id, header, scale, decimals).
#: Table 1's, without the paper-convention GBOPs and with a third decimal on the true GBOPs.
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
    return _booktabs(header, rows, n_text=5, size=r"\scriptsize", caption=caption)


def provenance(
    cells_raw: Iterable[tuple[CellKey, dict[str, Any]]], config: dict[str, Any] | None
) -> tuple[str, ...]:
    """``Data:`` lines (per dataset, from the cells) and a ``Weights:`` line (from the config)."""
    data: dict[str, dict[str, Any]] = {}
    for key, res in cells_raw:
        data.setdefault(key.dataset, res.get("data", {}))
    lines = []
    for ds in sorted(data, key=lambda d: DATASETS.index(d) if d in DATASETS else 99):
        d, label = data[ds], DATASET_LABELS.get(ds, ds)
        size = f"{d.get('n_train', '?')} train / {d.get('n_test', '?')} test images"
        if d.get("semisynthetic", False):
            lines.append(
                f"Data: {label}: SEMI-SYNTHETIC (real metadata rows, generated pixels), {size}"
            )
        elif d.get("source") not in (None, "semisynthetic"):
            lines.append(f"Data: {label}: real images from {d['source']}, {size}")
        else:
            lines.append(f"Data: {label}: source not recorded in the cells")
    if config is None:
        lines.append("Weights: not recorded (no config.json next to cells/)")
    elif not config.get("pretrained"):
        lines.append("Weights: random initialization (pretrained=False), FP32 trained from scratch")
    elif config.get("weights_dir"):
        lines.append(
            f"Weights: ImageNet-pretrained, loaded from {config['weights_dir']}/<model>.safetensors"
        )
    else:
        lines.append(
            "Weights: ImageNet-pretrained, timm's default weights from the Hugging Face hub"
        )
    return tuple(lines)


@dataclass(frozen=True, kw_only=True)
class Report:
    """The rebuilt report: the frames and the text written to ``table.*`` and ``ablation.*``.

    ``summary``/``markdown``/``csv``/``latex`` hold Table 1's rows (variant ``""``; empty text
    when the run has none); ``ablation`` and ``ablation_*`` the swept FQ-BAQ rows (``None``/empty
    without sweeps). ``provenance``: the Data and Weights lines; ``tables``: the files written.
    """

    cells: pl.DataFrame
    summary: pl.DataFrame
    markdown: str
    csv: str
    latex: str
    semisynthetic: bool
    notes: tuple[str, ...]
    plots: tuple[Path, ...]
    ablation: pl.DataFrame | None = None
    ablation_markdown: str = ""
    ablation_csv: str = ""
    ablation_latex: str = ""
    provenance: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    frontier: pl.DataFrame | None = None
    frontier_markdown: str = ""
    effects: pl.DataFrame | None = None
    effects_markdown: str = ""
    frontier_summary: tuple[str, ...] = ()
    objectives: pl.DataFrame | None = None
    ignored: tuple[CellKey, ...] = ()
    failed: tuple[tuple[CellKey, str], ...] = ()

    def text(self) -> str:
        """What the CLI prints: the data caveat, provenance, the tables, and the observations."""
        lines: list[str] = list(self.warnings())
        if self.semisynthetic:
            lines.append(
                "DATA IS SEMI-SYNTHETIC: real metadata rows (labels, groups) with generated "
                "pixels, not the paper's images; numbers are not comparable with the paper."
            )
        lines += list(self.provenance)
        if self.markdown:
            lines += [
                "",
                "Table 1 (mean ± std over seeds; accuracies and Gap in %)",
                "",
                self.markdown,
            ]
        if self.frontier_markdown:
            lines += [
                "",
                "Frontier (mean [95% t-interval] over seeds, %; ΔWorst vs blind: WorstAcc minus "
                "the group-blind control's at the same budget, paired by seed, in points, with "
                "its 95% t-interval over seeds; test images: the 95% interval of the same mean "
                "over resamples of the test set; resolved = both intervals exclude 0)",
                "",
                self.frontier_markdown,
            ]
        if self.effects_markdown:
            lines += [
                "FairQuant's two ingredients apart (2x2 design; paired by seed, points, "
                "95% t-interval over seeds and over test images)",
                "",
                self.effects_markdown,
            ]
        if self.frontier_summary:
            lines += ["Frontier summary:", *(f"- {line}" for line in self.frontier_summary), ""]
        if self.ablation_markdown:
            lines += [
                "",
                "Ablations (mean ± sample std [95% t-interval] over seeds; accuracies and Gap "
                "in %; (ref) = the run's own value of the swept field)",
                "",
                self.ablation_markdown,
            ]
        return "\n".join([*lines, *self.notes])

    def warnings(self) -> tuple[str, ...]:
        """Lines about cells left out of the tables: of another config, or failed."""
        out = []
        if self.ignored:
            out.append(
                f"{len(self.ignored)} cell(s) of another config ignored (kept on disk in cells/; "
                "the tables hold one config per model, the one config.json names)"
            )
        if self.failed:
            out.append(f"{len(self.failed)} cell(s) failed (details in failed/):")
            out += [f"  {key.id}: {error}" for key, error in self.failed]
        return tuple(out)


def build_report(root: str | Path, *, plots: bool = True) -> Report:
    """Rebuild the tables and plots of ``root`` from ``root/cells`` (plus ``config.json``, when
    present, for the Weights line and the ablations' reference values).

    The tables hold, per model, only the cells of the config ``config.json`` records for it
    (without one: the fingerprint most of the model's cells carry); cells of another config stay
    on disk and are counted in ``Report.ignored``, never averaged in. Failed cells are listed.

    Writes ``table.md``/``.csv``/``.tex`` when there are Table 1 cells and ``ablation.md``/
    ``.csv``/``.tex`` when there are ablation cells.
    """
    root = Path(root)
    store = CellStore(root)
    raw, ignored = select_config(store.entries(), read_cell_fingerprints(root))
    kept = {key for key, _ in raw}
    failed = tuple((k, e) for k, e in store.failures() if k not in kept)
    cells = cells_frame(raw)
    summary = summary_frame(cells)
    config = run_config(root)
    semi = bool(cells["semisynthetic"].any())
    prov = provenance(raw, config)
    head = "".join(f"{line}  \n" for line in prov) + "\n"
    written: list[str] = []
    t1 = table1_cells(summary)
    md = csv = tex = ""
    if not t1.is_empty():
        md, csv = to_markdown(t1), to_csv(t1)
        caption = "FairQuant grid" + (" on semi-synthetic data" if semi else "")
        tex = to_latex(t1, caption=caption)
        atomic_write_bytes(root / "table.md", (head + md).encode())
        atomic_write_bytes(root / "table.csv", csv.encode())
        atomic_write_bytes(root / "table.tex", tex.encode())
        written += ["table.md", "table.csv", "table.tex"]
    ab = None
    ab_md = ab_csv = ab_tex = ""
    if not ablation_cells(cells).is_empty():
        ab = ablation_frame(cells, reference_values(config))
        ab_md, ab_csv = ablation_markdown(ab), ab.write_csv(float_precision=6)
        caption = "FQ-BAQ ablations, mean, std and 95% t-interval over seeds" + (
            " (semi-synthetic data)" if semi else ""
        )
        ab_tex = ablation_latex(ab, caption=caption)
        atomic_write_bytes(root / "ablation.md", (head + ab_md).encode())
        atomic_write_bytes(root / "ablation.csv", ab_csv.encode())
        atomic_write_bytes(root / "ablation.tex", ab_tex.encode())
        written += ["ablation.md", "ablation.csv", "ablation.tex"]
    fr = eff = None
    fr_md = eff_md = ""
    fr_lines: tuple[str, ...] = ()
    if has_frontier(cells):
        fr, eff = frontier_frame(cells), effects_frame(cells)
        fr_md, eff_md = frontier_markdown(fr), effects_markdown(eff)
        fr_lines = tuple(best_lines(cells, fr))
        body = head + fr_md + "\n" + eff_md + "\n" + "".join(f"- {line}\n" for line in fr_lines)
        atomic_write_bytes(root / "frontier.md", body.encode())
        atomic_write_bytes(root / "frontier.csv", fr.write_csv(float_precision=6).encode())
        atomic_write_bytes(
            root / "frontier_seeds.csv", seeds_frame(cells).write_csv(float_precision=6).encode()
        )
        atomic_write_bytes(root / "frontier_effects.csv", eff.write_csv(float_precision=6).encode())
        written += ["frontier.md", "frontier.csv", "frontier_seeds.csv", "frontier_effects.csv"]
    from ._objectives import write_objectives

    objectives, obj_files, obj_plots = write_objectives(root, cells, raw, head=head, plots=plots)
    written += obj_files
    made: tuple[Path, ...] = ()
    if plots:
        from ._plots import make_plots

        made = tuple(
            make_plots(
                root,
                cells,
                groups=groups_frame(raw),
                layer_bits=layer_bits_frame(raw),
                ablation=ab,
                frontier=fr,
            )
        ) + tuple(obj_plots)
    return Report(
        cells=cells,
        summary=t1,
        markdown=md,
        csv=csv,
        latex=tex,
        semisynthetic=semi,
        notes=tuple(observations(cells)),
        plots=made,
        ablation=ab,
        ablation_markdown=ab_md,
        ablation_csv=ab_csv,
        ablation_latex=ab_tex,
        provenance=prov,
        tables=tuple(written),
        frontier=fr,
        frontier_markdown=fr_md,
        effects=eff,
        effects_markdown=eff_md,
        frontier_summary=fr_lines,
        objectives=objectives,
        ignored=tuple(ignored),
        failed=failed,
    )
