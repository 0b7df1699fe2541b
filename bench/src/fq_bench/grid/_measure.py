"""Measure a block of training code from outside it: peak memory and the time of each step.

Neither needs the code measured to cooperate: :class:`PeakMemory` reads the process's (or the
GPU's) high-water mark, :class:`StepClock` listens to every module's forward and every optimizer's
step through torch's global hooks.
"""

from __future__ import annotations

import math
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    """``field`` (``VmHWM``, ``VmRSS``) of ``/proc/self/status`` in KiB, ``None`` off Linux."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Reset the process's peak resident set to its current one (Linux >= 4.0: ``5`` into
    ``/proc/self/clear_refs``); False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _maxrss_bytes() -> int:
    """``ru_maxrss`` in bytes (KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


class PeakMemory:
    """The peak memory of the block it wraps, in bytes (``peak_bytes`` after the block).

    On a CUDA ``device``: ``torch.cuda.max_memory_allocated`` after
    ``torch.cuda.reset_peak_memory_stats`` (tensors only; the caching allocator reserves more,
    ``reserved_bytes``). On the CPU: the process's peak resident set (``VmHWM``), reset to the
    current resident set when the block starts (``/proc/self/clear_refs``), so it is the peak of
    this block; it includes everything resident (torch itself, the decoded data, memory the
    allocator keeps after earlier blocks), so ``start_bytes`` is given beside it. Where the peak
    cannot be reset (not Linux), it is ``ru_maxrss``: the process's peak so far, an upper bound
    (``exact`` is False then).
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.peak_bytes = math.nan
        self.start_bytes = math.nan
        self.reserved_bytes = math.nan
        self.exact = True

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = float(torch.cuda.memory_allocated(self.device))
        else:
            self.exact = _reset_rss_peak()
            rss = _status_kib("VmRSS")
            self.start_bytes = float(rss * 1024) if rss is not None else math.nan
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = float(torch.cuda.max_memory_allocated(self.device))
            self.reserved_bytes = float(torch.cuda.max_memory_reserved(self.device))
            return
        hwm = _status_kib("VmHWM") if self.exact else None
        self.peak_bytes = float(hwm * 1024) if hwm is not None else float(_maxrss_bytes())
        self.exact = self.exact and hwm is not None


def _not_a_model(module: torch.nn.Module) -> bool:
    """A top-level call that is not a model's forward: a parametrization computing a weight
    (``module.weight`` of a quantized layer outside the model's forward), or a lone layer."""
    from torch.nn.utils.parametrize import ParametrizationList

    return isinstance(module, ParametrizationList) or next(module.children(), None) is None


class StepClock:
    """Wall seconds of each training step and each evaluation forward inside the block.

    A training step runs from the first top-level forward of a model (a module with submodules;
    a parametrization computing a quantized weight outside the forward is not one) in training
    mode with gradients on after the previous step to the end of an optimizer's ``step`` (forward, loss, backward and
    update; loading the batch is not included). An evaluation forward is a top-level forward in
    eval mode without gradients; ``eval_per_image`` divides it by its batch size (the first
    input's first dimension). On CUDA the clock synchronizes the device at each mark, so the
    times are the device's (and the code measured runs slightly slower).

    Uses ``torch.nn.modules.module.register_module_forward_pre_hook`` /
    ``register_module_forward_hook`` and ``torch.optim.optimizer.register_optimizer_step_post_hook``:
    every module and optimizer of the process is seen while the block runs.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.steps: list[float] = []
        self.eval_per_image: list[float] = []
        self._handles: list[Any] = []
        self._depth = 0
        self._step_start: float | None = None
        self._fwd: tuple[float, bool, int] | None = None

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _pre(self, module: torch.nn.Module, args: Any) -> None:
        self._depth += 1
        if self._depth != 1:
            return
        if _not_a_model(module):
            self._fwd = None
            return
        training = module.training and torch.is_grad_enabled()
        first = args[0] if isinstance(args, tuple) and args else None
        batch = int(first.shape[0]) if isinstance(first, torch.Tensor) and first.ndim else 1
        now = self._now()
        if training and self._step_start is None:
            self._step_start = now
        self._fwd = (now, training, max(batch, 1))

    def _post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        self._depth = max(self._depth - 1, 0)
        if self._depth != 0 or self._fwd is None:
            return
        start, training, batch = self._fwd
        self._fwd = None
        if not training:
            self.eval_per_image.append((self._now() - start) / batch)

    def _step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._step_start is not None:
            self.steps.append(self._now() - self._step_start)
            self._step_start = None

    def __enter__(self) -> StepClock:
        from torch.nn.modules import module as nn_module
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handles = [
            nn_module.register_module_forward_pre_hook(self._pre),
            nn_module.register_module_forward_hook(self._post),
            register_optimizer_step_post_hook(self._step),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def step_median(self) -> float:
        """Median seconds per training step (NaN when none ran)."""
        return statistics.median(self.steps) if self.steps else math.nan

    @property
    def eval_median(self) -> float:
        """Median seconds per evaluated image (NaN when no evaluation forward ran)."""
        return statistics.median(self.eval_per_image) if self.eval_per_image else math.nan
