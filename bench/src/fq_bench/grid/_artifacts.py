"""Reusable artifacts on disk: FP32 checkpoints and calibration results, as safetensors.

Both are written atomically (temp file + ``os.replace``) and carry in their metadata a
fingerprint (the config fields they depend on) and ``content_sha256``, a hash of their tensors
(names, dtypes, shapes and data bytes; ``fq_quant.tensors_sha256``). A file that does not parse, was made
under another fingerprint, or whose tensors no longer match their hash (a flipped byte) reads as
missing, with a warning, and is recomputed. Concurrent shards that produce the same artifact write
the same tensors (the same content hash; the metadata, e.g. the training time, may differ), so
the last rename wins harmlessly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from fq_quant import tensors_sha256
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ._cells import atomic_write_bytes

if TYPE_CHECKING:
    from fq_importance import GroupImportance

logger = logging.getLogger("fq_bench.grid")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """``tensors`` (copied to contiguous CPU) and string ``metadata`` plus ``content_sha256`` to
    ``path``, atomically."""
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    digest = tensors_sha256(st_save(clean))
    atomic_write_bytes(path, st_save(clean, metadata={**metadata, "content_sha256": digest}))


def load_tensors(
    path: Path, *, fingerprint: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """``(tensors, metadata)`` or ``None`` when missing, unreadable, of another fingerprint, or
    when the tensors do not match the ``content_sha256`` they were saved with (each with a
    warning but the fingerprint, which is a normal config change).

    A file without ``content_sha256`` (written before it existed) is used, with a warning that it
    cannot be verified.
    """
    if not path.is_file():
        return None
    try:
        blob = path.read_bytes()
        tensors = st_load(blob)
        n = int.from_bytes(blob[:8], "little")
        metadata = dict(json.loads(blob[8 : 8 + n]).get("__metadata__") or {})
    except (OSError, SafetensorError, ValueError, TypeError, AttributeError) as exc:
        logger.warning("%s is unreadable (%s); recomputing it", path, exc)
        return None
    if metadata.get("fingerprint") != fingerprint:
        logger.info("%s was made under another config; recomputing it", path)
        return None
    stored = metadata.get("content_sha256")
    if stored is None:
        logger.warning("%s carries no content hash (an older version wrote it); unverified", path)
    elif stored != tensors_sha256(blob):
        logger.warning(
            "%s: its tensors do not match their content hash (corrupted on disk); recomputing it",
            path,
        )
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
