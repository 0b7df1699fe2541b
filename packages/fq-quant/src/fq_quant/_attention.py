"""``nn.MultiheadAttention`` with its projections as ``nn.Linear`` layers, so they can be quantized.

``nn.MultiheadAttention`` keeps its query/key/value projection as a bare parameter
(``in_proj_weight``, or ``q/k/v_proj_weight``) that ``F.multi_head_attention_forward`` multiplies
directly; it is not a layer, so :func:`fq_quant.quantizable_layers` cannot see it and three
quarters of every attention block's weights would silently stay in float. :func:`unpack_attention`
swaps each such module for a :class:`LinearMultiheadAttention` that computes the same function
with four ``nn.Linear`` layers; :func:`pack_attention` swaps back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize


class LinearMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention``'s computation and call signature with ``q_proj``, ``k_proj``,
    ``v_proj`` and ``out_proj`` as ``nn.Linear`` layers (``[E, E]``, ``[E, kdim]``, ``[E, vdim]``,
    ``[E, E]`` weights).

    ``forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
    average_attn_weights=True, is_causal=False)`` takes and returns what
    ``nn.MultiheadAttention.forward`` does: inputs ``[L, N, E]`` (``[N, L, E]`` with
    ``batch_first``) or unbatched ``[L, E]``; masks bool (``True`` = not allowed) or float (added
    to the scores); returns ``(output, weights or None)`` with the weights averaged over heads
    unless ``average_attn_weights=False``. ``is_causal`` is a hint that ``attn_mask`` is causal,
    as in torch; the mask is what is applied. ``bias_k``/``bias_v``/``add_zero_attn`` are not
    supported.
    """

    # nn.TransformerEncoderLayer / nn.TransformerEncoder read these to decide on their fused fast
    # path (which multiplies the packed weights itself); ``in_proj_bias is None`` sends them to
    # the regular path, which calls this module.
    in_proj_weight = None
    in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not (isinstance(embed_dim, int) and embed_dim > 0):
            raise ValueError(f"embed_dim must be a positive int; got {embed_dim!r}")
        if not (isinstance(num_heads, int) and num_heads > 0) or embed_dim % num_heads:
            raise ValueError(
                f"num_heads must be a positive int dividing embed_dim={embed_dim}; got {num_heads!r}"
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
        fk = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.kdim = embed_dim if kdim is None else int(kdim)
        self.vdim = embed_dim if vdim is None else int(vdim)
        self.dropout, self.batch_first = float(dropout), bool(batch_first)
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **fk)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias, **fk)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias, **fk)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **fk)

    @classmethod
    def from_attention(cls, mha: nn.MultiheadAttention) -> LinearMultiheadAttention:
        """A copy of ``mha`` (same weights, device, dtype, train/eval mode) with Linear projections."""
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"mha must be an nn.MultiheadAttention; got {type(mha).__name__}")
        if mha.bias_k is not None or mha.bias_v is not None or mha.add_zero_attn:
            raise ValueError(
                "nn.MultiheadAttention with add_bias_kv=True or add_zero_attn=True is not supported"
            )
        w = mha.out_proj.weight
        new = cls(
            mha.embed_dim,
            mha.num_heads,
            dropout=mha.dropout,
            bias=mha.in_proj_bias is not None,
            kdim=mha.kdim,
            vdim=mha.vdim,
            batch_first=mha.batch_first,
            device=w.device,
            dtype=w.dtype,
        )
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                wq, wk, wv = mha.in_proj_weight.chunk(3)
            else:
                wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
            for lin, wt in zip((new.q_proj, new.k_proj, new.v_proj), (wq, wk, wv), strict=True):
                lin.weight.copy_(wt)
            if mha.in_proj_bias is not None:
                for lin, b in zip(
                    (new.q_proj, new.k_proj, new.v_proj), mha.in_proj_bias.chunk(3), strict=True
                ):
                    lin.bias.copy_(b)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        return new.train(mha.training)

    def to_attention(self) -> nn.MultiheadAttention:
        """The equivalent ``nn.MultiheadAttention`` (same weights, device, dtype, mode).

        Raises ``ValueError`` while a projection is quantized (``strip_quantization`` first)."""
        projections = (self.q_proj, self.k_proj, self.v_proj, self.out_proj)
        if any(parametrize.is_parametrized(p, "weight") for p in projections):
            raise ValueError(
                "this attention's projections are quantized; call strip_quantization(model) "
                "before pack_attention"
            )
        w = self.out_proj.weight
        mha = nn.MultiheadAttention(
            self.embed_dim,
            self.num_heads,
            dropout=self.dropout,
            bias=self.q_proj.bias is not None,
            kdim=self.kdim,
            vdim=self.vdim,
            batch_first=self.batch_first,
            device=w.device,
            dtype=w.dtype,
        )
        with torch.no_grad():
            ws = [p.weight for p in projections[:3]]
            if mha._qkv_same_embed_dim:
                mha.in_proj_weight.copy_(torch.cat(ws))
            else:
                for name, wt in zip(("q", "k", "v"), ws, strict=True):
                    getattr(mha, f"{name}_proj_weight").copy_(wt)
            if mha.in_proj_bias is not None:
                mha.in_proj_bias.copy_(torch.cat([p.bias for p in projections[:3]]))
            mha.out_proj.weight.copy_(self.out_proj.weight)
            if mha.out_proj.bias is not None:
                mha.out_proj.bias.copy_(self.out_proj.bias)
        return mha.train(self.training)

    def _float_mask(self, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        if mask is None:
            return None
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                mask, float("-inf")
            )
        if not mask.is_floating_point():
            raise TypeError(f"masks must be bool or floating point; got {mask.dtype}")
        return mask.to(dtype)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if is_causal and attn_mask is None:
            raise RuntimeError("is_causal is a hint about attn_mask: pass the causal attn_mask too")
        batched = query.dim() == 3
        if not batched:  # [L, E] -> [1, L, E]
            query, key, value = query[None], key[None], value[None]
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask[None]
        elif not self.batch_first:  # [L, N, E] -> [N, L, E]
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, length, _ = query.shape
        s, h, d = key.shape[1], self.num_heads, self.head_dim
        q = self.q_proj(query).view(n, length, h, d).transpose(1, 2)  # [N, H, L, d]
        k = self.k_proj(key).view(n, s, h, d).transpose(1, 2)  # [N, H, S, d]
        v = self.v_proj(value).view(n, s, h, d).transpose(1, 2)
        mask = self._float_mask(attn_mask, q.dtype)
        if mask is not None:
            # [L, S] broadcasts; [N*H, L, S] (or [H, L, S] unbatched) is per (sample, head)
            mask = mask.view(n, h, length, s) if mask.dim() == 3 else mask
        pad = self._float_mask(key_padding_mask, q.dtype)
        if pad is not None:
            pad = pad.view(n, 1, 1, s)
            mask = pad if mask is None else mask + pad
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * (1.0 / math.sqrt(d))) @ k.transpose(-2, -1)  # [N, H, L, S]
            if mask is not None:
                scores = scores + mask
            weights = F.dropout(scores.softmax(-1), p=p, training=p > 0)
            out = weights @ v
            if average_attn_weights:
                weights = weights.mean(1)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, self.embed_dim))
        if not batched:
            return out[0], None if weights is None else weights[0]
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


