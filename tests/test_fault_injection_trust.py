"""Fault injection (issue 25): a user's own data, trusted.

Each test is one case of the issue's probe, on the package side: results that follow the data,
paths that stay inside the dataset folder, missing-value markers, degenerate groups, the packed
format's hash, bounded memory for large ids, and clear command-line errors. The grid's cases are
in ``test_fault_injection.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

# ---------------------------------------------------------------- 6. packed format downgrade


def _packed_file(tmp_path: Path) -> Path:
    import torch
    from fq_quant import BitAssignment, Granularity, ScopeLayout, export_packed, quantize_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    layout = ScopeLayout.from_model(model, Granularity.CHANNEL)
    wrapped = quantize_model(model, BitAssignment.uniform(layout, 4))
    return export_packed(wrapped, tmp_path / "m.safetensors")


def _edit(path: Path, *, scale: float | None, meta: dict[str, str | None]) -> None:
    """Re-save ``path`` with layer 0's first scale set to ``scale`` and metadata keys replaced
    (``None``: removed); the stored content hash is left as it was."""
    from safetensors.torch import load, save

    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    m = json.loads(blob[8 : 8 + n])["__metadata__"]
    t = load(blob)
    if scale is not None:
        s = t["0.weight:scales"].clone()
        s[0] = scale
        t["0.weight:scales"] = s
    for k, v in meta.items():
        if v is None:
            m.pop(k, None)
        else:
            m[k] = v
    path.write_bytes(save(t, metadata=m))


def test_a_packed_file_with_a_hash_is_verified_whatever_its_version(tmp_path: Path) -> None:
    from fq_quant import load_packed

    path = _packed_file(tmp_path)
    state, _ = load_packed(path)
    # the probe: the header's version edited from 2 to 1, and a scale edited, hash kept
    _edit(
        path, scale=float(state["0.weight"].abs().max()) * 7, meta={"format": "fq_quant.packed/1"}
    )
    with pytest.raises(ValueError, match=f"{path}: content hash mismatch"):
        load_packed(path)
    with pytest.raises(ValueError, match="content hash mismatch"):
        load_packed(path, allow_unverified=True)  # a hash is checked even then


def test_a_version_1_file_is_read_only_on_request(tmp_path: Path) -> None:
    from fq_quant import load_packed

    path = _packed_file(tmp_path)
    state, _ = load_packed(path)
    _edit(path, scale=None, meta={"format": "fq_quant.packed/1", "content_sha256": None})
    with pytest.raises(ValueError, match="version 1 carries no content hash.*allow_unverified"):
        load_packed(path)
    with pytest.warns(UserWarning, match="read unverified"):
        old, _ = load_packed(path, allow_unverified=True)
    assert all(np.array_equal(old[k].numpy(), state[k].numpy()) for k in state)
