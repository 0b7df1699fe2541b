"""The audit: FP32 against the fake-quantized model and against the ONNX file, per group.

Every verdict is ``fq_fairmetrics.compare``'s (paired, on the same test images); this module only
runs it twice, keeps its rows as JSON, and writes them as ``audit.json``, ``audit.md`` and
``audit.png``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._prediction_files import PredictionTable
from ._store import write_json, write_text

#: The audited pairs: (candidate key, what it is), each against the FP32 predictions.
CANDIDATES: dict[str, str] = {
    "fake_quant": "fake-quantized model (torch, weights from the packed file)",
    "onnx": "model.onnx in ONNX Runtime",
}


@dataclass(frozen=True, kw_only=True)
class Audit:
    """The audit's figures as JSON-able rows (see ``audit.json``).

    Attributes:
        margin: non-inferiority margin in accuracy points. confidence: level of the intervals.
        comparisons: candidate key (:data:`CANDIDATES`) -> ``{"candidate", "rows",
            "warnings", "markdown"}``; each row: ``group`` (a group name, ``"worst group"`` or
            ``"average"``), ``n`` test images, ``reference``/``candidate`` accuracy (0..1),
            ``change`` and its interval ``low``/``high`` in accuracy points, ``discordant``
            ``[reference right only, candidate right only]``, ``verdict`` (``non-inferior`` /
            ``inferior`` / ``inconclusive``) and ``change_verdict`` (``better`` / ``worse`` /
            ``no difference shown``).
    """

    margin: float
    confidence: float
    comparisons: dict[str, dict[str, Any]]

    def rows(self, key: str) -> list[dict[str, Any]]:
        """The rows of candidate ``key`` (``"fake_quant"`` or ``"onnx"``)."""
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
            parts.append(f"## FP32 vs {c['candidate']}\n")
            parts.append(c["markdown"].strip() + "\n")
            parts.extend(f"- warning: {w}\n" for w in c["warnings"])
        return "\n".join(parts)

    @classmethod
    def read(cls, folder: Path) -> Audit:
        """The audit a previous run wrote to ``folder/audit.json``."""
        d = json.loads((Path(folder) / "audit.json").read_text())
        return cls(margin=d["margin"], confidence=d["confidence"], comparisons=d["comparisons"])


def _rows(comparison: Any) -> list[dict[str, Any]]:
    """The per-group, worst-group and average rows of a ``fq_fairmetrics.Comparison``."""
    raise NotImplementedError  # filled in against compare's Comparison


def run_audit(
    tables: Mapping[str, PredictionTable],
    *,
    margin: float,
    confidence: float,
    class_names: Sequence[str],
    group_names: Sequence[str],
    plot_path: Path | None = None,
) -> Audit:
    """``fq_fairmetrics.compare`` of ``tables["fp32"]`` against each of :data:`CANDIDATES`.

    The tables must hold the same images in the same order (``ValueError`` otherwise). Warnings
    ``compare`` raises (a group with too few test images for the margin to be decidable, with
    the number it would need) are re-raised and kept in the audit.
    """
    from fq_fairmetrics import compare

    ref = tables["fp32"]
    comparisons: dict[str, dict[str, Any]] = {}
    for key, what in CANDIDATES.items():
        cand = tables[key]
        if cand.ids != ref.ids or (cand.labels != ref.labels).any():
            raise ValueError(f"predictions of {key} are not of the FP32 test images in order")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            comparison = compare(
                ref.labels,
                ref.groups,
                ref.predictions,
                cand.predictions,
                margin=margin,
                confidence=confidence,
                class_names=class_names,
                group_names=group_names,
            )
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        comparisons[key] = {
            "candidate": what,
            "rows": _rows(comparison),
            "warnings": sorted({str(w.message) for w in caught}),
            "markdown": comparison.to_markdown(),
        }
    return Audit(margin=margin, confidence=confidence, comparisons=comparisons)