_M = TypeVar("_M", bound=nn.Module)


def _swap(model: nn.Module, kind: type[_M], convert: Callable[[_M], nn.Module]) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if isinstance(model, kind):
        raise TypeError(
            f"model is itself a {kind.__name__}; pass the model that contains it (the module "
            "object cannot be replaced in place)"
        )
    swapped = False
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, kind):
                setattr(parent, name, convert(child))
                swapped = True
    if swapped:
        for m in model.modules():
            # its fused path multiplies the packed in_proj_weight itself (see the class above)
            if isinstance(m, nn.TransformerEncoder):
                m.use_nested_tensor = False
    return model


def unpack_attention(model: nn.Module) -> nn.Module:
    """Replace every ``nn.MultiheadAttention`` in ``model`` by a :class:`LinearMultiheadAttention`
    with the same weights, in place; returns ``model``.

    Call it before :func:`fq_quant.quantize_model` (or calibration) on models built with torch's
    attention (torchvision ViTs, ``nn.Transformer*``, open_clip): afterwards the query/key/value
    projections are ``nn.Linear`` layers, so they get scopes, bits, importance and MACs like any
    other layer. The state-dict keys change from ``attn.in_proj_weight`` to
    ``attn.q_proj.weight``, ``attn.k_proj.weight``, ``attn.v_proj.weight`` (``out_proj`` keeps its
    name). :func:`pack_attention` undoes it. timm models do not need it (their attention already
    uses ``nn.Linear``).
    """
    return _swap(model, nn.MultiheadAttention, LinearMultiheadAttention.from_attention)


def pack_attention(model: nn.Module) -> nn.Module:
    """Replace every :class:`LinearMultiheadAttention` in ``model`` by an equivalent
    ``nn.MultiheadAttention``, in place (after ``strip_quantization``); returns ``model``."""
    return _swap(model, LinearMultiheadAttention, LinearMultiheadAttention.to_attention)


def bare_attention_modules(model: nn.Module) -> list[str]:
    """Qualified names of the ``nn.MultiheadAttention`` modules whose input projection is a bare
    parameter that :func:`fq_quant.quantize_model` cannot quantize."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
