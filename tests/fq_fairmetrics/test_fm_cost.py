"""Cost metrics: hand-worked LayerCost tables, and MACs measured on real torch models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torchvision
from fq_fairmetrics import LayerCost, cost_report
from fq_fairmetrics.torch import layer_costs
from torch import nn


def test_hand_worked_cost_report():
    # Layer a: 3 channel scopes of 10 weights at (4, 0, 32) bits, 1000 MACs.
    #   avg b = (40 + 0 + 320) / 30 = 12; codes ceil(40/8) = 5 B; scales 1 * 4 B; float 10 * 4 B.
    # Layer b: one tensor scope of 5 weights at 3 bits, 500 MACs: codes ceil(15/8) = 2 B, 1 scale.
    a = LayerCost(name="a", macs=1000, bits=np.array([4, 0, 32]), params_per_scope=np.array(10))
    b = LayerCost.uniform(name="b", macs=500, n_params=5, bits=3)
    r = cost_report([a, b], extra_float_params=7)
    assert r.avg_bits == pytest.approx((40 + 320 + 15) / 35)
    # gbops = (1000 * 12 + 500 * 3) * 32 / 1e9
    assert r.gbops == pytest.approx((12_000 + 1_500) * 32 / 1e9)
    # paper_gops = 2 * (1000 * 12/32 + 500 * 3/32) / 1e9
    assert r.paper_gops == pytest.approx(2 * (375 + 46.875) / 1e9)
    rows = {row.name: row for row in r.layers}
    assert (rows["a"].code_bytes, rows["a"].scale_bytes, rows["a"].float_bytes) == (5, 4, 40)
    assert (rows["b"].code_bytes, rows["b"].scale_bytes, rows["b"].float_bytes) == (2, 4, 0)
    assert r.size_bytes == 49 + 6 + 4 * 7
    assert r.macs == 1500 and r.n_params == 35
    assert r.to_polars()["size_bytes"].to_list() == [49, 6]
    # explicit scale count overrides the default of one per quantized scope
    shared = LayerCost(
        name="p", macs=0, bits=np.full((2, 3), 2), params_per_scope=np.array(1), n_scales=2
    )
    assert cost_report([shared]).size_bytes == math.ceil(12 / 8) + 2 * 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bits": np.array([17])}, "bits"),
        ({"bits": np.array([])}, "bits"),
        ({"params_per_scope": np.array([1, 2])}, "params_per_scope"),
        ({"params_per_scope": np.array([0])}, "params_per_scope"),
        ({"macs": -1}, "macs"),
        ({"name": ""}, "name"),
        ({"n_scales": -2}, "n_scales"),
    ],
)
def test_layer_cost_validation(kwargs, match):
    args = {
        "name": "l",
        "macs": 1,
        "bits": np.array([8]),
        "params_per_scope": np.array([4]),
    } | kwargs
    with pytest.raises(ValueError, match=match):
        LayerCost(**args)


def test_cost_report_validation():
    layer = LayerCost.uniform(name="l", macs=1, n_params=1)
    with pytest.raises(ValueError, match="empty"):
        cost_report([])
    with pytest.raises(ValueError, match="unique"):
        cost_report([layer, layer])
    with pytest.raises(ValueError, match="act_bits"):
        cost_report([layer], act_bits=0)
    with pytest.raises(TypeError, match="LayerCost"):
        cost_report([object()])  # type: ignore[list-item]


class Tiny(nn.Module):
    """conv 3->4 (3x3, pad 1) on 6x6, grouped conv 4->4 (groups 2, 3x3), linear on tokens."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.gconv = nn.Conv2d(4, 4, 3, groups=2)
        self.norm = nn.BatchNorm2d(4)
        self.proj = nn.Linear(4, 5)
        self.unused = nn.Linear(2, 2)

    def forward(self, x):
        x = self.norm(self.gconv(self.conv(x)))  # [B, 4, 4, 4]
        tokens = x.flatten(2).transpose(1, 2)  # [B, 16 tokens, 4]
        return self.proj(tokens)


