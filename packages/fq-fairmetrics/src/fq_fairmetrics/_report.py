"""``FairnessReport``, the functional ``group_report`` and the streaming ``FairnessAccumulator``."""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ._encode import encode_classes, encode_groups
from ._engine import METRICS, check_count_cells, confusion_counts, derive

PolarsTable = Literal["summary", "groups", "rates"]

#: A group with fewer samples than this (30) gets a :class:`SmallGroupWarning`: its accuracy and
#: rates are point estimates too noisy to rank groups by (a 95% interval on an accuracy near 0.8
#: from 30 samples is about +-0.15).
MIN_GROUP_N = 30


class SmallGroupWarning(UserWarning):
    """A group has no sample or fewer than :data:`MIN_GROUP_N`: a group without samples is left
    out of every metric (WorstAcc, the gaps), a small one enters with a very uncertain value."""


def warn_small_groups(report: FairnessReport, *, stacklevel: int = 2) -> None:
    """Issue one :class:`SmallGroupWarning` naming ``report``'s empty and small groups, if any."""
    empty, small = report.empty_groups, report.small_groups
    if not empty and not small:
        return
    parts = []
    if empty:
        parts.append(f"no sample in group(s) {list(empty)} (left out of every metric)")
    if small:
        sizes = {
            n: int(k)
            for n, k in zip(report.group_names or (), report.group_n, strict=True)
            if 0 < k < MIN_GROUP_N
        }
        parts.append(
            f"fewer than MIN_GROUP_N = {MIN_GROUP_N} samples in group(s) {sizes} "
            "(their accuracy and rates are too uncertain to rank groups by)"
        )
    warnings.warn("; ".join(parts), SmallGroupWarning, stacklevel=stacklevel + 1)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, kw_only=True, eq=False)
