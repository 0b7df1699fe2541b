"""The paper's grid (Table 1, ablations): typed presets, resumable cell store, tables and plots.

The one way in::

    from fq_bench.grid import PRESETS, run_grid, build_report

``python bench/run_grid.py --help`` documents the command line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names below, imported on first use (see __getattr__)
    from ._cells import CellKey, CellStore, grid_cells, parse_shard, shard_cells, stable_seed
    from ._cli import build_parser, main
    from ._config import GridConfig
    from ._data import binary_grouping
    from ._execution import RunSummary
    from ._frames import summary_frame
    from ._methods import METHODS, CellContext, MethodOutput
    from ._models import CUSTOM_MODELS, TinyCNN, build_model, register_model
    from ._names import METHOD_IDS
    from ._presets import ABLATIONS, DEFAULT, FRONTIER, PAPER, PRESETS, SMOKE
    from ._probe_cli import probe_main
    from ._report import Report, build_report
    from ._runner import run_grid
    from ._tables import to_csv, to_latex, to_markdown

#: Public name -> the module that defines it. torch and the method packages load only when a
#: name that needs them is used, so ``run_grid.py --help`` and a mistyped flag answer at once.
_HOMES: dict[str, str] = {
    "CellKey": "_cells",
    "CellStore": "_cells",
    "grid_cells": "_cells",
    "parse_shard": "_cells",
    "shard_cells": "_cells",
    "stable_seed": "_cells",
    "build_parser": "_cli",
    "main": "_cli",
    "ABLATIONS": "_presets",
    "DEFAULT": "_presets",
    "FRONTIER": "_presets",
    "METHOD_IDS": "_names",
    "PAPER": "_presets",
    "PRESETS": "_presets",
    "SMOKE": "_presets",
    "GridConfig": "_config",
    "METHODS": "_methods",
    "CellContext": "_methods",
    "MethodOutput": "_methods",
    "CUSTOM_MODELS": "_models",
    "TinyCNN": "_models",
    "build_model": "_models",
    "register_model": "_models",
    "probe_main": "_probe_cli",
    "Report": "_report",
    "build_report": "_report",
    "summary_frame": "_frames",
    "to_csv": "_tables",
    "to_latex": "_tables",
    "to_markdown": "_tables",
    "RunSummary": "_execution",
    "binary_grouping": "_data",
    "run_grid": "_runner",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'fq_bench.grid' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


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
