"""Cell files written by earlier versions stay valid: the fingerprints they carry are pinned.

A finished cell, FP32 checkpoint or calibration is reused only when its stored fingerprint equals
the one the current code computes for the same config. The values below are what the code wrote
before the runner, report and config were split into modules (commit ed713ac, computed with that
code); a refactor that changes any of them would silently recompute every user's results, so a
deliberate change (``CELL_VERSION``) must update them here and say so.
"""

from __future__ import annotations

import pytest
from fq_bench.grid import PRESETS
from fq_bench.grid._cell_run import cell_fingerprint
from fq_bench.grid._config import CALIBRATION_FIELDS, FP32_FIELDS

#: preset -> (config, FP32 checkpoint, calibration, cell of its first model) fingerprints.
PINNED = {
    "ablations": ("276d0fe271fc015d", "3e0cfd6ba1a5f564", "6fdffe566cb3b3de", "952cddbfaa0f4146"),
    "default": ("c122de03c4d5f894", "ce7a62f2bfd1db43", "a3da91b769e90a2c", "6e2953ad3e812700"),
    "paper": ("fea92f9857ee608a", "40f9daec15e7ec88", "1c2abdf82658ff0c", "21e72c15673b0238"),
    "smoke": ("d0d81b5a17793d8c", "2abfe6f9cc7aaf19", "a3dee8cc45754b40", "702e5ef0138e342d"),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_preset_fingerprints_are_those_earlier_cell_files_carry(name: str) -> None:
    config = PRESETS[name]
    got = (
        config.fingerprint(),
        config.fingerprint(FP32_FIELDS),
        config.fingerprint(CALIBRATION_FIELDS),
        cell_fingerprint(config, config.models[0]),
    )
    assert got == PINNED[name]


def test_a_changed_field_changes_the_fingerprint() -> None:
    """The pins are not vacuous: a field that changes the numbers changes the fingerprint."""
    smoke = PRESETS["smoke"]
    assert smoke.replace(lambda_fair=0.123).fingerprint() != PINNED["smoke"][0]
    assert smoke.replace(fp32_epochs=2).fingerprint(FP32_FIELDS) != PINNED["smoke"][1]
