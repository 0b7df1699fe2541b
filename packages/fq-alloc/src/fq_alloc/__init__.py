"""fq-alloc: budgeted bit allocation, importance per scope -> bits per scope.

The one way in::

    from fq_alloc import Palette, allocate, allocate_to_budget
"""

from fq_quant import ImportanceMap

from ._allocate import BUDGET_TOL, COSTS, WEIGHTINGS, allocate, allocate_to_budget, budget_palette
from ._palette import Palette

__all__ = [
    "BUDGET_TOL",
    "COSTS",
    "WEIGHTINGS",
    "ImportanceMap",
    "Palette",
    "allocate",
    "allocate_to_budget",
    "budget_palette",
]
