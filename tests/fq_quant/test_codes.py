"""quantize_codes / dequantize: integer codes and scales that reproduce fake_quantize bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fq_quant import (
    CODES_DTYPE,
    Granularity,
    dequantize,
    fake_quantize,
    param_groups,
    q_levels,
    quantize_codes,
    scope_scales,
    scope_view,
)
from hypothesis import given
from hypothesis import strategies as st

ALLOWED = (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 32)


@st.composite
def weights_and_bits(draw):
    g = draw(st.sampled_from(list(Granularity)))
    shape = (draw(st.integers(1, 5)), *draw(st.sampled_from([(1,), (7,), (2, 3, 3), (1, 2, 2)])))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    w = torch.randn(shape, generator=gen) * draw(st.sampled_from([1e-9, 1e-3, 1.0, 50.0]))
    if draw(st.booleans()):
        w = w * (torch.rand(shape, generator=gen) > 0.3)
    idx = torch.randint(0, len(ALLOWED), g.scope_shape(shape), generator=gen)
    return w, torch.tensor(ALLOWED)[idx], g


def _per_element(t: torch.Tensor, shape: torch.Size, g: Granularity) -> np.ndarray:
    return scope_view(t, shape, g).expand(shape).double().numpy()


@given(weights_and_bits())
def test_dequantized_codes_equal_fake_quantize_bit_for_bit(case):
    w, bits, g = case
    codes, scales = quantize_codes(w, bits, g)
    assert codes.dtype == CODES_DTYPE and codes.shape == w.shape
    assert scales.dtype == w.dtype and tuple(scales.shape) == g.scope_shape(tuple(w.shape))
    b = _per_element(bits, w.shape, g)
    got, want = dequantize(codes, scales, g), fake_quantize(w, bits, g)
    coded = torch.from_numpy(b < 32)
    assert torch.equal(got[coded], want[coded])
    # codes in [-Q_b, Q_b]; no code and no scale for b = 0 and b = 32
    qb = np.where(b >= 2, 2 ** (b - 1) - 1, 1)
    c = codes.numpy()
    assert (np.abs(c) <= qb).all()
    none = (b == 0) | (b == 32)
    assert (c[none] == 0).all() and (_per_element(scales, w.shape, g)[none] == 0).all()


@given(weights_and_bits())
def test_scales_match_float64_formula(case):
    # s = max(max|w|, 1e-8) / Q_b over the scope (per (channel, bit) at PARAM), a = mean|w| at b = 1,
    # recomputed here one element's scope at a time in float64.
    w, bits, g = case
    _, scales = quantize_codes(w, bits, g)
    got = _per_element(scales, w.shape, g).reshape(w.shape[0], -1)
    w64 = w.double().numpy().reshape(w.shape[0], -1)
    b = _per_element(bits, w.shape, g).reshape(w.shape[0], -1)
    for o in range(w64.shape[0]):
        for j in range(w64.shape[1]):
            bj = b[o, j]
            if g is Granularity.TENSOR:
                scope = np.ones_like(b, bool)
            elif g is Granularity.CHANNEL:
                scope = np.zeros_like(b, bool)
                scope[o] = True
            else:
                scope = np.zeros_like(b, bool)
                scope[o] = b[o] == bj
            x = np.abs(w64[scope])
            if bj in (0, 32):
                want = 0.0
            elif bj == 1:
                want = x.mean()
            else:
                want = max(x.max(), 1e-8) / (2 ** (bj - 1) - 1)
            assert abs(got[o, j] - want) <= 1e-6 * want, (o, j, bj)


def test_hand_worked_codes():
    # Row 0 at 2 bits: Q = 1, s = 1.0: [0.5, -1.0, 0.25] -> [0, -1, 0] (0.5 ties to even).
    # Row 1 at 1 bit: a = mean |[2, 1, -0.5]| = 7/6, codes sign = [1, 1, -1].
    w = torch.tensor([[0.5, -1.0, 0.25], [2.0, 1.0, -0.5]])
    codes, scales = quantize_codes(w, torch.tensor([2, 1]), "channel")
    assert codes.tolist() == [[0, -1, 0], [1, 1, -1]]
    torch.testing.assert_close(scales, torch.tensor([1.0, 7 / 6]))
    # tensor granularity: one scale of shape (1,); pruned and float scopes carry nothing
    codes, scales = quantize_codes(w, 32, "tensor")
    assert scales.tolist() == [0.0] and not codes.any()


def test_scope_scales_is_the_quantizer_step_and_keeps_grad_to_levels():
    w = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    bits = torch.tensor([2, 3, 4, 8])
    levels = q_levels(scope_view(bits, w.shape, Granularity.CHANNEL))
    s = scope_scales(w, levels, Granularity.CHANNEL)
    want = w.abs().amax(1, keepdim=True) / levels
    assert torch.equal(s, want)
    lv = levels.clone().requires_grad_(True)
    scope_scales(w, lv, Granularity.CHANNEL).sum().backward()
    assert lv.grad is not None and bool((lv.grad < 0).all())
    # PARAM: one scale per (channel, bit) group
    pbits = torch.tensor([[2, 2, 4, 4, 4, 2]]).expand(4, 6)
    ps = scope_scales(w, q_levels(pbits), Granularity.PARAM, param_groups(pbits))
    assert torch.equal(ps[:, 0], ps[:, 5]) and torch.equal(ps[:, 2], ps[:, 4])
    with pytest.raises(ValueError, match="groups="):
        scope_scales(w, q_levels(pbits), Granularity.PARAM)


def test_bad_input():
    w = torch.randn(3, 4)
    with pytest.raises(TypeError, match="integer dtype"):
        quantize_codes(w, torch.tensor([2.0, 3.0, 4.0]), "channel")
    with pytest.raises(ValueError, match="contain 17"):
        quantize_codes(w, torch.tensor([17, 2, 2]), "channel")
    with pytest.raises(ValueError, match=r"scales has shape \(2,\)"):
        dequantize(torch.zeros(3, 4, dtype=torch.int16), torch.ones(2), "channel")
