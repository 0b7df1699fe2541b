"""The fairness-compression frontier: every method at matched budgets, against a group-blind control.

From the cell frame (:func:`fq_bench.grid._frames.cells_frame`) alone:

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
  group), and its minimal detectable effect. The seed interval alone cannot see the test set's
  finiteness: five seeds that each differ by the same single image give a zero-width interval.
- :func:`verdict`: the one rule that calls a difference resolved: both intervals exclude 0, on
  the same side.

The statistics are ``fq_fairmetrics``' (``paired_difference``, ``seed_image_verdict``,
``minimal_detectable_effect``, ``seeds_needed``; METHOD.md sections 7.2, 7.3); this module only
gathers the cells and formats the tables.

Accuracies are fractions in the frames and CSVs, points (percent) in Markdown and printed text.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl
from fq_fairmetrics import (
    PairedDifference,
    paired_difference,
    seed_image_verdict,
    seeds_needed,
    t_interval,
    worst_difference_draws,
)
from fq_fairmetrics import resampled_worst as resampled_worst

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
    "collapses_vs_blind", "d_worst_vs_blind_mde",
)  # fmt: skip

#: The frontier's verdict rule (``fq_fairmetrics.seed_image_verdict``) under its grid name.
verdict = seed_image_verdict


def frontier_cells(cells: pl.DataFrame) -> pl.DataFrame:
    """The cells the frontier draws on: every budget cell, and the budget-free FP32 and uniform
    cells (Table 1's), none of them a sweep variant (those: :mod:`fq_bench.grid._objectives`)."""
    ref = (pl.col("budget") == "") & pl.col("method").is_in(["fp32", *UNIFORM_BITS])
    return cells.filter(((pl.col("budget") != "") | ref) & (pl.col("variant") == ""))


def target_bits_of(method: str, budget: str) -> float | None:
    """A frontier row's ``target_bits``: the budget (bits per weight), a uniform method's
    bit-width, ``None`` for FP32."""
    if budget:
        return float(budget)
    return float(UNIFORM_BITS[method]) if method in UNIFORM_BITS else None


def budget_text(target_bits: float | None, method: str) -> str:
    """A frontier row's budget as printed: ``"FP32"``, ``"4"``, ``"4 (uniform)"``."""
    if target_bits is None:
        return "FP32"
    return f"{target_bits:g}" + (" (uniform)" if method in UNIFORM_BITS else "")


def has_frontier(cells: pl.DataFrame) -> bool:
    """Whether ``cells`` hold any frontier (budget) cell."""
    return not cells.filter(pl.col("budget") != "").is_empty()


def paired_differences(part: pl.DataFrame, control: pl.DataFrame, col: str) -> np.ndarray:
    """``part[col] - control[col]`` per seed present in both (sorted by seed)."""
    joined = part.select("seed", col).join(control.select("seed", col), on="seed", suffix="_c")
    joined = joined.sort("seed")
    return (joined[col] - joined[f"{col}_c"]).to_numpy()


def paired_worst(
    a: pl.DataFrame, b: pl.DataFrame, *, resamples: int = IMAGE_RESAMPLES
) -> PairedDifference:
    """The WorstAcc difference ``a - b`` paired by seed, with its seed and image intervals and its
    minimal detectable effect (``fq_fairmetrics.paired_difference``; fractions).

    ``a``, ``b``: cell-frame rows of two methods at one (dataset, model, budget). Each resample
    redraws the test set once and applies the same draw to every seed and both methods (the grid
    tests every cell of a dataset on one test set), so the interval is that of the seed-mean
    difference on a new test set of the same group sizes. Without stored test predictions the
    image interval and the MDE are NaN.
    """
    cols = ["seed", "worst_acc", "test_correct", "test_group"]
    joined = a.select(cols).join(b.select(cols), on="seed", suffix="_b").sort("seed")
    values = (joined["worst_acc"] - joined["worst_acc_b"]).to_numpy()
    rows = joined.select("test_correct", "test_correct_b", "test_group", "test_group_b").rows()
    usable = bool(rows) and all(
        ca is not None and cb is not None and ga == gb and ga == rows[0][2]
        for ca, cb, ga, gb in rows
    )
    draws = None
    if usable:
        draws = worst_difference_draws(
            [np.asarray(r[0]) for r in rows], [np.asarray(r[1]) for r in rows],
            np.asarray(rows[0][2]), resamples=resamples,
        )  # fmt: skip
    return paired_difference(values, draws)


def verdict_text(verdict_: str | None, mde: float | None, seeds: int) -> str:
    """The verdict in words, with the minimal detectable effect (fraction) when not resolved:
    ``"not resolved; effects above 2.1 points would have been seen"``."""
    if verdict_ is None:
        return ""
    if verdict_ == "resolved":
        return verdict_
    if seeds < 2:
        return f"{verdict_}; one seed: no seed spread measured, so no effect could be resolved"
    if mde is None or math.isnan(mde):
        return f"{verdict_}; no test predictions stored: no minimal detectable effect"
    if mde == 0:
        return f"{verdict_}; no difference on any seed or test image: no spread to size an effect"
    if mde >= 1:
        return f"{verdict_}; at this spread no effect within 100 points would have been seen"
    return f"{verdict_}; effects above {100 * mde:.1f} points would have been seen"


def frontier_frame(cells: pl.DataFrame) -> pl.DataFrame:
    """One row per (dataset, model, method, budget) of the frontier: :data:`FRONTIER_COLUMNS`.

    ``target_bits``: the budget (uniform rows: their bit-width; FP32: null). ``avg_bits``,
    ``paper_gops``, ``size_bytes``: means over seeds. ``<m>_mean``/``_std``/``_low``/``_high``:
    mean, sample std and 95% t-interval over seeds. ``d_worst_vs_blind`` (and ``_low``/``_high``/``_verdict``):
    mean and t-interval of the per-seed WorstAcc difference against ``blind`` at the same
    budget, ``d_worst_vs_blind_mde`` its minimal detectable effect; ``d_avg_vs_blind`` likewise for AvgAcc; ``collapses_vs_blind``: seeds whose WorstAcc
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
            "target_bits": target_bits_of(me, bu),
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
            "collapses_vs_blind": None, "d_worst_vs_blind_mde": None,
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
                    "d_worst_vs_blind_verdict": pw.verdict, "d_worst_vs_blind_mde": pw.mde,
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
    d_avg_low, d_avg_high, d_worst_mde, seeds_needed`` (fractions; paired by seed, 95%
    t-interval; ``_img_``: the test-image interval of :func:`paired_worst`; ``d_worst_mde``: its
    minimal detectable effect; ``seeds_needed``: seeds that would resolve the measured effect at
    the spread measured, null when seeds cannot: one seed, a zero effect, or the test images'
    part alone above it). A contrast whose two methods were not both run is absent.
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
                "d_avg_low": alow, "d_avg_high": ahigh, "d_worst_mde": pw.mde,
                "seeds_needed": _seeds_needed(pw),
            })  # fmt: skip
    cols = ["dataset", "model", "target_bits", "effect", "ingredient", "minuend", "subtrahend",
            "seeds", "d_worst", "d_worst_low", "d_worst_high", "d_worst_img_low",
            "d_worst_img_high", "verdict", "d_avg", "d_avg_low", "d_avg_high", "d_worst_mde",
            "seeds_needed"]  # fmt: skip
    if not rows:
        return pl.DataFrame(schema={c: pl.String for c in cols})
    frame = pl.DataFrame(rows, schema_overrides={"seeds_needed": pl.Int64})
    order = {name: i for i, (name, *_) in enumerate(EFFECTS)}
    frame = sort_rows(frame.drop("budget").with_columns(pl.col("target_bits").alias("_t")))
    frame = frame.sort(
        ["_t", pl.col("effect").replace_strict(order, return_dtype=pl.Int64)], maintain_order=True
    )
    return frame.select(cols)


def _seeds_needed(pw: PairedDifference) -> int | None:
    sd = float(np.std(pw.values, ddof=1)) if pw.values.size > 1 else math.nan
    return seeds_needed(pw.mean, seed_sd=sd, image_sd=pw.image_sd)


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
    seed interval, its test-image interval and the verdict (with its minimal detectable effect
    when not resolved, :func:`verdict_text`)."""
    header = ["Dataset", "Model", "Budget", "Method", "AvgBits", "Size (KiB)", "WorstAcc",
              "AvgAcc", "Gap", "EOdd", "ΔWorst vs blind", "test images", "Verdict", "Collapses",
              "Seeds"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join(["---"] * 4 + ["---:"] * 11) + " |"]  # fmt: skip
    from ._names import DATASET_LABELS, MODEL_LABELS

    for r in frontier.iter_rows(named=True):
        budget = budget_text(r["target_bits"], r["method"])
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
                verdict_text(r["d_worst_vs_blind_verdict"], r["d_worst_vs_blind_mde"], r["seeds"]),
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
            verdict_text(r["verdict"], r["d_worst_mde"], r["seeds"]),
            f"{_pts(r['d_avg'], True)} {_ci(r['d_avg_low'], r['d_avg_high'], True)}",
            str(r["seeds"]),
        ]) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def best_lines(cells: pl.DataFrame, frontier: pl.DataFrame) -> list[str]:
    """Per (dataset, model, budget): the mixed method with the best mean WorstAcc, its paired
    lead over the runner-up and over ``blind`` (95% intervals over seeds and over test images,
    :func:`paired_worst`), each with its verdict; then how many seeds would resolve the largest
    effect of the 2x2 design at that budget (:func:`seeds_needed_sentences`).
    """
    from ._names import DATASET_LABELS, MODEL_LABELS

    lines = []
    mixed = frontier.filter(pl.col("method").is_in(list(MIXED_METHODS)))
    needed = seeds_needed_sentences(effects_frame(cells))
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
        line = head + ("; " + "; ".join(bits) if bits else "") + "."
        lines.append(line + (f" {needed[(ds, mo, t)]}" if (ds, mo, t) in needed else ""))
    return lines


