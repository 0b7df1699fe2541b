"""Bit assignments: an integer bit-width for every scope of every quantizable layer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ._granularity import Granularity
from ._layout import ScopeLayout

#: Bit-widths a scope may take: 0 (pruned), 1 (sign x mean magnitude), 2..16 (uniform), 32 (float).
ALLOWED_BITS: tuple[int, ...] = (0, 1, *range(2, 17), 32)
#: Storage dtype of bit tensors (values <= 32 fit; 25M per-parameter scopes cost 25 MB).
BITS_DTYPE = torch.uint8


def check_bits(bits: torch.Tensor, *, name: str) -> torch.Tensor:
    """Validate an integer bit tensor and return a copy as ``uint8`` on the CPU.

    A copy also when ``bits`` already is a CPU ``uint8`` tensor: a later in-place change of the
    caller's tensor cannot reach the result (and bypass this validation).

    Raises ``TypeError`` for a non-integer dtype and ``ValueError`` naming the layer and the first
    offending value when any entry is outside :data:`ALLOWED_BITS`.
    """
    if not isinstance(bits, torch.Tensor):
        raise TypeError(
            f"bits for layer {name!r} must be a torch.Tensor; got {type(bits).__name__}"
        )
    if bits.is_floating_point() or bits.is_complex() or bits.dtype == torch.bool:
        raise TypeError(f"bits for layer {name!r} must have an integer dtype; got {bits.dtype}")
    flat = bits.detach().reshape(-1).cpu()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) > 32):
        bad = int(flat[(flat < 0) | (flat > 32)][0])
        raise ValueError(
            f"bits for layer {name!r} contain {bad}; allowed bit-widths are 0, 1, 2..16 and 32"
        )
    flat = flat.to(BITS_DTYPE, copy=True)  # exact: every value is in 0..32 now
    # One counting pass instead of an int64 copy + isin (25M per-parameter scopes in ~0.05 s).
    counts = torch.bincount(flat, minlength=33)
    if bool(counts[17:32].any()):
        bad = 17 + int(torch.nonzero(counts[17:32])[0])
        raise ValueError(
            f"bits for layer {name!r} contain {bad}; allowed bit-widths are 0, 1, 2..16 and 32"
        )
    return flat.reshape(bits.shape)


@dataclass(frozen=True, eq=False)
class BitAssignment:
    """An integer bit-width for every scope of every quantizable layer.

    Attributes:
        granularity: the scope granularity the bit tensors are shaped for.
        bits: layer name -> ``uint8`` tensor of that layer's scope shape (``(1,)`` per tensor,
            ``(O,)`` per channel, the weight shape per parameter). Values in {0, 1, 2..16, 32}.

    The tensors are validated and copied on construction (a later in-place change of the caller's
    tensors does not reach the assignment); names and shapes are checked against a model's
    :class:`ScopeLayout` wherever the assignment is applied (:meth:`check`).

    >>> from torch import nn
    >>> from fq_quant import BitAssignment, ScopeLayout
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> layout = ScopeLayout.from_model(model, "channel")
    >>> a = BitAssignment.uniform(layout, 4)
    >>> a.bits["0"]
    tensor([4, 4, 4], dtype=torch.uint8)
    >>> a.avg_bits(layout)
    4.0
    """

    granularity: Granularity
    bits: Mapping[str, torch.Tensor]

    def __post_init__(self) -> None:
        object.__setattr__(self, "granularity", Granularity.parse(self.granularity))
        if not isinstance(self.bits, Mapping) or not self.bits:
            raise ValueError("bits must be a non-empty mapping of layer name -> bit tensor")
        checked = {str(n): check_bits(b, name=str(n)) for n, b in self.bits.items()}
        object.__setattr__(self, "bits", checked)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def uniform(cls, layout: ScopeLayout, bits: int) -> BitAssignment:
        """Every scope of ``layout`` at ``bits`` bits."""
        if int(bits) not in ALLOWED_BITS:
            raise ValueError(f"bits must be one of 0, 1, 2..16, 32; got {bits!r}")
        return cls(
            layout.granularity,
            {
                n: torch.full(s.scope_shape, int(bits), dtype=BITS_DTYPE)
                for n, s in layout.layers.items()
            },
        )

    # -- checks and summaries -----------------------------------------------------------------
    def check(self, layout: ScopeLayout) -> None:
        """Raise ``ValueError`` unless granularity, layer names and scope shapes match ``layout``."""
        if layout.granularity is not self.granularity:
            raise ValueError(
                f"assignment granularity {self.granularity.value!r} does not match the model layout's "
                f"{layout.granularity.value!r}"
            )
        layout.check_tensors(self.bits, what="bit assignment")

    def avg_bits(self, layout: ScopeLayout) -> float:
        """Parameter-weighted average bits: ``sum_scopes n_params * b / sum n_params`` (bits/weight)."""
        self.check(layout)
        total = sum(
            int(b.to(torch.int64).sum()) * layout[n].params_per_scope for n, b in self.bits.items()
        )
        return total / layout.num_params

    def histogram(self, layout: ScopeLayout | None = None) -> dict[int, int]:
        """Bit-width -> number of scopes (or of parameters when ``layout`` is given), sorted by bits."""
        if layout is not None:
            self.check(layout)
        counts: dict[int, int] = {}
        for n, b in self.bits.items():
            values, freq = torch.unique(b, return_counts=True)
            w = 1 if layout is None else layout[n].params_per_scope
            for v, f in zip(values.tolist(), freq.tolist(), strict=False):
                counts[int(v)] = counts.get(int(v), 0) + int(f) * w
        return dict(sorted(counts.items()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BitAssignment):
            return NotImplemented
        return (
            self.granularity is other.granularity
            and list(self.bits) == list(other.bits)
            and all(torch.equal(self.bits[n], other.bits[n]) for n in self.bits)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable tensors inside

    # -- serialization ------------------------------------------------------------------------
    def to_json(self) -> str:
        """A JSON string that :meth:`from_json` turns back into an equal assignment."""
        payload = {
            "format": "fq_quant.BitAssignment/1",
            "granularity": self.granularity.value,
            "bits": {
                n: {"shape": list(b.shape), "values": b.reshape(-1).tolist()}
                for n, b in self.bits.items()
            },
        }
        return json.dumps(payload, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> BitAssignment:
        """Parse :meth:`to_json` output; raises ``ValueError`` on a malformed document."""
        try:
            payload = json.loads(text)
            bits = {
                n: torch.tensor(v["values"], dtype=torch.int64).reshape(v["shape"])
                for n, v in payload["bits"].items()
            }
            granularity = payload["granularity"]
        except (KeyError, TypeError, RuntimeError, json.JSONDecodeError) as e:
            raise ValueError(f"not a BitAssignment JSON document: {e}") from e
        return cls(granularity, bits)
