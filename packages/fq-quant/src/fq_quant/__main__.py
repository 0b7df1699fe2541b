"""``python -m fq_quant export-onnx``: a packed file (:func:`fq_quant.export_packed`) to an ONNX file.

``main(argv)`` runs it in-process (importing this module runs nothing).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

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
    return p


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
    out = export_onnx(model.eval(), x, args.out, opset=args.opset, assignment=assignment)
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
