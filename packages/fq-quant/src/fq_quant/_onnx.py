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
import functools
import importlib
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ._assignment import BitAssignment
from ._codes import dequantize, quantize_codes
from ._granularity import Granularity
from ._layers import float_weight, quantizable_layers
from ._model import current_assignment, is_quantized, quantize_model, strip_quantization

logger = logging.getLogger("fq_quant.onnx")

#: Opset used when ``opset=None``: the first with INT4/INT16 ``DequantizeLinear``.
DEFAULT_OPSET = 21
#: Lowest opset the ``torch.export``-based exporter writes.
MIN_OPSET = 18
#: Graph input and output names of an exported model.
INPUT_NAME, OUTPUT_NAME = "input", "logits"
_FULL = 32


def _require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"fq_quant.export_onnx needs the optional extra 'onnx' (module {module!r} is missing): "
            "pip install 'fq-quant[onnx]'"
        ) from exc


@functools.cache
def _runtime_supports(container: str) -> bool:
    """Whether the installed ONNX Runtime (CPU) dequantizes per-axis ``container`` weights.

    ``container``: ``"int4"`` or ``"int16"`` (opset 21 types; INT8 is always supported).
    """
    onnx = _require("onnx")
    ort = _require("onnxruntime")
    dtype = {"int4": onnx.TensorProto.INT4, "int16": onnx.TensorProto.INT16}[container]
    h = onnx.helper
    codes = h.make_tensor("q", dtype, [2, 2], [-7, 7, 1, 0])
    scale = onnx.numpy_helper.from_array(np.array([0.5, 2.0], np.float32), "s")
    node = h.make_node("DequantizeLinear", ["q", "s"], ["w"], axis=0)
    out = h.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [2, 2])
    graph = h.make_graph([node], "probe", [], [out], initializer=[codes, scale])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", DEFAULT_OPSET)])
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        (w,) = sess.run(None, {})
    except Exception:  # any refusal (unregistered kernel, unsupported type) means "no"
        return False
    return bool(np.array_equal(w, np.array([[-3.5, 3.5], [2.0, 0.0]], np.float32)))


@dataclass(frozen=True, kw_only=True)
class _LayerPlan:
    """How one quantized layer is stored: container name, codes, scales, float rows and order.

    With ``R`` coded rows out of ``O``: ``codes`` ``[R, ...]``, ``scales`` ``[R]`` per channel or
    ``[1]`` per tensor, ``floats`` ``[O - R, ...]`` (the 32-bit rows), ``order`` ``[O]`` int64 with
    row ``i`` of the weight at row ``order[i]`` of ``concat(dequantized rows, floats)``.
    """

    name: str
    granularity: Granularity
    container: str  # "int4" | "int8" | "int16" | "float"
    weight: torch.Tensor  # the fake-quantized float32 weight the graph must reproduce
    codes: torch.Tensor | None
    scales: torch.Tensor | None
    floats: torch.Tensor | None
    order: torch.Tensor | None


def _container(max_bits: int, opset: int) -> str:
    if max_bits <= 4 and opset >= 21 and _runtime_supports("int4"):
        return "int4"
    if max_bits <= 8:
        return "int8"
    if opset >= 21 and _runtime_supports("int16"):
        return "int16"
    return "float"


def _float_plan(name: str, g: Granularity, w_hat: torch.Tensor) -> _LayerPlan:
    """A layer whose weight keeps its float initializer."""
    return _LayerPlan(
        name=name,
        granularity=g,
        container="float",
        weight=w_hat,
        codes=None,
        scales=None,
        floats=None,
        order=None,
    )


