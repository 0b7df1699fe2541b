"""``python -m fq_data <command>``: the data command line; each command is one small function.

Commands: ``prepare fitzpatrick17k`` (download images, write parquet shards),
``prepare semisynthetic`` (generate and cache the offline default), and ``inspect`` (load any
source, with ``--image-col/--label-col/--group-col``, and summarize splits and groups;
``inspect custom SOURCE`` takes your own data with any label and group values).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from fq_data._constants import DEFAULT_TEST_FRACTION, SMALL_GROUP_N


def _prepare_fitzpatrick17k(args: argparse.Namespace) -> int:
    from fq_data import prepare_fitzpatrick17k

    res = prepare_fitzpatrick17k(
        args.csv,
        args.out,
        workers=args.workers,
        retries=args.retries,
        backoff=args.backoff,
        timeout=args.timeout,
        strict=args.strict,
        base_url=args.base_url,
        limit=args.limit,
        progress=not args.quiet,
    )
    print(
        f"fitzpatrick17k: {res.rows} rows, {res.downloaded} downloaded, "
        f"{res.already_present} already present, {res.failed} failed "
        f"(listed in {res.manifest}); {len(res.shards)} parquet shard(s) in {res.out_dir / 'data'}"
    )
    return 0


def _prepare_semisynthetic(args: argparse.Namespace) -> int:
    from fq_data import load_semisynthetic

    dd = load_semisynthetic(
        args.name,
        n=args.n,
        image_size=args.image_size,
        seed=args.seed,
        cache_dir=args.cache_dir,
        min_test_per_group=args.min_test_per_group,
    )
    print(
        f"semi-synthetic {args.name} (real metadata, generated pixels): "
        f"train {len(dd['train'])}, test {len(dd['test'])} rows at {args.image_size} px, cached"
    )
    return 0


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    prep = sub.add_parser("prepare", help="download or generate a dataset")
    which = prep.add_subparsers(dest="dataset", required=True)
    fz = which.add_parser(
        "fitzpatrick17k",
        help="download the images from the CSV's url column and write parquet shards",
    )
    fz.add_argument("--out", required=True, help="output folder (resumable)")
    fz.add_argument("--csv", default=None, help="fitzpatrick17k.csv (default: the embedded copy)")
    fz.add_argument("--workers", type=int, default=8)
    fz.add_argument("--retries", type=int, default=3)
    fz.add_argument("--backoff", type=float, default=1.0, help="seconds, doubled per retry")
    fz.add_argument("--timeout", type=float, default=20.0, help="seconds per request")
    fz.add_argument("--strict", action="store_true", help="fail if any image fails")
    fz.add_argument("--base-url", default=None, help="replace the scheme and host of each url")
    fz.add_argument("--limit", type=int, default=None, help="only the first N rows")
    fz.add_argument("--quiet", action="store_true", help="no progress bar")
    fz.set_defaults(func=_prepare_fitzpatrick17k)
    ss = which.add_parser(
        "semisynthetic",
        help="generate and cache the offline default (real metadata, generated pixels)",
    )
    ss.add_argument("--name", choices=("fitzpatrick17k", "isic2019"), default="fitzpatrick17k")
    ss.add_argument("--n", type=int, default=None)
    ss.add_argument("--image-size", type=int, default=64)
    ss.add_argument("--seed", type=int, default=0)
    ss.add_argument("--cache-dir", default=None)
    ss.add_argument(
        "--min-test-per-group",
        type=int,
        default=0,
        help="top up every group's test split to at least this many rows (default 0: off)",
    )
    ss.set_defaults(func=_prepare_semisynthetic)


def _inspect(args: argparse.Namespace) -> int:
    from fq_data import (
        dataset_info,
        is_semisynthetic,
        load_fitzpatrick17k,
        load_isic2019,
        load_semisynthetic,
    )

    cols = {"image_col": args.image_col, "group_col": args.group_col, "strict": args.strict}
    if args.dataset == "custom":
        from fq_data import load_dataset

        missing = [
            f"--{k.replace('_', '-')}"
            for k in ("image_col", "label_col", "group_col")
            if getattr(args, k) is None
        ]
        if args.source is None or missing:
            raise SystemExit(
                "inspect custom: needs SOURCE and --image-col, --label-col, --group-col"
                + (f" (missing: {', '.join(missing)})" if missing else "")
            )
        from fq_data import MISSING_VALUES

        dd = load_dataset(
            args.source,
            image_col=args.image_col,
            label_col=args.label_col,
            group_col=args.group_col,
            seed=args.seed,
            test_fraction=args.test_fraction,
            strict=bool(args.strict),
            missing_values=MISSING_VALUES - {v.strip() for v in args.keep_value},
            allow_outside_root=args.allow_outside_root,
        )
    elif args.dataset == "semisynthetic":
        if args.variant != "shared-cues" and args.source not in (None, "fitzpatrick17k"):
            raise SystemExit(f"inspect: --variant {args.variant} needs fitzpatrick17k (skin types)")
        dd = load_semisynthetic(
            args.source or "fitzpatrick17k",
            seed=args.seed,
            test_fraction=args.test_fraction,
            variant=args.variant,
        )
    elif args.source is None:
        raise SystemExit("inspect: SOURCE is required for real data")
    elif args.dataset == "fitzpatrick17k":
        dd = load_fitzpatrick17k(
            args.source,
            grouping=args.grouping,
            seed=args.seed,
            test_fraction=args.test_fraction,
            label_col=args.label_col or "label",
            **{k: v for k, v in cols.items() if v is not None},
        )
    else:
        dd = load_isic2019(
            args.source,
            unknown_sex=args.unknown_sex,
            seed=args.seed,
            test_fraction=args.test_fraction,
            label_col=args.label_col,
            **{k: v for k, v in cols.items() if v is not None},
        )
    classes, groups = dataset_info(dd)
    kind = "semi-synthetic (real metadata, generated pixels)" if is_semisynthetic(dd) else "real"
    print(f"{args.dataset}: {kind}; {len(classes)} classes; groups {list(groups)}")
    if args.dataset == "semisynthetic" and args.variant != "shared-cues":
        from fq_data import describe_variant

        print(f"  variant {describe_variant(args.variant)}")
    for split in ("train", "test"):
        counts = [0] * len(groups)
        for g in dd[split]["group"]:
            counts[g] += 1
        per = ", ".join(f"{n}={c}" for n, c in zip(groups, counts, strict=True))
        print(f"  {split}: {len(dd[split])} rows ({per})")
    print(
        f"  split: test fraction {args.test_fraction}, seed {args.seed} "
        "(a source's own train/test split is kept as given)"
    )
    empty = [n for n, c in zip(groups, counts, strict=True) if c == 0]
    small = {n: c for n, c in zip(groups, counts, strict=True) if 0 < c < SMALL_GROUP_N}
    if empty:
        print(
            f"  warning: no test image in group(s) {empty}: every fairness metric leaves them out"
        )
    if small:
        print(
            f"  warning: fewer than {SMALL_GROUP_N} test images in group(s) {small}: their "
            "accuracy is too uncertain to rank groups by"
        )
    return 0


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    ins = sub.add_parser("inspect", help="load a source into the canonical form and summarize it")
    ins.add_argument("dataset", choices=("fitzpatrick17k", "isic2019", "semisynthetic", "custom"))
    ins.add_argument(
        "source",
        nargs="?",
        default=None,
        help="hub id, local dataset path, or folder in the original layout "
        "(for semisynthetic: fitzpatrick17k or isic2019; for custom: a folder or table whose "
        "--image-col holds image paths, or anything datasets reads)",
    )
    ins.add_argument("--image-col", default=None)
    ins.add_argument("--label-col", default=None)
    ins.add_argument("--group-col", default=None)
    ins.add_argument("--grouping", choices=("type", "binary"), default="type")
    ins.add_argument("--unknown-sex", choices=("group", "drop"), default="group")
    ins.add_argument("--seed", type=int, default=0)
    ins.add_argument(
        "--test-fraction",
        type=float,
        default=DEFAULT_TEST_FRACTION,
        help=f"test share of the stratified split (default {DEFAULT_TEST_FRACTION}; give the "
        "grid's, e.g. 0.4 for its semi-synthetic preset, to see the split it uses)",
    )
    ins.add_argument(
        "--keep-value",
        action="append",
        default=[],
        metavar="VALUE",
        help="custom: keep this missing-value marker (e.g. NA) as a literal label or group "
        "value (repeatable); by default fq_data.MISSING_VALUES are read as missing",
    )
    ins.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="custom: read image paths leading outside the table's folder (absolute, '..', "
        "symlinks to elsewhere); refused by default",
    )
    ins.add_argument(
        "--variant",
        choices=("shared-cues", "minority-cue"),
        default="shared-cues",
        help="semisynthetic only: the default data (shared-cues), or the positive control whose "
        "Fitzpatrick types 5-6 carry a class cue the other types lack (minority-cue)",
    )
    ins.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help="fail on a missing or corrupt image instead of skipping it",
    )
    ins.set_defaults(func=_inspect)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_prepare, _add_inspect]
"""Each entry adds one subcommand; append to add more."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fq_data", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (ValueError, OSError) as exc:  # DataError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
