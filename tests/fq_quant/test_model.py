"""quantize_model on real architectures, strip / state_dict round trips, and bad input."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision
from fq_quant import (
    BitAssignment,
    FixedBitsQuantizer,
    Granularity,
    ScopeLayout,
    current_assignment,
    fake_quantize,
    is_quantized,
    quantizable_layers,
    quantize_model,
    strip_quantization,
)
from torch import nn

MIXED = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 32])


def _timm(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=10).eval()


def _mixed(
    model: nn.Module, g: Granularity | str = "channel", seed: int = 0, palette=MIXED
) -> BitAssignment:
    layout = ScopeLayout.from_model(model, g)
    gen = torch.Generator().manual_seed(seed)
    return BitAssignment(
        g,
        {
            n: palette[torch.randint(0, len(palette), s.scope_shape, generator=gen)]
            for n, s in layout.layers.items()
        },
    )


def _by_hand(model: nn.Module, assignment: BitAssignment) -> nn.Module:
    """An independent route: a plain copy whose weights are replaced by fake_quantize(w, bits)."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, layer in quantizable_layers(ref).items():
            layer.weight.copy_(
                fake_quantize(layer.weight, assignment.bits[name], assignment.granularity)
            )
    return ref


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# -- real architectures ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "size"),
    [
        (lambda: _timm("resnet18"), 64),
        (lambda: _timm("resnet50"), 64),
        (lambda: _timm("deit_tiny_patch16_224"), 224),
        (lambda: _timm("tiny_vit_5m_224"), 224),
        (lambda: torchvision.models.resnet18(weights=None, num_classes=10).eval(), 64),
    ],
    ids=["timm-resnet18", "timm-resnet50", "deit-tiny", "tiny-vit-5m", "torchvision-resnet18"],
)
def test_quantize_model_computes_with_fake_quantized_weights(build, size):
    model = build()
    layers = quantizable_layers(model)
    assert isinstance(next(iter(layers.values())), nn.Conv2d)  # the first layer is included
    assignment = _mixed(model, palette=torch.tensor([2, 3, 4, 8, 32]))
    reference = _by_hand(model, assignment)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    quantize_model(model, assignment)
    assert is_quantized(model)
    assert current_assignment(model) == assignment
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("name", "size"), [("resnet18", 64), ("deit_tiny_patch16_224", 224)])
def test_uniform_8bit_close_to_fp32_and_2bit_departs(name, size):
    model = _timm(name)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    layout = ScopeLayout.from_model(model, "channel")
    with torch.no_grad():
        fp32 = model(x)
        q8 = quantize_model(copy.deepcopy(model), BitAssignment.uniform(layout, 8))(x)
        q2 = quantize_model(copy.deepcopy(model), BitAssignment.uniform(layout, 2))(x)
    assert _rel(q8, fp32) < 0.05
    assert _rel(q2, fp32) > 0.2
    assert _rel(q2, fp32) > 10 * _rel(q8, fp32)


def test_strip_quantization_bakes_weights_in():
    model = _timm("resnet18")
    assignment = _mixed(model, "param", seed=2)
    x = torch.randn(2, 3, 32, 32)
    reference = _by_hand(model, assignment)
    quantize_model(model, assignment)
    with torch.no_grad():
        wrapped = model(x)
    strip_quantization(model)
    assert not is_quantized(model)
    assert not any("parametrizations" in k for k in model.state_dict())
    for name, layer in quantizable_layers(model).items():
        assert isinstance(layer.weight, nn.Parameter)
        assert torch.equal(layer.weight, quantizable_layers(reference)[name].weight)
    with torch.no_grad():
        assert torch.equal(model(x), wrapped)


def test_state_dict_round_trip_into_fresh_wrapped_model(tmp_path):
    model = quantize_model(
        _timm("resnet18", seed=0), assignment := _mixed(_timm("resnet18"), seed=3)
    )
    with torch.no_grad():
        model.fc.parametrizations.weight.original.add_(
            0.1
        )  # trained weights differ from a fresh init
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    fresh = _timm("resnet18", seed=1)
    quantize_model(fresh, BitAssignment.uniform(ScopeLayout.from_model(fresh, "channel"), 4))
    fresh.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True))
    assert current_assignment(fresh) == assignment
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_requantize_and_training_step_reaches_float_weights():
    model = _timm("resnet18")
    layout = ScopeLayout.from_model(model, "tensor")
    quantize_model(model, BitAssignment.uniform(layout, 4))
    quantize_model(model, BitAssignment.uniform(layout, 3))  # re-assign, no double wrapping
    assert len(model.conv1.parametrizations.weight) == 1
    assert current_assignment(model) == BitAssignment.uniform(layout, 3)
    model.train()
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grad = model.conv1.parametrizations.weight.original.grad
    assert grad is not None and bool(grad.abs().sum() > 0)


