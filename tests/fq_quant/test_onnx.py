"""ONNX export with integer weights, checked in ONNX Runtime against torch eager.

References here are independent of the exporter: torch's own fake-quantized forward and weights,
the packed file's bit stream decoded by hand (``np.unpackbits``), and a size formula written out.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
import torchvision
from fq_quant import (
    BitAssignment,
    ScopeLayout,
    export_onnx,
    export_packed,
    is_quantized,
    ort_session,
    plain_state_dict,
    quantizable_layers,
    quantize_model,
    unpack_attention,
)
from fq_quant.__main__ import main as cli_main
from safetensors import safe_open
from torch import nn

SEED = 0


def _session(path: Path | bytes) -> ort.InferenceSession:
    return ort_session(path)


def _mixed(
    model: nn.Module, *, full: int | None = None, pruned: int | None = None
) -> BitAssignment:
    """Per-channel bits uniform in 2..8; layer index ``full`` at 32 bits, ``pruned`` at 0, and the
    layer after ``full`` with every third channel at 32 bits (float rows inside a coded layer)."""
    layout = ScopeLayout.from_model(model, "channel")
    g = torch.Generator().manual_seed(SEED)
    bits = {n: torch.randint(2, 9, s.scope_shape, generator=g) for n, s in layout.layers.items()}
    names = list(bits)
    if full is not None:
        bits[names[full]][:] = 32
        bits[names[full + 1]][::3] = 32
    if pruned is not None:
        bits[names[pruned]][:] = 0
    return BitAssignment("channel", bits)


def _weights_in_ort(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """The weights ``L.weight`` as ONNX Runtime computes them (extra graph outputs)."""
    proto = onnx.load(str(path))
    for n in names:
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(f"{n}.weight"))
    sess = _session(proto.SerializeToString())
    x = np.zeros([1] + [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]])
    outs = sess.run([f"{n}.weight" for n in names], {"input": x.astype(np.float32)})
    return dict(zip(names, outs, strict=True))


def _check_against_torch(model: nn.Module, path: Path, size: int, n: int = 512) -> None:
    """Logits within 1e-4 x max|logit|, argmax equal on >= 99.9% of ``n`` random inputs, the
    dequantized weights equal to torch's fake-quantized ones, and the checker's full check."""
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x).numpy()
    got = _session(path).run(None, {"input": x.numpy()})[0]  # batch n; exported with batch 1
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.999
    layers = quantizable_layers(model)
    deq = _weights_in_ort(path, list(layers))
    for name, layer in layers.items():
        # exact: the same float32 numbers (torch.equal treats -0.0 and +0.0 as equal)
        assert torch.equal(torch.from_numpy(deq[name]), layer.weight.detach()), name


def _tv_vit() -> nn.Module:
    return unpack_attention(
        torchvision.models.VisionTransformer(
            image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
            num_classes=5,
        )
    )  # fmt: skip


ARCHS = {
    # name: (builder, image size)
    "resnet18": (lambda: timm.create_model("resnet18", num_classes=5), 32),
    "resnet50": (lambda: timm.create_model("resnet50", num_classes=5), 32),
    "mobilenetv3_small_100": (
        lambda: timm.create_model("mobilenetv3_small_100", num_classes=5),
        32,
    ),
    "deit_tiny_patch16_224": (
        lambda: timm.create_model("deit_tiny_patch16_224", num_classes=5, img_size=32),
        32,
    ),
    "tiny_vit_5m_224": (lambda: timm.create_model("tiny_vit_5m_224", num_classes=5), 32),
    "torchvision_vit": (_tv_vit, 32),
}


def _export_mixed(arch: str, folder: Path) -> tuple[nn.Module, BitAssignment, Path]:
    torch.manual_seed(SEED)
    build, size = ARCHS[arch]
    model = build().eval()
    assignment = _mixed(model, full=1, pruned=3)
    quantize_model(model, assignment)
    path = export_onnx(model, torch.randn(1, 3, size, size), folder / f"{arch}.onnx")
    return model, assignment, path


@pytest.fixture(scope="module")
def resnet18_mixed(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[nn.Module, BitAssignment, Path]:
    """One export shared by the tests that read it (an export costs seconds)."""
    return _export_mixed("resnet18", tmp_path_factory.mktemp("resnet18"))


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCHS))
def test_onnx_runtime_matches_torch_mixed_2_to_8(
    arch: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if arch == "resnet18":
        model, _, path = request.getfixturevalue("resnet18_mixed")
    else:
        model, _, path = _export_mixed(arch, tmp_path)
    _check_against_torch(model, path, ARCHS[arch][1])


def _test_resnet() -> nn.Module:
    """timm's 0.5M-weight ResNet for tests: the same blocks as resnet18, exported in ~1 s."""
    torch.manual_seed(SEED)
    return timm.create_model("test_resnet", num_classes=5).eval()


