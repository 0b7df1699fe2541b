"""The result of :func:`fq_fairmetrics.compare`: frozen rows, and their table, frame and plot."""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Literal

MarginVerdict = Literal["non-inferior", "inferior", "inconclusive"]
ChangeVerdict = Literal["better", "worse", "no difference shown"]


@dataclass(frozen=True, kw_only=True)
class ComparisonRow:
    """One group's (or the worst group's, or the average's) paired comparison.

    Attributes:
        group: the group's name (``"average"`` for the average row).
        kind: ``"group"``, ``"worst"`` (the reference's worst-served group, repeated) or
            ``"average"`` (unweighted mean over groups).
        n: test samples in the group (all samples for the average).
        reference_acc, candidate_acc: accuracy in %, mean over seeds.
        change: ``candidate_acc - reference_acc`` in points.
        low, high: the interval of ``change`` in points at the comparison's confidence, the one
            ``verdict_change`` reads (METHOD.md 7.1: one seed, McNemar's exact interval, which
            excludes 0 exactly when the test rejects; 7.2: several seeds, the hull of the seed
            and test-image intervals).
        margin_low, margin_high: the interval ``verdict_margin`` reads, in points: it also
            bounds how many samples could have been discordant (:func:`change_interval`), so a
            small group cannot claim a tight bound.
        losses, gains: discordant samples (reference right and candidate wrong; the reverse),
            summed over seeds.
        p_value: McNemar's exact two-sided p-value (one seed; NaN with several).
        verdict_margin: ``non-inferior`` (``margin_low > -margin``), ``inferior``
            (``margin_high < -margin``), else ``inconclusive``.
        verdict_change: ``better`` / ``worse`` when the interval excludes 0 on that side and
            (one seed) McNemar's exact test rejects at ``1 - confidence``, else
            ``no difference shown``.
        mde: minimal detectable change in points (METHOD.md 7.3): smaller true changes are likely
            to go unseen.
        samples_needed: samples per group at which the margin becomes decidable
            (:func:`margin_sample_size` at the discordance measured).
    """

    group: Hashable
    kind: Literal["group", "worst", "average"] | str
    n: int
    reference_acc: float
    candidate_acc: float
    change: float
    low: float
    high: float
    margin_low: float
    margin_high: float
    losses: int
    gains: int
    p_value: float
    verdict_margin: MarginVerdict | str
    verdict_change: ChangeVerdict | str
    mde: float
    samples_needed: int


