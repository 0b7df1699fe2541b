"""The audit: FP32 against the fake-quantized model and against the ONNX file, per group.

Every verdict is ``fq_fairmetrics.compare``'s (paired, on the same test images); this module only
runs it twice, keeps its rows as JSON, and writes them as ``audit.json``, ``audit.md`` and
``audit.png``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fq_data import atomic_write_bytes

from ._store import write_json, write_text

if TYPE_CHECKING:
    from fq_fairmetrics import Predictions

#: The audited candidates: key -> what it is, each against the FP32 predictions (the key names
#: the candidate's predictions too).
CANDIDATES: dict[str, str] = {
    "fake_quant": "fake-quantized model (torch, weights from the packed file)",
    "onnx": "model.onnx in ONNX Runtime",
    "int8": "model.int8.onnx (integer activations) in ONNX Runtime",
}
#: Audits of one shipped file against another: key -> (reference key, candidate key). Run where
#: both predictions are given: the integer-activation file against the weight-only one isolates
#: what quantizing the activations changed.
CROSS: dict[str, tuple[str, str]] = {"int8_vs_onnx": ("onnx", "int8")}
#: The names the comparisons give each set of predictions.
_NAMES = {"fp32": "FP32", "fake_quant": "fake-quant", "onnx": "onnx", "int8": "int8"}


@dataclass(frozen=True, kw_only=True)
class Audit:
    """The audit's figures as JSON-able rows (see ``audit.json``).

    Attributes:
        margin: non-inferiority margin in accuracy points. confidence: level of the intervals.
        comparisons: candidate key (:data:`CANDIDATES`, :data:`CROSS`) -> ``{"candidate",
            "reference", "rows", "warnings", "markdown"}``; each row has the fields of ``fq_fairmetrics.ComparisonRow``
            (``group`` as text, ``kind`` ``group``/``worst``/``average``, ``n``,
            ``reference_acc``/``candidate_acc`` in %, ``change`` and its interval ``low``/``high``
            in points, ``margin_low``/``margin_high`` (the interval the margin verdict reads),
            ``losses``/``gains``, ``verdict_margin``, ``verdict_change``, ``mde``,
            ``samples_needed``).
    """

    margin: float
    confidence: float
    comparisons: dict[str, dict[str, Any]]

    def rows(self, key: str) -> list[dict[str, Any]]:
        """The rows of candidate ``key`` (``"fake_quant"``, ``"onnx"``, ``"int8"``,
        ``"int8_vs_onnx"``)."""
        return list(self.comparisons[key]["rows"])

    def to_json(self) -> dict[str, Any]:
        return {
            "margin": self.margin,
            "confidence": self.confidence,
            "comparisons": self.comparisons,
        }

    def write(self, folder: Path) -> None:
        """``audit.json``, ``audit.md`` and ``audit.png`` in ``folder`` (atomically)."""
        write_json(folder / "audit.json", self.to_json())
        write_text(folder / "audit.md", self.to_markdown())

    def to_markdown(self) -> str:
        parts = [
            "# Audit: FP32 against what is shipped, per group\n",
            f"Paired comparison on the same test images; non-inferiority margin "
            f"{self.margin:g} accuracy points; {self.confidence:.0%} intervals "
            "(fq_fairmetrics.compare).\n",
        ]
        for c in self.comparisons.values():
            parts.append(f"## {c.get('reference', 'FP32')} vs {c['candidate']}\n")
            parts.append(c["markdown"].strip() + "\n")
            parts.extend(f"- warning: {w}\n" for w in c["warnings"])
        return "\n".join(parts)

    @classmethod
    def read(cls, folder: Path) -> Audit:
        """The audit a previous run wrote to ``folder/audit.json``."""
        d = json.loads((Path(folder) / "audit.json").read_text())
        return cls(margin=d["margin"], confidence=d["confidence"], comparisons=d["comparisons"])


def _rows(comparison: Any) -> list[dict[str, Any]]:
    """The rows of a ``fq_fairmetrics.Comparison`` as JSON: group names as text, NaN as null."""

    def clean(v: Any) -> Any:
        return None if isinstance(v, float) and math.isnan(v) else v

    return [
        {k: clean(v) for k, v in d.items()} | {"group": str(d["group"])}
        for d in comparison.to_dicts()
    ]


def _plot(comparisons: Mapping[str, Any], path: Path) -> None:
    """``audit.png``: one panel per candidate, ``Comparison.plot`` on each (atomically)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(comparisons), figsize=(6 * len(comparisons), 3.5), squeeze=False
    )
    for ax, (key, comparison) in zip(axes[0], comparisons.items(), strict=True):
        comparison.plot(ax=ax)
        ax.set_title(key.replace("_", " ") if key in CROSS else f"FP32 vs {_NAMES[key]}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def run_audit(
    tables: Mapping[str, Predictions],
    *,
    margin: float,
    confidence: float,
    class_names: Sequence[str],
    group_names: Sequence[str],
    plot_path: Path | None = None,
) -> Audit:
    """``fq_fairmetrics.compare`` of ``tables["fp32"]`` against each of :data:`CANDIDATES` in
    ``tables``, and each pair of :data:`CROSS` whose two tables are given.

    ``tables``: ``"fp32"``, ``"fake_quant"``, ``"onnx"`` and optionally ``"int8"``: each model's
    ``fq_fairmetrics.Predictions`` of the same test images in the same order (``ValueError``
    otherwise). Warnings
    ``compare`` raises (a group with too few test images for the margin to be decidable, with
    the number it would need) are re-raised and kept in the audit.
    """
    from fq_fairmetrics import compare

    comparisons: dict[str, dict[str, Any]] = {}
    objects: dict[str, Any] = {}

    def text(a: np.ndarray) -> np.ndarray:
        # a CSV of numeric names ("1".."6") loads as ints, which compare would read as codes
        return np.asarray(a).astype(str)

    pairs = {k: ("fp32", k) for k in CANDIDATES if k in tables}
    pairs |= {k: rc for k, rc in CROSS.items() if all(t in tables for t in rc)}
    for key, (ref_key, cand_key) in pairs.items():
        ref, cand = tables[ref_key], tables[cand_key]
        same = (
            cand.n_samples == ref.n_samples and (text(cand.sample_id) == text(ref.sample_id)).all()
        )
        if not same or (text(cand.label) != text(ref.label)).any():
            raise ValueError(f"predictions of {key} are not of the {ref_key} test images in order")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            comparison = compare(
                text(ref.label),
                text(ref.group),
                text(ref.prediction),
                text(cand.prediction),
                margin=margin,
                confidence=confidence,
                class_names=[str(c) for c in class_names],
                group_names=[str(g) for g in group_names],
                reference_name=_NAMES[ref_key],
                candidate_name=_NAMES[cand_key],
            )
        objects[key] = comparison
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        comparisons[key] = {
            "candidate": CANDIDATES[cand_key],
            "reference": "FP32" if ref_key == "fp32" else CANDIDATES[ref_key],
            "rows": _rows(comparison),
            "warnings": sorted({str(w.message) for w in caught}),
            "markdown": comparison.to_markdown(),
        }
    if plot_path is not None:
        _plot(objects, plot_path)
    return Audit(margin=margin, confidence=confidence, comparisons=comparisons)
