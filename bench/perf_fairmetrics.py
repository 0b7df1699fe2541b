"""Benchmark: ``fq_fairmetrics.group_report`` on 1,000,000 samples, 114 classes, 6 groups.

Run ``uv run python bench/perf_fairmetrics.py``; import ``bench_group_report`` from it by path for
a larger suite. Self-contained: needs only numpy and fq-fairmetrics.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import numpy as np
from fq_fairmetrics import group_report


def _time(fn: Any, repeats: int) -> list[float]:
    fn()  # warm-up: page in the arrays and numpy's code paths
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def bench_group_report(
    n: int = 1_000_000, n_classes: int = 114, n_groups: int = 6, repeats: int = 5, seed: int = 0
) -> dict[str, Any]:
    """Median wall time of ``group_report`` on random labels and on float32 logits.

    Returns a dict with the problem size, ``labels_median_s`` / ``labels_times_s`` (1-D predicted
    labels, Fitzpatrick-style int groups 1..6) and ``logits_median_s`` / ``logits_times_s``
    (``[n, n_classes]`` float32 scores, argmax inside, string groups).
    """
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, n_classes, n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, n_classes, n))
    groups = rng.integers(1, n_groups + 1, n)
    logits = rng.standard_normal((n, n_classes), dtype=np.float32)
    str_groups = np.array([f"type{g}" for g in range(1, n_groups + 1)])[groups - 1]

    labels = _time(
        lambda: group_report(y_true, y_pred, sensitive_features=groups, n_classes=n_classes),
        repeats,
    )
    scores = _time(lambda: group_report(y_true, logits, sensitive_features=str_groups), repeats)
    return {
        "n": n,
        "n_classes": n_classes,
        "n_groups": n_groups,
        "repeats": repeats,
        "labels_median_s": statistics.median(labels),
        "labels_times_s": labels,
        "logits_median_s": statistics.median(scores),
        "logits_times_s": scores,
        "machine": platform.processor() or platform.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    result = bench_group_report(n=args.n, repeats=args.repeats)
    print(json.dumps(result, indent=2))
    print(
        f"group_report, {result['n']:,} samples / {result['n_classes']} classes / "
        f"{result['n_groups']} groups: labels {result['labels_median_s'] * 1e3:.1f} ms, "
        f"logits {result['logits_median_s'] * 1e3:.1f} ms (median of {result['repeats']})"
    )


if __name__ == "__main__":
    main()
