"""One number from a polars column: ``Series.mean()``/``min()``/``max()`` typed as a float.

polars types these aggregates as any Python literal or ``None`` (a date column has a date maximum,
an all-null column none); the tables and plots only aggregate numeric columns, so a value that is
not a number is a bug, reported with the column's name.
"""

from __future__ import annotations

import polars as pl


def mean_of(column: pl.Series) -> float:
    """The mean of ``column``'s non-null values."""
    return _number(column.mean(), column, "mean")


def min_of(column: pl.Series) -> float:
    """The minimum of ``column``'s non-null values."""
    return _number(column.min(), column, "min")


def max_of(column: pl.Series) -> float:
    """The maximum of ``column``'s non-null values."""
    return _number(column.max(), column, "max")


def _number(value: object, column: pl.Series, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"the {what} of column {column.name!r} is {value!r}, not a number")
    return float(value)
