"""Predictions over the test split from a torch model or an ONNX Runtime session."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn


def onnx_logits(session: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """A batch -> logits callable over an ONNX Runtime session with input ``"input"``
    ``[batch, C, H, W]`` float32 and output ``"logits"`` (``fq_quant.export_onnx``'s graph)."""
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        out = session.run(None, {name: x.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(np.asarray(out))

    return run


@torch.no_grad()
def predict(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor], loader: Iterable[Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(labels [N], groups [N], predictions [N])`` int64 over ``loader`` in its order.

    ``model``: an ``nn.Module`` (run in eval mode on its own device, its training flags
    restored; a fake-quantized model's weights are quantized once for the pass) or any callable
    from a ``[B, C, H, W]`` batch to ``[B, classes]`` logits (e.g. :func:`onnx_logits`).
    """
    from torch.nn.utils import parametrize

    ys, gs, ps = [], [], []
    if isinstance(model, nn.Module):
        modes = {m: m.training for m in model.modules()}
        device = next(model.parameters()).device
        model.eval()
        try:
            with parametrize.cached():
                for x, y, g in loader:
                    ps.append(model(x.to(device)).argmax(1).cpu())
                    ys.append(y)
                    gs.append(g)
        finally:
            for m, flag in modes.items():
                m.train(flag)
    else:
        for x, y, g in loader:
            ps.append(model(x).argmax(1).cpu())
            ys.append(y)
            gs.append(g)
    return tuple(torch.cat(t).numpy().astype(np.int64) for t in (ys, gs, ps))  # type: ignore[return-value]
