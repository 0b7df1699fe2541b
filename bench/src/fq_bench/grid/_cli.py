"""``python bench/run_grid.py``: argparse over the preset's fields, run, report."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from ._cells import parse_shard
from ._config import GridConfig
from ._names import DATASETS, METHOD_IDS, MIXED_METHODS, SWEEPABLE, parse_swept_value
from ._presets import PRESETS
from ._rehearsal_cli import REHEARSAL_PRESET, add_rehearsal_arguments, rehearse_main

#: Help for every GridConfig field (units in brackets); the CLI flag is ``--field-name``.
FIELD_HELP: dict[str, str] = {
    "datasets": "datasets to run",
    "models": "backbones: timm names (resnet18, resnet50, deit_tiny_patch16_224, tiny_vit_5m_224, ...) "
    "or tiny_cnn",
    "methods": "Table 1 rows to run (u3: a lower uniform point; fp32-ft: FP32 trained as long as the "
    "fine-tunes, unquantized, the extra-training control)",
    "seeds": "training seeds [ints]",
    "image_size": "input resolution [px]",
    "n_images": "rows of semi-synthetic data, train + test (real data: ignored)",
    "test_fraction": "share of rows held out for testing (stratified by label x group)",
    "batch_size": "images per batch",
    "fp32_epochs": "epochs of the FP32 reference training",
    "epochs": "epochs of each QAT / BAQ fine-tune",
    "lr_fp32": "AdamW learning rate of the FP32 training (cosine decay)",
    "lr": "AdamW learning rate of the QAT / BAQ fine-tunes",
    "lr_bits": "learning rate of the BAQ bit logits",
    "weight_decay": "AdamW weight decay",
    "lambda_bits": "BAQ bit-rate regularizer weight",
    "lambda_fair": "fairness-loss weight of FQ-QAT and FQ-BAQ",
    "fair_loss": "the fairness objective L_fair of blind-fair, FQ-QAT and FQ-BAQ: gap (the paper's "
    "max - min of the group losses), gap-up (same value, no gradient raises a group's loss), worst "
    "(the worst group's loss), lse (its smooth max at --fair-tau), dro (online group DRO, step "
    "--dro-eta)",
    "fair_tau": "temperature of --fair-loss lse [nats]",
    "dro_eta": "step size of --fair-loss dro's group weights [per nat]; the default grid's ~30 "
    "fine-tune steps need more than Sagawa et al.'s 0.01 for the weights to move",
    "fair_ema": "momentum of a running per-group loss estimate across steps, in [0, 1) (0: each "
    "batch's own group losses, the paper's)",
    "bit_min": "BAQ minimum bits",
    "bit_max": "BAQ maximum bits",
    "palette_bits": "fixed palette bit-widths (Lin, Guo, FQ-QAT)",
    "palette_props": "share of scopes (channels) per palette bit-width; 2/4/8 at 0.2/0.4/0.4 is 5.2 bits "
    "per channel, about 3.8 per weight on resnet18 (each cell reports the per-weight average)",
    "baq_bits": "bit-widths of the FQ-BAQ warm-start allocation",
    "baq_warm_avg_bits": "parameter-weighted average bits of the FQ-BAQ warm start",
    "calib_batches": "calibration mini-batches (paper: 50)",
    "budgets": "frontier budgets [parameter-weighted average bits per weight], e.g. 2.5 3 3.5 4; "
    "every method of --frontier-methods is allocated to each",
    "frontier_methods": "mixed-precision methods run at every budget (blind: group-blind "
    "importance, QAT without L_fair; blind-fair: the same bits with L_fair; fq-alloc: balanced "
    "bits without L_fair; fq-qat: both)",
    "budget_bits": "bit-widths the frontier's allocations may use",
    "alloc_cost": "what a frontier budget counts: packed (each weight's bits) or container "
    "(each layer's INT4/INT8 storage in the ONNX file)",
    "min_test_per_group": "semi-synthetic data: test images every group gets at least",
    "bootstrap_resamples": "resamples of each cell's stratified bootstrap interval (0: none)",
    "pretrained": "start from ImageNet weights (timm hub, or --weights DIR)",
    "weights_dir": "folder of <model>.safetensors ImageNet weights (offline; implies --pretrained)",
    "mixed_precision": "accelerate mixed precision: no, fp16, bf16",
    "variant": "semi-synthetic data variant: shared-cues (the default data) or minority-cue "
    "(Fitzpatrick types 5-6 carry class-coded rings the other types lack; docs/METHOD.md 11)",
    "cpu": "force the CPU even when a GPU is present",
    "progress": "progress bars",
}
_SPECIAL = {
    "preset",
    "data_sources",
    "label_columns",
    "sweeps",
    "notes",
    "custom_datasets",
    "image_columns",
    "group_columns",
}


def _numbers(text: str) -> list[float]:
    """``"2.5,3"`` or ``"2.5"`` -> floats (``--budgets 2.5,3,3.5 4`` and ``--budgets 2.5 3``)."""
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 2.5,3,4; got {text!r}") from None


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, default: Any) -> None:
    flag = "--" + f.name.replace("_", "-")
    help_ = f"{FIELD_HELP[f.name]} (default preset: {default!r})"
    t = str(f.type)
    if f.name == "datasets":
        parser.add_argument(
            flag,
            nargs="+",
            default=None,
            metavar="DATASET",
            help=f"{help_}; one of {', '.join(DATASETS)} or a NAME given with --dataset",
        )
    elif f.name == "methods":
        # none at all: a frontier-only run (Table 1 left out)
        parser.add_argument(flag, nargs="*", choices=METHOD_IDS, default=None, help=help_)
    elif f.name == "frontier_methods":
        parser.add_argument(flag, nargs="*", choices=MIXED_METHODS, default=None, help=help_)
    elif f.name == "budgets":
        parser.add_argument(flag, nargs="*", type=_numbers, default=None, help=help_)
    elif t.startswith("bool"):
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
    elif t.startswith("tuple"):
        item = int if "int" in t else float if "float" in t else str
        parser.add_argument(flag, nargs="+", type=item, default=None, help=help_)
    else:
        item = int if "int" in t else float if "float" in t else str
        if f.name == "weights_dir":
            flag = "--weights"
        parser.add_argument(
            flag, dest=f.name, type=item, default=None, metavar=f.name.upper(), help=help_
        )


def add_config_arguments(
    p: argparse.ArgumentParser,
    fields: Collection[str] | None = None,
    *,
    rehearsal: bool = False,
) -> None:
    """Add ``--preset``, one flag per :class:`GridConfig` field, ``--data-source``,
    ``--dataset``, ``--image-column``, ``--label-column``, ``--group-column``, ``--threads`` and
    ``-v`` to ``p`` (shared by every bench entry point that builds a grid config;
    :func:`config_from_args` reads them back). ``fields``: only these fields get a flag (an entry
    point that uses a few of them lists only those in its ``--help``); the others keep the
    preset's value. ``rehearsal``: ``--preset`` also takes ``rehearsal`` (the paper's grid,
    rehearsed)."""
    presets = (*PRESETS, REHEARSAL_PRESET) if rehearsal else tuple(PRESETS)
    p.add_argument("--preset", choices=presets, default="default",
                   help="default: CPU demo on semi-synthetic data (Table 1 and a 3-budget frontier); "
                   "paper: the paper's grid (+ a 3-6 bit frontier); frontier: a denser frontier "
                   "on the default's data; ablations: Fig. 2 sweeps"
                   + ("; rehearsal: --preset paper --rehearsal" if rehearsal else ""))  # fmt: skip
    p.add_argument("--data-source", action="append", default=None, metavar="DATASET=SOURCE",
                   help="real data for a dataset (folder, hub id, parquet); otherwise semi-synthetic")  # fmt: skip
    p.add_argument("--dataset", action="append", default=None, metavar="NAME=SOURCE",
                   help="your own data as dataset NAME (fq_data.load_dataset: a folder or CSV whose "
                   "image column holds image paths, or anything datasets reads); without "
                   "--datasets, only the --dataset ones run")  # fmt: skip
    p.add_argument("--image-column", action="append", default=None, metavar="NAME=COLUMN",
                   help="image column of a --dataset (default: image)")  # fmt: skip
    p.add_argument("--group-column", action="append", default=None, metavar="NAME=COLUMN",
                   help="group column of a --dataset, any values (default: group)")  # fmt: skip
    p.add_argument("--label-column", action="append", default=None, metavar="DATASET=COLUMN",
                   help="metadata column holding the class, e.g. fitzpatrick17k=nine_partition_label "
                   "(default: label for real Fitzpatrick17k, three_partition_label semi-synthetic)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is faster on a busy machine)")  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    for f in dataclasses.fields(GridConfig):
        if f.name not in _SPECIAL and (fields is None or f.name in fields):
            _add_field(p, f, getattr(PRESETS["default"], f.name))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python bench/run_grid.py",
        description="Reproduce the FairQuant paper's Table 1 grid (and ablations). Every preset field "
        "can be overridden; a finished cell is never recomputed; SIGKILL and re-run to resume.",
    )
    p.add_argument("--out", default=None, help="results folder (default results/<run>)")
    p.add_argument("--run", default=None, help="run name under results/ (default: the preset)")
    p.add_argument("--shard", default="0/1", help="run shard i/n of the cells (0-based), e.g. 2/8")
    p.add_argument("--report", metavar="DIR", default=None,
                   help="only rebuild tables and plots of DIR from its cell files")  # fmt: skip
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--export", choices=("onnx", "onnx-int8"), default=None,
                   help="also write each quantized cell computed in this run as ONNX with integer "
                   "weights to <out>/onnx/<cell>.onnx (fq_quant.export_onnx; a file already there "
                   "is kept, so a re-run resumes), its packed file and sizes; onnx-int8: also "
                   "<cell>.int8.onnx with int8 activations and its per-group audit against FP32 "
                   "and the weight-only file (<cell>.audit.md/.json; summary in exports.md)")  # fmt: skip
    p.add_argument("--fail-fast", action="store_true",
                   help="stop at the first failing cell (default: record it under failed/, run the "
                   "others, exit 1 listing the failures)")  # fmt: skip
    p.add_argument("--sweep", action="append", default=None, metavar="FIELD=V1,V2,...",
                   help=f"ablation sweep over {', '.join(SWEEPABLE)} (replaces the preset's; "
                   "without --methods, runs only the methods the swept fields change; with budgets, "
                   "the frontier's methods that use the field run once per value at every budget), "
                   "e.g. fair_loss=gap,gap-up,worst,lse,dro or lambda_fair=0.1,0.5")  # fmt: skip
    add_rehearsal_arguments(p)
    add_config_arguments(p, rehearsal=True)
    return p


def set_up_process(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Apply ``--verbose`` (logging level) and ``--threads`` (torch CPU threads)."""
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1; got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)


