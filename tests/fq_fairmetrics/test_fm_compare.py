"""``compare`` and its paired statistics (issue 23 section 1, issue 24 section 3), against
statsmodels, hand-worked bounds, brute-force bootstraps and simulations with a known effect."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from fq_fairmetrics import (
    TooFewSamplesWarning,
    bootstrap_ci,
    change_interval,
    clopper_pearson,
    compare,
    compare_outcomes,
    group_report,
    margin_sample_size,
    mcnemar_exact,
    mcnemar_interval,
    minimal_detectable_effect,
    paired_worst,
    seed_image_verdict,
    seeds_needed,
    t_interval,
)
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint


def _pair(n: int, losses: int, gains: int, acc: float = 0.8, seed: int = 0):
    """Correctness of a reference and a candidate on ``n`` samples with the given discordance."""
    rng = np.random.default_rng(seed)
    ref = rng.random(n) < acc
    right, wrong = np.flatnonzero(ref), np.flatnonzero(~ref)
    cand = ref.copy()
    cand[rng.choice(right, losses, replace=False)] = False
    cand[rng.choice(wrong, gains, replace=False)] = True
    return ref, cand


@pytest.mark.parametrize(("b", "c"), [(0, 0), (4, 0), (1, 9), (25, 40), (80, 20), (7, 7)])
def test_mcnemar_exact_matches_statsmodels(b: int, c: int) -> None:
    want = mcnemar(np.array([[50, b], [c, 50]]), exact=True).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize(("k", "n"), [(0, 7), (3, 7), (7, 7), (40, 2000), (1, 500)])
def test_clopper_pearson_matches_statsmodels(k: int, n: int) -> None:
    low, high = proportion_confint(k, n, alpha=0.05, method="beta")
    assert clopper_pearson(k, n) == pytest.approx((low, high), abs=1e-12)


def test_mcnemar_interval_excludes_0_exactly_when_the_exact_test_rejects() -> None:
    for b in range(0, 30):
        for c in range(0, 30, 3):
            lo, hi = mcnemar_interval(b, c, 1000)
            assert (lo > 0 or hi < 0) == (mcnemar_exact(b, c) < 0.05), (b, c)
            assert lo <= (c - b) / 1000 <= hi


def test_change_interval_covers_at_least_its_level() -> None:
    rng = np.random.default_rng(0)
    for n, p_loss, p_gain in ((60, 0.02, 0.0), (300, 0.05, 0.03), (2000, 0.01, 0.015)):
        counts = rng.multinomial(n, [p_loss, p_gain, 1 - p_loss - p_gain], size=400)
        truth = p_gain - p_loss
        hits = [lo <= truth <= hi for lo, hi in (change_interval(b, c, n) for b, c, _ in counts)]
        assert np.mean(hits) >= 0.95


def test_a_few_one_way_discordant_samples_are_no_difference() -> None:
    """4 losses, no gain on 500 samples: the asymptotic test and a percentile bootstrap both
    call it a difference; McNemar's exact test (p = 0.125) does not, nor may we."""
    ref, cand = _pair(500, losses=4, gains=0)
    groups = np.zeros(500, dtype=int)
    asymptotic = mcnemar(np.array([[0, 4], [0, 0]]), exact=False, correction=False).pvalue
    assert asymptotic < 0.05
    rng = np.random.default_rng(1)
    boot = [np.mean(cand[i]) - np.mean(ref[i]) for i in rng.integers(0, 500, (2000, 500))]
    assert np.quantile(boot, 0.975) < 0  # the bootstrap excludes 0
    with pytest.warns(TooFewSamplesWarning, match=r"0 \(500\)"):
        row = compare_outcomes(ref, cand, groups).row(0)
    assert (row.losses, row.gains) == (4, 0)
    assert row.p_value == pytest.approx(mcnemar(np.array([[0, 4], [0, 0]]), exact=True).pvalue)
    assert row.verdict_change == "no difference shown" and row.low < 0 < row.high


def test_three_points_on_2000_samples_per_group_is_worse() -> None:
    y = np.tile([0, 1, 2, 1], 1000)
    groups = np.repeat(["dark", "light"], 2000)
    ref_ok, cand_ok = _pair(4000, 0, 0)
    ref = np.where(ref_ok, y, (y + 1) % 3)
    cand = ref.copy()
    dark_right = np.flatnonzero(ref_ok[:2000])
    dark_wrong = np.flatnonzero(~ref_ok[:2000])
    cand[dark_right[:80]] = (y[dark_right[:80]] + 1) % 3  # 80 losses
    cand[dark_wrong[:20]] = y[dark_wrong[:20]]  # 20 gains: -3 points
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TooFewSamplesWarning)
        result = compare(y, groups, ref, cand)
    dark, light = result.row("dark"), result.row("light")
    assert dark.change == pytest.approx(-3.0) and (dark.losses, dark.gains) == (80, 20)
    assert mcnemar(np.array([[0, 80], [20, 0]]), exact=True).pvalue < 0.05
    assert dark.verdict_change == "worse" and dark.verdict_margin == "inferior"
    assert light.change == 0 and light.verdict_change == "no difference shown"
    assert light.verdict_margin == "non-inferior"  # identical on 2,000: the loss is bounded
    assert not result.non_inferior
    assert result.worst.kind == "worst" and result.worst.group in ("dark", "light")


