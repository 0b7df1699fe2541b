"""ONNX export with integer weights: every quantized weight becomes codes + scales + DequantizeLinear.

The model is exported by ``torch.onnx`` (``torch.export`` based, ``optimize=False`` so that no
BatchNorm is folded into a quantized weight) with its fake-quantized weights as plain float
parameters; the graph is then rewritten with the ``onnx`` package: each quantized layer's weight
initializer ``L.weight`` is replaced by a node that computes the same tensor, bit for bit, from

* ``L.weight_quantized``: the integer codes of :func:`fq_quant.quantize_codes` in the narrowest
  container the opset and runtime offer (INT4 when every coded scope of the layer has at most 4
  bits, else INT8, else INT16), output channel first;
* ``L.weight_scale``: float32, one per output channel (``axis=0``), or one scalar per tensor;
* a ``DequantizeLinear`` node (``y = code * scale``, zero point 0) whose output is named ``L.weight``.

32-bit scopes stay float: a layer with some 32-bit channels stores the dequantized rows and the
float rows apart, joined by ``Concat`` and put back in order by ``Gather`` (an ``int64`` index per
channel). Pruned (0-bit) scopes are code 0 with scale 0, so they dequantize to +0.0. Biases,
norms and embeddings keep their float initializers. The batch dimension is dynamic.
"""

from __future__ import annotations

import copy
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from . import _onnx_int8 as int8
from ._act_ranges import ActivationRanges, Estimator, calibrate_activations
from ._assignment import BitAssignment
from ._granularity import Granularity
from ._model import current_assignment, is_quantized, quantize_model, strip_quantization
from ._onnx_base import DEFAULT_OPSET, INPUT_NAME, MIN_OPSET, OUTPUT_NAME, require, write_atomic
from ._onnx_meta import check_metadata_args, name_batch_dim, packed_sha, set_metadata
from ._onnx_plan import LayerPlan, plans, rewrite

__all__ = ["DEFAULT_OPSET", "export_onnx"]


def _module_of_failed_op(exc: BaseException, program: Any) -> str:
    """Name the module (and op) that ``torch.onnx`` could not convert, from its error and the program."""
    text = str(exc)
    m = re.search(r"target=torch\.ops\.(\w+)\.(\w+)", text) or re.search(
        r"OpOverload\(op='(\w+)\.(\w+)'", text
    )
    if m is None:
        return ""
    op = m.group(2).lstrip("_")
    for node in program.graph.nodes:
        target = getattr(node.target, "__name__", str(node.target))
        if node.op == "call_function" and target.split(".")[0].lstrip("_") == op:
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, cls = list(stack.values())[-1]
                cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
                return f"module {path!r} ({cls_name.rsplit('.', 1)[-1]}) uses aten.{m.group(2)}"
    return f"the model uses aten.{m.group(2)}"


def _trace(model: nn.Module, example: torch.Tensor) -> Any:
    """``torch.export`` of a plain float model with a dynamic batch (the program ONNX is made from)."""
    x = example
    if x.shape[0] == 1:
        # torch.export specializes a dimension of size 1; trace with 2 rows, the graph is the same
        x = torch.cat([x, x])
    batch = torch.export.Dim("batch")
    # One eager forward first: modules that fill a cache on their first eval forward (timm's
    # TinyViT attention biases) would otherwise assign tensor attributes while being traced.
    model(x)
    try:
        return torch.export.export(model, (x,), dynamic_shapes=({0: batch},), strict=False)
    except Exception as exc:
        raise RuntimeError(
            f"torch.export could not trace {type(model).__name__} with a dynamic batch: {exc}"
        ) from exc


def _export_float(model: nn.Module, example: torch.Tensor, opset: int) -> tuple[Any, Any]:
    """``torch.onnx`` export of a plain float model with a dynamic batch; ``(ModelProto, program)``."""
    torch_onnx = require("torch.onnx")
    require("onnxscript")
    program = _trace(model, example)
    try:
        onnx_program = torch_onnx.export(
            program,
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            optimize=False,
            verbose=False,
        )
    except Exception as exc:
        where = _module_of_failed_op(exc, program)
        raise RuntimeError(
            f"torch.onnx cannot express {where or 'an op of the model'} at opset {opset}; replace "
            f"that module by ONNX-exportable ops (or try another opset). Exporter error: {exc}"
        ) from exc
    # the decomposed program the ONNX graph was made from: its value names are the graph's
    return onnx_program.model_proto, onnx_program.exported_program


def _resolve_assignment(
    model: nn.Module, assignment: BitAssignment | None, allow_float: bool
) -> BitAssignment | None:
    if assignment is not None:
        if not isinstance(assignment, BitAssignment):
            raise TypeError(f"assignment must be a BitAssignment; got {type(assignment).__name__}")
        return assignment
    if is_quantized(model):
        return current_assignment(model)
    if allow_float:
        return None
    raise ValueError(
        f"model {type(model).__name__} is not quantized: call fq_quant.quantize_model first, pass "
        "assignment= (e.g. the one load_packed returns), or allow_float=True for a plain float export"
    )


