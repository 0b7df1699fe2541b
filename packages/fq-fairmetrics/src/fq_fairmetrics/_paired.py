"""Paired differences over seeds and test images (METHOD.md sections 7.2 and 7.3).

A difference between two methods trained on the same seeds and tested on the same images has two
sources of noise: training (seeds) and the finite test set (images). :func:`paired_difference`
carries both intervals (a Student-t interval of the per-seed differences, a percentile interval
of the seed-mean difference over paired test-set resamples); :func:`seed_image_verdict` calls a
difference resolved only when both exclude 0 on the same side. :func:`minimal_detectable_effect`
is the smallest true difference the rule would resolve with the given power, from the spread the
run measured, and :func:`seeds_needed` how many seeds would bring it down to a given effect.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: Paired test-set resamples behind an image interval, unless told otherwise.
IMAGE_RESAMPLES = 2000


def _quantile_level(confidence: float) -> float:
    """``1 - (1 - confidence) / 2``, rounded so that 0.95 gives exactly 0.975."""
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence!r}")
    return round(1.0 - (1.0 - float(confidence)) / 2, 12)


def _check_power(power: float) -> float:
    if not 0.0 < float(power) < 1.0:
        raise ValueError(f"power must be in (0, 1); got {power!r}")
    return float(power)


def t_interval(
    values: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values [S]`` and its Student-t interval,
    ``mean +- t_{q, S-1} * std / sqrt(S)`` (``std`` with ``ddof=1``, ``q = 1 - (1-confidence)/2``).
    NaN bounds with one value (no spread measured), all NaN with none."""
    q = _quantile_level(confidence)
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(arr.mean())
    if arr.size == 1:
        return mean, math.nan, math.nan
    from scipy import stats

    std = float(arr.std(ddof=1))
    half = float(stats.t.ppf(q, df=arr.size - 1)) * std / math.sqrt(arr.size)
    return mean, mean - half, mean + half


def seed_image_verdict(low: float, high: float, image_low: float, image_high: float) -> str:
    """``"resolved"`` when the seed interval ``[low, high]`` and the test-image interval
    ``[image_low, image_high]`` both exclude 0 on the same side, else ``"not resolved"``.

    An undefined interval (NaN bounds: one seed, or no test predictions) is ``"not resolved"``:
    a difference is never called without both intervals.
    """
    if any(math.isnan(x) for x in (low, high, image_low, image_high)):
        return "not resolved"
    above, below = low > 0 and image_low > 0, high < 0 and image_high < 0
    return "resolved" if above or below else "not resolved"


def minimal_detectable_effect(
    *,
    seeds: int,
    seed_sd: float,
    image_sd: float,
    confidence: float = 0.95,
    power: float = 0.8,
) -> float:
    """The smallest true paired difference :func:`seed_image_verdict` resolves with ``power``.

    ``max(MDE_seed, MDE_image)`` with ``MDE_seed = (t_{q, S-1} + t_{power, S-1}) * seed_sd /
    sqrt(S)`` (the one-sample t-test's approximate power formula) and ``MDE_image = (z_q +
    z_power) * image_sd``, ``q = 1 - (1-confidence)/2``. ``seed_sd``: the sample std of the
    per-seed differences; ``image_sd``: the std of the seed-mean difference over test-set
    resamples (same units as the result). NaN with fewer than two seeds (no seed spread measured,
    so no difference can be resolved) or a NaN spread.
    """
    q, power = _quantile_level(confidence), _check_power(power)
    if seeds < 2 or math.isnan(seed_sd) or math.isnan(image_sd):
        return math.nan
    from scipy import stats

    seed_part = (stats.t.ppf(q, seeds - 1) + stats.t.ppf(power, seeds - 1)) * seed_sd
    image_part = (stats.norm.ppf(q) + stats.norm.ppf(power)) * image_sd
    return float(max(seed_part / math.sqrt(seeds), image_part))


def seeds_needed(
    effect: float,
    *,
    seed_sd: float,
    image_sd: float,
    confidence: float = 0.95,
    power: float = 0.8,
    max_seeds: int = 10_000,
) -> int | None:
    """The fewest seeds (>= 2) whose :func:`minimal_detectable_effect` is at most ``|effect|``.

    ``None`` when no number of seeds up to ``max_seeds`` reaches it: the test images' part alone
    (``image_sd``) exceeds the effect, so more test images are needed, not more seeds; or the
    effect is 0 or NaN, or a spread is NaN (one seed measures no seed spread).
    """
    target = abs(effect)
    if math.isnan(target) or target == 0 or math.isnan(seed_sd) or math.isnan(image_sd):
        return None
    from scipy import stats

    q = _quantile_level(confidence)
    if (stats.norm.ppf(q) + stats.norm.ppf(_check_power(power))) * image_sd > target:
        return None  # the test images' part alone exceeds the effect: seeds cannot help
    for s in range(2, max_seeds + 1):
        mde = minimal_detectable_effect(
            seeds=s, seed_sd=seed_sd, image_sd=image_sd, confidence=confidence, power=power
        )
        if mde <= target:
            return s
    return None


