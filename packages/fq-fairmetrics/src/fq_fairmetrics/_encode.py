"""Validating and integer-encoding labels and sensitive features (shared by every entry point)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from ._checks import is_int

#: Integer groups spanning at most this many values are encoded with ``np.bincount`` (O(N))
#: instead of ``np.unique`` (a sort, O(N log N)).
_DENSE_RANGE = 1 << 20


def as_1d(x: Any, name: str) -> np.ndarray:
    """``x`` as a non-empty 1-D numpy array, or ``ValueError`` naming ``name``."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D with one entry per sample; got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty; at least one sample is needed")
    return arr


def _is_text(arr: np.ndarray) -> bool:
    return arr.dtype.kind in "USO"


def _int_labels(arr: np.ndarray, name: str) -> np.ndarray:
    """Integer codes of a numeric label array; floats must be whole numbers."""
    if arr.dtype.kind == "b":
        return arr.astype(np.int64)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f":
        if np.isnan(arr).any():
            raise ValueError(f"{name} contains NaN; labels must be integers or strings")
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(
                f"{name} contains non-integer values; labels must be integers or strings"
            )
        return arr.astype(np.int64)
    raise ValueError(f"{name} has dtype {arr.dtype}; labels must be integers or strings")


def _lookup(values: list[Hashable], names: Sequence[Hashable], name: str, arg: str) -> np.ndarray:
    """Position in ``names`` of each of ``values`` (a loop over distinct values, not samples)."""
    index = {v: i for i, v in enumerate(names)}
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        if v not in index:
            raise ValueError(f"{name} contains {v!r}, which is not in {arg}={list(names)!r}")
        out[i] = index[v]
    return out


def _unique_inverse(arr: np.ndarray, name: str) -> tuple[list[Hashable], np.ndarray]:
    """Sorted distinct values of ``arr`` (as Python objects) and each sample's index into them."""
    if arr.dtype.kind in "iub":
        a = arr.astype(np.int64, copy=False)
        lo, hi = int(a.min()), int(a.max())
        if hi - lo < _DENSE_RANGE:
            present = np.bincount(a - lo, minlength=hi - lo + 1) > 0
            rank = np.cumsum(present) - 1
            values = (np.flatnonzero(present) + lo).tolist()
            return values, rank[a - lo]
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    if arr.dtype.kind == "O":
        missing = np.flatnonzero(np.equal(arr, np.array(None, dtype=object)))
        if missing.size:
            raise ValueError(
                f"{name} contains None ({missing.size} sample(s), first at index "
                f"{int(missing[0])}); give every sample a group or label"
            )
    try:
        values, inverse = np.unique(arr, return_inverse=True)
    except TypeError as exc:
        raise ValueError(f"{name} mixes values that cannot be sorted together: {exc}") from exc
    return values.tolist(), inverse.reshape(-1).astype(np.int64, copy=False)


def _check_unique(names: Sequence[Hashable], arg: str) -> tuple[Hashable, ...]:
    out = tuple(names)
    if len(set(out)) != len(out):
        raise ValueError(f"{arg} must not repeat a name; got {list(out)!r}")
    if not out:
        raise ValueError(f"{arg} must name at least one entry; got an empty sequence")
    return out


def encode_groups(
    sensitive_features: Any, group_names: Sequence[Hashable] | None
) -> tuple[np.ndarray, tuple[Hashable, ...]]:
    """Group code per sample ``[N]`` and the group names (values) in code order.

    Groups are identified by value. Without ``group_names`` the groups are the distinct values
    present, sorted. With ``group_names``, that sequence fixes the groups and their order; every
    value present must be in it, and names absent from the data become empty groups. One
    exception, so that ``group_names`` means the same everywhere: integer groups with names that
    are not integers are codes, ``k`` being ``group_names[k]`` (as loaders yield them).
    """
    arr = as_1d(sensitive_features, "sensitive_features")
    values, inverse = _unique_inverse(arr, "sensitive_features")
    if group_names is None:
        return inverse, tuple(values)
    names = _check_unique(group_names, "group_names")
    if arr.dtype.kind in "iu" and not any(is_int(n) for n in names):
        # integer codes with names that are not integers: code k is group_names[k] (as
        # fq_data's loaders and ``fq_fairmetrics.torch.evaluate`` give them)
        codes = np.asarray(values, dtype=np.int64)
        bad = codes[(codes < 0) | (codes >= len(names))]
        if bad.size:
            raise ValueError(
                f"sensitive_features holds integer code(s) {bad[:5].tolist()} outside "
                f"group_names ({len(names)} names: codes 0..{len(names) - 1})"
            )
        return codes[inverse], names
    return _lookup(values, names, "sensitive_features", "group_names")[inverse], names


