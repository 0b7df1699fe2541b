"""The fairness-compression frontier: every method at matched budgets, against a group-blind control.

From the cell frame (:func:`fq_bench.grid._report.cells_frame`) alone:

- :func:`frontier_frame`: one row per (dataset, model, method, budget): cost, WorstAcc / AvgAcc /
  Gap as the mean over seeds with the 95% Student-t interval, and for every mixed method its
  worst-group difference against ``blind`` (same budget, same seed, same FP32 checkpoint, same
  training batches), paired by seed, with the t-interval of the paired differences.
- :func:`effects_frame`: the 2x2 design's two ingredients apart, per budget (allocation:
  ``fq-alloc - blind`` and ``fq-qat - blind-fair``; fairness term: ``blind-fair - blind`` and
  ``fq-qat - fq-alloc``).
- :func:`paired_worst`: a paired WorstAcc difference with its two intervals, over seeds (training
  noise: the t-interval of the per-seed differences) and over test images (sampling noise: a
  paired bootstrap of the seed-mean difference that redraws the shared test set within each
  group). The seed interval alone cannot see the test set's finiteness: five seeds that each
  differ by the same single image give a zero-width interval.
- :func:`verdict`: the one rule that calls a difference resolved: both intervals exclude 0, on
  the same side.

Accuracies are fractions in the frames and CSVs, points (percent) in Markdown and printed text.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import polars as pl

from ._names import CONTROL_METHOD, METHOD_LABELS, MIXED_METHODS, UNIFORM_BITS
from ._order import sort_rows
from ._series import mean_of

#: A seed "collapses" when its worst group falls more than this far (fraction) below the control.
COLLAPSE_DROP = 0.05

#: Test-set resamples behind each paired difference's image interval.
IMAGE_RESAMPLES = 2000

#: The ingredient contrasts of the 2x2 design: (name, ingredient, minuend, subtrahend).
EFFECTS: tuple[tuple[str, str, str, str], ...] = (
    ("allocation, without L_fair", "allocation", "fq-alloc", "blind"),
    ("allocation, with L_fair", "allocation", "fq-qat", "blind-fair"),
    ("fairness term, group-blind bits", "fairness term", "blind-fair", "blind"),
    ("fairness term, balanced bits", "fairness term", "fq-qat", "fq-alloc"),
)

#: frontier.csv's columns, in order (accuracies as fractions).
FRONTIER_COLUMNS: tuple[str, ...] = (
    "dataset", "model", "method", "method_label", "target_bits", "avg_bits", "paper_gops",
    "size_bytes", "worst_acc_mean", "worst_acc_std", "worst_acc_low", "worst_acc_high",
    "avg_acc_mean", "avg_acc_std", "avg_acc_low", "avg_acc_high", "gap_mean", "gap_std",
    "gap_low", "gap_high", "eodd_mean", "seeds",
    "worst_acc_by_seed", "d_worst_vs_blind", "d_worst_vs_blind_low", "d_worst_vs_blind_high",
    "d_worst_vs_blind_img_low", "d_worst_vs_blind_img_high", "d_worst_vs_blind_verdict", "d_avg_vs_blind", "d_avg_vs_blind_low", "d_avg_vs_blind_high",
    "collapses_vs_blind",
)  # fmt: skip


def verdict(low: float, high: float, image_low: float, image_high: float) -> str:
    """``"resolved"`` when the seed interval ``[low, high]`` and the test-image interval
    ``[image_low, image_high]`` both exclude 0 on the same side, else ``"not resolved"``.

    An undefined interval (NaN bounds: fewer than two seeds, or no stored test predictions) is
    ``"not resolved"``: a difference is never called without both intervals.
    """
    if any(math.isnan(x) for x in (low, high, image_low, image_high)):
        return "not resolved"
    above, below = low > 0 and image_low > 0, high < 0 and image_high < 0
    return "resolved" if above or below else "not resolved"


def t_interval(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and 95% Student-t interval over seeds
    (``fq_fairmetrics.seed_summary``); NaN bounds with one value, all NaN with none."""
    from fq_fairmetrics import seed_summary

    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan, math.nan
    st = seed_summary(arr)
    return st.mean, st.ci95_low, st.ci95_high


