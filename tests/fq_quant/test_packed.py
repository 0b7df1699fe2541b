"""Packed low-bit export: real bit-packing, bit-exact reload, size against the prediction."""

from __future__ import annotations

import math
import os
import tempfile

import pytest
import timm
import torch
from fq_quant import (
    BitAssignment,
    Granularity,
    ScopeLayout,
    export_packed,
    fake_quantize,
    load_packed,
    packed_size,
    quantizable_layers,
    quantize_model,
    strip_quantization,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from torch import nn


def _net(seed: int = 0) -> nn.Module:
    """Odd sizes everywhere: conv [5, 3, 3, 3] = 135 weights, linear [3, 45] = 135 weights."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 5, 3, bias=False),
        nn.BatchNorm2d(5),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 3 * 3, 3),
    ).eval()


X = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(9))


def _round_trip(model: nn.Module, assignment: BitAssignment, path) -> dict:
    """Export ``assignment`` applied to ``model``; check every reload is bit-exact; return facts."""
    wrapped = quantize_model(model, assignment)
    with torch.no_grad():
        want = wrapped(X)
    export_packed(wrapped, path)
    state, got_assignment = load_packed(path)
    assert got_assignment == assignment
    # The state dict is the plain model's, with exactly the fake-quantized weights.
    for name, layer in quantizable_layers(wrapped).items():
        assert torch.equal(state[f"{name}.weight"], layer.weight)
    plain = load_packed(path, model=_net(seed=5))
    rewrapped = load_packed(path, model=quantize_model(_net(seed=6), _uniform(_net(), "tensor", 8)))
    with torch.no_grad():
        assert torch.equal(plain(X), want)
        assert torch.equal(rewrapped(X), want)
    with safe_open(str(path), framework="pt") as f:
        sizes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118
        payload = sum(f.get_tensor(k).nbytes for k in f.keys())  # noqa: SIM118
    # packed_size is exact: the file byte for byte, and without the header every stored tensor
    # (codes, scales, floats, biases, BatchNorm statistics and num_batches_tracked)
    assert packed_size(wrapped) == os.path.getsize(path)
    assert packed_size(wrapped, header=False) == payload
    return {"sizes": sizes, "file": os.path.getsize(path)}


def _uniform(model: nn.Module, g: str, b: int) -> BitAssignment:
    return BitAssignment.uniform(ScopeLayout.from_model(model, g), b)


@pytest.mark.parametrize("b", range(1, 9))
def test_every_bit_width_is_really_packed(b, tmp_path):
    facts = _round_trip(_net(), _uniform(_net(), "channel", b), tmp_path / "m.safetensors")
    # 135 weights per layer at b bits: ceil(135 b / 8) bytes of codes, 5 resp. 3 channel scales.
    assert facts["sizes"]["0.weight:codes"] == [math.ceil(135 * b / 8)]
    assert facts["sizes"]["4.weight:codes"] == [math.ceil(135 * b / 8)]
    assert facts["sizes"]["0.weight:scales"] == [5]
    assert facts["sizes"]["4.weight:scales"] == [3]


@pytest.mark.parametrize("g", list(Granularity))
def test_mixed_bits_round_trip(g, tmp_path):
    model = _net(seed=1)
    layout = ScopeLayout.from_model(model, g)
    gen = torch.Generator().manual_seed(2)
    palette = torch.tensor([0, 1, 2, 3, 5, 8, 16, 32])
    bits = {
        n: palette[torch.randint(0, 8, s.scope_shape, generator=gen)]
        for n, s in layout.layers.items()
    }
    _round_trip(model, BitAssignment(g, bits), tmp_path / "m.safetensors")


def test_per_channel_codes_and_scales_by_hand(tmp_path):
    # conv channels at bits [0, 1, 2, 8, 32] (27 weights each): codes 27 * (1 + 2 + 8) = 297 bits
    # -> 38 bytes; scales for the 1-, 2- and 8-bit channels; 27 float32 weights; nothing for b = 0.
    model = _net()
    bits = {"0": torch.tensor([0, 1, 2, 8, 32]), "4": torch.tensor([4, 4, 4])}
    facts = _round_trip(model, BitAssignment("channel", bits), tmp_path / "m.safetensors")
    assert facts["sizes"]["0.weight:codes"] == [38]
    assert facts["sizes"]["0.weight:scales"] == [3]
    assert facts["sizes"]["0.weight:float"] == [27]
    assert facts["sizes"]["4.weight:codes"] == [math.ceil(135 * 4 / 8)]


def test_exact_zeros_in_one_bit_scopes_survive(tmp_path):
    model = _net()
    with torch.no_grad():
        model[0].weight[1, 0] = 0.0  # nine exact zeros in a 1-bit channel: fake_quantize gives 0
    bits = {"0": torch.tensor([2, 1, 1, 3, 1]), "4": torch.tensor([1, 2, 1])}
    path = tmp_path / "m.safetensors"
    quantize_model(model, BitAssignment("channel", bits))
    export_packed(model, path)
    state, _ = load_packed(path)
    assert torch.equal(state["0.weight"], model[0].weight)
    assert bool((state["0.weight"][1, 0] == 0).all())
    assert os.path.getsize(path) == packed_size(model)


@st.composite
def _cases(draw):
    g = draw(st.sampled_from(list(Granularity)))
    model = _net(seed=draw(st.integers(0, 1000)))
    layout = ScopeLayout.from_model(model, g)
    allowed = draw(
        st.lists(st.sampled_from([0, 1, 2, 3, 4, 6, 7, 8, 12, 16, 32]), min_size=1, max_size=5)
    )
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    palette = torch.tensor(allowed)
    return model, BitAssignment(
        g,
        {
            n: palette[torch.randint(0, len(allowed), s.scope_shape, generator=gen)]
            for n, s in layout.layers.items()
        },
    )


@settings(max_examples=25)
@given(_cases())
def test_round_trip_property(case):
    model, assignment = case
    with tempfile.TemporaryDirectory() as d:
        _round_trip(model, assignment, os.path.join(d, "m.safetensors"))
        assert os.listdir(d) == ["m.safetensors"]  # the temporary file was renamed, not left


def test_resnet18_size_equals_packed_size_and_cost_formula(tmp_path):
    from fq_fairmetrics import cost_report
    from fq_fairmetrics.torch import layer_costs

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    layout = ScopeLayout.from_model(model, "channel")
    gen = torch.Generator().manual_seed(0)
    assignment = BitAssignment(
        "channel",
        {n: torch.randint(2, 9, s.scope_shape, generator=gen) for n, s in layout.layers.items()},
    )
    quantize_model(model, assignment)
    path = export_packed(model, tmp_path / "r18.safetensors")
    size = os.path.getsize(path)
    assert size == packed_size(model)
    # fq_fairmetrics' formula: codes + scales + float32 weights + 4 bytes per other float.
    weight_keys = {f"{n}.weight" for n in layout.layers}
    extra = sum(
        t.numel() for k, t in strip_quantization(model).state_dict().items() if k not in weight_keys
    )
    report = cost_report(
        layer_costs(model, torch.randn(1, 3, 32, 32), assignment), extra_float_params=extra
    )
    assert abs(size - report.size_bytes) <= 0.05 * report.size_bytes
    # and it is really low-bit: about avg_bits / 32 of the float32 file.
    assert size < 0.25 * 4 * sum(t.numel() for t in model.state_dict().values())


def test_plain_model_with_explicit_assignment_and_bad_input(tmp_path):
    model = _net()
    assignment = _uniform(model, "param", 3)
    path = export_packed(model, tmp_path / "p.safetensors", assignment=assignment)
    state, got = load_packed(path)
    assert got == assignment
    assert torch.equal(
        state["4.weight"], fake_quantize(model[4].weight.detach(), assignment.bits["4"], "param")
    )
    with pytest.raises(ValueError, match="Sequential is not quantized"):
        export_packed(_net(), tmp_path / "q.safetensors")
    bad = _net()
    with torch.no_grad():
        bad[4].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"layer '4' has a non-finite weight \(nan\)"):
        export_packed(bad, tmp_path / "q.safetensors", assignment=assignment)
    assert not (tmp_path / "q.safetensors").exists()
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not an fq_quant packed file"):
        load_packed(tmp_path / "other.safetensors")