def test_layer_costs_by_hand_and_modes_restored():
    model = Tiny()
    model.train()
    model.norm.eval()  # a mixed mode that must survive
    costs = layer_costs(model, torch.randn(3, 3, 6, 6))
    macs = {c.name: c.macs for c in costs}
    # conv: 6*6 out * 3 in * 4 out * 9 = 3888; gconv: 4*4 * (4/2) * 4 * 9 = 1152;
    # proj: 16 tokens * 4 * 5 = 320; unused: never called -> 0. All per sample (batch 3).
    assert macs == {"conv": 3888, "gconv": 1152, "proj": 320, "unused": 0}
    assert [c.name for c in costs] == ["conv", "gconv", "proj", "unused"]
    assert model.training and model.conv.training and not model.norm.training
    assert all(c.bits.tolist() == [32] for c in costs)


def test_layer_costs_assignment_granularities():
    model = Tiny()
    x = torch.randn(1, 3, 6, 6)
    w = model.conv.weight.shape  # [4, 3, 3, 3]
    param_bits = torch.full(tuple(w), 4, dtype=torch.uint8)
    param_bits[0, 0] = 2  # channel 0 mixes 2 and 4 bits -> 2 scales; channels 1..3 -> 1 each
    param_bits[3] = 32  # channel 3 stays float -> no scale

    class Assignment:  # duck-typed like fq-quant's BitAssignment
        bits = {
            "conv": param_bits,
            "gconv": torch.tensor([8, 8, 2, 0], dtype=torch.uint8),
            "proj": torch.tensor([3], dtype=torch.uint8),
        }

    costs = {c.name: c for c in layer_costs(model, x, Assignment())}
    conv = costs["conv"]
    assert conv.bits.size == 108 and conv.n_scales == 4
    assert conv.avg_bits == pytest.approx((9 * 2 + 18 * 4 + 2 * 27 * 4 + 27 * 32) / 108)
    assert costs["gconv"].params_per_scope.tolist() == [18] * 4
    assert costs["proj"].avg_bits == 3 and costs["unused"].avg_bits == 32
    size = cost_report(costs.values()).layers[0]
    assert size.code_bytes == math.ceil((9 * 2 + 18 * 4 + 54 * 4) / 8)
    assert size.scale_bytes == 16 and size.float_bytes == 27 * 4
    with pytest.raises(ValueError, match="not in the model"):
        layer_costs(model, x, {"nope": torch.tensor([8])})
    with pytest.raises(ValueError, match="shape"):
        layer_costs(model, x, {"conv": torch.full((2, 2), 8)})


def _uniform(model: nn.Module, bits: int) -> dict[str, torch.Tensor]:
    return {
        n: torch.full((m.weight.shape[0],), bits, dtype=torch.uint8)
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    }


@pytest.mark.parametrize(
    "build", [lambda: timm.create_model("resnet18", pretrained=False), torchvision.models.resnet18]
)
def test_resnet18_matches_the_paper(build):
    model = build()
    x = torch.zeros(1, 3, 224, 224)
    fp32 = cost_report(layer_costs(model, x))
    assert fp32.avg_bits == 32
    assert fp32.paper_gops == pytest.approx(3.63, rel=0.01)
    assert fp32.macs == pytest.approx(1.814e9, rel=1e-3)  # the well-known 1.8 GMACs
    assert fp32.n_params == sum(
        m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)
    )
    u8_layers = layer_costs(model, x, _uniform(model, 8))
    u4_layers = layer_costs(model, x, _uniform(model, 4))
    u8, u4 = cost_report(u8_layers), cost_report(u4_layers)
    assert u8.avg_bits == 8 and u4.avg_bits == 4
    # paper_gops is linear in weight bits (METHOD.md 8): U8 = FP32 / 4, U4 = U8 / 2.
    assert u8.paper_gops == pytest.approx(fp32.paper_gops / 4)
    assert u4.paper_gops == pytest.approx(u8.paper_gops / 2)
    # BOPs scale with b_w * b_a: W4A4 is a quarter of W8A8; with float activations, a half.
    w4a4 = cost_report(u4_layers, act_bits=4).gbops
    w8a8 = cost_report(u8_layers, act_bits=8).gbops
    assert w4a4 == pytest.approx(w8a8 / 4)
    assert u4.gbops == pytest.approx(u8.gbops / 2)
    assert fp32.gbops == pytest.approx(fp32.macs * 32 * 32 / 1e9)
    # packed size: U8 codes 1 byte per weight + one float32 scale per output channel
    n_channels = sum(len(b) for b in _uniform(model, 8).values())
    assert u8.size_bytes == fp32.n_params + 4 * n_channels


