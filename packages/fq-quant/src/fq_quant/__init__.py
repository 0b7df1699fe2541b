"""fq-quant: scopes, straight-through fake-quantizers, model wrapping and packed low-bit export.

The one way in::

    from fq_quant import Granularity, ScopeLayout, BitAssignment, quantize_model
"""

from ._assignment import ALLOWED_BITS, BitAssignment
from ._attention import LinearMultiheadAttention, pack_attention, unpack_attention
from ._granularity import Granularity
from ._importance_map import ImportanceMap
from ._layers import quantizable_layers
from ._layout import LayerScopes, ScopeLayout
from ._model import current_assignment, is_quantized, quantize_model, strip_quantization
from ._onnx import export_onnx, ort_session
from ._packed import export_packed, load_packed, plain_state_dict, predicted_packed_size
from ._quantizer import FixedBitsQuantizer, RoundSTE, fake_quantize, q_levels, round_ste, scope_view

__all__ = [
    "ALLOWED_BITS",
    "BitAssignment",
    "FixedBitsQuantizer",
    "Granularity",
    "ImportanceMap",
    "LayerScopes",
    "LinearMultiheadAttention",
    "RoundSTE",
    "ScopeLayout",
    "current_assignment",
    "export_onnx",
    "export_packed",
    "fake_quantize",
    "is_quantized",
    "load_packed",
    "ort_session",
    "pack_attention",
    "plain_state_dict",
    "predicted_packed_size",
    "q_levels",
    "quantizable_layers",
    "quantize_model",
    "round_ste",
    "scope_view",
    "strip_quantization",
    "unpack_attention",
]
