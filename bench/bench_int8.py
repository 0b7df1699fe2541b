"""Integer activations in ONNX Runtime: latency of int8 files against FP32 files, and their sizes.

Every latency is one ONNX Runtime session per file, one intra-op thread, no spinning, all sessions
timed in interleaved rounds (A, B, C, A, B, C, ...) so that load on a shared machine hits each file
alike; each figure is the median over rounds of a round's median, with [min, max] over rounds.
Models are randomly initialised (speed and size do not depend on the weights).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]
import timm
import torch
from fq_quant import (
    BitAssignment,
    ScopeLayout,
    export_onnx,
    export_packed,
    ort_session,
    quantize_model,
)


def build(name: str, size: int) -> torch.nn.Module:
    """A timm model with 10 classes at ``size`` px (ViTs built at that size), eval mode."""
    kw: dict[str, Any] = {"img_size": size} if name.startswith(("deit", "vit")) else {}
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=10, **kw).eval()


def calibration(size: int, n: int = 2, batch: int = 8) -> list[tuple[torch.Tensor, ...]]:
    """``n`` (image, label, group) batches of uniform [0, 1) noise, two groups."""
    g = torch.Generator().manual_seed(0)
    return [
        (
            torch.rand(batch, 3, size, size, generator=g),
            torch.zeros(batch, dtype=torch.long),
            torch.arange(batch) % 2,
        )
        for _ in range(n)
    ]


def session(path: Path, *, optimized: bool = True, exact: bool = False) -> Any:
    """One-thread CPU session, no spinning; ``exact``: the toolkit's weight-only session."""
    config = {"session.intra_op.allow_spinning": "0"}
    if exact:
        return ort_session(path, threads=1, config=config)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_all(
    name: str, size: int, out: Path, *, int8: bool = True, torchscript: bool = False
) -> dict[str, Path]:
    """FP32 (toolkit), U4 weight-only, int8 activations (U4 codes in int8), packed U4; and
    optionally FP32 from ``torch.onnx.export(dynamo=False)``. Returns ``{kind: path}``."""
    out.mkdir(parents=True, exist_ok=True)
    model = build(name, size)
    x = torch.rand(1, 3, size, size)
    files = {"fp32": export_onnx(model, x, out / f"{name}-{size}-fp32.onnx", allow_float=True)}
    if torchscript:
        ts = out / f"{name}-{size}-fp32-torchscript.onnx"
        torch.onnx.export(
            model,
            (x,),
            str(ts),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
        )
        files["fp32_torchscript"] = ts
    quantize_model(model, BitAssignment.uniform(ScopeLayout.from_model(model, "channel"), 4))
    files["u4_weight_only"] = export_onnx(model, x, out / f"{name}-{size}-u4.onnx")
    files["packed_u4"] = export_packed(model, out / f"{name}-{size}-u4.safetensors")
    if int8:
        files["int8"] = export_onnx(
            model,
            x,
            out / f"{name}-{size}-u4-int8.onnx",
            activations="int8",
            calibration=calibration(size),
        )
    return files


def interleaved(
    runs: Mapping[str, Callable[[], Any]], *, rounds: int, reps: int, warmup: int = 2
) -> dict[str, dict[str, float]]:
    """Per key: median, min and max over rounds of the round's median seconds per call."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    per: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for key, fn in runs.items():
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            per[key].append(statistics.median(times))
    return {
        k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v)}
        for k, v in per.items()
    }


def latency(
    files: Mapping[str, Path],
    size: int,
    batch: int,
    *,
    rounds: int,
    reps: int,
    exact_weight_only: bool = True,
) -> dict[str, dict[str, float]]:
    """Interleaved latency of each ONNX file at ``batch`` (the packed file is skipped)."""
    x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
    runs = {}
    for kind, path in files.items():
        if path.suffix != ".onnx":
            continue
        sess = session(path, exact=exact_weight_only and kind == "u4_weight_only")
        runs[kind] = lambda s=sess: s.run(None, {"input": x})
    return interleaved(runs, rounds=rounds, reps=reps)


def sizes(files: Mapping[str, Path]) -> dict[str, int]:
    """Bytes of each file."""
    return {k: os.path.getsize(p) for k, p in files.items()}
