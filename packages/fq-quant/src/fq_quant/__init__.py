"""fq-quant: scopes, straight-through fake-quantizers, model wrapping and packed low-bit export.

The one way in::

    from fq_quant import Granularity, ScopeLayout, BitAssignment, quantize_model
"""

from ._act_ranges import ActivationRanges, calibrate_activations, clipped_fractions, widest_ranges
from ._assignment import ALLOWED_BITS, BitAssignment
from ._attention import LinearMultiheadAttention, pack_attention, unpack_attention
from ._batches import BATCH_KEYS, unpack_batch
from ._buffers import WeightBuffer
from ._codes import (
    CODES_DTYPE,
    SCALE_FLOOR,
    dequantize,
    param_groups,
    q_levels,
    quantize_codes,
    round_codes,
    scope_absmax,
    scope_absmean,
    scope_scales,
    scope_view,
)
from ._containers import (
    CONTAINER_BITS,
    container_avg_bits,
    container_bytes,
    weight_container,
)
from ._granularity import Granularity
from ._importance_map import ImportanceMap
from ._layers import float_weight, quantizable_layers
from ._layout import LayerScopes, ScopeLayout
from ._model import current_assignment, is_quantized, quantize_model, strip_quantization
from ._onnx import export_onnx
from ._onnx_base import ort_session
from ._onnx_int8 import int8_reference
from ._packed import (
    export_packed,
    load_packed,
    plain_state_dict,
    tensors_sha256,
)
from ._packed_size import packed_size
from ._quantizer import FixedBitsQuantizer, RoundSTE, fake_quantize, round_ste

__all__ = [
    "ActivationRanges",
    "calibrate_activations",
    "clipped_fractions",
    "int8_reference",
    "widest_ranges",
    "ALLOWED_BITS",
    "BATCH_KEYS",
    "CODES_DTYPE",
    "CONTAINER_BITS",
    "container_avg_bits",
    "container_bytes",
    "SCALE_FLOOR",
    "BitAssignment",
    "current_assignment",
    "dequantize",
    "export_onnx",
    "export_packed",
    "fake_quantize",
    "float_weight",
    "FixedBitsQuantizer",
    "Granularity",
    "ImportanceMap",
    "is_quantized",
    "LayerScopes",
    "LinearMultiheadAttention",
    "load_packed",
    "ort_session",
    "pack_attention",
    "packed_size",
    "param_groups",
    "plain_state_dict",
    "q_levels",
    "quantizable_layers",
    "quantize_codes",
    "quantize_model",
    "round_codes",
    "round_ste",
    "RoundSTE",
    "scope_absmax",
    "scope_absmean",
    "scope_scales",
    "scope_view",
    "ScopeLayout",
    "strip_quantization",
    "tensors_sha256",
    "unpack_attention",
    "unpack_batch",
    "WeightBuffer",
    "weight_container",
]