class FairnessReport:
    """Group fairness of one classifier on one test set (METHOD.md section 7).

    Build it with :func:`group_report` or :class:`FairnessAccumulator`, or by hand from confusion
    counts: ``FairnessReport(counts=counts)``. Every other field is derived from ``counts``.

    Inputs:
        counts: ``[G, C, C]`` non-negative ints; ``counts[g, t, p]`` = samples of group ``g`` with
            true class ``t`` predicted as ``p``. Groups with zero samples are allowed: they are
            NaN in the per-group table and ignored by every metric.
        group_names: ``G`` names (default ``0..G-1``).
        class_names: ``C`` names (default ``0..C-1``).

    Scalar metrics (``Acc_g`` = accuracy on group ``g``, over groups with samples):
        overall_acc: correct / N, plain accuracy over all samples. In [0, 1].
        avg_acc: ``mean_g Acc_g`` (unweighted over groups). In [0, 1].
        worst_acc: ``min_g Acc_g``. best_acc: ``max_g Acc_g``.
        gap: ``best_acc - worst_acc``. In [0, 1]; 0 = equal accuracy in every group.
        eopp1: ``mean_c gapTPR^c``, ``gapTPR^c = max_g TPR_g^c - min_g TPR_g^c`` over the groups
            where ``TPR_g^c`` is defined (the group has positives of ``c``), 0 if fewer than two.
            In [0, 1]; 0 = equal opportunity.
        eopp0: ``mean_c gapTNR^c`` (the same with TNR, defined where the group has negatives of
            ``c``). In [0, 1].
        eodd: ``mean_c (gapTPR^c + gapFPR^c)`` with ``FPR = 1 - TNR``. In [0, 2];
            0 = equalized odds.
        dp_gap: ``mean_c (max_g P(y_hat=c | g) - min_g P(y_hat=c | g))`` over all ``C`` classes.
            In [0, 1]; 0 = demographic parity.

        The class means of eopp0/eopp1/eodd run over the *counted* classes: those for which some
        group has a defined TPR or TNR (with any sample present, that is every class).

    Per-group table:
        group_n ``[G]`` samples; group_acc ``[G]``; tpr, tnr, fpr ``[G, C]`` one-vs-rest rates
        within each group (NaN where undefined); pred_rate ``[G, C]`` = ``P(y_hat=c | g)``;
        counted_classes ``[C]`` bool; n_samples = N.
    """

    counts: np.ndarray = field(repr=False)
    group_names: tuple[Hashable, ...] | None = None  # None -> 0..G-1; a tuple after __post_init__
    class_names: tuple[Hashable, ...] | None = None

    overall_acc: float = field(init=False)
    avg_acc: float = field(init=False)
    worst_acc: float = field(init=False)
    best_acc: float = field(init=False)
    gap: float = field(init=False)
    eopp0: float = field(init=False)
    eopp1: float = field(init=False)
    eodd: float = field(init=False)
    dp_gap: float = field(init=False)
    n_samples: int = field(init=False)
    group_n: np.ndarray = field(init=False, repr=False)
    group_acc: np.ndarray = field(init=False, repr=False)
    tpr: np.ndarray = field(init=False, repr=False)
    tnr: np.ndarray = field(init=False, repr=False)
    fpr: np.ndarray = field(init=False, repr=False)
    pred_rate: np.ndarray = field(init=False, repr=False)
    counted_classes: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        counts = np.asarray(self.counts)
        if counts.ndim != 3 or counts.shape[1] != counts.shape[2] or 0 in counts.shape:
            raise ValueError(f"counts must have shape [G, C, C] with G, C >= 1; got {counts.shape}")
        if counts.dtype.kind not in "iu" or (counts < 0).any():
            raise ValueError(f"counts must be non-negative integers; got dtype {counts.dtype}")
        if counts.sum() == 0:
            raise ValueError("counts are all zero; a report needs at least one sample")
        g, c = counts.shape[:2]
        names = {}
        for arg, value, size in (
            ("group_names", self.group_names, g),
            ("class_names", self.class_names, c),
        ):
            names[arg] = tuple(range(size)) if value is None else tuple(value)
            if len(names[arg]) != size:
                raise ValueError(f"{arg} has {len(names[arg])} entries; counts need {size}")
        set_ = object.__setattr__
        set_(self, "counts", _frozen(counts.astype(np.int64)))
        set_(self, "group_names", names["group_names"])
        set_(self, "class_names", names["class_names"])
        d = derive(self.counts)
        for key in METRICS:
            set_(self, key, float(d[key]))
        for array in ("group_n", "group_acc", "tpr", "tnr", "fpr", "pred_rate", "counted_classes"):
            set_(self, array, _frozen(d[array]))
        set_(self, "n_samples", int(self.counts.sum()))

    @property
    def n_groups(self) -> int:
        """``G``, including groups named but without samples."""
        return self.counts.shape[0]

    @property
    def n_classes(self) -> int:
        """``C``."""
        return self.counts.shape[1]

    @property
    def empty_groups(self) -> tuple[Hashable, ...]:
        """Names of the groups without samples (NaN in the table, left out of every metric)."""
        return tuple(n for n, k in zip(self.group_names or (), self.group_n, strict=True) if k == 0)

    @property
    def small_groups(self) -> tuple[Hashable, ...]:
        """Names of the groups with ``1 .. MIN_GROUP_N - 1`` samples (metrics too uncertain)."""
        return tuple(
            n
            for n, k in zip(self.group_names or (), self.group_n, strict=True)
            if 0 < k < MIN_GROUP_N
        )

    def metrics(self) -> dict[str, float]:
        """The scalar metrics, name -> value, in :data:`METRICS` order."""
        return {k: getattr(self, k) for k in METRICS}

    def to_dict(self) -> dict[str, Any]:
        """Plain Python (JSON-friendly) dict: scalar metrics, names, and the per-group table.

        ``groups`` is a list with, per group: ``group``, ``n``, ``accuracy``, and per-class lists
        ``tpr``, ``tnr``, ``fpr``, ``pred_rate`` (NaN where undefined).
        """
        groups = [
            {
                "group": name,
                "n": int(self.group_n[i]),
                "accuracy": float(self.group_acc[i]),
                "tpr": self.tpr[i].tolist(),
                "tnr": self.tnr[i].tolist(),
                "fpr": self.fpr[i].tolist(),
                "pred_rate": self.pred_rate[i].tolist(),
            }
            for i, name in enumerate(self.group_names or ())
        ]
        return {
            **self.metrics(),
            "n_samples": self.n_samples,
            "group_names": list(self.group_names or ()),
            "class_names": list(self.class_names or ()),
            "groups": groups,
            "empty_groups": list(self.empty_groups),
            "small_groups": list(self.small_groups),
        }

    def to_polars(self, table: PolarsTable = "summary") -> Any:
        """A ``polars.DataFrame`` (needs the ``polars`` extra).

        ``table``: ``"summary"`` one row of scalar metrics plus ``n_samples``; ``"groups"`` one
        row per group (``group``, ``n``, ``accuracy``); ``"rates"`` one row per (group, class)
        with ``tpr``, ``tnr``, ``fpr``, ``pred_rate``. Names are rendered with ``str``.
        """
        try:
            import polars as pl
        except ImportError as exc:
            raise ImportError(
                'FairnessReport.to_polars needs polars: pip install "fq-fairmetrics[polars]"'
            ) from exc
        if table == "summary":
            return pl.DataFrame([{**self.metrics(), "n_samples": self.n_samples}])
        groups = [str(g) for g in self.group_names or ()]
        if table == "groups":
            return pl.DataFrame(
                {"group": groups, "n": self.group_n.tolist(), "accuracy": self.group_acc.tolist()}
            )
        if table == "rates":
            g, c = self.n_groups, self.n_classes
            return pl.DataFrame(
                {
                    "group": np.repeat(groups, c).tolist(),
                    "class": [str(x) for x in self.class_names or ()] * g,
                    "tpr": self.tpr.ravel().tolist(),
                    "tnr": self.tnr.ravel().tolist(),
                    "fpr": self.fpr.ravel().tolist(),
                    "pred_rate": self.pred_rate.ravel().tolist(),
                },
                nan_to_null=False,
            )
        raise ValueError(f"table must be one of 'summary', 'groups', 'rates'; got {table!r}")