# -- bad input ---------------------------------------------------------------------------------------
def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)
    )


def test_bits_outside_allowed_set_name_layer_and_value():
    with pytest.raises(ValueError, match=r"layer '0'.*contain 17"):
        BitAssignment("channel", {"0": torch.tensor([2, 17, 2, 2])})
    with pytest.raises(ValueError, match=r"layer 'fc'.*contain 33"):
        BitAssignment("tensor", {"fc": torch.tensor([33])})
    with pytest.raises(TypeError, match=r"layer 'fc'.*integer dtype"):
        BitAssignment("tensor", {"fc": torch.tensor([4.0])})
    with pytest.raises(ValueError, match="bits must be one of"):
        BitAssignment.uniform(ScopeLayout.from_model(_tiny(), "tensor"), 20)


def test_wrong_shape_names_layer_and_shape():
    model = _tiny()
    bits = {"0": torch.full((3,), 4), "3": torch.full((2,), 4)}
    with pytest.raises(ValueError, match=r"layer '0' has shape \(3,\).*\(4,\)"):
        quantize_model(model, BitAssignment("channel", bits))


def test_unknown_layer_is_named():
    model = _tiny()
    bits = {"0": torch.full((4,), 4), "3": torch.full((2,), 4), "head": torch.full((2,), 4)}
    with pytest.raises(ValueError, match=r"unknown \['head'\]"):
        quantize_model(model, BitAssignment("channel", bits))
    with pytest.raises(ValueError, match=r"missing \['3'\]"):
        quantize_model(model, BitAssignment("channel", {"0": torch.full((4,), 4)}))


def test_layer_that_is_not_conv_or_linear_is_rejected():
    model = _tiny()
    bits = {"0": torch.full((4,), 4), "3": torch.full((2,), 4), "1": torch.full((4,), 4)}
    with pytest.raises(TypeError, match=r"layer '1' is a BatchNorm2d"):
        quantize_model(model, BitAssignment("channel", bits))


def test_non_finite_weights_name_layer_and_value():
    model = _tiny()
    with torch.no_grad():
        model[3].weight[1, 5] = float("inf")
    with pytest.raises(ValueError, match=r"layer '3' has a non-finite weight \(inf\)"):
        quantize_model(model, BitAssignment.uniform(ScopeLayout.from_model(model, "channel"), 4))
    with torch.no_grad():
        model[3].weight[1, 5] = float("nan")
    with pytest.raises(ValueError, match=r"layer '3' has a non-finite weight \(nan\)"):
        quantize_model(model, BitAssignment.uniform(ScopeLayout.from_model(model, "channel"), 4))
    assert not is_quantized(model)  # nothing was wrapped half-way


def test_model_without_quantizable_layer():
    with pytest.raises(ValueError, match="Sequential has no quantizable layer"):
        ScopeLayout.from_model(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), "channel")


def test_granularity_mismatch_and_wrong_types():
    model = _tiny()
    assignment = BitAssignment.uniform(ScopeLayout.from_model(model, "tensor"), 4)
    with pytest.raises(ValueError, match="granularity 'tensor' does not match.*'channel'"):
        assignment.check(ScopeLayout.from_model(model, "channel"))
    with pytest.raises(TypeError, match="assignment must be a BitAssignment; got dict"):
        quantize_model(model, {"0": torch.tensor([4])})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"layer 'conv' have shape \(2,\)"):
        FixedBitsQuantizer(torch.tensor([4, 4]), "channel", (3, 2), name="conv")
    with pytest.raises(ValueError, match="not quantized"):
        current_assignment(model)


def test_assignment_for_another_model_names_the_first_differing_layer():
    import torchvision
    from fq_baq import BAQConfig, QATTrainer

    small = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))  # fmt: skip
    other = torchvision.models.resnet18(num_classes=2)
    a = BitAssignment.uniform(ScopeLayout.from_model(small, "channel"), 4)
    with pytest.raises(
        ValueError,
        match=r"^assignment does not match model: first differing layer: quantizable layer #0 is "
        r"'0' \(scope shape \(4,\)\) in the assignment, 'conv1' \(scope shape \(64,\)\) in the "
        r"model; the assignment has 2 layers, the model 21",
    ):
        QATTrainer(other, a, BAQConfig(cpu=True))
    # same names, other widths: the shape is named
    wide = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 2))  # fmt: skip
    with pytest.raises(ValueError, match=r"'0' has shape \(4,\) in the assignment, scope shape "
                       r"\(8,\) in the model"):  # fmt: skip
        quantize_model(wide, a)
    assert not is_quantized(wide) and not is_quantized(other)
