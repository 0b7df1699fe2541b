"""fq-fairmetrics: group fairness and cost metrics for any classifier (numpy core, no torch).

Fairness (METHOD.md section 7): :func:`group_report` -> :class:`FairnessReport`, the streaming
:class:`FairnessAccumulator`, :func:`bootstrap_ci`, :func:`seed_summary`.
Cost (METHOD.md section 8): :class:`LayerCost`, :func:`cost_report` -> :class:`CostReport`; MACs of
a torch model come from ``fq_fairmetrics.torch.layer_costs`` (extra ``fq-fairmetrics[torch]``).
"""

from __future__ import annotations

from ._bootstrap import BootstrapCI, bootstrap_ci
from ._cost import ALLOWED_BITS, CostReport, LayerCost, LayerCostRow, cost_report
from ._engine import MAX_COUNT_CELLS, METRICS, MetricName
from ._report import (
    MIN_GROUP_N,
    FairnessAccumulator,
    FairnessReport,
    SmallGroupWarning,
    group_report,
)
from ._seeds import SeedSummary, seed_summary

__all__ = [
    "MAX_COUNT_CELLS",
    "MIN_GROUP_N",
    "SmallGroupWarning",
    "ALLOWED_BITS",
    "METRICS",
    "BootstrapCI",
    "CostReport",
    "FairnessAccumulator",
    "FairnessReport",
    "LayerCost",
    "LayerCostRow",
    "MetricName",
    "SeedSummary",
    "bootstrap_ci",
    "cost_report",
    "group_report",
    "seed_summary",
]
