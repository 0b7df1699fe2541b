"""Benchmark: one QAT training step (fixed mixed per-channel bits) vs the same step in FP32.

timm ``resnet18`` (``num_classes=10``, random init), ``image_size`` px, batch ``batch``: forward,
cross-entropy, backward, AdamW step. The FP32 model and its ``quantize_model`` copy (per-channel
bits drawn uniformly from 2..8, seeded) are stepped alternately in one process (the order flips
every pair), so machine noise hits both alike. Reported: the median of the per-pair time ratios
QAT / FP32 with its quartiles, and each variant's median step time.

Run ``uv run python bench/bench_quant.py`` (``--help`` for options); import ``bench_qat_step``
for a larger suite. Target: ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F


def _models(seed: int, device: str) -> tuple[torch.nn.Module, torch.nn.Module, float]:
    import timm
    from fq_quant import BitAssignment, Granularity, ScopeLayout, quantize_model

    torch.manual_seed(seed)
    fp32 = timm.create_model("resnet18", pretrained=False, num_classes=10)
    qat = copy.deepcopy(fp32)
    layout = ScopeLayout.from_model(qat, Granularity.CHANNEL)
    gen = torch.Generator().manual_seed(seed)
    bits = {n: torch.randint(2, 9, s.scope_shape, generator=gen) for n, s in layout.layers.items()}
    assignment = BitAssignment(Granularity.CHANNEL, bits)
    quantize_model(qat, assignment)
    return fp32.to(device).train(), qat.to(device).train(), assignment.avg_bits(layout)


def bench_qat_step(
    image_size: int = 64,
    batch: int = 64,
    steps: int = 10,
    *,
    warmup: int = 2,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Time ``steps`` interleaved (FP32, QAT) training-step pairs after ``warmup`` pairs.

    Returns a dict: ``ratio`` (median of per-pair QAT/FP32 step-time ratios), ``ratio_p25``,
    ``ratio_p75``, ``ratio_min``, ``ratio_max``, ``fp32_ms`` / ``qat_ms`` (median step, ms),
    ``fp32_ms_iqr`` / ``qat_ms_iqr``, ``avg_bits`` of the assignment, and the settings;
    ``cpu_ratio`` (``_min``, ``_max``): the same pairs timed by the process's CPU time
    (``time.process_time``), which leaves out the time other processes hold the cores (a
    diagnostic on a shared machine; meaningful on ``cpu`` only).
    """
    fp32, qat, avg_bits = _models(seed, device)
    opts = {
        "fp32": torch.optim.AdamW(fp32.parameters(), lr=1e-4, weight_decay=0.01),
        "qat": torch.optim.AdamW(qat.parameters(), lr=1e-4, weight_decay=0.01),
    }
    models = {"fp32": fp32, "qat": qat}
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, image_size, image_size, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def step(kind: str) -> tuple[float, float]:
        """(wall seconds, process CPU seconds)"""
        model, opt = models[kind], opts[kind]
        sync()
        c0, t0 = time.process_time(), time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sync()
        return time.perf_counter() - t0, time.process_time() - c0

    times: dict[str, list[float]] = {"fp32": [], "qat": []}
    ratios, cpu_ratios = [], []
    for i in range(warmup + steps):
        order = ("fp32", "qat") if i % 2 == 0 else ("qat", "fp32")
        pair = {kind: step(kind) for kind in order}
        if i >= warmup:
            for kind, (t, _) in pair.items():
                times[kind].append(t)
            ratios.append(pair["qat"][0] / pair["fp32"][0])
            cpu_ratios.append(pair["qat"][1] / pair["fp32"][1])

    def quartiles(v: list[float]) -> tuple[float, float, float]:
        if len(v) < 2:
            return v[0], v[0], v[0]
        q1, q2, q3 = statistics.quantiles(v, n=4, method="inclusive")
        return q1, q2, q3

    r1, r2, r3 = quartiles(ratios)
    f1, f2, f3 = quartiles(times["fp32"])
    q1, q2, q3 = quartiles(times["qat"])
    return {
        "ratio": r2,
        "ratio_p25": r1,
        "ratio_p75": r3,
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "ratio_of_medians": q2 / f2,
        "cpu_ratio": statistics.median(cpu_ratios),
        "cpu_ratio_min": min(cpu_ratios),
        "cpu_ratio_max": max(cpu_ratios),
        "fp32_ms": 1e3 * f2,
        "qat_ms": 1e3 * q2,
        "fp32_ms_iqr": 1e3 * (f3 - f1),
        "qat_ms_iqr": 1e3 * (q3 - q1),
        "avg_bits": avg_bits,
        "image_size": image_size,
        "batch": batch,
        "steps": steps,
        "warmup": warmup,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or platform.platform()}",
    }


