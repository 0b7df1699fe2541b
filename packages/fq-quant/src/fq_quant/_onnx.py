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
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._assignment import BitAssignment
from ._granularity import Granularity
from ._model import current_assignment, is_quantized, quantize_model, strip_quantization
from ._onnx_base import DEFAULT_OPSET, INPUT_NAME, MIN_OPSET, OUTPUT_NAME, require, write_atomic
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


def _export_float(model: nn.Module, example: torch.Tensor, opset: int) -> Any:
    """``torch.onnx`` export of a plain float model with a dynamic batch; the ``ModelProto``."""
    torch_onnx = require("torch.onnx")
    require("onnxscript")
    x = example
    if x.shape[0] == 1:
        # torch.export specializes a dimension of size 1; trace with 2 rows, the graph is the same
        x = torch.cat([x, x])
    batch = torch.export.Dim("batch")
    # One eager forward first: modules that fill a cache on their first eval forward (timm's
    # TinyViT attention biases) would otherwise assign tensor attributes while being traced.
    model(x)
    try:
        program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},), strict=False)
    except Exception as exc:
        raise RuntimeError(
            f"torch.export could not trace {type(model).__name__} with a dynamic batch: {exc}"
        ) from exc
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
    return onnx_program.model_proto


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
) -> Path:
    """Write ``model`` as an ONNX file whose quantized weights are integers (needs ``fq-quant[onnx]``).

    Args:
        model: a model wrapped by :func:`quantize_model` (the output of ``quantize_model``,
            ``QATTrainer``/``BAQTrainer`` or ``load_packed(path, model)``), or a plain model together
            with ``assignment`` (e.g. the one ``load_packed(path)`` returns). Not modified: a CPU
            copy is exported in eval mode.
        example_input: ``[N, C, H, W]`` float input the graph is traced with (any batch size; the
            exported batch dimension is dynamic, the other dimensions are fixed).
        path: destination ``.onnx`` file; missing parent folders are created; written atomically
            (temporary file in the same folder, then ``os.replace``), so no half-written file is left.
        opset: ONNX opset, in ``[18, onnx.defs.onnx_opset_version()]``; default 21. INT4 and INT16
            containers need opset >= 21 and a runtime that has them (else INT8, or float above 8 bits).
        assignment: the bits to store; default: the wrapped model's :func:`current_assignment`.
            Tensor or channel granularity (per-parameter scales cannot be expressed per axis).
        allow_float: export an unquantized model as plain float32 instead of refusing it.

    Returns:
        ``path`` as a :class:`~pathlib.Path`. Graph input ``"input"`` ``[batch, C, H, W]``, output
        ``"logits"``. Each quantized layer's weight is ``DequantizeLinear(codes, scale, axis=0)``
        (see the module docstring of ``fq_quant._onnx``), equal bit for bit to the fake-quantized
        weight of ``model``; the file passes ``onnx.checker.check_model(full_check=True)``.

    Raises:
        ImportError: the ``onnx`` extra is not installed. ValueError: an unquantized model (without
        ``allow_float``), per-parameter granularity, a bad ``opset`` or ``example_input``.
        RuntimeError: the model cannot be traced, or an op cannot be expressed (the error names the
        module).
    """
    opset = _check_args(model, example_input, opset)
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
        proto = _export_float(work, example_input.detach().to("cpu"), opset)
    rewrite(proto, layer_plans)
    proto.producer_name = "fq_quant"
    onnx.checker.check_model(proto, full_check=True)
    path = Path(path)
    write_atomic(proto.SerializeToString(), path)
    return path
