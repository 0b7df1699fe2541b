"""Plots (matplotlib, Agg, PNG) from the report's frames: Table 1, per-group accuracy, BAQ bits,
the frontier, which group pays, ablations. Plots receive frames; they never read cell files."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ._cells import atomic_write_bytes
from ._names import DATASET_LABELS, METHOD_IDS, MODEL_LABELS, UNIFORM_BITS
from ._order import ordered_methods, ordered_pairs
from ._series import max_of, min_of


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


def method_color(method: str) -> str:
    """One color per method in every plot (its position in the grid's method order)."""
    return f"C{METHOD_IDS.index(method) % 10}" if method in METHOD_IDS else "0.3"


def _pairs(frame: pl.DataFrame) -> list[tuple[str, str]]:
    """The (dataset, model) pairs of ``frame`` in the grid's order."""
    return ordered_pairs(frame["dataset"].to_list(), frame["model"].to_list())


def _of(frame: pl.DataFrame, dataset: str, model: str) -> pl.DataFrame:
    return frame.filter((pl.col("dataset") == dataset) & (pl.col("model") == model))


def _title(part: pl.DataFrame) -> str:
    return f"{part['dataset_label'][0]} {part['model_label'][0]}"


def table1_bits(cells: pl.DataFrame, path: Path) -> Path:
    """Table 1's rows: average bits (log2 axis) vs worst-group accuracy, one marker per method
    (mean ± std over seeds)."""
    t1 = cells.filter((pl.col("variant") == "") & (pl.col("budget") == ""))
    pairs = _pairs(t1)
    fig, axes = _panels(len(pairs))
    for ax, (ds, mo) in zip(axes, pairs, strict=True):
        part = _of(t1, ds, mo)
        for i, meth in enumerate(ordered_methods(part["method"].to_list())):
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
        ax.set_title(f"{_title(part)}: Table 1")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def group_bars(groups: pl.DataFrame, path: Path) -> Path:
    """Per-group accuracy of Table 1's rows (mean over seeds), grouped bars per method, one panel
    per (dataset, model). ``groups``: :func:`fq_bench.grid._frames.groups_frame`."""
    t1 = groups.filter((pl.col("variant") == "") & (pl.col("budget") == ""))
    pairs = _pairs(t1)
    fig, axes = _panels(max(len(pairs), 1), width=6.0)
    for ax, (ds, mo) in zip(axes, pairs, strict=False):
        part = _of(t1, ds, mo)
        methods = ordered_methods(part["method"].to_list())
        names = part.sort("group_index").unique("group_index", maintain_order=True)["group"]
        width = 0.8 / max(len(methods), 1)
        xs = np.arange(len(names))
        for i, meth in enumerate(methods):
            pm = part.filter(pl.col("method") == meth)
            # mean over seeds of the groups that had test images (NaN = none)
            acc = (
                pm.group_by("group_index")
                .agg(pl.col("acc").fill_nan(None).mean())
                .sort("group_index")
            )
            ax.bar(xs + (i - (len(methods) - 1) / 2) * width,
                   100 * acc["acc"].fill_null(np.nan).to_numpy(), width,
                   label=pm["method_label"][0], color=f"C{i}")  # fmt: skip
        ax.set_xticks(xs, names.to_list())
        ax.set_xlabel("group")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{_title(part)}: per-group accuracy")
        # below the axes: inside, many methods' legend hides the bars of the last groups
        ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    return _save(fig, path)


def baq_bits(layer_bits: pl.DataFrame, path: Path) -> Path | None:
    """Learned FQ-BAQ bits per layer of Table 1's FQ-BAQ (mean over channels, then seeds)."""
    part = layer_bits.filter(
        (pl.col("method") == "fq-baq") & (pl.col("variant") == "") & (pl.col("budget") == "")
    )
    if part.is_empty():
        return None
    pairs = _pairs(part)
    plt = _plt()
    widest = int(max_of(part["position"])) + 1
    fig, axes = plt.subplots(
        len(pairs), 1, figsize=(max(10.0, 0.12 * widest), 4.2 * len(pairs)), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    for ax, (ds, mo) in zip(axes[:, 0], pairs, strict=True):
        pm = _of(part, ds, mo)
        per = pm.group_by("position").agg(pl.col("layer").first(), pl.col("bits").mean())
        per = per.sort("position")
        xs = np.arange(per.height)
        ax.bar(xs, per["bits"].to_numpy(), color="C6")
        ax.set_xticks(xs, per["layer"].to_list(), rotation=90, fontsize=6)
        ax.set_ylabel("learned bits (mean)")
        ax.set_title(f"{_title(pm)}: FQ-BAQ bits per layer")
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def frontier_plot(frontier: pl.DataFrame, cells: pl.DataFrame, path: Path) -> Path:
    """Worst-group accuracy against average bits: per mixed method one line over the budgets with
    its 95% t-interval band and every seed's value as a dot; the uniform rows as one dashed line
    (with their own band); FP32 as a horizontal band. One panel per (dataset, model). With
    ``--export onnx-int8`` columns (``int8_worst_acc``), the int8-activation file's mean WorstAcc
    as a cross beside each point.

    ``frontier``: :func:`fq_bench.grid._frontier.frontier_frame`; ``cells``: the cell frame (for
    the per-seed dots).
    """
    pairs = _pairs(frontier)
    fig, axes = _panels(len(pairs), width=6.5, height=4.6)
    for ax, (ds, mo) in zip(axes, pairs, strict=True):
        part = _of(frontier, ds, mo)
        fp = part.filter(pl.col("method") == "fp32")
        if not fp.is_empty():
            r = fp.row(0, named=True)
            lo, hi = r["worst_acc_low"], r["worst_acc_high"]
            if lo is not None and np.isfinite(lo):
                ax.axhspan(100 * lo, 100 * hi, color="0.85", lw=0, label="FP32 95% CI")
            ax.axhline(100 * r["worst_acc_mean"], color="0.4", lw=1, label="FP32 mean")
        uni = part.filter(pl.col("method").is_in(list(UNIFORM_BITS))).sort("avg_bits")
        lines = [("Uniform (U2..U8)", uni, "k", "--")]
        for meth in ordered_methods(part["method"].to_list()):
            if meth in UNIFORM_BITS or meth == "fp32":
                continue
            pm = part.filter(pl.col("method") == meth).sort("avg_bits")
            lines.append((pm["method_label"][0], pm, method_color(meth), "-"))
        per_seed = cells.filter(
            (pl.col("dataset") == ds) & (pl.col("model") == mo) & (pl.col("budget") != "")
            & (pl.col("variant") == "")
        )  # fmt: skip
        for label, pm, color, style in lines:
            if pm.is_empty():
                continue
            x = pm["avg_bits"].to_numpy()
            y = 100 * pm["worst_acc_mean"].to_numpy()
            lo = 100 * pm["worst_acc_low"].fill_null(np.nan).to_numpy()
            hi = 100 * pm["worst_acc_high"].fill_null(np.nan).to_numpy()
            ax.plot(x, y, style, marker="o", ms=4, color=color, label=label)
            if np.isfinite(lo).any():
                ax.fill_between(x, lo, hi, color=color, alpha=0.12, lw=0)
            meth = pm["method"][0]
            if meth not in UNIFORM_BITS:
                seeds = per_seed.filter(pl.col("method") == meth)
                ax.scatter(seeds["avg_bits"].to_numpy(), 100 * seeds["worst_acc"].to_numpy(),
                           s=9, color=color, alpha=0.6, lw=0)  # fmt: skip
            if "int8_worst_acc" in pm.columns:  # --export onnx-int8: the int8-activation file
                i8 = pm.filter(pl.col("int8_worst_acc").is_not_null())
                if not i8.is_empty():
                    ax.scatter(i8["avg_bits"].to_numpy(), 100 * i8["int8_worst_acc"].to_numpy(),
                               marker="x", s=30, color=color, label=f"{label}, int8 act.")  # fmt: skip
        # a t-interval over few seeds can run past [0, 100]: frame the means and the seeds
        shown = np.concatenate(
            [100 * part["worst_acc_mean"].to_numpy(), 100 * per_seed["worst_acc"].to_numpy()]
            + (
                [100 * part["int8_worst_acc"].drop_nulls().to_numpy()]
                if "int8_worst_acc" in part.columns
                else []
            )  # fmt: skip
        )
        pad = max(2.0, 0.1 * float(np.ptp(shown)))
        ax.set_ylim(max(0.0, float(shown.min()) - pad), min(100.0, float(shown.max()) + pad))
        ax.set_xlabel("average bits per weight (parameter-weighted)")
        ax.set_ylabel("worst-group accuracy (%)")
        n = int(min_of(part["seeds"]))
        title = f"{DATASET_LABELS.get(ds, ds)} {MODEL_LABELS.get(mo, mo)}"
        ax.set_title(f"{title}: frontier (mean, 95% t-interval over {n} seeds; dots: seeds)",
                     fontsize=9)  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    return _save(fig, path)


def group_drop(groups: pl.DataFrame, path: Path) -> Path | None:
    """Which group pays, and where: per group (one panel each, one row per (dataset, model)),
    the accuracy change against FP32 of the same seed (mean over seeds, points) at each budget,
    one line per mixed method; the uniform rows as a dashed line at their bit-widths."""
    fp = groups.filter(
        (pl.col("method") == "fp32") & (pl.col("variant") == "") & (pl.col("budget") == "")
    ).select("dataset", "model", "seed", "group_index", pl.col("acc").alias("acc_fp32"))
    cells = groups.filter(
        (pl.col("variant") == "")
        & ((pl.col("budget") != "") | pl.col("method").is_in(list(UNIFORM_BITS)))
    )
    if fp.is_empty() or cells.filter(pl.col("budget") != "").is_empty():
        return None
    d = cells.join(fp, on=["dataset", "model", "seed", "group_index"])
    d = d.with_columns(
        pl.when(pl.col("budget") != "")
        .then(pl.col("budget").replace("", None).cast(pl.Float64))
        .otherwise(pl.col("method").replace_strict(UNIFORM_BITS, default=None,
                                                  return_dtype=pl.Float64))
        .alias("bits"),
        (100 * (pl.col("acc") - pl.col("acc_fp32"))).fill_nan(None).alias("change"),
    )  # fmt: skip
    pairs = _pairs(d)
    n_groups = int(max_of(d["group_index"])) + 1
    plt = _plt()
    fig, axes = plt.subplots(
        len(pairs), n_groups, figsize=(3.2 * n_groups, 3.0 * len(pairs) + 0.8), squeeze=False,
        layout="constrained", sharey="row",
    )  # fmt: skip
    handles: dict[str, Any] = {}
    for row, (ds, mo) in enumerate(pairs):
        part = _of(d, ds, mo)
        names = part.sort("group_index").unique("group_index", maintain_order=True)
        methods = ordered_methods(part["method"].to_list())
        mixed = [m for m in methods if m not in UNIFORM_BITS]
        for gi in range(n_groups):
            ax = axes[row, gi]
            pg = part.filter(pl.col("group_index") == gi)
            series = [("Uniform", pg.filter(pl.col("method").is_in(list(UNIFORM_BITS))), "k",
                       "--")]  # fmt: skip
            for meth in mixed:
                pm = pg.filter(pl.col("method") == meth)
                if not pm.is_empty():
                    series.append((pm["method_label"][0], pm, method_color(meth), "-"))
            for label, pm, color, style in series:
                if pm.is_empty():
                    continue
                mean = pm.group_by("bits").agg(pl.col("change").mean()).sort("bits")
                (h,) = ax.plot(mean["bits"].to_numpy(), mean["change"].fill_null(np.nan).to_numpy(),
                               style, marker="o", ms=3, color=color, label=label)  # fmt: skip
                handles.setdefault(label, h)
            ax.axhline(0, color="0.5", lw=0.8)
            name = names.filter(pl.col("group_index") == gi)["group"]
            ax.set_title(f"{_title(part)}: group {name[0] if len(name) else gi}", fontsize=8)
            ax.set_xlabel("bits per weight")
            if gi == 0:
                ax.set_ylabel("accuracy change vs FP32 (points)")
            ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center",
               ncol=min(len(handles), 5), fontsize=7)  # fmt: skip
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

    ``ablation``: :func:`fq_bench.grid._ablation.ablation_frame` (one row per swept value, with
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
    for (ds, mo), part in ablation.group_by(["dataset", "model"], maintain_order=True):
        fields = list(dict.fromkeys(part["field"].to_list()))
        methods = ordered_methods(part["method"].to_list())
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
        n = int(min_of(part["n_seeds"]))
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
    *,
    groups: pl.DataFrame,
    layer_bits: pl.DataFrame,
    ablation: pl.DataFrame | None = None,
    frontier: pl.DataFrame | None = None,
) -> list[Path]:
    """Write every plot the given frames support; returns their paths.

    ``cells``, ``groups``, ``layer_bits``: the report's cell, per-group and per-layer frames;
    ``ablation`` and ``frontier``: the report's ablation and frontier frames (``None``: no
    such plots).
    """
    made = []
    if not cells.filter((pl.col("variant") == "") & (pl.col("budget") == "")).is_empty():
        made.append(table1_bits(cells, root / "table1_bits.png"))
        made.append(group_bars(groups, root / "group_accuracy.png"))
        p = baq_bits(layer_bits, root / "baq_bits.png")
        if p is not None:
            made.append(p)
    if frontier is not None and not frontier.is_empty():
        made.append(frontier_plot(frontier, cells, root / "frontier.png"))
        p = group_drop(groups, root / "group_drop.png")
        if p is not None:
            made.append(p)
    if ablation is not None:
        made += ablation_plots(ablation, root)
    return made


#: The figure helpers under public names (the objectives plots draw the same way).
new_panels, save_png = _panels, _save
