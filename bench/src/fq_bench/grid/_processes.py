"""The run's processes: accelerate's state, the main process, broadcast and barrier, seeding.

Outside ``accelerate launch`` there is one process: :func:`broadcast` is the identity and
:func:`barrier` does nothing. Under it every process runs every cell together (the trainers use
all devices); only the main process reads and writes files, and shares what it read.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from ._config import GridConfig


def _state():
    from accelerate import PartialState

    return PartialState()


def init_processes(config: GridConfig) -> None:
    """Initialize accelerate's process state before anything else asks for it.

    On a machine without CUDA, accelerate only joins the processes of a ``torchrun`` /
    ``accelerate launch --multi_gpu`` launch (gloo) when the state is created with ``cpu=True``;
    created without it, every process believes it is alone and the main process, so all of them
    would write every file. Raises ``RuntimeError`` when the launcher started several processes
    (``WORLD_SIZE``) but accelerate did not join them.
    """
    import os

    from accelerate import PartialState

    state = PartialState(cpu=bool(config.cpu) or not torch.cuda.is_available())
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and state.num_processes != launched:
        raise RuntimeError(
            f"the launcher started WORLD_SIZE={launched} processes but accelerate joined "
            f"{state.num_processes} ({state.distributed_type}); on CPU launch with "
            "`accelerate launch --multi_gpu --num_processes N` or `torchrun --nproc_per_node N`"
        )


def is_main_process() -> bool:
    """True in the one process that reads and writes files (always, outside a launch)."""
    return _state().is_main_process


def distributed() -> bool:
    """True under a multi-process launch (``torch.distributed`` initialized)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def barrier() -> None:
    """Wait until every process gets here (no-op outside a multi-process launch)."""
    if distributed():
        _state().wait_for_everyone()


def broadcast(obj: Any) -> Any:
    """``obj`` as the main process has it (identity outside ``accelerate launch``)."""
    if not distributed():
        return obj
    from accelerate.utils import broadcast_object_list

    box = [obj]
    broadcast_object_list(box, from_process=0)
    return box[0]


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs from ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_device(config: GridConfig) -> torch.device:
    """The device this process trains and evaluates on."""
    # accelerate names the CPU ``cpu:0`` under a multi-process CPU launch, while tensors moved
    # there report plain ``cpu`` (and fq_importance.calibrate compares the two strictly)
    device = _state().device
    return torch.device("cpu") if config.cpu or device.type == "cpu" else device


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """The main process runs the block first (filling on-disk caches); the others then do."""
    with _state().main_process_first():
        yield
