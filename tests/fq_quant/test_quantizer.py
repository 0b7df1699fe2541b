"""fake_quantize against an independent float64 reference, and its algebraic properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fq_quant import Granularity, fake_quantize, q_levels, round_ste
from hypothesis import given
from hypothesis import strategies as st

GRANULARITIES = list(Granularity)


# -- independent reference: float64, one scope at a time ---------------------------------------
def _scope_masks(shape: tuple[int, ...], bits: np.ndarray, g: Granularity):
    """Yield (boolean mask over the weight, bit-width) for every scope-with-shared-scale."""
    if g is Granularity.TENSOR:
        yield np.ones(shape, bool), int(bits[0])
        return
    for o in range(shape[0]):
        if g is Granularity.CHANNEL:
            m = np.zeros(shape, bool)
            m[o] = True
            yield m, int(bits[o])
        else:  # PARAM: one scale per (channel, bit-width) group
            for b in np.unique(bits[o]):
                m = np.zeros(shape, bool)
                m[o] = bits[o] == b
                yield m, int(b)


def reference(w: torch.Tensor, bits: torch.Tensor, g: Granularity):
    """(w_hat, scale per element, w/s per element) in float64, METHOD.md section 2 verbatim."""
    w64 = w.detach().double().numpy()
    out = np.zeros_like(w64)
    scale = np.full_like(w64, np.nan)
    ratio = np.zeros_like(w64)
    for m, b in _scope_masks(w64.shape, bits.numpy(), g):
        x = w64[m]
        if b == 0:
            out[m] = 0.0
        elif b == 32:
            out[m] = x
        elif b == 1:
            out[m] = np.abs(x).mean() * np.sign(x)
        else:
            q = 2 ** (b - 1) - 1
            s = max(np.abs(x).max(), 1e-8) / q
            out[m] = s * np.clip(np.round(x / s), -q, q)  # numpy rounds half to even, like torch
            scale[m], ratio[m] = s, x / s
    return out, scale, ratio


# -- strategies ---------------------------------------------------------------------------------
@st.composite
def weights_and_bits(draw, allowed=(0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 32), zeros=True):
    g = draw(st.sampled_from(GRANULARITIES))
    o = draw(st.integers(1, 5))
    rest = draw(st.sampled_from([(1,), (7,), (3, 1, 1), (2, 3, 3), (1, 2, 2)]))
    shape = (o, *rest)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    w = torch.randn(shape, generator=gen) * draw(st.sampled_from([1e-9, 1e-3, 1.0, 50.0]))
    if zeros and draw(st.booleans()):
        w = w * (torch.rand(shape, generator=gen) > 0.3)
    scope = g.scope_shape(shape)
    idx = torch.randint(0, len(allowed), scope, generator=gen)
    bits = torch.tensor(allowed)[idx]
    return w, bits, g


def _near_tie(ratio: np.ndarray) -> np.ndarray:
    """Where w/s lies within 1e-5 of a .5 rounding boundary (float32 may round the other way)."""
    return np.abs(np.abs(ratio - np.floor(ratio)) - 0.5) < 1e-5


# -- properties ----------------------------------------------------------------------------------
@given(weights_and_bits())
def test_matches_float64_reference(case):
    w, bits, g = case
    got = fake_quantize(w, bits, g).double().numpy()
    want, scale, ratio = reference(w, bits, g)
    tol = 4e-7 * np.abs(want) + 1e-30
    tie = _near_tie(ratio) & ~np.isnan(scale)
    ok = np.abs(got - want) <= tol
    # A flipped tie moves the value by exactly one step s.
    ok |= tie & (np.abs(np.abs(got - want) - np.nan_to_num(scale)) <= 1e-5 * np.nan_to_num(scale))
    assert ok.all(), (got[~ok], want[~ok])


@given(weights_and_bits())
def test_at_most_2b_minus_1_values_per_scope(case):
    w, bits, g = case
    got = fake_quantize(w, bits, g).numpy()
    for m, b in _scope_masks(tuple(w.shape), bits.numpy(), g):
        if b == 32:
            continue
        n_values = len(np.unique(got[m]))
        limit = {0: 1, 1: 3}.get(b, 2**b - 1)  # b = 1: -a, +a and 0 for exact zeros
        assert n_values <= limit
        if b == 1 and not (w.numpy()[m] == 0).any():
            assert n_values <= 2


@given(weights_and_bits(zeros=False))
def test_idempotent(case):
    w, bits, g = case
    once = fake_quantize(w, bits, g)
    assert torch.equal(fake_quantize(once, bits, g), once)


@given(weights_and_bits())
def test_sign_preserving(case):
    w, bits, g = case
    got = fake_quantize(w, bits, g)
    assert bool((got * w >= 0).all())
    assert bool(((got == 0) | (torch.sign(got) == torch.sign(w))).all())


@given(weights_and_bits(allowed=(2, 3, 4, 5, 6, 7, 8, 16)))
def test_error_at_most_half_a_step(case):
    w, bits, g = case
    got = fake_quantize(w, bits, g).double().numpy()
    _, scale, _ = reference(w, bits, g)
    w64 = w.double().numpy()
    err = np.abs(got - w64)
    # the float32 result itself is rounded: half an ulp of |w| on top of half a step (at 16 bits
    # a step is close enough to an ulp for this to matter)
    ulp = np.finfo(np.float32).eps * np.abs(w64)
    assert (err <= scale / 2 * (1 + 1e-5) + ulp + 1e-12).all()


@given(weights_and_bits())
def test_identity_gradient_wrt_weights(case):
    w, bits, g = case
    w = w.clone().requires_grad_(True)
    upstream = torch.randn(w.shape, generator=torch.Generator().manual_seed(1))
    fake_quantize(w, bits, g).backward(upstream)
    assert torch.equal(w.grad, upstream)


@given(weights_and_bits(allowed=(2, 3, 4, 5, 6, 8, 12, 16)))
def test_float_bits_path_equals_integer_path(case):
    w, bits, g = case
    fbits = bits.to(torch.float32).requires_grad_(True)
    w_req = w.clone().requires_grad_(True)
    got = fake_quantize(w_req, fbits, g)
    assert torch.equal(got, fake_quantize(w, bits, g))
    got.sum().backward()
    assert torch.equal(w_req.grad, torch.ones_like(w))


def test_float_bits_gradient_matches_hand_derivation():
    # w_hat = s(b) * round_ste(w / s(b)), s = M / Q(b), Q = 2^(b-1) - 1 (no element clamped), so
    # d w_hat / d b = s'(b) * (round(w/s) - w/s), s'(b) = -M ln2 2^(b-1) / Q^2.
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(4, 9, generator=gen)
    bits = torch.tensor([2.0, 3.0, 5.0, 8.0], requires_grad=True)
    upstream = torch.randn(4, 9, generator=gen)
    (fake_quantize(w, bits, "channel") * upstream).sum().backward()
    w64, b64 = w.double(), bits.detach().double()[:, None]
    m = w64.abs().amax(1, keepdim=True)
    q = 2 ** (b64 - 1) - 1
    s = m / q
    ds = -m * math.log(2) * 2 ** (b64 - 1) / q**2
    want = (upstream.double() * ds * (torch.round(w64 / s) - w64 / s)).sum(1)
    assert bits.grad is not None and bool((bits.grad != 0).all())
    torch.testing.assert_close(bits.grad.double(), want, rtol=1e-4, atol=1e-7)


# -- special widths -------------------------------------------------------------------------------
@pytest.mark.parametrize("g", GRANULARITIES)
def test_zero_bits_prune_32_is_identity_1_keeps_mean_magnitude(g):
    w = torch.randn(3, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fake_quantize(w, 0, g), torch.zeros_like(w))
    assert torch.equal(fake_quantize(w, 32, g), w)
    one = fake_quantize(w, 1, g)
    dims = None if g is Granularity.TENSOR else (1, 2, 3)
    mean_abs = w.double().abs().mean() if dims is None else w.double().abs().mean(dims)
    got_abs = one.double().abs().mean() if dims is None else one.double().abs().mean(dims)
    torch.testing.assert_close(got_abs, mean_abs, rtol=1e-6, atol=0)
    assert (
        len(torch.unique(one.abs())) == (1 if g is Granularity.TENSOR else 3)
        or g is Granularity.PARAM
    )


def test_hand_worked_two_bit_channel():
    # Row 0: max 1.0, Q = 1, s = 1: [1.0, -0.4, 0.6] -> [1, -0, 1]. Row 1: max 0.8 -> s = 0.8:
    # [0.8, 0.3, -0.5] -> [0.8, 0, -0.8] (0.5/0.8 = 0.625 rounds to 1).
    w = torch.tensor([[1.0, -0.4, 0.6], [0.8, 0.3, -0.5]])
    got = fake_quantize(w, torch.tensor([2, 2]), "channel")
    assert torch.equal(got, torch.tensor([[1.0, 0.0, 1.0], [0.8, 0.0, -0.8]]))
    # 3 bits, Q = 3, s = 1/3: 0.6 * 3 = 1.8 -> 2 -> 2/3.
    got3 = fake_quantize(w[:1], torch.tensor([3]), "channel")
    torch.testing.assert_close(got3, torch.tensor([[1.0, -1 / 3, 2 / 3]]))


def test_round_ste_and_q_levels():
    x = torch.tensor([0.5, 1.5, -2.5, 0.49], requires_grad=True)
    y = round_ste(x)
    assert torch.equal(y, torch.tensor([0.0, 2.0, -2.0, 0.0]))  # ties to even
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(4))
    assert q_levels(torch.tensor([0, 1, 2, 3, 8, 16])).tolist() == [1, 1, 1, 3, 127, 32767]


# -- bad input -------------------------------------------------------------------------------------
def test_fake_quantize_rejects_bad_input():
    w = torch.randn(3, 4)
    with pytest.raises(ValueError, match="contain 17"):
        fake_quantize(w, torch.tensor([17, 2, 2]), "channel")
    with pytest.raises(ValueError, match=r"shape \(2,\).*\(3,\)"):
        fake_quantize(w, torch.tensor([2, 2]), "channel")
    bad = w.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        fake_quantize(bad, 4, "channel")
    with pytest.raises(ValueError, match=r"\[2, 16\]"):
        fake_quantize(w, torch.tensor([2.5, 3.0, 4.0], requires_grad=True), "channel")
    with pytest.raises(ValueError, match="granularity must be one of"):
        fake_quantize(w, 4, "row")
    with pytest.raises(TypeError, match="floating-point"):
        fake_quantize(torch.ones(3, 4, dtype=torch.int64), 4, "tensor")
