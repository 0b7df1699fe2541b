"""The notes a run prints under its tables and saves in ``config.json``, derived from its config.

A preset's notes describe the preset (the default's: semi-synthetic data, resnet18, 32 px, at
least 150 test images per skin type). They are kept only while the run's config is the preset's
in every field they could speak of; any other run gets a line written from its own fields
instead, so no note is false for the run it is printed under. Data read from a source also gets
the ``python -m fq_data inspect`` command that shows the very split the grid uses (the grid's
test fraction, e.g. the presets' 0.4, is not ``fq_data.DEFAULT_TEST_FRACTION``).
"""

from __future__ import annotations

import dataclasses
import shlex

from ._config import GridConfig
from ._names import DATASET_LABELS

#: Fields no preset note speaks of: a run that changes only these keeps its preset's notes.
_UI_FIELDS = ("preset", "notes", "progress", "cpu", "mixed_precision", "bootstrap_resamples")
#: Per preset, further fields its notes leave to the report's Data and Weights lines.
_FREE_FIELDS: dict[str, tuple[str, ...]] = {
    "paper": ("data_sources", "label_columns", "weights_dir"),
}


def preset_notes_hold(config: GridConfig) -> bool:
    """Whether ``config`` is its preset (``config.preset``) in every field the preset's notes
    could describe (all but :data:`_UI_FIELDS` and the preset's :data:`_FREE_FIELDS`)."""
    from ._presets import PRESETS

    preset = PRESETS.get(config.preset)
    if preset is None:
        return False
    free = {*_UI_FIELDS, *_FREE_FIELDS.get(config.preset, ())}
    return all(
        getattr(config, f.name) == getattr(preset, f.name)
        for f in dataclasses.fields(config)
        if f.name not in free
    )


def _data_phrase(config: GridConfig, dataset: str) -> str:
    label = DATASET_LABELS.get(dataset, dataset)
    source = config.data_source(dataset)
    if source == "semisynthetic":
        text = (
            f"semi-synthetic {label} data (real metadata rows, generated pixels; "
            f"{config.n_images or 3000} rows)"
        )
        if config.min_test_per_group:
            text += f", every group with at least {config.min_test_per_group} test images"
        return text
    if config.is_custom(dataset):
        return f"your data {dataset!r} from {source}"
    return f"real {label} images from {source}"


def describe_run(config: GridConfig) -> str:
    """One line saying what this run is, from its fields alone: data, models and their start,
    input size, schedules, seeds and test split."""
    data = "; ".join(_data_phrase(config, d) for d in config.datasets)
    if not config.pretrained:
        start = "from random initialization"
    elif config.weights_dir:
        start = f"ImageNet-pretrained (weights from {config.weights_dir})"
    else:
        start = "ImageNet-pretrained (timm's hub weights)"
    seeds = ", ".join(str(s) for s in config.seeds)
    return (
        f"This run: {data}; {', '.join(config.models)} {start} at {config.image_size} px; "
        f"{config.fp32_epochs} FP32 and {config.epochs} fine-tune epoch(s); seed(s) {seeds}; "
        f"{config.test_fraction:g} of each label x group stratum held out for testing (split "
        "seed 0)."
    )


def inspect_command(config: GridConfig, dataset: str) -> str | None:
    """The ``python -m fq_data inspect`` command showing the split the grid uses for ``dataset``
    (its source, columns, the split seed 0 and the run's test fraction), or ``None`` for
    semi-synthetic data (``inspect`` cannot set its rows or test top-up)."""
    source = config.data_source(dataset)
    if source == "semisynthetic":
        return None
    if config.is_custom(dataset):
        cols = config.custom_columns(dataset)
        args = [
            "custom",
            source,
            "--image-col",
            cols["image_col"],
            "--label-col",
            cols["label_col"],
            "--group-col",
            cols["group_col"],
        ]
    else:
        args = [dataset, source]
        label = config.label_column(dataset)
        if dataset == "fitzpatrick17k":
            label = label or "label"
        if label is not None:
            args += ["--label-col", label]
    args += ["--test-fraction", f"{config.test_fraction:g}"]
    return "python -m fq_data inspect " + " ".join(shlex.quote(a) for a in args)


def run_notes(config: GridConfig) -> tuple[str, ...]:
    """The notes of this run: the preset's while :func:`preset_notes_hold`, else
    :func:`describe_run`'s line; notes the caller set itself (not the preset's) as given; then,
    per dataset read from a source, the ``fq_data inspect`` command of its split."""
    from ._presets import PRESETS

    preset = PRESETS.get(config.preset)
    own = preset is None or config.notes != preset.notes
    notes = list(config.notes) if own or preset_notes_hold(config) else [describe_run(config)]
    from fq_data import DEFAULT_TEST_FRACTION

    default = (
        ""
        if config.test_fraction == DEFAULT_TEST_FRACTION
        else f"; fq_data's own default is {DEFAULT_TEST_FRACTION:g}"
    )
    for d in config.datasets:
        cmd = inspect_command(config, d)
        if cmd is not None:
            notes.append(
                f"Split of {d}: {config.test_fraction:g} of each label x group stratum is test "
                f"(this run's test fraction{default}); `{cmd}` shows this split."
            )
    return tuple(notes)