def _initializers(path: Path) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in onnx.load(str(path)).graph.initializer}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("bits", "dtype"), [(4, onnx.TensorProto.INT4), (8, onnx.TensorProto.INT8)]
)
def test_uniform_bits_use_the_narrowest_container(bits: int, dtype: int, tmp_path: Path) -> None:
    model = _test_resnet()
    quantize_model(model, BitAssignment.uniform(ScopeLayout.from_model(model, "channel"), bits))
    path = export_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "m.onnx")
    _check_against_torch(model, path, 32, n=64)
    inits = _initializers(path)
    for name in quantizable_layers(model):
        assert f"{name}.weight" not in inits  # no float copy left behind
        assert inits[f"{name}.weight_quantized"].data_type == dtype
        assert list(inits[f"{name}.weight_scale"].dims) == [model.get_submodule(name).out_channels
                                                         if hasattr(model.get_submodule(name), "out_channels")
                                                         else model.get_submodule(name).out_features]  # fmt: skip
    nodes = onnx.load(str(path)).graph.node
    dq = [n for n in nodes if n.op_type == "DequantizeLinear"]
    assert len(dq) == len(quantizable_layers(model))
    assert all(a.name == "axis" and a.i == 0 for n in dq for a in n.attribute)


def _packed_codes(
    path: Path, name: str, bits: torch.Tensor, shape: tuple[int, ...]
) -> dict[int, np.ndarray]:
    """Decode a packed file's bit stream by hand: per width b, the codes (offset by Q_b) in file order.

    The packed layout: the weight's elements grouped by width ascending, row-major inside a group,
    every code LSB first in one little-endian bit stream.
    """
    with safe_open(str(path), framework="np") as f:
        stream = f.get_tensor(f"{name}.weight:codes")
    flat_bits = np.unpackbits(stream, bitorder="little")
    per_row = math.prod(shape[1:])
    out, pos = {}, 0
    for b in sorted({int(v) for v in bits.tolist() if 1 <= v < 32}):
        n = int((bits == b).sum()) * per_row
        chunk = flat_bits[pos : pos + n * b].reshape(n, b).astype(np.int64)
        out[b] = (chunk << np.arange(b)).sum(1)
        pos += n * b
    return out


