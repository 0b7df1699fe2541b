"""``python bench/ptq_probe.py``: how much uniform post-training quantization costs each group.

For every (dataset, model, seed) of a grid config, the FP32 reference (the grid's own checkpoint:
trained once, reused by the grid and by this probe) is quantized uniformly at each requested
bit-width, per channel as Table 1's U8/U4 rows, and evaluated on the test split. Beside the group
accuracies it reports two signals that explain them:

- ``logit_rel_err``: median over test images of ``|z_b - z_fp32|_2 / |z_fp32|_2`` (the logits'
  relative change), the size of the quantization error where it reaches the decision;
- ``flips``: share of test images whose predicted class changes, of which ``lost`` were right
  and are now wrong and ``gained`` the reverse. Small random weight errors flip images on both
  sides of the decision boundary about equally, so overall accuracy moves only by ``gained - lost``;
- ``w_max_over_std``: mean over the quantized layers' output channels of ``max|w| / std(w)``.
  Per-channel max-abs scaling spends its 2^(b-1) - 1 positive levels on ``[0, max|w|]``, so this
  ratio is what sets the rounding error relative to the typical weight.

This is the check behind bench/README's "Per-channel U4 does not hurt this model": run it on the
default to see the numbers, or with ``--preset paper`` flags and ImageNet weights on a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from ._checkpoints import RunPaths, fp32_state, fresh_model
from ._config import GridConfig
from ._data import DataBundle, load_data
from ._names import PROBE_GRANULARITIES
from ._processes import init_processes, run_device


@torch.no_grad()
def _logits(model: torch.nn.Module, loader: Any, device: torch.device) -> tuple[torch.Tensor, ...]:
    """``(logits [N, K] float32 on the CPU, labels [N], groups [N])`` over ``loader``."""
    model.eval()
    zs, ys, gs = [], [], []
    for x, y, g in loader:
        zs.append(model(x.to(device)).float().cpu())
        ys.append(y)
        gs.append(g)
    return torch.cat(zs), torch.cat(ys), torch.cat(gs)


def weight_max_over_std(model: torch.nn.Module) -> float:
    """Mean over every quantizable layer's output channels of ``max|w| / std(w)`` (unitless)."""
    from fq_quant import quantizable_layers

    ratios = []
    for layer in quantizable_layers(model).values():
        w = layer.weight.detach().flatten(1).double()
        if w.shape[1] < 2:
            continue
        ratios.append((w.abs().amax(1) / w.std(1).clamp_min(1e-12)).mean().item())
    return float(np.mean(ratios)) if ratios else float("nan")


def _row(
    z: torch.Tensor, z_ref: torch.Tensor, y: torch.Tensor, g: torch.Tensor, data: DataBundle
) -> dict[str, Any]:
    from fq_fairmetrics import group_report

    pred = z.argmax(1)
    rep = group_report(
        y.numpy(),
        pred.numpy(),
        sensitive_features=g.numpy(),
        n_classes=data.loaders.num_classes,
        group_names=list(range(len(data.loaders.group_names))),
    )
    rel = (z - z_ref).norm(dim=1) / z_ref.norm(dim=1).clamp_min(1e-12)
    acc = np.asarray(rep.group_acc, dtype=np.float64)
    ref_ok, ok = z_ref.argmax(1) == y, pred == y
    return {
        "avg_acc": float(rep.avg_acc),
        "worst_acc": float(rep.worst_acc),
        "worst_group": str(data.loaders.group_names[int(np.nanargmin(acc))]),
        "group_acc": [float(a) for a in acc],
        "logit_rel_err": float(rel.median()),
        "flips": float((pred != z_ref.argmax(1)).double().mean()),
        "lost": float((ref_ok & ~ok).double().mean()),
        "gained": float((~ref_ok & ok).double().mean()),
    }


