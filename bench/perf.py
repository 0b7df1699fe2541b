"""Performance suite: every speed and size ratio of the toolkit, measured side by side in one process.

    uv run python bench/perf.py                  # CPU: resnet18 64 px, batch 64
    uv run python bench/perf.py --device cuda    # GPU: 224 px, batch 128 by default
    uv run python bench/perf.py --only onnx-int8 # ORT int8 activations / ORT FP32 only

Prints a table of ratios (medians over repeated steps after warm-up, spread in brackets) and writes it
to ``bench/results/perf-<device>.md``. Each figure comes from the benchmark module of the package it
measures (``bench/bench_*.py``, importable on their own); this script only runs them and compares
against the targets; the table, its gates and the exit status are ``bench/perf_table.py``'s. Timings are wall-clock and noisy on a shared CPU: read the ratios, which are
taken from interleaved steps in one process, not the absolute times.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from perf_deploy import fig_containers, fig_onnx, fig_onnx_int8, fig_packed
from perf_table import (
    Figure,
    Settings,
    absolute_gate,
    bench_module,
    exit_status,
    row_markdown,
    spread,
    to_markdown,
)

HERE = Path(__file__).resolve().parent


def cpu_time_note(s: Settings, median: float, lo: float, hi: float) -> str:
    """On CPU, the same step pairs' ratio by process CPU time (not gated; see the table header)."""
    return f"; CPU time {median:.3f} {spread(lo, hi)}" if s.device == "cpu" else ""


def fig_qat(s: Settings, cache: dict[str, Any]) -> list[Figure]:
    r = bench_module("bench_quant").bench_qat_step(
        image_size=s.image_size, batch=s.batch, steps=s.steps, device=s.device
    )
    cache["fp32_step_s"] = r["fp32_ms"] / 1e3
    target = 1.05
    return [
        Figure(
            figure="FQ-QAT step / FP32 step",
            setting=f"timm resnet18, {s.image_size} px, batch {s.batch}, mixed per-channel bits 2..8 "
            f"(avg {r['avg_bits']:.2f}), {s.device}",
            value=f"{r['ratio']:.3f} {spread(r['ratio_min'], r['ratio_max'])} "
            f"({r['qat_ms']:.0f} / {r['fp32_ms']:.0f} ms)"
            + cpu_time_note(s, r["cpu_ratio"], r["cpu_ratio_min"], r["cpu_ratio_max"]),
            target=f"<= {target:.2f}",
            ok=r["ratio"] <= target,
        )
    ]


def fig_baq(s: Settings, cache: dict[str, Any]) -> list[Figure]:
    mod = bench_module("bench_baq")
    r = mod.bench_baq_step(image_size=s.image_size, batch=s.batch, steps=s.steps, device=s.device)
    cache.setdefault("fp32_step_s", r["fp32_median_s"])
    target = 1.10
    out = [
        Figure(
            figure="BAQ step / FP32 step",
            setting=f"same, per-channel learnable bits, {s.device}",
            value=f"{r['ratio_median']:.3f} {spread(r['ratio_min'], r['ratio_max'])} "
            f"({r['baq_median_s'] * 1e3:.0f} / {r['fp32_median_s'] * 1e3:.0f} ms)"
            + cpu_time_note(s, r["cpu_ratio_median"], r["cpu_ratio_min"], r["cpu_ratio_max"]),
            target=f"<= {target:.2f}",
            ok=r["ratio_median"] <= target,
        )
    ]
    m = mod.bench_baq_memory(image_size=s.image_size, batch=s.batch, device=s.device)
    what = "peak allocated" if s.device != "cpu" else "peak RSS growth during training"
    out.append(
        Figure(
            figure="peak memory, BAQ / FP32 training",
            setting=f"resnet18 {s.image_size} px batch {s.batch}, {what}, fresh process each",
            value=f"{m['step_ratio']:.3f} ({m['baq']['step_bytes'] / 2**20:.0f} / "
            f"{m['fp32']['step_bytes'] / 2**20:.0f} MiB; whole-process peak ratio {m['peak_ratio']:.3f})",
            target="<= 1.20",
            ok=m["step_ratio"] <= 1.20,
            gate="ratio (separate processes)",
        )
    )
    return out


