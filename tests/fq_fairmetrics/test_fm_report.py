"""Hand-worked examples, input conventions and bad input for group_report / FairnessAccumulator."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from fq_fairmetrics import FairnessAccumulator, FairnessReport, group_report

# Two groups, three classes; (true, pred) per sample:
#   A: (0,0) (0,1) (1,1) (2,2)   -> 3/4 correct
#   B: (0,0) (1,1) (1,0) (2,1)   -> 2/4 correct
Y_TRUE = [0, 0, 1, 2, 0, 1, 1, 2]
Y_PRED = [0, 1, 1, 2, 0, 1, 0, 1]
GROUPS = ["A"] * 4 + ["B"] * 4


def test_hand_worked_three_classes():
    r = group_report(Y_TRUE, Y_PRED, sensitive_features=GROUPS)
    # Acc_A = 3/4, Acc_B = 2/4; overall 5/8; avg (0.75 + 0.5) / 2; gap 0.25.
    assert (r.overall_acc, r.avg_acc, r.worst_acc, r.best_acc, r.gap) == (
        0.625,
        0.625,
        0.5,
        0.75,
        0.25,
    )
    # One-vs-rest per group:
    #   A: c0 TPR 1/2 TNR 2/2 | c1 TPR 1/1 TNR 2/3 (FP: (0,1)) | c2 TPR 1/1 TNR 3/3
    #   B: c0 TPR 1/1 TNR 2/3 (FP: (1,0)) | c1 TPR 1/2 TNR 1/2 (FP: (2,1)) | c2 TPR 0/1 TNR 3/3
    np.testing.assert_allclose(r.tpr, [[0.5, 1, 1], [1, 0.5, 0]])
    np.testing.assert_allclose(r.tnr, [[1, 2 / 3, 1], [2 / 3, 0.5, 1]])
    np.testing.assert_allclose(r.fpr, 1 - r.tnr)
    # gapTPR = (0.5, 0.5, 1) -> eopp1 = 2/3; gapTNR = (1/3, 1/6, 0) -> eopp0 = 1/6;
    # eodd = mean(0.5 + 1/3, 0.5 + 1/6, 1 + 0) = 2.5 / 3.
    assert r.eopp1 == pytest.approx(2 / 3)
    assert r.eopp0 == pytest.approx(1 / 6)
    assert r.eodd == pytest.approx(2.5 / 3)
    # P(y_hat=c | A) = (1/4, 2/4, 1/4), P(y_hat=c | B) = (2/4, 2/4, 0) -> spreads (1/4, 0, 1/4).
    assert r.dp_gap == pytest.approx(1 / 6)
    np.testing.assert_array_equal(r.group_n, [4, 4])


def test_hand_worked_absent_class_still_counts():
    # Same data with n_classes=4: class 3 never occurs. TPR^3 is undefined in both groups
    # (gapTPR^3 = 0, fewer than two defined); TNR^3 = 1 in both (gap 0); TNR is defined, so
    # class 3 counts: eopp1 = (0.5 + 0.5 + 1 + 0) / 4, eopp0 = (1/3 + 1/6) / 4, dp = 0.5 / 4.
    r = group_report(Y_TRUE, Y_PRED, sensitive_features=GROUPS, n_classes=4)
    assert r.counted_classes.tolist() == [True] * 4
    assert np.isnan(r.tpr[:, 3]).all()
    assert r.eopp1 == pytest.approx(0.5)
    assert r.eopp0 == pytest.approx(0.125)
    assert r.eodd == pytest.approx(0.625)
    assert r.dp_gap == pytest.approx(0.125)


def test_hand_worked_undefined_rate_is_skipped():
    # Add group C with samples (0,0) (0,2): only class 0 positives.
    #   C: TPR^0 = 1/2; TPR^1, TPR^2 undefined (skipped); TNR^0 undefined (no negatives of 0);
    #      TNR^1 = 2/2; TNR^2 = 1/2 (FP: (0,2)).
    # gapTPR: c0 max(.5,1,.5)-min = .5; c1 over A,B = .5; c2 over A,B = 1     -> eopp1 = 2/3
    # gapTNR: c0 over A,B = 1/3; c1 max(2/3,.5,1)-.5 = .5; c2 1-.5 = .5        -> eopp0 = 4/9
    r = group_report(Y_TRUE + [0, 0], Y_PRED + [0, 2], sensitive_features=GROUPS + ["C", "C"])
    assert np.isnan(r.tpr[2, 1]) and np.isnan(r.tnr[2, 0])
    assert r.eopp1 == pytest.approx(2 / 3)
    assert r.eopp0 == pytest.approx(4 / 9)
    assert r.eodd == pytest.approx(2 / 3 + 4 / 9)
    # Acc_C = 1/2: worst 0.5, best 0.75, avg (0.75 + 0.5 + 0.5) / 3
    assert r.avg_acc == pytest.approx(1.75 / 3)


def test_single_group_has_zero_gaps():
    r = group_report(Y_TRUE, Y_PRED, sensitive_features=[7] * 8)
    assert r.overall_acc == r.avg_acc == r.worst_acc == r.best_acc == 0.625
    assert r.gap == r.eopp0 == r.eopp1 == r.eodd == r.dp_gap == 0.0


def test_scores_strings_and_names():
    logits = np.eye(3)[Y_PRED] * 5.0 - 1.0  # argmax recovers Y_PRED
    by_scores = group_report(Y_TRUE, logits, sensitive_features=GROUPS)
    assert by_scores.metrics() == group_report(Y_TRUE, Y_PRED, sensitive_features=GROUPS).metrics()

    names = ["cat", "dog", "eel"]
    s_true = [names[t] for t in Y_TRUE]
    s_pred = [names[p] for p in Y_PRED]
    by_strings = group_report(s_true, s_pred, sensitive_features=GROUPS)
    assert by_strings.class_names == ("cat", "dog", "eel")
    assert by_strings.metrics() == by_scores.metrics()
    with_logits = group_report(s_true, logits, sensitive_features=GROUPS, class_names=names)
    assert with_logits.metrics() == by_scores.metrics()


def test_group_names_fix_order_and_empty_groups_do_not_count():
    base = group_report(Y_TRUE, Y_PRED, sensitive_features=GROUPS)
    r = group_report(Y_TRUE, Y_PRED, sensitive_features=GROUPS, group_names=["B", "Z", "A"])
    assert r.group_names == ("B", "Z", "A")
    np.testing.assert_array_equal(r.group_n, [4, 0, 4])
    assert math.isnan(r.group_acc[1]) and np.isnan(r.tpr[1]).all()
    assert r.metrics() == pytest.approx(base.metrics())


def test_report_from_counts_by_hand_and_exports():
    counts = np.zeros((2, 2, 2), dtype=np.int64)
    counts[0] = [[3, 1], [0, 4]]  # group 0: 7/8 correct
    counts[1] = [[2, 2], [2, 2]]  # group 1: 4/8 correct
    r = FairnessReport(counts=counts, group_names=("x", "y"))
    assert (r.worst_acc, r.best_acc, r.overall_acc) == (0.5, 0.875, 11 / 16)
    d = r.to_dict()
    json.dumps(d)  # plain Python types only
    assert d["groups"][1]["n"] == 8 and d["gap"] == 0.375
    assert r.to_polars("groups")["accuracy"].to_list() == [0.875, 0.5]
    assert r.to_polars("rates").shape == (4, 6)
    assert r.to_polars().shape == (1, 10)
    with pytest.raises(ValueError, match="table"):
        r.to_polars("everything")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="counts"):
        FairnessReport(counts=np.zeros((2, 2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="group_names"):
        FairnessReport(counts=counts, group_names=("x",))
    with pytest.raises(ValueError, match="at least one sample"):
        FairnessReport(counts=np.zeros((1, 2, 2), dtype=np.int64))
    with pytest.raises((ValueError, AttributeError, TypeError)):
        r.counts[0, 0, 0] = 5  # the report is immutable


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"y_true": [0, 1], "y_pred": [0], "sensitive_features": [0, 0]}, "y_pred"),
        ({"y_true": [0, 1], "y_pred": [0, 1], "sensitive_features": [0]}, "sensitive_features"),
        ({"y_true": [], "y_pred": [], "sensitive_features": []}, "y_true is empty"),
        (
            {"y_true": [0, 1], "y_pred": [[0.1, np.nan], [1, 0]], "sensitive_features": [0, 0]},
            "NaN",
        ),
        (
            {"y_true": [0, -1], "y_pred": [0, 1], "sensitive_features": [0, 0]},
            "y_true contains negative",
        ),
        (
            {"y_true": [0, 1], "y_pred": [0, -2], "sensitive_features": [0, 0]},
            "y_pred contains negative",
        ),
        (
            {"y_true": [0, 5], "y_pred": [0, 1], "sensitive_features": [0, 0], "n_classes": 3},
            "y_true.*n_classes",
        ),
        (
            {"y_true": [0, 1], "y_pred": [0, 3], "sensitive_features": [0, 0], "n_classes": 2},
            "y_pred.*n_classes",
        ),
        ({"y_true": [0, 2], "y_pred": np.zeros((2, 2)), "sensitive_features": [0, 0]}, "y_true"),
        (
            {
                "y_true": [0, 1],
                "y_pred": np.zeros((2, 2)),
                "sensitive_features": [0, 0],
                "n_classes": 3,
            },
            "n_classes",
        ),
        (
            {"y_true": [0, 1], "y_pred": [0, 1], "sensitive_features": [0, 0], "n_classes": 0},
            "n_classes",
        ),
        ({"y_true": [0.5, 1], "y_pred": [0, 1], "sensitive_features": [0, 0]}, "y_true"),
        ({"y_true": ["a", "b"], "y_pred": [0, 1], "sensitive_features": [0, 0]}, "y_true"),
        (
            {
                "y_true": ["a", "b"],
                "y_pred": ["a", "c"],
                "sensitive_features": [0, 0],
                "class_names": ["a", "b"],
            },
            "class_names",
        ),
        (
            {
                "y_true": [0, 1],
                "y_pred": [0, 1],
                "sensitive_features": ["u", "v"],
                "group_names": ["u"],
            },
            "group_names",
        ),
        (
            {"y_true": [0, 1], "y_pred": [0, 1], "sensitive_features": [0.0, np.nan]},
            "sensitive_features",
        ),
        (
            {"y_true": [[0, 1]], "y_pred": [0, 1], "sensitive_features": [0, 0]},
            "y_true must be 1-D",
        ),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        group_report(kwargs.pop("y_true"), kwargs.pop("y_pred"), **kwargs)


def test_accumulator_fixed_groups_and_errors():
    acc = FairnessAccumulator(n_classes=3, group_names=["B", "A"])
    with pytest.raises(ValueError, match="no samples"):
        acc.compute()
    acc.update(Y_TRUE[:3], Y_PRED[:3], sensitive_features=GROUPS[:3])
    acc.update(np.array(Y_TRUE[3:]), np.eye(3)[Y_PRED[3:]], sensitive_features=GROUPS[3:])
    r = acc.compute()
    assert r.group_names == ("B", "A") and acc.n_samples == 8
    assert r.metrics() == group_report(Y_TRUE, Y_PRED, sensitive_features=GROUPS).metrics()
    with pytest.raises(ValueError, match="group_names"):
        acc.update([0], [0], sensitive_features=["C"])
    with pytest.raises(ValueError, match="n_classes"):
        acc.update([3], [0], sensitive_features=["A"])
    acc.reset()
    assert acc.n_samples == 0
    with pytest.raises(ValueError, match="n_classes or class_names"):
        FairnessAccumulator()
    with pytest.raises(ValueError, match="class_names"):
        FairnessAccumulator(n_classes=2).update(["a"], ["b"], sensitive_features=[0])
    words = FairnessAccumulator(class_names=["cat", "dog", "eel"])
    words.update(["eel"], ["eel"], sensitive_features=[1])
    words.update(["cat", "dog"], ["dog", "dog"], sensitive_features=[0, 1])
    assert words.compute().tpr.tolist()[1] == [pytest.approx(np.nan, nan_ok=True), 1.0, 1.0]


def test_large_input_is_vectorized_and_exact():
    # 200k samples: compare against counts from np.add.at (an independent counting path).
    rng = np.random.default_rng(0)
    n, c, g = 200_000, 114, 6
    t, p, s = rng.integers(0, c, n), rng.integers(0, c, n), rng.integers(1, g + 1, n)
    r = group_report(t, p, sensitive_features=s, n_classes=c)
    ref = np.zeros((g, c, c), dtype=np.int64)
    np.add.at(ref, (s - 1, t, p), 1)
    np.testing.assert_array_equal(r.counts, ref)
    assert r.group_names == tuple(range(1, g + 1))
    assert r.overall_acc == pytest.approx(np.mean(t == p))


@pytest.mark.parametrize("col", [0, 1, 2])
@pytest.mark.parametrize("row", [0, 3])
def test_nan_score_anywhere_is_rejected(row, col):
    scores = np.arange(12, dtype=np.float32).reshape(4, 3)
    scores[row, col] = np.nan
    with pytest.raises(ValueError, match="y_pred contains NaN"):
        group_report([0, 1, 2, 0], scores, sensitive_features=[0, 0, 1, 1])
