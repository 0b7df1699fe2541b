"""What a deployer needs without the toolkit: ``metadata_props`` and a batch dimension named ``batch``."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ._assignment import BitAssignment

#: Name of the dynamic batch dimension of every graph input and output.
BATCH_DIM = "batch"
_SHA = re.compile(r"^[0-9a-f]{64}$")


def name_batch_dim(proto: Any) -> None:
    """Rename the exporter's batch symbol (``s77``...) to ``batch`` everywhere in the graph."""
    graph = proto.graph
    first = graph.input[0].type.tensor_type.shape.dim[0]
    old = first.dim_param
    if not old or old == BATCH_DIM:
        return
    for info in [*graph.input, *graph.output, *graph.value_info]:
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param == old:
                dim.dim_param = BATCH_DIM


def packed_sha(packed: str | os.PathLike[str] | None) -> str | None:
    """The packed file's content hash: ``tensors_sha256`` of a path, or a given 64-hex digest."""
    if packed is None:
        return None
    if isinstance(packed, str) and _SHA.match(packed):
        return packed
    path = Path(packed)
    if not path.is_file():
        raise ValueError(
            f"packed must be the packed .safetensors file or its 64-hex content sha256; got {packed!r}"
        )
    from ._packed import tensors_sha256  # the one home of the content hash

    return tensors_sha256(path.read_bytes())


def bits_summary(assignment: BitAssignment | None) -> dict[str, dict[str, int]]:
    """Per layer: ``{bits: number of scopes}`` (``{}`` for a float export)."""
    if assignment is None:
        return {}
    out = {}
    for name, bits in assignment.bits.items():
        values, counts = torch.unique(bits.reshape(-1), return_counts=True)
        out[name] = {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}
    return out


def set_metadata(
    proto: Any,
    *,
    input_shape: Sequence[int],
    assignment: BitAssignment | None,
    class_names: Sequence[str] | None,
    normalization: Mapping[str, Sequence[float]] | None,
    packed: str | None,
    activations: Mapping[str, Any],
) -> None:
    """Write the model's ``metadata_props`` (each value a string; JSON where structured).

    Keys: ``input_shape`` (``[C, H, W]``), ``class_names`` (output order), ``normalization``
    (``{"mean": [...], "std": [...]}``, applied to ``[0, 1]`` pixels), ``bits_per_layer``
    (``{layer: {bits: scopes}}``), ``avg_bits`` (scope-weighted), ``packed_content_sha256``,
    ``activations`` (``{"dtype": "float" | "int8", ...}``).
    """
    props: dict[str, str] = {"input_shape": json.dumps([int(s) for s in input_shape])}
    if class_names is not None:
        props["class_names"] = json.dumps([str(c) for c in class_names])
    if normalization is not None:
        props["normalization"] = json.dumps(
            {k: [float(v) for v in normalization[k]] for k in ("mean", "std")}
        )
    summary = bits_summary(assignment)
    if summary:
        props["bits_per_layer"] = json.dumps(summary, sort_keys=True)
    if packed is not None:
        props["packed_content_sha256"] = packed
    props["activations"] = json.dumps(dict(activations), sort_keys=True)
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def check_metadata_args(
    class_names: Sequence[str] | None,
    normalization: Mapping[str, Sequence[float]] | None,
    channels: int,
) -> None:
    """Clear errors for ``class_names`` and ``normalization`` before any export work."""
    if class_names is not None and (
        isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names)
    ):
        raise TypeError("class_names must be a sequence of str (output order) or None")
    if normalization is None:
        return
    if not isinstance(normalization, Mapping) or set(normalization) != {"mean", "std"}:
        raise ValueError(
            "normalization must be a mapping with exactly the keys 'mean' and 'std' "
            f"(one value per input channel); got {normalization!r}"
        )
    for key in ("mean", "std"):
        if len(normalization[key]) != channels:
            raise ValueError(
                f"normalization[{key!r}] must have {channels} values (one per input channel); "
                f"got {len(normalization[key])}"
            )
