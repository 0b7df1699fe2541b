"""``python -m fq_bench compress``: a trained timm model and its data -> an audited low-bit folder."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from ._config import COMPRESS_METHODS, CompressConfig

logger = logging.getLogger("fq_bench.compress")

#: ``--data`` value for the toolkit's offline default (semi-synthetic Fitzpatrick17k-like).
SEMISYNTHETIC = "semisynthetic"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m fq_bench compress``."""
    d = CompressConfig()
    p = argparse.ArgumentParser(
        prog="python -m fq_bench compress",
        description="Quantize a trained timm classifier to a bit budget and audit the files you "
        "ship (the fake-quantized model and the ONNX file) against it, per group, on your test "
        "split. A finished step is not redone: run the same command again to resume.",
    )
    p.add_argument("--model", required=True, help="timm architecture name, e.g. resnet18")
    p.add_argument("--weights", required=True,
                   help="your trained weights: a safetensors state_dict of --model with your "
                   "number of classes")  # fmt: skip
    p.add_argument("--data", required=True,
                   help="a folder or table of images with label and group columns, anything "
                   "datasets reads (fq_data.load_dataset), or 'semisynthetic' for the toolkit's "
                   "offline demo data")  # fmt: skip
    p.add_argument("--image-column", default="image", help="image column (default: image)")
    p.add_argument("--label-column", default="label", help="class column (default: label)")
    p.add_argument(
        "--group-column", default="group", help="group column, any values (default: group)"
    )
    p.add_argument("--n-images", type=int, default=1600,
                   help="semisynthetic only: images, train + test (default: 1600, the grid's)")  # fmt: skip
    p.add_argument("--min-test-per-group", type=int, default=0,
                   help="semisynthetic only: test images per group at least (the grid's default "
                   "run: 150)")  # fmt: skip
    p.add_argument("--out", required=True, help="output folder (resumed when it exists)")
    p.add_argument("--budget", type=float, default=d.budget, help="bits per weight (default: 4.0)")
    p.add_argument("--method", choices=COMPRESS_METHODS, default=d.method,
                   help=f"default: {d.method}")  # fmt: skip
    p.add_argument("--fair-loss", default=d.fair_loss,
                   help="L_fair objective of fq-qat/fq-baq: gap, gap-up, worst, lse, dro")  # fmt: skip
    p.add_argument("--lambda-fair", type=float, default=d.lambda_fair)
    p.add_argument("--epochs", type=int, default=d.epochs, help="fine-tune epochs")
    p.add_argument("--lr", type=float, default=d.lr, help="fine-tune learning rate (AdamW)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--image-size", type=int, default=d.image_size, help="input side in pixels")
    p.add_argument("--calib-batches", type=int, default=d.calib_batches)
    p.add_argument("--budget-bits", type=int, nargs="+", default=list(d.budget_bits),
                   help="bit-widths a channel may get")  # fmt: skip
    p.add_argument("--margin", type=float, default=d.margin,
                   help="non-inferiority margin in accuracy points (default: 1.0)")  # fmt: skip
    p.add_argument("--confidence", type=float, default=d.confidence)
    p.add_argument("--test-fraction", type=float, default=d.test_fraction,
                   help="held-out share when the data has no split of its own")  # fmt: skip
    p.add_argument("--activations", choices=("float", "int8"), default=d.activations,
                   help="int8: also write model.int8.onnx with integer activations, calibrated "
                   "on your train split, and audit it (default: float, weight-only)")  # fmt: skip
    p.add_argument("--estimator", choices=("minmax", "percentile", "entropy"),
                   default=d.estimator, help="activation range estimator (--activations int8)")  # fmt: skip
    p.add_argument("--group-balanced", action="store_true",
                   help="--activations int8: ranges per group, widest kept, so no group's "
                   "activations are clipped much more than the others'")  # fmt: skip
    p.add_argument("--cost", choices=("packed", "container"), default=d.cost,
                   help="what --budget counts: packed (each weight's bits, default) or container "
                   "(each layer's INT4/INT8 storage in the ONNX file)")  # fmt: skip
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--cpu", action="store_true", help="stay on the CPU where CUDA is present")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def load_data(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The canonical ``DatasetDict`` ``--data`` names, and its description for the model card."""
    if args.data == SEMISYNTHETIC:
        from fq_data import load_semisynthetic

        dd = load_semisynthetic(
            "fitzpatrick17k",
            n=args.n_images,
            image_size=args.image_size,
            seed=0,
            test_fraction=args.test_fraction,
            min_test_per_group=args.min_test_per_group,
        )
        return dd, {
            "source": "semi-synthetic Fitzpatrick17k (fq_data)",
            "n_images": args.n_images,
            "min_test_per_group": args.min_test_per_group,
        }
    from fq_data import load_dataset

    dd = load_dataset(
        args.data,
        image_col=args.image_column,
        label_col=args.label_column,
        group_col=args.group_column,
        test_fraction=args.test_fraction,
        seed=0,
    )
    return dd, {
        "source": str(args.data),
        "image_column": args.image_column,
        "label_column": args.label_column,
        "group_column": args.group_column,
    }


