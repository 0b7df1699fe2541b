"""Plots (matplotlib, Agg, PNG) from cell files: frontier, per-group accuracy, BAQ bits, ablations."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ._cells import CellKey, atomic_write_bytes
from ._config import METHOD_IDS


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _panels(n: int, width: float = 5.0, height: float = 3.6):
    plt = _plt()
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(axes[0])


def frontier(cells: pl.DataFrame, path: Path) -> Path:
    """Average bits (log2 axis) vs worst-group accuracy, one marker per method (mean ± std)."""
    t1 = cells.filter(pl.col("variant") == "")
    pairs = list(
        dict.fromkeys(zip(t1["dataset_label"].to_list(), t1["model_label"].to_list(), strict=False))
    )
    fig, axes = _panels(len(pairs))
    for ax, (ds, mo) in zip(axes, pairs, strict=False):
        part = t1.filter((pl.col("dataset_label") == ds) & (pl.col("model_label") == mo))
        for i, meth in enumerate(m for m in METHOD_IDS if m in part["method"].to_list()):
            p = part.filter(pl.col("method") == meth)
            x, y = p["avg_bits"].to_numpy(), 100 * p["worst_acc"].to_numpy()
            ax.errorbar(
                x.mean(), y.mean(), xerr=x.std(ddof=1) if len(x) > 1 else 0,
                yerr=y.std(ddof=1) if len(y) > 1 else 0, fmt="o", capsize=3,
                color=f"C{i}", label=p["method_label"][0],
            )  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xlabel("average bits per weight")
        ax.set_ylabel("worst-group accuracy (%)")
        ax.set_title(f"{ds} {mo}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def group_bars(cells_raw: Sequence[tuple[CellKey, dict[str, Any]]], path: Path) -> Path:
    """Per-group accuracy (mean over seeds), grouped bars per method, one panel per (data, model)."""
    per: dict[tuple[str, str], dict[str, list[list[float]]]] = {}
    names: dict[tuple[str, str], list[str]] = {}
    labels: dict[str, str] = {}
    for key, res in cells_raw:
        if key.variant:
            continue
        pair = (res["labels"]["dataset"], res["labels"]["model"])
        per.setdefault(pair, {}).setdefault(key.method, []).append(res["group_acc"])
        names[pair] = res["group_names"]
        labels[key.method] = res["labels"]["method"]
    fig, axes = _panels(max(len(per), 1), width=6.0)
    for ax, (pair, by) in zip(axes, per.items(), strict=False):
        methods = [m for m in METHOD_IDS if m in by]
        groups = names[pair]
        width = 0.8 / max(len(methods), 1)
        xs = np.arange(len(groups))
        for i, meth in enumerate(methods):
            acc = 100 * np.nanmean(np.asarray(by[meth], dtype=np.float64), axis=0)
            ax.bar(
                xs + (i - (len(methods) - 1) / 2) * width,
                acc,
                width,
                label=labels[meth],
                color=f"C{i}",
            )
        ax.set_xticks(xs, groups)
        ax.set_xlabel("group")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{pair[0]} {pair[1]}: per-group accuracy")
        ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def baq_bits(cells_raw: Sequence[tuple[CellKey, dict[str, Any]]], path: Path) -> Path | None:
    """Learned FQ-BAQ bits per layer (mean over channels, then over seeds)."""
    per: dict[tuple[str, str], dict[str, list[float]]] = {}
    for key, res in cells_raw:
        if key.method != "fq-baq" or key.variant or not res["layer_bits"]:
            continue
        pair = (res["labels"]["dataset"], res["labels"]["model"])
        for name, bits, _n in res["layer_bits"]:
            per.setdefault(pair, {}).setdefault(name, []).append(bits)
    if not per:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(per), 1, figsize=(10, 3.2 * len(per)), squeeze=False)
    for ax, (pair, layers) in zip(axes[:, 0], per.items(), strict=False):
        names = list(layers)
        ax.bar(np.arange(len(names)), [float(np.mean(layers[n])) for n in names], color="C6")
        ax.set_xticks(np.arange(len(names)), names, rotation=90, fontsize=6)
        ax.set_ylabel("learned bits (mean)")
        ax.set_title(f"{pair[0]} {pair[1]}: FQ-BAQ bits per layer")
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def ablation_plots(cells: pl.DataFrame, root: Path) -> list[Path]:
    """Fig. 2 style: per dataset, metric rows x swept-field columns, mean and 95% t-band."""
    from fq_fairmetrics import seed_summary

    ab = cells.filter(pl.col("variant") != "").with_columns(
        pl.col("variant").str.split_exact("=", 1).struct.field("field_0").alias("field"),
        pl.col("variant")
        .str.split_exact("=", 1)
        .struct.field("field_1")
        .cast(pl.Float64)
        .alias("value"),
    )
    out = []
    plt = _plt()
    for ds in dict.fromkeys(ab["dataset"].to_list()):
        part = ab.filter(pl.col("dataset") == ds)
        fields = list(dict.fromkeys(part["field"].to_list()))
        metrics = (
            ("avg_acc", "AvgAcc (%)", 100),
            ("worst_acc", "WorstAcc (%)", 100),
            ("eodd", "EOdd", 1),
        )
        fig, axes = plt.subplots(
            len(metrics), len(fields), figsize=(4.2 * len(fields), 8), squeeze=False
        )
        for j, f in enumerate(fields):
            pf = part.filter(pl.col("field") == f)
            values = sorted(set(pf["value"].to_list()))
            for i, (m, label, scale) in enumerate(metrics):
                stats = [
                    seed_summary(scale * pf.filter(pl.col("value") == v)[m].to_numpy())
                    for v in values
                ]
                mean = np.array([s.mean for s in stats])
                lo = np.array([s.ci95_low for s in stats])
                hi = np.array([s.ci95_high for s in stats])
                ax = axes[i, j]
                ax.plot(values, mean, "o-", color=f"C{i}")
                ax.fill_between(values, lo, hi, color=f"C{i}", alpha=0.25)
                if min(values) > 0:
                    ax.set_xscale("log")
                ax.set_xlabel(f)
                ax.set_ylabel(label)
                ax.grid(alpha=0.3)
        fig.suptitle(
            f"{part['dataset_label'][0]} {part['model_label'][0]}: FQ-BAQ ablations (95% CI)"
        )
        out.append(_save(fig, root / f"ablation_{ds}.png"))
    return out


def make_plots(
    root: Path, cells: pl.DataFrame, cells_raw: Sequence[tuple[CellKey, dict[str, Any]]]
) -> list[Path]:
    """Write every plot that the finished cells support; returns their paths."""
    made = []
    if not cells.filter(pl.col("variant") == "").is_empty():
        made.append(frontier(cells, root / "frontier.png"))
        made.append(group_bars(cells_raw, root / "group_accuracy.png"))
        p = baq_bits(cells_raw, root / "baq_bits.png")
        if p is not None:
            made.append(p)
    if not cells.filter(pl.col("variant") != "").is_empty():
        made += ablation_plots(cells, root)
    return made