def frontier_cells(cells: pl.DataFrame) -> pl.DataFrame:
    """The cells the frontier draws on: every budget cell, and the budget-free FP32 and uniform
    cells (Table 1's), none of them a sweep variant (those: :mod:`fq_bench.grid._objectives`)."""
    ref = (pl.col("budget") == "") & pl.col("method").is_in(["fp32", *UNIFORM_BITS])
    return cells.filter(((pl.col("budget") != "") | ref) & (pl.col("variant") == ""))


def has_frontier(cells: pl.DataFrame) -> bool:
    """Whether ``cells`` hold any frontier (budget) cell."""
    return not cells.filter(pl.col("budget") != "").is_empty()


def paired_differences(part: pl.DataFrame, control: pl.DataFrame, col: str) -> np.ndarray:
    """``part[col] - control[col]`` per seed present in both (sorted by seed)."""
    joined = part.select("seed", col).join(control.select("seed", col), on="seed", suffix="_c")
    joined = joined.sort("seed")
    return (joined[col] - joined[f"{col}_c"]).to_numpy()


class PairedWorst(NamedTuple):
    """A paired WorstAcc difference ``a - b`` (fractions) over the seeds both ran.

    ``values``: per-seed differences (sorted by seed); ``mean``, ``low``, ``high``: their mean
    and 95% t-interval; ``image_low``, ``image_high``: the 95% percentile interval of the
    seed-mean difference over :data:`IMAGE_RESAMPLES` paired test-set resamples (NaN when a
    cell stored no test predictions); ``verdict``: :func:`verdict` of the two.
    """

    values: np.ndarray
    mean: float
    low: float
    high: float
    image_low: float
    image_high: float
    verdict: str


def resampled_worst(
    correct: np.ndarray, groups: np.ndarray, weights: dict[int, np.ndarray]
) -> np.ndarray:
    """``[R]`` WorstAcc (fraction) of one cell on each of ``R`` test-set resamples.

    ``correct``, ``groups``: ``[N]`` per test image; ``weights``: group code -> ``[R, n_g]``
    multiplicities of that group's images (in test-set order) in each resample, each row summing
    to ``n_g`` (:func:`image_weights`). A group's accuracy is its weighted mean; WorstAcc the
    minimum over groups, as ``fq_fairmetrics`` computes it.
    """
    accs = [w @ correct[groups == g].astype(np.float64) / w.shape[1] for g, w in weights.items()]
    return np.min(np.stack(accs, axis=1), axis=1)


def image_weights(groups: np.ndarray, resamples: int, seed: int = 0) -> dict[int, np.ndarray]:
    """Group code -> ``[resamples, n_g]`` multiplicities: each resample redraws every group's
    ``n_g`` test images with replacement (group sizes fixed, as the per-cell bootstrap does).

    The draw depends only on its arguments, so it is made once per test set and reused (read
    only) by every difference a report computes on that test set.
    """
    groups = np.ascontiguousarray(groups, dtype=np.int64)
    return _image_weights(groups.tobytes(), resamples, seed)


@functools.lru_cache(maxsize=8)
def _image_weights(groups: bytes, resamples: int, seed: int) -> dict[int, np.ndarray]:
    codes = np.frombuffer(groups, dtype=np.int64)
    rng = np.random.default_rng(seed)
    out = {}
    for g in np.unique(codes):
        n = int((codes == g).sum())
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
        w.flags.writeable = False
        out[int(g)] = w
    return out


