"""The root README's pipeline runs as a file and prints what the README shows, also on a user's own
folder of images (documentation that rots is worse than none). The package READMEs' examples
run from their built wheels in tests/test_wheels.py."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"-?\d+\.\d+|-?\d+")


def documented_output(readme: Path) -> str:
    found = re.search(r"```python\n.*?```\n\nprints\n\n```\n(.*?)```", readme.read_text(), re.S)
    assert found, f"{readme}: no 'prints' block after the first python example"
    return found.group(1)


def assert_same_up_to(out: str, want: str, rel: float) -> None:
    """Same text; each number within ``rel`` of the documented one (relative, or absolute
    below 1): a seeded training run on another CPU may round differently in its last digits."""
    assert NUMBER.sub("#", out) == NUMBER.sub("#", want), f"printed:\n{out}\ndocumented:\n{want}"
    for got, exp in zip(NUMBER.findall(out), NUMBER.findall(want), strict=True):
        assert abs(float(got) - float(exp)) <= rel * max(1.0, abs(float(exp))), (got, exp, out)


def test_readme_compose_example_prints_its_documented_output(run_readme_example) -> None:
    readme = ROOT / "README.md"
    out = run_readme_example(readme)
    # measured with one thread here; another CPU's float rounding may move a few predictions
    assert_same_up_to(out, documented_output(readme), rel=0.06)
    fp32, quant = (
        float(re.search(rf"{n}: worst-group acc (\S+),", out)[1]) for n in ("FP32", "2/4/8")
    )
    assert fp32 > 0.5 and quant > 0.5  # learns beyond one class (chance ~ 0.33, worst group lower)


def _own_folder(root: Path) -> None:
    """A user's own data: ``images/*.png`` and ``labels.csv`` with string labels and skin tones."""
    import numpy as np
    from PIL import Image

    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["file,dx,skin"]
    for i in range(150):
        dx, skin = ("nevus", "melanoma", "keratosis")[i % 3], ("light", "medium", "dark")[i % 5 % 3]
        base = np.full((32, 32, 3), (60, 110, 170)[("light", "medium", "dark").index(skin)] + 40)
        base[8:24, 8:24] = (40, 90, 200)[("nevus", "melanoma", "keratosis").index(dx)]
        noisy = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(root / "images" / f"{i:04d}.png")
        rows.append(f"images/{i:04d}.png,{dx},{skin}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")


def test_own_folder_goes_through_the_readme_pipeline(run_readme_example, tmp_path) -> None:
    readme = ROOT / "README.md"
    own = next(b for b in re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
               if "load_dataset(" in b)  # fmt: skip
    _own_folder(tmp_path / "my_data")  # the example runs in tmp_path

    def swap_data(code: str) -> str:
        line = next(x for x in code.splitlines() if x.startswith("dd = load_semisynthetic("))
        return code.replace(line, own)

    out = run_readme_example(readme, edit=swap_data)
    lines = out.splitlines()
    assert [NUMBER.sub("#", x) for x in lines] == [
        NUMBER.sub("#", x) for x in documented_output(readme).splitlines()
    ]
    assert lines[0].startswith("budget: 5.20 bits per channel")
