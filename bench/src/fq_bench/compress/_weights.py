"""The user's trained weights: a safetensors state_dict checked against the model it must fit."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

#: Buffers some torch versions add or drop; their absence never changes a prediction.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (nothing is unpickled).

    Raises:
        FileNotFoundError: ``path`` does not exist. ValueError: not a readable safetensors file
            (a ``.pt``/``.pth`` pickle, a truncated download), saying how to convert one.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path}: no such file")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise ValueError(
            f"--weights {path}: not a readable safetensors file ({exc}). Save your model with "
            "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')"
        ) from None


def check_fits(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Raise ``ValueError`` unless ``state`` holds exactly ``model``'s tensors at their shapes.

    The message names the missing, unexpected and mis-shaped tensors (the first five of each,
    with the counts) and the likely fix: another ``num_classes`` when only the head differs,
    another architecture name otherwise. ``num_batches_tracked`` buffers may be absent.
    """
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(k for k in set(want) - set(got) if not k.endswith(_OPTIONAL_SUFFIXES))
    unexpected = sorted(set(got) - set(want))
    reshaped = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if not (missing or unexpected or reshaped):
        return
    parts = []
    for what, keys in (
        ("missing from the file", missing),
        ("in the file, not in the model", unexpected),
    ):
        if keys:
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            parts.append(f"{len(keys)} tensor(s) {what}: {', '.join(keys[:5])}{more}")
    if reshaped:
        shown = "; ".join(
            f"{k}: {got[k]} in the file, {want[k]} in the model" for k in reshaped[:5]
        )
        parts.append(f"{len(reshaped)} tensor(s) of another shape: {shown}")
    if reshaped and not (missing or unexpected):
        fix = (
            "the layers match but some sizes differ: the data has another number of classes "
            "than the model was trained with, or the model was built with other settings"
        )
    else:
        fix = (
            "the file holds another architecture (or keys with a prefix such as 'module.' or "
            "'model.'): pass the timm name the weights were trained with, or strip the prefix"
        )
    raise ValueError(
        f"{source} does not fit {type(model).__name__}: {' | '.join(parts)}. Likely fix: {fix}"
    )


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load the safetensors state_dict at ``path`` into ``model`` after :func:`check_fits`."""
    state = read_state_dict(path)
    check_fits(model, state, source=f"--weights {path}")
    model.load_state_dict(state, strict=False)  # only optional buffers may be absent
    return model