def paired_worst(
    a: pl.DataFrame, b: pl.DataFrame, *, resamples: int = IMAGE_RESAMPLES
) -> PairedWorst:
    """The WorstAcc difference ``a - b`` paired by seed, with its seed and image intervals.

    ``a``, ``b``: cell-frame rows of two methods at one (dataset, model, budget). Each resample
    redraws the test set once and applies the same draw to every seed and both methods (the grid
    tests every cell of a dataset on one test set), so the interval is that of the seed-mean
    difference on a new test set of the same group sizes.
    """
    cols = ["seed", "worst_acc", "test_correct", "test_group"]
    joined = a.select(cols).join(b.select(cols), on="seed", suffix="_b").sort("seed")
    values = (joined["worst_acc"] - joined["worst_acc_b"]).to_numpy()
    mean, low, high = t_interval(values)
    img_low = img_high = math.nan
    rows = joined.select("test_correct", "test_correct_b", "test_group", "test_group_b").rows()
    usable = bool(rows) and all(
        ca is not None and cb is not None and ga == gb and ga == rows[0][2]
        for ca, cb, ga, gb in rows
    )
    if usable:
        groups = np.asarray(rows[0][2])
        weights = image_weights(groups, resamples)
        diffs = [
            resampled_worst(np.asarray(ca), groups, weights)
            - resampled_worst(np.asarray(cb), groups, weights)
            for ca, cb, _, _ in rows
        ]
        img_low, img_high = (float(x) for x in np.quantile(np.mean(diffs, axis=0), [0.025, 0.975]))
    return PairedWorst(values, mean, low, high, img_low, img_high,
                       verdict(low, high, img_low, img_high))  # fmt: skip


def frontier_frame(cells: pl.DataFrame) -> pl.DataFrame:
    """One row per (dataset, model, method, budget) of the frontier: :data:`FRONTIER_COLUMNS`.

    ``target_bits``: the budget (uniform rows: their bit-width; FP32: null). ``avg_bits``,
    ``paper_gops``, ``size_bytes``: means over seeds. ``<m>_mean``/``_std``/``_low``/``_high``:
    mean, sample std and 95% t-interval over seeds. ``d_worst_vs_blind`` (and ``_low``/``_high``/``_verdict``):
    mean and t-interval of the per-seed WorstAcc difference against ``blind`` at the same
    budget; ``d_avg_vs_blind`` likewise for AvgAcc; ``collapses_vs_blind``: seeds whose WorstAcc
    is more than :data:`COLLAPSE_DROP` below ``blind``'s. Uniform, FP32 and ``blind`` rows leave
    those columns empty (null).
    """
    cells = frontier_cells(cells)
    rows: list[dict[str, Any]] = []
    keys = ["dataset", "model", "method", "budget"]
    for (ds, mo, me, bu), part in cells.group_by(keys, maintain_order=True):
        part = part.sort("seed")
        row: dict[str, Any] = {
            "dataset": ds, "model": mo, "method": me, "budget": bu,
            "method_label": part["method_label"][0],
            "target_bits": float(bu) if bu else (float(UNIFORM_BITS[me]) if me in UNIFORM_BITS else None),
            "avg_bits": mean_of(part["avg_bits"]),
            "paper_gops": mean_of(part["paper_gops"]),
            "size_bytes": mean_of(part["size_bytes"]),
            "eodd_mean": mean_of(part["eodd"]),
            "seeds": part.height,
            "worst_acc_by_seed": ";".join(f"{v:.6f}" for v in part["worst_acc"].to_list()),
        }  # fmt: skip
        for m in ("worst_acc", "avg_acc", "gap"):
            values = part[m].to_numpy()
            mean, low, high = t_interval(values)
            std = float(np.std(values, ddof=1)) if values.size > 1 else math.nan
            row |= {f"{m}_mean": mean, f"{m}_std": std, f"{m}_low": low, f"{m}_high": high}
        empty = {
            "d_worst_vs_blind": None, "d_worst_vs_blind_low": None,
            "d_worst_vs_blind_high": None, "d_worst_vs_blind_img_low": None,
            "d_worst_vs_blind_img_high": None, "d_worst_vs_blind_verdict": None,
            "d_avg_vs_blind": None, "d_avg_vs_blind_low": None, "d_avg_vs_blind_high": None,
            "collapses_vs_blind": None,
        }  # fmt: skip
        row |= empty
        control = cells.filter(
            (pl.col("dataset") == ds) & (pl.col("model") == mo) & (pl.col("budget") == bu)
            & (pl.col("method") == CONTROL_METHOD)
        )  # fmt: skip
        if bu and me != CONTROL_METHOD and not control.is_empty():
            pw = paired_worst(part, control)
            if pw.values.size:
                row |= {
                    "d_worst_vs_blind": pw.mean, "d_worst_vs_blind_low": pw.low,
                    "d_worst_vs_blind_high": pw.high, "d_worst_vs_blind_img_low": pw.image_low,
                    "d_worst_vs_blind_img_high": pw.image_high,
                    "d_worst_vs_blind_verdict": pw.verdict,
                    "collapses_vs_blind": int((pw.values < -COLLAPSE_DROP).sum()),
                }  # fmt: skip
                mean, low, high = t_interval(paired_differences(part, control, "avg_acc"))
                row |= {"d_avg_vs_blind": mean, "d_avg_vs_blind_low": low,
                        "d_avg_vs_blind_high": high}  # fmt: skip
        rows.append(row)
    schema: dict[str, type[pl.DataType]] = {c: pl.Float64 for c in FRONTIER_COLUMNS}
    schema |= {c: pl.String for c in ("dataset", "model", "method", "method_label",
                                      "worst_acc_by_seed", "d_worst_vs_blind_verdict")}  # fmt: skip
    schema |= {"seeds": pl.Int64, "collapses_vs_blind": pl.Int64}
    frame = pl.DataFrame(rows, schema={**schema, "budget": pl.String})
    return sort_rows(frame).select(list(FRONTIER_COLUMNS))