def _dataset_pair(
    parser: argparse.ArgumentParser,
    flag: str,
    what: str,
    item: str,
    allowed: tuple[str, ...] = DATASETS,
) -> tuple[str, str]:
    """``DATASET=VALUE`` -> ``(dataset, value)``; a parser error naming ``flag`` otherwise."""
    ds, sep, value = item.partition("=")
    if not sep or ds not in allowed or not value:
        parser.error(
            f"{flag} {item!r}: expected DATASET={what} with DATASET in {', '.join(allowed)}"
        )
    if what == "SOURCE" and not _plausible_source(value):
        parser.error(
            f"{flag} {item!r}: {value} does not exist (a local folder or file, or a hub id "
            "owner/name)"
        )
    return ds, value


def _plausible_source(source: str) -> bool:
    """Whether ``source`` exists locally or reads as a hub id (``owner/name``, nothing more)."""
    path = Path(source).expanduser()
    if path.exists():
        return True
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "~")) and not path.suffix


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> GridConfig:
    """The preset with every given flag applied; errors name the flag and the valid values."""
    base = PRESETS["paper" if args.preset == REHEARSAL_PRESET else args.preset]
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(GridConfig):
        if f.name in _SPECIAL:
            continue
        v = getattr(args, f.name, None)
        if f.name == "budgets" and v is not None:
            v = [b for chunk in v for b in chunk]
        if v is not None:
            changes[f.name] = tuple(v) if isinstance(v, list) else v
    custom: list[tuple[str, str]] = []
    for item in getattr(args, "dataset", None) or []:
        name, sep, source = item.partition("=")
        if not sep or not name or not source or name in DATASETS:
            parser.error(
                f"--dataset {item!r}: expected NAME=SOURCE with NAME not one of "
                f"{', '.join(DATASETS)}"
            )
        custom.append((name, source))
    if custom:
        changes["custom_datasets"] = tuple(custom)
        if "datasets" not in changes:
            changes["datasets"] = tuple(name for name, _ in custom)
    names = (*DATASETS, *(n for n, _ in custom))
    if "datasets" in changes:
        bad = [d for d in changes["datasets"] if d not in names]
        if bad:
            parser.error(f"--datasets: unknown name(s) {bad}; valid: {', '.join(names)}")
    for flag, field_name, what, allowed in (
        ("data_source", "data_sources", "SOURCE", DATASETS),
        ("label_column", "label_columns", "COLUMN", names),
        ("image_column", "image_columns", "COLUMN", names[len(DATASETS) :]),
        ("group_column", "group_columns", "COLUMN", names[len(DATASETS) :]),
    ):
        items = getattr(args, flag, None)
        if items:
            changes[field_name] = tuple(
                _dataset_pair(parser, f"--{flag.replace('_', '-')}", what, i, allowed)
                for i in items
            )
    if getattr(args, "sweep", None):
        sweeps = []
        for item in args.sweep:
            name, sep, vals = item.partition("=")
            if not sep or name not in SWEEPABLE:
                parser.error(
                    f"--sweep {item!r}: expected FIELD=V1,V2 with FIELD in {', '.join(SWEEPABLE)}"
                )
            try:
                sweeps.append((name, tuple(parse_swept_value(name, v) for v in vals.split(","))))
            except ValueError:
                parser.error(f"--sweep {item!r}: values must be numbers")
        changes["sweeps"] = tuple(sweeps)
        if "methods" not in changes:
            # the preset's methods that every swept field changes (Table 1's FP32 or U4 would
            # only recompute the same cell per swept value)
            from ._names import sweep_methods

            allowed = sweep_methods(tuple(name for name, _ in sweeps))
            changes["methods"] = tuple(m for m in base.methods if m in allowed) or allowed
    if changes.get("weights_dir") is not None and "pretrained" not in changes:
        changes["pretrained"] = True  # --weights DIR means "start from these ImageNet weights"
    if getattr(args, "rehearsal", False) or args.preset == REHEARSAL_PRESET:
        changes.setdefault("pretrained", False)  # a rehearsal starts from random weights
    try:
        config = base.replace(**changes)
        from ._models import check_model_names, check_pretrained_sources

        check_model_names(config.models)
        # before any data is loaded: a missing weights file or an unreachable hub fails now,
        # not after minutes of decoding images
        check_pretrained_sources(
            config.models, pretrained=config.pretrained, weights_dir=config.weights_dir
        )
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
        parser.error(str(exc))
    return config