def group_report(
    y_true: Any,
    y_pred: Any,
    *,
    sensitive_features: Any,
    n_classes: int | None = None,
    class_names: Sequence[Hashable] | None = None,
    group_names: Sequence[Hashable] | None = None,
) -> FairnessReport:
    """Group fairness of predictions (METHOD.md section 7; formulas on :class:`FairnessReport`).

    Args:
        y_true: ``[N]`` true labels, ints in ``0..C-1`` or strings.
        y_pred: ``[N]`` predicted labels (same kind as ``y_true``) or ``[N, C]`` scores/logits
            (``y_hat = argmax``; NaN, and rows without a finite score, rejected).
        sensitive_features: ``[N]`` group of each sample (ints or strings), identified by value.
        n_classes: ``C``; default ``max label + 1`` for ints, the number of distinct labels for
            strings, the number of score columns for 2-D ``y_pred``.
        class_names: names of classes ``0..C-1``. For string labels it fixes the classes and
            their order (labels are looked up in it); required with string labels and scores.
        group_names: the groups and their order (values of ``sensitive_features``). Default: the
            distinct values present, sorted. Names without samples give empty groups (NaN in the
            table, ignored by the metrics).

    Warns:
        SmallGroupWarning: a group without samples or with fewer than :data:`MIN_GROUP_N`
            (recorded in the report too: ``empty_groups``, ``small_groups``, and ``to_dict()``).

    Raises:
        ValueError: mismatched lengths, empty input, NaN scores, negative or out-of-range labels,
            ``n_classes`` smaller than a label present, a label or group missing from the names.
    """
    t, p, c, c_names = encode_classes(y_true, y_pred, n_classes, class_names)
    g_codes, g_names = encode_groups(sensitive_features, group_names)
    if g_codes.shape[0] != t.shape[0]:
        raise ValueError(
            f"sensitive_features has {g_codes.shape[0]} samples but y_true has {t.shape[0]}; "
            "lengths must match"
        )
    counts = confusion_counts(t, p, g_codes, len(g_names), c)
    report = FairnessReport(counts=counts, group_names=g_names, class_names=c_names)
    warn_small_groups(report)
    return report


