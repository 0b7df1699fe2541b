"""Benchmark: what ONNX export with integer weights buys, in file size and in CPU latency.

timm ``resnet18`` (``num_classes=10``, random init, seeded), per-channel bits. Sizes: the ONNX file
of :func:`fq_quant.export_onnx` against the packed file of :func:`fq_quant.export_packed` and a
plain FP32 ONNX export of the same model, at uniform 4, uniform 8 and mixed 2..8 bits. Latency at
``image_size`` px, batch 1 and ``batch``: ONNX Runtime on the quantized file (``ort_session``,
exact float32 compute) against torch eager FP32 and ONNX Runtime on the FP32 file (every ONNX
Runtime session without thread spinning, so that it leaves the cores to the next run), run
interleaved (the order rotates every step) so machine noise hits all three alike; reported as the
median of the per-step ratios with their min and max, and each variant's median time.

Run ``uv run python bench/bench_onnx.py`` (``--help`` for options); import ``bench_onnx`` for a
larger suite. No target: the figures say what integer weights
buy on CPU today (size), not a speed-up (activations stay float32).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _resnet18(seed: int) -> torch.nn.Module:
    import timm

    torch.manual_seed(seed)
    return timm.create_model("resnet18", pretrained=False, num_classes=10).eval()


def _assignment(model: torch.nn.Module, label: str, seed: int) -> Any:
    from fq_quant import BitAssignment, Granularity, ScopeLayout

    layout = ScopeLayout.from_model(model, Granularity.CHANNEL)
    if label in ("U4", "U8"):
        return BitAssignment.uniform(layout, int(label[1:]))
    gen = torch.Generator().manual_seed(seed)
    bits = {n: torch.randint(2, 9, s.scope_shape, generator=gen) for n, s in layout.layers.items()}
    return BitAssignment(Granularity.CHANNEL, bits)


def bench_onnx(
    image_size: int = 224,
    batches: tuple[int, ...] = (1, 32),
    steps: int = 10,
    *,
    labels: tuple[str, ...] = ("U4", "U8", "mixed 2..8"),
    latency_label: str = "U4",
    threads: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """File sizes per assignment label and latency per batch size, from one export of each model.

    Returns ``{"sizes": {label: {"onnx", "packed", "fp32_onnx"} bytes}, "latency": {batch: r}}``
    where ``r`` holds the median ms of each variant (``ort_q_ms``, ``torch_ms``, ``ort_fp32_ms``,
    ``ort_q_default_ms``) and the median per-step ratios ``vs_torch`` (ORT quantized / torch eager
    FP32), ``vs_ort_fp32`` (ORT quantized / ORT FP32) and ``default_vs_ort_fp32`` (the quantized
    file under ONNX Runtime's default session options, which dequantize on every run / ORT
    FP32), each with ``_min``/``_max``. Torch and every ONNX Runtime session run on ``threads``
    threads (default 1: on a shared 2-core machine, multi-threaded runs measure the scheduler).
    """
    from fq_quant import export_onnx, export_packed, ort_session, quantize_model

    # ONNX Runtime's threads spin after each run by default, which would slow the torch run that
    # follows it in the interleaved loop: no spinning, for every session alike.
    quiet = {"session.intra_op.allow_spinning": "0"}
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)

    x0 = torch.randn(1, 3, image_size, image_size)
    fp32 = _resnet18(seed)
    sizes: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as d:
        f_path = export_onnx(fp32, x0, Path(d) / "fp32.onnx", allow_float=True)
        f_sess = ort_session(f_path, threads=threads, config=quiet)
        for label in labels:
            model = _resnet18(seed)
            quantize_model(model, _assignment(model, label, seed))
            q_path = export_onnx(model, x0, Path(d) / f"{label}.onnx")
            packed = export_packed(model, Path(d) / f"{label}.safetensors")
            sizes[label] = {
                "onnx": q_path.stat().st_size,
                "packed": packed.stat().st_size,
                "fp32_onnx": f_path.stat().st_size,
            }
            if label == latency_label:
                q_sess = ort_session(q_path, threads=threads, config=quiet)
                q_default = ort_session(q_path, exact=False, threads=threads, config=quiet)
    try:
        latency = {
            b: _latency(b, image_size, steps, fp32, q_sess, q_default, f_sess) for b in batches
        }
    finally:
        torch.set_num_threads(torch_threads)
    return {"sizes": sizes, "latency": latency}


def _latency(
    batch: int, image_size: int, steps: int, fp32: torch.nn.Module, q_sess, q_default, f_sess
) -> dict[str, float]:
    x = torch.randn(batch, 3, image_size, image_size)
    xn = x.numpy()
    runs = {
        "ort_q": lambda: q_sess.run(None, {"input": xn}),
        "torch": lambda: fp32(x),
        "ort_fp32": lambda: f_sess.run(None, {"input": xn}),
        "ort_q_default": lambda: q_default.run(None, {"input": xn}),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    with torch.no_grad():
        for k in names:  # warm-up
            runs[k]()
        for step in range(steps):
            for k in names[step % len(names) :] + names[: step % len(names)]:
                t = time.perf_counter()
                runs[k]()
                times[k].append(time.perf_counter() - t)
    r: dict[str, float] = {f"{k}_ms": 1e3 * statistics.median(v) for k, v in times.items()}
    for key, num, ref in (
        ("vs_torch", "ort_q", "torch"),
        ("vs_ort_fp32", "ort_q", "ort_fp32"),
        ("default_vs_ort_fp32", "ort_q_default", "ort_fp32"),
    ):
        ratios = [a / b for a, b in zip(times[num], times[ref], strict=True)]
        r[key], r[f"{key}_min"], r[f"{key}_max"] = (
            statistics.median(ratios),
            min(ratios),
            max(ratios),
        )
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=224, help="px of the latency runs")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    p.add_argument("--threads", type=int, default=1, help="threads of torch and ONNX Runtime")
    a = p.parse_args()
    print(json.dumps(bench_onnx(a.image_size, steps=a.steps, threads=a.threads), indent=2))


if __name__ == "__main__":
    main()