#: Pseudo file systems a results folder must not be under (writes there reach the kernel, or fail
#: only after the FP32 training).
PSEUDO_ROOTS: tuple[str, ...] = ("/proc", "/sys", "/dev")


def check_out_folder(out: Path) -> None:
    """Raise ``OSError`` naming ``--out`` unless it is (or can be made) a folder this process can
    write: not under a pseudo file system (:data:`PSEUDO_ROOTS`), not a file, and a file can be
    created in it (tried, then removed). Creates the folder. Runs before any data is loaded."""
    import os
    import tempfile

    resolved = out.expanduser().resolve()
    for root in PSEUDO_ROOTS:
        if resolved == Path(root) or resolved.is_relative_to(root):
            raise OSError(
                f"--out {out}: is under {root}, not a results folder; give a folder on disk"
            )
    if resolved.exists() and not resolved.is_dir():
        raise OSError(f"--out {out}: is a file; give a folder for the results")
    try:
        resolved.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=resolved)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OSError(f"--out {out}: not writable ({exc.strerror or exc})") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the grid (or only ``--report``); 0 when every cell finished, 1 when some failed, 2 on
    bad input: a command-line error, or a data, value or file error, printed as one
    ``error: ...`` line (the traceback too with ``-v``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    set_up_process(args, parser)
    try:
        return _main(args, parser)
    except (ValueError, OSError) as exc:  # fq_data.DataError is a ValueError
        logging.getLogger("fq_bench.grid").info("traceback of the error below", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ._report import build_report

    if args.report is not None:
        if not (Path(args.report) / "cells").is_dir():
            parser.error(f"--report {args.report}: no cells/ folder there")
        try:
            print(build_report(args.report, plots=not args.no_plots).text())
        except ValueError as exc:
            parser.error(f"--report {args.report}: {exc}")
        return 0
    config = config_from_args(args, parser)
    if getattr(args, "rehearsal", False) or args.preset == REHEARSAL_PRESET:
        return rehearse_main(args, parser, config)
    from ._cell_run import check_cells
    from ._cells import grid_cells, shard_cells

    try:
        shard = parse_shard(args.shard)
        check_cells(config, shard_cells(grid_cells(config), *shard))
    except ValueError as exc:
        parser.error(str(exc))
    out = Path(args.out) if args.out else Path("results") / (args.run or config.preset)
    try:
        check_out_folder(out)
    except OSError as exc:
        parser.error(str(exc))
    from ._processes import is_main_process
    from ._runner import run_grid

    t0 = time.perf_counter()
    summary = run_grid(config, out, shard=shard, fail_fast=args.fail_fast, export=args.export)
    if not is_main_process():
        return 0
    try:
        report = build_report(out, plots=not args.no_plots)
    except ValueError as exc:  # no finished cell to tabulate (all failed)
        report = None
        print(f"no table: {exc}")
    if report is not None:
        print(report.text())
    from ._notes import run_notes

    for note in run_notes(config):
        print(note)
    if shard[1] > 1:
        print(f"shard {shard[0]}/{shard[1]}: the table holds every cell finished so far in {out}")
    made = "no tables"
    if report is not None:
        plots = ", ".join(p.name for p in report.plots) or "no plots"
        made = f"{', '.join(report.tables)}, {plots}"
    print(
        f"{len(summary.computed)} cell(s) computed, {len(summary.skipped)} reused; "
        f"wall {time.perf_counter() - t0:.1f} s; results in {out}/ ({made})"
    )
    if summary.failed:
        print(f"{len(summary.failed)} cell(s) FAILED (recorded under {out}/failed/):")
        for key, error in summary.failed:
            print(f"  {key.id}: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
