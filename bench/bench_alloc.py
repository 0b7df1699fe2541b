"""Benchmark: quantile bit allocation on timm resnet18, per channel and per parameter.

Random importances (seeded) over every Conv2d/Linear scope of timm ``resnet18`` (random init, 21
layers, 11.2M weights), palette 2/4/8 at 0.2/0.4/0.4; ``fq_alloc.allocate`` with
``weighting="scopes"`` and ``"params"``, and ``allocate_to_budget`` (palette 2..8, 4.3 bits).
Reports the median wall time of ``repeats`` calls, including building the validated
``fq_quant.BitAssignment`` (targets: per channel <= 5 ms, per parameter <= 2 s; a public
implementation that loops per element in Python needs about 0.18 s and 265 s).

Run ``uv run python bench/bench_alloc.py``; import ``bench_allocation`` for a larger suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch


def bench_allocation(*, repeats: int = 5, model: str = "resnet18") -> dict[str, Any]:
    """Median seconds per call for each (granularity, call)."""
    import timm
    from fq_alloc import Palette, allocate, allocate_to_budget
    from fq_quant import Granularity, ImportanceMap, ScopeLayout

    net = timm.create_model(model, pretrained=False)
    palette = Palette((2, 4, 8), (0.2, 0.4, 0.4))
    rows = []
    for granularity in (Granularity.CHANNEL, Granularity.PARAM):
        layout = ScopeLayout.from_model(net, granularity)
        g = torch.Generator().manual_seed(0)
        imap = ImportanceMap(
            granularity,
            {n: torch.rand(s.scope_shape, generator=g) for n, s in layout.layers.items()},
        )
        calls: dict[str, Callable[[], object]] = {
            "allocate(scopes)": partial(allocate, imap, palette),
            "allocate(params)": partial(allocate, imap, palette, weighting="params", layout=layout),
            "allocate_to_budget(4.3)": partial(allocate_to_budget, imap, layout=layout),
        }
        for name, call in calls.items():
            call()  # warm-up
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                call()
                times.append(time.perf_counter() - t)
            rows.append(
                {
                    "granularity": granularity.value,
                    "scopes": layout.num_scopes,
                    "call": name,
                    "median_s": statistics.median(times),
                    "min_s": min(times),
                }
            )
    return {
        "model": f"timm {model}",
        "params": layout.num_params,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
    }


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{result['model']} ({result['params']:,} quantized weights), CPU {result['threads']} threads, "
        f"torch {result['torch']}",
        "",
        "| granularity | scopes | call | median (s) | min (s) |",
        "|---|---:|---|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['granularity']} | {r['scopes']:,} | {r['call']} | {r['median_s']:.4f} | {r['min_s']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    res = bench_allocation(repeats=a.repeats, model=a.model)
    print(json.dumps(res, indent=2) if a.json else to_markdown(res))


if __name__ == "__main__":
    main()