def fig_calibration(s: Settings, cache: dict[str, Any]) -> list[Figure]:
    r = bench_module("bench_calibration").bench_calibration(
        groups=(2, 3, 6),
        image_size=s.image_size,
        batch=s.batch,
        device=s.device,
    )
    out = []
    for row in r["rows"]:
        # Only the strategy calibrate() uses by default is held to the target; the others are the
        # alternatives the issue asked to measure side by side.
        default = row["strategy"] == "fused"
        role = "default" if default else "comparison"
        out.append(
            Figure(
                figure=f"calibration per batch / plain fwd+bwd, {row['groups']} groups",
                setting=f"resnet18 {s.image_size} px batch {s.batch}, grape, "
                f"{row['strategy']} per-group grads ({role})",
                value=f"{row['ratio']:.2f} ({row['calibrate_s'] * 1e3:.0f} / "
                f"{row['plain_s'] * 1e3:.0f} ms)",
                target=f"<= {row['target_ratio']:.1f}" if default else "-",
                ok=row["ratio"] <= row["target_ratio"] if default else None,
                gate="ratio" if default else "-",
            )
        )
    return out


def fig_allocation(s: Settings, cache: dict[str, Any]) -> list[Figure]:
    r = bench_module("bench_alloc").bench_allocation()
    limit = {"channel": 0.005, "param": 2.0}
    out = []
    for row in r["rows"]:
        lim = limit[row["granularity"]]
        ok, gate = absolute_gate(row["min_s"], lim)
        out.append(
            Figure(
                figure=f"allocation time, per-{row['granularity']}, {row['call']}",
                setting=f"resnet18, {row['scopes']:,} scopes, palette 2/4/8",
                value=f"{row['median_s'] * 1e3:.2f} ms (min {row['min_s'] * 1e3:.2f})",
                target=f"<= {lim * 1e3:g} ms",
                ok=ok,
                gate=gate,
            )
        )
    return out


def fig_loading(s: Settings, cache: dict[str, Any]) -> list[Figure]:
    from fq_data import measure_loading_time

    size, batch = s.image_size, s.batch  # the same batch as the step it is compared with
    t = measure_loading_time(image_size=size, batch_size=batch)
    step = cache.get("fp32_step_s")
    if step is None:
        return [
            Figure(
                figure="data loading share of a training step",
                setting="(needs a step time)",
                value=f"{t.seconds_per_batch * 1e3:.1f} ms per batch",
                target="<= 10%",
                ok=None,
                gate="-",
            )
        ]
    share = t.share_of(step)
    return [
        Figure(
            figure="data loading share of a training step",
            setting=f"semi-synthetic default, {size} px batch {batch}, augmented, vs the FP32 step",
            value=f"{share * 100:.1f}% ({t.seconds_per_batch * 1e3:.1f} ms per batch; one-off decode "
            f"{t.decode_seconds:.1f} s)",
            target="<= 10%",
            ok=share <= 0.10,
            gate="ratio (separate runs)",
        )
    ]


def fig_group_report(s: Settings, cache: dict[str, Any]) -> list[Figure]:
    r = bench_module("perf_fairmetrics").bench_group_report()
    lo, hi = min(r["labels_times_s"]), max(r["labels_times_s"])
    ok, gate = absolute_gate(max(lo, min(r["logits_times_s"])), 1.0)
    return [
        Figure(
            figure="group_report",
            setting="1e6 samples, 114 classes, 6 groups (labels; logits [1e6, 114])",
            value=f"{r['labels_median_s'] * 1e3:.0f} ms [{lo * 1e3:.0f}, {hi * 1e3:.0f}]; logits "
            f"{r['logits_median_s'] * 1e3:.0f} ms",
            target="<= 1 s",
            ok=ok,
            gate=gate,
        )
    ]