class FairnessAccumulator:
    """Streaming :func:`group_report`: add batches with :meth:`update`, then :meth:`compute`.

    Only the ``[G, C, C]`` counts are kept, so memory does not grow with the number of samples;
    the result equals ``group_report`` on the concatenated batches.

    Args:
        n_classes: ``C`` (or give ``class_names``); fixed up front so batches agree.
        class_names: as in :func:`group_report`.
        group_names: fixes the groups and their order. Without it, groups are collected as they
            appear and reported sorted by value, as ``group_report`` does.
    """

    def __init__(
        self,
        *,
        n_classes: int | None = None,
        class_names: Sequence[Hashable] | None = None,
        group_names: Sequence[Hashable] | None = None,
    ) -> None:
        if n_classes is None and class_names is None:
            raise ValueError("FairnessAccumulator needs n_classes or class_names; got neither")
        self._n_classes = n_classes if n_classes is not None else len(tuple(class_names or ()))
        self._class_names = None if class_names is None else tuple(class_names)
        self._fixed_groups = group_names is not None
        self._group_names: list[Hashable] = [] if group_names is None else list(group_names)
        check_count_cells(max(len(self._group_names), 1), self._n_classes)
        self._counts = np.zeros(
            (len(self._group_names), self._n_classes, self._n_classes), np.int64
        )

    @property
    def n_samples(self) -> int:
        """Samples seen so far."""
        return int(self._counts.sum())

    def reset(self) -> None:
        """Forget every batch (and, unless ``group_names`` was given, the groups seen)."""
        if not self._fixed_groups:
            self._group_names = []
        self._counts = np.zeros(
            (len(self._group_names), self._n_classes, self._n_classes), np.int64
        )

    def update(self, y_true: Any, y_pred: Any, *, sensitive_features: Any) -> None:
        """Add one batch (same argument conventions as :func:`group_report`)."""
        if self._class_names is None and np.asarray(y_true).dtype.kind in "USO":
            raise ValueError(
                "string labels in a stream need class_names, so that every batch codes them alike"
            )
        fixed = self._group_names if self._fixed_groups else None
        t, p, c, names = encode_classes(y_true, y_pred, self._n_classes, self._class_names)
        g_codes, g_names = encode_groups(sensitive_features, fixed)
        if g_codes.shape[0] != t.shape[0]:
            raise ValueError(
                f"sensitive_features has {g_codes.shape[0]} samples but y_true has {t.shape[0]}; "
                "lengths must match"
            )
        if self._class_names is None:
            self._class_names = names
        if not self._fixed_groups:
            index = {v: i for i, v in enumerate(self._group_names)}
            new = [v for v in g_names if v not in index]
            for v in new:
                index[v] = len(self._group_names)
                self._group_names.append(v)
            if new:
                self._counts = np.concatenate(
                    [self._counts, np.zeros((len(new), c, c), np.int64)], axis=0
                )
            g_codes = np.array([index[v] for v in g_names], dtype=np.int64)[g_codes]
        self._counts += confusion_counts(t, p, g_codes, len(self._group_names), c)

    def compute(self) -> FairnessReport:
        """The report over every batch so far (``ValueError`` before the first sample); a
        :class:`SmallGroupWarning` as in :func:`group_report`."""
        if self.n_samples == 0:
            raise ValueError("FairnessAccumulator has no samples; call update() first")
        counts, names = self._counts, list(self._group_names)
        if not self._fixed_groups:
            try:
                order = sorted(range(len(names)), key=lambda i: names[i])  # type: ignore[arg-type,return-value]  # mixed types raise TypeError, caught below
            except TypeError as exc:
                raise ValueError(f"group values cannot be sorted together: {names!r}") from exc
            counts, names = counts[order], [names[i] for i in order]
        report = FairnessReport(
            counts=counts, group_names=tuple(names), class_names=self._class_names
        )
        warn_small_groups(report)
        return report