@pytest.mark.slow
def test_codes_equal_the_packed_export_and_the_size_formula_holds(
    resnet18_mixed: tuple[nn.Module, BitAssignment, Path], tmp_path: Path
) -> None:
    model, assignment, path = resnet18_mixed
    packed = export_packed(model, tmp_path / "m.safetensors")
    inits = _initializers(path)
    names = list(quantizable_layers(model))
    expected_bytes = 0
    for name in names:
        bits = assignment.bits[name].to(torch.int64)
        shape = tuple(model.get_submodule(name).weight.shape)
        per_row = math.prod(shape[1:])
        coded = bits < 32
        if not bool(coded.any()):  # the 32-bit layer: its float weight, untouched
            assert f"{name}.weight_quantized" not in inits
            expected_bytes += 4 * math.prod(shape)
            continue
        q = onnx.numpy_helper.to_array(inits[f"{name}.weight_quantized"]).astype(np.int64)
        container = 4 if int(bits[coded].max()) <= 4 else 8
        assert inits[f"{name}.weight_quantized"].data_type == {4: 22, 8: 3}[container]
        rows = bits[coded]
        assert q.shape == (int(coded.sum()), *shape[1:])
        by_width = _packed_codes(packed, name, bits, shape)
        for b, want in by_width.items():
            got = q[(rows == b).numpy()].reshape(-1) + (2 ** (b - 1) - 1)
            np.testing.assert_array_equal(got, want)
        assert not q[(rows == 0).numpy()].any()  # pruned rows are code 0
        # size formula: codes in their container, a float32 scale per coded row, float rows + order
        n_full = int((~coded).sum())
        expected_bytes += math.ceil(int(coded.sum()) * per_row * container / 8) + 4 * int(
            coded.sum()
        )
        if n_full:
            expected_bytes += 4 * n_full * per_row + 8 * shape[0]
    pruned = _weights_in_ort(path, [names[3]])[names[3]]
    assert not pruned.any()
    floats = {k: v for k, v in plain_state_dict(model).items()}
    for key, value in floats.items():
        if key.removesuffix(".weight") in names or key.endswith("num_batches_tracked"):
            continue
        expected_bytes += value.numel() * value.element_size()
    assert abs(os.path.getsize(path) - expected_bytes) <= 0.02 * expected_bytes


class _SVD(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).flatten(1)[:, :4].reshape(-1, 2, 2)
        return torch.linalg.svd(y).S


def _small(seed: int = SEED) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(6, 3),
    ).eval()  # fmt: skip


