"""The options of one compression run: a frozen, validated :class:`CompressConfig`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fq_baq import FairLoss

    from fq_bench.grid import GridConfig

#: The methods ``compress`` runs, as the grid defines them (``fq_bench.grid.METHODS``):
#: ``blind``: importance of the pooled loss, QAT without L_fair (the group-blind control);
#: ``fq-alloc``: FairQuant's balanced allocation, QAT without L_fair; ``fq-qat``: the balanced
#: allocation, QAT with L_fair; ``fq-baq``: bits learned from that allocation, ending at the budget.
COMPRESS_METHODS: tuple[str, ...] = ("blind", "fq-alloc", "fq-qat", "fq-baq")
#: ``activations``: ``float`` (weight-only ONNX file) or ``int8`` (also an integer-activation one).
ACTIVATIONS: tuple[str, ...] = ("float", "int8")
#: ``estimator`` of the activation ranges (``fq_quant.calibrate_activations``).
ESTIMATORS: tuple[str, ...] = ("minmax", "percentile", "entropy")
#: ``cost``: what the budget counts (``fq_alloc.allocate_to_budget``).
COSTS: tuple[str, ...] = ("packed", "container")
#: Fields added later; at their default they stay out of the fingerprint, so earlier runs resume.
_LATER_DEFAULTS: dict[str, Any] = {
    "activations": "float",
    "estimator": "minmax",
    "group_balanced": False,
    "cost": "packed",
}


def _fail(name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"{name}={value!r} is invalid; allowed: {allowed}")


@dataclass(frozen=True, kw_only=True)
class CompressConfig:
    """Everything a compression run depends on, besides the model and the data.

    Attributes:
        budget: target parameter-weighted average bits per weight of the quantized layers,
            within ``budget_bits`` (e.g. 4.0).
        method: one of :data:`COMPRESS_METHODS`.
        budget_bits: the bit-widths a scope may get (``fq_alloc.allocate_to_budget``).
        fair_loss: the L_fair objective of ``fq-qat``/``fq-baq`` (``fq_baq.BAQConfig.fair_loss``).
        lambda_fair: weight of L_fair (``fq-qat``/``fq-baq``; 0 turns it off).
        epochs: fine-tune epochs over the train split.
        lr: AdamW learning rate of the fine-tune.
        batch_size: images per batch (fine-tune, calibration and evaluation).
        image_size: square input side in pixels the model is fed (the data is resized to it).
        calib_batches: train batches of the group-conditioned calibration (at most one epoch).
        margin: the non-inferiority margin in accuracy points (``1.0`` = one point).
        confidence: the confidence level of the audit's intervals (e.g. 0.95).
        test_fraction: share of images held out for the audit when the source has no split.
        seed: seed of the split, the loaders' shuffling and the fine-tune.
        cpu: run on the CPU even where CUDA is present.
        progress: progress bars for the fine-tune and the evaluation passes.
        activations: ``"float"``: the ONNX file keeps float32 activations (weight-only);
            ``"int8"``: also ``model.int8.onnx`` with static int8 activations, its ranges
            calibrated on up to ``calib_batches`` batches of the train split (eval transforms).
        estimator: range estimator of ``"int8"``: ``"minmax"``, ``"percentile"``, ``"entropy"``.
        group_balanced: ``"int8"`` ranges estimated per group and combined by the widest
            (``fq_quant.calibrate_activations``), so no group is clipped much more than others.
        cost: what ``budget`` counts: ``"packed"`` (each weight's bits, the packed file) or
            ``"container"`` (each layer's INT4/INT8 storage width in the ONNX file).
    """

    budget: float = 4.0
    method: str = "fq-qat"
    budget_bits: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    fair_loss: FairLoss = "gap"
    lambda_fair: float = 0.5
    epochs: int = 2
    lr: float = 3e-4
    batch_size: int = 64
    image_size: int = 32
    calib_batches: int = 50
    margin: float = 1.0
    confidence: float = 0.95
    test_fraction: float = 0.2
    seed: int = 0
    cpu: bool = False
    progress: bool = True
    activations: str = "float"
    estimator: str = "minmax"
    group_balanced: bool = False
    cost: str = "packed"

    def __post_init__(self) -> None:
        if self.method not in COMPRESS_METHODS:
            raise _fail("method", self.method, ", ".join(COMPRESS_METHODS))
        bits = tuple(self.budget_bits)
        if not bits or any(isinstance(b, bool) or not isinstance(b, int) for b in bits):
            raise _fail("budget_bits", self.budget_bits, "a tuple of ints such as (2, 3, 4, 8)")
        ok = isinstance(self.budget, (int, float)) and not isinstance(self.budget, bool)
        if not ok or not math.isfinite(self.budget) or not min(bits) <= self.budget <= max(bits):
            raise _fail("budget", self.budget, f"bits per weight in [{min(bits)}, {max(bits)}]")
        for name in ("epochs", "batch_size", "calib_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _fail(name, value, "an int >= 1")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int):
            raise _fail("image_size", self.image_size, "an int >= 8 (pixels)")
        if self.image_size < 8:
            raise _fail("image_size", self.image_size, "an int >= 8 (pixels)")
        if not (isinstance(self.margin, (int, float)) and 0 < self.margin < 100):
            raise _fail("margin", self.margin, "accuracy points in (0, 100), e.g. 1.0")
        if not (isinstance(self.confidence, float) and 0.5 <= self.confidence < 1):
            raise _fail("confidence", self.confidence, "a float in [0.5, 1), e.g. 0.95")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise _fail("seed", self.seed, "an int >= 0")
        for name, allowed in (
            ("activations", ACTIVATIONS),
            ("estimator", ESTIMATORS),
            ("cost", COSTS),
        ):
            if getattr(self, name) not in allowed:
                raise _fail(name, getattr(self, name), ", ".join(allowed))
        if not isinstance(self.group_balanced, bool):
            raise _fail("group_balanced", self.group_balanced, "True or False")
        if self.activations == "float" and (self.estimator != "minmax" or self.group_balanced):
            raise ValueError(
                "estimator= and group_balanced= calibrate integer activations; they need "
                "activations='int8'"
            )
        if self.cost == "container" and self.method == "fq-baq":
            raise ValueError(
                "cost='container' is for the allocating methods (blind, fq-alloc, fq-qat): "
                "fq-baq learns its bits after the allocation, against packed bits"
            )
        self.grid_config()  # the fine-tune's own rules (lr, fair_loss, bit-widths), now

    def grid_config(self) -> GridConfig:
        """The ``fq_bench.grid.GridConfig`` whose method runners compress with these options."""
        from fq_bench.grid import GridConfig

        return GridConfig(
            methods=(self.method,),
            seeds=(self.seed,),
            image_size=self.image_size,
            batch_size=self.batch_size,
            epochs=self.epochs,
            lr=self.lr,
            lambda_fair=self.lambda_fair,
            fair_loss=self.fair_loss,
            calib_batches=self.calib_batches,
            budget_bits=tuple(self.budget_bits),
            test_fraction=self.test_fraction,
            cpu=self.cpu,
            progress=self.progress,
            alloc_cost=self.cost,
        )

    def fingerprint_fields(self) -> dict[str, Any]:
        """The fields every output depends on (``progress`` and ``cpu`` change none)."""
        d = dataclasses.asdict(self)
        for key in ("progress", "cpu"):
            d.pop(key)
        d["budget_bits"] = list(self.budget_bits)
        for key, default in _LATER_DEFAULTS.items():
            if d[key] == default:
                d.pop(key)
        return d
