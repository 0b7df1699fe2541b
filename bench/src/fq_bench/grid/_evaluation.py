"""A cell's evaluation: fairness and cost of its model on the test split (METHOD.md 7 and 8)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

if TYPE_CHECKING:
    from ._config import GridConfig
    from ._data import DataBundle
    from ._methods import MethodOutput

#: Metrics that get a per-cell stratified bootstrap interval (``result["bootstrap"]``).
BOOTSTRAP_METRICS: tuple[str, ...] = ("worst_acc", "avg_acc", "gap")


@torch.no_grad()
def predict(model: torch.nn.Module, loader: Any, device: torch.device) -> tuple[np.ndarray, ...]:
    """``(labels [N], predictions [N], groups [N])`` over ``loader`` in eval mode.

    A fake-quantized model's weights are quantized once for the whole pass
    (``torch.nn.utils.parametrize.cached``), not once per batch: the same weights, computed once.
    """
    from torch.nn.utils import parametrize

    model.eval()
    ys, ps, gs = [], [], []
    with parametrize.cached():
        for x, y, g in loader:
            ps.append(model(x.to(device)).argmax(1).cpu())
            ys.append(y)
            gs.append(g)
    return tuple(torch.cat(t).numpy() for t in (ys, ps, gs))


def evaluate(
    out: MethodOutput, data: DataBundle, config: GridConfig, device: torch.device
) -> dict[str, Any]:
    """Fairness and cost of ``out.model`` on the test split (METHOD.md sections 7 and 8)."""
    from fq_fairmetrics import MIN_GROUP_N, SmallGroupWarning, cost_report, group_report
    from fq_fairmetrics.torch import layer_costs
    from fq_quant import BitAssignment, Granularity, ScopeLayout, packed_size

    model = out.model
    y, p, g = predict(model, data.loaders.test, device)
    n_groups = len(data.loaders.group_names)
    kw: dict[str, Any] = {
        "sensitive_features": g,
        "n_classes": data.loaders.num_classes,
        "group_names": list(range(n_groups)),
    }
    # empty and small groups are recorded in the cell ("empty_groups", "small_groups") and shown
    # under the report's tables, once per dataset, rather than warned once per cell
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallGroupWarning)
        rep = group_report(y, p, **kw)
        bootstrap: dict[str, list[float]] = {}
        if config.bootstrap_resamples > 0:
            from fq_fairmetrics import bootstrap_ci

            ci = bootstrap_ci(y, p, n_resamples=config.bootstrap_resamples, seed=0, **kw)
            bootstrap = {m: [ci.low[m], ci.high[m]] for m in BOOTSTRAP_METRICS}
    names = [str(n) for n in data.loaders.group_names]
    x = torch.zeros(1, 3, config.image_size, config.image_size, device=device)
    layers = layer_costs(model, x, out.assignment)
    cost = cost_report(layers)
    layout = ScopeLayout.from_model(model, Granularity.CHANNEL)
    # the size of what fq_quant.export_packed writes for this model (header, BatchNorm buffers and
    # every float tensor included); FP32 is the same file with every weight at 32 bits
    bits = out.assignment if out.assignment is not None else BitAssignment.uniform(layout, 32)
    size_bytes = packed_size(model, bits)
    layer_bits: list[list[Any]] = []
    if out.assignment is not None:
        layer_bits = [
            [name, float(b.to(torch.float64).mean()), int(layout[name].num_params)]
            for name, b in out.assignment.bits.items()
        ]
    return {
        "metrics": rep.metrics(),
        "overall_acc": rep.overall_acc,
        "group_names": names,
        "group_acc": [float(a) for a in rep.group_acc],
        "group_n": [int(n) for n in rep.group_n],
        # groups without test images (left out of every metric) and with 1 .. MIN_GROUP_N - 1
        # (metrics too uncertain to rank groups by), by name
        "empty_groups": [names[cast(int, k)] for k in rep.empty_groups],
        "small_groups": [names[cast(int, k)] for k in rep.small_groups],
        "min_group_n": MIN_GROUP_N,
        "cost": {
            "avg_bits": cost.avg_bits,
            "gbops": cost.gbops,
            "paper_gops": cost.paper_gops,
            "size_bytes": size_bytes,
            "macs": cost.macs,
            "n_params": cost.n_params,
        },
        "layer_bits": layer_bits,
        "bit_histogram": {}
        if out.assignment is None
        else {str(k): v for k, v in out.assignment.histogram().items()},
        # per-group percentile interval over resamples of the test images within each group
        "bootstrap": {"n_resamples": config.bootstrap_resamples, "confidence": 0.95, **bootstrap},
        # the test split's labels and groups (the same for every cell of a dataset) and this
        # cell's predictions, so any interval or paired statistic can be recomputed from the cell
        "test": {"labels": y.tolist(), "groups": g.tolist(), "predictions": p.tolist()},
    }