def _plan_layer(
    name: str, w: torch.Tensor, w_hat: torch.Tensor, bits: torch.Tensor, g: Granularity, opset: int
) -> _LayerPlan:
    """Codes, scales and float rows of one layer; ``w``: float original, ``w_hat``: fake-quantized."""
    bits = bits.to(torch.int64)
    coded = bits < _FULL  # per scope: (1,) or (O,)
    if not bool(coded.any()):
        return _float_plan(name, g, w_hat)
    container = _container(int(bits[coded].max()), opset)
    if container == "float":
        logger.info(
            "layer %r: more than 8 bits and no INT16 at opset %d: stored as float", name, opset
        )
        return _float_plan(name, g, w_hat)
    codes, scales = quantize_codes(w, bits, g)
    if g is Granularity.TENSOR:
        return _LayerPlan(
            name=name,
            granularity=g,
            container=container,
            weight=w_hat,
            codes=codes,
            scales=scales,
            floats=None,
            order=None,
        )
    rows = torch.nonzero(coded).reshape(-1)
    full = torch.nonzero(~coded).reshape(-1)
    order = None
    if full.numel():
        # concat(deq[rows], w[full]) holds row rows[k] at k and full[k] at len(rows) + k
        order = torch.argsort(torch.cat([rows, full]))
    return _LayerPlan(
        name=name,
        granularity=g,
        container=container,
        weight=w_hat,
        codes=codes[rows],
        scales=scales[rows],
        floats=w_hat[full] if full.numel() else None,
        order=order,
    )


def _plans(model: nn.Module, assignment: BitAssignment, opset: int) -> dict[str, _LayerPlan]:
    """Per quantized layer of a wrapped ``model`` (fixed bits), how its weight is stored."""
    g = assignment.granularity
    plans = {}
    for name, layer in quantizable_layers(model).items():
        w = float_weight(layer).detach()
        if w.dtype != torch.float32:
            raise ValueError(
                f"layer {name!r} has {w.dtype} weights; export_onnx writes float32 models: "
                "call model.float() first"
            )
        w_hat = layer.weight.detach()
        plan = _plan_layer(name, w, w_hat, assignment.bits[name], g, opset)
        if plan.codes is not None:
            _check_exact(plan)
        plans[name] = plan
    return plans


def _check_exact(plan: _LayerPlan) -> None:
    """The codes and scales must reproduce the fake-quantized weight exactly.

    Exactly as values (``torch.equal``): a weight that rounds to ``-0.0`` in torch is code 0, i.e.
    ``+0.0`` in ONNX; every nonzero float32 is bit-identical.
    """
    assert plan.codes is not None and plan.scales is not None  # internal invariant
    deq = dequantize(plan.codes, plan.scales, plan.granularity)
    if plan.floats is not None and plan.order is not None:
        deq = torch.cat([deq, plan.floats])[plan.order]
    if not torch.equal(deq, plan.weight):
        raise RuntimeError(
            f"layer {plan.name!r}: codes x scales differ from the fake-quantized weight; "
            "the quantizer and the exporter disagree"
        )


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
    torch_onnx = _require("torch.onnx")
    _require("onnxscript")
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


