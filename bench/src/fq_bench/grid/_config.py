"""Typed, frozen grid configurations and the three presets (``default``, ``paper``, ``ablations``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fq_baq import FairLoss, MixedPrecision

#: Method ids in Table 1 order, with the label the table prints.
#: This is the one place that defines the order of methods in every table, plot and cell list.
METHOD_LABELS: dict[str, str] = {
    "fp32": "FP32",
    "u8": "U8",
    "u4": "U4",
    "u3": "U3 (extra)",
    "u2": "U2 (extra)",
    "fp32-ft": "FP32 + FT (control)",
    "blind": "Group-blind MP",
    "blind-fair": "Group-blind MP + L_fair",
    "fq-alloc": "FQ alloc. (no L_fair)",
    "lin": "Lin et al.",
    "guo": "Guo et al.",
    "fq-qat": "FQ-QAT",
    "fq-baq": "FQ-BAQ",
}
METHOD_IDS: tuple[str, ...] = tuple(METHOD_LABELS)
#: Table 1's seven rows (``u3``/``u2`` are extra, lower uniform points; ``fp32-ft`` an extra
#: control: FP32 trained as long again as the fine-tunes, unquantized, without L_fair; ``blind``,
#: ``blind-fair`` and ``fq-alloc`` are the frontier's controls, see :data:`MIXED_METHODS`).
TABLE1_METHODS: tuple[str, ...] = ("fp32", "u8", "u4", "lin", "guo", "fq-qat", "fq-baq")
#: Uniform post-training rows and their bit-width (per channel, no training).
UNIFORM_BITS: dict[str, int] = {"u8": 8, "u4": 4, "u3": 3, "u2": 2}
#: Mixed-precision methods: they take a budget (parameter-weighted average bits per weight) on
#: the frontier, and Table 1's fixed palette otherwise. ``blind``: importance of the pooled loss
#: (all samples one group), QAT without L_fair; ``blind-fair``: the same bits, QAT with L_fair;
#: ``fq-alloc``: FairQuant's balanced allocation, QAT without L_fair; ``fq-qat``: both.
MIXED_METHODS: tuple[str, ...] = (
    "blind",
    "blind-fair",
    "fq-alloc",
    "lin",
    "guo",
    "fq-qat",
    "fq-baq",
)
#: The 2x2 design that separates FairQuant's two ingredients: (allocation, fairness term).
TWO_BY_TWO: dict[str, tuple[str, str]] = {
    "blind": ("blind", "off"),
    "blind-fair": ("blind", "on"),
    "fq-alloc": ("balanced", "off"),
    "fq-qat": ("balanced", "on"),
}
#: The frontier's control: every other mixed method is compared with it at the same budget.
CONTROL_METHOD = "blind"

DATASET_LABELS: dict[str, str] = {"fitzpatrick17k": "FitzP.", "isic2019": "ISIC"}
DATASETS: tuple[str, ...] = tuple(DATASET_LABELS)

#: The paper's four backbones (timm names) and their table labels; other timm names are allowed.
MODEL_LABELS: dict[str, str] = {
    "resnet18": "ResNet18",
    "resnet50": "ResNet50",
    "deit_tiny_patch16_224": "DeiT-Tiny",
    "tiny_vit_5m_224": "TinyViT",
    "tiny_cnn": "TinyCNN",
}
PAPER_MODELS: tuple[str, ...] = ("resnet18", "resnet50", "deit_tiny_patch16_224", "tiny_vit_5m_224")

#: BAQConfig fields an ablation may sweep (CLI name -> meaning).
SWEEPABLE: dict[str, str] = {
    "lambda_bits": "weight of the bit-rate regularizer L_bits",
    "lambda_fair": "weight of the fairness loss L_fair",
    "lr_bits": "learning rate of the bit logits theta",
    "fair_loss": "the fairness objective L_fair (gap, gap-up, worst, lse, dro)",
    "fair_ema": "momentum of the running per-group loss estimate of L_fair",
}
#: Sweepable fields whose values are names (the others take numbers).
NAME_SWEEPS: tuple[str, ...] = ("fair_loss",)
#: The methods that train with L_fair (lambda_fair > 0), so its objective changes their numbers.
FAIR_METHODS: tuple[str, ...] = ("blind-fair", "fq-qat", "fq-baq")

#: The methods whose numbers a swept field changes (the others would recompute the same cell
#: once per swept value): lambda_fair enters FQ-QAT and FQ-BAQ; lambda_bits and lr_bits only BAQ.
SWEEP_METHODS: dict[str, tuple[str, ...]] = {
    "lambda_bits": ("fq-baq",),
    "lambda_fair": ("fq-qat", "fq-baq"),
    "lr_bits": ("fq-baq",),
    "fair_loss": FAIR_METHODS,
    "fair_ema": FAIR_METHODS,
}


def parse_swept_value(field_name: str, text: str) -> float | str:
    """A swept value as written in a variant or on the command line: the name itself for the
    fields of :data:`NAME_SWEEPS`, a float otherwise (``ValueError`` when it is none)."""
    return text if field_name in NAME_SWEEPS else float(text)


def same_swept_value(a: float | str, b: float | str) -> bool:
    """Whether a swept value ``a`` is the run's own value ``b`` (the sweep's reference point).

    One rule for the ablation table's ``(ref)`` mark and for running that point as the plain cell.
    Names (:data:`NAME_SWEEPS`) are the same when equal.
    """
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-15)


def sweep_methods(fields: tuple[str, ...]) -> tuple[str, ...]:
    """The methods every one of ``fields`` changes, in Table 1 order."""
    return tuple(m for m in METHOD_IDS if all(m in SWEEP_METHODS[f] for f in fields))


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
    ``target_avg_bits``). ``min_test_per_group``: semi-synthetic data only, every group gets at
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
    min_test_per_group: int = 0
    bootstrap_resamples: int = 1000
    mixed_precision: MixedPrecision = "no"
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
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in ("fair_loss", "fair_tau", "dro_eta", "fair_ema"):
            if d.get(name, defaults[name]) == defaults[name]:
                d.pop(name, None)
        for k in ("custom_datasets", "image_columns", "group_columns"):
            if not d.get(k):
                d.pop(k, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The frontier's methods in the default run: the 2x2 design (``--preset frontier`` adds Lin et
#: al., Guo et al. and FQ-BAQ; the default must finish in 10 minutes on a 2-core CPU).
DEFAULT_FRONTIER: tuple[str, ...] = ("blind", "blind-fair", "fq-alloc", "fq-qat")

DEFAULT = GridConfig(
    calib_batches=10,
    test_fraction=0.4,
    min_test_per_group=150,
    methods=(*TABLE1_METHODS[:3], "u3", "u2", *TABLE1_METHODS[3:]),
    budgets=(2.5, 3.0, 4.0),
    frontier_methods=DEFAULT_FRONTIER,
    notes=(
        "Default run: semi-synthetic Fitzpatrick17k-like data (real metadata rows, generated "
        "pixels), timm resnet18 from scratch at 32 px, short schedules; the numbers show the "
        "method's mechanics on CPU, not the paper's values. U3 and U2 (extra) are lower uniform "
        "points: per-channel U4 barely hurts this small from-scratch model (`uv run python "
        "bench/ptq_probe.py` prints the cost of each bit-width per group, and bench/README.md "
        "why). Every skin type has at least 150 test images (the rarer types are topped up with "
        "generated images of their own real metadata rows; the training set is unchanged).",
    ),
)

PAPER = GridConfig(
    preset="paper",
    datasets=DATASETS,
    models=PAPER_MODELS,
    seeds=(0, 1, 2),
    image_size=224,
    n_images=None,
    batch_size=128,
    fp32_epochs=200,
    epochs=10,
    lr_fp32=1e-4,
    lr=3e-5,
    calib_batches=50,
    pretrained=True,
    budgets=(3.0, 4.0, 5.0, 6.0),
    frontier_methods=("blind", "blind-fair", "fq-alloc", "lin", "guo", "fq-qat", "fq-baq"),
    notes=(
        "Paper protocol (METHOD.md section 9): ImageNet-pretrained backbones, 224 px, real images; "
        "the Weights and Data lines above say what this run actually used. The paper fine-tunes "
        "the ViTs for 20 FP32 epochs, the ResNets for 200: run the ViTs as a second invocation "
        "into the same --out with --models deit_tiny_patch16_224 tiny_vit_5m_224 --fp32-epochs 20. "
        "The frontier (3, 4, 5 and 6 bits) is an addition to the paper's single operating points.",
    ),
)

FRONTIER = DEFAULT.replace(
    preset="frontier",
    methods=("fp32", "u8", "u4", "u3", "u2", "fp32-ft"),
    budgets=(2.25, 2.5, 2.75, 3.0, 3.5, 4.0, 5.0, 6.0),
    frontier_methods=("blind", "blind-fair", "fq-alloc", "lin", "guo", "fq-qat", "fq-baq"),
    seeds=(0, 1, 2, 3, 4),
    notes=(
        "Frontier preset: the default's data and schedules, every mixed method at budgets 2.25 to "
        "6 bits per weight over 5 seeds, with the uniform rows and the FP32 + FT control (about "
        "ten times the default's cells).",
    ),
)

ABLATIONS = GridConfig(
    preset="ablations",
    datasets=DATASETS,
    models=("resnet18",),
    methods=("fq-baq",),
    seeds=(0, 1, 2, 3, 4),
    calib_batches=10,
    sweeps=(
        ("lambda_bits", (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)),
        ("lambda_fair", (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)),
        ("lr_bits", (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)),
    ),
    notes=(
        "Ablations (Fig. 2): FQ-BAQ with one hyper-parameter swept at a time (lambda_bits, "
        "lambda_fair, the bit-logit lr), the others at the run's values (the `ref` rows); "
        "mean, sample std and 95% t-interval over seeds in ablation.md and ablation_<dataset>.png.",
    ),
)

SMOKE = DEFAULT.replace(
    preset="smoke",
    models=("tiny_cnn",),
    methods=("fp32", "u4", "fq-qat"),
    seeds=(0,),
    image_size=16,
    n_images=120,
    batch_size=32,
    fp32_epochs=1,
    epochs=1,
    calib_batches=2,
    budgets=(),
    frontier_methods=(),
    min_test_per_group=0,
    bootstrap_resamples=100,
    notes=(
        "Smoke preset: a two-conv CNN on 120 semi-synthetic images at 16 px, one epoch each; it "
        "checks that an install runs end to end in seconds. Its numbers mean nothing.",
    ),
)

PRESETS: dict[str, GridConfig] = {
    "default": DEFAULT,
    "smoke": SMOKE,
    "paper": PAPER,
    "frontier": FRONTIER,
    "ablations": ABLATIONS,
}
