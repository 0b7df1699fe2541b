"""``python -m fq_bench COMMAND``: ``compress`` (see ``python -m fq_bench compress --help``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

_COMMANDS = ("compress",)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the command named first in ``argv``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in _COMMANDS:
        print(
            f"usage: python -m fq_bench {{{','.join(_COMMANDS)}}} ...; "
            "try python -m fq_bench compress --help",
            file=sys.stderr,
        )
        return 2
    from fq_bench.compress import main as compress_main

    return compress_main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
