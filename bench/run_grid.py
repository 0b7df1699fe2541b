"""Reproduce the FairQuant paper's Table 1 grid: ``python bench/run_grid.py --help``."""

import sys

from fq_bench.grid import main

if __name__ == "__main__":
    sys.exit(main())
