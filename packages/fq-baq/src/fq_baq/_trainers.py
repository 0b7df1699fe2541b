"""BAQTrainer (learnable bits), QATTrainer (frozen bits), FP32Trainer: one loop, three wrappings.

Every trainer works on a deep copy of the model it is given (``trainer.model``, returned as
``fit(...).model``), so the caller's model, typically the FP32 reference, is still there to compare
with afterwards; ``inplace=True`` trains the given model itself (no copy, no extra memory).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from fq_quant import BitAssignment
from torch import nn

from ._config import BAQConfig
from ._loop import TrainingSession, train
from ._records import BAQResult
from ._wrap import FixedWrapping, LearnableWrapping, Wrapping, fp32_wrapping

EvalFn = Callable[[nn.Module], Mapping[str, float]]


def _check_config(config: Any) -> BAQConfig:
    if not isinstance(config, BAQConfig):
        raise TypeError(f"config must be a BAQConfig; got {type(config).__name__}")
    return config


def _own_model(model: Any, inplace: Any) -> nn.Module:
    """``model`` itself under ``inplace=True``, else a deep copy (the caller's model untouched)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool; got {inplace!r}")
    return model if inplace else copy.deepcopy(model)


class _Trainer:
    model: nn.Module
    config: BAQConfig
    _wrapping: Wrapping

    def fit(
        self,
        train_loader: Iterable[Any],
        *,
        eval_fn: EvalFn | None = None,
        checkpoint_dir: str | Path | None = None,
    ) -> BAQResult:
        """Train for ``config.epochs`` epochs and return the finalized model and history.

        Args:
            train_loader: yields ``(image [B, 3, H, W], label [B], group [B])`` tuples (or
                ``(image, label)`` when ``lambda_fair == 0``) or dicts with those keys. For
                reproducible resumes its order must depend only on the global RNGs, on a
                ``torch.Generator`` it exposes (``loader.generator`` / ``sampler.generator``),
                or on ``set_epoch(epoch)``: all three are reseeded/set from ``(seed, epoch)``
                at every epoch start.
            eval_fn: called after every epoch as ``eval_fn(model)`` (eval mode, no grad) and
                must return ``{name: number}``; stored in the history.
            checkpoint_dir: keeps ``last.pt`` (weights, bit logits, optimizer, epoch, RNG states,
                history), rewritten atomically after every epoch; ``fit`` resumes from it.

        Raises:
            FloatingPointError: a non-finite loss (names epoch and batch; checkpoint untouched).
            ValueError: batches without groups while ``lambda_fair > 0``; a checkpoint from a
                different trainer or config.
        """
        if getattr(self, "_fitted", False):
            raise RuntimeError(
                "fit already ran on this trainer (its model is finalized); build a new trainer, "
                "with the same checkpoint_dir to continue"
            )
        self._fitted = True
        return train(
            self.model,
            self._wrapping,
            self.config,
            train_loader,
            eval_fn=eval_fn,
            checkpoint_dir=checkpoint_dir,
        )

    def session(self) -> TrainingSession:
        """A :class:`TrainingSession` on this trainer's model: single steps, no epochs or checkpoints.

        For benchmarks and custom loops; the steps train ``self.model`` in place (bits included).
        """
        return TrainingSession(self.model, self._wrapping, self.config)


class BAQTrainer(_Trainer):
    """Bit-Aware Quantization: learn bits per scope together with the weights (METHOD.md sec. 6).

    Trains a deep copy of ``model`` (``self.model``; ``inplace=True``: ``model`` itself), whose
    every Conv2d/Linear weight gets a :class:`~fq_baq.LearnableBitsQuantizer` (a fixed-bits
    quantizer already there is replaced, its float weight kept). ``warm_start`` sets each scope's
    initial bits exactly; without it every scope starts at ``bit_max``.
    """

    def __init__(
        self,
        model: nn.Module,
        config: BAQConfig,
        warm_start: BitAssignment | None = None,
        *,
        inplace: bool = False,
    ):
        self.config = _check_config(config)
        self.model = _own_model(model, inplace)
        self._wrapping = LearnableWrapping(self.model, self.config, warm_start)


class QATTrainer(_Trainer):
    """FQ-QAT: the same loop with the bits frozen at ``assignment`` (``fq_quant.quantize_model``).

    Also the Lin et al. / Guo et al. baselines with ``lambda_fair=0``. ``bit_*``, ``lambda_bits``
    and ``target_avg_bits`` of the config are not used. Trains a deep copy of ``model``
    (``self.model``; ``inplace=True``: ``model`` itself), quantized with
    ``fq_quant.quantize_model``.
    """

    def __init__(
        self,
        model: nn.Module,
        assignment: BitAssignment,
        config: BAQConfig,
        *,
        inplace: bool = False,
    ):
        self.config = _check_config(config)
        self.model = _own_model(model, inplace)
        self._wrapping = FixedWrapping(self.model, assignment)


class FP32Trainer(_Trainer):
    """The same loop with no quantizer and no fairness term: the FP32 reference (fine-)tune.

    The loss is the task's cross-entropy alone: the config's ``lambda_fair`` is set to 0 (as
    ``self.config`` shows), so batches need no groups; ``bit_*``, ``lambda_bits`` and
    ``target_avg_bits`` are not used. Trains a deep copy of ``model`` (``self.model``;
    ``inplace=True``: ``model`` itself).
    """

    def __init__(self, model: nn.Module, config: BAQConfig, *, inplace: bool = False):
        self.config = dataclasses.replace(_check_config(config), lambda_fair=0.0)
        self.model = _own_model(model, inplace)
        self._wrapping = fp32_wrapping(self.model)
