"""``python -m fq_fairmetrics compare REF.csv CAND.csv [--margin 1.0]``: audit two prediction files.

Each file holds ``sample_id, label, group, prediction`` (``Predictions.save`` writes one; any
framework can). Prints the per-group comparison as Markdown; exit 0 when every group is
non-inferior at the margin, 1 when not, 2 on bad input (one line saying what is wrong).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m fq_fairmetrics",
        description="Group fairness tools on prediction files.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser(
        "compare",
        help="is CAND non-inferior to REF in every group? (exit 0 yes, 1 no, 2 bad input)",
    )
    cmp.add_argument("reference", help="the reference's predictions (.csv or .parquet)")
    cmp.add_argument("candidate", help="the candidate's predictions (.csv or .parquet)")
    cmp.add_argument("--margin", type=float, default=1.0, help="accuracy points (default 1.0)")
    cmp.add_argument("--confidence", type=float, default=0.95, help="interval level (0.95)")
    cmp.add_argument("--resamples", type=int, default=2000, help="test-set resamples (2000)")
    args = parser.parse_args(argv)

    from . import TooFewSamplesWarning, compare
    from ._predictions import Predictions, align

    try:
        ref, cand = align(Predictions.load(args.reference), Predictions.load(args.candidate))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TooFewSamplesWarning)
            result = compare(
                ref.label, ref.group, ref.prediction, cand.prediction, margin=args.margin,
                confidence=args.confidence, resamples=args.resamples,
                reference_name=_name(args.reference), candidate_name=_name(args.candidate),
            )  # fmt: skip
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(result.to_markdown(), end="")
    verdict = "non-inferior in every group" if result.non_inferior else "NOT shown non-inferior"
    print(f"\n{result.candidate_name}: {verdict} at a {args.margin:g}-point margin.")
    return 0 if result.non_inferior else 1


def _name(path: str) -> str:
    from pathlib import Path

    return Path(path).stem


if __name__ == "__main__":
    sys.exit(main())
