"""Summaries across training seeds: mean, sample std, and a Student-t 95% interval."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np


class SeedSummary(NamedTuple):
    """``(mean, std, ci95_low, ci95_high)``; unpacks like a tuple."""

    mean: float
    std: float
    ci95_low: float
    ci95_high: float


def seed_summary(values: Iterable[float]) -> SeedSummary:
    """Mean, sample std and 95% t-interval of one metric over seeds.

    ``std`` uses ``ddof=1``; the interval is ``mean +- t_{0.975, n-1} * std / sqrt(n)``
    (METHOD.md section 7: mean +- std in the main table, 95% t-intervals in ablations).

    With a single value the sample std and the t-interval are undefined (zero degrees of
    freedom): ``std``, ``ci95_low`` and ``ci95_high`` are NaN rather than a misleading 0.
    Raises ``ValueError`` for no values or a non-finite value.
    """
    arr = np.asarray(
        list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64
    )
    arr = arr.reshape(-1)
    if arr.size == 0:
        raise ValueError("values is empty; seed_summary needs at least one value")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"values must be finite; got {arr.tolist()!r}")
    mean = float(arr.mean())
    if arr.size == 1:
        return SeedSummary(mean, math.nan, math.nan, math.nan)
    from scipy import stats  # lazy: keeps `import fq_fairmetrics` light

    std = float(arr.std(ddof=1))
    half = float(stats.t.ppf(0.975, df=arr.size - 1)) * std / math.sqrt(arr.size)
    return SeedSummary(mean, std, mean - half, mean + half)
