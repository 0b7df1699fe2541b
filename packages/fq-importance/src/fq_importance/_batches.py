"""Reading ``(x, y, g)`` calibration batches."""

from __future__ import annotations

from collections.abc import Mapping

import torch

_KEYS = ("image", "label", "group")


def unpack(batch: object, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x [B, ...], y int64 [B], g int64 [B])`` from a tuple or a mapping; ValueError names the batch."""
    if isinstance(batch, Mapping):
        missing = [k for k in _KEYS if k not in batch]
        if missing:
            raise ValueError(
                f"batch {index} lacks key(s) {missing} (has {list(batch)[:6]}); calibration needs "
                f"'image', 'label' and 'group' (the sensitive group of each sample)"
            )
        x, y, g = (batch[k] for k in _KEYS)
    elif isinstance(batch, (tuple, list)):
        if len(batch) != 3:
            raise ValueError(
                f"batch {index} is a {len(batch)}-tuple; calibration needs (x, y, g) with the "
                f"sensitive group g of each sample"
            )
        x, y, g = batch
    else:
        raise TypeError(
            f"batch {index} must be an (x, y, g) tuple or a mapping; got {type(batch).__name__}"
        )
    for name, t in (("x", x), ("label", y), ("group", g)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"batch {index}: {name} must be a torch.Tensor; got {type(t).__name__}")
    n = x.shape[0] if x.dim() else 0
    for name, t in (("label", y), ("group", g)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"batch {index}: {name} must be an integer tensor; got {t.dtype}")
        if t.dim() != 1 or t.shape[0] != n:
            raise ValueError(
                f"batch {index}: {name} must have shape [{n}] (one per sample); got {tuple(t.shape)}"
            )
    if n == 0:
        raise ValueError(f"batch {index} is empty")
    return x, y.to(torch.int64), g.to(torch.int64)
