"""``python -m fq_quant export-onnx``: a packed file (:func:`fq_quant.export_packed`) to an ONNX file.

``--activations int8`` also quantizes the activations (static ranges calibrated on images read
from an ``.npz``/``.npy`` file). ``main(argv)`` runs it in-process (importing this module runs
nothing).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pickle
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fq_quant._act_ranges import ESTIMATORS
from fq_quant._granularity import Granularity
from fq_quant._onnx import DEFAULT_OPSET, MIN_OPSET, export_onnx
from fq_quant._packed import load_packed

#: ``builder(model_name, num_classes=..., image_size=...) -> nn.Module``, e.g. ``fq_bench.grid:build_model``.
Builder = Callable[..., nn.Module]


def _timm_builder(name: str, *, num_classes: int, image_size: int) -> nn.Module:
    """``timm.create_model(name, num_classes=num_classes)``; ``image_size`` sets only the example input."""
    try:
        import timm
    except ImportError as exc:
        raise ImportError(
            "building a model by name needs timm (pip install timm), or pass --builder MODULE:CALLABLE"
        ) from exc
    return timm.create_model(name, num_classes=num_classes)


def _load_builder(spec: str) -> Builder:
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ValueError(
            f"--builder must be MODULE:CALLABLE (e.g. fq_bench.grid:build_model); got {spec!r}"
        )
    try:
        builder = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(
            f"--builder {spec!r}: cannot import {attr!r} from {module!r} ({exc})"
        ) from exc
    if not callable(builder):
        raise ValueError(f"--builder {spec!r} is not callable")
    return builder


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fq_quant", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser(
        "export-onnx",
        help="write an ONNX file with integer weights from a packed .safetensors file",
        description="Rebuild the architecture, load the packed weights and bits, and export to "
        "ONNX with INT4/INT8 weights and DequantizeLinear (needs fq-quant[onnx]).",
    )
    e.add_argument("packed", type=Path, help="file written by fq_quant.export_packed")
    e.add_argument("--model", required=True, help="architecture name (timm, or the --builder's)")
    e.add_argument("--num-classes", type=int, required=True, help="classifier outputs")
    e.add_argument("--image-size", type=int, default=224, help="input side in pixels (default 224)")
    e.add_argument("--out", type=Path, required=True, help="destination .onnx file")
    e.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    e.add_argument(
        "--builder",
        default=None,
        help="MODULE:CALLABLE called as CALLABLE(model, num_classes=N, image_size=S) instead of "
        "timm.create_model; e.g. fq_bench.grid:build_model for the grid's models (custom "
        "models, ViTs built at --image-size)",
    )
    a = e.add_argument_group("integer activations (--activations int8)")
    a.add_argument(
        "--activations",
        choices=("float", "int8"),
        default="float",
        help="float: weight-only (default); int8: activations quantized too, with ranges "
        "calibrated on --calibration (ONNX Runtime runs QLinearConv / QLinearMatMul / QGemm)",
    )
    a.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="images to calibrate on: a .npz with 'image' [N, C, S, S] float32 (preprocessed as "
        "the model expects) and, for --group-balanced, 'group' [N] integer codes; or a .npy of "
        "the images alone",
    )
    a.add_argument(
        "--estimator", choices=ESTIMATORS, default="minmax", help="range estimator (default minmax)"
    )
    a.add_argument(
        "--group-balanced",
        action="store_true",
        help="estimate each group's ranges alone and keep the widest (needs 'group')",
    )
    a.add_argument("--calib-batch-size", type=int, default=32, help="images per batch (default 32)")
    a.add_argument(
        "--calib-batches",
        type=int,
        default=None,
        help="use only the first N batches of --calibration (default: all of it)",
    )
    return p


def _calibration(
    args: argparse.Namespace,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None:
    """The ``(image, label, group)`` batches of ``--calibration`` (labels unused: zeros), checked."""
    calib_only = ("--calibration", "--group-balanced", "--calib-batches")
    if args.activations == "float":
        given = [
            n
            for n, v in zip(
                calib_only, (args.calibration, args.group_balanced, args.calib_batches), strict=True
            )
            if v not in (None, False)
        ]
        if given or args.estimator != "minmax":
            raise ValueError(
                f"{', '.join(given) or '--estimator'}: only with --activations int8 (calibration options)"
            )
        return None
    if args.calibration is None:
        raise ValueError(
            "--activations int8 needs --calibration FILE (.npz with 'image' [N, C, S, S] float32 "
            "and optionally 'group' [N]; or .npy images)"
        )
    if args.calib_batch_size < 1:
        raise ValueError(f"--calib-batch-size must be >= 1; got {args.calib_batch_size}")
    if args.calib_batches is not None and args.calib_batches < 1:
        raise ValueError(f"--calib-batches must be >= 1; got {args.calib_batches}")
    path = args.calibration
    if not path.is_file() or path.suffix not in (".npz", ".npy"):
        raise ValueError(f"--calibration {path} must be an existing .npz or .npy file")
    groups = None
    try:
        if path.suffix == ".npy":
            images = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as data:
                if "image" not in data:
                    raise ValueError(
                        f"--calibration {path}: a .npz needs an array 'image'; has {data.files}"
                    )
                images = data["image"]
                groups = data.get("group")
    except (OSError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"--calibration {path}: not a readable numpy file ({exc})") from None
    shape = (3, args.image_size, args.image_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != shape or len(images) == 0:
        raise ValueError(
            f"--calibration {path}: images must be [N, 3, {args.image_size}, {args.image_size}] "
            f"(--image-size), N >= 1; got {list(images.shape)}"
        )
    if not np.issubdtype(images.dtype, np.floating) or not np.isfinite(images).all():
        raise ValueError(f"--calibration {path}: images must be finite floats; got {images.dtype}")
    if args.group_balanced and groups is None:
        raise ValueError(f"--group-balanced needs an integer array 'group' [N] in {path}")
    if groups is not None and (
        groups.shape != (len(images),) or not np.issubdtype(groups.dtype, np.integer)
    ):
        raise ValueError(
            f"--calibration {path}: 'group' must be integers of shape [{len(images)}]; "
            f"got {groups.dtype} {list(groups.shape)}"
        )
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    g = torch.zeros(len(x), dtype=torch.int64) if groups is None else torch.from_numpy(groups)
    b = args.calib_batch_size
    batches = [
        (x[i : i + b], torch.zeros(len(x[i : i + b]), dtype=torch.int64), g[i : i + b].long())
        for i in range(0, len(x), b)
    ]
    return batches[: args.calib_batches]


def _check_out(out: Path) -> None:
    """Refuse an ``--out`` that cannot be written, before any export work."""
    if out.is_dir():
        raise ValueError(f"--out {out} is an existing folder; give the .onnx file to write")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # export_onnx creates missing folders below the first that exists
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: cannot write into {parent}")


def _check_opset(opset: int) -> None:
    try:
        import onnx
    except ImportError as exc:
        raise ValueError('export-onnx needs the onnx extra: pip install "fq-quant[onnx]"') from exc
    top = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= top:
        raise ValueError(f"--opset must be in [{MIN_OPSET}, {top}]; got {opset}")


def _export(args: argparse.Namespace) -> int:
    if args.num_classes < 1:
        raise ValueError(f"--num-classes must be >= 1; got {args.num_classes}")
    if args.image_size < 1:
        raise ValueError(f"--image-size must be >= 1; got {args.image_size}")
    if not args.packed.is_file():
        raise ValueError(f"packed file {args.packed} does not exist")
    _check_opset(args.opset)
    _check_out(args.out)
    calibration = _calibration(args)
    loaded = load_packed(args.packed)
    if not isinstance(loaded, tuple):  # load_packed without a model returns (state, bits)
        raise TypeError(f"load_packed returned {type(loaded).__name__}, not (state, assignment)")
    state, assignment = loaded
    if assignment.granularity is Granularity.PARAM:
        raise ValueError(
            f"{args.packed}: granularity 'param' cannot be exported to ONNX (DequantizeLinear "
            "holds one scale per output channel); quantize at 'channel' or 'tensor' granularity"
        )
    builder = _load_builder(args.builder) if args.builder else _timm_builder
    model = builder(args.model, num_classes=args.num_classes, image_size=args.image_size)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"{args.packed} does not fit model {args.model!r} with {args.num_classes} classes "
            f"(wrong --model, --num-classes or --builder?): {exc}"
        ) from None
    x = torch.zeros(1, 3, args.image_size, args.image_size)
    out = export_onnx(
        model.eval(),
        x,
        args.out,
        opset=args.opset,
        assignment=assignment,
        activations=args.activations,
        calibration=calibration,
        estimator=args.estimator,
        group_balanced=args.group_balanced,
    )
    print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 on success, 2 on bad input).

    Every argument is checked (the opset, ``--out``, the packed file and its granularity) before
    the model is built or exported; a ``ValueError`` or ``OSError`` is one ``error:`` line on
    stderr.
    """
    args = _parser().parse_args(argv)
    try:
        return _export(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
