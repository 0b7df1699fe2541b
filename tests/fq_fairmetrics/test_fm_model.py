"""Evaluation and cost from the model itself: evaluate, layer_costs' bits, model_cost's size."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from fq_fairmetrics import cost_report, group_report
from fq_fairmetrics.torch import evaluate, layer_costs, model_cost
from fq_quant import BitAssignment, Granularity, ScopeLayout, export_packed, quantize_model
from torch import nn


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def _batches(n_batches=4, b=10, seed=1):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        x = torch.randn(b, 3, 6, 6, generator=gen)
        y = torch.randint(0, 3, (b,), generator=gen)
        g = torch.randint(0, 2, (b,), generator=gen)  # code 2 ("dark") never occurs
        out.append((x, y, g))
    return out


def test_evaluate_equals_group_report_on_the_concatenated_predictions():
    model = _net().train()
    batches = _batches()
    names = ("light", "medium", "dark")
    report = evaluate(model, batches, group_names=names, class_names=("a", "b", "c"))
    assert model.training and all(m.training for m in model.modules())  # modes restored
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x) for x, _, _ in batches]).numpy()
    y = torch.cat([b[1] for b in batches]).numpy()
    g = [names[int(v)] for b in batches for v in b[2]]
    ref = group_report(y, logits, sensitive_features=g, group_names=names, class_names="abc")
    assert report.metrics() == ref.metrics()
    assert report.group_names == names and np.isnan(report.group_acc[2])
    assert report.n_samples == 40
    # dict batches work the same; no names: the codes present
    dicts = [{"image": x, "label": y, "group": g} for x, y, g in batches]
    assert evaluate(model, dicts).metrics() == ref.metrics()
    with pytest.raises(ValueError, match="loader is empty"):
        evaluate(model, [])
    with pytest.raises(ValueError, match=r"group code\(s\) \[1\] outside group_names"):
        evaluate(model, batches, group_names=("light",))
    with pytest.raises(ValueError, match=r"expected \(image, label, group\)"):
        evaluate(model, [(batches[0][0], batches[0][1])])


def _assignment(model, bits_fn):
    layout = ScopeLayout.from_model(model, Granularity.CHANNEL)
    return BitAssignment(
        Granularity.CHANNEL, {n: bits_fn(n, lay.num_scopes) for n, lay in layout.layers.items()}
    )


def _costs_equal(a, b):
    return [(c.name, c.macs, c.bits.tolist(), c.params_per_scope.tolist()) for c in a] == [
        (c.name, c.macs, c.bits.tolist(), c.params_per_scope.tolist()) for c in b
    ]


def test_layer_costs_reads_the_bits_of_a_quantized_model_or_refuses():
    model = _net()
    x = torch.zeros(2, 3, 6, 6)
    assert cost_report(layer_costs(model, x)).avg_bits == 32.0  # plain: float
    a = _assignment(model, lambda n, s: torch.tensor([2, 4, 8, 4, 2, 8, 4, 4][:s]))
    quantize_model(model, a)
    read = layer_costs(model, x)
    assert _costs_equal(read, layer_costs(model, x, a))
    # hand-worked: conv 8 ch x 27 weights at 2,4,8,4,2,8,4,4 -> 27*36; linear 3 x 8 at 2,4,8
    want = (27 * 36 + 8 * 14) / (27 * 8 + 24)
    assert cost_report(read).avg_bits == pytest.approx(want, rel=1e-12)

    # learnable bits (fq-baq): their rounded bits
    from fq_baq import BAQConfig, BAQTrainer, learned_assignment

    trainer = BAQTrainer(_net(), BAQConfig(epochs=1, cpu=True))
    expected = learned_assignment(trainer.model)
    assert _costs_equal(layer_costs(trainer.model, x), layer_costs(trainer.model, x, expected))

    class Opaque(nn.Module):
        def forward(self, w):
            return w

    from torch.nn.utils import parametrize

    other = _net()
    parametrize.register_parametrization(other[0], "weight", Opaque())
    with pytest.raises(ValueError, match=r"layer '0' has a weight parametrization \['Opaque'\]"):
        layer_costs(other, x)


def _payload(path) -> int:
    """The file's size minus its safetensors header (8-byte length + JSON)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return len(data) - 8 - n


@pytest.mark.parametrize("arch", ["tiny", "mobilenet_v3_small"])
def test_model_cost_size_matches_the_packed_file(arch, tmp_path):
    if arch == "tiny":
        model, x = _net(), torch.zeros(1, 3, 6, 6)
    else:
        import torchvision

        torch.manual_seed(0)
        model, x = torchvision.models.mobilenet_v3_small(num_classes=10), torch.zeros(1, 3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    a = _assignment(
        model, lambda n, s: torch.tensor([2, 4, 8])[torch.randint(0, 3, (s,), generator=gen)]
    )
    quantize_model(model, a)
    cost = model_cost(model, x)
    path = export_packed(model, tmp_path / "m.safetensors")
    payload = _payload(path)
    assert abs(cost.size_bytes - payload) / payload < 0.01
    # the layers alone leave out biases, norms and buffers: well off the file on mobilenet
    layers_only = cost_report(layer_costs(model, x)).size_bytes
    extra = sum(
        v.numel() * v.element_size()
        for k, v in model.state_dict().items()
        if "parametrizations" not in k and not any(k == f"{c.name}.weight" for c in cost.layers)
    )
    assert cost.size_bytes == layers_only + extra == cost.extra_bytes + layers_only
