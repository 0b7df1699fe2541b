"""Real low-bit storage: bit-packed codes, per-scope scales and float tensors in one safetensors file.

Layout of a file written by :func:`export_packed` (all tensors little-endian, safetensors format):

* Header metadata (strings): ``format`` (``"fq_quant.packed/2"``), ``granularity``, ``layers``
  (JSON: quantized layer name -> weight shape and dtype, in module order), at tensor and
  channel granularity ``assignment`` (:meth:`BitAssignment.to_json`), and ``content_sha256``:
  the SHA-256 of the other metadata (canonical JSON) and of every tensor
  (:func:`tensors_sha256`), so a changed bit width in the header or a flipped byte in a tensor
  is refused on load, whatever the header's version says. Version 1 (no hash) is read only
  with ``load_packed(..., allow_unverified=True)``, with a warning.
* Per quantized layer ``L`` (the weight's elements grouped by bit-width ``b``, ascending; inside a
  group in row-major order):

  - ``L.weight:codes`` ``uint8``: one bit stream for the whole layer, ``ceil(sum_b n_b * b / 8)``
    bytes, codes of width ``b`` written least significant bit first (``np.packbits`` little
    bit order). ``b >= 2`` stores ``q + Q_b`` in ``[0, 2^b - 2]``; ``b = 1`` stores the sign bit
    (1 for ``w >= 0``); ``b = 0`` and ``b = 32`` store no code.
  - ``L.weight:scales`` (weight dtype, float32 normally): for each ``1 <= b < 32`` in ascending
    order, one scale per scope of that width in row order (tensor/channel granularity) or one per
    (output channel, ``b``) pair present (param granularity). ``b >= 2``: ``s = max|w| / Q_b``;
    ``b = 1``: the mean magnitude ``a``.
  - ``L.weight:float``: the ``b = 32`` weights as stored, row-major (absent when none).
  - ``L.weight:zeros1`` ``int64``: flat indices of exact zeros in 1-bit scopes, which the
    quantizer maps to 0 (``sign(0) = 0``); absent when none (the usual case).
  - param granularity only: ``L.weight:bit_palette`` ``uint8 [K]`` (the distinct widths) and
    ``L.weight:bit_index``, each weight's palette index bit-packed at ``ceil(log2 K)`` bits
    (absent when ``K = 1``): the bit map is data there, too big for a JSON header.

* Every other entry of the plain model's ``state_dict`` (biases, norms, embeddings, BatchNorm
  statistics) under its own name, as is.

Decoding computes ``s * q`` (resp. ``a * sign``) in the stored dtype with the very scale the
quantizer used, so the weights are bit-identical to the fake-quantized ones.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn
from torch.nn.utils import parametrize

from ._assignment import BITS_DTYPE, BitAssignment
from ._codes import dequantize, quantize_codes, scope_view
from ._granularity import Granularity
from ._layers import float_weight, quantizable_layers
from ._layout import ScopeLayout
from ._model import current_assignment, is_quantized, quantize_model

FORMAT = "fq_quant.packed/2"
#: The first version: the same layout without ``content_sha256``; read only on request.
FORMAT_V1 = "fq_quant.packed/1"
_HASH_KEY = "content_sha256"
_SUFFIXES = ("codes", "scales", "float", "zeros1", "bit_palette", "bit_index")
_FULL = 32


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


def _index_width(k: int) -> int:
    return 0 if k <= 1 else math.ceil(math.log2(k))


# -- per-layer encoding --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Groups:
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
    def of(cls, bits: torch.Tensor, shape: tuple[int, ...], granularity: Granularity) -> _Groups:
        b_el = scope_view(bits.to(torch.int64), shape, granularity).expand(shape).reshape(-1)
        hist = torch.bincount(b_el, minlength=_FULL + 1)
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
        return [i for i, b in enumerate(self.widths) if 1 <= b < _FULL]

    def row_runs(self, i: int) -> torch.Tensor:
        """Lengths of the runs of equal rows in group ``i``: one scale each."""
        return torch.unique_consecutive(self.rows[self.group(i)], return_counts=True)[1]


def _encode_layer(
    w: torch.Tensor, bits: torch.Tensor, granularity: Granularity
) -> dict[str, torch.Tensor]:
    """The stored tensors of one layer (keys are the suffixes of ``_SUFFIXES``)."""
    shape = tuple(w.shape)
    groups = _Groups.of(bits, shape, granularity)
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
    if _FULL in groups.widths:
        out["float"] = w.reshape(-1)[groups.perm[groups.group(groups.widths.index(_FULL))]]
    if granularity is Granularity.PARAM:
        palette, index = torch.unique(bits.reshape(-1).to(torch.int64), return_inverse=True)
        out["bit_palette"] = palette.to(BITS_DTYPE)
        width = _index_width(palette.numel())
        if width:
            out["bit_index"] = torch.from_numpy(
                pack_bits([(index.numpy().astype(np.uint16), width)])
            )
    return out


def _decode_layer(
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
    groups = _Groups.of(bits, shape, granularity)
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
    _check_finite(name, "scale", scales)
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
    if _FULL in groups.widths:
        i = groups.widths.index(_FULL)
        floats = parts.get("float")
        if floats is None or floats.numel() != groups.counts[i]:
            raise ValueError(f"layer {name!r}: the file lacks its {groups.counts[i]} float weights")
        _check_finite(name, "float weight", floats)
        values[groups.group(i)] = floats.to(dtype)
    out = torch.empty_like(values)
    out[groups.perm] = values
    if "zeros1" in parts:
        out[parts["zeros1"]] = 0
    return out.reshape(shape)


def _check_finite(name: str, what: str, t: torch.Tensor) -> None:
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        raise ValueError(
            f"layer {name!r}: {int(bad.sum())} non-finite {what}(s) (first: "
            f"{float(t[bad][0])}); the file is corrupt"
        )


def tensors_sha256(blob: bytes) -> str:
    """SHA-256 of the tensors of the safetensors file ``blob``: every tensor's name, dtype, shape
    and offsets (the header without its metadata, canonical JSON) and the data bytes.

    Independent of the metadata, so it can be stored there; the same for two files holding the
    same tensors whatever else their metadata says.
    """
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    header.pop("__metadata__", None)
    h = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    h.update(blob[8 + n :])
    return h.hexdigest()


def _packed_sha256(blob: bytes, meta: Mapping[str, str]) -> str:
    """The packed file's ``content_sha256``: its metadata (all but the hash) and its tensors."""
    body = {k: v for k, v in meta.items() if k != _HASH_KEY}
    h = hashlib.sha256(json.dumps(body, sort_keys=True).encode())
    h.update(tensors_sha256(blob).encode())
    return h.hexdigest()


