"""Table 1 as text (Markdown, CSV, LaTeX) and the observations printed under it.

Table 1's columns: Dataset, Model, Method, AvgBits, GBOPs (the paper's convention,
``paper_gops``), GBOPs (true, ``gbops``), AvgAcc, WorstAcc, Gap (percent), EOpp0, EOdd; each as
mean and sample std over seeds (std is left out with a single seed).
"""

from __future__ import annotations

import math

import polars as pl

from ._frames import COLUMNS, table1_cells
from ._names import METHOD_IDS


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


def booktabs(
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
    return booktabs(header, rows, n_text=n_text, size=r"\small", caption=caption)


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