def encode_classes(
    y_true: Any,
    y_pred: Any,
    n_classes: int | None,
    class_names: Sequence[Hashable] | None,
) -> tuple[np.ndarray, np.ndarray, int, tuple[Hashable, ...]]:
    """Class codes of ``y_true`` and ``y_pred`` ``[N]``, the number of classes, the class names.

    ``y_pred`` is either labels ``[N]`` or scores/logits ``[N, C]`` (argmax taken). Integer
    labels are their own codes (``0..C-1``); string labels are coded by position in
    ``class_names`` (or in the sorted distinct labels when ``class_names`` is omitted).
    """
    t = as_1d(y_true, "y_true")
    p = np.asarray(y_pred)
    if n_classes is not None and not is_int(n_classes):
        raise ValueError(f"n_classes must be a positive int or None; got {n_classes!r}")
    if n_classes is not None and n_classes < 1:
        raise ValueError(f"n_classes must be >= 1; got {n_classes}")
    names = None if class_names is None else _check_unique(class_names, "class_names")
    if n_classes is not None and names is not None and len(names) != n_classes:
        raise ValueError(
            f"class_names has {len(names)} entries but n_classes={n_classes}; they must agree"
        )

    if p.ndim == 2:
        if p.shape[0] != t.shape[0]:
            raise ValueError(
                f"y_pred has {p.shape[0]} rows but y_true has {t.shape[0]} samples; "
                "lengths must match"
            )
        if p.dtype.kind not in "fiub":
            raise ValueError(f"y_pred scores must be numeric; got dtype {p.dtype}")
        if p.shape[1] == 0:
            raise ValueError("y_pred scores have 0 columns; need one column per class")
        n_cols = p.shape[1]
        for arg, given in (
            ("n_classes", n_classes),
            ("class_names", None if names is None else len(names)),
        ):
            if given is not None and given != n_cols:
                raise ValueError(
                    f"y_pred scores have {n_cols} columns but {arg} gives {given} classes"
                )
        p_codes = p.argmax(axis=1).astype(np.int64)
        # argmax returns the first NaN of a row that has one, so checking the winners finds
        # every NaN row in O(N) instead of scanning all N*C scores
        if p.dtype.kind == "f":
            winners = p[np.arange(p.shape[0]), p_codes]
            if np.isnan(winners).any():
                raise ValueError("y_pred contains NaN scores; argmax would be meaningless")
            # a row whose best score is infinite may hold no finite score at all (all -inf, or
            # +inf ties): its argmax would be column 0 by convention, not a prediction
            odd = np.flatnonzero(~np.isfinite(winners))
            empty = odd[~np.isfinite(p[odd]).any(axis=1)] if odd.size else odd
            if empty.size:
                raise ValueError(
                    f"y_pred has {empty.size} row(s) with no finite score (first: row "
                    f"{int(empty[0])}, {p[empty[0]].tolist()[:8]}); argmax would be meaningless"
                )
        if _is_text(t):
            if names is None:
                raise ValueError(
                    "y_true holds string labels with y_pred scores: pass class_names "
                    "(class_names[j] is the label of score column j)"
                )
            values, inverse = _unique_inverse(t, "y_true")
            return _lookup(values, names, "y_true", "class_names")[inverse], p_codes, n_cols, names
        t_codes = _int_labels(t, "y_true")
        _check_range(t_codes, "y_true", n_cols, "y_pred.shape[1]")
        return t_codes, p_codes, n_cols, names or tuple(range(n_cols))

    if p.ndim != 1:
        raise ValueError(f"y_pred must be labels [N] or scores [N, C]; got shape {p.shape}")
    if p.shape[0] != t.shape[0]:
        raise ValueError(
            f"y_pred has {p.shape[0]} samples but y_true has {t.shape[0]}; lengths must match"
        )
    if _is_text(t) != _is_text(p):
        raise ValueError(
            f"y_true (dtype {t.dtype}) and y_pred (dtype {p.dtype}) must both be integer labels "
            "or both be string labels"
        )
    if _is_text(t):
        return _encode_text(t, p, n_classes, names)
    t_codes, p_codes = _int_labels(t, "y_true"), _int_labels(p, "y_pred")
    if n_classes is None:
        n_classes = len(names) if names is not None else int(max(t_codes.max(), p_codes.max())) + 1
        bound_arg = "class_names" if names is not None else ""
    else:
        bound_arg = "n_classes"
    _check_range(t_codes, "y_true", n_classes, bound_arg)
    _check_range(p_codes, "y_pred", n_classes, bound_arg)
    return t_codes, p_codes, int(n_classes), names or tuple(range(n_classes))


def _encode_text(
    t: np.ndarray, p: np.ndarray, n_classes: int | None, names: tuple[Hashable, ...] | None
) -> tuple[np.ndarray, np.ndarray, int, tuple[Hashable, ...]]:
    values, inverse = _unique_inverse(np.concatenate([t, p]), "y_true/y_pred")
    if names is None:
        if n_classes is not None and n_classes != len(values):
            raise ValueError(
                f"y_true/y_pred hold {len(values)} distinct string labels but "
                f"n_classes={n_classes}; "
                "pass class_names to declare classes that do not occur"
            )
        names = tuple(values)
        codes = inverse
    else:
        codes = _lookup(values, names, "y_true/y_pred", "class_names")[inverse]
    n = t.shape[0]
    return codes[:n], codes[n:], len(names), names


def _check_range(codes: np.ndarray, name: str, n_classes: int, bound_arg: str) -> None:
    lo, hi = int(codes.min()), int(codes.max())
    if lo < 0:
        raise ValueError(f"{name} contains negative label {lo}; labels must be in 0..C-1")
    if hi >= n_classes:
        raise ValueError(
            f"{name} contains label {hi} but {bound_arg} allows only {n_classes} classes "
            f"(0..{n_classes - 1})"
        )
