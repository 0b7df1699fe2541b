"""What the user sees while the grid runs: bars on a terminal, one line per step otherwise."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from ._processes import is_main_process

if TYPE_CHECKING:
    from ._cells import CellKey
    from ._config import GridConfig


def progress_mode(config: GridConfig) -> str:
    """``"bars"`` (a terminal: a bar over cells and one over each training's epoch, redrawn in
    place), ``"lines"`` (output to a file or pipe: one plain line per finished step, no bars), or
    ``"off"`` (``progress=False``, or not the main process)."""
    if not config.progress or not is_main_process():
        return "off"
    return "bars" if sys.stderr.isatty() else "lines"


def say(text: str) -> None:
    """``text`` as one line on stderr, flushed at once."""
    print(text, file=sys.stderr, flush=True)


def cell_line(done: int, total: int, key: CellKey, result: dict[str, Any], how: str) -> str:
    """The ``lines`` mode's line for a finished cell: its id, time, accuracies and bits."""
    if not result:
        return f"[{done}/{total}] {key.id}: {how}"
    m, c = result["metrics"], result["cost"]
    return (
        f"[{done}/{total}] {key.id}: {how} in {result.get('seconds', 0.0):.1f} s, "
        f"WorstAcc {100 * m['worst_acc']:.1f}%, AvgAcc {100 * m['avg_acc']:.1f}%, "
        f"{c['avg_bits']:.2f} bits"
    )
