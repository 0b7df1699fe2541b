"""How each quantized layer's weight is stored in the ONNX graph: container, codes, scales, float rows.

The plan is made from the wrapped model (:func:`plans`), checked against the fake-quantized weight
bit for bit (:func:`check_exact`), and written into the exported graph by :func:`rewrite`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ._assignment import BitAssignment
from ._codes import dequantize, quantize_codes
from ._granularity import Granularity
from ._layers import float_weight, quantizable_layers
from ._onnx_base import require, runtime_supports

logger = logging.getLogger("fq_quant.onnx")
_FULL = 32


@dataclass(frozen=True, kw_only=True)
class LayerPlan:
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


def container_for(max_bits: int, opset: int) -> str:
    if max_bits <= 4 and opset >= 21 and runtime_supports("int4"):
        return "int4"
    if max_bits <= 8:
        return "int8"
    if opset >= 21 and runtime_supports("int16"):
        return "int16"
    return "float"


def _float_plan(name: str, g: Granularity, w_hat: torch.Tensor) -> LayerPlan:
    """A layer whose weight keeps its float initializer."""
    return LayerPlan(
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
) -> LayerPlan:
    """Codes, scales and float rows of one layer; ``w``: float original, ``w_hat``: fake-quantized."""
    bits = bits.to(torch.int64)
    coded = bits < _FULL  # per scope: (1,) or (O,)
    if not bool(coded.any()):
        return _float_plan(name, g, w_hat)
    container = container_for(int(bits[coded].max()), opset)
    if container == "float":
        logger.info(
            "layer %r: more than 8 bits and no INT16 at opset %d: stored as float", name, opset
        )
        return _float_plan(name, g, w_hat)
    codes, scales = quantize_codes(w, bits, g)
    if g is Granularity.TENSOR:
        return LayerPlan(
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
    return LayerPlan(
        name=name,
        granularity=g,
        container=container,
        weight=w_hat,
        codes=codes[rows],
        scales=scales[rows],
        floats=w_hat[full] if full.numel() else None,
        order=order,
    )


def plans(model: nn.Module, assignment: BitAssignment, opset: int) -> dict[str, LayerPlan]:
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
            check_exact(plan)
        plans[name] = plan
    return plans


def check_exact(plan: LayerPlan) -> None:
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


def rewrite(proto: Any, plans: dict[str, LayerPlan]) -> None:
    """Replace each planned layer's weight initializer by codes + scales + DequantizeLinear."""
    onnx = require("onnx")
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
    return require("ml_dtypes").int4
