"""The vectorized engine against a deliberately naive reference, plus invariances and bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fq_fairmetrics import METRICS, FairnessAccumulator, group_report
from hypothesis import given
from hypothesis import strategies as st


def naive_metrics(y_true, y_pred, groups, n_classes, group_names):
    """METHOD.md section 7 written as plain loops over groups, classes and samples."""
    samples = list(zip(y_true, y_pred, groups, strict=True))
    acc = {}
    for g in group_names:
        mine = [(t, p) for t, p, gg in samples if gg == g]
        if mine:
            acc[g] = sum(t == p for t, p in mine) / len(mine)
    present = list(acc)

    def spread(values):
        values = [v for v in values if v is not None]
        return max(values) - min(values) if len(values) >= 2 else 0.0

    gaps_tpr, gaps_tnr, gaps_fpr, counted, dp = [], [], [], [], []
    for c in range(n_classes):
        tprs, tnrs, fprs, rates = [], [], [], []
        for g in present:
            mine = [(t, p) for t, p, gg in samples if gg == g]
            pos = [(t, p) for t, p in mine if t == c]
            neg = [(t, p) for t, p in mine if t != c]
            tpr = sum(p == c for _, p in pos) / len(pos) if pos else None
            tnr = sum(p != c for _, p in neg) / len(neg) if neg else None
            tprs.append(tpr)
            tnrs.append(tnr)
            fprs.append(None if tnr is None else 1 - tnr)
            rates.append(sum(p == c for _, p in mine) / len(mine))
        dp.append(spread(rates))
        if any(v is not None for v in tprs + tnrs):
            counted.append(c)
            gaps_tpr.append(spread(tprs))
            gaps_tnr.append(spread(tnrs))
            gaps_fpr.append(spread(fprs))
    accs = [acc[g] for g in present]
    return {
        "overall_acc": sum(t == p for t, p, _ in samples) / len(samples),
        "avg_acc": sum(accs) / len(accs),
        "worst_acc": min(accs),
        "best_acc": max(accs),
        "gap": max(accs) - min(accs),
        "eopp1": sum(gaps_tpr) / len(counted),
        "eopp0": sum(gaps_tnr) / len(counted),
        "eodd": sum(a + b for a, b in zip(gaps_tpr, gaps_fpr, strict=True)) / len(counted),
        "dp_gap": sum(dp) / n_classes,
    }


@st.composite
def problems(draw):
    """Up to 8 groups (some possibly empty) and 20 classes (some never seen), small N."""
    n_groups = draw(st.integers(1, 8))
    n_classes = draw(st.integers(1, 20))
    n = draw(st.integers(1, 60))
    # draw labels from a random subset of classes so that empty class cells are common
    used = draw(
        st.lists(st.integers(0, n_classes - 1), min_size=1, max_size=n_classes, unique=True)
    )
    labels = st.sampled_from(used)
    y_true = draw(st.lists(labels, min_size=n, max_size=n))
    y_pred = draw(
        st.lists(st.one_of(labels, st.integers(0, n_classes - 1)), min_size=n, max_size=n)
    )
    groups = draw(st.lists(st.integers(0, n_groups - 1), min_size=n, max_size=n))
    return y_true, y_pred, groups, n_classes, list(range(n_groups))


@given(problems())
def test_vectorized_matches_naive_reference(problem):
    y_true, y_pred, groups, n_classes, group_names = problem
    report = group_report(
        y_true, y_pred, sensitive_features=groups, n_classes=n_classes, group_names=group_names
    )
    expected = naive_metrics(y_true, y_pred, groups, n_classes, group_names)
    for name in METRICS:
        assert getattr(report, name) == pytest.approx(expected[name], abs=1e-12), name
    # empty groups are kept in the table but carry no numbers
    for i, g in enumerate(group_names):
        assert report.group_n[i] == groups.count(g)
        assert math.isnan(report.group_acc[i]) == (groups.count(g) == 0)


@given(problems(), st.integers(1, 5))
def test_accumulator_over_batches_equals_one_shot(problem, n_batches):
    y_true, y_pred, groups, n_classes, _ = problem
    one_shot = group_report(y_true, y_pred, sensitive_features=groups, n_classes=n_classes)
    acc = FairnessAccumulator(n_classes=n_classes)
    cuts = np.array_split(np.arange(len(y_true)), n_batches)
    for idx in reversed(cuts):  # reversed: groups appear in a different order than sorted
        if idx.size:
            acc.update(
                np.take(y_true, idx), np.take(y_pred, idx), sensitive_features=np.take(groups, idx)
            )
    streamed = acc.compute()
    assert streamed.group_names == one_shot.group_names
    np.testing.assert_array_equal(streamed.counts, one_shot.counts)
    assert streamed.metrics() == one_shot.metrics()


@given(problems(), st.randoms(use_true_random=False))
def test_invariances(problem, rnd):
    y_true, y_pred, groups, n_classes, _ = problem
    base = group_report(y_true, y_pred, sensitive_features=groups, n_classes=n_classes).metrics()

    order = list(range(len(y_true)))
    rnd.shuffle(order)
    permuted = group_report(
        [y_true[i] for i in order],
        [y_pred[i] for i in order],
        sensitive_features=[groups[i] for i in order],
        n_classes=n_classes,
    ).metrics()

    names = [f"grp-{k}" for k in range(8)]
    rnd.shuffle(names)  # a renaming that also changes the sorted order of groups
    renamed_groups = group_report(
        y_true, y_pred, sensitive_features=[names[g] for g in groups], n_classes=n_classes
    ).metrics()

    perm = list(range(n_classes))
    rnd.shuffle(perm)
    renamed_classes = group_report(
        [perm[t] for t in y_true],
        [perm[p] for p in y_pred],
        sensitive_features=groups,
        n_classes=n_classes,
    ).metrics()

    for other in (permuted, renamed_groups, renamed_classes):
        for name in METRICS:
            assert other[name] == pytest.approx(base[name], abs=1e-12), name


@given(problems())
def test_bounds(problem):
    y_true, y_pred, groups, n_classes, _ = problem
    r = group_report(y_true, y_pred, sensitive_features=groups, n_classes=n_classes)
    for name in (
        "gap",
        "eopp0",
        "eopp1",
        "dp_gap",
        "overall_acc",
        "avg_acc",
        "worst_acc",
        "best_acc",
    ):
        assert 0.0 <= getattr(r, name) <= 1.0, name
    assert 0.0 <= r.eodd <= 2.0
    assert r.worst_acc <= r.avg_acc <= r.best_acc


def test_eodd_reaches_its_upper_bound_of_two():
    # Two classes, two groups. Group A always right, group B always wrong:
    # class 0: TPR_A = 1, TPR_B = 0 -> gapTPR 1; TNR_A = 1, TNR_B = 0 -> gapFPR 1. Same for class 1.
    # eodd = mean_c (1 + 1) = 2. Yet each group predicts 0 and 1 half the time, so
    # P(y_hat=c | A) = P(y_hat=c | B) = 0.5 and dp_gap = 0: parity says nothing about errors.
    r = group_report([0, 1, 0, 1], [0, 1, 1, 0], sensitive_features=["A", "A", "B", "B"])
    assert r.eodd == 2.0
    assert r.eopp1 == r.eopp0 == r.gap == 1.0
    assert r.dp_gap == 0.0
