"""Cost of a (mixed-precision) model: average bits, BOPs, the paper's GOPs, packed size."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._checks import is_int

#: Bit-widths a scope may take (METHOD.md section 2): 0 pruned, 1 binary, 2..16 integer, 32 float.
ALLOWED_BITS: frozenset[int] = frozenset([0, 1, *range(2, 17), 32])
FLOAT_BITS = 32
_FLOAT32_BYTES = 4


@dataclass(frozen=True, kw_only=True, eq=False)
class LayerCost:
    """One quantizable layer (``Conv2d``/``Linear`` weight): its work and its bit-widths.

    Attributes:
        name: layer name (e.g. the qualified module name).
        macs: multiply-accumulates of the whole layer for one input sample (every token counted).
        bits: ``[S]`` bit-width per scope, values in {0, 1, 2..16, 32} (0 = pruned, 32 = float).
            Any shape is accepted and flattened (e.g. the weight shape at per-parameter scope).
        params_per_scope: ``[S]`` weights in each scope (or one int broadcast to every scope).
            Per tensor: ``[O*I*kh*kw]``; per channel: ``O`` scopes of ``I*kh*kw``; per parameter:
            ``O*I*kh*kw`` scopes of 1.
        n_scales: float32 scales stored for this layer in the packed export. Default (``None``):
            one per scope with ``1 <= b < 32``. Give it explicitly when scales are shared across
            scopes, e.g. per-parameter scope with one scale per (output channel, bit-width) pair.
    """

    name: str
    macs: int
    bits: np.ndarray
    params_per_scope: np.ndarray
    n_scales: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty str; got {self.name!r}")
        if not is_int(self.macs) or self.macs < 0:
            raise ValueError(f"macs of layer {self.name!r} must be an int >= 0; got {self.macs!r}")
        bits = np.asarray(self.bits).reshape(-1)
        if bits.size == 0 or bits.dtype.kind not in "iuf" or not np.all(bits == np.round(bits)):
            raise ValueError(f"bits of layer {self.name!r} must be a non-empty array of integers")
        bits = bits.astype(np.int64)
        bad = sorted(set(np.unique(bits).tolist()) - ALLOWED_BITS)
        if bad:
            raise ValueError(
                f"bits of layer {self.name!r} contain {bad}; allowed are 0, 1, 2..16 and 32"
            )
        pps = np.asarray(self.params_per_scope)
        if pps.dtype.kind not in "iu":
            raise ValueError(
                f"params_per_scope of layer {self.name!r} must be integers; got {pps.dtype}"
            )
        if pps.ndim == 0:
            pps = np.full(bits.shape, int(pps), dtype=np.int64)
        pps = pps.reshape(-1).astype(np.int64)
        if pps.shape != bits.shape:
            raise ValueError(
                f"params_per_scope of layer {self.name!r} has {pps.size} entries but bits has "
                f"{bits.size}; give one per scope"
            )
        if (pps < 1).any():
            raise ValueError(f"params_per_scope of layer {self.name!r} must be >= 1 in every scope")
        if self.n_scales is not None and (not is_int(self.n_scales) or self.n_scales < 0):
            raise ValueError(
                f"n_scales of layer {self.name!r} must be an int >= 0 or None; "
                f"got {self.n_scales!r}"
            )
        for key, value in (("macs", int(self.macs)), ("bits", bits), ("params_per_scope", pps)):
            if isinstance(value, np.ndarray):
                value.setflags(write=False)
            object.__setattr__(self, key, value)

    @classmethod
    def uniform(cls, *, name: str, macs: int, n_params: int, bits: int = FLOAT_BITS) -> LayerCost:
        """A layer with one scope (per-tensor) of ``n_params`` weights at ``bits``."""
        return cls(
            name=name, macs=macs, bits=np.array([bits]), params_per_scope=np.array([n_params])
        )

    @property
    def n_params(self) -> int:
        """Weights in the layer."""
        return int(self.params_per_scope.sum())

    @property
    def avg_bits(self) -> float:
        """``sum_s n_s * b_s / sum_s n_s`` over this layer's scopes (32 for float, 0 for pruned)."""
        return float((self.params_per_scope * self.bits).sum() / self.n_params)


