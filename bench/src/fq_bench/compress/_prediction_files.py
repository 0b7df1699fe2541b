"""Prediction files: one CSV row per test image (``id, label, group, prediction`` as names)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._store import write_text


@dataclass(frozen=True, kw_only=True)
class PredictionTable:
    """Codes of one prediction file: ``labels``, ``groups``, ``predictions`` (int64 ``[N]``)."""

    ids: tuple[str, ...]
    labels: np.ndarray
    groups: np.ndarray
    predictions: np.ndarray


def write_predictions(
    path: Path,
    ids: Sequence[str],
    labels: np.ndarray,
    groups: np.ndarray,
    predictions: np.ndarray,
    *,
    class_names: Sequence[str],
    group_names: Sequence[str],
) -> None:
    """Write the CSV atomically, codes translated to ``class_names``/``group_names``."""
    import polars as pl

    frame = pl.DataFrame(
        {
            "id": list(ids),
            "label": [class_names[i] for i in labels],
            "group": [group_names[i] for i in groups],
            "prediction": [class_names[i] for i in predictions],
        }
    )
    write_text(path, frame.write_csv())


def read_predictions(
    path: Path, *, class_names: Sequence[str], group_names: Sequence[str]
) -> PredictionTable:
    """The codes of a file :func:`write_predictions` wrote (``ValueError`` naming an unknown name)."""
    import polars as pl

    frame = pl.read_csv(
        path, schema_overrides={c: pl.String for c in ("id", "label", "group", "prediction")}
    )

    def codes(column: str, names: Sequence[str]) -> np.ndarray:
        index = {n: i for i, n in enumerate(names)}
        bad = sorted(set(frame[column]) - set(index))
        if bad:
            raise ValueError(f"{path}: column {column!r} holds unknown names {bad[:5]}")
        return np.array([index[v] for v in frame[column]], dtype=np.int64)

    return PredictionTable(
        ids=tuple(frame["id"]),
        labels=codes("label", class_names),
        groups=codes("group", group_names),
        predictions=codes("prediction", class_names),
    )