def effects_frame(cells: pl.DataFrame) -> pl.DataFrame:
    """Each ingredient's effect per (dataset, model, budget), from the 2x2 design's cells.

    Columns: ``dataset, model, target_bits, effect, ingredient, minuend, subtrahend, seeds,
    d_worst, d_worst_low, d_worst_high, d_worst_img_low, d_worst_img_high, verdict, d_avg,
    d_avg_low, d_avg_high`` (fractions; paired by seed, 95% t-interval; ``_img_``: the
    test-image interval of :func:`paired_worst`). A contrast whose two methods were not both run is absent.
    """
    budget_cells = cells.filter((pl.col("budget") != "") & (pl.col("variant") == ""))
    rows: list[dict[str, Any]] = []
    for (ds, mo, bu), part in budget_cells.group_by(["dataset", "model", "budget"],
                                                    maintain_order=True):  # fmt: skip
        for name, ingredient, a, b in EFFECTS:
            pa, pb = part.filter(pl.col("method") == a), part.filter(pl.col("method") == b)
            if pa.is_empty() or pb.is_empty():
                continue
            pw = paired_worst(pa, pb)
            if pw.values.size == 0:
                continue
            am, alow, ahigh = t_interval(paired_differences(pa, pb, "avg_acc"))
            rows.append({
                "dataset": ds, "model": mo, "budget": bu, "target_bits": float(bu),
                "effect": name, "ingredient": ingredient, "minuend": a, "subtrahend": b,
                "seeds": int(pw.values.size), "d_worst": pw.mean, "d_worst_low": pw.low,
                "d_worst_high": pw.high, "d_worst_img_low": pw.image_low,
                "d_worst_img_high": pw.image_high, "verdict": pw.verdict, "d_avg": am,
                "d_avg_low": alow, "d_avg_high": ahigh,
            })  # fmt: skip
    cols = ["dataset", "model", "target_bits", "effect", "ingredient", "minuend", "subtrahend",
            "seeds", "d_worst", "d_worst_low", "d_worst_high", "d_worst_img_low",
            "d_worst_img_high", "verdict", "d_avg", "d_avg_low", "d_avg_high"]  # fmt: skip
    if not rows:
        return pl.DataFrame(schema={c: pl.String for c in cols})
    frame = pl.DataFrame(rows)
    order = {name: i for i, (name, *_) in enumerate(EFFECTS)}
    frame = sort_rows(frame.drop("budget").with_columns(pl.col("target_bits").alias("_t")))
    frame = frame.sort(
        ["_t", pl.col("effect").replace_strict(order, return_dtype=pl.Int64)], maintain_order=True
    )
    return frame.select(cols)


