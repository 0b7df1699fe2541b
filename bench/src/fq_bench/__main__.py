"""``python -m fq_bench <command>``: a thin dispatcher; each command lives in its own module.

Commands: ``prepare fitzpatrick17k`` (download images, write parquet shards) and
``prepare semisynthetic`` (generate and cache the offline default).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence


def _prepare_fitzpatrick17k(args: argparse.Namespace) -> int:
    from fq_bench.data import prepare_fitzpatrick17k

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
    from fq_bench.data import load_semisynthetic

    dd = load_semisynthetic(
        args.name, n=args.n, image_size=args.image_size, seed=args.seed, cache_dir=args.cache_dir
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
    ss.set_defaults(func=_prepare_semisynthetic)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_prepare]
"""Each entry adds one subcommand; append to add more."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fq_bench", description=__doc__)
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
    from fq_bench.data import DataError

    try:
        return args.func(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
