"""Exact statistics for paired binary outcomes on one test set (METHOD.md section 7.1).

Two classifiers scored on the same ``n`` samples leave ``b`` samples the reference gets right and
the candidate wrong (losses) and ``c`` the other way round (gains); the paired change in accuracy
is ``(c - b) / n``. McNemar's exact test decides whether the change is real; a Bonferroni
combination of Clopper-Pearson bounds on the loss rate ``b / n`` and the gain rate ``c / n``
bounds the change, and so never lets a few samples claim a tight bound: with ``b = c = 0`` on
``n`` samples the loss can still be up to ``1 - (alpha / 4) ** (1 / n)``.
"""

from __future__ import annotations

import math

import numpy as np


class TooFewSamplesWarning(UserWarning):
    """A group has too few test samples for the non-inferiority margin to be decidable."""


def _check_confidence(confidence: float) -> float:
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence!r}")
    return float(confidence)


def mcnemar_exact(b: float, c: float) -> float:
    """Two-sided p-value of McNemar's exact test for ``b`` and ``c`` discordant samples.

    ``p = min(1, 2 * P(X <= min(b, c)))`` with ``X ~ Binomial(b + c, 1/2)`` (statsmodels'
    ``mcnemar(table, exact=True)``); 1.0 without discordant samples. ``b``, ``c``: counts >= 0.
    """
    if b < 0 or c < 0 or not (math.isfinite(b) and math.isfinite(c)):
        raise ValueError(f"discordant counts b, c must be finite and >= 0; got b={b!r}, c={c!r}")
    d = b + c
    if d == 0:
        return 1.0
    from scipy import stats

    return float(min(1.0, 2.0 * stats.binom.cdf(min(b, c), d, 0.5)))


def clopper_pearson(k: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval ``(low, high)`` for a rate of ``k`` events in ``n`` trials.

    ``low = Beta.ppf(alpha/2, k, n-k+1)`` (0 when ``k = 0``), ``high = Beta.ppf(1-alpha/2, k+1,
    n-k)`` (1 when ``k = n``), ``alpha = 1 - confidence``. A fractional ``k`` (a mean count over
    seeds) is allowed: the beta quantiles are defined for real parameters. Fractions in [0, 1].
    """
    confidence = _check_confidence(confidence)
    if not (n > 0 and 0 <= k <= n):
        raise ValueError(f"need n > 0 and 0 <= k <= n; got k={k!r}, n={n!r}")
    from scipy import stats

    alpha = 1.0 - confidence
    low = 0.0 if k <= 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k >= n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def change_interval(b: float, c: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Interval ``(low, high)`` (fractions) for the paired change ``(c - b) / n``.

    ``low = L(c) - U(b)``, ``high = U(c) - L(b)`` with ``L``, ``U`` the Clopper-Pearson bounds of
    the gain and loss rates at one-sided level ``alpha / 4`` each (Bonferroni), so each side of
    the interval fails with probability at most ``alpha / 2`` and the coverage is at least
    ``confidence`` whatever the two rates are.
    """
    confidence = _check_confidence(confidence)
    inner = 1.0 - (1.0 - confidence) / 2  # two-sided level whose tails are alpha / 4
    lc, uc = clopper_pearson(c, n, inner)
    lb, ub = clopper_pearson(b, n, inner)
    return lc - ub, uc - lb


def mcnemar_interval(b: float, c: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Interval ``(low, high)`` (fractions) for the paired change ``(c - b) / n`` given the
    ``d = b + c`` discordant samples: ``(d / n) * (2 * theta - 1)`` at the Clopper-Pearson bounds
    of ``theta = c / d``. It excludes 0 exactly when McNemar's exact test rejects at
    ``1 - confidence`` (both invert the same binomial tails); ``(0, 0)`` without discordant
    samples. It treats ``d`` as fixed, so it says whether there is a change, not how large a
    loss could be: the margin uses :func:`change_interval`.
    """
    d = b + c
    if d <= 0:
        return 0.0, 0.0
    lo, hi = clopper_pearson(c, d, confidence)
    return d / n * (2 * lo - 1), d / n * (2 * hi - 1)


def margin_sample_size(
    margin: float = 1.0,
    *,
    discordance: float = 0.0,
    confidence: float = 0.95,
    max_n: int = 10_000_000,
) -> int:
    """The fewest samples in a group for which a ``margin``-point non-inferiority verdict is decidable.

    The smallest ``n`` at which a candidate with no true change, discordant with the reference on
    a fraction ``discordance`` of samples (half losses, half gains, at their expected counts),
    gets a :func:`change_interval` lower bound above ``-margin`` points. Below it the verdict is
    likely ``inconclusive``; at it, it is decidable about half the time (more samples give more).
    ``margin``: accuracy points (> 0); ``discordance`` in [0, 1).
    """
    if not margin > 0 or not math.isfinite(margin):
        raise ValueError(f"margin must be a positive number of accuracy points; got {margin!r}")
    if not 0.0 <= discordance < 1.0:
        raise ValueError(f"discordance must be in [0, 1); got {discordance!r}")

    def clears(n: int) -> bool:
        half = discordance * n / 2
        return change_interval(half, half, n, confidence)[0] > -margin / 100

    if not clears(max_n):
        raise ValueError(f"margin {margin} is not decidable with up to max_n={max_n} samples")
    lo, hi = 1, max_n  # the bound tightens monotonically with n at fixed rates
    while lo < hi:
        mid = (lo + hi) // 2
        if clears(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _z(q: float) -> float:
    from scipy import stats

    return float(stats.norm.ppf(q))


def exact_mde(
    discordance: np.ndarray | float,
    n: np.ndarray | float,
    confidence: float = 0.95,
    power: float = 0.8,
) -> float:
    """Minimal detectable change (fraction) of the exact paired test on one test set.

    ``(z_{1-alpha/2} + z_power) * sqrt(sum_g pi_g / n_g) / G`` for the mean over ``G`` groups of
    paired changes, each group with discordance rate ``pi_g`` on ``n_g`` samples (``G = 1``: one
    group). The variance of a paired change with no true change is ``pi / n``; each ``pi_g`` is
    at least ``1 / n_g`` so that identical predictions do not claim an MDE of 0.
    """
    pi = np.atleast_1d(np.asarray(discordance, dtype=np.float64))
    nn = np.atleast_1d(np.asarray(n, dtype=np.float64))
    pi = np.maximum(pi, 1.0 / nn)
    alpha = 1.0 - _check_confidence(confidence)
    var = float(np.sum(pi / nn)) / pi.size**2
    return (_z(1 - alpha / 2) + _z(power)) * math.sqrt(var)