def _check_args(model: nn.Module, example_input: torch.Tensor, opset: int | None) -> int:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor) or not example_input.is_floating_point():
        raise TypeError(
            "example_input must be a floating-point torch.Tensor [N, C, H, W]; "
            f"got {type(example_input).__name__}"
        )
    if example_input.dim() < 2 or example_input.shape[0] < 1:
        raise ValueError(
            f"example_input must have a batch dimension first; got shape {tuple(example_input.shape)}"
        )
    onnx = require("onnx")
    top = onnx.defs.onnx_opset_version()
    if opset is None:
        return DEFAULT_OPSET
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= top:
        raise ValueError(f"opset must be an int in [{MIN_OPSET}, {top}] or None; got {opset!r}")
    return opset


def _independent_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parametrizations can be removed without touching ``model``.

    ``copy.deepcopy`` of a parametrized module shares its generated ``Parametrized*`` class, and
    ``remove_parametrizations`` deletes the weight property from that class: give each copied
    module a class of its own first.
    """
    work = copy.deepcopy(model)
    for module in work.modules():
        if parametrize.is_parametrized(module):
            cls = type(module)
            module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    return work


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    assignment: BitAssignment | None = None,
    allow_float: bool = False,
    activations: Literal["float", "int8"] = "float",
    calibration: Iterable[Any] | ActivationRanges | None = None,
    estimator: Estimator = "minmax",
    group_balanced: bool = False,
    class_names: Sequence[str] | None = None,
    normalization: Mapping[str, Sequence[float]] | None = None,
    packed: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``model`` as an ONNX file whose quantized weights are integers (needs ``fq-quant[onnx]``).

    Args:
        model: a model wrapped by :func:`quantize_model` (the output of ``quantize_model``,
            ``QATTrainer``/``BAQTrainer`` or ``load_packed(path, model)``), or a plain model together
            with ``assignment`` (e.g. the one ``load_packed(path)`` returns). Not modified: a CPU
            copy is exported in eval mode.
        example_input: ``[N, C, H, W]`` float input the graph is traced with (any batch size; the
            exported batch dimension is dynamic and named ``batch``, the others are fixed).
        path: destination ``.onnx`` file; missing parent folders are created; written atomically
            (temporary file in the same folder, then ``os.replace``), so no half-written file is left.
        opset: ONNX opset, in ``[18, onnx.defs.onnx_opset_version()]``; default 21. INT4 and INT16
            containers need opset >= 21 and a runtime that has them (else INT8, or float above 8 bits).
        assignment: the bits to store; default: the wrapped model's :func:`current_assignment`.
            Tensor or channel granularity (per-parameter scales cannot be expressed per axis).
        allow_float: export an unquantized model as plain float32 instead of refusing it.
        activations: ``"float"`` (weight-only: activations stay float32) or ``"int8"`` (static
            activation quantization in QDQ form, which ONNX Runtime runs as QLinearConv /
            QLinearMatMul / QGemm; weights as per-channel int8 codes; METHOD.md section 10).
        calibration: for ``"int8"``: ``(image, label, group)`` batches (a DataLoader) or bare
            image tensors, from which :func:`calibrate_activations` estimates the ranges; or
            ready :class:`ActivationRanges`.
        estimator: ``"minmax"``, ``"percentile"`` or ``"entropy"`` (ONNX Runtime's calibrators).
        group_balanced: per-group estimator, ranges combined by the widest (needs groups).
        class_names: class names in output order, written to ``metadata_props``.
        normalization: ``{"mean": [C], "std": [C]}`` applied to ``[0, 1]`` pixels, written too.
        packed: the packed file (path) or its ``tensors_sha256`` hex digest, written as
            ``packed_content_sha256``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`. Graph input ``"input"`` ``[batch, C, H, W]``, output
        ``"logits"``; ``metadata_props``: ``input_shape``, ``class_names``, ``normalization``,
        ``bits_per_layer``, ``packed_content_sha256``, ``activations`` (those given). Weight-only:
        each quantized layer's weight is ``DequantizeLinear(codes, scale, axis=0)`` (see the
        module docstring), equal bit for bit to the fake-quantized weight. Int8: the layers'
        codes are the same integers (times the sign of a folded BatchNorm's factor). The file
        passes ``onnx.checker.check_model(full_check=True)``.

    Raises:
        ImportError: the ``onnx`` extra is not installed. ValueError: an unquantized model (without
        ``allow_float``), per-parameter granularity, a bad ``opset``, ``example_input``,
        ``activations``, ``calibration``, ``class_names`` or ``normalization``.
        RuntimeError: the model cannot be traced, or an op cannot be expressed (the error names the
        module).
    """
    opset = _check_args(model, example_input, opset)
    if activations not in ("float", "int8"):
        raise ValueError(f"activations must be 'float' or 'int8'; got {activations!r}")
    if activations == "int8" and calibration is None:
        raise ValueError(
            "activations='int8' needs calibration=: a few batches of your data (a DataLoader of "
            "(image, label, group)) or ActivationRanges"
        )
    check_metadata_args(class_names, normalization, int(example_input.shape[1]))
    sha = packed_sha(packed)
    onnx = require("onnx")
    rewrap = assignment is not None  # else the model's own quantizers already hold the bits
    assignment = _resolve_assignment(model, assignment, allow_float)
    if assignment is not None and assignment.granularity is Granularity.PARAM:
        raise ValueError(
            "assignment granularity 'param' cannot be exported to ONNX: DequantizeLinear holds one "
            "scale per output channel, and per-parameter bits share a scale per (channel, bit) group. "
            "Quantize at 'channel' (or 'tensor') granularity, or keep the per-parameter model in "
            "fq_quant.export_packed"
        )
    if activations == "int8" and assignment is None:
        raise ValueError("activations='int8' needs a quantized model (integer weights)")
    work = _independent_copy(model).to("cpu").eval()
    layer_plans: dict[str, LayerPlan] = {}
    if assignment is not None:
        if rewrap:
            quantize_model(work, assignment)
        with torch.no_grad():
            layer_plans = plans(work, assignment, opset)
        strip_quantization(work)
    elif any(parametrize.is_parametrized(m) for m in work.modules()):
        raise ValueError("model carries parametrizations other than fq_quant's; remove them first")
    with torch.no_grad():
        proto, program = _export_float(work, example_input.detach().to("cpu"), opset)
    if activations == "int8":
        assert assignment is not None  # checked above
        proto, described = _to_int8(
            proto, program, layer_plans, assignment, calibration, estimator, group_balanced
        )
    else:
        rewrite(proto, layer_plans)
        described = {"dtype": "float"}
    name_batch_dim(proto)
    set_metadata(
        proto,
        input_shape=tuple(example_input.shape[1:]),
        assignment=assignment,
        class_names=class_names,
        normalization=normalization,
        packed=sha,
        activations=described,
    )
    proto.producer_name = "fq_quant"
    onnx.checker.check_model(proto, full_check=True)
    path = Path(path)
    write_atomic(proto.SerializeToString(), path)
    return path


