"""Parity of int8 ONNX files with their torch reference, with TRAINED weights, on the default test set.

Issue 27 asks that ONNX Runtime's output of an ``activations="int8"`` file agree with a torch
reference of the same weight and activation quantization (``fq_quant.int8_reference``) on at
least 99.5% of the default test set's argmaxes, and that the max logit error be reported. The
model is the grid's default FP32 resnet18 (semi-synthetic Fitzpatrick17k, 32 px): loaded from
``--weights``, or trained by ``run_grid`` with the default preset's FP32 recipe into
``--out/grid`` (reused when found there). Its weights are quantized per channel (U8 and U4,
post-training), activations calibrated on the first ``calib_batches`` training batches (eval
transforms) per estimator, pooled and group-balanced; every file is run on the whole test split.

    uv run python bench/int8_parity.py --out /tmp/int8parity [--weights FP32.safetensors]
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _test_and_calibration(config: Any) -> tuple[Any, list[Any], torch.Tensor, torch.Tensor]:
    """The default data's loaders: (dataset info, calibration batches, test images, test labels)."""
    from fq_data import dataset_info, load_semisynthetic, make_loaders

    dd = load_semisynthetic(
        "fitzpatrick17k",
        n=config.n_images,
        image_size=config.image_size,
        seed=0,
        test_fraction=config.test_fraction,
        min_test_per_group=config.min_test_per_group,
    )
    loaders = make_loaders(
        dd, image_size=config.image_size, batch_size=config.batch_size, train=False, seed=0
    )
    calib = list(itertools.islice(loaders.train, config.calib_batches))
    xs, ys = zip(*[(x, y) for x, y, _ in loaders.test], strict=True)
    return dataset_info(dd), calib, torch.cat(xs), torch.cat(ys)


def _fp32_weights(args: argparse.Namespace, config: Any) -> Path:
    """``--weights``, or the grid's default FP32 checkpoint (seed 0), trained if missing."""
    if args.weights:
        return Path(args.weights)
    from fq_bench.grid import run_grid

    grid = Path(args.out) / "grid"
    run_grid(
        config.replace(methods=("fp32",), seeds=(0,), budgets=(), frontier_methods=()),
        grid,
        fail_fast=True,
    )
    return grid / "checkpoints" / "fitzpatrick17k__resnet18__s0.safetensors"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the FP32 run and the int8 files")
    p.add_argument("--weights", default=None, help="FP32 resnet18 safetensors (3 classes)")
    p.add_argument("--bits", type=int, nargs="+", default=[8, 4])
    p.add_argument("--estimators", nargs="+", default=["minmax", "percentile", "entropy"])
    args = p.parse_args()
    from fq_bench.compress import load_weights
    from fq_bench.grid import DEFAULT, build_model
    from fq_quant import (
        BitAssignment,
        ScopeLayout,
        export_onnx,
        int8_reference,
        ort_session,
        quantize_model,
    )

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    config = DEFAULT.replace(cpu=True)
    weights = _fp32_weights(args, config)
    (class_names, _), calib, x, y = _test_and_calibration(config)
    size = config.image_size
    fp32 = build_model("resnet18", num_classes=len(class_names), image_size=size, pretrained=False)
    load_weights(fp32, weights)
    fp32.eval()
    with torch.no_grad():
        fp32_acc = float((fp32(x).argmax(1) == y).float().mean())
    rows: list[dict[str, Any]] = []
    for bits in args.bits:
        model = build_model(
            "resnet18", num_classes=len(class_names), image_size=size, pretrained=False
        )
        load_weights(model, weights)
        quantize_model(
            model.eval(), BitAssignment.uniform(ScopeLayout.from_model(model, "channel"), bits)
        )
        for est in args.estimators:
            for balanced in (False, True):
                if est == "minmax" and balanced:
                    continue  # equals the pooled range (METHOD.md section 10)
                name = f"U{bits}-{est}-{'balanced' if balanced else 'pooled'}"
                path = Path(args.out) / f"{name}.onnx"
                t = time.perf_counter()
                export_onnx(
                    model,
                    torch.zeros(1, 3, size, size),
                    path,
                    activations="int8",
                    calibration=calib,
                    estimator=est,
                    group_balanced=balanced,
                )
                t_export = time.perf_counter() - t
                got = ort_session(path, exact=False, threads=1).run(None, {"input": x.numpy()})[0]
                want = int8_reference(model, torch.zeros(1, 3, size, size), path)(x).numpy()
                err = float(np.abs(got - want).max())
                rows.append(
                    {
                        "file": name,
                        "agree": float((got.argmax(1) == want.argmax(1)).mean()),
                        "err": err,
                        "rel": err / float(np.abs(want).max()),
                        "acc_ort": float((got.argmax(1) == y.numpy()).mean()),
                        "acc_ref": float((want.argmax(1) == y.numpy()).mean()),
                        "export_s": t_export,
                    }
                )
                print(rows[-1], flush=True)
    lines = [
        f"## Parity with trained weights on the default test set ({time.strftime('%Y-%m-%d')})",
        "",
        f"resnet18 trained by the default grid's FP32 recipe (semi-synthetic Fitzpatrick17k, "
        f"{config.image_size} px, {len(class_names)} classes; weights `{weights.name}`), "
        f"FP32 test accuracy {100 * fp32_acc:.1f}%. Weights quantized per channel after "
        f"training (U8, U4), activations calibrated on the first {config.calib_batches} training "
        f"batches ({sum(len(b[0]) for b in calib)} images, eval transforms); all {len(y)} test "
        "images. `agree`: ONNX Runtime's argmax equals the torch reference's "
        "(`int8_reference`, the same weight and activation quantization); max |logit error| "
        "absolute and relative to the reference's max |logit|. `uv run python "
        "bench/int8_parity.py`, one thread, CPU.",
        "",
        "| file | agree | max logit error | relative | acc ORT int8 | acc torch reference "
        "| export s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {r['file']} | {100 * r['agree']:.2f}% | {r['err']:.2e} | {r['rel']:.2e} "
            f"| {100 * r['acc_ort']:.1f}% | {100 * r['acc_ref']:.1f}% | {r['export_s']:.0f} |"
            for r in rows
        ),
        "",
        f"Wall time {time.perf_counter() - t0:.0f} s (FP32 training included where it ran).",
    ]
    text = "\n".join(lines) + "\n"
    (Path(args.out) / "int8-parity.md").write_text(text)
    print(text)
    worst = min(r["agree"] for r in rows)
    return 0 if worst >= 0.995 else 1


if __name__ == "__main__":
    raise SystemExit(main())
