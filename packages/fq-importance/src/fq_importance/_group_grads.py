"""Per-group weight gradients from one shared graph: the row-split ("fused") path and its checks.

``calibrate`` scores each group by its own loss's weight gradients. In eval mode a sample's loss
depends only on its own activations, so one backward to the layers' outputs gives every group's
weight gradient from that group's rows alone; this module records the layers' inputs and outputs,
builds those gradients, says where the split does not apply, and checks it against autograd.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn
from torch.nn.grad import conv2d_weight
from torch.nn.utils import parametrize


def fused_group_grads(ce, inverse, n, captured, layers, weights, *, keep):
    """``rows -> {layer: d(sum_{i in rows} ce_i / n_g(i))/dW}`` from ONE backward to the outputs.

    In eval mode a sample's loss depends only on its own activations, so row ``i`` of
    ``d(sum_g L_g)/d out_l`` is ``dL_g(i)/d out_l[i]``, and ``dL_g/dW_l`` is the weight gradient
    built from group ``g``'s rows alone (its inputs and output gradients). Over all groups that
    is one batch worth of weight-gradient work, whatever ``G``. ``keep`` retains the graph.
    """
    total = (ce / n[inverse].to(ce.dtype)).sum()  # = sum_g L_g
    outs = [out for name in layers for _, out in captured[name]]
    deltas = iter(torch.autograd.grad(total, outs, allow_unused=True, retain_graph=keep))
    pairs = {name: [(inp, next(deltas)) for inp, _ in captured[name]] for name in layers}

    def rows_grads(rows: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, layer in layers.items():
            grad = torch.zeros_like(weights[name], memory_format=torch.contiguous_format)
            for inp, delta in pairs[name]:
                if delta is not None:
                    grad += _weight_grad(layer, inp.detach()[rows], delta[rows])
            out[name] = grad
        return out

    return rows_grads


def not_batch_first(captured, batch: int) -> str | None:
    """The first layer call whose input or output does not lead with the batch dim, described."""
    for name, calls in captured.items():
        for inp, out in calls:
            for what, t in (("input", inp), ("output", out)):
                if t.dim() == 0 or t.shape[0] != batch:
                    return f"layer {name!r} got an {what} of shape {tuple(t.shape)}"
    return None


def check_fused(ce, inverse, n, parts, grads_of, weights):
    """Compare the row-split gradients with autograd's before they are used.

    The partition is the batch's groups, or its even and odd rows when it holds one group (the
    split must hold for any rows, so this checks it too). Returns ``(exact, verified)``:
    ``exact`` is ``None`` when every part agrees, else autograd's gradients per part (per group
    when the partition was the groups); ``verified`` is whether the partition had two parts.
    """
    if len(parts) == 1 and ce.shape[0] > 1:
        idx = torch.arange(ce.shape[0], device=ce.device)
        parts = [idx[0::2], idx[1::2]]
    weighted = ce / n[inverse].to(ce.dtype)
    ws = list(weights.values())
    fused = [grads_of(r) for r in parts]
    exact = [dict(zip(weights, grad_or_zeros(weighted[r].sum(), ws), strict=True)) for r in parts]
    if _agree(fused, exact):
        return None, len(parts) > 1
    return exact, False


def _agree(fused: list[dict[str, torch.Tensor]], exact: list[dict[str, torch.Tensor]]) -> bool:
    """Every group's and layer's gradient equal within 1e-3 of its largest entry (one host sync)."""
    err, tol = [], []
    for f, e in zip(fused, exact, strict=True):
        for name in e:
            err.append((f[name] - e[name]).abs().max())
            tol.append(1e-3 * e[name].abs().max() + 1e-30)
    return bool((torch.stack(err) <= torch.stack(tol)).all())


def _weight_grad(
    layer: nn.Conv2d | nn.Linear, inp: torch.Tensor, delta: torch.Tensor
) -> torch.Tensor:
    """``dLoss/dW`` of a plain Conv2d / Linear from its input and its output gradient."""
    w = layer.weight
    if isinstance(layer, nn.Conv2d):
        return conv2d_weight(
            inp, w.shape, delta, layer.stride, layer.padding, layer.dilation, layer.groups
        )
    return delta.reshape(-1, w.shape[0]).T @ inp.reshape(-1, w.shape[1])


def is_fusable(layer: nn.Module) -> bool:
    """True when the layer's forward is the stock one on its own unparametrized weight."""
    if parametrize.is_parametrized(layer, "weight"):
        return False
    if isinstance(layer, nn.Conv2d):
        return (
            type(layer).forward is nn.Conv2d.forward
            and type(layer)._conv_forward is nn.Conv2d._conv_forward
            and layer.padding_mode == "zeros"
            and not isinstance(layer.padding, str)
        )
    return type(layer).forward is nn.Linear.forward


@contextlib.contextmanager
def capture(
    layers: Mapping[str, nn.Module],
) -> Iterator[dict[str, list[tuple[torch.Tensor, torch.Tensor]]]]:
    """Record ``(input, output)`` of every call of each layer during the block.

    The model continues with a copy of each output, so that an in-place op right after a layer
    (``nn.Hardswish(inplace=True)`` in mobilenet_v3, ``nn.ReLU(inplace=True)``) modifies the copy
    and the recorded output stays the layer's own: the gradient taken at it is then the gradient
    at the layer's output, which the fused weight gradients need.
    """
    captured: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in layers}

    def hook(name: str, args: tuple, out: torch.Tensor) -> torch.Tensor:
        captured[name].append((args[0], out))
        return out.clone()

    handles = [
        layer.register_forward_hook(lambda _m, args, out, name=name: hook(name, args, out))
        for name, layer in layers.items()
    ]
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def grad_or_zeros(outputs, inputs, **kw):
    """``torch.autograd.grad`` that returns zeros for weights the loss does not use."""
    kw.setdefault("retain_graph", True)
    grads = torch.autograd.grad(outputs, inputs, allow_unused=True, **kw)
    batched = kw.get("is_grads_batched", False)
    n = outputs.shape[0] if batched else None
    return [
        (
            torch.zeros((n, *w.shape) if batched else w.shape, dtype=w.dtype, device=w.device)
            if g is None
            else g
        )
        for g, w in zip(grads, inputs, strict=True)
    ]
