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
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from fq_baq import TrainingSession

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (images, labels, groups)


def _session(kind: str, device: str, seed: int = 0) -> TrainingSession:
    import timm
    from fq_baq import BAQConfig, BAQTrainer, FP32Trainer

    torch.manual_seed(seed)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    config = BAQConfig(cpu=device == "cpu", lr=1e-4, lr_bits=1e-3, lambda_fair=0.5)
    trainer = BAQTrainer(model, config) if kind == "baq" else FP32Trainer(model, config)
    return trainer.session()


def _batch(image_size: int, batch: int, device: str) -> Batch:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, image_size, image_size, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    grp = torch.randint(0, 3, (batch,), generator=g)
    return x.to(device), y.to(device), grp.to(device)


def _timed_step(session: TrainingSession, batch: Batch, device: str) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one step."""
    if device != "cpu":
        torch.cuda.synchronize()
    c0, t0 = time.process_time(), time.perf_counter()
    session.step(batch)
    if device != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def bench_baq_step(
    image_size: int = 64, batch: int = 64, steps: int = 10, warmup: int = 2, device: str = "cpu"
) -> dict[str, Any]:
    """Interleaved BAQ and FP32 training steps; times in seconds.

    Returns ``ratio_median`` (median over pairs of BAQ time / FP32 time),
    ``ratio_of_medians``, ``ratio_of_mins`` (the least noise-sensitive on a shared machine),
    ``ratio_min``/``ratio_max`` (spread of the pairs), ``fp32_median_s``/``baq_median_s`` and the
    raw per-step times; ``cpu_ratio_median``/``cpu_ratio_min``/``cpu_ratio_max``: the same pairs
    timed by the process's CPU time (``time.process_time``, all threads), which leaves out the time
    other processes hold the cores (a diagnostic on a shared machine; meaningful on ``cpu`` only).
    """
    fp32, baq = _session("fp32", device), _session("baq", device)
    data = _batch(image_size, batch, device)
    t_fp32: list[float] = []
    t_baq: list[float] = []
    c_fp32: list[float] = []
    c_baq: list[float] = []
    for i in range(warmup + steps):
        # alternate which goes first so neither always follows the other's cache state
        first, second = ((fp32, t_fp32, c_fp32), (baq, t_baq, c_baq))
        for session, times, cpu in (first, second) if i % 2 == 0 else (second, first):
            t, c = _timed_step(session, data, device)
            if i >= warmup:
                times.append(t)
                cpu.append(c)
    ratios = [b / f for b, f in zip(t_baq, t_fp32, strict=True)]
    cpu_ratios = [b / f for b, f in zip(c_baq, c_fp32, strict=True)]
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
        "ratio_of_mins": min(t_baq) / min(t_fp32),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "fp32_times_s": t_fp32,
        "baq_times_s": t_baq,
        "cpu_ratio_median": statistics.median(cpu_ratios),
        "cpu_ratio_min": min(cpu_ratios),
        "cpu_ratio_max": max(cpu_ratios),
    }


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _accounted_bytes(session: TrainingSession, data: Batch) -> dict[str, int]:
    """Bytes autograd keeps for backward (distinct storages, parameters excluded) in one step,
    plus parameters, gradients and optimizer state after it: deterministic, unlike RSS."""
    params = {p.untyped_storage().data_ptr() for p in session.model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            saved[st.data_ptr()] = st.nbytes()
        return t

    session.optimizer.zero_grad(set_to_none=False)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        session.step(data)
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    p = list(session.model.parameters())
    state = [
        v for st in session.optimizer.state.values() for v in st.values() if torch.is_tensor(v)
    ]
    return {
        "saved_for_backward": sum(saved.values()),
        "params": nbytes(p),
        "grads": nbytes(p),
        "optimizer_state": nbytes(state),
    }


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
    acc = _accounted_bytes(session, data)
    return {
        "kind": kind,
        "base_bytes": base,
        "peak_bytes": peak,
        "step_bytes": peak - base,
        "accounted": acc,
        "accounted_bytes": sum(acc.values()),
    }


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
        "accounted_ratio": out["baq"]["accounted_bytes"] / out["fp32"]["accounted_bytes"],
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
        f"{res['ratio_of_medians']:.3f}; ratio of mins {res['ratio_of_mins']:.3f}  "
        "[target <= 1.15]"
    )
    print(
        f"FP32 step min {min(res['fp32_times_s']) * 1e3:.1f} ms, "
        f"BAQ step min {min(res['baq_times_s']) * 1e3:.1f} ms"
    )
    if not a.no_memory:
        mem = bench_baq_memory(a.image_size, a.batch, 2, a.device)
        fa, ba = mem["fp32"]["accounted"], mem["baq"]["accounted"]
        print(
            f"memory (RSS, subprocesses): step bytes FP32 {mem['fp32']['step_bytes'] / 2**20:.0f} "
            f"MiB, BAQ {mem['baq']['step_bytes'] / 2**20:.0f} MiB, ratio "
            f"{mem['step_ratio']:.3f}; total peak RSS ratio {mem['peak_ratio']:.3f}"
        )
        print(
            f"memory (accounted): saved for backward FP32 {fa['saved_for_backward'] / 2**20:.0f} "
            f"MiB, BAQ {ba['saved_for_backward'] / 2**20:.0f} MiB; with params, grads and AdamW "
            f"state FP32 {mem['fp32']['accounted_bytes'] / 2**20:.0f} MiB, BAQ "
            f"{mem['baq']['accounted_bytes'] / 2**20:.0f} MiB, ratio "
            f"{mem['accounted_ratio']:.3f}  [target <= 1.2]"
        )


if __name__ == "__main__":
    main()
