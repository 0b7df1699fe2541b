"""Plots (matplotlib, Agg, PNG) from cell files: frontier, per-group accuracy, BAQ bits, ablations."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ._cells import CellKey, atomic_write_bytes
from ._config import DATASETS, METHOD_IDS


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


def _panels(n: int, width: float = 5.0, height: float = 3.6, max_cols: int = 4):
    """``n`` panels, at most ``max_cols`` per row (the full paper grid has 8 (data, model)
    pairs; one row of 8 made a 4000 px wide figure); unused trailing axes are hidden."""
    plt = _plt()
    cols = min(n, max_cols)
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained"
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _table_order(cells: pl.DataFrame) -> list[pl.Expr]:
    """Sort keys putting (dataset, model) pairs in Table 1's order (the store lists by id)."""
    from ._report import _model_order

    ds = {d: i for i, d in enumerate(DATASETS)}
    mo = _model_order(cells["model"].to_list())
    return [
        pl.col("dataset").replace_strict(ds, default=len(ds)),
        pl.col("model").replace_strict(mo, default=len(mo)),
    ]


def _sorted_raw(
    cells_raw: Sequence[tuple[CellKey, dict[str, Any]]],
) -> list[tuple[CellKey, dict[str, Any]]]:
    from ._report import _model_order

    mo = _model_order([k.model for k, _ in cells_raw])
    ds = {d: i for i, d in enumerate(DATASETS)}
    return sorted(cells_raw, key=lambda kr: (ds.get(kr[0].dataset, 99), mo[kr[0].model]))


def frontier(cells: pl.DataFrame, path: Path) -> Path:
    """Average bits (log2 axis) vs worst-group accuracy, one marker per method (mean ± std)."""
    t1 = cells.filter(pl.col("variant") == "")
    t1 = t1.sort(_table_order(t1))
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
    for key, res in _sorted_raw(cells_raw):
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
            arr = np.asarray(by[meth], dtype=np.float64)  # [seeds, groups], NaN = no test image
            seen = np.isfinite(arr).sum(axis=0)
            acc = 100 * np.where(seen > 0, np.nansum(arr, axis=0) / np.maximum(seen, 1), np.nan)
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
        # below the axes: inside, nine methods' legend hides the bars of the last groups
        ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    return _save(fig, path)


