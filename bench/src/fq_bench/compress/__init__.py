"""From a trained model to a shipped low-bit model, with a per-group verdict on the file you ship.

The one way in::

    from fq_bench.compress import CompressConfig, compress

``python -m fq_bench compress --help`` is the command line.
"""

from __future__ import annotations

from ._audit import CANDIDATES, CROSS, Audit, run_audit
from ._cli import build_parser, main
from ._config import COMPRESS_METHODS, CompressConfig
from ._pipeline import INT8, ONNX, PACKED, PREDICTIONS, CompressResult, compress
from ._weights import check_fits, load_weights, read_state_dict

__all__ = [
    "CANDIDATES",
    "COMPRESS_METHODS",
    "CROSS",
    "INT8",
    "ONNX",
    "PACKED",
    "PREDICTIONS",
    "Audit",
    "CompressConfig",
    "CompressResult",
    "build_parser",
    "check_fits",
    "compress",
    "load_weights",
    "main",
    "read_state_dict",
    "run_audit",
]
