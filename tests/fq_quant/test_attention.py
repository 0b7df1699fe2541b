"""unpack_attention: nn.MultiheadAttention's packed projections become quantizable nn.Linear layers.

The reference is torch's own nn.MultiheadAttention, in float64, over its call options."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
import torchvision
from fq_fairmetrics.torch import layer_costs
from fq_quant import (
    BitAssignment,
    Granularity,
    LinearMultiheadAttention,
    ScopeLayout,
    pack_attention,
    quantizable_layers,
    quantize_model,
    strip_quantization,
    unpack_attention,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

E, H = 8, 2


def _inputs(g: torch.Generator, *, n: int, length: int, s: int, kdim: int, vdim: int,
            batch_first: bool, batched: bool):  # fmt: skip
    def t(rows: int, dim: int) -> torch.Tensor:
        x = torch.randn(n, rows, dim, generator=g, dtype=torch.float64)
        if not batched:
            return x[0]
        return x if batch_first else x.transpose(0, 1)

    return t(length, E), t(s, kdim), t(s, vdim)


def _masks(g: torch.Generator, kind: str, *, n: int, length: int, s: int, batched: bool):
    """(key_padding_mask, attn_mask) of one kind; key 0 is never masked (no all-masked row)."""
    kpm = am = None
    if kind in ("pad_bool", "both_bool"):
        kpm = torch.rand(n, s, generator=g) < 0.4
        kpm[:, 0] = False
    if kind in ("pad_float", "both_float"):
        kpm = torch.randn(n, s, generator=g, dtype=torch.float64)
    if kind in ("attn_bool", "both_bool"):
        am = torch.rand(length, s, generator=g) < 0.4
        am[:, 0] = False
    if kind in ("attn_float3d", "both_float"):
        am = torch.randn(n * H if batched else H, length, s, generator=g, dtype=torch.float64)
    if kpm is not None and not batched:
        kpm = kpm[0]
    return kpm, am


MASKS = ("none", "pad_bool", "pad_float", "attn_bool", "attn_float3d", "both_bool", "both_float")


@pytest.mark.parametrize(
    "batch_first,batched,cross,bias",
    [
        (bf, b, c, bias) for bf, b, c, bias in itertools.product([False, True], repeat=4) if b or bf
    ],  # fmt: skip
)
@pytest.mark.parametrize("masks", MASKS)
def test_matches_torch_attention_in_float64(batch_first, batched, cross, bias, masks) -> None:
    g = torch.Generator().manual_seed(hash((batch_first, batched, cross, bias, masks)) % 2**31)
    kdim, vdim = (5, 6) if cross else (E, E)
    n, length, s = (3, 4, 7) if cross else (3, 5, 5)
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first)
    ref = ref.double().eval()
    ours = LinearMultiheadAttention.from_attention(ref)
    q, k, v = _inputs(g, n=n, length=length, s=s, kdim=kdim, vdim=vdim,
                      batch_first=batch_first, batched=batched)  # fmt: skip
    kpm, am = _masks(g, masks, n=n, length=length, s=s, batched=batched)
    for need_weights, average in ((True, True), (True, False), (False, True)):
        kw = dict(key_padding_mask=kpm, attn_mask=am, need_weights=need_weights,
                  average_attn_weights=average)  # fmt: skip
        want, want_w = ref(q, k, v, **kw)
        got, got_w = ours(q, k, v, **kw)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        if need_weights:
            torch.testing.assert_close(got_w, want_w, rtol=1e-10, atol=1e-12)
        else:
            assert got_w is None and want_w is None


def test_gradients_match_torch_attention() -> None:
    torch.manual_seed(1)
    ref = nn.MultiheadAttention(E, H, batch_first=True).double()
    ours = LinearMultiheadAttention.from_attention(ref)
    x1 = torch.randn(2, 5, E, dtype=torch.float64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    ref(x1, x1, x1)[0].pow(2).sum().backward()
    ours(x2, x2, x2)[0].pow(2).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-10, atol=1e-12)
    gq, gk, gv = ref.in_proj_weight.grad.chunk(3)
    for lin, want in zip((ours.q_proj, ours.k_proj, ours.v_proj), (gq, gk, gv), strict=True):
        torch.testing.assert_close(lin.weight.grad, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours.out_proj.weight.grad, ref.out_proj.weight.grad)


def test_dropout_in_training_draws_the_same_mask_as_torch() -> None:
    torch.manual_seed(2)
    ref = nn.MultiheadAttention(E, H, dropout=0.5, batch_first=True).double().train()
    ours = LinearMultiheadAttention.from_attention(ref)
    assert ours.training
    x = torch.randn(2, 5, E, dtype=torch.float64)
    for need_weights in (True, False):
        torch.manual_seed(3)
        want, _ = ref(x, x, x, need_weights=need_weights)
        torch.manual_seed(3)
        got, _ = ours(x, x, x, need_weights=need_weights)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        torch.manual_seed(4)
        other, _ = ours(x, x, x, need_weights=need_weights)
        assert not torch.allclose(other, got)  # dropout does act


@settings(max_examples=25, deadline=None)
@given(
    heads=st.sampled_from([1, 2, 4]),
    n=st.integers(1, 3),
    length=st.integers(1, 6),
    s=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_with_a_causal_hint(heads: int, n: int, length: int, s: int, seed: int):
    torch.manual_seed(seed)
    ref = nn.MultiheadAttention(E, heads, batch_first=True).double().eval()
    ours = LinearMultiheadAttention.from_attention(ref)
    q = torch.randn(n, length, E, dtype=torch.float64)
    kv = torch.randn(n, s, E, dtype=torch.float64)
    causal = torch.ones(length, s, dtype=torch.bool).triu(1)
    causal[:, 0] = False
    want, _ = ref(q, kv, kv, attn_mask=causal, is_causal=True, need_weights=False)
    got, _ = ours(q, kv, kv, attn_mask=causal, is_causal=True, need_weights=False)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def _vit() -> nn.Module:
    torch.manual_seed(5)
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=3,
    ).eval()  # fmt: skip


def test_torchvision_vit_every_weight_matrix_becomes_a_layer() -> None:
    vit, x = _vit(), torch.randn(2, 3, 32, 32)
    before = dict(vit.state_dict())
    want = vit(x)
    n_before = len(quantizable_layers(vit))
    assert unpack_attention(vit) is vit
    torch.testing.assert_close(vit(x), want, rtol=1e-5, atol=1e-6)
    layers = quantizable_layers(vit)
    assert len(layers) == n_before + 3 * 2  # q, k, v per encoder layer
    assert "encoder.layers.encoder_layer_0.self_attention.q_proj" in layers
    # every float weight matrix of the model is now in a layer: nothing >= 2-D is left bare
    in_layers = {id(m.weight) for m in layers.values()}
    bare = [n for n, p in vit.named_parameters() if p.dim() >= 2 and id(p) not in in_layers]
    assert bare == ["class_token", "encoder.pos_embedding"]  # embeddings, not weights (METHOD.md)
    # MACs: the hand count of tests/fq_fairmetrics plus q, k, v (17 tokens x 16 x 16 each)
    total = sum(c.macs for c in layer_costs(vit, torch.randn(2, 3, 32, 32)))
    per_layer = 4 * 17 * 16 * 16 + 17 * 16 * 32 + 17 * 32 * 16
    assert total == 16 * 3 * 8 * 8 * 16 + 2 * per_layer + 16 * 3
    # and back: bit-identical state dict under the original names, identical outputs
    pack_attention(vit)
    after = vit.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    torch.testing.assert_close(vit(x), want, rtol=0, atol=0)


def test_quantize_model_warns_about_bare_attention_and_quantizes_it_once_unpacked() -> None:
    vit, x = _vit(), torch.randn(2, 3, 32, 32)
    layout = ScopeLayout.from_model(vit, Granularity.CHANNEL)
    with pytest.warns(UserWarning, match=r"unpack_attention"):
        quantize_model(vit, BitAssignment.uniform(layout, 4))
    strip_quantization(vit)
    vit = _vit()
    unpack_attention(vit)
    layout = ScopeLayout.from_model(vit, Granularity.CHANNEL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_model(vit, BitAssignment.uniform(layout, 2))
    attn = vit.encoder.layers.encoder_layer_0.self_attention
    w_hat = attn.q_proj.weight.detach()
    s = attn.q_proj.parametrizations.weight.original.detach().abs().amax(1, keepdim=True)
    assert set((w_hat / s).unique().round(decimals=6).tolist()) <= {-1.0, 0.0, 1.0}  # 2 bits
    with pytest.raises(ValueError, match="strip_quantization"):
        pack_attention(vit)
    strip_quantization(vit)
    pack_attention(vit)
    assert torch.isfinite(vit(x)).all()


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")  # torch's path
def test_transformer_encoder_fast_paths_are_left_for_the_unpacked_module() -> None:
    torch.manual_seed(6)
    layer = nn.TransformerEncoderLayer(E, H, dim_feedforward=16, batch_first=True, dropout=0.0)
    enc = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=True).eval()
    x = torch.randn(3, 5, E)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[0, 3:] = True
    with torch.no_grad():
        want = enc(x, src_key_padding_mask=pad)  # torch's fused (nested tensor) path
        unpack_attention(enc)
        assert isinstance(enc.layers[0].self_attn, LinearMultiheadAttention)
        got = enc(x, src_key_padding_mask=pad)
    keep = ~pad  # the nested path leaves padded positions at 0; compare the real tokens
    torch.testing.assert_close(got[keep], want[keep], rtol=1e-4, atol=1e-5)


def test_bad_input_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="add_bias_kv"):
        LinearMultiheadAttention.from_attention(nn.MultiheadAttention(E, H, add_bias_kv=True))
    with pytest.raises(ValueError, match="add_zero_attn"):
        LinearMultiheadAttention.from_attention(nn.MultiheadAttention(E, H, add_zero_attn=True))
    with pytest.raises(TypeError, match="nn.MultiheadAttention"):
        LinearMultiheadAttention.from_attention(nn.Linear(E, E))
    with pytest.raises(ValueError, match="num_heads must be a positive int dividing embed_dim=8"):
        LinearMultiheadAttention(E, 3)
    with pytest.raises(ValueError, match="dropout must be in"):
        LinearMultiheadAttention(E, H, dropout=1.0)
    with pytest.raises(TypeError, match="itself a MultiheadAttention"):
        unpack_attention(nn.MultiheadAttention(E, H))
    attn, x = LinearMultiheadAttention(E, H), torch.randn(4, 1, E)
    with pytest.raises(TypeError, match="bool or floating point"):
        attn(x, x, x, attn_mask=torch.zeros(4, 4, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="is_causal"):
        attn(x, x, x, is_causal=True)


def test_readme_attention_example_runs_as_written(tmp_path) -> None:
    import re
    import subprocess
    import sys
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "packages/fq-quant/README.md").read_text()
    section = text.split("Attention (`torch.nn.MultiheadAttention`)", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(block)
    out = subprocess.run(
        [sys.executable, "-W", "error::UserWarning",
         "-W", "ignore:.*CUDA initialization.*:UserWarning", str(script)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    comments = [line.split("#", 1)[1].split(":")[0].strip() for line in block.splitlines()
                if "print(" in line]  # fmt: skip
    assert len(comments) == 3
    assert out.stdout.split("\n")[:3] == comments  # what the comments promise is what it prints


def test_unpacked_vit_exports_packed_and_reloads_bit_exact(tmp_path) -> None:
    from fq_quant import export_packed, load_packed

    vit, x = unpack_attention(_vit()), torch.randn(2, 3, 32, 32)
    layout = ScopeLayout.from_model(vit, Granularity.CHANNEL)
    g = torch.Generator().manual_seed(0)
    bits = {n: torch.randint(2, 9, s.scope_shape, generator=g) for n, s in layout.layers.items()}
    quantize_model(vit, BitAssignment(Granularity.CHANNEL, bits))
    with torch.no_grad():
        want = vit(x)
    path = export_packed(vit, tmp_path / "vit.safetensors")
    fresh = unpack_attention(_vit())
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)  # so only what the file holds can make the outputs equal
    fresh = load_packed(path, model=fresh)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), want, rtol=0, atol=0)
