"""The rehearsal on the command line: ``--rehearsal`` and its flags (``python bench/run_grid.py``)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from ._projection import GPU_NAMES

if TYPE_CHECKING:
    from ._config import GridConfig

#: ``--preset rehearsal``: ``--preset paper --rehearsal``.
REHEARSAL_PRESET = "rehearsal"


def add_rehearsal_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--rehearsal``, ``--rehearsal-batch-size``, ``--rehearsal-batches``, ``--gpu`` and
    ``--utilisation`` to ``p`` (:func:`rehearse_main` reads them)."""
    r = p.add_argument_group(
        "rehearsal",
        "run every cell of the grid at its shapes, cut to a batch per stage, before "
        "booking GPUs (bench/README.md, 'The rehearsal')",
    )
    r.add_argument("--rehearsal", action="store_true",
                   help="rehearse the grid instead of running it: one seed, one epoch of "
                   "--rehearsal-batches batches per stage, random init unless --weights; writes "
                   "rehearsal.md, rehearsal_cells.csv and projection.md to --out; exit 1 naming "
                   "every cell that cannot run")  # fmt: skip
    r.add_argument("--rehearsal-batch-size", type=int, default=None, metavar="N",
                   help="images per batch (default: the grid's --batch-size on a GPU, 2 on the "
                   "CPU; GPU memory at the grid's batch needs a GPU rehearsal)")  # fmt: skip
    r.add_argument("--rehearsal-batches", type=int, default=1, metavar="N",
                   help="batches per stage (default 1)")  # fmt: skip
    r.add_argument("--gpu", choices=GPU_NAMES, default=GPU_NAMES[0],
                   help="the GPU the GPU-hour projection assumes (datasheet dense peak)")  # fmt: skip
    r.add_argument("--utilisation", type=float, default=None, metavar="U",
                   help="share of the GPU's peak assumed sustained, in (0, 1] (default 0.3)")  # fmt: skip


def rehearse_main(
    args: argparse.Namespace, parser: argparse.ArgumentParser, config: GridConfig
) -> int:
    """``--rehearsal``: rehearse ``config``; 0 when every cell ran, 1 naming those that did not."""
    if args.shard != "0/1":
        parser.error("--shard: a rehearsal runs every cell in one process; leave --shard out")
    from ._projection import GPUS
    from ._rehearsal import RehearsalError, rehearse

    gpu = GPUS[args.gpu]
    try:
        if args.utilisation is not None:
            gpu = dataclasses.replace(gpu, utilisation=args.utilisation)
        if args.rehearsal_batches < 1:
            raise ValueError(f"--rehearsal-batches {args.rehearsal_batches}: allowed: an int >= 1")
        if args.rehearsal_batch_size is not None and args.rehearsal_batch_size < 1:
            raise ValueError(
                f"--rehearsal-batch-size {args.rehearsal_batch_size}: allowed: an int >= 1"
            )
    except ValueError as exc:
        parser.error(str(exc))
    out = (
        Path(args.out) if args.out else Path("results") / (args.run or f"{config.preset}-rehearsal")
    )
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out}: is a file; give a folder for the results")
    try:
        rehearse(
            config,
            out,
            batch_size=args.rehearsal_batch_size,
            batches=args.rehearsal_batches,
            throughput=gpu,
            fail_fast=args.fail_fast,
            progress=config.progress,
        )
    except RehearsalError as exc:
        print(f"REHEARSAL FAILED: {exc}")
        return 1
    except ValueError as exc:  # before any cell ran: the grid itself (e.g. a dataset unsized)
        parser.error(str(exc))
    print(f"rehearsal passed: every cell ran; tables in {out}/")
    return 0