def ptq_probe(
    config: GridConfig,
    out: str | Path,
    *,
    bits: Sequence[int] = (8, 5, 4, 3),
    granularity: str = "channel",
) -> pl.DataFrame:
    """Per (dataset, model, seed, bits): uniform post-training quantization of the FP32 reference.

    ``out``: the grid's results folder; its FP32 checkpoints are reused (or trained and saved
    there, where the grid will reuse them). ``bits``: bit-widths in 2..16. ``granularity``:
    ``"channel"`` (Table 1's U8/U4) or ``"tensor"``. Returns one row per quantized model plus a
    ``bits == 32`` row per FP32 reference, with columns ``dataset, model, seed, bits, avg_acc,
    worst_acc`` (fractions in [0, 1]), ``worst_group, group_names, group_acc, logit_rel_err,
    flips, lost, gained`` (fractions of the test images) ``, w_max_over_std``.
    """
    from fq_quant import (
        BitAssignment,
        Granularity,
        ScopeLayout,
        quantize_model,
    )

    bits = tuple(int(b) for b in bits)
    if not bits or any(not 2 <= b <= 16 for b in bits):
        raise ValueError(f"bits must be bit-widths in 2..16; got {bits!r}")
    if granularity not in PROBE_GRANULARITIES:
        raise ValueError(
            f"granularity must be one of {', '.join(PROBE_GRANULARITIES)}; got {granularity!r}"
        )
    init_processes(config)
    paths, device = RunPaths(root=Path(out)), run_device(config)
    rows: list[dict[str, Any]] = []
    for dataset in config.datasets:
        data = load_data(config, dataset)
        names = [str(n) for n in data.loaders.group_names]
        for model_name in config.models:
            for seed in config.seeds:
                state = fp32_state(config, paths, data, model_name, seed)
                model = fresh_model(config, model_name, data, pretrained=False)
                model.load_state_dict(state)
                model.to(device)
                key = {"dataset": dataset, "model": model_name, "seed": seed, "group_names": names}
                z_ref, y, g = _logits(model, data.loaders.test, device)
                ratio = weight_max_over_std(model)
                rows.append(
                    {**key, "bits": 32, **_row(z_ref, z_ref, y, g, data), "w_max_over_std": ratio}
                )
                layout = ScopeLayout.from_model(model, Granularity(granularity))
                for b in bits:
                    # re-quantizing replaces the previous width's quantizer over the float weights
                    quantize_model(model, BitAssignment.uniform(layout, b))
                    z, _, _ = _logits(model, data.loaders.test, device)
                    rows.append({**key, "bits": b, **_row(z, z_ref, y, g, data),
                                 "w_max_over_std": ratio})  # fmt: skip
    return pl.DataFrame(rows)


def probe_summary(frame: pl.DataFrame) -> pl.DataFrame:
    """Mean and std over seeds per (dataset, model, bits), with changes paired by seed vs FP32.

    Accuracies, their changes and ``flips``/``lost``/``gained`` in percent (points); ``d_worst_acc``
    = ``worst_acc(bits) - worst_acc(FP32)`` of the same seed.
    """
    ref = frame.filter(pl.col("bits") == 32).select(
        "dataset", "model", "seed", pl.col("avg_acc").alias("ref_avg"),
        pl.col("worst_acc").alias("ref_worst"),
    )  # fmt: skip
    paired = frame.join(ref, on=["dataset", "model", "seed"]).with_columns(
        (100 * (pl.col("avg_acc") - pl.col("ref_avg"))).alias("d_avg_acc"),
        (100 * (pl.col("worst_acc") - pl.col("ref_worst"))).alias("d_worst_acc"),
        (100 * pl.col("avg_acc")).alias("avg_acc"),
        (100 * pl.col("worst_acc")).alias("worst_acc"),
        *[(100 * pl.col(c)).alias(c) for c in ("flips", "lost", "gained")],
    )
    cols = ("avg_acc", "worst_acc", "d_avg_acc", "d_worst_acc", "logit_rel_err", "flips", "lost",
            "gained")  # fmt: skip
    return (
        paired.group_by("dataset", "model", "bits", maintain_order=True)
        .agg(
            pl.len().alias("n_seeds"),
            *[pl.col(c).mean().alias(c) for c in cols],
            *[pl.col(c).std().alias(f"{c}_std") for c in cols],
            pl.col("worst_group").unique(maintain_order=True).alias("worst_groups"),
        )
        .sort("dataset", "model", pl.col("bits"), descending=[False, False, True])
    )


def probe_markdown(summary: pl.DataFrame) -> str:
    """The summary as a markdown table (``mean ± std`` over seeds; changes paired by seed)."""

    def pm(r: dict[str, Any], c: str, digits: int) -> str:
        sd = r[f"{c}_std"]
        sd_txt = "" if sd is None or not np.isfinite(sd) else f" ± {sd:.{digits}f}"
        return f"{r[c]:.{digits}f}{sd_txt}"

    head = (
        "| Dataset | Model | Bits | AvgAcc | WorstAcc | ΔAvgAcc | ΔWorstAcc | "
        "logit rel. err. | flips % | lost % | gained % | worst group(s) |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
    )
    lines = []
    for r in summary.iter_rows(named=True):
        label = "FP32" if r["bits"] == 32 else f"U{r['bits']}"
        delta = r["bits"] != 32
        lines.append(
            f"| {r['dataset']} | {r['model']} | {label} | {pm(r, 'avg_acc', 2)} | "
            f"{pm(r, 'worst_acc', 2)} | {pm(r, 'd_avg_acc', 2) if delta else '-'} | "
            f"{pm(r, 'd_worst_acc', 2) if delta else '-'} | "
            f"{pm(r, 'logit_rel_err', 3) if delta else '-'} | "
            f"{pm(r, 'flips', 1) if delta else '-'} | {pm(r, 'lost', 1) if delta else '-'} | "
            f"{pm(r, 'gained', 1) if delta else '-'} | {', '.join(r['worst_groups'])} |"
        )
    return head + "\n".join(lines) + "\n"
