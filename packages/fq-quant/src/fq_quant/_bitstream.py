"""The per-layer bit stream of a packed file: widths grouped, codes bit-packed, scales in order.

The layout is documented in :mod:`fq_quant._packed`; :func:`pack_bits`/:func:`unpack_bits` are
the numpy bit operations, :func:`encode_layer`/:func:`decode_layer` one layer's tensors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ._assignment import BITS_DTYPE
from ._codes import dequantize, quantize_codes, scope_view
from ._granularity import Granularity

#: The width stored as float (no code).
FULL_BITS = 32


# -- bit packing ---------------------------------------------------------------------------------
def pack_bits(groups: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """Concatenate unsigned codes of given widths into one little-endian bit stream.

    Args:
        groups: ``(codes, width)`` pairs; ``codes`` a 1-D integer array with values ``< 2**width``,
            ``width`` in 0..16 (0 writes nothing).

    Returns:
        ``uint8 [ceil(sum len(codes) * width / 8)]``; bit ``j`` of code ``i`` of a group sits at
        stream position ``offset + i * width + j``.
    """
    pieces = []
    for codes, width in groups:
        if width == 0 or codes.size == 0:
            continue
        shifts = np.arange(width, dtype=np.uint16)
        pieces.append(
            ((codes.astype(np.uint16)[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)
        )
    if not pieces:
        return np.zeros(0, dtype=np.uint8)
    return np.packbits(np.concatenate(pieces), bitorder="little")


def unpack_bits(stream: np.ndarray, groups: list[tuple[int, int]]) -> list[np.ndarray]:
    """Inverse of :func:`pack_bits`: ``(count, width)`` pairs -> ``int64`` code arrays."""
    total = sum(n * w for n, w in groups)
    if stream.size * 8 < total:
        raise ValueError(f"code stream holds {stream.size * 8} bits; the bit map needs {total}")
    bits = np.unpackbits(stream, count=total, bitorder="little") if total else stream[:0]
    out, offset = [], 0
    for n, w in groups:
        if w == 0:
            out.append(np.zeros(n, dtype=np.int64))
            continue
        chunk = bits[offset : offset + n * w].reshape(n, w).astype(np.int64)
        offset += n * w
        out.append((chunk << np.arange(w, dtype=np.int64)).sum(axis=1))
    return out


def index_width(k: int) -> int:
    return 0 if k <= 1 else math.ceil(math.log2(k))


# -- per-layer encoding --------------------------------------------------------------------------
@dataclass(frozen=True)
class ScopeGroups:
    """A layer's weights grouped by bit-width.

    ``perm`` lists flat element indices by ascending width (stable, so row-major inside a group);
    ``rows`` is each sorted element's scale row (0 per tensor, else its output channel); group
    ``i`` (width ``widths[i]``) is ``perm[starts[i] : starts[i] + counts[i]]``.
    """

    perm: torch.Tensor
    rows: torch.Tensor
    widths: list[int]
    counts: list[int]
    starts: list[int]

    @classmethod
    def of(
        cls, bits: torch.Tensor, shape: tuple[int, ...], granularity: Granularity
    ) -> ScopeGroups:
        b_el = scope_view(bits.to(torch.int64), shape, granularity).expand(shape).reshape(-1)
        hist = torch.bincount(b_el, minlength=FULL_BITS + 1)
        widths = torch.nonzero(hist).reshape(-1).tolist()
        counts = hist[widths].tolist()
        starts = [0]
        for c in counts[:-1]:
            starts.append(starts[-1] + c)
        # A counting sort (one pass per width) rather than an argsort: widths are few.
        if len(widths) == 1:
            perm = torch.arange(b_el.numel())
        elif granularity is Granularity.CHANNEL:
            per = b_el.numel() // shape[0]
            scope_bits = bits.reshape(-1).to(torch.int64)
            order = torch.cat([torch.nonzero(scope_bits == b).reshape(-1) for b in widths])
            perm = (order[:, None] * per + torch.arange(per)).reshape(-1)
        else:
            perm = torch.cat([torch.nonzero(b_el == b).reshape(-1) for b in widths])
        if granularity is Granularity.TENSOR:
            rows = torch.zeros_like(perm)
        else:
            rows = perm // (b_el.numel() // shape[0])
        return cls(perm, rows, widths, counts, starts)

    def group(self, i: int) -> slice:
        return slice(self.starts[i], self.starts[i] + self.counts[i])

    def coded(self) -> list[int]:
        """Indices of the groups that carry codes and scales (``1 <= b < 32``)."""
        return [i for i, b in enumerate(self.widths) if 1 <= b < FULL_BITS]

    def row_runs(self, i: int) -> torch.Tensor:
        """Lengths of the runs of equal rows in group ``i``: one scale each."""
        return torch.unique_consecutive(self.rows[self.group(i)], return_counts=True)[1]


def encode_layer(
    w: torch.Tensor, bits: torch.Tensor, granularity: Granularity
) -> dict[str, torch.Tensor]:
    """The stored tensors of one layer (keys are the suffixes of ``_SUFFIXES``)."""
    shape = tuple(w.shape)
    groups = ScopeGroups.of(bits, shape, granularity)
    codes, scales = quantize_codes(w, bits, granularity)
    q = codes.reshape(-1)[groups.perm].to(torch.int64)
    s = scope_view(scales, shape, granularity).expand(shape).reshape(-1)[groups.perm]
    out: dict[str, torch.Tensor] = {}
    code_groups, run_scales = [], []
    for i in groups.coded():
        b, sl = groups.widths[i], groups.group(i)
        if b == 1:
            # sign(w) >= 0 as one bit; exact zeros (sign 0) are listed apart.
            code_groups.append(((q[sl] >= 0).numpy().astype(np.uint16), 1))
            zeros = groups.perm[sl][q[sl] == 0]
            if zeros.numel():
                out["zeros1"] = zeros
        else:
            code_groups.append(((q[sl] + (2 ** (b - 1) - 1)).numpy().astype(np.uint16), b))
        # Every element of a (row, b) group carries the same scale: keep each run's first.
        run = groups.row_runs(i)
        run_scales.append(s[sl][torch.cumsum(run, 0) - run])
    out["codes"] = torch.from_numpy(pack_bits(code_groups))
    if run_scales:
        out["scales"] = torch.cat(run_scales)
    if FULL_BITS in groups.widths:
        out["float"] = w.reshape(-1)[groups.perm[groups.group(groups.widths.index(FULL_BITS))]]
    if granularity is Granularity.PARAM:
        palette, index = torch.unique(bits.reshape(-1).to(torch.int64), return_inverse=True)
        out["bit_palette"] = palette.to(BITS_DTYPE)
        width = index_width(palette.numel())
        if width:
            out["bit_index"] = torch.from_numpy(
                pack_bits([(index.numpy().astype(np.uint16), width)])
            )
    return out


def decode_layer(
    name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    bits: torch.Tensor,
    granularity: Granularity,
    parts: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """Dequantized weight of one layer, ``shape`` and ``dtype``, from its stored tensors."""
    if tuple(bits.shape) != granularity.scope_shape(shape):
        raise ValueError(
            f"layer {name!r}: its bit map has shape {tuple(bits.shape)}; a {list(shape)} weight "
            f"at {granularity.value} granularity needs {granularity.scope_shape(shape)}"
        )
    groups = ScopeGroups.of(bits, shape, granularity)
    coded = groups.coded()
    stream = parts.get("codes", torch.zeros(0, dtype=torch.uint8))
    want = math.ceil(sum(groups.counts[i] * groups.widths[i] for i in coded) / 8)
    if stream.dtype != torch.uint8 or stream.numel() != want:
        raise ValueError(
            f"layer {name!r}: the code stream holds {stream.numel()} bytes ({stream.dtype}); its "
            f"bit map needs exactly {want} uint8"
        )
    codes = unpack_bits(stream.numpy(), [(groups.counts[i], groups.widths[i]) for i in coded])
    values = torch.zeros(math.prod(shape), dtype=dtype)  # in sorted order; pruned stay 0
    scales = parts.get("scales", torch.zeros(0, dtype=dtype))
    n_scales = sum(int(groups.row_runs(i).numel()) for i in coded)
    if scales.numel() != n_scales:
        raise ValueError(
            f"layer {name!r}: the file holds {scales.numel()} scales; its bit map needs exactly "
            f"{n_scales}"
        )
    check_finite(name, "scale", scales)
    offset = 0
    for i, c in zip(coded, codes, strict=True):
        b, sl = groups.widths[i], groups.group(i)
        run = groups.row_runs(i)
        if offset + run.numel() > scales.numel():
            raise ValueError(
                f"layer {name!r}: the file holds {scales.numel()} scales; its bit map needs more"
            )
        s_el = torch.repeat_interleave(scales[offset : offset + run.numel()], run)
        offset += run.numel()
        if b >= 2 and c.size and int(c.max()) > 2**b - 2:
            raise ValueError(
                f"layer {name!r}: a {b}-bit code of {int(c.max())} is outside [0, {2**b - 2}]"
            )
        code_t = torch.from_numpy(c)
        q = torch.where(code_t == 1, 1, -1) if b == 1 else code_t - (2 ** (b - 1) - 1)
        values[sl] = dequantize(q, s_el, Granularity.PARAM)
    if FULL_BITS in groups.widths:
        i = groups.widths.index(FULL_BITS)
        floats = parts.get("float")
        if floats is None or floats.numel() != groups.counts[i]:
            raise ValueError(f"layer {name!r}: the file lacks its {groups.counts[i]} float weights")
        check_finite(name, "float weight", floats)
        values[groups.group(i)] = floats.to(dtype)
    out = torch.empty_like(values)
    out[groups.perm] = values
    if "zeros1" in parts:
        out[parts["zeros1"]] = 0
    return out.reshape(shape)


def check_finite(name: str, what: str, t: torch.Tensor) -> None:
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        raise ValueError(
            f"layer {name!r}: {int(bad.sum())} non-finite {what}(s) (first: "
            f"{float(t[bad][0])}); the file is corrupt"
        )
