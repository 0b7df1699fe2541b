"""The root README's pipeline example must run as written (documentation that rots is worse than none)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_compose_example_runs(run_readme_example) -> None:
    out = run_readme_example(ROOT / "README.md")
    assert re.search(r"worst-group acc \d\.\d{3}", out)
    assert re.search(r"avg bits [2-8]\.\d\d", out)