def _rewrite(proto: Any, plans: dict[str, _LayerPlan]) -> None:
    """Replace each planned layer's weight initializer by codes + scales + DequantizeLinear."""
    onnx = _require("onnx")
    h, nph = onnx.helper, onnx.numpy_helper
    graph = proto.graph
    index = {t.name: i for i, t in enumerate(graph.initializer)}
    new_nodes, drop = [], set()
    for name, plan in plans.items():
        key = f"{name}.weight"
        i = index.get(key)
        if i is None:
            raise ValueError(
                f"layer {name!r}: its weight is not an initializer {key!r} of the exported graph "
                "(the exporter transformed or inlined it), so it cannot be stored as integers"
            )
        stored = nph.to_array(graph.initializer[i])
        if stored.dtype != np.float32 or not np.array_equal(stored, plan.weight.numpy()):
            raise ValueError(
                f"layer {name!r}: the exported initializer {key!r} differs from the fake-quantized "
                f"weight (dtype {stored.dtype}, shape {stored.shape}); the exporter changed it"
            )
        if plan.container == "float":
            continue
        assert plan.codes is not None and plan.scales is not None  # internal invariant
        drop.add(i)
        codes = plan.codes.numpy()
        np_dtype = {"int4": _int4_dtype(), "int8": np.int8, "int16": np.int16}[plan.container]
        q = nph.from_array(codes.astype(np_dtype), f"{key}_quantized")
        per_channel = plan.granularity is Granularity.CHANNEL
        scales = plan.scales.numpy().astype(np.float32)
        # per tensor: a scalar scale (a 1-element axis-0 scale would not broadcast over O rows)
        s = nph.from_array(scales if per_channel else scales.reshape(()), f"{key}_scale")
        inits = [q, s]
        axis = {"axis": 0} if per_channel else {}
        if plan.floats is None:
            new_nodes.append(
                h.make_node("DequantizeLinear", [q.name, s.name], [key], name=f"{key}_dq", **axis)
            )
        else:
            assert plan.order is not None  # internal invariant
            f = nph.from_array(plan.floats.numpy(), f"{key}_float")
            o = nph.from_array(plan.order.numpy().astype(np.int64), f"{key}_order")
            inits += [f, o]
            new_nodes += [
                h.make_node(
                    "DequantizeLinear", [q.name, s.name], [f"{key}_deq"], name=f"{key}_dq", **axis
                ),
                h.make_node(
                    "Concat", [f"{key}_deq", f.name], [f"{key}_rows"], name=f"{key}_cat", axis=0
                ),
                h.make_node("Gather", [f"{key}_rows", o.name], [key], name=f"{key}_order", axis=0),
            ]
        graph.initializer.extend(inits)
    kept = [t for j, t in enumerate(graph.initializer) if j not in drop]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = new_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    for node in graph.node:
        # the exporter's per-node provenance (stack traces, source paths): not part of the model
        node.doc_string = ""
        del node.metadata_props[:]


def _int4_dtype() -> Any:
    return _require("ml_dtypes").int4


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
    onnx = _require("onnx")
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


def ort_session(
    path: str | os.PathLike[str] | bytes,
    *,
    exact: bool = True,
    threads: int | None = None,
    config: Mapping[str, str] | None = None,
) -> Any:
    """An ONNX Runtime ``InferenceSession`` on the CPU for a file written by :func:`export_onnx`.

    Args:
        path: the ``.onnx`` file, or its bytes.
        exact: dequantize the weights once, when the session is created, and compute in float32
            (``session.disable_quant_qdq = 1``: ONNX Runtime then folds each constant
            ``DequantizeLinear``). The session reproduces torch eager to float rounding (the tests
            hold it to ``1e-4 x max|logit|``) at the speed of the FP32 model. ONNX Runtime's
            default instead fuses ``DequantizeLinear -> MatMul`` into ``MatMulNBits`` with
            activations quantized to int8 on the fly (``session.qdq_matmulnbits_accuracy_level``
            4), which moves a ViT's logits by about 1% of their range, and dequantizes conv
            weights on every run.
        threads: intra-op threads (default: ONNX Runtime's, one per physical core).
        config: further ONNX Runtime session config entries (``SessionOptions.add_session_config_entry``),
            e.g. ``{"session.intra_op.allow_spinning": "0"}`` when other work shares the cores.

    Returns:
        ``onnxruntime.InferenceSession`` with ``CPUExecutionProvider``; input ``"input"``
        ``[batch, C, H, W]`` float32, output ``"logits"``.
    """
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    if exact:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive int or None; got {threads!r}")
        options.intra_op_num_threads = threads
    for key, value in (config or {}).items():
        options.add_session_config_entry(str(key), str(value))
    data = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _write_atomic(payload: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; a deployed model gets the usual permissions
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    onnx = _require("onnx")
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
    plans: dict[str, _LayerPlan] = {}
    if assignment is not None:
        if rewrap:
            quantize_model(work, assignment)
        with torch.no_grad():
            plans = _plans(work, assignment, opset)
        strip_quantization(work)
    elif any(parametrize.is_parametrized(m) for m in work.modules()):
        raise ValueError("model carries parametrizations other than fq_quant's; remove them first")
    with torch.no_grad():
        proto = _export_float(work, example_input.detach().to("cpu"), opset)
    _rewrite(proto, plans)
    proto.producer_name = "fq_quant"
    onnx.checker.check_model(proto, full_check=True)
    path = Path(path)
    _write_atomic(proto.SerializeToString(), path)
    return path