def baq_bits(cells_raw: Sequence[tuple[CellKey, dict[str, Any]]], path: Path) -> Path | None:
    """Learned FQ-BAQ bits per layer (mean over channels, then over seeds)."""
    per: dict[tuple[str, str], dict[str, list[float]]] = {}
    for key, res in _sorted_raw(cells_raw):
        if key.method != "fq-baq" or key.variant or not res["layer_bits"]:
            continue
        pair = (res["labels"]["dataset"], res["labels"]["model"])
        for name, bits, _n in res["layer_bits"]:
            per.setdefault(pair, {}).setdefault(name, []).append(bits)
    if not per:
        return None
    plt = _plt()
    widest = max(len(layers) for layers in per.values())
    fig, axes = plt.subplots(
        len(per), 1, figsize=(max(10.0, 0.12 * widest), 4.2 * len(per)), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    for ax, (pair, layers) in zip(axes[:, 0], per.items(), strict=False):
        names = list(layers)
        ax.bar(np.arange(len(names)), [float(np.mean(layers[n])) for n in names], color="C6")
        ax.set_xticks(np.arange(len(names)), names, rotation=90, fontsize=6)
        ax.set_ylabel("learned bits (mean)")
        ax.set_title(f"{pair[0]} {pair[1]}: FQ-BAQ bits per layer")
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


#: Ablation figure rows: (metric id, axis label, scale, valid range in plotted units).
ABLATION_METRICS: tuple[tuple[str, str, float, tuple[float, float]], ...] = (
    ("avg_bits", "average bits per weight", 1.0, (0.0, 32.0)),
    ("avg_acc", "AvgAcc (%)", 100.0, (0.0, 100.0)),
    ("worst_acc", "WorstAcc (%)", 100.0, (0.0, 100.0)),
    ("eodd", "EOdd", 1.0, (0.0, 2.0)),
)


def ablation_plots(ablation: pl.DataFrame, root: Path) -> list[Path]:
    """Fig. 2 style, one PNG per dataset (and model, when several): metric rows x swept fields.

    ``ablation``: :func:`fq_bench.grid._report.ablation_frame` (one row per swept value, with
    mean and 95% t-interval). Each panel draws, per method, the mean over seeds (line and
    markers) and the t-interval as a band; the run's own value of the field is a dashed vertical
    line (``ref``). The y range is clipped to the metric's valid range (a t-interval over few
    seeds can extend past it); a field swept over positive values spanning >= 10x gets a log x
    axis. Files: ``ablation_<dataset>.png``, or ``ablation_<dataset>__<model>.png`` when the
    frame holds several models.
    """
    out = []
    plt = _plt()
    several_models = ablation["model"].n_unique() > 1
    method_order = {m: i for i, m in enumerate(METHOD_IDS)}
    for (ds, mo), part in ablation.group_by(["dataset", "model"], maintain_order=True):
        fields = list(dict.fromkeys(part["field"].to_list()))
        methods = sorted(set(part["method"].to_list()), key=lambda m: method_order.get(m, 99))
        n_rows = len(ABLATION_METRICS)
        fig, axes = plt.subplots(
            n_rows, len(fields), figsize=(4.0 * len(fields) + 0.6, 2.5 * n_rows),
            squeeze=False, layout="constrained",
        )  # fmt: skip
        for j, f in enumerate(fields):
            pf = part.filter(pl.col("field") == f).sort("value")
            refs = sorted(set(pf.filter(pl.col("ref"))["value"].to_list()))
            all_values = pf["value"].to_numpy()
            for i, (m, label, scale, (vmin, vmax)) in enumerate(ABLATION_METRICS):
                ax = axes[i, j]
                seen: list[np.ndarray] = []
                for k, meth in enumerate(methods):
                    pm = pf.filter(pl.col("method") == meth)
                    if pm.is_empty():
                        continue
                    values = pm["value"].to_numpy()
                    mean = scale * pm[f"{m}_mean"].to_numpy()
                    lo = scale * pm[f"{m}_ci95_low"].to_numpy()
                    hi = scale * pm[f"{m}_ci95_high"].to_numpy()
                    color = f"C{i}" if len(methods) == 1 else f"C{k}"
                    name = pm["method_label"][0]
                    ax.fill_between(values, lo, hi, color=color, alpha=0.25, lw=0,
                                    label=f"{name} 95% CI")  # fmt: skip
                    ax.plot(values, mean, "o-", color=color, ms=4, label=f"{name} mean")
                    seen += [x[np.isfinite(x)] for x in (mean, lo, hi)]
                for r in refs:
                    ax.axvline(r, color="0.4", ls="--", lw=1, label="ref (run's value)")
                if all_values.min() > 0 and all_values.max() >= 10 * all_values.min():
                    ax.set_xscale("log")
                finite = np.concatenate(seen) if seen else np.zeros(0)
                if finite.size:
                    pad = max(0.05 * float(np.ptp(finite)), 0.02 * (vmax - vmin))
                    ax.set_ylim(
                        max(vmin, float(finite.min()) - pad), min(vmax, float(finite.max()) + pad)
                    )
                ax.set_ylabel(label)
                ax.set_xlabel(f"{f} (swept)")
                ax.grid(alpha=0.3)
                if i == 0:
                    ax.set_title(f)
                    ax.legend(fontsize=7)
        n = int(part["n_seeds"].min())
        spread = (
            f"mean and 95% t-interval over {n} seeds"
            if n > 1
            else "one seed: mean only, a t-interval needs >= 2 seeds"
        )
        fig.suptitle(f"{part['dataset_label'][0]} {part['model_label'][0]}: ablations ({spread})")
        name = f"ablation_{ds}__{mo}.png" if several_models else f"ablation_{ds}.png"
        out.append(_save(fig, root / name))
    return out


def make_plots(
    root: Path,
    cells: pl.DataFrame,
    cells_raw: Sequence[tuple[CellKey, dict[str, Any]]],
    *,
    ablation: pl.DataFrame | None = None,
) -> list[Path]:
    """Write every plot that the finished cells support; returns their paths.

    ``ablation``: the report's ablation frame (built here with GridConfig defaults as the
    reference values when not given).
    """
    made = []
    if not cells.filter(pl.col("variant") == "").is_empty():
        made.append(frontier(cells, root / "frontier.png"))
        made.append(group_bars(cells_raw, root / "group_accuracy.png"))
        p = baq_bits(cells_raw, root / "baq_bits.png")
        if p is not None:
            made.append(p)
    if not cells.filter(pl.col("variant") != "").is_empty():
        if ablation is None:
            from ._report import ablation_frame, reference_values

            ablation = ablation_frame(cells, reference_values(None))
        made += ablation_plots(ablation, root)
    return made
