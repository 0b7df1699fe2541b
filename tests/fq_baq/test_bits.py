"""fq_baq's learnable bits: the gradient path to theta, the fused kernel, warm start, bits moving."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from fq_baq import (
    BAQConfig,
    BAQTrainer,
    LearnableBitsQuantizer,
    attach_learnable_bits,
    learned_assignment,
    theta_from_bits,
)
from fq_quant import (
    BitAssignment,
    Granularity,
    ScopeLayout,
    fake_quantize,
    quantize_model,
    round_ste,
    scope_view,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

# --- gradient reaches theta through the task loss ------------------------------------------


@pytest.mark.parametrize("granularity", ["tensor", "channel", "param"])
def test_task_loss_gives_theta_gradient(tiny, granularity):
    model = tiny.model()
    qs = attach_learnable_bits(
        model,
        bit_min=2,
        bit_max=8,
        granularity=granularity,
        warm_start=tiny.assignment(model, 2, 8, g=granularity),
    )
    x, y, _ = tiny.data()[:16]
    F.cross_entropy(model(x), y).backward()  # lambda_bits = 0: the task loss alone
    for name, q in qs.items():
        assert q.theta.grad is not None, name
        assert q.theta.grad.abs().sum() > 0, name


def test_detached_public_variant_gives_no_theta_gradient_but_ours_does():
    """The public defect: ``w + (w_hat - w).detach()`` cuts the bits out of the graph."""
    torch.manual_seed(0)
    w = torch.randn(5, 7, requires_grad=True)
    theta = torch.full((5,), 0.3, requires_grad=True)
    bits = 2 + 6 * torch.tanh(theta).abs()
    q = LearnableBitsQuantizer(
        theta.detach(), bit_min=2, bit_max=8, granularity="channel", weight_shape=(5, 7)
    )
    target = torch.randn(5, 7)

    w_hat = fake_quantize(w, round_ste(bits), "channel", check=False)
    detached = w + (w_hat - w).detach()
    ((detached - target) ** 2).sum().backward()
    assert theta.grad is None or torch.count_nonzero(theta.grad) == 0

    ((q(w) - target) ** 2).sum().backward()
    assert torch.count_nonzero(q.theta.grad) == 5


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_fused_quantizer_matches_autograd_reference(granularity):
    """The fused kernel equals the autograd graph of ``s(b) * round_ste(w / s(b))`` (float64).

    ``fake_quantize``'s graph path has the same value, but its ``clamp`` splits the gradient
    wherever ``round(w / s)`` lands exactly on ``+-Q_b`` (torch's tie rule); the clamp never binds
    (``|w| <= max|w|``), so we differentiate it as the identity.
    """
    torch.manual_seed(3)
    shape = (6, 4, 3, 3)
    g = Granularity.parse(granularity)
    dims = (0, 1, 2, 3) if g is Granularity.TENSOR else (1, 2, 3)
    w1 = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w2 = w1.detach().clone().requires_grad_(True)
    theta = torch.randn(g.scope_shape(shape))
    q = LearnableBitsQuantizer(theta, bit_min=2, bit_max=8, granularity=g, weight_shape=shape)
    theta_ref = theta.clone().requires_grad_(True)
    bits_ref = scope_view(round_ste(2 + 6 * torch.tanh(theta_ref).abs()), shape, g).double()
    s = w2.detach().abs().amax(dim=dims, keepdim=True) / (torch.exp2(bits_ref - 1) - 1)
    ref = s * round_ste(w2 / s)
    out1 = q(w1)
    assert torch.equal(out1, ref)
    assert torch.equal(
        out1,
        fake_quantize(
            w1.detach(), bits_ref.reshape(g.scope_shape(shape)).detach().to(torch.uint8), g
        ),
    )
    upstream = torch.randn(shape, dtype=torch.float64)
    (out1 * upstream).sum().backward()
    (ref * upstream).sum().backward()
    assert torch.equal(w1.grad, upstream)  # the STE identity of METHOD.md section 2, exactly
    torch.testing.assert_close(q.theta.grad, theta_ref.grad, rtol=1e-5, atol=1e-7)


def test_theta_gradient_by_hand():
    """dL/db = sum_scope g * (w - w_hat) * ln2 * (Q + 1) / Q, times d b_cont / d theta (float64)."""
    torch.manual_seed(4)
    w = torch.randn(3, 5, dtype=torch.float64)
    theta = torch.tensor([0.2, -0.7, 1.1])
    q = LearnableBitsQuantizer(
        theta, bit_min=2, bit_max=8, granularity="channel", weight_shape=(3, 5)
    )
    g = torch.randn(3, 5, dtype=torch.float64)
    (q(w) * g).sum().backward()
    t = theta.double()
    b = torch.round(2 + 6 * t.tanh().abs())
    big_q = 2 ** (b - 1) - 1
    s = w.abs().amax(1) / big_q
    w_hat = torch.round(w / s[:, None]) * s[:, None]
    dldb = ((g * (w - w_hat)).sum(1)) * math.log(2) * (big_q + 1) / big_q
    dbdt = 6 * torch.sign(t) * (1 - t.tanh() ** 2)
    torch.testing.assert_close(q.theta.grad.double(), dldb * dbdt, rtol=1e-5, atol=1e-8)


# --- bits rise when precision matters, fall under a strong bit penalty ----------------------


def _teacher_problem():
    """Linear classifier whose float weights are the teacher: any quantization error costs loss."""
    g = torch.Generator().manual_seed(0)
    w_star = torch.randn(4, 16, generator=g) * 2
    x = torch.randn(256, 16, generator=g)
    y = (x @ w_star.T).argmax(1)
    model = nn.Sequential(nn.Linear(16, 4, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(w_star)
    loader = DataLoader(
        TensorDataset(x, y, torch.zeros(256, dtype=torch.long)), batch_size=32, shuffle=True
    )
    return model, loader, x, y


def test_bits_rise_from_low_warm_start_when_precision_matters():
    model, loader, x, y = _teacher_problem()
    layout = ScopeLayout.from_model(model, "channel")
    two_bit = quantize_model(copy.deepcopy(model), BitAssignment.uniform(layout, 2))
    with torch.no_grad():  # the premise: 2 bits is clearly worse than float here
        assert F.cross_entropy(two_bit(x), y) > 2 * F.cross_entropy(model(x), y)
    cfg = BAQConfig(lr=1e-8, lr_bits=0.1, lambda_bits=0.0, lambda_fair=0.0, epochs=3, cpu=True)
    res = BAQTrainer(model, cfg, BitAssignment.uniform(layout, 2)).fit(loader)
    assert res.history[-1].avg_bits >= 4.0
    assert res.assignment.avg_bits(layout) >= 4.0
    assert res.history[-1].task_loss < 0.5 * res.history[0].task_loss


def test_bits_fall_toward_bit_min_with_large_lambda_bits():
    model, loader, _, _ = _teacher_problem()
    cfg = BAQConfig(lr=1e-8, lr_bits=0.05, lambda_bits=10.0, lambda_fair=0.0, epochs=6, cpu=True)
    res = BAQTrainer(model, cfg).fit(loader)  # starts at bit_max = 8
    assert res.history[0].avg_bits <= 8.0
    assert min(h.avg_bits for h in res.history) == 2.0
    assert res.history[-1].avg_bits <= 3.0


# --- warm start reproduces the allocation exactly ------------------------------------------


def test_warm_start_rounds_back_for_every_range_and_value():
    for lo in range(2, 17):
        for hi in range(lo, 17):
            bits = torch.arange(lo, hi + 1)
            theta = theta_from_bits(bits, lo, hi)
            b_cont = lo + (hi - lo) * torch.tanh(theta).abs()
            assert torch.equal(torch.round(b_cont).long(), bits), (lo, hi)
            # tanh keeps a usable gradient: |tanh| <= 0.95 (METHOD.md's clip) up to a span of 8
            # bits, then the clip narrows so endpoints start 0.4 bits inside (2..16: 0.971)
            r_max = 0.95 if hi - lo <= 8 else 1 - 0.4 / (hi - lo)
            assert bool((torch.tanh(theta).abs() <= r_max + 1e-6).all()), (lo, hi)


@pytest.mark.parametrize("granularity", ["tensor", "channel", "param"])
def test_warm_start_first_forward_equals_quantize_model(tiny, granularity):
    model = tiny.model()
    ref = copy.deepcopy(model)
    warm = tiny.assignment(model, 2, 8, seed=5, g=granularity)
    attach_learnable_bits(model, bit_min=2, bit_max=8, granularity=granularity, warm_start=warm)
    assert learned_assignment(model) == warm
    quantize_model(ref, warm)
    x = tiny.data()[:16][0]
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_no_warm_start_starts_at_bit_max(tiny):
    model = tiny.model()
    attach_learnable_bits(model, bit_min=3, bit_max=7, granularity="channel")
    hist = learned_assignment(model).histogram()
    assert list(hist) == [7]
