"""WeightBuffer: memory reused only when nobody can read it, and bit-identical results either way.

The reference for every comparison is the fresh path: ``fake_quantize`` (no buffer) on the same
float weight, or a new copy of the quantizer (whose buffer starts empty).
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from fq_quant import (
    BitAssignment,
    FixedBitsQuantizer,
    ScopeLayout,
    WeightBuffer,
    fake_quantize,
    quantize_model,
)
from torch import nn

CPU = torch.device("cpu")


def _bits(o: int, seed: int) -> torch.Tensor:
    return torch.randint(2, 9, (o,), generator=torch.Generator().manual_seed(seed))


# -- the buffer itself ----------------------------------------------------------------------------
def test_take_reuses_memory_only_after_release() -> None:
    buf = WeightBuffer()
    a = buf.take((4, 5), torch.float32, CPU)
    ptr = a.data_ptr()
    b = buf.take((4, 5), torch.float32, CPU)  # a is alive: b must be other memory
    assert b.data_ptr() != ptr
    ptr_b = b.data_ptr()
    del a
    c = buf.take((4, 5), torch.float32, CPU)  # b (the kept one) is alive: fresh again
    assert c.data_ptr() not in (ptr_b,)
    ptr_c = c.data_ptr()
    del b, c
    d = buf.take((4, 5), torch.float32, CPU)
    assert d.data_ptr() == ptr_c and buf.reused == 1
    assert d.shape == (4, 5) and d.is_contiguous() and d.dtype == torch.float32


def test_a_live_view_keeps_the_memory_busy() -> None:
    buf = WeightBuffer()
    a = buf.take((6, 3), torch.float32, CPU)
    a.fill_(7.0)
    row = a[2]  # a view: shares the memory
    ptr = a.data_ptr()
    del a
    b = buf.take((6, 3), torch.float32, CPU)
    assert b.data_ptr() != ptr
    b.fill_(-1.0)
    assert torch.equal(row, torch.full((3,), 7.0))  # the view still reads its own values


@pytest.mark.parametrize(
    ("shape", "dtype"), [((4, 6), torch.float32), ((4, 5), torch.float64), ((5, 4), torch.float32)]
)
def test_other_shape_or_dtype_gets_fresh_memory(shape: tuple[int, int], dtype: torch.dtype) -> None:
    buf = WeightBuffer()
    buf.take((4, 5), torch.float32, CPU)  # released at once
    out = buf.take(shape, dtype, CPU)
    assert out.shape == shape and out.dtype == dtype
    same = shape == (4, 5) and dtype == torch.float32
    assert buf.reused == int(same)


def test_copy_and_pickle_start_empty() -> None:
    buf = WeightBuffer()
    buf.take((3, 3), torch.float32, CPU)
    for other in (copy.deepcopy(buf), pickle.loads(pickle.dumps(buf))):
        assert other.reused == 0
        other.take((3, 3), torch.float32, CPU)
        assert other.reused == 0  # nothing was kept to reuse


# -- the fixed-bits quantizer: reuse is invisible -------------------------------------------------
def _layer(seed: int = 0) -> tuple[nn.Conv2d, torch.Tensor]:
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    bits = _bits(8, seed)
    quantize_model(conv_wrap := nn.Sequential(conv), BitAssignment("channel", {"0": bits}))
    return conv_wrap[0], bits


def _original(layer: nn.Module) -> torch.Tensor:
    return layer.get_parameter("parametrizations.weight.original")


def test_training_steps_match_the_fresh_path_bit_for_bit() -> None:
    layer, bits = _layer()
    ref = copy.deepcopy(layer)  # every step below rebuilds its quantizer: always fresh memory
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    ptrs = []
    for step in range(4):
        y = layer(x)
        y.square().sum().backward()
        ptrs.append(layer.weight.data_ptr())  # the graph is freed: the kept memory serves it
        w = _original(ref).detach().clone().requires_grad_(True)
        y_ref = nn.functional.conv2d(x, fake_quantize(w, bits, "channel"), ref.bias, padding=1)
        y_ref.square().sum().backward()
        assert torch.equal(y, y_ref), step
        assert torch.equal(_original(layer).grad, w.grad), step
        with torch.no_grad():  # an optimizer step on both
            _original(layer).sub_(0.1 * _original(layer).grad)
            _original(ref).sub_(0.1 * w.grad)
        _original(layer).grad = None
    assert len(set(ptrs)) == 1  # one block of memory served every forward


def test_two_forwards_before_backward_keep_both_graphs_exact() -> None:
    """A graph still holding the quantized weight forbids reuse: its backward stays exact.

    The conv's backward reads the saved quantized weight for the input's gradient, so an
    overwritten weight would show in ``x1.grad``.
    """
    layer, bits = _layer(1)
    g = torch.Generator().manual_seed(7)
    x1 = torch.randn(2, 3, 5, 5, generator=g, requires_grad=True)
    x2 = torch.randn(2, 3, 5, 5, generator=g, requires_grad=True)
    w_first = _original(layer).detach().clone()
    y1 = layer(x1)
    with torch.no_grad():
        _original(layer).mul_(-0.5)  # the second forward quantizes a different weight
    y2 = layer(x2)
    (y1.square().sum() + y2.square().sum()).backward()
    for x, w in ((x1, w_first), (x2, _original(layer).detach())):
        xr = x.detach().clone().requires_grad_(True)
        yr = nn.functional.conv2d(xr, fake_quantize(w, bits, "channel"), layer.bias, padding=1)
        yr.square().sum().backward()
        assert torch.equal(x.grad, xr.grad)


def test_a_kept_weight_is_never_overwritten() -> None:
    layer, bits = _layer(2)
    kept = layer.weight.detach()
    before = kept.clone()
    with torch.no_grad():
        _original(layer).add_(1.0)
        for _ in range(3):
            layer.weight  # noqa: B018 - each access quantizes again
    assert torch.equal(kept, before)


def test_eval_and_no_grad_match_and_reuse() -> None:
    layer, bits = _layer(3)
    layer.eval()
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        outs = [layer(x) for _ in range(3)]
        ptrs = {layer.weight.data_ptr() for _ in range(3)}
    ref = nn.functional.conv2d(
        x, fake_quantize(_original(layer).detach(), bits, "channel"), layer.bias, padding=1
    )
    assert all(torch.equal(o, ref) for o in outs)
    assert len(ptrs) == 1  # released at once each time: one block serves every access


def test_new_bits_loaded_into_the_same_quantizer_take_effect() -> None:
    layer, bits = _layer(4)
    layer.weight  # noqa: B018 - fill the buffer with the old bits' weight
    q = layer.parametrizations.weight[0]
    assert isinstance(q, FixedBitsQuantizer)
    new_bits = _bits(8, 99)
    state = {k: (new_bits if k.endswith("bits") else v) for k, v in q.state_dict().items()}
    q.load_state_dict(state)
    w = _original(layer).detach()
    assert torch.equal(layer.weight, fake_quantize(w, new_bits, "channel"))
    assert not torch.equal(new_bits, bits)


def test_dtype_change_and_state_dict_and_save() -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    layout = ScopeLayout.from_model(model, "channel")
    quantize_model(model, BitAssignment.uniform(layout, 4))
    model(torch.randn(1, 2, 6, 6))
    assert not any("memory" in k or "buffer" in k for k in model.state_dict())
    model.double()
    y = model(torch.randn(1, 2, 6, 6, dtype=torch.float64))
    assert y.dtype == torch.float64
    w = model[0].parametrizations.weight.original.detach()
    assert torch.equal(model[0].weight, fake_quantize(w, 4, "channel"))
    q = model[0].parametrizations.weight[0]
    again = pickle.loads(pickle.dumps(q))  # (torch.save refuses parametrized models)
    assert torch.equal(again(w), model[0].weight)
