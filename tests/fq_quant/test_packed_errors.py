"""load_packed into a model that does not fit the file: the error names the tensors and the fix."""

from __future__ import annotations

import pytest
import torch
from fq_quant import (
    BitAssignment,
    Granularity,
    ScopeLayout,
    export_packed,
    load_packed,
    quantize_model,
    unpack_attention,
)
from torch import nn


class _Attn(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        return self.head(self.attn(h, h, h, need_weights=False)[0].mean(1))


def _export(model: nn.Module, path) -> None:
    layout = ScopeLayout.from_model(model, Granularity.CHANNEL)
    quantize_model(model, BitAssignment.uniform(layout, 4))
    export_packed(model, path)


def test_load_packed_names_missing_unexpected_and_the_fix(tmp_path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    _export(unpack_attention(_Attn()), path)
    with pytest.raises(
        ValueError,
        match=r"does not fit model _Attn: 2 tensor\(s\) missing from the file: "
        r"\['attn.in_proj_bias', 'attn.in_proj_weight'\]; 6 tensor\(s\) not in the model: \['attn.k_proj.bias', .*"
        r"Likely fix: the file was exported after fq_quant.unpack_attention",
    ):
        load_packed(path, model=_Attn())
    load_packed(path, model=unpack_attention(_Attn()))  # the fix works
    # the reverse: exported without unpacking, loaded into an unpacked model
    plain = tmp_path / "plain.safetensors"
    with pytest.warns(UserWarning, match="unpack_attention"):
        _export(_Attn(), plain)
    with pytest.raises(ValueError, match="exported without fq_quant.unpack_attention"):
        load_packed(plain, model=unpack_attention(_Attn()))
    # same layers, another head size
    with pytest.raises(
        ValueError,
        match=r"2 tensor\(s\) of another shape: head.bias \(3,\) in the file vs \(5,\) in the "
        r"model.*Likely fix: same layers, other sizes",
    ):
        load_packed(path, model=unpack_attention(_Attn(classes=5)))
    # another architecture altogether
    with pytest.raises(ValueError, match="Likely fix: the file holds another architecture"):
        load_packed(path, model=nn.Sequential(nn.Linear(4, 3)))
