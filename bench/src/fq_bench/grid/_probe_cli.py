"""``python bench/ptq_probe.py``'s command line (the probe itself: :mod:`._probe`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ._config import FP32_FIELDS
from ._names import PROBE_GRANULARITIES

#: The grid's fields the probe uses: which references (datasets, models, seeds), what trains them
#: (the FP32 checkpoint's fields) and how it runs; the fine-tune fields get no flag.
PROBE_FIELDS: tuple[str, ...] = (*FP32_FIELDS, "datasets", "models", "seeds", "cpu", "progress")


def build_probe_parser() -> argparse.ArgumentParser:
    from ._cli import add_config_arguments

    p = argparse.ArgumentParser(
        prog="python bench/ptq_probe.py",
        description="Uniform post-training quantization of the grid's FP32 references, per group: "
        "accuracy, worst group, logit error, prediction flips. Takes the grid's flags that "
        "choose and train the FP32 references, and reuses the grid's FP32 checkpoints under --out.",
    )
    p.add_argument("--out", default=None, help="grid results folder (default results/<preset>)")
    p.add_argument("--bits", nargs="+", type=int, default=[8, 5, 4, 3],
                   help="bit-widths to probe, each in 2..16 (default: 8 5 4 3)")  # fmt: skip
    p.add_argument("--granularity", choices=PROBE_GRANULARITIES, default="channel",
                   help="scope of one scale: channel (Table 1) or tensor")  # fmt: skip
    add_config_arguments(p, fields=PROBE_FIELDS)
    return p


def probe_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bench/ptq_probe.py``; writes ``<out>/ptq_probe.{csv,md,json}``."""
    from ._cli import config_from_args, set_up_process

    parser = build_probe_parser()
    args = parser.parse_args(argv)
    set_up_process(args, parser)
    bad = [b for b in args.bits if not 2 <= b <= 16]
    if bad:
        parser.error(f"--bits must each be in 2..16; got {bad}")
    config = config_from_args(args, parser)
    # torch, polars and the runner load only now: --help and a mistyped flag answer at once
    import polars as pl

    from ._cells import atomic_write_bytes
    from ._probe import probe_markdown, probe_summary, ptq_probe
    from ._processes import is_main_process
    from ._series import mean_of

    out = Path(args.out) if args.out else Path("results") / config.preset
    t0 = time.perf_counter()
    frame = ptq_probe(config, out, bits=args.bits, granularity=args.granularity)
    if not is_main_process():
        return 0
    summary = probe_summary(frame)
    text = probe_markdown(summary)
    atomic_write_bytes(out / "ptq_probe.md", text.encode())
    atomic_write_bytes(out / "ptq_probe.json", json.dumps(frame.to_dicts(), indent=1).encode())
    flat = frame.with_columns(
        pl.col("group_acc").list.eval(pl.element().round(6).cast(pl.Utf8)).list.join(";"),
        pl.col("group_names").list.join(";"),
    )
    atomic_write_bytes(out / "ptq_probe.csv", flat.write_csv().encode())
    print(text, end="")
    ratios = frame.filter(pl.col("bits") == 32)["w_max_over_std"]
    print(
        f"weights: max|w|/std(w) per output channel, mean over layers: "
        f"{mean_of(ratios):.2f} (over {ratios.len()} FP32 reference(s))"
    )
    print(f"{args.granularity} scopes; wall {time.perf_counter() - t0:.1f} s; results in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(probe_main())
