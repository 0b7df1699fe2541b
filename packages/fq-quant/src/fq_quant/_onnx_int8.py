"""Integer activations: a QDQ graph that ONNX Runtime runs as QLinearConv / QLinearMatMul / QGemm.

Steps (METHOD.md section 10; the fq-quant README says what is ONNX Runtime's and what is ours):

1. ``prepare``: the float graph of the fake-quantized model, with each ``Conv -> BatchNormalization``
   folded into the conv (per channel ``k = gamma / sqrt(var + eps)``: the codes keep their values,
   up to the sign of ``k``, and the scale becomes ``s |k|``) and each ``Transpose`` of a weight
   folded into an initializer (axis 1), then ONNX Runtime's basic graph optimizations (constant
   folding) written out once.
2. ranges: :func:`fq_quant.calibrate_activations` (ONNX Runtime's calibrators).
3. ``quantize``: ``onnxruntime.quantization.quantize_static`` in QDQ format, unsigned int8
   activations, signed int8 weights per channel, with the toolkit's scales given as
   ``TensorQuantOverrides`` (so ONNX Runtime's weight codes are ``round(w / s)`` = our codes) and the
   ranges given as its calibration cache. Nodes whose activation has no name in the torch program
   (values inside one decomposed aten op) are left float, so :func:`activation_reference` can
   reproduce every rounding in torch.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._act_ranges import ActivationRanges, calibration_method
from ._onnx_base import INPUT_NAME, require

#: Op types whose own output stays float (their consumers quantize it where they need to).
_FLOAT_OUTPUT = ("MatMul", "Gemm")


def zero_channel_scales(w: np.ndarray, scales: np.ndarray, axis: int) -> np.ndarray:
    """``scales`` ``[O]`` with each all-zero channel's scale replaced by the layer's largest one.

    ``w``: the float weight, channels along ``axis``. A pruned channel (0 bits: scale 0), or one
    whose BatchNorm factor is 0, has codes 0 under any scale, but its scale also sets the int32
    bias's step (``s_in * s_w``): a 0 or tiny scale would overflow the bias (ONNX Runtime clips it
    to the int32 range, so the channel's constant output would be wrong). The largest scale of the
    layer's other channels gives the bias the coarsest step the layer already accepts; 1.0 when
    every channel is zero.
    """
    dims = tuple(d for d in range(w.ndim) if d != axis)
    zero = ~np.any(w != 0, axis=dims)
    if not zero.any():
        return scales
    live = scales[~zero]
    fill = float(live.max()) if live.size and float(live.max()) > 0 else 1.0
    return np.where(zero, np.float32(fill), scales).astype(np.float32)


def prepare(proto: Any, weight_scales: Mapping[str, np.ndarray], tmp: str) -> tuple[Path, dict]:
    """Fold BatchNorm and weight transposes, constant-fold with ONNX Runtime; the path and overrides.

    ``weight_scales``: per quantized weight initializer ``L.weight``, the ``[O]`` float32 scales
    (all coded scopes <= 8 bits). Returns the prepared file and ``{initializer: (scales, axis)}``.
    """
    onnx = require("onnx")
    ort = require("onnxruntime")
    nph = onnx.numpy_helper
    graph = proto.graph
    init = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers = collections.Counter(i for n in graph.node for i in n.input)
    meta: dict[str, tuple[np.ndarray, int]] = {k: (v, 0) for k, v in weight_scales.items()}
    new: dict[str, np.ndarray] = {}
    drop = []
    for i, node in enumerate(graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"

    def array(name: str) -> np.ndarray:
        return new[name] if name in new else nph.to_array(init[name])

    for node in graph.node:
        conv = producer.get(node.input[0]) if node.input else None
        if (
            node.op_type == "BatchNormalization"
            and conv is not None
            and conv.op_type == "Conv"
            and consumers[conv.output[0]] == 1
            and conv.input[1] in meta
            and all(i in init for i in node.input[1:5])
        ):
            gamma, beta, mean, var = (
                nph.to_array(init[i]).astype(np.float64) for i in node.input[1:5]
            )
            eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
            k = gamma / np.sqrt(var + eps)
            w = array(conv.input[1]).astype(np.float64)
            has_bias = len(conv.input) > 2 and conv.input[2] in init
            b = array(conv.input[2]).astype(np.float64) if has_bias else np.zeros(w.shape[0])
            new[conv.input[1]] = (w * k.reshape(-1, *[1] * (w.ndim - 1))).astype(np.float32)
            bias = conv.input[1].removesuffix("weight") + "bias_folded"
            new[bias] = ((b - mean) * k + beta).astype(np.float32)
            if len(conv.input) > 2:
                conv.input[2] = bias
            else:
                conv.input.append(bias)
            s, axis = meta[conv.input[1]]
            meta[conv.input[1]] = ((s * np.abs(k)).astype(np.float32), axis)
            conv.output[0] = node.output[0]
            drop.append(node)
        elif (
            node.op_type == "Transpose" and node.input[0] in meta and array(node.input[0]).ndim == 2
        ):
            new[node.output[0]] = np.ascontiguousarray(array(node.input[0]).T)
            meta[node.output[0]] = (meta[node.input[0]][0], 1)
            drop.append(node)
    for node in drop:
        graph.node.remove(node)
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name not in new and t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + [nph.from_array(a, n) for n, a in new.items() if n in used])
    meta = {k: v for k, v in meta.items() if k in used}
    raw, out = os.path.join(tmp, "float.onnx"), Path(tmp) / "prepared.onnx"
    onnx.save(proto, raw)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(raw, options, providers=["CPUExecutionProvider"])
    folded = {t.name: t for t in onnx.load(str(out)).graph.initializer}
    for name, (scales, axis) in list(meta.items()):
        if name not in folded:
            raise RuntimeError(f"weight {name!r} was changed by ONNX Runtime's graph optimizations")
        w = nph.to_array(folded[name])
        scales = zero_channel_scales(w, scales, axis)
        meta[name] = (scales, axis)
        ratio = w / scales.reshape([-1 if d == axis else 1 for d in range(w.ndim)])
        if np.abs(ratio - np.round(ratio)).max() > 1e-3 or np.abs(ratio).max() > 127.5:
            raise RuntimeError(f"weight {name!r} is not int8 codes x its per-channel scale")
    return out, meta


def _overrides(meta: Mapping[str, tuple[np.ndarray, int]]) -> dict[str, list[dict[str, Any]]]:
    return {
        name: [
            {
                "axis": axis,
                "scale": np.array(s, np.float32),
                "zero_point": np.array(0, np.int8),
            }
            for s in scales
        ]
        for name, (scales, axis) in meta.items()
    }


def quantize(
    prepared: Path,
    meta: Mapping[str, tuple[np.ndarray, int]],
    ranges: ActivationRanges,
    named: set[str],
    exclude: list[str],
    tmp: str,
) -> Any:
    """``quantize_static`` (QDQ, U8 activations, S8 per-channel weights); the quantized proto.

    ``named``: activation tensors the torch reference can name; a node whose quantized activation
    is not among them is excluded and the graph re-quantized (at most 10 rounds).
    """
    onnx = require("onnx")
    quant = require("onnxruntime.quantization")
    cal = require("onnxruntime.quantization.calibrate")
    cache = os.path.join(tmp, "ranges.json")
    data = {
        k: cal.TensorData(lowest=np.float32(lo), highest=np.float32(hi))
        for k, (lo, hi) in ranges.ranges.items()
    }
    cal.save_tensors_data(cal.TensorsData(calibration_method(ranges.estimator), data), cache)
    excluded = list(exclude)
    out = os.path.join(tmp, "int8.onnx")
    bad: set[str] = set()
    for _ in range(10):
        quant.quantize_static(
            str(prepared),
            out,
            calibration_data_reader=None,
            quant_format=quant.QuantFormat.QDQ,
            per_channel=True,
            activation_type=quant.QuantType.QUInt8,
            weight_type=quant.QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=calibration_method(ranges.estimator),
            calibration_cache_path=cache,
            extra_options={
                "TensorQuantOverrides": _overrides(meta),
                "WeightSymmetric": True,
                "ActivationSymmetric": False,
                # a MatMul's or Gemm's own output is left float; its consumers quantize it where
                # they can (ORT then runs MatMulIntegerToFloat / QGemm with float output, or
                # QLinearMatMul where a Q follows). A classifier's Gemm writes the graph output,
                # which the torch program does not name: quantizing it would exclude the Gemm
                "OpTypesToExcludeOutputQuantization": list(_FLOAT_OUTPUT),
            },
        )
        proto = onnx.load(out)
        bad = _unnamed(proto, named) | _quantized_constants(proto, meta)
        if not bad:
            return proto
        excluded += sorted(bad - set(excluded))
    raise RuntimeError(
        f"could not place activation quantizers on named tensors only; still unnamed at {sorted(bad)[:8]}"
    )


def _unnamed(proto: Any, named: set[str]) -> set[str]:
    """Names of the nodes of the float graph that quantize a tensor the torch program cannot name."""
    inits = {t.name for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    by_input = collections.defaultdict(list)
    for n in proto.graph.node:
        for i in n.input:
            by_input[i].append(n)
    bad = set()
    for q in proto.graph.node:
        t = q.input[0] if q.op_type == "QuantizeLinear" else None
        if t is None or t in inits or t in named:
            continue
        src = producer.get(t)
        # a MatMul or Gemm never quantizes its own output here (OpTypesToExcludeOutputQuantization)
        if src is not None and src.op_type not in _FLOAT_OUTPUT:
            bad.add(src.name)
        for dq in by_input[q.output[0]]:
            for user in by_input[dq.output[0]]:
                bad.add(user.name)
    return bad


def _quantized_constants(proto: Any, meta: Mapping[str, tuple[np.ndarray, int]]) -> set[str]:
    """Nodes that read a quantized initializer other than a layer's weight codes or an int32 bias.

    ONNX Runtime also rounds a LayerNorm's scale to int8 and a constant addend (a ViT's position
    embedding) to uint8; the torch reference keeps those float, so such nodes are left float. An
    int32 bias (scale ``s_in * s_w``, the integer kernels' accumulator) is kept: its rounding is
    below the accumulator's resolution.
    """
    onnx = require("onnx")
    inits = {t.name: t for t in proto.graph.initializer}
    weights = {f"{name}_quantized" for name in meta}
    by_input = collections.defaultdict(list)
    for n in proto.graph.node:
        for i in n.input:
            by_input[i].append(n)
    bad: set[str] = set()
    for dq in proto.graph.node:
        if dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        t = inits[dq.input[0]]
        if t.name in weights or t.data_type == onnx.TensorProto.INT32:
            continue
        bad.update(user.name for user in by_input[dq.output[0]])
    return bad


def activation_params(proto: Any) -> dict[str, tuple[float, int, int, int]]:
    """Per activation tensor quantized in an int8 file: ``(scale, zero_point, qmin, qmax)``."""
    onnx = require("onnx")
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    out = {}
    for node in proto.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        zp = inits[node.input[2]]
        info = np.iinfo(zp.dtype)
        out[node.input[0]] = (float(inits[node.input[1]]), int(zp), int(info.min), int(info.max))
    return out


def int32_biases(proto: Any) -> dict[str, torch.Tensor]:
    """Per bias the int8 file holds as int32 codes (``name_quantized``): its dequantized float32 value."""
    onnx = require("onnx")
    nph = onnx.numpy_helper
    inits = {t.name: t for t in proto.graph.initializer}
    out = {}
    for node in proto.graph.node:
        t = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if t is None or t.data_type != onnx.TensorProto.INT32:
            continue
        codes = nph.to_array(t).astype(np.float64)
        scale = nph.to_array(inits[node.input[1]]).astype(np.float64)
        out[t.name.removesuffix("_quantized")] = torch.from_numpy(
            (codes * scale).astype(np.float32)
        )
    return out


def fake_quant(
    x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int
) -> torch.Tensor:
    """``(clamp(round(x / s) + z, qmin, qmax) - z) * s`` in float32 (round half to even)."""
    q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def reference_module(
    program: Any,
    params: Mapping[str, tuple[float, int, int, int]],
    biases: Mapping[str, torch.Tensor] | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Run the torch program with each named activation fake-quantized as the ONNX file does it.

    ``biases``: ``{parameter name: value}`` replacing the program's biases (the file's int32
    biases, dequantized); a conv's folded bias ``L.bias_folded`` shifts the bias of the
    BatchNorm after it by the file's rounding (:func:`_mirror_folded`); other names are ignored.
    """
    gm = program.module()
    for name, value in (biases or {}).items():
        _set_tensor(gm, name, value)
    fx = require("torch.fx")
    _mirror_folded(gm, biases or {}, fx)
    inputs = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    alias = {inputs[0]: INPUT_NAME} if inputs else {}

    class _Interp(fx.Interpreter):  # type: ignore[name-defined]
        def run_node(self, n: Any) -> Any:
            out = super().run_node(n)
            p = params.get(alias.get(n.name, n.name))
            if p is not None and isinstance(out, torch.Tensor):
                out = fake_quant(out, *p)
            return out

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return _Interp(gm).run(x)

    return run


def _set_tensor(gm: Any, name: str, value: torch.Tensor) -> None:
    """Replace the parameter ``name`` of ``gm`` by ``value`` where it exists with that shape."""
    owner, _, leaf = name.rpartition(".")
    try:
        module = gm.get_submodule(owner)
    except AttributeError:
        return
    old = getattr(module, leaf, None)
    if isinstance(old, torch.Tensor) and old.shape == value.shape:
        setattr(module, leaf, torch.nn.Parameter(value.to(old.dtype), requires_grad=False))


def _mirror_folded(gm: Any, biases: Mapping[str, torch.Tensor], fx: Any) -> None:
    """Give each ``BN(conv(x))`` the bias the file holds for the folded conv.

    The file stores ``conv_folded(x) + b`` with ``b`` (``L.bias_folded``) the folded bias
    ``(c - mean) k + beta`` (``c``: the conv's bias, ``k = gamma / sqrt(var + eps)``) rounded to
    int32 codes. Adding that rounding, ``b - ((c - mean) k + beta)`` in float64, to the
    BatchNorm's ``beta`` makes the reference compute the same function, BatchNorm still unfolded.
    """

    def attr(node: Any) -> str | None:
        ok = isinstance(node, fx.Node) and node.op == "get_attr"
        return str(node.target) if ok else None

    def fetch(target: str) -> torch.Tensor:
        out = gm
        for part in target.split("."):
            out = getattr(out, part)
        return out.detach().double()

    for node in gm.graph.nodes:
        if node.op != "call_function" or "batch_norm" not in str(node.target):
            continue
        conv = node.args[0]
        if not (isinstance(conv, fx.Node) and "conv" in str(conv.target)):
            continue
        weight = attr(conv.args[1]) if len(conv.args) > 1 else None
        key = weight.removesuffix("weight") + "bias_folded" if weight else None
        names = [attr(a) for a in node.args[1:5]]
        if key is None or key not in biases or None in names or len(node.args) < 7:
            continue
        gamma, beta, mean, var = (fetch(n) for n in names)  # type: ignore[arg-type]
        c_name = attr(conv.args[2]) if len(conv.args) > 2 else None
        c = fetch(c_name) if c_name else torch.zeros_like(mean)
        folded = (c - mean) * gamma / torch.sqrt(var + float(node.args[6])) + beta
        _set_tensor(gm, str(names[1]), beta + biases[key].double() - folded)


def program_names(program: Any) -> set[str]:
    """The value names of a ``torch.export`` program's graph (the ONNX exporter keeps them)."""
    return {n.name for n in program.graph.nodes} | {INPUT_NAME}


def describe(ranges: ActivationRanges) -> dict[str, Any]:
    """The ``activations`` metadata entry of an int8 file."""
    return {
        "dtype": "int8",
        "estimator": ranges.estimator,
        "group_balanced": ranges.group_balanced,
        "tensors": len(ranges.ranges),
    }


def int8_reference(
    model: torch.nn.Module, example_input: torch.Tensor, path: str | os.PathLike[str]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A torch reference of an int8 file of :func:`export_onnx`: same weights, same activation rounding.

    ``model``: the quantized model that was exported (not modified); ``path``: its int8 ``.onnx``.
    The returned function maps ``[B, C, H, W]`` float32 to logits ``[B, K]``, running the
    ``torch.export`` program of the fake-quantized model in float32 with every activation the file
    quantizes fake-quantized by the file's own scale and zero point, and each bias the file holds
    as int32 (a conv's or the classifier's) replaced by its dequantized value. BatchNorm stays
    unfolded, its bias shifted by the rounding of the file's int32 folded bias, so the two differ
    by float rounding, by the runtime's integer accumulation and requantization, and by ties
    those move across a rounding boundary.
    """
    from ._onnx import export_program  # the one home of the traced program

    onnx = require("onnx")
    proto = onnx.load(str(path))
    params = activation_params(proto)
    if not params:
        raise ValueError(f"{path} has no quantized activations (not an activations='int8' export)")
    return reference_module(export_program(model, example_input), params, int32_biases(proto))