def test_identical_predictions_on_a_small_group_are_inconclusive_and_warned() -> None:
    y = np.arange(2007) % 3
    groups = np.array(["big"] * 2000 + ["small"] * 7)
    with pytest.warns(TooFewSamplesWarning, match=r"'small' \(7\).*437"):
        result = compare(y, groups, y, y)
    assert result.row("small").verdict_margin == "inconclusive"
    assert result.row("big").verdict_margin == "non-inferior"
    assert result.row("small").margin_low < -30  # 7 images cannot bound a loss below 41 points
    assert result.row("small").low == result.row("small").high == 0  # no discordant sample
    assert "not decidable" in result.to_markdown()


def test_margin_sample_size_hand_worked() -> None:
    # identical predictions: the bound is U(b=0) = 1 - (alpha/4)^(1/n); it clears 1 point when
    # n > ln(0.0125) / ln(0.99) = 436.02
    assert margin_sample_size(1.0) == math.floor(math.log(0.0125) / math.log(0.99)) + 1 == 437
    n = margin_sample_size(1.0, discordance=0.05)
    assert change_interval(n * 0.025, n * 0.025, n)[0] > -0.01
    assert change_interval((n - 1) * 0.025, (n - 1) * 0.025, n - 1)[0] <= -0.01
    assert margin_sample_size(2.0, discordance=0.05) < n
    with pytest.raises(ValueError, match="margin"):
        margin_sample_size(0.0)


def test_exact_mde_has_about_80_percent_power_in_simulation() -> None:
    n, pi = 2000, 0.06
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TooFewSamplesWarning)
        row = compare_outcomes(*_pair(n, 60, 60), np.zeros(n, dtype=int)).row(0)
    effect = row.mde / 100  # from the measured discordance, 120 / 2000
    rng = np.random.default_rng(2)
    p_loss, p_gain = (pi - effect) / 2, (pi + effect) / 2
    counts = rng.multinomial(n, [p_loss, p_gain, 1 - pi], size=2000)
    power = np.mean([mcnemar_exact(b, c) < 0.05 for b, c, _ in counts])
    assert 0.72 <= power <= 0.88, power


