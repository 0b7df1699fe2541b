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
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn
from torch.nn.utils import parametrize

from ._assignment import BitAssignment
from ._bitstream import (
    decode_layer,
    encode_layer,
    index_width,
    unpack_bits,
)
from ._granularity import Granularity
from ._layers import float_weight, quantizable_layers
from ._layout import ScopeLayout
from ._model import current_assignment, is_quantized, quantize_model

FORMAT = "fq_quant.packed/2"
#: The first version: the same layout without ``content_sha256``; read only on request.
FORMAT_V1 = "fq_quant.packed/1"
HASH_KEY = "content_sha256"
_SUFFIXES = ("codes", "scales", "float", "zeros1", "bit_palette", "bit_index")


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
    body = {k: v for k, v in meta.items() if k != HASH_KEY}
    h = hashlib.sha256(json.dumps(body, sort_keys=True).encode())
    h.update(tensors_sha256(blob).encode())
    return h.hexdigest()


def resolve_assignment(model: nn.Module, assignment: BitAssignment | None) -> BitAssignment:
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


def quantized_weights(model: nn.Module, assignment: BitAssignment) -> dict[str, torch.Tensor]:
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


def header_metadata(
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
    weights = quantized_weights(model, assignment)
    tensors: dict[str, torch.Tensor] = {}
    for name, w in weights.items():
        for suffix, t in encode_layer(w, assignment.bits[name], assignment.granularity).items():
            tensors[f"{name}.weight:{suffix}"] = t.contiguous()
    for key, value in plain_state_dict(model).items():
        if key.removesuffix(".weight") in weights and key.endswith(".weight"):
            continue
        # clone: safetensors refuses tensors that share memory (tied weights).
        tensors[key] = value.detach().to("cpu").clone().contiguous()
    return tensors, header_metadata(weights, assignment)


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
    assignment = resolve_assignment(model, assignment)
    tensors, meta = _tensors(model, assignment)
    path = Path(path)
    meta[HASH_KEY] = _packed_sha256(st_save(tensors, metadata=meta), meta)
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
    if HASH_KEY in meta or fmt == FORMAT:
        if meta.get(HASH_KEY) != _packed_sha256(blob, meta):
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
        state[f"{name}.weight"] = decode_layer(
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
    width = index_width(palette.numel())
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
