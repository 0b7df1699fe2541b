"""The one order of rows in every table, plot and cell list of the grid.

Datasets as in :data:`DATASETS`; the paper's models in Table 1's order, then any other model by
first appearance; Table 1 cells before frontier cells, budgets ascending; ablation fields by
first appearance and values ascending; methods as in :data:`METHOD_IDS`. The cell store lists
files by id (alphabetically), which would put DeiT before ResNet18: everything sorts through here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import polars as pl

from ._names import DATASETS, METHOD_IDS, PAPER_MODELS

_LAST = 10_000


def model_order(models: Iterable[str]) -> dict[str, int]:
    """Model name -> rank: the paper's backbones in Table 1's order, then others as they come."""
    order = {m: i for i, m in enumerate(PAPER_MODELS)}
    for m in dict.fromkeys(models):
        order.setdefault(m, len(order))
    return order


def rank_columns(frame: pl.DataFrame) -> list[pl.Expr]:
    """Sort keys for the columns of ``frame`` among dataset, model, budget, variant and method."""
    keys: list[pl.Expr] = []
    cols = set(frame.columns)
    if "dataset" in cols:
        ds = {d: i for i, d in enumerate(DATASETS)}
        keys.append(pl.col("dataset").replace_strict(ds, default=_LAST, return_dtype=pl.Int64))
    if "model" in cols:
        mo = model_order(frame["model"].to_list())
        keys.append(pl.col("model").replace_strict(mo, default=_LAST, return_dtype=pl.Int64))
    if "budget" in cols:
        budget = pl.col("budget").replace("", None).cast(pl.Float64)
        keys += [budget.is_not_null(), budget.fill_null(0.0)]
    if "variant" in cols:
        fields = list(dict.fromkeys(v.split("=", 1)[0] for v in frame["variant"].to_list() if v))
        part = pl.col("variant").str.split_exact("=", 1).struct
        keys.append(
            part.field("field_0")
            .replace_strict({"": -1} | {f: i for i, f in enumerate(fields)}, default=_LAST,
                            return_dtype=pl.Int64)
        )  # fmt: skip
        # names (fair_loss=dro) tie here and keep their order
        keys.append(part.field("field_1").cast(pl.Float64, strict=False).fill_null(0.0))
    if "method" in cols:
        me = {m: i for i, m in enumerate(METHOD_IDS)}
        keys.append(pl.col("method").replace_strict(me, default=_LAST, return_dtype=pl.Int64))
    return keys


def sort_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` in the grid's one row order (stable for ties)."""
    if frame.is_empty():
        return frame
    return frame.sort(rank_columns(frame), maintain_order=True)


def ordered_methods(methods: Iterable[str]) -> list[str]:
    """The distinct ``methods`` in :data:`METHOD_IDS` order (unknown ids last, as they come)."""
    me = {m: i for i, m in enumerate(METHOD_IDS)}
    distinct = list(dict.fromkeys(methods))
    return sorted(distinct, key=lambda m: (me.get(m, _LAST), distinct.index(m)))


def ordered_pairs(datasets: Sequence[str], models: Sequence[str]) -> list[tuple[str, str]]:
    """The distinct (dataset, model) pairs of two parallel columns, in the grid's order."""
    frame = pl.DataFrame({"dataset": list(datasets), "model": list(models)}).unique(
        maintain_order=True
    )
    return list(sort_rows(frame).iter_rows())
