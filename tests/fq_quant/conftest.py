"""Shared fixtures of fq_quant's tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest


@pytest.fixture
def identity_onnx(tmp_path: Path) -> Callable[[int], Path]:
    """A factory: ``identity_onnx(size)`` writes a one-node ONNX model ``y = 1 * x`` with input
    ``'input'`` of shape ``[batch, 3, size, size]`` into the test's ``tmp_path`` and returns its
    path (a model whose only activations are its input and output)."""

    def write(size: int) -> Path:
        h = onnx.helper
        one = onnx.numpy_helper.from_array(np.ones((1,), np.float32), "one")
        shape = ["batch", 3, size, size]
        graph = h.make_graph(
            [h.make_node("Mul", ["input", "one"], ["y"])],
            "g",
            [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT, shape)],
            [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)],
            initializer=[one],
        )
        path = tmp_path / "mul.onnx"
        onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), str(path))
        return path

    return write
