"""Per-group cost of uniform post-training quantization: ``python bench/ptq_probe.py --help``."""

import sys

from fq_bench.grid import probe_main

if __name__ == "__main__":
    sys.exit(probe_main())
