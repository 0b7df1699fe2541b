"""fq-importance: group-conditioned calibration (importance per scope and group) and reducers.

The one way in::

    from fq_importance import calibrate, reduce, GroupImportance
"""

from fq_quant import ImportanceMap

from ._calibrate import Metric, Strategy, calibrate
from ._group_importance import METRICS, GroupImportance
from ._reduce import REDUCERS, Reducer, reduce

__all__ = [
    "METRICS",
    "REDUCERS",
    "GroupImportance",
    "ImportanceMap",
    "Metric",
    "Reducer",
    "Strategy",
    "calibrate",
    "reduce",
]
