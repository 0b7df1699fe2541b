"""Shared pieces of the ONNX export: the optional extra, opset constants, the runtime, atomic writes."""

from __future__ import annotations

import functools
import importlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

#: Opset used when ``opset=None``: the first with INT4/INT16 ``DequantizeLinear``.
DEFAULT_OPSET = 21
#: Lowest opset the ``torch.export``-based exporter writes.
MIN_OPSET = 18
#: Graph input and output names of an exported model.
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"fq_quant.export_onnx needs the optional extra 'onnx' (module {module!r} is missing): "
            "from a clone, pip install './packages/fq-quant[onnx]' (the uv workspace already has it)"
        ) from exc


@functools.cache
def runtime_supports(container: str) -> bool:
    """Whether the installed ONNX Runtime (CPU) dequantizes per-axis ``container`` weights.

    ``container``: ``"int4"`` or ``"int16"`` (opset 21 types; INT8 is always supported).
    """
    onnx = require("onnx")
    ort = require("onnxruntime")
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
    ort = require("onnxruntime")
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


def write_atomic(payload: bytes, path: Path) -> None:
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
