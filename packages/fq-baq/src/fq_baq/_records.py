"""What training returns and records: one :class:`EpochRecord` per epoch, and the :class:`BAQResult`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from fq_quant import BitAssignment
from torch import nn


@dataclass(frozen=True, kw_only=True)
class EpochRecord:
    """Summary of one training epoch.

    Attributes:
        epoch: 1-based epoch number.
        task_loss, fair_loss, bit_loss, loss: means over the epoch's batches (nats; ``bit_loss``
            is the mean ``theta^2`` term; ``loss`` includes the lambda weights).
        avg_bits: parameter-weighted average of the rounded bits at the epoch's end (bits per
            weight); ``None`` for the FP32 trainer.
        bit_histogram: bit-width -> number of scopes at the epoch's end (empty for FP32).
        lambda_bits: the (dual-ascended, with ``target_avg_bits``) weight of ``L_bits`` at the end.
        seconds: wall time of the epoch's training pass (eval excluded).
        batches: batches seen in the epoch.
        eval: what ``eval_fn`` returned after the epoch, or ``None``.
        group_loss: mean training cross-entropy (nats) per group id ``0..K-1`` over the epoch's
            samples (NaN for a group with none); empty when the batches carry no groups.
        worst_group_loss: the largest of ``group_loss`` (``None`` without groups).
    """

    epoch: int
    task_loss: float
    fair_loss: float
    bit_loss: float
    loss: float
    avg_bits: float | None
    bit_histogram: Mapping[int, int]
    lambda_bits: float
    seconds: float
    batches: int
    eval: Mapping[str, float] | None = None
    group_loss: tuple[float, ...] = ()
    worst_group_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bit_histogram"] = [[int(k), int(v)] for k, v in self.bit_histogram.items()]
        d["eval"] = None if self.eval is None else dict(self.eval)
        d["group_loss"] = list(self.group_loss)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EpochRecord:
        d = dict(d)
        d["bit_histogram"] = {int(k): int(v) for k, v in d["bit_histogram"]}
        d["group_loss"] = tuple(float(v) for v in d.get("group_loss", ()))
        return cls(**d)


@dataclass(frozen=True, kw_only=True)
class BAQResult:
    """What ``fit`` returns.

    Attributes:
        model: the trained model in eval mode. BAQ and QAT: wrapped by
            :func:`fq_quant.quantize_model` with ``FixedBitsQuantizer`` at ``assignment`` (what
            inference computes with); FP32: plain.
        assignment: the final bits (BAQ: ``round(b_cont)``, projected onto ``target_avg_bits``
            when set); ``None`` for the FP32 trainer.
        history: one :class:`EpochRecord` per epoch, resumed epochs included.
    """

    model: nn.Module
    assignment: BitAssignment | None
    history: tuple[EpochRecord, ...]