def _resolve(model: nn.Module, assignment: BitAssignment | None) -> BitAssignment:
    if assignment is None:
        if not is_quantized(model):
            raise ValueError(
                f"model {type(model).__name__} is not quantized; call quantize_model first or pass assignment="
            )
        return current_assignment(model)
    if not isinstance(assignment, BitAssignment):
        raise TypeError(f"assignment must be a BitAssignment; got {type(assignment).__name__}")
    return assignment


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict as the plain (unwrapped) architecture names it, float weights included.

    A layer wrapped by :func:`quantize_model` contributes ``L.weight`` (its float original), not
    ``L.parametrizations.weight.*``.
    """
    state = model.state_dict()
    for name, layer in quantizable_layers(model).items():
        if parametrize.is_parametrized(layer, "weight"):
            prefix = f"{name}.parametrizations.weight."
            state = {
                k: v
                for k, v in state.items()
                if not k.startswith(prefix) or k == prefix + "original"
            }
            state[f"{name}.weight"] = state.pop(prefix + "original")
    return state


def _weights(model: nn.Module, assignment: BitAssignment) -> dict[str, torch.Tensor]:
    layout = ScopeLayout.from_model(model, assignment.granularity)
    assignment.check(layout)
    weights = {}
    for name, layer in quantizable_layers(model).items():
        w = float_weight(layer).detach().to("cpu")
        finite = torch.isfinite(w)
        if not bool(finite.all()):
            bad = float(w[~finite][0])
            raise ValueError(f"layer {name!r} has a non-finite weight ({bad}); cannot export it")
        weights[name] = w.contiguous()
    return weights


def _metadata(
    model_weights: Mapping[str, torch.Tensor], assignment: BitAssignment
) -> dict[str, str]:
    layers = {
        n: {"shape": list(w.shape), "dtype": str(w.dtype).removeprefix("torch.")}
        for n, w in model_weights.items()
    }
    meta = {
        "format": FORMAT,
        "granularity": assignment.granularity.value,
        "layers": json.dumps(layers, separators=(",", ":")),
    }
    if assignment.granularity is not Granularity.PARAM:
        meta["assignment"] = assignment.to_json()
    return meta


def _tensors(
    model: nn.Module, assignment: BitAssignment
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    weights = _weights(model, assignment)
    tensors: dict[str, torch.Tensor] = {}
    for name, w in weights.items():
        for suffix, t in _encode_layer(w, assignment.bits[name], assignment.granularity).items():
            tensors[f"{name}.weight:{suffix}"] = t.contiguous()
    for key, value in plain_state_dict(model).items():
        if key.removesuffix(".weight") in weights and key.endswith(".weight"):
            continue
        # clone: safetensors refuses tensors that share memory (tied weights).
        tensors[key] = value.detach().to("cpu").clone().contiguous()
    return tensors, _metadata(weights, assignment)


# -- public API ----------------------------------------------------------------------------------
def export_packed(
    model: nn.Module, path: str | os.PathLike[str], *, assignment: BitAssignment | None = None
) -> Path:
    """Write ``model`` with its weights really stored at their bit-widths to a safetensors file.

    Args:
        model: a model wrapped by :func:`quantize_model` (its current bits are used), or a plain
            model together with ``assignment``.
        path: destination; written atomically (temporary file in the same folder, then
            ``os.replace``).
        assignment: bits to store; default: the wrapped model's :func:`current_assignment`.

    Returns:
        ``path`` as a :class:`~pathlib.Path`. The file size is :func:`packed_size`.
        Layout: see the module docstring of ``fq_quant._packed`` (or the package README).
    """
    assignment = _resolve(model, assignment)
    tensors, meta = _tensors(model, assignment)
    path = Path(path)
    meta[_HASH_KEY] = _packed_sha256(st_save(tensors, metadata=meta), meta)
    payload = st_save(tensors, metadata=meta)
    # a plain exclusive create, not mkstemp: the file follows the umask (mkstemp gives 0o600)
    tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_packed(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    *,
    allow_unverified: bool = False,
) -> tuple[dict[str, torch.Tensor], BitAssignment] | nn.Module:
    """Read a file written by :func:`export_packed` (safetensors only; nothing is unpickled).

    Args:
        path: the ``.safetensors`` file.
        model: optional fresh architecture to load into: a plain model gets the dequantized
            weights; a model wrapped by :func:`quantize_model` is re-assigned the stored bits and
            gets the dequantized weights as its float originals (the quantizer is idempotent, so
            its forward is the same).
        allow_unverified: read a version-1 file, which carries no content hash, with a
            ``UserWarning``. Off by default: without a hash nothing tells an edited scale or bit
            width from the exported one, and editing the header's version is all it takes to
            turn the check off. A file that carries ``content_sha256`` is verified whatever its
            header's version says.

    Returns:
        Without ``model``: ``(state_dict, assignment)``, the plain model's state dict (CPU tensors)
        with dequantized weights, and the stored :class:`BitAssignment`. With ``model``: ``model``.

    Raises:
        ValueError: naming ``path``: not a (complete) safetensors file, another format, a content
            hash that does not match (an edited header or a flipped byte), a bit map that does
            not match the code stream and scales exactly, non-finite scales or float weights, a
            version-1 file without ``allow_unverified=True``.
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    blob = path.read_bytes()
    try:
        stored = st_load(blob)
        meta = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")]).get("__metadata__")
        meta = dict(meta or {})
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise ValueError(
            f"{path}: not a readable safetensors file ({len(blob)} bytes; truncated or empty?): "
            f"{exc}"
        ) from None
    _verify(path, blob, meta, allow_unverified=allow_unverified)
    try:
        return _decode_file(meta, stored, model)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def _verify(path: Path, blob: bytes, meta: Mapping[str, str], *, allow_unverified: bool) -> None:
    """Refuse another format or a hash mismatch; a file carrying a hash is always checked."""
    fmt = meta.get("format")
    if fmt not in (FORMAT, FORMAT_V1):
        raise ValueError(
            f"{path}: not an fq_quant packed file (format {fmt!r}, expected {FORMAT!r})"
        )
    if _HASH_KEY in meta or fmt == FORMAT:
        if meta.get(_HASH_KEY) != _packed_sha256(blob, meta):
            raise ValueError(
                f"{path}: content hash mismatch: the file was edited or corrupted after export"
            )
        return
    if not allow_unverified:
        raise ValueError(
            f"{path}: packed format version 1 carries no content hash, so an edited scale or bit "
            "width cannot be detected; export it again to get version 2, or pass "
            "allow_unverified=True to read it unverified"
        )
    warnings.warn(
        f"{path}: packed format version 1 carries no content hash and is read unverified; "
        "export it again to get version 2",
        UserWarning,
        stacklevel=3,
    )