def fig_attention(s: Settings, cache: dict[str, Any]) -> list[Figure]:
    r = bench_module("bench_quant").bench_attention(s.image_size, s.batch, s.steps, device=s.device)
    setting = (
        f"torchvision ViT (4 layers, width 192, 6 heads), {s.image_size} px = {r['tokens']} "
        f"tokens, batch {s.batch}, float, {s.device}"
    )
    return [
        Figure(
            figure=f"unpack_attention {what} / nn.MultiheadAttention {what}",
            setting=setting if what == "train step" else "same, eval forward (torch's fused path)",
            value=f"{r[f'{k}_ratio']:.3f} {spread(r[f'{k}_ratio_min'], r[f'{k}_ratio_max'])} "
            f"({r[f'{k}_unpacked_ms']:.0f} / {r[f'{k}_packed_ms']:.0f} ms)",
            target="<= 1.10",
            ok=r[f"{k}_ratio"] <= 1.10,
        )
        for k, what in (("train", "train step"), ("eval", "forward"))
    ]


FIGURES: dict[str, Callable[[Settings, dict[str, Any]], list[Figure]]] = {
    "qat": fig_qat,
    "baq": fig_baq,
    "calibration": fig_calibration,
    "allocation": fig_allocation,
    "loading": fig_loading,
    "group_report": fig_group_report,
    "packed": fig_packed,
    "containers": fig_containers,
    "attention": fig_attention,
    "onnx": fig_onnx,
    "onnx-int8": fig_onnx_int8,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument(
        "--image-size", type=int, default=None, help="px (default: 64 on cpu, 224 on cuda)"
    )
    p.add_argument("--batch", type=int, default=None, help="default: 64 on cpu, 128 on cuda")
    p.add_argument(
        "--steps", type=int, default=10, help="timed steps per measurement (default: 10)"
    )
    p.add_argument(
        "--only", default=",".join(FIGURES), help=f"comma-separated subset of: {', '.join(FIGURES)}"
    )
    p.add_argument(
        "--deploy-size", type=int, default=224, help="px of the ONNX latency rows (default: 224)"
    )
    p.add_argument("--out", type=Path, default=HERE / "results", help="folder of perf-<device>.md")
    a = p.parse_args(argv)
    names = [n.strip() for n in a.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        p.error(f"--only: unknown figure(s) {unknown}; choose from {', '.join(FIGURES)}")
    if a.device not in ("cpu", "cuda") and not a.device.startswith("cuda:"):
        p.error(f"--device must be cpu or cuda[:N]; got {a.device!r}")
    gpu = a.device != "cpu"
    s = Settings(
        device=a.device,
        image_size=a.image_size or (224 if gpu else 64),
        batch=a.batch or (128 if gpu else 64),
        steps=a.steps,
        deploy_size=a.deploy_size,
    )
    rows: list[Figure] = []
    cache: dict[str, Any] = {}
    for name in names:
        print(f"[perf] {name} ...", file=sys.stderr, flush=True)
        new = FIGURES[name](s, cache)
        rows.extend(new)
        for r in rows[-len(new) :] if new else []:
            print(row_markdown(r), flush=True)
    import torch
    from fq_data import atomic_write_bytes

    torch_info = f"torch {torch.__version__} ({torch.get_num_threads()} threads)" + (
        f", {torch.cuda.get_device_name()}" if gpu else ""
    )
    text = to_markdown(rows, s, torch_info=torch_info)
    device_tag = "cuda" if gpu else "cpu"
    atomic_write_bytes(a.out / f"perf-{device_tag}.md", text.encode())
    print(text)
    return exit_status(rows)


if __name__ == "__main__":
    raise SystemExit(main())
