"""The learnable-bits kernel reuses its memory across steps (fq_quant.WeightBuffer) invisibly.

Reference: a fresh copy of the quantizer for every step (its buffers start empty, so every tensor
it makes is new memory): outputs and both gradients must match bit for bit, and the input's
gradient of a graph still alive when the next forward runs must be exact.
"""

from __future__ import annotations

import copy

import pytest
import torch
from fq_baq import LearnableBitsQuantizer
from fq_quant import Granularity

SHAPE = (6, 4, 3, 3)


def _quantizer(granularity: str, seed: int = 0) -> LearnableBitsQuantizer:
    g = Granularity.parse(granularity)
    theta = torch.randn(g.scope_shape(SHAPE), generator=torch.Generator().manual_seed(seed))
    return LearnableBitsQuantizer(theta, bit_min=2, bit_max=8, granularity=g, weight_shape=SHAPE)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_steps_with_reused_memory_match_fresh_copies(granularity: str) -> None:
    q = _quantizer(granularity)
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(SHAPE, generator=gen).requires_grad_(True)
    ptrs = []
    for step in range(4):
        fresh = copy.deepcopy(q)  # same theta, empty buffers
        w_ref = w.detach().clone().requires_grad_(True)
        upstream = torch.randn(SHAPE, generator=gen)
        out = q(w)
        ptrs.append(out.data_ptr())
        (out * upstream).sum().backward()
        out_ref = fresh(w_ref)
        (out_ref * upstream).sum().backward()
        assert torch.equal(out, out_ref), step
        assert torch.equal(w.grad, w_ref.grad), step
        assert torch.equal(q.theta.grad, fresh.theta.grad), step
        with torch.no_grad():  # a step that moves both the weight and the bits
            w.sub_(0.05 * w.grad)
            q.theta.sub_(0.5 * q.theta.grad.sign())
        w.grad, q.theta.grad = None, None
        del out
    assert len(set(ptrs[1:])) == 1  # after the first step the output lives in the kept memory


def test_second_forward_before_backward_keeps_the_first_graph_exact() -> None:
    """The first graph's backward reads its own ``w_hat`` (``dL/dtheta`` sums ``g * (w - w_hat)``)."""
    q = _quantizer("channel", 2)
    gen = torch.Generator().manual_seed(4)
    w1 = torch.randn(SHAPE, generator=gen, requires_grad=True)
    w2 = (-2.0 * torch.randn(SHAPE, generator=gen)).requires_grad_(True)
    out1 = q(w1)
    first = out1.detach().clone()
    out2 = q(w2)
    assert out2.data_ptr() != out1.data_ptr()
    assert torch.equal(out1, first)
    (out1.square().sum() + out2.square().sum()).backward()
    total = torch.zeros_like(q.theta)
    for w in (w1, w2):
        fresh = copy.deepcopy(q)
        fresh.theta.grad = None
        fresh(w.detach()).square().sum().backward()
        total += fresh.theta.grad
    torch.testing.assert_close(q.theta.grad, total, rtol=0, atol=0)


def test_double_backward_takes_the_recorded_path() -> None:
    """With ``create_graph=True`` backward is itself differentiated: no scratch memory there."""
    q = _quantizer("channel", 3)
    w = torch.randn(SHAPE, requires_grad=True)
    out = q(w)
    (g_theta,) = torch.autograd.grad(out.square().sum(), q.theta, create_graph=True)
    fresh = copy.deepcopy(q)
    (g_ref,) = torch.autograd.grad(fresh(w).square().sum(), fresh.theta)
    assert torch.equal(g_theta.detach(), g_ref)
    g_theta.sum().backward()  # second order reaches w through the recorded backward
    assert w.grad is not None and torch.isfinite(w.grad).all()