def test_unquantized_model_is_refused_or_exported_as_float(tmp_path: Path) -> None:
    model, x = _small(), torch.randn(4, 3, 8, 8)
    with pytest.raises(ValueError, match="not quantized.*allow_float=True"):
        export_onnx(model, x, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
    path = export_onnx(model, x, tmp_path / "m.onnx", allow_float=True)
    assert not [n for n in onnx.load(str(path)).graph.node if n.op_type == "DequantizeLinear"]
    with torch.no_grad():
        np.testing.assert_allclose(
            _session(path).run(None, {"input": x.numpy()})[0], model(x), rtol=1e-5, atol=1e-6
        )


def test_assignment_argument_exports_a_plain_model_at_those_bits(tmp_path: Path) -> None:
    model, x = _small(), torch.randn(4, 3, 8, 8)
    assignment = _mixed(model)
    path = export_onnx(model, x, tmp_path / "m.onnx", assignment=assignment)
    assert not is_quantized(model)  # the caller's model is untouched
    quantize_model(model, assignment)
    _check_against_torch(model, path, 8, n=16)


def test_the_callers_wrapped_model_keeps_working(tmp_path: Path) -> None:
    model, x = _small(), torch.randn(4, 3, 8, 8)
    quantize_model(model, _mixed(model, full=0))
    with torch.no_grad():
        before = model(x)
    model.train()
    export_onnx(model, x, tmp_path / "m.onnx")
    assert model.training  # mode untouched
    with torch.no_grad():
        assert torch.equal(model.eval()(x), before)  # copy-then-unwrap did not reach our layers


def test_per_parameter_granularity_is_refused_with_what_to_do(tmp_path: Path) -> None:
    model = _small()
    layout = ScopeLayout.from_model(model, "param")
    quantize_model(model, BitAssignment.uniform(layout, 4))
    with pytest.raises(ValueError, match="'param'.*'channel'.*export_packed"):
        export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")


def test_an_op_the_exporter_cannot_express_names_the_module(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 1), _SVD()).eval()
    quantize_model(model, BitAssignment.uniform(ScopeLayout.from_model(model, "channel"), 8))
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match=r"module '1' \(_SVD\) uses aten\._linalg_svd"):
        export_onnx(model, torch.randn(2, 3, 8, 8), target)
    # atomic: the old file is intact and no temporary file is left
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_missing_folders_are_created(tmp_path: Path) -> None:
    model = _small()
    quantize_model(model, _mixed(model))
    path = export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "a" / "b" / "m.onnx")
    assert path.is_file()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"opset": 12}, ValueError, r"opset must be an int in \[18, "),
        ({"opset": "21"}, ValueError, "opset must be an int"),
        ({"example_input": torch.zeros(3, 8, 8, dtype=torch.int64)}, TypeError, "example_input"),
        ({"assignment": {"0": torch.tensor([4])}}, TypeError, "assignment must be a BitAssignment"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, error: type, match: str, tmp_path: Path) -> None:
    model = _small()
    args = {"example_input": torch.randn(1, 3, 8, 8), **kwargs}
    with pytest.raises(error, match=match):
        export_onnx(model, path=tmp_path / "m.onnx", **args)


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ImportError, match=r"fq-quant\[onnx\]"):
        export_onnx(_small(), torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")


def test_below_opset_21_int4_falls_back_to_int8(tmp_path: Path) -> None:
    model = _small()
    quantize_model(model, BitAssignment.uniform(ScopeLayout.from_model(model, "channel"), 3))
    path = export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", opset=20)
    inits = _initializers(path)
    assert {inits[f"{n}.weight_quantized"].data_type for n in ("0", "5")} == {onnx.TensorProto.INT8}
    _check_against_torch(model, path, 8, n=16)


def test_nine_to_sixteen_bits_use_int16_and_tensor_scopes_a_scalar_scale(tmp_path: Path) -> None:
    model = _small()
    layout = ScopeLayout.from_model(model, "tensor")
    quantize_model(
        model, BitAssignment("tensor", {"0": torch.tensor([12]), "5": torch.tensor([1])})
    )
    path = export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    inits = _initializers(path)
    assert inits["0.weight_quantized"].data_type == onnx.TensorProto.INT16
    assert inits["5.weight_quantized"].data_type == onnx.TensorProto.INT4  # 1 bit: sign codes
    assert list(inits["0.weight_scale"].dims) == [] and len(layout) == 2
    _check_against_torch(model, path, 8, n=16)


def test_cli_exports_a_packed_file(tmp_path: Path, capsys) -> None:
    torch.manual_seed(SEED)
    model = timm.create_model("test_resnet", num_classes=4).eval()
    quantize_model(model, _mixed(model, full=1, pruned=3))
    packed = export_packed(model, tmp_path / "m.safetensors")
    out = tmp_path / "onnx" / "m.onnx"
    args = [str(packed), "--model", "test_resnet", "--num-classes", "4", "--image-size", "32"]
    assert cli_main(["export-onnx", *args, "--out", str(out)]) == 0
    _check_against_torch(model, out, 32, n=32)
    assert cli_main(["export-onnx", *args[:4], "7", *args[5:], "--out", str(out)]) == 2
    assert "does not fit model 'test_resnet' with 7 classes" in capsys.readouterr().err


def test_non_float32_weights_are_refused_with_what_to_do(tmp_path: Path) -> None:
    model = _small().half()
    with pytest.raises(ValueError, match=r"torch.float16 weights.*model.float\(\)"):
        export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", assignment=_mixed(model))


@pytest.mark.slow
def test_readme_deploy_example_runs_and_prints_what_it_says(tmp_path: Path) -> None:
    import re
    import subprocess

    text = (Path(__file__).resolve().parents[2] / "packages/fq-quant/README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text.split("## Deploy", 1)[1], flags=re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(block)
    out = subprocess.run(
        [sys.executable, "-W", "error", "-W", "ignore:.*CUDA initialization.*:UserWarning", str(script)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    promised = [line[2:] for line in block.splitlines() if line.startswith("# ")]
    assert out.stdout.splitlines() == promised


def test_ort_session_refuses_bad_threads() -> None:
    with pytest.raises(ValueError, match="threads must be a positive int or None; got 0"):
        ort_session(b"", threads=0)
