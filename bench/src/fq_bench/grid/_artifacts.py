"""Reusable artifacts on disk: FP32 checkpoints and calibration results, as safetensors.

Both are written atomically (temp file + ``os.replace``) and carry a fingerprint in their
metadata; a file that does not parse, or was made under another fingerprint, reads as missing.
Concurrent shards that produce the same artifact write identical bytes, so the last rename wins
harmlessly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ._cells import atomic_write_bytes

if TYPE_CHECKING:
    from fq_importance import GroupImportance

logger = logging.getLogger("fq_bench.grid")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """``tensors`` (copied to contiguous CPU) and string ``metadata`` to ``path``, atomically."""
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save(clean, metadata=metadata))


def load_tensors(
    path: Path, *, fingerprint: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """``(tensors, metadata)`` or ``None`` when missing, unreadable, or of another fingerprint."""
    if not path.is_file():
        return None
    try:
        data = path.read_bytes()
        tensors = st_load(data)
        from safetensors import safe_open  # metadata needs a file handle

        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except (OSError, SafetensorError, ValueError) as exc:
        logger.warning("%s is unreadable (%s); recomputing it", path, exc)
        return None
    if metadata.get("fingerprint") != fingerprint:
        logger.info("%s was made under another config; recomputing it", path)
        return None
    return tensors, metadata


def save_checkpoint(
    path: Path, model: torch.nn.Module, *, fingerprint: str, info: dict[str, Any]
) -> None:
    """The model's ``state_dict`` (plain float model) with ``info`` as JSON metadata."""
    save_tensors(path, model.state_dict(), {"fingerprint": fingerprint, "info": json.dumps(info)})


def save_group_importance(
    path: Path, gi: GroupImportance, *, fingerprint: str, extra: dict[str, Any]
) -> None:
    """A ``fq_importance.GroupImportance`` as tensors ``"<group>/<layer>"`` plus JSON metadata."""
    tensors = {f"{g}/{layer}": t for g, maps in gi.importance.items() for layer, t in maps.items()}
    meta = {
        "fingerprint": fingerprint,
        "metric": gi.metric,
        "granularity": gi.granularity.value,
        "batches": str(gi.batches),
        "counts": json.dumps({str(g): int(c) for g, c in gi.counts.items()}),
        "layers": json.dumps(list(gi.layers)),
        "extra": json.dumps(extra),
    }
    save_tensors(path, tensors, meta)


def load_group_importance(path: Path, *, fingerprint: str) -> GroupImportance | None:
    """What :func:`save_group_importance` wrote, or ``None`` (missing, corrupt, stale)."""
    got = load_tensors(path, fingerprint=fingerprint)
    if got is None:
        return None
    from fq_importance import GroupImportance
    from fq_quant import Granularity

    tensors, meta = got
    try:
        counts = {int(g): int(c) for g, c in json.loads(meta["counts"]).items()}
        layers = json.loads(meta["layers"])
        importance = {
            g: {layer: tensors[f"{g}/{layer}"] for layer in layers} for g in sorted(counts)
        }
        return GroupImportance(
            importance=importance,
            counts=counts,
            metric=meta["metric"],
            granularity=Granularity.parse(meta["granularity"]),
            batches=int(meta["batches"]),
        )
    except (KeyError, ValueError, TypeError) as exc:
        logger.warning("%s is malformed (%s); recomputing it", path, exc)
        return None