@dataclass(frozen=True, kw_only=True)
class Comparison:
    """Reference against candidate on one test set, per group (:func:`fq_fairmetrics.compare`).

    ``rows``: one :class:`ComparisonRow` per group (in group order), then the worst group, then
    the average. ``margin`` (points), ``confidence``, ``seeds`` (S), ``n_samples`` (N), ``power``
    (of ``mde``), the two models' names, ``samples_needed`` (per group, for the margin).
    """

    rows: tuple[ComparisonRow, ...]
    margin: float
    confidence: float
    seeds: int
    n_samples: int
    power: float
    reference_name: str
    candidate_name: str
    samples_needed: int

    @property
    def groups(self) -> tuple[ComparisonRow, ...]:
        """The per-group rows."""
        return tuple(r for r in self.rows if r.kind == "group")

    @property
    def worst(self) -> ComparisonRow:
        """The row of the group the reference serves worst."""
        return next(r for r in self.rows if r.kind == "worst")

    @property
    def average(self) -> ComparisonRow:
        """The row of the unweighted mean over groups."""
        return next(r for r in self.rows if r.kind == "average")

    @property
    def non_inferior(self) -> bool:
        """Whether every group is ``non-inferior`` at the margin."""
        return all(r.verdict_margin == "non-inferior" for r in self.groups)

    def row(self, group: Hashable) -> ComparisonRow:
        """The per-group row of ``group``; ``KeyError`` naming the groups if absent."""
        for r in self.groups:
            if r.group == group:
                return r
        raise KeyError(f"no group {group!r}; groups: {[r.group for r in self.groups]}")

    def to_dicts(self) -> list[dict[str, Any]]:
        """One dict per row (the :class:`ComparisonRow` fields)."""
        import dataclasses

        return [dataclasses.asdict(r) for r in self.rows]

    def to_frame(self) -> Any:
        """A ``polars.DataFrame`` of the rows (extra ``fq-fairmetrics[polars]``); ``group`` as text."""
        try:
            import polars as pl
        except ImportError as exc:
            raise ImportError(
                'Comparison.to_frame needs polars: pip install "fq-fairmetrics[polars]"'
            ) from exc
        rows = [d | {"group": str(d["group"])} for d in self.to_dicts()]
        return pl.DataFrame(rows)

    def to_markdown(self) -> str:
        """A Markdown table: per row both accuracies, the change with its interval, the discordant
        counts, both verdicts and the minimal detectable change."""
        head = (
            f"{self.candidate_name} against {self.reference_name}: margin {self.margin:g} points, "
            f"{100 * self.confidence:g}% intervals, {self.seeds} seed(s), {self.n_samples} samples.\n\n"
        )
        cols = ["Group", "n", self.reference_name, self.candidate_name, "Change (points)",
                "Lost / gained", "Change", "Bound for the margin", f"Margin {self.margin:g}",
                "MDE (points)"]  # fmt: skip
        lines = [
            "| " + " | ".join(cols) + " |",
            "| --- " + "| ---: " * 5 + "| --- | ---: | --- | ---: |",
        ]
        for r in self.rows:
            name = {"worst": f"worst: {r.group}", "average": "average"}.get(r.kind, str(r.group))
            lines.append("| " + " | ".join([
                name, str(r.n), f"{r.reference_acc:.1f}", f"{r.candidate_acc:.1f}",
                f"{_signed(r.change)} [{_signed(r.low)}, {_signed(r.high)}]",
                f"{r.losses} / {r.gains}", r.verdict_change,
                f"[{_signed(r.margin_low)}, {_signed(r.margin_high)}]", r.verdict_margin,
                f"{r.mde:.1f}",
            ]) + " |")  # fmt: skip
        small = [str(r.group) for r in self.groups if r.n < self.samples_needed]
        note = (
            f"\nGroups with fewer than about {self.samples_needed} samples ({', '.join(small)}): "
            f"the {self.margin:g}-point margin is not decidable there; a verdict is likely "
            "inconclusive.\n"
            if small
            else ""
        )
        return head + "\n".join(lines) + "\n" + note

    def plot(self, ax: Any = None) -> Any:
        """Per row, the change with its margin interval against ``-margin`` (extra ``[plot]``:
        matplotlib). Draws on ``ax`` (a new figure when None) and returns the figure."""
        try:
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise ImportError(
                'Comparison.plot needs matplotlib: pip install "fq-fairmetrics[plot]"'
            ) from exc
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 0.45 * len(self.rows) + 1.2))
        labels = [{"worst": f"worst: {r.group}"}.get(r.kind, str(r.group)) for r in self.rows]
        ys = list(range(len(self.rows)))[::-1]
        for y, r in zip(ys, self.rows, strict=True):
            colour = {"non-inferior": "C2", "inferior": "C3"}.get(r.verdict_margin, "C7")
            ax.errorbar(r.change, y, xerr=[[r.change - r.margin_low], [r.margin_high - r.change]],
                        fmt="o", color=colour, capsize=3)  # fmt: skip
        ax.axvline(0, color="k", lw=0.8)
        ax.axvline(-self.margin, color="C3", ls="--", lw=0.8, label=f"-margin ({self.margin:g})")
        ax.set_yticks(ys, labels)
        ax.set_xlabel(f"{self.candidate_name} - {self.reference_name} (accuracy points)")
        ax.legend(fontsize=7)
        return ax.figure


def _signed(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return "+0.0" if round(x, 1) == 0 else f"{x:+.1f}"
