"""The one engine: per-group confusion counts, and every metric derived from them.

Everything here works on counts of shape ``[..., G, C, C]`` (leading batch axes allowed, which is
how the bootstrap evaluates many resamples at once). ``counts[g, t, p]`` is the number of samples
of group ``g`` with true class ``t`` predicted as ``p``.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

MetricName = Literal[
    "overall_acc", "avg_acc", "worst_acc", "best_acc", "gap", "eopp0", "eopp1", "eodd", "dp_gap"
]
#: Every scalar metric, in report order.
METRICS: tuple[MetricName, ...] = get_args(MetricName)


#: The most cells ``G * C * C`` a confusion-count table may have (128 MiB of int64): the table is
#: sized by values (the number of groups, the largest label), so one stray large label would
#: otherwise allocate gigabytes.
MAX_COUNT_CELLS = 2**24


def check_count_cells(n_groups: int, n_classes: int) -> None:
    """Raise ``ValueError`` when ``[G, C, C]`` counts would exceed :data:`MAX_COUNT_CELLS`,
    naming the sizes, the largest label they imply, and what to do."""
    cells = int(n_groups) * int(n_classes) ** 2
    if cells > MAX_COUNT_CELLS:
        raise ValueError(
            f"{n_groups} group(s) x {n_classes} x {n_classes} classes = {cells} confusion counts, "
            f"more than MAX_COUNT_CELLS = {MAX_COUNT_CELLS}: integer labels are class indices "
            f"0..C-1, so a label (or n_classes) of {n_classes - 1} sizes C = {n_classes}; remap "
            "the labels to 0..K-1 (e.g. np.unique(y, return_inverse=True)) or pass class_names"
        )


def confusion_counts(
    t: np.ndarray, p: np.ndarray, g: np.ndarray, n_groups: int, n_classes: int
) -> np.ndarray:
    """Counts ``[G, C, C]`` (int64) from codes ``[N]``: one ``np.bincount``, no Python loop.

    Raises ``ValueError`` when ``G * C * C`` exceeds :data:`MAX_COUNT_CELLS`.
    """
    check_count_cells(n_groups, n_classes)
    flat = (g * n_classes + t) * n_classes + p
    return np.bincount(flat, minlength=n_groups * n_classes * n_classes).reshape(
        n_groups, n_classes, n_classes
    )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` where ``den > 0``, NaN elsewhere, without a divide-by-zero warning."""
    return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def spread_over_groups(x: np.ndarray) -> np.ndarray:
    """``max_g x - min_g x`` over groups where ``x`` is defined (not NaN); 0 if fewer than two.

    ``x``: ``[..., G, C]``; returns ``[..., C]``.
    """
    defined = ~np.isnan(x)
    hi = np.where(defined, x, -np.inf).max(axis=-2)
    lo = np.where(defined, x, np.inf).min(axis=-2)
    return np.where(defined.sum(axis=-2) >= 2, hi - lo, 0.0)


def derive(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per-group tables and the scalar metrics (METHOD.md section 7) of counts ``[..., G, C, C]``.

    Groups with no samples are NaN in the tables and ignored by every metric. Returns arrays:
    ``group_n, group_acc`` ``[..., G]``; ``tpr, tnr, fpr, pred_rate`` ``[..., G, C]``;
    ``counted_classes`` ``[..., C]`` (bool); and each name of :data:`METRICS` ``[...]``.
    """
    c = counts.astype(np.float64)
    n = c.sum(axis=(-2, -1))
    present = n > 0
    correct = np.trace(c, axis1=-2, axis2=-1)
    acc = _ratio(correct, n)
    n_present = present.sum(axis=-1)

    tp = np.diagonal(c, axis1=-2, axis2=-1)
    pos = c.sum(axis=-1)  # samples whose true class is c
    fp = c.sum(axis=-2) - tp  # predicted c but true class differs
    neg = n[..., None] - pos
    tpr = _ratio(tp, pos)
    tnr = _ratio(neg - fp, neg)
    fpr = 1.0 - tnr
    pred_rate = _ratio(c.sum(axis=-2), n[..., None])

    gap_tpr, gap_tnr, gap_fpr = (spread_over_groups(r) for r in (tpr, tnr, fpr))
    counted = (~np.isnan(tpr) | ~np.isnan(tnr)).any(axis=-2)
    n_counted = np.maximum(counted.sum(axis=-1), 1)

    def class_mean(per_class: np.ndarray) -> np.ndarray:
        return np.where(counted, per_class, 0.0).sum(axis=-1) / n_counted

    worst = np.where(present, acc, np.inf).min(axis=-1)
    best = np.where(present, acc, -np.inf).max(axis=-1)
    return {
        "group_n": n.astype(np.int64),
        "group_acc": acc,
        "tpr": tpr,
        "tnr": tnr,
        "fpr": fpr,
        "pred_rate": pred_rate,
        "counted_classes": counted,
        "overall_acc": correct.sum(axis=-1) / n.sum(axis=-1),
        "avg_acc": np.where(present, acc, 0.0).sum(axis=-1) / n_present,
        "worst_acc": worst,
        "best_acc": best,
        "gap": best - worst,
        "eopp0": class_mean(gap_tnr),
        "eopp1": class_mean(gap_tpr),
        "eodd": class_mean(gap_tpr + gap_fpr),
        "dp_gap": spread_over_groups(pred_rate).mean(axis=-1),
    }