@dataclass(frozen=True, kw_only=True)
class LayerCostRow:
    """One row of :attr:`CostReport.layers` (formulas on :func:`cost_report`)."""

    name: str
    macs: int
    n_params: int
    avg_bits: float
    gbops: float
    paper_gops: float
    code_bytes: int
    scale_bytes: int
    float_bytes: int

    @property
    def size_bytes(self) -> int:
        """``code_bytes + scale_bytes + float_bytes``."""
        return self.code_bytes + self.scale_bytes + self.float_bytes


@dataclass(frozen=True, kw_only=True)
class CostReport:
    """Model cost (METHOD.md section 8); build it with :func:`cost_report`.

    Attributes:
        avg_bits: effective bits per weight of the quantizable layers.
        gbops: giga bit-operations, ``sum MACs * b_w * b_a / 1e9``.
        paper_gops: ``sum_l 2 * MACs_l * (avg b_l / 32) / 1e9`` (Table 1's convention).
        size_bytes: predicted size of the packed export in bytes.
        macs: total MACs per sample; n_params: weights of the quantizable layers.
        act_bits: activation bit-width used in ``gbops``; extra_float_params: float parameters
            outside the quantizable weights (biases, norms, embeddings) counted in ``size_bytes``;
            extra_bytes: other stored bytes counted in ``size_bytes`` (every non-quantized tensor
            at its own dtype size, as :func:`fq_fairmetrics.torch.model_cost` measures them).
        layers: per-layer rows, in input order.
    """

    avg_bits: float
    gbops: float
    paper_gops: float
    size_bytes: int
    macs: int
    n_params: int
    act_bits: int
    extra_float_params: int
    layers: tuple[LayerCostRow, ...]
    extra_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict: totals, and ``layers`` as a list of row dicts (with ``size_bytes``)."""
        rows = [{**row.__dict__, "size_bytes": row.size_bytes} for row in self.layers]
        totals = {k: v for k, v in self.__dict__.items() if k != "layers"}
        return {**totals, "layers": rows}

    def to_polars(self) -> Any:
        """The per-layer table as a ``polars.DataFrame`` (needs the ``polars`` extra)."""
        try:
            import polars as pl
        except ImportError as exc:
            raise ImportError(
                'CostReport.to_polars needs polars: pip install "fq-fairmetrics[polars]"'
            ) from exc
        return pl.DataFrame(self.to_dict()["layers"])


def _layer_row(layer: LayerCost, act_bits: int) -> LayerCostRow:
    bits, pps = layer.bits, layer.params_per_scope
    avg_b = layer.avg_bits
    quantized = (bits >= 1) & (bits < FLOAT_BITS)
    code_bits = int((pps * bits)[quantized].sum())
    n_scales = int(quantized.sum()) if layer.n_scales is None else int(layer.n_scales)
    return LayerCostRow(
        name=layer.name,
        macs=layer.macs,
        n_params=layer.n_params,
        avg_bits=avg_b,
        gbops=layer.macs * avg_b * act_bits / 1e9,
        paper_gops=2.0 * layer.macs * (avg_b / FLOAT_BITS) / 1e9,
        code_bytes=math.ceil(code_bits / 8),
        scale_bytes=_FLOAT32_BYTES * n_scales,
        float_bytes=_FLOAT32_BYTES * int(pps[bits == FLOAT_BITS].sum()),
    )


def cost_report(
    layers: Iterable[LayerCost],
    *,
    extra_float_params: int = 0,
    extra_bytes: int = 0,
    act_bits: int = FLOAT_BITS,
) -> CostReport:
    """Cost of a model from its quantizable layers (METHOD.md section 8).

    With ``n_s`` weights and ``b_s`` bits in scope ``s`` of layer ``l`` (``b = 32`` is float and
    counts as 32 bits; ``b = 0`` is pruned and counts as 0), ``N_l = sum_s n_s``,
    ``avg b_l = sum_s n_s b_s / N_l``:

    - ``avg_bits = sum_l sum_s n_s b_s / sum_l N_l``: every weight of every quantizable layer
      counts, whatever its bit-width, so an all-float model has ``avg_bits = 32``. Biases, norms
      and embeddings are not weights of quantizable layers and do not count.
    - ``gbops = sum_l sum_s (MACs_l * n_s / N_l) * b_s * act_bits / 1e9 = sum_l MACs_l avg b_l
      act_bits / 1e9``: a layer's MACs are shared among its scopes in proportion to their weights
      (exact for tensor, channel and parameter scopes, where every weight does the same number
      of MACs).
    - ``paper_gops = sum_l 2 * MACs_l * (avg b_l / 32) / 1e9``.
    - ``size_bytes = sum_l [ceil(code_bits_l / 8) + 4 * scales_l + 4 * float_l]
      + 4 * extra_float_params + extra_bytes``, where ``code_bits_l = sum_{s: 1 <= b_s < 32} n_s b_s`` (codes
      bit-packed per layer, padded to a whole byte), ``scales_l`` = ``LayerCost.n_scales`` or by
      default the number of scopes with ``1 <= b_s < 32`` (one float32 scale each; a 1-bit scope's
      scale is its mean magnitude), ``float_l = sum_{s: b_s = 32} n_s`` weights kept as float32.
      Pruned scopes store nothing. Bit-width metadata is not counted, nor is a file header
      (fq-quant's safetensors file adds one: names, shapes and the assignment as JSON, e.g. 55 kB
      on mobilenet_v3_small). From a model, :func:`fq_fairmetrics.torch.model_cost` fills in
      ``extra_bytes`` with every other stored tensor.

    Args:
        layers: one :class:`LayerCost` per quantizable layer (names unique).
        extra_float_params: float32 parameters outside the quantizable weights, counted in size.
        extra_bytes: further bytes counted in size (tensors stored as they are: biases, norms,
            buffers at their own dtype size).
        act_bits: activation bit-width ``b_a`` for ``gbops`` (32 while activations stay float).
    """
    layers = list(layers)
    if not layers:
        raise ValueError("layers is empty; cost_report needs at least one LayerCost")
    for i, layer in enumerate(layers):
        if not isinstance(layer, LayerCost):
            raise TypeError(f"layers[{i}] must be a LayerCost; got {type(layer).__name__}")
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        raise ValueError(f"layer names must be unique; got duplicates in {names!r}")
    if not is_int(extra_float_params) or extra_float_params < 0:
        raise ValueError(f"extra_float_params must be an int >= 0; got {extra_float_params!r}")
    if not is_int(extra_bytes) or extra_bytes < 0:
        raise ValueError(f"extra_bytes must be an int >= 0; got {extra_bytes!r}")
    if not is_int(act_bits) or not 1 <= act_bits <= 32:
        raise ValueError(f"act_bits must be an int in 1..32; got {act_bits!r}")
    rows = tuple(_layer_row(layer, int(act_bits)) for layer in layers)
    n_params = sum(r.n_params for r in rows)
    bit_params = sum(int((la.params_per_scope * la.bits).sum()) for la in layers)
    return CostReport(
        avg_bits=bit_params / n_params,
        gbops=sum(r.gbops for r in rows),
        paper_gops=sum(r.paper_gops for r in rows),
        size_bytes=sum(r.size_bytes for r in rows)
        + _FLOAT32_BYTES * int(extra_float_params)
        + int(extra_bytes),
        macs=sum(r.macs for r in rows),
        n_params=n_params,
        act_bits=int(act_bits),
        extra_float_params=int(extra_float_params),
        layers=rows,
        extra_bytes=int(extra_bytes),
    )
