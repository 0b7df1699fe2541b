"""The paper's grid (Table 1, ablations): typed presets, resumable cell store, tables and plots.

The one way in::

    from fq_bench.grid import PRESETS, run_grid, build_report

``python bench/run_grid.py --help`` documents the command line.
"""

from __future__ import annotations

from ._cells import CellKey, CellStore, grid_cells, parse_shard, shard_cells, stable_seed
from ._cli import build_parser, main
from ._config import ABLATIONS, DEFAULT, FRONTIER, METHOD_IDS, PAPER, PRESETS, SMOKE, GridConfig
from ._methods import METHODS, CellContext, MethodOutput
from ._models import CUSTOM_MODELS, TinyCNN, build_model, register_model
from ._probe import probe_main
from ._report import Report, build_report, summary_frame, to_csv, to_latex, to_markdown
from ._runner import RunSummary, binary_grouping, run_grid

__all__ = [
    "FRONTIER",
    "probe_main",
    "ABLATIONS",
    "CUSTOM_MODELS",
    "DEFAULT",
    "METHODS",
    "METHOD_IDS",
    "PAPER",
    "PRESETS",
    "SMOKE",
    "CellContext",
    "CellKey",
    "CellStore",
    "GridConfig",
    "MethodOutput",
    "Report",
    "RunSummary",
    "TinyCNN",
    "binary_grouping",
    "build_model",
    "build_parser",
    "build_report",
    "grid_cells",
    "main",
    "parse_shard",
    "register_model",
    "run_grid",
    "shard_cells",
    "stable_seed",
    "summary_frame",
    "to_csv",
    "to_latex",
    "to_markdown",
]