def _to_int8(
    proto: Any,
    program: Any,
    layer_plans: Mapping[str, LayerPlan],
    assignment: BitAssignment,
    calibration: Iterable[Any] | ActivationRanges | None,
    estimator: Estimator,
    group_balanced: bool,
) -> tuple[Any, dict[str, Any]]:
    """The float graph of the fake-quantized model to a QDQ int8 graph (see ``_onnx_int8``)."""
    onnx = require("onnx")
    scales, keep_float = {}, []
    for name, plan in layer_plans.items():
        bits = assignment.bits[name]
        if plan.codes is None or plan.floats is not None or int(bits.max()) > 8:
            keep_float.append(f"{name}.weight")  # > 8 bits or 32-bit rows: this layer stays float
            continue
        assert plan.scales is not None  # internal invariant
        s = plan.scales.numpy().astype(np.float32).reshape(-1)
        out = int(plan.weight.shape[0])
        scales[f"{name}.weight"] = s if s.size == out else np.full(out, float(s[0]), np.float32)
    with tempfile.TemporaryDirectory(prefix="fq_int8.") as tmp:
        prepared, meta = int8.prepare(proto, scales, tmp)
        if isinstance(calibration, ActivationRanges):
            ranges = calibration
        else:
            assert calibration is not None  # checked by export_onnx
            ranges = calibrate_activations(
                prepared, calibration, estimator=estimator, group_balanced=group_balanced
            )
        float_nodes = [
            n.name for n in onnx.load(str(prepared)).graph.node if set(n.input) & set(keep_float)
        ]
        quantized = int8.quantize(
            prepared, meta, ranges, int8.program_names(program), float_nodes, tmp
        )
    for node in quantized.graph.node:
        node.doc_string = ""
    return quantized, int8.describe(ranges)


def export_program(model: nn.Module, example_input: torch.Tensor) -> Any:
    """The decomposed ``torch.export`` program :func:`export_onnx` converts (quantization baked in)."""
    work = _independent_copy(model).to("cpu").eval()
    if is_quantized(work):
        strip_quantization(work)
    with torch.no_grad():
        return _export_float(work, example_input.detach().to("cpu"), DEFAULT_OPSET)[1]
