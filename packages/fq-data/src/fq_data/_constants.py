"""Plain constants of the data path, importable without ``datasets`` or torch (the CLI reads them
before argparse runs)."""

from __future__ import annotations

SMALL_GROUP_N = 30
"""``inspect`` flags a group with fewer test images than this; the same threshold as
``fq_fairmetrics.MIN_GROUP_N`` (fq-data depends on no other toolkit package; a test keeps the two
equal)."""

#: The test fraction of every loader's stratified split when none is given (``load_dataset``,
#: ``load_fitzpatrick17k``, ``load_isic2019``, ``python -m fq_data inspect``). The grid's presets
#: may choose another (its semi-synthetic default uses 0.4): ``inspect --test-fraction`` shows it.
DEFAULT_TEST_FRACTION = 0.2
