"""The performance suite's table: one row per figure, how its target is gated, the markdown and exit code.

``bench/perf.py`` measures; this module holds what a row is (:class:`Figure`), the settings the table
header quotes (:class:`Settings`), the headroom of absolute wall-time gates, the rendering, and
how rows load the ``bench/bench_*.py`` modules they measure with (:func:`bench_module`).
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent

#: Headroom of the absolute wall-time gates: on 2026-12-02 allocate_to_budget per channel took
#: 7.1 ms in the full suite, 4.2 ms alone minutes later and 6.9 ms in a third run (target 5 ms).
ABSOLUTE_HEADROOM = 2.0

#: The gates a row may carry (see :class:`Figure`).
GATES = ("ratio", "ratio (separate processes)", "ratio (separate runs)", "absolute", "exact", "-")


@dataclass(frozen=True, kw_only=True)
class Figure:
    """One measured row of the table; ``ok`` is None when the figure has no target.

    ``gate`` says how the target is held: ``ratio`` (two variants interleaved in one process, so
    machine noise hits both; gated at the target itself), ``absolute xH`` (a wall time on a shared
    machine: the best of its repeats, gated at :func:`headroom` times the target so that another
    session's load does not fail the suite), ``exact`` (a byte count), or ``-`` (reported, not gated).
    """

    figure: str
    setting: str
    value: str
    target: str
    ok: bool | None
    gate: str = "ratio"

    def __post_init__(self) -> None:
        if not self.gate.startswith(GATES):
            raise ValueError(f"gate must start with one of {GATES}; got {self.gate!r}")
        if (self.gate == "-") != (self.ok is None):
            raise ValueError(
                f"gate '-' goes with ok=None and only then; got {self.gate!r}, {self.ok}"
            )


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What the suite was run with: ``device``, training rows' ``image_size`` (px) and ``batch``,
    timed ``steps`` per measurement, and the ONNX rows' ``deploy_size`` (px)."""

    device: str
    image_size: int
    batch: int
    steps: int
    deploy_size: int = 224


def bench_module(name: str) -> ModuleType:
    """Import ``bench/<name>.py`` by path (the scripts are not part of an installed package)."""
    spec = importlib.util.spec_from_file_location(f"fq_bench_scripts.{name}", HERE / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load bench/{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def headroom() -> float:
    """How far past its target an absolute wall time may run before its row fails: at least
    :data:`ABSOLUTE_HEADROOM`, and the 1-minute load average per core when that is larger (with more
    runnable threads than cores, a one-thread wall time stretches by about that factor)."""
    per_core = os.getloadavg()[0] / (os.cpu_count() or 1)
    return max(ABSOLUTE_HEADROOM, per_core)


def absolute_gate(best_s: float, limit_s: float) -> tuple[bool, str]:
    """``(met, gate label)`` of a wall time whose target is ``limit_s`` seconds on a shared machine.

    ``best_s`` should be the fastest of the repeats (the one least stretched by other sessions);
    it is held to ``limit_s * headroom()``, and the label names the headroom and the load it came from.
    """
    h = headroom()
    label = f"absolute x{h:.1f} (best of repeats; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    return best_s <= limit_s * h, label


def spread(lo: float, hi: float) -> str:
    """``[lo, hi]`` of per-step ratios, three decimals."""
    return f"[{lo:.3f}, {hi:.3f}]"


def to_markdown(rows: Sequence[Figure], s: Settings, *, torch_info: str = "") -> str:
    """The table as markdown: a dated header quoting the command and the gates, then one line per row.

    ``torch_info``: what to say about torch (version, threads, GPU), appended to the machine line.
    """
    head = [
        f"# Performance suite ({s.device})",
        "",
        f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} cores" + (f", {torch_info}" if torch_info else ""),
        f"Command: `uv run python bench/perf.py --device {s.device} --image-size {s.image_size} "
        f"--batch {s.batch} --steps {s.steps} --deploy-size {s.deploy_size}`. Ratios are medians "
        "over interleaved steps after warm-up; [min, max] of the per-step ratios in brackets. "
        "Gate: `ratio` rows are met at their target (both sides timed interleaved in one "
        "process); `absolute xH` rows are wall times on a shared machine, met when the best "
        f"repeat is within H times the target, H = max({ABSOLUTE_HEADROOM:g}, 1-minute load "
        "average per core); `exact` rows are byte counts; `-` rows are reported only. On CPU the "
        "QAT and BAQ step rows also quote the same step pairs' ratio by process CPU time (the time "
        "other processes hold the cores left out): reported, not gated.",
        "",
        "| figure | setting | measured | target | gate | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    return "\n".join(head + [row_markdown(r) for r in rows]) + "\n"


def row_markdown(r: Figure) -> str:
    """One table line."""
    mark = {True: "yes", False: "**no**", None: "-"}
    return f"| {r.figure} | {r.setting} | {r.value} | {r.target} | {r.gate} | {mark[r.ok]} |"


def exit_status(rows: Sequence[Figure]) -> int:
    """0 when no gated row missed its (headroom-adjusted) target, else 1."""
    return 0 if all(r.ok is not False for r in rows) else 1