def seeds_frame(cells: pl.DataFrame) -> pl.DataFrame:
    """The frontier's per-seed values: one row per cell with its bootstrap intervals (so that a
    seed whose worst group collapses is seen, not averaged away)."""
    cols = ["dataset", "model", "method", "method_label", "target_bits", "seed", "avg_bits",
            "worst_acc", "worst_acc_boot_low", "worst_acc_boot_high", "avg_acc",
            "avg_acc_boot_low", "avg_acc_boot_high", "gap", "gap_boot_low", "gap_boot_high",
            "eodd"]  # fmt: skip
    part = frontier_cells(cells)
    part = part.with_columns(
        pl.when(pl.col("method").is_in(list(UNIFORM_BITS)))
        .then(pl.col("method").replace_strict(UNIFORM_BITS, default=None, return_dtype=pl.Float64))
        .otherwise(pl.col("target_bits"))
        .alias("target_bits")
    )
    return sort_rows(part).select(cols)


# -- text -----------------------------------------------------------------------------------------
def _pts(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    v = 100 * x
    if signed and round(v, 1) == 0:
        v = 0.0  # no "-0.0"
    return f"{v:+.1f}" if signed else f"{v:.1f}"


def _ci(low: float | None, high: float | None, signed: bool = False) -> str:
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return "[n/a]"
    return f"[{_pts(low, signed)}, {_pts(high, signed)}]"


def frontier_markdown(frontier: pl.DataFrame) -> str:
    """Markdown: one row per (model, method, budget), WorstAcc / AvgAcc / Gap in % as mean
    [95% t-interval over seeds], and the paired WorstAcc difference against ``blind`` with its
    seed interval, its test-image interval and the verdict."""
    header = ["Dataset", "Model", "Budget", "Method", "AvgBits", "Size (KiB)", "WorstAcc",
              "AvgAcc", "Gap", "EOdd", "ΔWorst vs blind", "test images", "Verdict", "Collapses",
              "Seeds"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join(["---"] * 4 + ["---:"] * 11) + " |"]  # fmt: skip
    from ._names import DATASET_LABELS, MODEL_LABELS

    for r in frontier.iter_rows(named=True):
        budget = "FP32" if r["target_bits"] is None else (
            f"{r['target_bits']:g}" + (" (uniform)" if r["method"] in UNIFORM_BITS else "")
        )  # fmt: skip
        cells = [
            DATASET_LABELS.get(r["dataset"], r["dataset"]), MODEL_LABELS.get(r["model"], r["model"]),
            budget, r["method_label"], f"{r['avg_bits']:.2f}", f"{r['size_bytes'] / 1024:.1f}",
            f"{_pts(r['worst_acc_mean'])} {_ci(r['worst_acc_low'], r['worst_acc_high'])}",
            f"{_pts(r['avg_acc_mean'])} {_ci(r['avg_acc_low'], r['avg_acc_high'])}",
            f"{_pts(r['gap_mean'])} {_ci(r['gap_low'], r['gap_high'])}",
            f"{r['eodd_mean']:.3f}",
        ]  # fmt: skip
        if r["d_worst_vs_blind"] is None:
            cells += ["", "", "", "", str(r["seeds"])]
        else:
            cells += [
                f"{_pts(r['d_worst_vs_blind'], True)} "
                f"{_ci(r['d_worst_vs_blind_low'], r['d_worst_vs_blind_high'], True)}",
                _ci(r["d_worst_vs_blind_img_low"], r["d_worst_vs_blind_img_high"], True),
                r["d_worst_vs_blind_verdict"],
                str(r["collapses_vs_blind"]),
                str(r["seeds"]),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def effects_markdown(effects: pl.DataFrame) -> str:
    """Markdown of :func:`effects_frame`: each ingredient's paired WorstAcc / AvgAcc effect."""
    header = ["Model", "Budget", "Effect", "Contrast", "ΔWorst", "test images", "Verdict", "ΔAvg",
              "Seeds"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join(["---"] * 4 + ["---:", "---:", "---", "---:", "---:"]) + " |"]  # fmt: skip
    from ._names import MODEL_LABELS

    for r in effects.iter_rows(named=True):
        lines.append("| " + " | ".join([
            MODEL_LABELS.get(r["model"], r["model"]), f"{r['target_bits']:g}", r["effect"],
            f"{r['minuend']} − {r['subtrahend']}",
            f"{_pts(r['d_worst'], True)} {_ci(r['d_worst_low'], r['d_worst_high'], True)}",
            _ci(r["d_worst_img_low"], r["d_worst_img_high"], True),
            r["verdict"],
            f"{_pts(r['d_avg'], True)} {_ci(r['d_avg_low'], r['d_avg_high'], True)}",
            str(r["seeds"]),
        ]) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def best_lines(cells: pl.DataFrame, frontier: pl.DataFrame) -> list[str]:
    """Per (dataset, model, budget): the mixed method with the best mean WorstAcc, its paired
    lead over the runner-up and over ``blind`` (95% intervals over seeds and over test images,
    :func:`paired_worst`), each with its verdict.
    """
    from ._names import DATASET_LABELS, MODEL_LABELS

    lines = []
    mixed = frontier.filter(pl.col("method").is_in(list(MIXED_METHODS)))
    budget_cells = cells.filter((pl.col("budget") != "") & (pl.col("variant") == ""))
    for (ds, mo, t), part in mixed.group_by(["dataset", "model", "target_bits"],
                                            maintain_order=True):  # fmt: skip
        ranked = part.sort("worst_acc_mean", descending=True, maintain_order=True)
        best = ranked.row(0, named=True)
        head = (
            f"{DATASET_LABELS.get(ds, ds)} {MODEL_LABELS.get(mo, mo)}, {t:g} bits: best for the "
            f"worst group: {best['method_label']} ({_pts(best['worst_acc_mean'])}%)"
        )
        here = budget_cells.filter(
            (pl.col("dataset") == ds) & (pl.col("model") == mo) & (pl.col("target_bits") == t)
        )
        bits = []
        runner_up = ranked.row(1, named=True)["method"] if ranked.height > 1 else None
        control = CONTROL_METHOD if CONTROL_METHOD not in (best["method"], runner_up) else None
        for other_id, what in ((runner_up, "runner-up"), (control, "control")):
            if other_id is None:
                continue
            pw = paired_worst(
                here.filter(pl.col("method") == best["method"]),
                here.filter(pl.col("method") == other_id),
            )
            label = METHOD_LABELS.get(other_id, other_id)
            name = f"the runner-up {label}" if what == "runner-up" else label
            bits.append(
                f"lead over {name} {_pts(pw.mean, True)} points {_ci(pw.low, pw.high, True)} "
                f"(test images {_ci(pw.image_low, pw.image_high, True)}), {pw.verdict}"
            )
        lines.append(head + ("; " + "; ".join(bits) if bits else "") + ".")
    return lines


#: The text helpers under public names (the objectives table prints the same way).
format_points, format_interval = _pts, _ci