@dataclass(frozen=True, kw_only=True, eq=False)
class PairedDifference:
    """A paired difference ``a - b`` over seeds, with its seed and test-image intervals.

    ``values [S]``: per-seed differences; ``mean``, ``low``, ``high``: their mean and t-interval
    (:func:`t_interval`); ``image_low``, ``image_high``: the percentile interval of the seed-mean
    difference over paired test-set resamples and ``image_sd`` its std (NaN without resamples);
    ``verdict``: :func:`seed_image_verdict`; ``mde``: :func:`minimal_detectable_effect` (NaN
    with one seed). Same units as ``values`` (the grid: fractions).
    """

    values: np.ndarray = field(repr=False)
    mean: float
    low: float
    high: float
    image_low: float
    image_high: float
    image_sd: float
    verdict: str
    mde: float
    confidence: float


def paired_difference(
    values: Sequence[float] | np.ndarray,
    image_draws: np.ndarray | None = None,
    *,
    confidence: float = 0.95,
    power: float = 0.8,
) -> PairedDifference:
    """:class:`PairedDifference` from per-seed differences ``values [S]`` and, optionally, the
    seed-mean difference on each of ``R`` paired test-set resamples ``image_draws [R]``."""
    q = _quantile_level(confidence)
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    mean, low, high = t_interval(arr, confidence)
    img_low = img_high = img_sd = math.nan
    if image_draws is not None and np.size(image_draws):
        draws = np.asarray(image_draws, dtype=np.float64).reshape(-1)
        img_low, img_high = (float(x) for x in np.quantile(draws, [round(1 - q, 12), q]))
        img_sd = float(draws.std(ddof=1)) if draws.size > 1 else math.nan
    seed_sd = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    mde = minimal_detectable_effect(
        seeds=arr.size, seed_sd=seed_sd, image_sd=img_sd, confidence=confidence, power=power
    )
    return PairedDifference(
        values=arr, mean=mean, low=low, high=high, image_low=img_low, image_high=img_high,
        image_sd=img_sd, verdict=seed_image_verdict(low, high, img_low, img_high), mde=mde,
        confidence=float(confidence),
    )  # fmt: skip


def image_weights(groups: np.ndarray, resamples: int, seed: int = 0) -> dict[int, np.ndarray]:
    """Group code -> ``[resamples, n_g]`` multiplicities: each resample redraws every group's
    ``n_g`` test samples with replacement (group sizes fixed). ``groups [N]``: int codes.

    The draw depends only on its arguments, so it is made once per test set and reused (read
    only) by every difference computed on that test set.
    """
    groups = np.ascontiguousarray(groups, dtype=np.int64)
    return _image_weights(groups.tobytes(), int(resamples), int(seed))


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


def resampled_group_accs(
    correct: np.ndarray, groups: np.ndarray, weights: dict[int, np.ndarray]
) -> np.ndarray:
    """``[R, G]`` accuracy (fraction) of each group (in ``weights``' order) on each resample.

    ``correct``, ``groups``: ``[N]`` per test sample; ``weights``: :func:`image_weights`.
    """
    accs = [w @ correct[groups == g].astype(np.float64) / w.shape[1] for g, w in weights.items()]
    return np.stack(accs, axis=1)


def resampled_worst(
    correct: np.ndarray, groups: np.ndarray, weights: dict[int, np.ndarray]
) -> np.ndarray:
    """``[R]`` worst-group accuracy (fraction) on each resample (:func:`resampled_group_accs`)."""
    return np.min(resampled_group_accs(correct, groups, weights), axis=1)


def worst_difference_draws(
    correct_a: np.ndarray | Sequence[np.ndarray],
    correct_b: np.ndarray | Sequence[np.ndarray],
    groups: np.ndarray,
    *,
    resamples: int = IMAGE_RESAMPLES,
    seed: int = 0,
) -> np.ndarray:
    """``[R]`` seed-mean worst-group accuracy difference ``a - b`` on each test-set resample.

    ``correct_a``, ``correct_b``: ``[S, N]`` per seed and test sample (the same test set for
    every seed); ``groups [N]`` int codes. Each resample applies one draw to every seed and both
    methods, so the spread is that of the seed-mean difference on a new test set.
    """
    weights = image_weights(groups, resamples, seed)
    diffs = [
        resampled_worst(np.asarray(ca), groups, weights)
        - resampled_worst(np.asarray(cb), groups, weights)
        for ca, cb in zip(correct_a, correct_b, strict=True)
    ]
    return np.mean(diffs, axis=0)


def paired_worst(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    groups: np.ndarray,
    *,
    resamples: int = IMAGE_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
    power: float = 0.8,
) -> PairedDifference:
    """The worst-group accuracy difference ``a - b`` (fractions) paired by seed, with its seed and
    test-image intervals. ``correct_a``, ``correct_b``: ``[S, N]`` (or ``[N]``: one seed) bools;
    ``groups [N]``: int codes of the shared test set."""
    a, b = np.atleast_2d(correct_a).astype(bool), np.atleast_2d(correct_b).astype(bool)
    g = np.asarray(groups, dtype=np.int64)
    if a.shape != b.shape or a.shape[1] != g.shape[0]:
        raise ValueError(
            f"correct_a {a.shape} and correct_b {b.shape} must match, with groups' {g.shape[0]} "
            "samples per row"
        )
    codes = np.unique(g)

    def worst(x: np.ndarray) -> np.ndarray:
        return np.min(np.stack([x[:, g == k].mean(axis=1) for k in codes], axis=1), axis=1)

    draws = worst_difference_draws(a, b, g, resamples=resamples, seed=seed)
    return paired_difference(worst(a) - worst(b), draws, confidence=confidence, power=power)
