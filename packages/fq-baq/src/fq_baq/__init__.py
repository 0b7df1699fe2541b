"""fq-baq: Bit-Aware Quantization (learnable bits), FQ-QAT (frozen bits) and an FP32 fine-tune.

The one way in::

    from fq_baq import BAQConfig, BAQTrainer, QATTrainer, FP32Trainer, fairness_penalty, GroupObjective
"""

from ._bits import (
    LearnableBitsQuantizer,
    attach_learnable_bits,
    detach_learnable_bits,
    learnable_quantizers,
    learned_assignment,
    theta_from_bits,
)
from ._budget import project_to_budget
from ._config import BAQConfig, MixedPrecision
from ._fairness import FAIR_LOSSES, MAX_GROUPS, FairLoss, GroupObjective, fairness_penalty
from ._loop import TrainingSession
from ._records import BAQResult, EpochRecord
from ._trainers import BAQTrainer, FP32Trainer, QATTrainer

__all__ = [
    "MAX_GROUPS",
    "FAIR_LOSSES",
    "BAQConfig",
    "BAQResult",
    "BAQTrainer",
    "EpochRecord",
    "FP32Trainer",
    "FairLoss",
    "MixedPrecision",
    "GroupObjective",
    "LearnableBitsQuantizer",
    "QATTrainer",
    "TrainingSession",
    "attach_learnable_bits",
    "detach_learnable_bits",
    "fairness_penalty",
    "learnable_quantizers",
    "learned_assignment",
    "project_to_budget",
    "theta_from_bits",
]
