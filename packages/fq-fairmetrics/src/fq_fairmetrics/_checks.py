"""Small argument checks shared by the modules."""

from __future__ import annotations

from typing import Any

import numpy as np


def is_int(value: Any) -> bool:
    """True for Python/numpy integers, False for bools and everything else."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)