def _decode_file(
    meta: Mapping[str, str], stored: dict[str, torch.Tensor], model: nn.Module | None
) -> tuple[dict[str, torch.Tensor], BitAssignment] | nn.Module:
    granularity = Granularity.parse(meta["granularity"])
    layers = json.loads(meta["layers"])
    parts: dict[str, dict[str, torch.Tensor]] = {n: {} for n in layers}
    state: dict[str, torch.Tensor] = {}
    for key, t in stored.items():
        head, sep, suffix = key.rpartition(".weight:")
        if sep and head in parts and suffix in _SUFFIXES:
            parts[head][suffix] = t
        else:
            state[key] = t
    if granularity is Granularity.PARAM:
        assignment = BitAssignment(
            granularity, {n: _param_bits(n, layers[n]["shape"], parts[n]) for n in layers}
        )
    else:
        assignment = BitAssignment.from_json(meta["assignment"])
    for name, info in layers.items():
        dtype = getattr(torch, info["dtype"])
        shape = tuple(info["shape"])
        state[f"{name}.weight"] = _decode_layer(
            name, shape, dtype, assignment.bits[name], granularity, parts[name]
        )
    if model is None:
        return state, assignment
    return _load_into(model, state, assignment)


def _param_bits(name: str, shape: list[int], parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
    palette = parts.get("bit_palette")
    if palette is None:
        raise ValueError(f"layer {name!r}: the file lacks its bit map (bit_palette)")
    n = math.prod(shape)
    width = _index_width(palette.numel())
    stream = parts.get("bit_index", torch.zeros(0, dtype=torch.uint8)).numpy()
    if stream.size != math.ceil(n * width / 8):
        raise ValueError(
            f"layer {name!r}: the bit index holds {stream.size} bytes; {n} weights need exactly "
            f"{math.ceil(n * width / 8)}"
        )
    (index,) = unpack_bits(stream, [(n, width)])
    if index.size and int(index.max()) >= palette.numel():
        raise ValueError(
            f"layer {name!r}: the bit index points past its {palette.numel()}-entry palette"
        )
    return palette[torch.from_numpy(index)].reshape(shape)


def _load_into(
    model: nn.Module, state: dict[str, torch.Tensor], assignment: BitAssignment
) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    _check_architecture(model, state)
    if not is_quantized(model):
        model.load_state_dict(state, strict=True)
        return model
    quantize_model(model, assignment)
    wrapped = dict(state)
    for name in assignment.bits:
        wrapped[f"{name}.parametrizations.weight.original"] = wrapped.pop(f"{name}.weight")
        wrapped[f"{name}.parametrizations.weight.0.bits"] = assignment.bits[name]
    model.load_state_dict(wrapped, strict=True)
    return model


def _check_architecture(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` naming the missing / unexpected / reshaped tensors and a likely fix."""
    want = {k: tuple(v.shape) for k, v in plain_state_dict(model).items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    reshaped = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if not (missing or unexpected or reshaped):
        return
    if any(k.endswith(".in_proj_weight") for k in missing) and any(
        k.endswith(".q_proj.weight") for k in unexpected
    ):
        fix = "the file was exported after fq_quant.unpack_attention: call it on this model first"
    elif any(k.endswith(".q_proj.weight") for k in missing) and any(
        k.endswith(".in_proj_weight") for k in unexpected
    ):
        fix = (
            "the file was exported without fq_quant.unpack_attention: load it into a model that "
            "was not unpacked (or pack_attention this one)"
        )
    elif reshaped and not (missing or unexpected):
        fix = (
            "same layers, other sizes: build the model with the exported one's settings "
            "(e.g. num_classes)"
        )
    else:
        fix = "the file holds another architecture: build the model exactly as the exported one"
    parts = []
    for what, keys in (("missing from the file", missing), ("not in the model", unexpected)):
        if keys:
            parts.append(
                f"{len(keys)} tensor(s) {what}: {keys[:5]}{' ...' if len(keys) > 5 else ''}"
            )
    if reshaped:
        shown = ", ".join(
            f"{k} {got[k]} in the file vs {want[k]} in the model" for k in reshaped[:3]
        )
        parts.append(f"{len(reshaped)} tensor(s) of another shape: {shown}")
    raise ValueError(
        f"load_packed: the file does not fit model {type(model).__name__}: {'; '.join(parts)}. "
        f"Likely fix: {fix}"
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
    assignment = _resolve(model, assignment)
    weights = _weights(model, assignment)
    sizes: dict[str, tuple[str, list[int], int]] = {}
    g = assignment.granularity
    for name, w in weights.items():
        groups = _Groups.of(assignment.bits[name], tuple(w.shape), g)
        n = dict(zip(groups.widths, groups.counts, strict=True))
        code_bytes = math.ceil(sum(n[b] * b for b in n if 1 <= b < _FULL) / 8)
        n_scales = sum(int(groups.row_runs(i).numel()) for i in groups.coded())
        item = w.element_size()
        prefix = f"{name}.weight:"
        sizes[prefix + "codes"] = ("U8", [code_bytes], code_bytes)
        if n_scales:
            sizes[prefix + "scales"] = (_st_dtype(w.dtype), [n_scales], n_scales * item)
        if n.get(_FULL):
            sizes[prefix + "float"] = (_st_dtype(w.dtype), [n[_FULL]], n[_FULL] * item)
        if 1 in n:
            sl = groups.group(groups.widths.index(1))
            z = int((w.reshape(-1)[groups.perm[sl]] == 0).sum())
            if z:
                sizes[prefix + "zeros1"] = ("I64", [z], 8 * z)
        if g is Granularity.PARAM:
            k = len(n)
            sizes[prefix + "bit_palette"] = ("U8", [k], k)
            width = _index_width(k)
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
    meta = {**_metadata(weights, assignment), _HASH_KEY: "0" * 64}  # a hash's length
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
