"""The fq-data README's example runs as a file and prints what the README says it prints."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "packages" / "fq-data" / "README.md"


def test_readme_example_runs_and_prints_its_documented_output(run_readme_example) -> None:
    out = run_readme_example(README)
    # the README shows the output right after the example, in the first plain ``` block
    documented = re.search(
        r"```python\n.*?```\n\nprints\n\n```\n(.*?)```", README.read_text(), re.S
    )
    assert documented, "README: no 'prints' block after the example"
    assert out == documented.group(1)
    test_line = next(line for line in out.splitlines() if line.startswith("test:"))
    per_type = [int(c) for c in re.findall(r"'\d': (\d+)", test_line)]
    assert len(per_type) == 6 and min(per_type) >= 30  # min_test_per_group=30 holds
