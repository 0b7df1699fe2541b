"""Footnotes on a dataset's test groups: empty, small, and too small for a per-group margin.

Every cell records its test split's ``empty_groups`` and ``small_groups`` (fewer than
``fq_fairmetrics.MIN_GROUP_N`` test images); the cells of one dataset share the split, so the
report says it once per dataset. The margin line applies ``fq_fairmetrics.margin_sample_size``:
how many test images a group needs before a :data:`MARGIN_POINTS`-point non-inferiority verdict
(``fq_fairmetrics.compare``'s) against FP32 becomes decidable, at the discordance this run's cells
show against their FP32 cell.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ._cells import CellKey
from ._names import DATASET_LABELS

#: The non-inferiority margin (accuracy points) the margin line speaks of: ``compare``'s default.
MARGIN_POINTS = 1.0


def _listed(pairs: list[tuple[str, int]]) -> str:
    return ", ".join(f"{name!r} ({n})" for name, n in pairs)


def _discordance(cells: list[tuple[CellKey, dict[str, Any]]]) -> float | None:
    """Median share of test images on which a cell and the FP32 cell of its model and seed
    predict differently; ``None`` without such a pair."""
    fp32 = {
        (k.model, k.seed): np.asarray(r["test"]["predictions"])
        for k, r in cells
        if k.method == "fp32" and not k.variant and "test" in r
    }
    shares = []
    for k, r in cells:
        ref = fp32.get((k.model, k.seed))
        if k.method != "fp32" and ref is not None and "test" in r:
            pred = np.asarray(r["test"]["predictions"])
            if pred.shape == ref.shape and pred.size:
                shares.append(float((pred != ref).mean()))
    return float(np.median(shares)) if shares else None


def group_notes(raw: Iterable[tuple[CellKey, dict[str, Any]]]) -> tuple[str, ...]:
    """Per dataset of the cells ``raw``: a line naming the groups without test images, one naming
    those with fewer than ``MIN_GROUP_N`` (with their test counts), and one naming those with
    fewer test images than a :data:`MARGIN_POINTS`-point margin needs, saying how many."""
    from fq_fairmetrics import MIN_GROUP_N, margin_sample_size

    by_ds: dict[str, list[tuple[CellKey, dict[str, Any]]]] = {}
    for key, res in raw:
        if "group_n" in res:
            by_ds.setdefault(key.dataset, []).append((key, res))
    lines = []
    for ds, cells in by_ds.items():
        label = DATASET_LABELS.get(ds, ds)
        res = cells[0][1]
        sizes = dict(zip(res["group_names"], res["group_n"], strict=True))
        # cells written before they recorded these: the same rule from the counts
        empty = res.get("empty_groups", [n for n, k in sizes.items() if k == 0])
        small = res.get("small_groups", [n for n, k in sizes.items() if 0 < k < MIN_GROUP_N])
        if empty:
            lines.append(
                f"Groups: {label}: no test image in {', '.join(map(repr, empty))}: left out of "
                "every metric (WorstAcc, Gap, EOpp, EOdd)."
            )
        if small:
            lines.append(
                f"Groups: {label}: fewer than {MIN_GROUP_N} test images in "
                f"{_listed([(n, sizes[n]) for n in small])}: their accuracy is too uncertain to "
                "rank groups by."
            )
        d = _discordance(cells)
        needed = margin_sample_size(MARGIN_POINTS, discordance=min(d or 0.0, 0.99))
        below = [(n, k) for n, k in sizes.items() if 0 < k < needed]
        if below:
            how = (
                f"at the {100 * d:.1f}% of test images on which the compressed cells and FP32 "
                "disagree (median over cells)"
                if d is not None
                else "with no disagreement at all (no FP32 cell to measure it against), a floor"
            )
            lines.append(
                f"Margin: {label}: a {MARGIN_POINTS:g}-point non-inferiority verdict per group "
                f"needs about {needed} test images per group (fq_fairmetrics.margin_sample_size, "
                f"{how}); fewer in {_listed(below)}."
            )
    return tuple(lines)