def run(args: argparse.Namespace) -> int:
    """Run the command for parsed ``args``; 0 on success."""
    from pathlib import Path

    from fq_data import dataset_info

    from fq_bench.grid import build_model

    from ._pipeline import compress
    from ._weights import file_sha256, load_weights

    config = CompressConfig(
        budget=args.budget,
        method=args.method,
        budget_bits=tuple(args.budget_bits),
        fair_loss=args.fair_loss,
        lambda_fair=args.lambda_fair,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        image_size=args.image_size,
        calib_batches=args.calib_batches,
        margin=args.margin,
        confidence=args.confidence,
        test_fraction=args.test_fraction,
        seed=args.seed,
        cpu=args.cpu,
        progress=not args.no_progress,
        activations=args.activations,
        estimator=args.estimator,
        group_balanced=args.group_balanced,
        cost=args.cost,
    )
    import timm

    from fq_bench.grid import CUSTOM_MODELS

    if not (timm.is_model(args.model) or args.model in CUSTOM_MODELS):
        raise ValueError(
            f"--model {args.model!r} is not a timm architecture; use a name from "
            "timm.list_models() (e.g. resnet18), or the Python API for any nn.Module"
        )
    weights = Path(args.weights)
    if not weights.is_file():
        raise FileNotFoundError(f"--weights {weights}: no such file")
    logger.info("loading data from %s", args.data)
    dd, data = load_data(args)
    class_names, _ = dataset_info(dd)
    model = build_model(
        args.model, num_classes=len(class_names), image_size=args.image_size, pretrained=False
    )
    load_weights(model, weights)
    about = {
        "model": args.model,
        "weights": {"file": str(weights.resolve()), "sha256": file_sha256(weights)},
        "data": data,
    }
    result = compress(model, dd, args.out, config, about=about)
    print(result.audit.to_markdown())
    int8 = f", int8 {result.int8.stat().st_size / 2**20:.2f} MiB" if result.int8 else ""
    print(
        f"budget {config.budget:g} ({config.cost}), avg bits {result.avg_bits:.2f} "
        f"(containers {result.container_bits:.2f}), packed {result.size_bytes / 2**20:.2f} MiB, "
        f"onnx {result.onnx.stat().st_size / 2**20:.2f} MiB{int8}, "
        f"GBOPs {result.gbops:.3f}; {result.seconds:.0f} s; wrote {result.out}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv``, run, and turn a bad input into one line saying what to do."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # this command's steps on the terminal; the libraries' own INFO records (per-epoch dumps) stay
    # quiet, their progress bars show the fine-tune unless --no-progress
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logger.setLevel(logging.INFO)
    try:
        return run(args)
    except (ValueError, FileNotFoundError, TypeError, ImportError) as exc:
        parser.exit(2, f"error: {exc}\n")
    return 2
