"""The storage container of each quantized layer in a runtime file, and what it costs.

A runtime such as ONNX Runtime reads a layer's integer codes from one typed tensor per layer: INT4,
INT8 or INT16, whichever is the narrowest to hold every coded scope (``0 <= b < 32``: pruned and
1-bit scopes are codes too). Every weight of the layer then costs the container's width, whatever
its own bit-width: a layer of 2-bit channels with one 5-bit channel is stored as INT8, at 8 bits
per weight. ``b = 32`` scopes stay float (32 bits each); a layer with no coded scope is ``"float"``.

:func:`weight_container` is the rule, :func:`container_avg_bits` the parameter-weighted average
width the file pays for an assignment (compare :meth:`BitAssignment.avg_bits`, what packed
sub-byte storage pays), and :func:`container_bytes` the bytes of such a file's tensors.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import torch
from torch import nn

from ._assignment import BitAssignment
from ._granularity import Granularity
from ._layout import ScopeLayout
from ._model import current_assignment, is_quantized
from ._packed import plain_state_dict

#: Integer containers by name, narrowest first, with their width in bits.
CONTAINER_BITS: dict[str, int] = {"int4": 4, "int8": 8, "int16": 16}
#: Width of a weight kept in float (``b = 32`` scopes, ``"float"`` layers).
FLOAT_BITS = 32
_FULL = 32


def _check_available(available: Collection[str]) -> tuple[str, ...]:
    if isinstance(available, str):
        raise TypeError(f"available must be a collection of container names; got {available!r}")
    names = tuple(available)
    bad = [n for n in names if n not in CONTAINER_BITS]
    if bad:
        raise ValueError(
            f"available: unknown container(s) {bad}; choose from {list(CONTAINER_BITS)}"
        )
    return tuple(n for n in CONTAINER_BITS if n in names)  # narrowest first


def weight_container(
    bits: torch.Tensor | int, *, available: Collection[str] = ("int4", "int8", "int16")
) -> str:
    """The narrowest integer container of ``available`` that holds every coded scope of a layer.

    Args:
        bits: the layer's bit-width per scope (any shape, integer values in
            ``fq_quant.ALLOWED_BITS``), or one int: the layer's widest coded width.
        available: the containers the runtime and opset offer (``"int4"``, ``"int8"``,
            ``"int16"``); ONNX has INT8 at every opset, INT4 and INT16 from opset 21.

    Returns:
        ``"int4"``, ``"int8"`` or ``"int16"``; ``"float"`` when the layer has no coded scope
        (every ``b = 32``) or its widest coded scope fits no available container.

    >>> import torch
    >>> from fq_quant import weight_container
    >>> weight_container(torch.tensor([2, 3, 4, 32]))  # the 32-bit channel stays float apart
    'int4'
    >>> weight_container(torch.tensor([2, 2, 5]))
    'int8'
    >>> weight_container(4, available=("int8",))  # no INT4 before opset 21
    'int8'
    """
    names = _check_available(available)
    if isinstance(bits, bool) or not isinstance(bits, (int, torch.Tensor)):
        raise TypeError(f"bits must be an int or an integer tensor; got {type(bits).__name__}")
    if isinstance(bits, torch.Tensor):
        if bits.is_floating_point():
            raise TypeError(f"bits must have an integer dtype; got {bits.dtype}")
        coded = bits[bits < _FULL]
        if coded.numel() == 0:
            return "float"
        widest = int(coded.max())
    else:
        widest = bits
    if not 0 <= widest <= _FULL:
        raise ValueError(f"bits must lie in [0, 32]; got widest {widest}")
    if widest == _FULL:
        return "float"
    for name in names:
        if widest <= CONTAINER_BITS[name]:
            return name
    return "float"


def _layer_container_bits(
    bits: torch.Tensor, params_per_scope: int, available: tuple[str, ...]
) -> tuple[str, int, int]:
    """(container, coded weights, float weights) of one layer."""
    b = bits.to(torch.int64)
    full = int((b >= _FULL).sum()) * params_per_scope
    coded = b.numel() * params_per_scope - full
    return weight_container(b, available=available), coded, full


def container_avg_bits(
    assignment: BitAssignment,
    layout: ScopeLayout,
    *,
    available: Collection[str] = ("int4", "int8", "int16"),
) -> float:
    """Parameter-weighted average bits per weight as stored in per-layer containers.

    Each coded weight costs its layer's container width (:func:`weight_container`), each
    ``b = 32`` weight 32 bits. Scales and other tensors are not counted (as in
    :meth:`BitAssignment.avg_bits`, which this is never below).
    """
    assignment.check(layout)
    names = _check_available(available)
    total = 0
    for name, bits in assignment.bits.items():
        container, coded, full = _layer_container_bits(bits, layout[name].params_per_scope, names)
        width = FLOAT_BITS if container == "float" else CONTAINER_BITS[container]
        total += coded * width + full * FLOAT_BITS
    return total / layout.num_params


def container_bytes(
    model: nn.Module,
    assignment: BitAssignment | None = None,
    *,
    available: Collection[str] = ("int4", "int8", "int16"),
) -> int:
    """Bytes of ``model``'s tensors when every quantized layer is stored in its container.

    The counterpart of :func:`packed_size` (``header=False``) for a runtime file such as
    :func:`export_onnx`'s: per quantized layer, ``ceil(coded weights * container width / 8)``
    bytes of codes, 4 bytes per coded scope for its scale, 4 per ``b = 32`` weight kept in
    float plus, when a layer mixes both, 8 bytes per output channel for the index that puts the
    rows back in order; every other state-dict tensor at its size. An ONNX file adds its graph
    (a few tens of KiB for resnet18) and leaves out what inference does not read (BatchNorm's
    ``num_batches_tracked``).

    Args:
        model: a model wrapped by :func:`quantize_model`, or any model with ``assignment``.
        assignment: the bits (default: the model's own); ``TENSOR`` or ``CHANNEL`` granularity
            (a runtime container has one scale per channel at most).
        available: the containers the target runtime offers (see :func:`weight_container`).
    """
    if assignment is None:
        if not is_quantized(model):
            raise ValueError(
                f"model {type(model).__name__} is not quantized; call quantize_model first or "
                "pass assignment="
            )
        assignment = current_assignment(model)
    if not isinstance(assignment, BitAssignment):
        raise TypeError(f"assignment must be a BitAssignment; got {type(assignment).__name__}")
    if assignment.granularity is Granularity.PARAM:
        raise ValueError(
            "container_bytes needs TENSOR or CHANNEL granularity: a runtime container holds one "
            "scale per output channel at most"
        )
    layout = ScopeLayout.from_model(model, assignment.granularity)
    assignment.check(layout)
    names = _check_available(available)
    state = plain_state_dict(model)
    total = 0
    for name, bits in assignment.bits.items():
        lay = layout[name]
        item = state[f"{name}.weight"].element_size()
        container, coded, full = _layer_container_bits(bits, lay.params_per_scope, names)
        if container == "float":
            total += (coded + full) * item
            continue
        n_scales = int((bits.to(torch.int64) < _FULL).sum())
        total += math.ceil(coded * CONTAINER_BITS[container] / 8) + n_scales * item + full * item
        if full and coded:
            total += 8 * lay.weight_shape[0]
    quantized = {f"{n}.weight" for n in assignment.bits}
    total += sum(v.numel() * v.element_size() for k, v in state.items() if k not in quantized)
    return total
