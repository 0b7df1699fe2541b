"""Deterministic train/test splits stratified by label x group, and user split files."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import polars as pl

from ._common import DataError, require_columns
from ._constants import DEFAULT_TEST_FRACTION


def stratified_split(
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
) -> np.ndarray:
    """Boolean mask ``[N]``, True for the test rows, stratified by ``(label, group)``.

    Each stratum gives about ``test_fraction`` of its rows to test; the fractional parts are
    settled by largest remainder so the test size is ``round(test_fraction * N_eligible)``. A
    stratum with a single row stays in train (it cannot be in both). Deterministic in ``seed``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.asarray(groups, dtype=np.int64)
    if labels.shape != groups.shape or labels.ndim != 1:
        raise ValueError(
            f"labels and groups must be 1-D of equal length, got {labels.shape} and {groups.shape}"
        )
    rng = np.random.default_rng(seed)
    key = labels * (int(groups.max(initial=0)) + 1) + groups
    strata, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    eligible = counts >= 2
    exact = np.where(eligible, test_fraction * counts, 0.0)
    cap = np.maximum(counts - 1, 0)
    quota = np.minimum(np.floor(exact).astype(np.int64), cap)
    target = int(round(exact.sum()))
    spare = target - int(quota.sum())
    if spare > 0:
        room = eligible & (quota < cap)
        frac = np.where(room, exact - quota, -np.inf)
        # rank by fractional part, ties broken by a seeded random key
        order = np.lexsort((rng.random(len(strata)), -frac))
        take = [s for s in order if room[s]][:spare]
        quota[take] += 1
    is_test = np.zeros(len(labels), dtype=bool)
    order_all = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for s in range(len(strata)):
        if quota[s] == 0:
            continue
        members = order_all[starts[s] : starts[s] + counts[s]]
        is_test[rng.permutation(members)[: quota[s]]] = True
    return is_test


def read_split_file(
    path: str | os.PathLike[str], ids: Sequence[str], *, id_cols: Sequence[str] = ("id",)
) -> np.ndarray:
    """Split codes ``[N]`` (0 train, 1 test, -1 not listed) for ``ids`` from a CSV split file.

    The file has an id column (``id`` or the dataset's native id name, e.g. ``md5hash``,
    ``image``) and a ``split`` column with values ``train`` / ``test``.
    """
    df = pl.read_csv(os.fspath(path), infer_schema_length=0)  # every column as string
    id_col = next((c for c in id_cols if c in df.columns), None)
    if id_col is None:
        raise DataError(
            f"split file {os.fspath(path)!r}: missing id column (one of "
            f"{list(id_cols)}); columns found: {sorted(df.columns)}"
        )
    require_columns(df.columns, ("split",), what=f"split file {os.fspath(path)!r}")
    bad = sorted(set(df["split"].to_list()) - {"train", "test"})
    if bad:
        raise DataError(
            f"split file {os.fspath(path)!r}: unknown split value(s) {bad[:10]}; "
            "allowed: 'train', 'test'"
        )
    if df[id_col].n_unique() != df.height:
        raise DataError(f"split file {os.fspath(path)!r}: duplicate ids in column {id_col!r}")
    mapping = dict(zip(df[id_col].to_list(), df["split"].to_list(), strict=True))
    code = {"train": 0, "test": 1}
    return np.array([code.get(mapping.get(i, ""), -1) for i in ids], dtype=np.int64)
