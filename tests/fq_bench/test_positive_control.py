"""The positive control (issue 24 section 2): the grid's ``variant`` field, its keys, and a cut-down
``--preset positive-control`` run whose report carries the precondition and the cue types' rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fq_bench.grid import PRESETS, build_report, run_grid
from fq_bench.grid._cell_run import cell_fingerprint
from fq_bench.grid._config import CALIBRATION_FIELDS, FP32_FIELDS
from fq_bench.grid._positive_control import PRECONDITION_FILE, diff_in_drops, set_difference


def _keys(config):  # type: ignore[no-untyped-def]
    return (
        config.fingerprint(),
        config.fingerprint(FP32_FIELDS),
        config.fingerprint(CALIBRATION_FIELDS),
        cell_fingerprint(config, config.models[0]),
    )


def test_the_variant_enters_every_key_only_when_not_the_default() -> None:
    default = PRESETS["default"]
    assert _keys(default.replace(variant="shared-cues")) == _keys(default)
    planted = _keys(default.replace(variant="minority-cue"))
    assert all(a != b for a, b in zip(planted, _keys(default), strict=True))


def test_a_bad_variant_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="variant='rings'.*shared-cues"):
        PRESETS["default"].replace(variant="rings")
    with pytest.raises(ValueError, match="isic2019"):
        PRESETS["default"].replace(variant="minority-cue", datasets=("isic2019",))


def test_set_difference_against_hand_computed_accuracies() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(4), [30, 20, 25, 15])
    a, b = rng.random((3, 90)) < 0.7, rng.random((3, 90)) < 0.6
    pd = set_difference(a, b, groups, [2, 3])
    m = np.isin(groups, [2, 3])
    want = [a[s, m].mean() - b[s, m].mean() for s in range(3)]
    np.testing.assert_allclose(pd.values, want)
    assert pd.image_low <= pd.mean <= pd.image_high  # the resamples centre on the seed mean
    same = set_difference(a, a, groups, [2, 3])
    assert same.mean == 0 and same.image_low == same.image_high == 0
    dd = diff_in_drops(a, b, groups, [2, 3], [0, 1])
    r = np.isin(groups, [0, 1])
    np.testing.assert_allclose(
        dd.values, [want[s] - (a[s, r].mean() - b[s, r].mean()) for s in range(3)]
    )


def test_a_cut_down_positive_control_run(tmp_path: Path) -> None:
    """Seconds on CPU: a tiny CNN at 16 px; the report holds the precondition line first, the
    2x2 rows of types 5, 6 and 5-6 pooled, the uniform rows per group; the variant recomputes."""
    config = PRESETS["positive-control"].replace(
        models=("tiny_cnn",), image_size=16, n_images=300, min_test_per_group=40,
        fp32_epochs=1, epochs=1, seeds=(0, 1), budgets=(2.5,), methods=("fp32", "u2"),
        bootstrap_resamples=0, calib_batches=2, batch_size=32, progress=False,
    )  # fmt: skip
    out = tmp_path / "pc"
    run_grid(config, out)
    pre = json.loads((out / PRECONDITION_FILE).read_text())
    (run,) = pre["runs"]
    assert set(run["types"]) == {5, 6} and len(run["with_rings"]) == 2
    report = build_report(out, plots=False)
    text = (out / "positive_control.md").read_text()
    assert text.startswith("PRECONDITION: ")
    assert report.text().splitlines()[2].startswith("PRECONDITION: ")
    for contrast in ("fq-alloc − blind", "fq-qat − blind-fair", "blind-fair − blind"):
        for group in ("worst group", "type 5", "type 6", "types 5-6 pooled"):
            assert f"| 2.5 | {contrast.split(' ')[0]}" not in text  # rows name the effect first
            assert f"({contrast}) | {group} |" in text
    for group in ("type 1", "type 5", "type 6", "types 5-6 pooled", "cue types' drop"):
        assert f"| U2 | {group}" in text
    assert not run_grid(config, out).computed  # the variant's own cells are reused
    # the default variant's FP32 cells are other cells: recomputed, not reused
    again = run_grid(
        config.replace(variant="shared-cues", methods=("fp32",), budgets=(), frontier_methods=()),
        out,
    )
    assert len(again.computed) == 2 and not again.skipped
