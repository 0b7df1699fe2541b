"""bootstrap_ci against a brute-force index bootstrap and a normal approximation; seed_summary."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fq_fairmetrics import METRICS, bootstrap_ci, group_report, seed_summary
from scipy import stats


def _data(n=600, c=4, seed=1):
    rng = np.random.default_rng(seed)
    groups = rng.choice(["f", "m", "u"], size=n, p=[0.5, 0.3, 0.2])
    y_true = rng.integers(0, c, n)
    # group-dependent accuracy so that the gaps are away from 0
    p_right = np.select([groups == "f", groups == "m"], [0.8, 0.6], 0.5)
    right = rng.random(n) < p_right
    y_pred = np.where(right, y_true, rng.integers(0, c, n))
    return y_true, y_pred, groups


def test_matches_brute_force_index_bootstrap():
    y_true, y_pred, groups = _data()
    ci = bootstrap_ci(y_true, y_pred, sensitive_features=groups, n_resamples=2000, seed=3)
    # brute force: resample sample indices with replacement within each group
    rng = np.random.default_rng(11)
    members = [np.flatnonzero(groups == g) for g in ("f", "m", "u")]
    brute = {m: [] for m in METRICS}
    for _ in range(400):
        idx = np.concatenate([rng.choice(ix, size=ix.size, replace=True) for ix in members])
        r = group_report(y_true[idx], y_pred[idx], sensitive_features=groups[idx], n_classes=4)
        for m in METRICS:
            brute[m].append(getattr(r, m))
    for m in METRICS:
        lo, hi = np.quantile(brute[m], [0.025, 0.975])
        width = hi - lo
        # two Monte Carlo estimates of the same quantiles: agree to a fraction of the width
        assert ci.low[m] == pytest.approx(lo, abs=0.2 * width + 1e-12), m
        assert ci.high[m] == pytest.approx(hi, abs=0.2 * width + 1e-12), m
        assert np.std(ci.samples[m]) == pytest.approx(np.std(brute[m]), rel=0.2), m


def test_group_accuracy_interval_matches_binomial_normal_approximation():
    # One group: overall_acc over the resamples is Binomial(n, p)/n, with 95% interval close to
    # p +- 1.96 sqrt(p (1 - p) / n).
    rng = np.random.default_rng(0)
    n = 4000
    y_true = rng.integers(0, 3, n)
    y_pred = np.where(rng.random(n) < 0.7, y_true, (y_true + 1) % 3)
    ci = bootstrap_ci(y_true, y_pred, sensitive_features=np.zeros(n, int), n_resamples=3000, seed=0)
    p = np.mean(y_true == y_pred)
    half = 1.96 * math.sqrt(p * (1 - p) / n)
    assert ci.interval("overall_acc") == pytest.approx((p - half, p + half), abs=0.15 * half)
    assert ci.interval("gap") == (0.0, 0.0)  # one group: every resample has gap 0


def test_reproducible_ordered_and_validated():
    y_true, y_pred, groups = _data(n=200)
    a = bootstrap_ci(y_true, y_pred, sensitive_features=groups, n_resamples=300, seed=5)
    b = bootstrap_ci(y_true, y_pred, sensitive_features=groups, n_resamples=300, seed=5)
    assert a.low == b.low and a.high == b.high
    narrow = bootstrap_ci(
        y_true, y_pred, sensitive_features=groups, n_resamples=300, confidence=0.5
    )
    for m in METRICS:
        assert a.low[m] <= a.high[m]
        assert narrow.high[m] - narrow.low[m] <= a.high[m] - a.low[m] + 1e-12
        assert a.to_dict()[m]["estimate"] == getattr(a.report, m)
    assert a.samples["gap"].shape == (300,)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci(y_true, y_pred, sensitive_features=groups, n_resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(y_true, y_pred, sensitive_features=groups, confidence=1.0)
    with pytest.raises(ValueError, match="metric"):
        a.interval("accuracy")  # type: ignore[arg-type]


def test_seed_summary_against_scipy_t_interval():
    values = [0.71, 0.74, 0.69, 0.73, 0.70]
    mean, std, lo, hi = seed_summary(values)
    # independent reference: scipy's t.interval with the standard error of the mean
    ref_lo, ref_hi = stats.t.interval(0.95, df=4, loc=np.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(0.714)
    assert std == pytest.approx(math.sqrt(sum((v - 0.714) ** 2 for v in values) / 4))
    assert (lo, hi) == pytest.approx((ref_lo, ref_hi))
    # n = 2 by hand: mean 2, std sqrt(2), half-width t_{.975,1} * sqrt(2)/sqrt(2) = 12.7062
    s = seed_summary(np.array([1.0, 3.0]))
    assert (s.mean, s.std) == (2.0, pytest.approx(math.sqrt(2)))
    assert s.ci95_high - 2.0 == pytest.approx(12.7062047, rel=1e-6)


def test_seed_summary_edge_cases():
    one = seed_summary([0.5])
    assert one.mean == 0.5 and math.isnan(one.std) and math.isnan(one.ci95_low)
    assert seed_summary([2.0, 2.0, 2.0]) == (2.0, 0.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="empty"):
        seed_summary([])
    with pytest.raises(ValueError, match="finite"):
        seed_summary([1.0, float("nan")])