def seeds_needed_sentences(effects: pl.DataFrame) -> dict[tuple[str, str, float], str]:
    """(dataset, model, budget) -> a sentence saying how many seeds the run would need to resolve
    the largest effect it measured among the 2x2 design's contrasts (:func:`effects_frame`), at
    the spread it measured (``fq_fairmetrics.seeds_needed``, METHOD.md section 7.3)."""
    out: dict[tuple[str, str, float], str] = {}
    if effects.is_empty():
        return out
    for (ds, mo, t), part in effects.group_by(["dataset", "model", "target_bits"],
                                              maintain_order=True):  # fmt: skip
        r = part.sort(pl.col("d_worst").abs(), descending=True, maintain_order=True).row(
            0, named=True
        )
        what = f"The largest measured effect, {r['effect']} ({_pts(r['d_worst'], True)} points),"
        if r["verdict"] == "resolved":
            need = f"is resolved with the run's {r['seeds']} seeds"
        elif r["seeds"] < 2:
            need = "cannot be sized: one seed measures no seed spread (run at least 2)"
        elif r["d_worst"] == 0:
            need = "is 0: no number of seeds resolves it"
        elif r["seeds_needed"] is None:
            need = (
                "would not be resolved by more seeds alone at this spread: the test images' "
                "share of the noise is above it (more test images are needed)"
            )
        else:
            need = f"would need {r['seeds_needed']} seeds to be resolved (the run has {r['seeds']})"
        out[(ds, mo, t)] = f"{what} {need}."
    return out


#: The text helpers under public names (the objectives table prints the same way).
format_points, format_interval = _pts, _ci
