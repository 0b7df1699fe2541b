"""The exact byte size of a packed file, from a formula (nothing encoded or serialized)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import torch
from torch import nn

from ._assignment import BitAssignment
from ._bitstream import FULL_BITS, ScopeGroups, index_width
from ._granularity import Granularity
from ._packed import (
    HASH_KEY,
    header_metadata,
    plain_state_dict,
    quantized_weights,
    resolve_assignment,
)


def packed_size(
    model: nn.Module, assignment: BitAssignment | None = None, *, header: bool = True
) -> int:
    """Exactly the bytes :func:`export_packed` writes for ``model`` at ``assignment``, unwritten.

    Computed from a formula (nothing is encoded or serialized), so it is cheap; the tests check
    it equals the written file's size byte for byte.

    Per quantized layer, with ``n_b`` weights at width ``b`` (``1 <= b < 32`` coded):

    * codes: ``ceil(sum_b n_b * b / 8)`` (one bit stream per layer);
    * scales: 4 bytes (the weight's itemsize) per scope with ``1 <= b < 32``, or per (output
      channel, bit) pair present at param granularity;
    * floats: 4 bytes per ``b = 32`` weight; pruned weights (``b = 0``) cost nothing;
    * rare extras: 8 bytes per exact zero in a 1-bit scope; at param granularity the bit map,
      ``K`` bytes of palette plus ``ceil(N * ceil(log2 K) / 8)`` for ``K`` distinct widths.

    Plus every other state-dict tensor at its size (biases, norms, BatchNorm running statistics
    and ``num_batches_tracked``: 4 bytes per float32 value, 8 per int64) and, with
    ``header=True``, the safetensors header (8 bytes + JSON, padded to 8). Without the header and
    the rare extras this is ``fq_fairmetrics.cost_report(...).size_bytes``.
    """
    assignment = resolve_assignment(model, assignment)
    weights = quantized_weights(model, assignment)
    sizes: dict[str, tuple[str, list[int], int]] = {}
    g = assignment.granularity
    for name, w in weights.items():
        groups = ScopeGroups.of(assignment.bits[name], tuple(w.shape), g)
        n = dict(zip(groups.widths, groups.counts, strict=True))
        code_bytes = math.ceil(sum(n[b] * b for b in n if 1 <= b < FULL_BITS) / 8)
        n_scales = sum(int(groups.row_runs(i).numel()) for i in groups.coded())
        item = w.element_size()
        prefix = f"{name}.weight:"
        sizes[prefix + "codes"] = ("U8", [code_bytes], code_bytes)
        if n_scales:
            sizes[prefix + "scales"] = (_st_dtype(w.dtype), [n_scales], n_scales * item)
        if n.get(FULL_BITS):
            sizes[prefix + "float"] = (_st_dtype(w.dtype), [n[FULL_BITS]], n[FULL_BITS] * item)
        if 1 in n:
            sl = groups.group(groups.widths.index(1))
            z = int((w.reshape(-1)[groups.perm[sl]] == 0).sum())
            if z:
                sizes[prefix + "zeros1"] = ("I64", [z], 8 * z)
        if g is Granularity.PARAM:
            k = len(n)
            sizes[prefix + "bit_palette"] = ("U8", [k], k)
            width = index_width(k)
            if width:
                nb = math.ceil(w.numel() * width / 8)
                sizes[prefix + "bit_index"] = ("U8", [nb], nb)
    for key, value in plain_state_dict(model).items():
        if key.endswith(".weight") and key.removesuffix(".weight") in weights:
            continue
        sizes[key] = (
            _st_dtype(value.dtype),
            list(value.shape),
            value.numel() * value.element_size(),
        )
    payload = sum(s for _, _, s in sizes.values())
    if not header:
        return payload
    meta = {**header_metadata(weights, assignment), HASH_KEY: "0" * 64}  # a hash's length
    return payload + _header_size(sizes, meta)


#: safetensors' dtype names, in the order of its ``Dtype`` enum: it writes tensors sorted by
#: dtype (descending in this order), then by name, which fixes the offsets in its header.
_ST_DTYPES: dict[torch.dtype, str] = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int32: "I32",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int64: "I64",
}
_ST_RANK = {name: i for i, name in enumerate(_ST_DTYPES.values())}


def _st_dtype(dtype: torch.dtype) -> str:
    try:
        return _ST_DTYPES[dtype]
    except KeyError:
        raise ValueError(
            f"packed_size cannot size a {dtype} tensor; supported: "
            f"{', '.join(str(d).removeprefix('torch.') for d in _ST_DTYPES)}"
        ) from None


def _header_size(sizes: Mapping[str, tuple[str, list[int], int]], meta: Mapping[str, str]) -> int:
    """The safetensors header: 8-byte length, then compact JSON padded with spaces to 8 bytes."""
    header: dict[str, object] = {"__metadata__": dict(meta)}
    offset = 0
    for key in sorted(sizes, key=lambda k: (-_ST_RANK[sizes[k][0]], k)):
        dtype, shape, nbytes = sizes[key]
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    n = len(json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode())
    return 8 + n + (-n) % 8
