"""Benchmark: what ONNX export with integer weights buys, in file size and in CPU latency.

timm ``resnet18`` (``num_classes=10``, random init, seeded), per-channel bits. Sizes: the ONNX file
of :func:`fq_quant.export_onnx` against the packed file of :func:`fq_quant.export_packed` and a
plain FP32 ONNX export of the same model, at uniform 4, uniform 8 and mixed 2..8 bits. Latency at
``image_size`` px, batch 1 and ``batch``: ONNX Runtime on the quantized file (``ort_session``,
exact float32 compute) against torch eager FP32 and ONNX Runtime on the FP32 file, run
interleaved (the order rotates every step) so machine noise hits all three alike; reported as the
median of the per-step ratios with their min and max, and each variant's median time.

Run ``uv run python bench/bench_onnx.py`` (``--help`` for options); import ``bench_onnx_sizes``
and ``bench_onnx_latency`` for a larger suite. No target: the figures say what integer weights
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
    from fq_quant import BitAssignment, ScopeLayout

    layout = ScopeLayout.from_model(model, "channel")
    if label in ("U4", "U8"):
        return BitAssignment.uniform(layout, int(label[1:]))
    gen = torch.Generator().manual_seed(seed)
    bits = {n: torch.randint(2, 9, s.scope_shape, generator=gen) for n, s in layout.layers.items()}
    return BitAssignment("channel", bits)


def bench_onnx_sizes(
    labels: tuple[str, ...] = ("U4", "U8", "mixed 2..8"), *, seed: int = 0
) -> dict[str, dict[str, int]]:
    """Bytes of the quantized ONNX, packed and FP32 ONNX files of resnet18, per assignment label."""
    from fq_quant import export_onnx, export_packed, quantize_model

    out: dict[str, dict[str, int]] = {}
    x = torch.randn(1, 3, 64, 64)
    with tempfile.TemporaryDirectory() as d:
        fp32 = export_onnx(_resnet18(seed), x, Path(d) / "fp32.onnx", allow_float=True)
        fp32_bytes = fp32.stat().st_size
        for label in labels:
            model = _resnet18(seed)
            quantize_model(model, _assignment(model, label, seed))
            onnx_path = export_onnx(model, x, Path(d) / "q.onnx")
            packed = export_packed(model, Path(d) / "q.safetensors")
            out[label] = {
                "onnx": onnx_path.stat().st_size,
                "packed": packed.stat().st_size,
                "fp32_onnx": fp32_bytes,
            }
    return out


def bench_onnx_latency(
    image_size: int = 224,
    batches: tuple[int, ...] = (1, 32),
    steps: int = 10,
    *,
    label: str = "U4",
    seed: int = 0,
) -> dict[int, dict[str, float]]:
    """Per batch size: median ms of each variant and median [min, max] per-step ratios.

    Keys per batch: ``ort_q_ms``, ``torch_ms``, ``ort_fp32_ms``, ``ort_q_default_ms``, ``vs_torch``
    (ORT quantized / torch eager FP32), ``vs_ort_fp32`` (ORT quantized / ORT FP32),
    ``default_vs_ort_fp32`` (the quantized file under ONNX Runtime's default session options,
    which dequantize on every run / ORT FP32), each ratio with ``_min``/``_max``.
    """
    from fq_quant import export_onnx, ort_session, quantize_model

    fp32 = _resnet18(seed)
    model = _resnet18(seed)
    quantize_model(model, _assignment(model, label, seed))
    x0 = torch.randn(1, 3, image_size, image_size)
    with tempfile.TemporaryDirectory() as d:
        q_path = export_onnx(model, x0, Path(d) / "q.onnx")
        q_sess, q_default = ort_session(q_path), ort_session(q_path, exact=False)
        f_sess = ort_session(export_onnx(fp32, x0, Path(d) / "f.onnx", allow_float=True))
    out: dict[int, dict[str, float]] = {}
    for batch in batches:
        x = torch.randn(batch, 3, image_size, image_size)
        xn = x.numpy()
        runs = {
            "ort_q": lambda xn=xn: q_sess.run(None, {"input": xn}),
            "torch": lambda x=x: fp32(x),
            "ort_fp32": lambda xn=xn: f_sess.run(None, {"input": xn}),
            "ort_q_default": lambda xn=xn: q_default.run(None, {"input": xn}),
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
        out[batch] = r
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=224, help="px of the latency runs")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    a = p.parse_args()
    sizes = bench_onnx_sizes()
    latency = bench_onnx_latency(a.image_size, steps=a.steps)
    print(json.dumps({"sizes": sizes, "latency": latency}, indent=2))


if __name__ == "__main__":
    main()