def bench_attention(
    image_size: int = 64,
    batch: int = 64,
    steps: int = 10,
    *,
    warmup: int = 2,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """``unpack_attention``'s cost: a torchvision ViT with torch's ``nn.MultiheadAttention`` vs
    the same weights with ``fq_quant.LinearMultiheadAttention``, both float, interleaved.

    ViT: 8 px patches (``(image_size / 8)^2 + 1`` tokens), 4 layers, width 192, 6 heads, MLP 768,
    10 classes. Returns ``train_ratio`` (median per-pair ratio of training steps: forward, loss,
    backward, AdamW), ``eval_ratio`` (forward under ``no_grad`` in eval, where torch takes its
    fused attention kernel), their ``[min, max]``, and the median times in ms.
    """
    import torchvision
    from fq_quant import unpack_attention

    torch.manual_seed(seed)
    packed = torchvision.models.VisionTransformer(
        image_size=image_size, patch_size=8, num_layers=4, num_heads=6, hidden_dim=192,
        mlp_dim=768, num_classes=10,
    )  # fmt: skip
    models = {"packed": packed.to(device), "unpacked": unpack_attention(copy.deepcopy(packed))}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, image_size, image_size, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)

    def timed(fn: Any) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def train(kind: str) -> None:
        model, opt = models[kind].train(), opts[kind]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def infer(kind: str) -> None:
        with torch.no_grad():
            models[kind].eval()(x)

    out: dict[str, Any] = {"image_size": image_size, "batch": batch, "steps": steps,
                           "tokens": (image_size // 8) ** 2 + 1, "device": device}  # fmt: skip
    for name, fn in (("train", train), ("eval", infer)):
        ratios: list[float] = []
        times: dict[str, list[float]] = {"packed": [], "unpacked": []}
        for i in range(warmup + steps):
            order = ("packed", "unpacked") if i % 2 == 0 else ("unpacked", "packed")
            pair = {k: timed(lambda k=k, fn=fn: fn(k)) for k in order}
            if i >= warmup:
                ratios.append(pair["unpacked"] / pair["packed"])
                for k, t in pair.items():
                    times[k].append(t)
        out |= {
            f"{name}_ratio": statistics.median(ratios),
            f"{name}_ratio_min": min(ratios),
            f"{name}_ratio_max": max(ratios),
            f"{name}_packed_ms": 1e3 * statistics.median(times["packed"]),
            f"{name}_unpacked_ms": 1e3 * statistics.median(times["unpacked"]),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    p.add_argument("--json", action="store_true", help="print the result dict as JSON")
    a = p.parse_args()
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    r = bench_qat_step(a.image_size, a.batch, a.steps, warmup=a.warmup, device=a.device)
    if a.json:
        print(json.dumps(r, indent=2))
        return
    print(
        f"resnet18 {a.image_size}px batch {a.batch} on {a.device} ({r['torch_threads']} threads), "
        f"avg {r['avg_bits']:.2f} bits/weight per channel\n"
        f"FP32 step {r['fp32_ms']:.1f} ms (IQR {r['fp32_ms_iqr']:.1f}), "
        f"QAT step {r['qat_ms']:.1f} ms (IQR {r['qat_ms_iqr']:.1f})\n"
        f"QAT/FP32 = {r['ratio']:.3f} (median of {a.steps} pairs; quartiles {r['ratio_p25']:.3f}"
        f"..{r['ratio_p75']:.3f}; min {r['ratio_min']:.3f}, max {r['ratio_max']:.3f}); target <= 1.10"
    )


if __name__ == "__main__":
    main()
