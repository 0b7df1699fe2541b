"""The grid's vocabulary: method, dataset and model ids, their table labels and order, and the
fields an ablation may sweep with the methods each one changes."""

from __future__ import annotations

import math

#: Method ids in Table 1 order, with the label the table prints.
#: This is the one place that defines the order of methods in every table, plot and cell list.
METHOD_LABELS: dict[str, str] = {
    "fp32": "FP32",
    "u8": "U8",
    "u7": "U7 (extra)",
    "u6": "U6 (extra)",
    "u5": "U5 (extra)",
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
#: Table 1's seven rows (``u7``..``u5`` and ``u3``/``u2`` are extra uniform points; ``fp32-ft`` an extra
#: control: FP32 trained as long again as the fine-tunes, unquantized, without L_fair; ``blind``,
#: ``blind-fair`` and ``fq-alloc`` are the frontier's controls, see :data:`MIXED_METHODS`).
TABLE1_METHODS: tuple[str, ...] = ("fp32", "u8", "u4", "lin", "guo", "fq-qat", "fq-baq")
#: Uniform post-training rows and their bit-width (per channel, no training).
UNIFORM_BITS: dict[str, int] = {"u8": 8, "u7": 7, "u6": 6, "u5": 5, "u4": 4, "u3": 3, "u2": 2}
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


#: The scopes of one scale ``bench/ptq_probe.py`` quantizes with (``--granularity``).
PROBE_GRANULARITIES: tuple[str, ...] = ("channel", "tensor")

#: The calibration grouping each allocating method asks ``CellContext.calibration`` for: the
#: methods that allocate bits from a palette (Table 1) or a budget (the frontier).
METHOD_GROUPINGS: dict[str, str] = {
    "blind": "pooled",
    "blind-fair": "pooled",
    "fq-alloc": "type",
    "lin": "type",
    "guo": "binary",
    "fq-qat": "type",
    "fq-baq": "type",
}
#: Methods that train (``epochs`` epochs of a fine-tune); the others only quantize, or not at all.
TRAINING_METHODS: tuple[str, ...] = ("fp32-ft", *METHOD_GROUPINGS)
