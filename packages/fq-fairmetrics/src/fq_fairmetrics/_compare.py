"""``compare``: is a candidate model non-inferior to a reference, for every group? (METHOD.md 7.1-7.3)

Both models' predictions on the same test samples, ``[N]`` (one training) or ``[S, N]`` (S seeds),
become per-group paired changes with an interval, the discordant counts, two verdicts in words and
the minimal detectable effect. The rules live here and in :mod:`._exact` / :mod:`._paired`; a
report or table only formats a :class:`Comparison`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from ._checks import is_int
from ._comparison import Comparison, ComparisonRow
from ._encode import as_1d, encode_groups
from ._exact import (
    TooFewSamplesWarning,
    change_interval,
    exact_mde,
    margin_sample_size,
    mcnemar_exact,
    mcnemar_interval,
)
from ._paired import image_weights, paired_difference, resampled_group_accs


def _margin_verdict(low: float, high: float, margin: float) -> str:
    if low > -margin:
        return "non-inferior"
    if high < -margin:
        return "inferior"
    return "inconclusive"


def _change_verdict(low: float, high: float, p_value: float, alpha: float) -> str:
    significant = math.isnan(p_value) or p_value < alpha
    if significant and low > 0:
        return "better"
    if significant and high < 0:
        return "worse"
    return "no difference shown"


def _as_outcomes(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0 or arr.shape[0] == 0:
        raise ValueError(f"{name} must be [N] or [S, N] with N >= 1; got shape {np.shape(x)}")
    if arr.dtype.kind not in "biuf" or not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must hold correctness as bools (or 0/1); got dtype {arr.dtype}")
    return arr.astype(bool)


def _hull(*bounds: tuple[float, float]) -> tuple[float, float]:
    """The smallest interval holding every defined one: it excludes a value exactly when each
    interval excludes it on the same side."""
    lows = [lo for lo, _ in bounds if not math.isnan(lo)]
    highs = [hi for _, hi in bounds if not math.isnan(hi)]
    return (min(lows) if lows else math.nan), (max(highs) if highs else math.nan)


def compare_outcomes(
    correct_reference: Any,
    correct_candidate: Any,
    groups: Any,
    *,
    margin: float = 1.0,
    confidence: float = 0.95,
    group_names: Sequence[Hashable] | None = None,
    resamples: int = 2000,
    seed: int = 0,
    power: float = 0.8,
    reference_name: str = "reference",
    candidate_name: str = "candidate",
) -> Comparison:
    """:func:`compare` on correctness: ``correct_* [N]`` or ``[S, N]`` bools (sample right or
    wrong, per seed), ``groups [N]`` (values, or int codes into ``group_names``).

    ``margin``: non-inferiority margin in accuracy points (> 0); ``confidence`` in (0, 1);
    ``resamples``: paired test-set resamples behind the average row's and multi-seed intervals;
    ``seed``: their random seed; ``power``: of the minimal detectable effect. Warns
    :class:`TooFewSamplesWarning` for groups too small for the margin to be decidable.
    """
    ref, cand = (
        _as_outcomes(correct_reference, "correct_reference"),
        _as_outcomes(correct_candidate, "correct_candidate"),
    )
    if ref.shape != cand.shape:
        raise ValueError(
            f"reference and candidate must have the same shape; got {ref.shape} and {cand.shape}"
        )
    codes, names = encode_groups(groups, group_names)
    if codes.shape[0] != ref.shape[1]:
        raise ValueError(f"groups has {codes.shape[0]} samples but predictions have {ref.shape[1]}")
    if not (isinstance(margin, int | float) and math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be a positive number of accuracy points; got {margin!r}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence!r}")
    if not is_int(resamples) or resamples < 2:
        raise ValueError(f"resamples must be an int >= 2; got {resamples!r}")
    alpha = 1.0 - float(confidence)
    m = float(margin) / 100
    s, n = ref.shape
    present = [g for g in range(len(names)) if np.any(codes == g)]
    n_g = np.bincount(codes, minlength=len(names)).astype(np.float64)
    loss = np.stack(
        [np.bincount(codes, (r & ~c), len(names)) for r, c in zip(ref, cand, strict=True)]
    )
    gain = np.stack(
        [np.bincount(codes, (~r & c), len(names)) for r, c in zip(ref, cand, strict=True)]
    )
    acc_r = np.stack([np.bincount(codes, r, len(names)) for r in ref]) / np.maximum(n_g, 1)
    acc_c = np.stack([np.bincount(codes, c, len(names)) for c in cand]) / np.maximum(n_g, 1)
    discordance = float((loss + gain).sum(axis=1).mean()) / n
    needed = margin_sample_size(margin, discordance=min(discordance, 0.999), confidence=confidence)

    rows: list[ComparisonRow] = []
    for g in present:
        b, c, ng = loss[:, g], gain[:, g], n_g[g]
        bound = change_interval(float(b.mean()), float(c.mean()), ng, confidence)
        if s == 1:
            p = mcnemar_exact(float(b[0]), float(c[0]))
            change = mcnemar_interval(float(b[0]), float(c[0]), ng, confidence)
            mde = exact_mde((b[0] + c[0]) / ng, ng, confidence, power)
        else:
            pd = paired_difference((c - b) / ng, None, confidence=confidence, power=power)
            p, change = math.nan, _hull((pd.low, pd.high), bound)
            bound = change
            img = exact_mde(float((b + c).mean()) / ng, ng, confidence, power)
            mde = max(_seed_mde(pd.values, confidence, power), img)
        rows.append(_row(
            names[g], "group", int(ng), acc_r[:, g], acc_c[:, g], b, c, change, bound, p, mde,
            m, alpha, needed,
        ))  # fmt: skip

    worst_g = min(present, key=lambda g: (float(acc_r[:, g].mean()), g))
    worst = next(r for r in rows if r.group == names[worst_g])
    rows.append(_replace_kind(worst, "worst"))
    rows.append(_average_row(
        ref, cand, codes, present, n_g, loss, gain, acc_r, acc_c, m, alpha, confidence, power,
        int(resamples), int(seed), needed,
    ))  # fmt: skip
    small = [
        r for r in rows
        if r.kind == "group" and r.n < needed and r.verdict_margin == "inconclusive"
    ]  # fmt: skip
    if small:
        listed = ", ".join(f"{r.group!r} ({r.n})" for r in small)
        warnings.warn(
            f"group(s) {listed} have fewer test samples than the about {needed} per group at which "
            f"a {margin:g}-point margin becomes decidable (discordance measured: "
            f"{100 * discordance:.1f}%); their margin verdict is likely inconclusive",
            TooFewSamplesWarning,
            stacklevel=3,
        )
    return Comparison(
        rows=tuple(rows), margin=float(margin), confidence=float(confidence), seeds=s,
        n_samples=n, power=float(power), reference_name=reference_name,
        candidate_name=candidate_name, samples_needed=needed,
    )  # fmt: skip


def _seed_mde(values: np.ndarray, confidence: float, power: float) -> float:
    from ._paired import minimal_detectable_effect

    return minimal_detectable_effect(
        seeds=values.size, seed_sd=float(values.std(ddof=1)), image_sd=0.0,
        confidence=confidence, power=power,
    )  # fmt: skip


def _row(
    name: Hashable, kind: str, n: int, acc_r: np.ndarray, acc_c: np.ndarray, b: np.ndarray,
    c: np.ndarray, change: tuple[float, float], bound: tuple[float, float], p: float, mde: float,
    m: float, alpha: float, needed: int,
) -> ComparisonRow:  # fmt: skip
    (low, high), (b_low, b_high) = change, bound
    return ComparisonRow(
        group=name, kind=kind, n=n, reference_acc=100 * float(acc_r.mean()),
        candidate_acc=100 * float(acc_c.mean()), change=100 * float((acc_c - acc_r).mean()),
        low=100 * low, high=100 * high, margin_low=100 * b_low, margin_high=100 * b_high,
        losses=int(b.sum()), gains=int(c.sum()), p_value=p,
        verdict_margin=_margin_verdict(b_low, b_high, m),
        verdict_change=_change_verdict(low, high, p, alpha),
        mde=100 * mde, samples_needed=needed,
    )  # fmt: skip


def _replace_kind(row: ComparisonRow, kind: str) -> ComparisonRow:
    import dataclasses

    return dataclasses.replace(row, kind=kind)


def _average_row(
    ref: np.ndarray, cand: np.ndarray, codes: np.ndarray, present: list[int], n_g: np.ndarray,
    loss: np.ndarray, gain: np.ndarray, acc_r: np.ndarray, acc_c: np.ndarray, m: float,
    alpha: float, confidence: float, power: float, resamples: int, seed: int, needed: int,
) -> ComparisonRow:  # fmt: skip
    """The unweighted mean over groups: paired test-set resamples (and seeds), guarded by the
    exact test on all samples pooled (so a few one-way discordant samples are never a change)."""
    weights = image_weights(codes, resamples, seed)
    keep = [i for i, g in enumerate(weights) if g in present]
    draws = np.mean([
        resampled_group_accs(c, codes, weights)[:, keep].mean(axis=1)
        - resampled_group_accs(r, codes, weights)[:, keep].mean(axis=1)
        for r, c in zip(ref, cand, strict=True)
    ], axis=0)  # fmt: skip
    per_seed = (acc_c[:, present] - acc_r[:, present]).mean(axis=1)
    pd = paired_difference(per_seed, draws, confidence=confidence, power=power)
    b, c = loss.sum(axis=1), gain.sum(axis=1)
    n = float(ref.shape[1])
    pooled = change_interval(float(b.mean()), float(c.mean()), n, confidence)
    image, seeds = (pd.image_low, pd.image_high), (pd.low, pd.high)
    if ref.shape[0] == 1:
        p = mcnemar_exact(float(b[0]), float(c[0]))
        change = _hull(image, mcnemar_interval(float(b[0]), float(c[0]), n, confidence))
    else:
        p, change = math.nan, _hull(image, seeds)
    bound = _hull(image, seeds, pooled)
    disc = (loss + gain)[:, present].mean(axis=0) / n_g[present]
    mde = exact_mde(disc, n_g[present], confidence, power)
    if ref.shape[0] > 1:
        mde = max(mde, _seed_mde(pd.values, confidence, power))
    return _row("average", "average", int(n), acc_r[:, present].mean(axis=1),
                acc_c[:, present].mean(axis=1), b, c, change, bound, p, mde, m, alpha, needed)  # fmt: skip


def compare(
    labels: Any,
    groups: Any,
    reference: Any,
    candidate: Any,
    *,
    margin: float = 1.0,
    confidence: float = 0.95,
    class_names: Sequence[Hashable] | None = None,
    group_names: Sequence[Hashable] | None = None,
    resamples: int = 2000,
    seed: int = 0,
    power: float = 0.8,
    reference_name: str = "reference",
    candidate_name: str = "candidate",
) -> Comparison:
    """Is ``candidate`` non-inferior to ``reference``, for every group? (METHOD.md section 7.1)

    Args:
        labels: true labels ``[N]`` (ints or strings).
        groups: group of each sample ``[N]`` (values, or int codes into ``group_names``).
        reference, candidate: predicted labels ``[N]`` (one training) or ``[S, N]`` (S seeds or
            repeated trainings, row ``s`` of both paired), same kind as ``labels``.
        margin: non-inferiority margin in accuracy points (default 1.0).
        confidence: two-sided level of every interval (default 0.95).
        class_names: if given, every label and prediction must be one of them.
        group_names: the groups and their order (default: the sorted values present).
        resamples, seed: paired test-set resamples for the average row and multi-seed rows.
        power: of the minimal detectable effect (default 0.8).

    Returns:
        A :class:`Comparison`: one row per group, the reference's worst-served group, the
        average over groups; accuracies in %, changes and intervals in points.
    """
    y = as_1d(labels, "labels")
    preds = []
    for name, p in (("reference", reference), ("candidate", candidate)):
        arr = np.asarray(p)
        arr2 = arr[None, :] if arr.ndim == 1 else arr
        if arr2.ndim != 2 or arr2.shape[1] != y.shape[0]:
            raise ValueError(
                f"{name} must be predicted labels [N] or [S, N] with N = {y.shape[0]} (labels); "
                f"got shape {arr.shape}"
            )
        if (arr2.dtype.kind in "USO") != (y.dtype.kind in "USO"):
            raise ValueError(
                f"{name} (dtype {arr2.dtype}) and labels (dtype {y.dtype}) must both be integer "
                "labels or both be string labels"
            )
        preds.append(arr2)
    if class_names is not None:
        allowed = set(class_names)
        for name, arr in (("labels", y), ("reference", preds[0]), ("candidate", preds[1])):
            bad = sorted({str(v) for v in np.unique(arr)} - {str(v) for v in allowed})
            if bad:
                raise ValueError(
                    f"{name} contains {bad[:5]}, not in class_names={list(class_names)!r}"
                )
    return compare_outcomes(
        preds[0] == y[None, :], preds[1] == y[None, :], groups, margin=margin,
        confidence=confidence, group_names=group_names, resamples=resamples, seed=seed,
        power=power, reference_name=reference_name, candidate_name=candidate_name,
    )  # fmt: skip
