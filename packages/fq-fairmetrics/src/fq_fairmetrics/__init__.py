"""fq-fairmetrics: group fairness and cost metrics for any classifier (numpy core, no torch).

Fairness (METHOD.md section 7): :func:`group_report` -> :class:`FairnessReport`, the streaming
:class:`FairnessAccumulator`, :func:`bootstrap_ci`, :func:`seed_summary`.
Comparing two models (METHOD.md sections 7.1-7.3): :func:`compare` -> :class:`Comparison`, with
the paired statistics it rests on (:func:`mcnemar_exact`, :func:`change_interval`,
:func:`paired_difference`, :func:`minimal_detectable_effect`, :func:`margin_sample_size`).
Cost (METHOD.md section 8): :class:`LayerCost`, :func:`cost_report` -> :class:`CostReport`; MACs of
a torch model come from ``fq_fairmetrics.torch.layer_costs`` (extra ``fq-fairmetrics[torch]``).
"""

from __future__ import annotations

from ._bootstrap import BootstrapCI, bootstrap_ci
from ._compare import compare, compare_outcomes
from ._comparison import Comparison, ComparisonRow
from ._cost import ALLOWED_BITS, CostReport, LayerCost, LayerCostRow, cost_report
from ._engine import METRICS, MetricName
from ._exact import (
    TooFewSamplesWarning,
    change_interval,
    clopper_pearson,
    margin_sample_size,
    mcnemar_exact,
    mcnemar_interval,
)
from ._paired import (
    PairedDifference,
    image_weights,
    minimal_detectable_effect,
    paired_difference,
    paired_worst,
    resampled_worst,
    seed_image_verdict,
    seeds_needed,
    t_interval,
    worst_difference_draws,
)
from ._predictions import PREDICTION_COLUMNS, Predictions
from ._report import FairnessAccumulator, FairnessReport, group_report
from ._seeds import SeedSummary, seed_summary

__all__ = [
    "ALLOWED_BITS",
    "METRICS",
    "PREDICTION_COLUMNS",
    "BootstrapCI",
    "Comparison",
    "ComparisonRow",
    "CostReport",
    "FairnessAccumulator",
    "FairnessReport",
    "LayerCost",
    "LayerCostRow",
    "MetricName",
    "PairedDifference",
    "Predictions",
    "SeedSummary",
    "TooFewSamplesWarning",
    "bootstrap_ci",
    "change_interval",
    "clopper_pearson",
    "compare",
    "compare_outcomes",
    "cost_report",
    "group_report",
    "image_weights",
    "margin_sample_size",
    "mcnemar_exact",
    "mcnemar_interval",
    "minimal_detectable_effect",
    "paired_difference",
    "paired_worst",
    "resampled_worst",
    "seed_image_verdict",
    "seed_summary",
    "seeds_needed",
    "t_interval",
    "worst_difference_draws",
]