def test_deit_tiny_counts_every_token():
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    r = cost_report(layer_costs(model, torch.zeros(1, 3, 224, 224)))
    # Independent count: per block 197 tokens * (192*576 + 192*192 + 192*768 + 768*192),
    # 12 blocks; patch embed 14*14 * 3*16*16 * 192; head on the class token 192 * 1000.
    expected = 12 * 197 * (192 * 576 + 192 * 192 + 2 * 192 * 768) + 196 * 768 * 192 + 192 * 1000
    assert r.macs == expected
    assert r.macs / 1e9 == pytest.approx(1.07, abs=0.01)


def test_fairness_inputs_may_be_cpu_torch_tensors():
    # evaluation loops hand over tensors; numpy conversion happens without copying to a device
    from fq_fairmetrics import FairnessAccumulator, group_report

    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1, 1])
    g = torch.tensor([1, 1, 2, 2])
    r = group_report(y, logits, sensitive_features=g)
    # group 1: both right; group 2: (1 -> 0) wrong, (1 -> 1) right
    assert (r.worst_acc, r.best_acc, r.group_names) == (0.5, 1.0, (1, 2))
    acc = FairnessAccumulator(n_classes=2)
    acc.update(y, logits, sensitive_features=g)
    assert acc.compute().metrics() == r.metrics()


class _SelfAttention(nn.Module):
    """``nn.MultiheadAttention`` called three ways: positional, by keyword, and on the fast path."""

    def __init__(self, embed: int = 8, how: str = "positional"):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed, 2, batch_first=True)
        self.head = nn.Linear(embed, 3)
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "positional":
            y, _ = self.attn(x, x, x)
        elif self.how == "keyword":
            y, _ = self.attn(query=x, key=x, value=x)
        else:  # need_weights=False in eval + no_grad takes torch's fused fast path
            y, _ = self.attn(x, x, x, need_weights=False)
        return self.head(y.mean(1))


@pytest.mark.parametrize("how", ["positional", "keyword", "fast"])
def test_multihead_attention_out_proj_counts_every_token(how):
    # out_proj is applied by F.multi_head_attention_forward (or the fused kernel), never called as a
    # module: it must still count tokens * E * E per sample. T = 5 tokens, E = 8.
    model = _SelfAttention(how=how)
    costs = {c.name: c.macs for c in layer_costs(model, torch.randn(4, 5, 8))}
    assert costs == {"attn.out_proj": 5 * 8 * 8, "head": 8 * 3}


def test_torchvision_vit_by_hand():
    # A 2-layer torchvision ViT: 32 px, 8 px patches -> 16 patches + class token = 17 tokens,
    # hidden 16, MLP 32, 3 classes. Hand count per sample (in_proj_weight is not a layer):
    #   conv_proj 16 * (3*8*8) * 16; per layer out_proj 17*16*16, MLP 17*16*32 + 17*32*16; head 16*3
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=3,
    )  # fmt: skip
    total = sum(c.macs for c in layer_costs(vit, torch.randn(2, 3, 32, 32)))
    per_layer = 17 * 16 * 16 + 17 * 16 * 32 + 17 * 32 * 16
    assert total == 16 * 3 * 8 * 8 * 16 + 2 * per_layer + 16 * 3
