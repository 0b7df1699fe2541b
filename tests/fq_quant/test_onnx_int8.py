"""Integer activations: parity with a torch reference, group-balanced ranges, clipping, metadata.

References: ``int8_reference`` runs the torch program with fake-quantized activations (no ONNX
Runtime); the group-balanced rule is checked on a hand-worked two-group case; clipping is counted
against values computed in numpy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
from fq_quant import (
    ActivationRanges,
    BitAssignment,
    ScopeLayout,
    calibrate_activations,
    clipped_fractions,
    export_onnx,
    export_packed,
    int8_reference,
    ort_session,
    quantize_model,
    tensors_sha256,
    widest_ranges,
)
from torch import nn

S = 32


def _batches(n: int, batch: int, *, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch, 3, S, S, generator=g),
            torch.zeros(batch, dtype=torch.long),
            torch.arange(batch) % 2,
        )
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def resnet_int8(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, Path]:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10).eval()
    quantize_model(model, BitAssignment.uniform(ScopeLayout.from_model(model, "channel"), 4))
    d = tmp_path_factory.mktemp("int8")
    packed = export_packed(model, d / "r18.safetensors")
    path = export_onnx(
        model,
        torch.randn(1, 3, S, S),
        d / "r18-int8.onnx",
        activations="int8",
        calibration=_batches(4, 16),
        group_balanced=True,
        class_names=[f"c{i}" for i in range(10)],
        normalization={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        packed=packed,
    )
    return model, path, packed


def test_resnet18_int8_matches_torch_reference(resnet_int8: tuple[nn.Module, Path, Path]) -> None:
    model, path, _ = resnet_int8
    ref = int8_reference(model, torch.randn(1, 3, S, S), path)
    x = torch.cat([b[0] for b in _batches(4, 50, seed=7)])  # 200 images not used to calibrate
    got = ort_session(path, exact=False).run(None, {"input": x.numpy()})[0]
    want = ref(x).numpy()
    agree = float((got.argmax(1) == want.argmax(1)).mean())
    err = float(np.abs(got - want).max() / np.abs(want).max())
    assert agree >= 0.995, agree
    assert err < 1e-3, err
    with torch.no_grad():
        fp = model(x).numpy()  # activation rounding does change the outputs: the check has teeth
    assert np.abs(fp - want).max() > 10 * np.abs(got - want).max()


def test_deit_int8_matches_torch_reference(tmp_path: Path) -> None:
    """A transformer (MatMul path, LayerNorm, attention, position embedding) at 32 px.

    timm initialises the class token to ~1e-6 against position embeddings of ~0.02, so in a
    random DeiT that token spans one or two codes of the residual stream's range, and its
    LayerNorm magnifies a single tie rounded the other way by ONNX Runtime's integer kernels
    about 14-fold (measured); a trained class token does not. It is drawn like the other tokens here.
    """
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", num_classes=10, img_size=S).eval()
    with torch.no_grad():
        model.cls_token.normal_(0.0, 1.0)
    quantize_model(model, BitAssignment.uniform(ScopeLayout.from_model(model, "channel"), 4))
    path = export_onnx(
        model,
        torch.randn(1, 3, S, S),
        tmp_path / "deit.onnx",
        activations="int8",
        calibration=_batches(4, 16),
    )
    proto = onnx.load(str(path))
    inits = {t.name: t for t in proto.graph.initializer}
    quantized = {
        n.input[0]
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits
    }
    # only weight codes and int32 biases are rounded: LayerNorm scales and the position
    # embedding stay float, as in the reference
    assert not {q for q in quantized if "norm" in q or "pos_embed" in q}
    int8_weights = [q for q in quantized if inits[q].data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) == 50  # patch embedding + 4 linears x 12 blocks + the head
    float_in = _float_input_products(proto)
    # the one exception: the two attention products of each block (q k^T and softmax v) read
    # values computed inside the exporter's scaled_dot_product_attention function (q and k
    # scaled by sqrt(scale), the softmax), which the torch program cannot name, so the
    # reference could not round them; every product with a weight gets integer inputs
    assert len(float_in) == 2 * 12
    for node, sources in float_in:
        assert node.op_type == "MatMul" and "Initializer" not in sources
        assert {"Softmax", "Mul"} & set(sources), sources
    ref = int8_reference(model, torch.randn(1, 3, S, S), path)
    x = torch.cat([b[0] for b in _batches(4, 50, seed=7)])
    got = ort_session(path, exact=False).run(None, {"input": x.numpy()})[0]
    want = ref(x).numpy()
    agree = float((got.argmax(1) == want.argmax(1)).mean())
    err = float(np.abs(got - want).max())
    assert agree >= 0.995, agree
    assert err < 0.05 * float(np.abs(want).max()), err
    with torch.no_grad():
        fp = model(x).numpy()
    assert float(np.abs(fp - want).max()) > err  # closer to the reference than to float


def _float_input_products(proto: onnx.ModelProto) -> list[tuple[onnx.NodeProto, list[str]]]:
    """The Conv/Gemm/MatMul nodes of a QDQ graph with an input (bias aside) that is not the
    output of a DequantizeLinear, with the op types that produce their inputs."""
    producer = {o: n.op_type for n in proto.graph.node for o in n.output}
    producer.update({t.name: "Initializer" for t in proto.graph.initializer})
    out = []
    for node in proto.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            sources = [producer.get(i, "GraphInput") for i in node.input[:2]]
            if any(s != "DequantizeLinear" for s in sources):
                out.append((node, sources))
    return out


def test_resnet18_every_product_has_integer_inputs(
    resnet_int8: tuple[nn.Module, Path, Path],
) -> None:
    """Every Conv and the classifier's Gemm (whose input is the Reshape of the pooled features)
    read quantized activations and int8 weights in the file; none is left float."""
    proto = onnx.load(str(resnet_int8[1]))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Conv") == 20 and ops.count("Gemm") == 1
    assert _float_input_products(proto) == []


def test_resnet18_int8_runs_integer_kernels(
    resnet_int8: tuple[nn.Module, Path, Path], tmp_path: Path
) -> None:
    _, path, _ = resnet_int8
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    options.add_session_config_entry("session.disable_prepacking", "1")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert ops.count("QLinearConv") == 20 and "Conv" not in ops
    assert ops.count("QGemm") == 1 and "Gemm" not in ops  # the classifier too
    weights = {
        t.name: onnx.numpy_helper.to_array(t)
        for t in onnx.load(str(path)).graph.initializer
        if t.name.endswith("weight_quantized")
    }
    assert {f"{n}.weight_quantized" for n in ("conv1", "layer4.1.conv2", "fc")} <= set(weights)
    assert len(weights) == 21  # 20 convs and the classifier
    for w in weights.values():  # U4 codes held in int8 containers
        assert w.dtype == np.int8 and np.abs(w).max() <= 7


def test_metadata_and_batch_name(resnet_int8: tuple[nn.Module, Path, Path]) -> None:
    _, path, packed = resnet_int8
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == [f"c{i}" for i in range(10)]
    assert json.loads(meta["input_shape"]) == [3, S, S]
    assert json.loads(meta["normalization"])["std"] == [0.25, 0.25, 0.25]
    assert json.loads(meta["bits_per_layer"])["conv1"] == {"4": 64}
    assert meta["packed_content_sha256"] == tensors_sha256(packed.read_bytes())
    assert json.loads(meta["activations"])["group_balanced"] is True
    for v in [*proto.graph.input, *proto.graph.output]:
        assert v.type.tensor_type.shape.dim[0].dim_param == "batch"


def test_widest_ranges_hand_worked() -> None:
    a = ActivationRanges({"t": (-1.0, 2.0), "u": (0.0, 5.0)}, estimator="percentile")
    b = ActivationRanges({"t": (-3.0, 1.5), "v": (0.0, 1.0)}, estimator="percentile")
    w = widest_ranges({0: a, 1: b})
    assert dict(w.ranges) == {"t": (-3.0, 2.0), "u": (0.0, 5.0), "v": (0.0, 1.0)}
    assert w.group_balanced and w.groups == (0, 1)
    with pytest.raises(ValueError, match="per_group"):
        widest_ranges({})
    with pytest.raises(ValueError, match="low <= high"):
        ActivationRanges({"t": (1.0, 0.0)})


def test_range_fitted_to_one_group_clips_the_other(identity_onnx: Callable[[int], Path]) -> None:
    """Group 1 is dim (x in [0, 0.1)), group 0 bright (x in [0, 1)). A range fitted to group 1
    clips most of group 0; the group-balanced percentile range clips neither group much."""
    path = identity_onnx(S)
    g = torch.Generator().manual_seed(0)
    bright = torch.rand(8, 3, S, S, generator=g)
    dim = 0.1 * torch.rand(8, 3, S, S, generator=g)
    mixed = [
        (
            torch.cat([bright, dim]),
            torch.zeros(16, dtype=torch.long),
            torch.tensor([0] * 8 + [1] * 8),
        )
    ]
    only_dim = calibrate_activations(path, [dim], estimator="minmax")
    hi = only_dim.ranges["y"][1]
    assert hi == pytest.approx(float(dim.max()), rel=1e-6)
    clipped = clipped_fractions(path, mixed, only_dim)
    want0 = float((bright > hi).float().mean())  # counted directly on the inputs
    assert clipped[0]["y"] == pytest.approx(want0, abs=1e-6) and want0 > 0.85
    assert clipped[1]["y"] == 0.0
    balanced = calibrate_activations(path, mixed, estimator="percentile", group_balanced=True)
    fractions = clipped_fractions(path, mixed, balanced)
    assert max(fractions[0]["y"], fractions[1]["y"]) < 1e-3
    assert balanced.ranges["y"][1] >= only_dim.ranges["y"][1]


def test_bad_arguments(
    resnet_int8: tuple[nn.Module, Path, Path],
    tmp_path: Path,
    identity_onnx: Callable[[int], Path],
) -> None:
    model, _, _ = resnet_int8
    x = torch.randn(1, 3, S, S)
    with pytest.raises(ValueError, match="activations must be"):
        export_onnx(model, x, tmp_path / "a.onnx", activations="int4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs calibration"):
        export_onnx(model, x, tmp_path / "a.onnx", activations="int8")
    with pytest.raises(ValueError, match="normalization"):
        export_onnx(model, x, tmp_path / "a.onnx", normalization={"mean": [0.5]})
    with pytest.raises(ValueError, match="packed"):
        export_onnx(model, x, tmp_path / "a.onnx", packed="not-a-file")
    with pytest.raises(ValueError, match="estimator"):
        calibrate_activations(identity_onnx(S), [x], estimator="mse")  # type: ignore[arg-type]
    assert not (tmp_path / "a.onnx").exists()