def test_seed_mde_has_about_80_percent_power_in_simulation() -> None:
    rng = np.random.default_rng(3)
    sd, seeds = 0.01, 5
    mde = minimal_detectable_effect(seeds=seeds, seed_sd=sd, image_sd=0.0)
    draws = rng.normal(mde, sd, size=(4000, seeds))
    power = np.mean([seed_image_verdict(*t_interval(v)[1:], 1.0, 2.0) == "resolved" for v in draws])
    assert 0.74 <= power <= 0.86, power
    assert math.isnan(minimal_detectable_effect(seeds=1, seed_sd=math.nan, image_sd=0.01))
    image_only = minimal_detectable_effect(seeds=50, seed_sd=0.0, image_sd=0.01)
    assert image_only == pytest.approx((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * 0.01)


def test_seeds_needed_is_the_first_seed_count_that_reaches_the_effect() -> None:
    s = seeds_needed(0.01, seed_sd=0.02, image_sd=0.001)
    assert s is not None
    mde = [minimal_detectable_effect(seeds=k, seed_sd=0.02, image_sd=0.001) for k in (s - 1, s)]
    assert mde[1] <= 0.01 < mde[0]
    assert seeds_needed(0.01, seed_sd=0.02, image_sd=0.01) is None  # images, not seeds, limit
    assert seeds_needed(0.0, seed_sd=0.02, image_sd=0.001) is None


def test_t_interval_matches_scipy() -> None:
    v = np.array([0.01, -0.004, 0.02, 0.007])
    want = stats.ttest_1samp(v, 0).confidence_interval(0.95)
    assert t_interval(v)[1:] == pytest.approx((want.low, want.high), rel=1e-12)
    assert math.isnan(t_interval([0.3])[1])


def test_several_seeds_count_seed_and_image_noise() -> None:
    n = 1500
    groups = np.repeat([0, 1, 2], n // 3)
    refs, cands = zip(*(_pair(n, 10 + 5 * s, 12, seed=s) for s in range(4)), strict=True)
    ref, cand = np.stack(refs), np.stack(cands)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TooFewSamplesWarning)
        result = compare_outcomes(ref, cand, groups, group_names=["I", "II", "III"])
    for g, name in enumerate(["I", "II", "III"]):
        row = result.row(name)
        per_seed = (cand[:, groups == g].mean(axis=1) - ref[:, groups == g].mean(axis=1)) * 100
        t = stats.ttest_1samp(per_seed, 0).confidence_interval(0.95)
        b = (ref & ~cand)[:, groups == g].sum(axis=1).mean()
        c = (~ref & cand)[:, groups == g].sum(axis=1).mean()
        lo, hi = (100 * x for x in change_interval(b, c, n // 3))
        assert row.change == pytest.approx(per_seed.mean())
        assert (row.low, row.high) == pytest.approx((min(t.low, lo), max(t.high, hi)))
        assert (row.margin_low, row.margin_high) == (row.low, row.high)
        assert math.isnan(row.p_value)
    assert result.seeds == 4 and result.average.n == n


def test_paired_worst_matches_a_brute_force_bootstrap() -> None:
    rng = np.random.default_rng(4)
    groups = np.repeat([0, 1], [30, 50])
    a, b = rng.random((3, 80)) < 0.7, rng.random((3, 80)) < 0.6
    pw = paired_worst(a, b, groups, resamples=300)

    def worst(x: np.ndarray, idx: np.ndarray) -> float:
        return min(x[idx[groups[idx] == g]].mean() for g in (0, 1))

    full = np.arange(80)
    assert pw.values == pytest.approx([worst(a[s], full) - worst(b[s], full) for s in range(3)])
    sizes = [int((groups == g).sum()) for g in (0, 1)]
    draws = []
    for _ in range(300):
        idx = np.concatenate(
            [rng.choice(np.flatnonzero(groups == g), k) for g, k in enumerate(sizes)]
        )
        draws.append(np.mean([worst(a[s], idx) - worst(b[s], idx) for s in range(3)]))
    assert pw.image_sd == pytest.approx(np.std(draws, ddof=1), rel=0.2)
    assert pw.verdict == seed_image_verdict(pw.low, pw.high, pw.image_low, pw.image_high)


def test_outputs_and_bad_input() -> None:
    y = np.array(["mel", "nev"] * 300)
    groups = np.repeat(["a", "b"], 300)
    ref = y.copy()
    cand = np.where(np.arange(600) % 50 == 0, np.where(y == "mel", "nev", "mel"), y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TooFewSamplesWarning)
        result = compare(y, groups, ref, cand, reference_name="FP32", candidate_name="4-bit")
    md = result.to_markdown()
    assert "| a | 300 | 100.0 | 98.0 | -2.0 [" in md and "FP32" in md and "worst: " in md
    frame = result.to_frame()
    assert frame.height == 4 and frame["kind"].to_list() == ["group", "group", "worst", "average"]
    import matplotlib

    matplotlib.use("Agg")
    assert result.plot().axes
    with pytest.raises(ValueError, match="same shape"):
        compare_outcomes(np.ones(5, bool), np.ones(4, bool), np.zeros(5))
    with pytest.raises(ValueError, match="margin"):
        compare(y, groups, ref, cand, margin=0)
    with pytest.raises(ValueError, match="both be integer"):
        compare(y, groups, np.zeros(600, int), cand)
    with pytest.raises(ValueError, match="class_names"):
        compare(y, groups, ref, cand, class_names=["mel"])
    with pytest.raises(ValueError, match="candidate must be"):
        compare(y, groups, ref, cand[:10])
    with pytest.raises(KeyError, match="groups"):
        result.row("c")


def test_group_names_mean_the_same_in_every_entry_point() -> None:
    """Issue 23 section 3: ``group_names`` names groups; integer groups are codes into it."""
    y_true, y_pred = [0, 1, 1, 0, 1, 0], [0, 1, 0, 0, 1, 1]
    codes, names = [0, 0, 0, 1, 1, 1], ("I-III", "IV-VI")
    by_code = bootstrap_ci(y_true, y_pred, sensitive_features=codes, group_names=names)
    by_name = bootstrap_ci(
        y_true, y_pred, sensitive_features=[names[c] for c in codes], group_names=names
    )
    assert by_code.report.group_names == names and by_code.to_dict() == by_name.to_dict()
    assert group_report(y_true, y_pred, sensitive_features=codes, group_names=names).gap == (
        by_name.report.gap
    )
    with pytest.raises(ValueError, match=r"code\(s\) \[2\] outside group_names"):
        group_report(y_true, y_pred, sensitive_features=[0, 1, 2, 0, 1, 2], group_names=names)
    # integer names keep matching by value
    assert (
        group_report(y_true, y_pred, sensitive_features=[5] * 6, group_names=[1, 5]).group_n[1] == 6
    )
