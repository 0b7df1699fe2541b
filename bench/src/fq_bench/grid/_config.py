"""The typed, frozen grid configuration: its fields, their checks, its fingerprints.

The named presets live in :mod:`._presets`, the method and dataset names in :mod:`._names`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._names import (
    DATASETS,
    METHOD_IDS,
    MIXED_METHODS,
    SWEEPABLE,
    TABLE1_METHODS,
    sweep_methods,
)

if TYPE_CHECKING:
    from fq_baq import FairLoss, MixedPrecision


#: Fields that do not change any number (the grid's extent, names, UI).
_NOT_FINGERPRINTED = (
    "preset",
    "methods",
    "seeds",
    "progress",
    "notes",
    "models",
    "datasets",
    "sweeps",
    "budgets",
    "frontier_methods",
)
#: Fields the FP32 checkpoint depends on (so changing the fine-tune epochs reuses it).
FP32_FIELDS: tuple[str, ...] = (
    "image_size",
    "n_images",
    "test_fraction",
    "batch_size",
    "fp32_epochs",
    "lr_fp32",
    "weight_decay",
    "pretrained",
    "weights_dir",
    "data_sources",
    "label_columns",
    "mixed_precision",
    "min_test_per_group",
    "custom_datasets",
    "image_columns",
    "group_columns",
    "variant",
)
#: Fields a calibration depends on.
CALIBRATION_FIELDS: tuple[str, ...] = (*FP32_FIELDS, "calib_batches")


def _fail(name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"{name}={value!r} is invalid; allowed: {allowed}")


def _check_names(name: str, values: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    if not values:
        raise _fail(name, values, "at least one of " + ", ".join(allowed))
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"{name}: unknown name(s) {bad}; valid names: {', '.join(allowed)}")
    if len(set(values)) != len(values):
        raise _fail(name, values, "each name at most once")


def _check_pos_int(name: str, value: Any, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(name, value, f"an int >= {low}")


def _check_palette(name: str, bits: tuple[int, ...], props: tuple[float, ...] | None) -> None:
    """Validate a palette now, so a bad one fails before any training (fq_alloc's own rules)."""
    from fq_alloc import Palette

    try:
        Palette(tuple(bits), tuple(props) if props is not None else (1.0 / len(bits),) * len(bits))
    except (ValueError, TypeError, ZeroDivisionError) as exc:
        raise ValueError(f"{name}: {exc}") from None


def _check_pos_float(name: str, value: Any, *, zero_ok: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero_ok):
        raise _fail(name, value, "a finite number " + (">= 0" if zero_ok else "> 0"))


@dataclass(frozen=True, kw_only=True)
class GridConfig:
    """Everything a grid run depends on. Build one from a preset and override fields.

    Sizes: ``image_size`` in pixels (square), ``n_images`` rows of semi-synthetic data (train +
    test, ``None`` = the generator's default 3000; ignored for real data), ``batch_size`` images.
    Epochs: ``fp32_epochs`` for the FP32 reference, ``epochs`` for QAT and BAQ fine-tunes. Learning
    rates are AdamW's. ``palette_bits``/``palette_props``: the fixed palette of Lin et al., Guo et al.
    and FQ-QAT (paper: 2/4/8 at 0.2/0.4/0.4). ``baq_bits``/``baq_warm_avg_bits``: the palette and
    parameter-weighted average bits of FQ-BAQ's warm-start allocation (``allocate_to_budget``).
    ``sweeps``: ablation sweeps ``((field, (values...)), ...)`` over FQ-BAQ (empty for Table 1);
    values are numbers, or names for :data:`NAME_SWEEPS` (``fair_loss``). With ``budgets``, each
    frontier method a swept field changes also runs once per value at every budget.
    ``fair_loss``: the L_fair objective of the methods that train with it (``gap``: METHOD.md eq. 4,
    the paper's; ``gap-up``, ``worst``, ``lse`` with temperature ``fair_tau``, ``dro`` with step
    ``dro_eta``); ``fair_ema``: momentum of a running per-group loss estimate (0: off), see
    ``fq_baq.BAQConfig``.
    ``budgets``: the frontier's budgets in parameter-weighted average bits per weight; each method
    of ``frontier_methods`` (a subset of :data:`MIXED_METHODS`) runs once per budget, allocated
    with ``allocate_to_budget`` over ``budget_bits`` (FQ-BAQ: warm start there and
    ``target_avg_bits``). ``alloc_cost``: what that budget counts, ``"packed"`` (each weight's
    bits) or ``"container"`` (each layer's INT4/INT8 storage width; ``fq_alloc.allocate_to_budget``'s
    ``cost``). ``min_test_per_group``: semi-synthetic data only, every group gets at
    least this many test images (train rows unchanged). ``bootstrap_resamples``: resamples of each
    cell's stratified bootstrap interval (0 = none).
    ``data_sources``: ``((dataset, source), ...)``; a dataset not listed uses semi-synthetic data.
    ``label_columns``: ``((dataset, column), ...)``: the metadata column holding the class, e.g.
    Fitzpatrick17k's ``label`` (114 conditions), ``nine_partition_label`` or
    ``three_partition_label``; a dataset not listed uses its loader's default (real Fitzpatrick17k:
    ``label``; semi-synthetic Fitzpatrick17k: ``three_partition_label``; ISIC 2019: the diagnosis;
    a custom dataset: ``label``).
    ``custom_datasets``: ``((name, source), ...)``: your own data, read by ``fq_data.load_dataset``
    (a folder or table whose image column holds image paths, or anything ``datasets`` reads); each
    name joins the valid values of ``datasets``. ``image_columns`` / ``group_columns``:
    ``((name, column), ...)`` for those datasets (defaults ``image`` and ``group``); any group
    values work (Guo et al.'s two groups: the largest training group against the rest unless the
    groups are Fitzpatrick types, sexes, or two).
    ``variant``: the semi-synthetic variant (``fq_data.SYNTH_VARIANTS``): ``"shared-cues"`` (the
    default data) or ``"minority-cue"`` (Fitzpatrick types 5-6 carry class-coded rings; only
    semi-synthetic fitzpatrick17k). Part of the data's identity: the FP32, calibration and cell
    fingerprints include it unless it is the default, so cells computed before it existed are
    reused.
    """

    preset: str = "default"
    datasets: tuple[str, ...] = ("fitzpatrick17k",)
    models: tuple[str, ...] = ("resnet18",)
    methods: tuple[str, ...] = TABLE1_METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    image_size: int = 32
    n_images: int | None = 1600
    test_fraction: float = 0.2
    batch_size: int = 64
    fp32_epochs: int = 6
    epochs: int = 2
    lr_fp32: float = 2e-3
    lr: float = 3e-4
    lr_bits: float = 3e-3
    weight_decay: float = 0.01
    lambda_bits: float = 1e-2
    lambda_fair: float = 0.5
    bit_min: int = 2
    bit_max: int = 8
    palette_bits: tuple[int, ...] = (2, 4, 8)
    palette_props: tuple[float, ...] = (0.2, 0.4, 0.4)
    baq_bits: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    baq_warm_avg_bits: float = 4.3
    calib_batches: int = 50
    pretrained: bool = False
    weights_dir: str | None = None
    data_sources: tuple[tuple[str, str], ...] = ()
    label_columns: tuple[tuple[str, str], ...] = ()
    custom_datasets: tuple[tuple[str, str], ...] = ()
    image_columns: tuple[tuple[str, str], ...] = ()
    group_columns: tuple[tuple[str, str], ...] = ()
    fair_loss: FairLoss = "gap"
    fair_tau: float = 0.1
    dro_eta: float = 0.1
    fair_ema: float = 0.0
    sweeps: tuple[tuple[str, tuple[float | str, ...]], ...] = ()
    budgets: tuple[float, ...] = ()
    frontier_methods: tuple[str, ...] = ()
    budget_bits: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    alloc_cost: str = "packed"
    min_test_per_group: int = 0
    bootstrap_resamples: int = 1000
    mixed_precision: MixedPrecision = "no"
    variant: str = "shared-cues"
    cpu: bool = False
    progress: bool = True
    notes: tuple[str, ...] = field(default=())

    @property
    def dataset_names(self) -> tuple[str, ...]:
        """The built-in datasets, then the custom ones: the valid values of ``datasets``."""
        return (*DATASETS, *(name for name, _ in self.custom_datasets))

    def _check_custom(self) -> None:
        names = [n for n, _ in self.custom_datasets]
        for name, source in self.custom_datasets:
            if name in DATASETS or not name.replace("-", "_").isidentifier():
                raise _fail(
                    "custom_datasets",
                    name,
                    "a name like my_data (letters, digits, _ or -) other than "
                    + ", ".join(DATASETS),
                )
            if not isinstance(source, str) or not source:
                raise _fail(f"custom_datasets[{name}]", source, "a non-empty source")
        for field_name in ("custom_datasets", "image_columns", "group_columns"):
            pairs = getattr(self, field_name)
            keys = [k for k, _ in pairs]
            if len(set(keys)) != len(keys):
                raise _fail(field_name, pairs, "at most one entry per dataset")
            if field_name == "custom_datasets":
                continue
            for ds, col in pairs:
                if ds not in names:
                    raise ValueError(
                        f"{field_name}: {ds!r} is not a custom dataset (give it with "
                        f"--dataset {ds}=SOURCE); custom datasets: {names}"
                    )
                if not isinstance(col, str) or not col:
                    raise _fail(f"{field_name}[{ds}]", col, "a non-empty column name")

    def __post_init__(self) -> None:
        self._check_custom()
        _check_names("datasets", self.datasets, self.dataset_names)
        if self.methods or not self.budgets:  # a frontier-only run may leave Table 1 out
            _check_names("methods", self.methods, METHOD_IDS)
        if not self.models or len(set(self.models)) != len(self.models):
            raise _fail("models", self.models, "one or more distinct model names")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise _fail("seeds", self.seeds, "one or more distinct ints >= 0")
        for s in self.seeds:
            _check_pos_int("seeds", s, low=0)
        for name in ("image_size", "batch_size", "fp32_epochs", "epochs", "calib_batches"):
            _check_pos_int(name, getattr(self, name))
        if self.image_size < 8:
            raise _fail("image_size", self.image_size, "an int >= 8 (pixels)")
        if self.n_images is not None:
            _check_pos_int("n_images", self.n_images, low=20)
        for name in ("lr_fp32", "lr"):
            _check_pos_float(name, getattr(self, name))
        for name in ("lr_bits", "weight_decay", "lambda_bits", "lambda_fair"):
            _check_pos_float(name, getattr(self, name), zero_ok=True)
        self._check_objective(self.fair_loss, self.fair_ema)
        if self.alloc_cost not in ("packed", "container"):
            raise _fail("alloc_cost", self.alloc_cost, "'packed' or 'container'")
        if not 2 <= self.bit_min <= self.bit_max <= 16:
            raise _fail(
                "bit_min/bit_max", (self.bit_min, self.bit_max), "2 <= bit_min <= bit_max <= 16"
            )
        if len(self.palette_bits) != len(self.palette_props):
            raise _fail("palette_props", self.palette_props, "one proportion per palette bit-width")
        # fq_alloc's rules (it loads torch); the defaults are valid (tested) and skip the check
        if not self._at_defaults(palette_bits=self.palette_bits, palette_props=self.palette_props):
            _check_palette("palette_bits/palette_props", self.palette_bits, self.palette_props)
        if not self._at_defaults(baq_bits=self.baq_bits):
            _check_palette("baq_bits", self.baq_bits, None)
        if not self._at_defaults(budget_bits=self.budget_bits):
            _check_palette("budget_bits", self.budget_bits, None)
        _check_pos_int("min_test_per_group", self.min_test_per_group, low=0)
        self._check_variant()
        _check_pos_int("bootstrap_resamples", self.bootstrap_resamples, low=0)
        self._check_frontier()
        if not (isinstance(self.test_fraction, float) and 0.05 <= self.test_fraction <= 0.6):
            raise _fail("test_fraction", self.test_fraction, "a float in [0.05, 0.6]")
        if not min(self.baq_bits) <= self.baq_warm_avg_bits <= max(self.baq_bits):
            raise _fail("baq_warm_avg_bits", self.baq_warm_avg_bits, f"within {self.baq_bits}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise _fail("mixed_precision", self.mixed_precision, "'no', 'fp16', 'bf16'")
        if self.weights_dir is not None and not self.pretrained:
            raise _fail(
                "weights_dir",
                self.weights_dir,
                "None unless pretrained=True (the folder holds the ImageNet weights it loads)",
            )
        for ds, _src in self.data_sources:
            if ds not in DATASETS:
                raise ValueError(
                    f"data_sources: unknown dataset {ds!r}; valid names: {', '.join(DATASETS)}"
                )
        for field_name, pairs in (
            ("data_sources", self.data_sources),
            ("label_columns", self.label_columns),
        ):
            names = [ds for ds, _ in pairs]
            if len(set(names)) != len(names):
                raise _fail(field_name, pairs, "at most one entry per dataset")
        for ds, col in self.label_columns:
            if ds not in self.dataset_names:
                raise ValueError(
                    f"label_columns: unknown dataset {ds!r}; valid names: "
                    f"{', '.join(self.dataset_names)}"
                )
            if not isinstance(col, str) or not col:
                raise _fail(f"label_columns[{ds}]", col, "a non-empty column name")
        for name, values in self.sweeps:
            if name not in SWEEPABLE:
                raise ValueError(
                    f"sweeps: unknown field {name!r}; valid names: {', '.join(SWEEPABLE)}"
                )
            if not values:
                raise _fail(f"sweeps[{name}]", values, "one or more values")
            for v in values:
                if name == "fair_loss":
                    self._check_objective(v, self.fair_ema, where=f"sweeps[{name}]")
                elif name == "fair_ema":
                    self._check_objective(self.fair_loss, v, where=f"sweeps[{name}]")
                else:
                    _check_pos_float(f"sweeps[{name}]", v, zero_ok=True)
        if self.sweeps:
            allowed = sweep_methods(tuple(name for name, _ in self.sweeps))
            idle = [m for m in self.methods if m not in allowed]
            if idle:
                raise ValueError(
                    f"methods={list(self.methods)} with sweeps over "
                    f"{[name for name, _ in self.sweeps]}: {idle} do not use every swept field "
                    f"(each value would recompute the same cell); allowed: {', '.join(allowed)}"
                )

    def _check_variant(self) -> None:
        """The variant's name, and (not the default) that every dataset is semi-synthetic
        fitzpatrick17k: the planted cue lives on Fitzpatrick skin types, in generated pixels."""
        if self._at_defaults(variant=self.variant):
            return  # the default needs no fq_data import (``--help`` answers at once)
        from fq_data import SYNTH_VARIANTS

        if self.variant not in SYNTH_VARIANTS:
            raise _fail("variant", self.variant, ", ".join(repr(v) for v in SYNTH_VARIANTS))
        bad = [
            d
            for d in self.datasets
            if d != "fitzpatrick17k" or self.data_source(d) != "semisynthetic"
        ]
        if bad:
            raise ValueError(
                f"variant={self.variant!r} plants a cue in semi-synthetic fitzpatrick17k pixels; "
                f"datasets {bad} are not (run them with variant='shared-cues')"
            )

    def _at_defaults(self, **values: Any) -> bool:
        """True when every ``field=value`` given is that field's default."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return all(defaults[name] == value for name, value in values.items())

    def _check_objective(self, fair_loss: Any, fair_ema: Any, where: str = "") -> None:
        """fq_baq's own rules for the objective's fields, now rather than in the first cell.

        The fields' defaults (fq_baq's own, tested) skip the check, so that building the presets
        at import does not load fq_baq and torch (``run_grid.py --help`` answers at once)."""
        if self._at_defaults(
            fair_loss=fair_loss, fair_tau=self.fair_tau, dro_eta=self.dro_eta, fair_ema=fair_ema
        ):
            return
        from fq_baq import BAQConfig

        try:
            BAQConfig(
                fair_loss=fair_loss, fair_tau=self.fair_tau, dro_eta=self.dro_eta, fair_ema=fair_ema
            )
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{where}: {exc}" if where else str(exc)) from None

    def _check_frontier(self) -> None:
        bad = [m for m in self.frontier_methods if m not in MIXED_METHODS]
        if bad:
            raise ValueError(
                f"frontier_methods: {bad} take no budget; allowed: {', '.join(MIXED_METHODS)}"
            )
        if len(set(self.frontier_methods)) != len(self.frontier_methods):
            raise _fail("frontier_methods", self.frontier_methods, "each name at most once")
        if len(set(self.budgets)) != len(self.budgets):
            raise _fail("budgets", self.budgets, "distinct values")
        if bool(self.budgets) != bool(self.frontier_methods):
            raise _fail(
                "budgets/frontier_methods",
                (self.budgets, self.frontier_methods),
                "both empty (no frontier) or both given",
            )
        low = max(min(self.budget_bits), self.bit_min if "fq-baq" in self.frontier_methods else 0)
        high = max(self.budget_bits)
        if "fq-baq" in self.frontier_methods:
            high = min(high, self.bit_max)
        for b in self.budgets:
            _check_pos_float("budgets", b)
            if not low <= b <= high:
                raise _fail("budgets", self.budgets, f"values in [{low}, {high}] bits per weight")

    def replace(self, **changes: Any) -> GridConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def data_source(self, dataset: str) -> str:
        """``"semisynthetic"`` or the source given for ``dataset`` (a custom one's source)."""
        custom = dict(self.custom_datasets)
        if dataset in custom:
            return custom[dataset]
        return dict(self.data_sources).get(dataset, "semisynthetic")

    def is_custom(self, dataset: str) -> bool:
        """True for a dataset given with ``custom_datasets`` (``--dataset NAME=SOURCE``)."""
        return dataset in dict(self.custom_datasets)

    def custom_columns(self, dataset: str) -> dict[str, str]:
        """``fq_data.load_dataset``'s column arguments for a custom dataset."""
        return {
            "image_col": dict(self.image_columns).get(dataset, "image"),
            "label_col": dict(self.label_columns).get(dataset, "label"),
            "group_col": dict(self.group_columns).get(dataset, "group"),
        }

    def label_column(self, dataset: str) -> str | None:
        """The class column given for ``dataset``, or ``None`` for the loader's default."""
        return dict(self.label_columns).get(dataset)

    def fingerprint(self, fields: tuple[str, ...] | None = None) -> str:
        """Hash of the fields that change a cell's numbers (default: all but the grid's extent,
        the preset name and UI switches); ``fields`` restricts it (e.g. :data:`FP32_FIELDS`).

        A cell or artifact written under another fingerprint is stale and gets recomputed.
        """
        d = dataclasses.asdict(self)
        if fields is None:
            for k in _NOT_FINGERPRINTED:
                d.pop(k)
        else:
            d = {k: d[k] for k in fields}
        # added later: absent = default keeps results computed before them valid
        if not d.get("label_columns"):
            d.pop("label_columns", None)
        if not d.get("min_test_per_group"):
            d.pop("min_test_per_group", None)
        if d.get("alloc_cost", "packed") == "packed":
            d.pop("alloc_cost", None)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in ("fair_loss", "fair_tau", "dro_eta", "fair_ema"):
            if d.get(name, defaults[name]) == defaults[name]:
                d.pop(name, None)
        for k in ("custom_datasets", "image_columns", "group_columns"):
            if not d.get(k):
                d.pop(k, None)
        if d.get("variant", defaults["variant"]) == defaults["variant"]:
            d.pop("variant", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
