"""Integer activations on CPU: ORT int8 / ORT FP32 latency, exporter comparison, file sizes.

    uv run python bench/perf_int8.py [--quick]

Writes ``bench/results/perf-cpu-onnx-int8.md``. One intra-op thread, interleaved rounds, medians
[min, max] over rounds (see ``bench/bench_int8.py``). Target: int8 / FP32 <= 0.5 at batch 1 for
resnet18 at 224 px.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import sys
import tempfile
import traceback
from pathlib import Path

from perf_table import bench_module

HERE = Path(__file__).resolve().parent


def _fmt(r: dict[str, float]) -> str:
    return f"{r['median_s'] * 1e3:.2f} ms [{r['min_s'] * 1e3:.2f}, {r['max_s'] * 1e3:.2f}]"


def _ratio(a: dict[str, float], b: dict[str, float]) -> str:
    return f"{a['median_s'] / b['median_s']:.3f}"


def main(argv: list[str] | None = None) -> int:
    """Run the rows; returns 0 (rows that fail are reported in the table, not raised)."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "perf-cpu-onnx-int8.md")
    args = p.parse_args(argv)
    b = bench_module("bench_int8")
    rounds = 3 if args.quick else 7
    lines = [
        "# ONNX Runtime on CPU: integer activations, exporters, sizes",
        "",
        f"{_dt.date.today()} on {platform.processor() or platform.machine()}, "
        f"onnxruntime {b.ort.__version__}, one intra-op thread, interleaved rounds ({rounds}); "
        "medians [min, max] over rounds. Random weights, U4 per channel. The machine is shared: "
        "read the ratios.",
        "",
        "## int8 activations / FP32 (same exporter, ORT optimizations on)",
        "",
        "| model | px | batch | FP32 | U4 weight-only (exact session) | int8 | int8 / FP32 | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    size_rows = []
    with tempfile.TemporaryDirectory(prefix="fq_perf_int8.") as tmp:
        for name in ("resnet18", "deit_tiny_patch16_224", "mobilenetv3_large_100"):
            try:
                files = b.export_all(name, 224, Path(tmp) / name, torchscript=name == "resnet18")
            except Exception as exc:  # a model the exporter or runtime cannot take: say so
                msg = str(exc).splitlines()[0][:160]
                lines.append(f"| {name} | 224 | - | unsupported: {msg} | | | | |")
                traceback.print_exc()
                continue
            size_rows.append((name, b.sizes(files)))
            for batch in (1, 32):
                reps = 10 if batch == 1 else 2
                kinds = {k: files[k] for k in ("fp32", "u4_weight_only", "int8")}
                r = b.latency(kinds, 224, batch, rounds=rounds, reps=reps)
                target = "<= 0.5" if (name, batch) == ("resnet18", 1) else ""
                ok = (
                    ""
                    if not target
                    else (
                        " met"
                        if r["int8"]["median_s"] / r["fp32"]["median_s"] <= 0.5
                        else " NOT met"
                    )
                )
                lines.append(
                    f"| {name} | 224 | {batch} | {_fmt(r['fp32'])} | {_fmt(r['u4_weight_only'])} | "
                    f"{_fmt(r['int8'])} | {_ratio(r['int8'], r['fp32'])} | {target}{ok} |"
                )
                print(lines[-1], flush=True)
        lines += [
            "",
            "## Exporters (resnet18, batch 1, ORT optimizations on)",
            "",
            "| px | toolkit FP32 | torch.onnx TorchScript FP32 | U4 weight-only (exact) | U4 weight-only (ORT default) | int8 | int8 / TorchScript FP32 |",
            "|---|---|---|---|---|---|---|",
        ]
        for size in (32, 224):
            files = b.export_all("resnet18", size, Path(tmp) / f"exp{size}", torchscript=True)
            kinds = {k: files[k] for k in ("fp32", "fp32_torchscript", "u4_weight_only", "int8")}
            r = b.latency(kinds, size, 1, rounds=rounds, reps=30 if size == 32 else 10)
            r2 = b.latency(
                {"u4_weight_only": files["u4_weight_only"]},
                size,
                1,
                rounds=rounds,
                reps=10,
                exact_weight_only=False,
            )
            lines.append(
                f"| {size} | {_fmt(r['fp32'])} | {_fmt(r['fp32_torchscript'])} | {_fmt(r['u4_weight_only'])} | "
                f"{_fmt(r2['u4_weight_only'])} | {_fmt(r['int8'])} | {_ratio(r['int8'], r['fp32_torchscript'])} |"
            )
            print(lines[-1], flush=True)
    lines += [
        "",
        "## File sizes at 224 px (MiB)",
        "",
        "| model | FP32 ONNX | U4 weight-only ONNX | int8 ONNX (U4 codes in int8) | packed U4 |",
        "|---|---|---|---|---|",
    ]
    for name, s in size_rows:
        mib = {k: v / 2**20 for k, v in s.items()}
        lines.append(
            f"| {name} | {mib['fp32']:.2f} | {mib['u4_weight_only']:.2f} | {mib.get('int8', float('nan')):.2f} | {mib['packed_u4']:.2f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
