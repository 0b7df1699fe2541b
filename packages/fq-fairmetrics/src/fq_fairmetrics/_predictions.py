"""``Predictions``: one model's predicted labels on a test set, saved and loaded as CSV or Parquet.

A prediction file holds one row per test sample: ``sample_id, label, group, prediction``. Files
from any framework can be compared with ``python -m fq_fairmetrics compare REF.csv CAND.csv``.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._report import FairnessReport, group_report

#: A prediction file's columns, in order.
PREDICTION_COLUMNS: tuple[str, ...] = ("sample_id", "label", "group", "prediction")


def _column(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D with one entry per sample; got shape {arr.shape}")
    arr = arr.copy()
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, kw_only=True, eq=False)
class Predictions:
    """Predicted labels of one model on one test set, ``[N]`` each.

    ``sample_id``: a unique id per sample (ints or strings; the loader's order when none is
    known); ``label``: the true label; ``group``: the sample's group (name or code);
    ``prediction``: the predicted label (argmax of the logits). Labels and predictions are ints
    (class codes) or strings, the same kind for both.
    """

    sample_id: np.ndarray = field(repr=False)
    label: np.ndarray = field(repr=False)
    group: np.ndarray = field(repr=False)
    prediction: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        cols = {c: _column(getattr(self, c), c) for c in PREDICTION_COLUMNS}
        lengths = {c: a.shape[0] for c, a in cols.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"every column must have one entry per sample; got lengths {lengths}")
        if lengths["sample_id"] == 0:
            raise ValueError("Predictions is empty; at least one sample is needed")
        if np.unique(cols["sample_id"]).size != lengths["sample_id"]:
            raise ValueError("sample_id must be unique; some ids repeat")
        for c, a in cols.items():
            object.__setattr__(self, c, a)

    @property
    def n_samples(self) -> int:
        """N, the number of samples."""
        return int(self.sample_id.shape[0])

    @property
    def correct(self) -> np.ndarray:
        """``[N]`` bools: the prediction equals the label."""
        return np.asarray(self.prediction == self.label)

    def report(self, **kwargs: Any) -> FairnessReport:
        """:func:`group_report` of these predictions (keyword arguments passed on)."""
        return group_report(self.label, self.prediction, sensitive_features=self.group, **kwargs)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a ``.csv`` or ``.parquet`` file (Parquet needs polars) atomically; returns it."""
        path = Path(path)
        if path.suffix == ".parquet":
            data = _parquet_bytes(self)
        elif path.suffix == ".csv":
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(PREDICTION_COLUMNS)
            writer.writerows(
                zip(*(getattr(self, c).tolist() for c in PREDICTION_COLUMNS), strict=True)
            )
            data = buf.getvalue().encode()
        else:
            raise ValueError(f"path must end in .csv or .parquet; got {path.name!r}")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Predictions:
        """Read a file :meth:`save` wrote (or any CSV/Parquet with the four columns). Columns whose
        every value is an integer load as ints, others as strings."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no prediction file at {path}")
        if path.suffix == ".parquet":
            try:
                import polars as pl
            except ImportError as exc:
                raise ImportError(
                    'reading Parquet needs polars: pip install "fq-fairmetrics[polars]"'
                ) from exc
            frame = pl.read_parquet(path)
            missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
            cols = {c: frame[c].to_list() for c in PREDICTION_COLUMNS if c in frame.columns}
        elif path.suffix == ".csv":
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                missing = [c for c in PREDICTION_COLUMNS if c not in (reader.fieldnames or [])]
                rows = list(reader) if not missing else []
            cols = {c: [r[c] for r in rows] for c in PREDICTION_COLUMNS}
        else:
            raise ValueError(f"path must end in .csv or .parquet; got {path.name!r}")
        if missing:
            raise ValueError(
                f"{path.name} lacks column(s) {missing}; a prediction file has {list(PREDICTION_COLUMNS)}"
            )
        return cls(**{c: _typed(v) for c, v in cols.items()})


def _typed(values: list[Any]) -> np.ndarray:
    """Ints when every value is an integer (``"3"`` or ``3``), else strings."""
    try:
        ints = [int(v) for v in values]
        if all(str(i) == str(v).strip() for i, v in zip(ints, values, strict=True)):
            return np.asarray(ints, dtype=np.int64)
    except (TypeError, ValueError):
        pass
    return np.asarray([str(v) for v in values])


def _parquet_bytes(p: Predictions) -> bytes:
    try:
        import polars as pl
    except ImportError as exc:
        raise ImportError(
            'writing Parquet needs polars: pip install "fq-fairmetrics[polars]"'
        ) from exc
    buf = io.BytesIO()
    pl.DataFrame({c: getattr(p, c).tolist() for c in PREDICTION_COLUMNS}).write_parquet(buf)
    return buf.getvalue()


def align(reference: Predictions, candidate: Predictions) -> tuple[Predictions, Predictions]:
    """Both files' rows in the reference's order of ``sample_id``; ``ValueError`` when the two do
    not hold the same samples with the same labels and groups."""
    ref_ids = reference.sample_id.astype(str)
    cand_ids = candidate.sample_id.astype(str)
    missing = sorted(set(ref_ids) ^ set(cand_ids))
    if missing:
        raise ValueError(
            f"the two files do not hold the same samples: {len(missing)} sample_id(s) in only one "
            f"(first: {missing[:3]})"
        )
    where = {s: i for i, s in enumerate(cand_ids)}
    order = np.asarray([where[s] for s in ref_ids])
    cand = Predictions(**{c: getattr(candidate, c)[order] for c in PREDICTION_COLUMNS})
    for c in ("label", "group"):
        a, b = getattr(reference, c).astype(str), getattr(cand, c).astype(str)
        if not np.array_equal(a, b):
            i = int(np.flatnonzero(a != b)[0])
            raise ValueError(
                f"the two files disagree on {c} for sample {ref_ids[i]!r}: {a[i]!r} and {b[i]!r}"
            )
    return reference, cand
