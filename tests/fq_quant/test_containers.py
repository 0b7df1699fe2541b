"""Per-layer storage containers: the rule, the average width and the bytes, against hand counts."""

from __future__ import annotations

import math
from pathlib import Path

import onnx
import pytest
import torch
from fq_quant import (
    BitAssignment,
    ScopeLayout,
    container_avg_bits,
    container_bytes,
    export_onnx,
    packed_size,
    quantize_model,
    weight_container,
)
from torch import nn


@pytest.mark.parametrize(
    ("bits", "available", "want"),
    [
        ([2, 3, 4], ("int4", "int8", "int16"), "int4"),
        ([0, 1, 4], ("int4", "int8", "int16"), "int4"),  # pruned and 1-bit scopes are codes too
        ([2, 2, 5], ("int4", "int8", "int16"), "int8"),
        ([8, 32], ("int4", "int8", "int16"), "int8"),  # 32-bit rows are stored apart, in float
        ([9, 2], ("int4", "int8", "int16"), "int16"),
        ([9, 2], ("int4", "int8"), "float"),  # no INT16: the whole layer stays float
        ([32, 32], ("int4", "int8", "int16"), "float"),
        ([3], ("int8",), "int8"),  # no INT4 before opset 21
    ],
)
def test_weight_container_rule(bits, available, want) -> None:
    assert weight_container(torch.tensor(bits), available=available) == want
    coded = [b for b in bits if b < 32]
    if coded:
        assert weight_container(max(coded), available=available) == want


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"bits": torch.tensor([2.0])}, TypeError),
        ({"bits": 4, "available": "int4"}, TypeError),
        ({"bits": 4, "available": ("int2",)}, ValueError),
        ({"bits": 40}, ValueError),
    ],
)
def test_weight_container_bad_input(kwargs, error) -> None:
    with pytest.raises(error):
        weight_container(**kwargs)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),  # 108 weights, 4 channels of 27
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),  # 320 weights, 5 channels of 64
    )


def test_avg_bits_and_bytes_by_hand() -> None:
    model = _model()
    layout = ScopeLayout.from_model(model, "channel")
    a = BitAssignment(
        "channel",
        {"0": torch.tensor([2, 2, 2, 5]), "3": torch.tensor([3, 4, 32, 2, 0])},
    )
    # conv: INT8 (a 5-bit channel), 108 weights; linear: INT4 for 4 coded rows, one float row
    assert container_avg_bits(a, layout) == (108 * 8 + 4 * 64 * 4 + 64 * 32) / 428
    assert a.avg_bits(layout) < container_avg_bits(a, layout)
    others = 4 * (4 + 5)  # the two biases, float32
    conv = 108 + 4 * 4  # INT8 codes + 4 scales
    linear = math.ceil(4 * 64 * 4 / 8) + 4 * 4 + 64 * 4 + 8 * 5  # codes, scales, float row, order
    assert container_bytes(model, a) == conv + linear + others
    quantize_model(model, a)
    assert container_bytes(model) == conv + linear + others  # the model's own bits


def test_uniform_4_bits_equals_the_packed_payload() -> None:
    """At U4 packing and the INT4 container agree: each is 4 bits a weight plus scales."""
    model = _model()
    layout = ScopeLayout.from_model(model, "channel")
    a = BitAssignment.uniform(layout, 4)
    assert container_avg_bits(a, layout) == 4.0
    assert container_bytes(model, a) == packed_size(model, a, header=False)


def test_container_bytes_bad_input() -> None:
    model = _model()
    with pytest.raises(ValueError, match="not quantized"):
        container_bytes(model)
    with pytest.raises(TypeError, match="BitAssignment"):
        container_bytes(model, {"0": 4})  # type: ignore[arg-type]
    layout = ScopeLayout.from_model(model, "param")
    with pytest.raises(ValueError, match="TENSOR or CHANNEL"):
        container_bytes(model, BitAssignment.uniform(layout, 4))


def test_container_bytes_tracks_the_onnx_file(tmp_path: Path) -> None:
    """The exported file is the container bytes plus its graph; a 5-bit channel makes a layer INT8."""
    model = _model()
    sizes = {}
    for label, bits in (("int4", [4, 4, 4, 4]), ("int8", [4, 4, 4, 5])):
        a = BitAssignment("channel", {"0": torch.tensor(bits), "3": torch.full((5,), 4)})
        quantize_model(model, a)
        path = tmp_path / f"{label}.onnx"
        export_onnx(model, torch.randn(1, 3, 6, 6), path)
        # metadata_props (bits per layer, ...) differ between the two files by design: count
        # the model without them
        proto = onnx.load(str(path))
        del proto.metadata_props[:]
        sizes[label] = (len(proto.SerializeToString()), container_bytes(model))
    # the graph adds the same few KiB to both; protobuf length prefixes may differ by a byte or two
    for file_size, counted in sizes.values():
        assert 0 < file_size - counted < 8192
    counted_diff = sizes["int8"][1] - sizes["int4"][1]
    assert counted_diff == 108 - math.ceil(108 * 4 / 8)
    assert abs((sizes["int8"][0] - sizes["int4"][0]) - counted_diff) <= 4
