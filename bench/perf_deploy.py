"""The performance suite's deployment rows: packed and shipped sizes, ONNX Runtime latency.

Rows of ``bench/perf.py`` (``--only packed,containers,onnx,onnx-int8``); the measurements are the
``bench/bench_onnx.py`` and ``bench/bench_int8.py`` modules'.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from perf_table import Figure, Settings, bench_module, spread


def fig_packed(s: Settings, cache: dict[str, Any]) -> list[Figure]:
    import timm
    import torch
    from fq_quant import (
        BitAssignment,
        ScopeLayout,
        export_packed,
        packed_size,
        quantize_model,
    )

    out = []
    for label, make in (
        ("U4", lambda lay: BitAssignment.uniform(lay, 4)),
        (
            "mixed 2..8",
            lambda lay: BitAssignment(
                lay.granularity,
                {
                    n: torch.randint(
                        2, 9, sc.scope_shape, generator=torch.Generator().manual_seed(i)
                    )
                    for i, (n, sc) in enumerate(lay.layers.items())
                },
            ),
        ),
    ):
        model = timm.create_model("resnet18", pretrained=False, num_classes=10)
        assignment = make(ScopeLayout.from_model(model, "channel"))
        quantize_model(model, assignment)
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "m.safetensors"
            export_packed(model, path)
            size = path.stat().st_size
        pred = packed_size(model, assignment)
        out.append(
            Figure(
                figure=f"packed export size / packed_size, {label}",
                setting="timm resnet18, per-channel, safetensors",
                value=f"{size / pred:.4f} ({size / 2**20:.2f} / {pred / 2**20:.2f} MiB; FP32 "
                f"{sum(p.numel() for p in model.parameters()) * 4 / 2**20:.1f} MiB)",
                target="exactly 1",
                ok=size == pred,
                gate="exact",
            )
        )
    return out


def fig_containers(s: Settings, cache: dict[str, Any]) -> list[Figure]:
    import timm
    import torch
    from fq_alloc import allocate_to_budget
    from fq_quant import Granularity, ImportanceMap, ScopeLayout, container_bytes, packed_size

    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    layout = ScopeLayout.from_model(model, Granularity.CHANNEL)
    g = torch.Generator().manual_seed(0)
    imap = ImportanceMap(
        Granularity.CHANNEL,
        {n: torch.rand(sc.scope_shape, generator=g) for n, sc in layout.layers.items()},
    )
    out = []
    for cost in ("packed", "container"):
        a = allocate_to_budget(imap, (2, 3, 4, 5, 6, 7, 8), 4.0, layout=layout, cost=cost)
        shipped, packed = container_bytes(model, a), packed_size(model, a)
        out.append(
            Figure(
                figure=f"shipped (container) size / packed size, 4.00 bits, cost={cost!r}",
                setting="timm resnet18, per-channel bits 2..8, random importance, "
                "allocate_to_budget; INT4/INT8 per layer as export_onnx stores them",
                value=f"{shipped / packed:.3f} ({shipped / 2**20:.2f} / {packed / 2**20:.2f} MiB)",
                target="-",
                ok=None,
                gate="-",
            )
        )
    return out


def fig_onnx(s: Settings, cache: dict[str, Any]) -> list[Figure]:
    size = s.deploy_size
    res = bench_module("bench_onnx").bench_onnx(size, (1, 32), s.steps)
    out = []
    for label, r in res["sizes"].items():
        mib = {k: v / 2**20 for k, v in r.items()}
        out.append(
            Figure(
                figure=f"ONNX file size / packed / FP32 ONNX, {label}",
                setting="timm resnet18, per-channel, export_onnx (INT4/INT8 + DequantizeLinear)",
                value=f"{r['onnx'] / r['packed']:.3f} of packed, {r['onnx'] / r['fp32_onnx']:.3f} of "
                f"FP32 ONNX ({mib['onnx']:.2f} / {mib['packed']:.2f} / {mib['fp32_onnx']:.2f} MiB)",
                target="-",
                ok=None,
                gate="-",
            )
        )
    for batch, r in res["latency"].items():
        out.append(
            Figure(
                figure=f"ONNX Runtime U4 latency / torch eager FP32 (/ ORT FP32), batch {batch}",
                setting=f"timm resnet18, {size} px, batch {batch}, CPUExecutionProvider, exact "
                "(float32 activations), 1 thread each, interleaved",
                value=f"{r['vs_torch']:.3f} {spread(r['vs_torch_min'], r['vs_torch_max'])} "
                f"(/ ORT FP32 {r['vs_ort_fp32']:.3f} {spread(r['vs_ort_fp32_min'], r['vs_ort_fp32_max'])}; "
                f"{r['ort_q_ms']:.1f} / {r['torch_ms']:.1f} / {r['ort_fp32_ms']:.1f} ms; ORT default "
                f"options {r['default_vs_ort_fp32']:.3f} of ORT FP32)",
                target="-",
                ok=None,
                gate="-",
            )
        )
    return out


#: Models of the integer-activation rows: a convolution net, a transformer (MatMul path), a
#: depthwise/squeeze-excite net. A model the exporter or runtime cannot take gets an "unsupported" row.
INT8_MODELS = ("resnet18", "deit_tiny_patch16_224", "mobilenetv3_large_100")


def _ms(r: dict[str, float]) -> str:
    return f"{r['median_s'] * 1e3:.1f} ms [{r['min_s'] * 1e3:.1f}, {r['max_s'] * 1e3:.1f}]"


def fig_onnx_int8(s: Settings, cache: dict[str, Any]) -> list[Figure]:
    """ORT int8-activation latency / ORT FP32 latency (same exporter), interleaved, one thread each.

    Export and timing are ``bench/bench_int8.py``'s (as ``bench/perf_int8.py`` uses them); a round
    times each file ``reps`` times, the figure is the median over ``s.steps`` rounds of the rounds'
    medians, with [min, max] over rounds of each side.
    """
    b = bench_module("bench_int8")
    size, out = s.deploy_size, []
    with tempfile.TemporaryDirectory(prefix="fq_perf_int8.") as tmp:
        for name in INT8_MODELS:
            try:
                files = b.export_all(name, size, Path(tmp) / name)
            except Exception as exc:  # a model the exporter or the runtime cannot take: say so
                out.append(
                    Figure(
                        figure=f"ONNX Runtime int8 activations / ORT FP32, {name}",
                        setting=f"timm {name}, {size} px",
                        value=f"unsupported: {str(exc).splitlines()[0][:160]}",
                        target="-",
                        ok=None,
                        gate="-",
                    )
                )
                continue
            for batch in (1, 32):
                kinds = {k: files[k] for k in ("fp32", "int8")}
                r = b.latency(
                    kinds, size, batch, rounds=max(s.steps, 1), reps=3 if batch == 1 else 1
                )
                ratio = r["int8"]["median_s"] / r["fp32"]["median_s"]
                gated = (name, batch) == ("resnet18", 1)
                out.append(
                    Figure(
                        figure=f"ONNX Runtime int8 activations / ORT FP32, {name}, batch {batch}",
                        setting=f"timm {name}, {size} px, batch {batch}, U4 per-channel codes, "
                        "static int8 activations (min-max), CPUExecutionProvider, optimizations "
                        "on, 1 thread each, interleaved",
                        value=f"{ratio:.3f} (int8 {_ms(r['int8'])} / FP32 {_ms(r['fp32'])})",
                        target="<= 0.50" if gated else "-",
                        ok=ratio <= 0.5 if gated else None,
                        gate="ratio" if gated else "-",
                    )
                )
    return out
