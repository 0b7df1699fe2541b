"""Benchmark: one BAQ training step (per-channel learnable bits) vs one FP32 training step.

timm ``resnet18`` (``num_classes=10``, random init), ``image_size`` px, batch ``batch``, the real
``fq_baq`` training step (forward, CE + fairness penalty + bit loss, backward, clipping, AdamW) run
through the same accelerate session code as ``fit``. The two models are stepped alternately in one
process, so machine noise hits both alike; we report the median of the per-pair time ratios.

Memory: each variant runs in a fresh subprocess; CPU: peak RSS (``ru_maxrss``) minus the RSS just
before the first step (model, batch and optimizer built; AdamW state is created lazily in the first
step and so counts), i.e. what the training step itself adds; the total peak RSS ratio is printed
too. CUDA: ``torch.cuda.max_memory_allocated`` over the steps.

Run ``uv run python bench/bench_baq.py`` (``--help`` for options); import ``bench_baq_step`` for a
larger suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

import torch


def _session(kind: str, device: str, seed: int = 0):  # type: ignore[no-untyped-def]
    import timm
    from fq_baq import BAQConfig
    from fq_baq._loop import Session
    from fq_baq._wrap import LearnableWrapping, Wrapping

    torch.manual_seed(seed)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    config = BAQConfig(cpu=device == "cpu", lr=1e-4, lr_bits=1e-3, lambda_fair=0.5)
    wrapping = LearnableWrapping(model, config, None) if kind == "baq" else Wrapping()
    return Session(model, wrapping, config)


def _batch(image_size: int, batch: int, device: str):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, image_size, image_size, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    grp = torch.randint(0, 3, (batch,), generator=g)
    return x.to(device), y.to(device), grp.to(device)


def _timed_step(session, batch, device: str) -> float:  # type: ignore[no-untyped-def]
    if device != "cpu":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    session.step(batch)
    if device != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench_baq_step(
    image_size: int = 64, batch: int = 64, steps: int = 10, warmup: int = 2, device: str = "cpu"
) -> dict[str, Any]:
    """Interleaved BAQ and FP32 training steps; times in seconds.

    Returns ``ratio_median`` (median over pairs of BAQ time / FP32 time), ``ratio_of_medians``,
    ``ratio_min``/``ratio_max``, ``fp32_median_s``/``baq_median_s`` and the raw per-step times.
    """
    fp32, baq = _session("fp32", device), _session("baq", device)
    data = _batch(image_size, batch, device)
    t_fp32, t_baq = [], []
    for i in range(warmup + steps):
        # alternate which goes first so neither always follows the other's cache state
        order = ((fp32, t_fp32), (baq, t_baq)) if i % 2 == 0 else ((baq, t_baq), (fp32, t_fp32))
        for session, times in order:
            t = _timed_step(session, data, device)
            if i >= warmup:
                times.append(t)
    ratios = [b / f for b, f in zip(t_baq, t_fp32, strict=True)]
    return {
        "image_size": image_size,
        "batch": batch,
        "steps": steps,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "fp32_median_s": statistics.median(t_fp32),
        "baq_median_s": statistics.median(t_baq),
        "ratio_median": statistics.median(ratios),
        "ratio_of_medians": statistics.median(t_baq) / statistics.median(t_fp32),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "fp32_times_s": t_fp32,
        "baq_times_s": t_baq,
    }


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _memory_child(
    kind: str, image_size: int, batch: int, steps: int, device: str
) -> dict[str, Any]:
    import resource

    session = _session(kind, device)
    data = _batch(image_size, batch, device)
    if device != "cpu":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    for _ in range(steps):
        session.step(data)
    if device != "cpu":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"kind": kind, "base_bytes": base, "peak_bytes": peak, "step_bytes": peak - base}


def bench_baq_memory(
    image_size: int = 64, batch: int = 64, steps: int = 2, device: str = "cpu"
) -> dict[str, Any]:
    """Peak memory of BAQ vs FP32 training steps, each in a fresh subprocess (see module doc)."""
    out = {}
    for kind in ("fp32", "baq"):
        cmd = [
            sys.executable,
            __file__,
            "--memory-child",
            kind,
            "--image-size",
            str(image_size),
            "--batch",
            str(batch),
            "--steps",
            str(steps),
            "--device",
            device,
        ]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        out[kind] = json.loads(res.stdout.strip().splitlines()[-1])
    return {
        "fp32": out["fp32"],
        "baq": out["baq"],
        "step_ratio": out["baq"]["step_bytes"] / out["fp32"]["step_bytes"],
        "peak_ratio": out["baq"]["peak_bytes"] / out["fp32"]["peak_bytes"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--memory-child", choices=("fp32", "baq"))
    p.add_argument("--no-memory", action="store_true")
    a = p.parse_args()
    if a.memory_child:
        print(json.dumps(_memory_child(a.memory_child, a.image_size, a.batch, a.steps, a.device)))
        return
    res = bench_baq_step(a.image_size, a.batch, a.steps, a.warmup, a.device)
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{res['torch_threads']} threads, {a.device}"
    )
    print(
        f"resnet18 {a.image_size}px batch {a.batch}: "
        f"FP32 step {res['fp32_median_s'] * 1e3:.1f} ms, "
        f"BAQ step {res['baq_median_s'] * 1e3:.1f} ms (medians of {a.steps})"
    )
    print(
        f"BAQ/FP32 time ratio: median of pairs {res['ratio_median']:.3f} "
        f"(min {res['ratio_min']:.3f}, max {res['ratio_max']:.3f}); ratio of medians "
        f"{res['ratio_of_medians']:.3f}  [target <= 1.15]"
    )
    if not a.no_memory:
        mem = bench_baq_memory(a.image_size, a.batch, 2, a.device)
        print(
            f"memory: step bytes FP32 {mem['fp32']['step_bytes'] / 2**20:.0f} MiB, "
            f"BAQ {mem['baq']['step_bytes'] / 2**20:.0f} MiB, ratio {mem['step_ratio']:.3f}; "
            f"peak ratio {mem['peak_ratio']:.3f}  [target <= 1.2]"
        )


if __name__ == "__main__":
    main()
