"""Benchmark: group-conditioned calibration time per batch vs one plain forward + backward.

timm ``resnet18`` (random init, ``num_classes=10``), ``image_size`` px, batch ``batch``, CPU by
default (``--device cuda`` where there is one). The baseline is one forward and one backward of
the batch's mean cross-entropy w.r.t. the quantizable weights, in eval mode (what calibration
does per batch, for one group). Calibration runs ``fq_importance`` on the same batches with the
samples split evenly over ``G`` groups, for both per-group gradient strategies:

* ``fused`` (the default): one backward to the layer outputs, then each group's weight gradient
  from its own rows (eval mode keeps samples independent);
* ``loop``: ``torch.autograd.grad(L_g, weights, retain_graph=True)`` once per group;
* ``batched``: one ``torch.autograd.grad(L, weights, grad_outputs=eye(G), is_grads_batched=True)``
  (vmap over the backward).

Baseline and calibration steps alternate, so machine noise hits both alike; we report medians of
per-batch seconds and their ratio (target ``<= 1 + 0.5 G``).

Run ``uv run python bench/bench_calibration.py`` (``--help``); import ``bench_calibration``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_calibration(
    groups: tuple[int, ...] = (2, 3, 6),
    *,
    image_size: int = 64,
    batch: int = 64,
    repeats: int = 5,
    strategies: tuple[str, ...] = ("fused", "loop", "batched"),
    metric: str = "grape",
    device: str = "cpu",
    per_call: int = 3,
) -> dict[str, Any]:
    """Median seconds per batch: plain forward+backward and calibration per (strategy, G).

    Each calibration call visits ``per_call`` batches, so its fixed cost (result building) is
    amortized as it is over the 50 batches of a real calibration.
    """
    import timm
    from fq_importance import calibrate
    from fq_quant import quantizable_layers

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).to(device).eval()
    weights = [m.weight for m in quantizable_layers(model).values()]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, image_size, image_size, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)

    def plain() -> float:
        _sync(device)
        t = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        torch.autograd.grad(loss, weights)
        _sync(device)
        return time.perf_counter() - t

    def calib(g: int, strategy: str) -> float:
        grp = (torch.arange(batch) % g).to(device)
        _sync(device)
        t = time.perf_counter()
        calibrate(
            model,
            [(x, y, grp)] * per_call,
            metric=metric,
            granularity="channel",
            batches=None,
            device=None,
            groups=None,
            probes=1,
            seed=0,
            progress=False,
            strategy=strategy,
        )
        _sync(device)
        return (time.perf_counter() - t) / per_call

    plain(), calib(2, strategies[0])  # warm-up
    rows = []
    for g in groups:
        for strategy in strategies:
            base, cal = [], []
            for _ in range(repeats):
                base.append(plain())
                cal.append(calib(g, strategy))
            b, c = statistics.median(base), statistics.median(cal)
            rows.append(
                {
                    "groups": g,
                    "strategy": strategy,
                    "plain_s": b,
                    "calibrate_s": c,
                    "ratio": c / b,
                    "target_ratio": 1 + 0.5 * g,
                }
            )
    return {
        "model": "timm resnet18",
        "image_size": image_size,
        "batch": batch,
        "metric": metric,
        "device": device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
    }


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{result['model']}, {result['image_size']} px, batch {result['batch']}, metric "
        f"{result['metric']}, {result['device']} ({result['threads']} threads), torch {result['torch']}",
        "",
        "| groups | strategy | plain fwd+bwd (s) | calibrate per batch (s) | ratio | target |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['groups']} | {r['strategy']} | {r['plain_s']:.4f} | {r['calibrate_s']:.4f} | "
            f"{r['ratio']:.2f} | {r['target_ratio']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", type=int, nargs="+", default=[2, 3, 6])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--metric", default="grape")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    a = p.parse_args()
    res = bench_calibration(
        tuple(a.groups),
        image_size=a.image_size,
        batch=a.batch,
        repeats=a.repeats,
        metric=a.metric,
        device=a.device,
    )
    print(json.dumps(res, indent=2) if a.json else to_markdown(res))


if __name__ == "__main__":
    main()
