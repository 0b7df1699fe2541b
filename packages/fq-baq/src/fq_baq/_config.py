"""Training configuration shared by BAQ, FQ-QAT and the FP32 fine-tune."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from fq_quant import Granularity

BitReg = Literal["l2", "anchor"]
MixedPrecision = Literal["no", "fp16", "bf16"]
LRSchedule = Literal["constant", "cosine"]

#: Bit-widths a learnable scope may take (METHOD.md section 2: uniform quantizer, b >= 2).
LEARNABLE_BIT_RANGE = (2, 16)


def _check_number(name: str, value: Any, *, low: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number; got {value!r}")
    if value < low or (strict and value == low):
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be {op} {low}; got {value!r}")
    return float(value)


def _check_int(name: str, value: Any, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}; got {value!r}")
    return value


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


@dataclass(frozen=True, kw_only=True)
class BAQConfig:
    """Hyper-parameters of the training loop (METHOD.md section 6).

    Attributes:
        bit_min, bit_max: range of the learnable bit-widths, ``2 <= bit_min <= bit_max <= 16``.
        lambda_bits: weight of ``L_bits`` (mean of ``theta^2`` over scopes; pulls bits down).
            With ``target_avg_bits`` it is the starting value of the dual variable.
        lambda_fair: weight of ``L_fair = max_g L_g - min_g L_g`` (0: off, groups optional).
        bit_reg: ``"l2"`` penalizes ``theta^2``; ``"anchor"`` penalizes ``(theta - theta_init)^2``.
        lr, lr_bits: AdamW learning rates of the weights and of the bit logits ``theta``.
        weight_decay: AdamW decoupled weight decay of the weights (bit logits get none).
        epochs: passes over the training loader (a resumed run continues up to this count).
        grad_clip: max global L2 norm of the gradients; ``None`` disables clipping.
        target_avg_bits: parameter-weighted average bits the final assignment must meet within
            0.05 bits (dual ascent on ``lambda_bits`` plus a final projection; see README).
        dual_lr: step size of the dual ascent on ``lambda_bits`` per optimizer step, in units of
            lambda per bit of excess average; used only with ``target_avg_bits``.
        granularity: scope granularity of the learnable bits (CHANNEL is the paper's default).
        mixed_precision: accelerate's ``"no"``, ``"fp16"`` or ``"bf16"`` autocast of the forward.
        grad_accum_steps: micro-batches per optimizer step (accelerate gradient accumulation).
        lr_schedule: ``"constant"`` or ``"cosine"`` decay to 0 over all optimizer steps.
        seed: seeds the global RNGs and the loader at every epoch start (from ``(seed, epoch)``).
        cpu: force the CPU even when an accelerator is available.
        log_every: batches between host synchronizations (non-finite check, progress bar).
        progress: show a tqdm progress bar on the main process.
    """

    bit_min: int = 2
    bit_max: int = 8
    lambda_bits: float = 1e-2
    lambda_fair: float = 0.5
    bit_reg: BitReg = "l2"
    lr: float = 3e-5
    lr_bits: float = 3e-3
    weight_decay: float = 0.01
    epochs: int = 10
    grad_clip: float | None = 1.0
    target_avg_bits: float | None = None
    dual_lr: float = 1e-2
    granularity: Granularity = Granularity.CHANNEL
    mixed_precision: MixedPrecision = "no"
    grad_accum_steps: int = 1
    lr_schedule: LRSchedule = "constant"
    seed: int = 0
    cpu: bool = False
    log_every: int = field(default=50)
    progress: bool = False

    def __post_init__(self) -> None:
        lo, hi = LEARNABLE_BIT_RANGE
        for name in ("bit_min", "bit_max"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int; got {v!r}")
            if not lo <= v <= hi:
                raise ValueError(f"{name} must be in {lo}..{hi} (uniform quantizer bits); got {v}")
        if self.bit_min > self.bit_max:
            raise ValueError(
                f"bit_min must be <= bit_max; got bit_min={self.bit_min}, bit_max={self.bit_max}"
            )
        for name in ("lambda_bits", "lambda_fair", "lr_bits", "weight_decay", "dual_lr"):
            _check_number(name, getattr(self, name))
        _check_number("lr", self.lr, strict=True)
        _check_int("epochs", self.epochs, low=1)
        _check_int("grad_accum_steps", self.grad_accum_steps, low=1)
        _check_int("log_every", self.log_every, low=1)
        _check_int("seed", self.seed, low=0)
        if self.grad_clip is not None:
            _check_number("grad_clip", self.grad_clip, strict=True)
        if self.target_avg_bits is not None:
            t = _check_number("target_avg_bits", self.target_avg_bits)
            if not self.bit_min <= t <= self.bit_max:
                raise ValueError(
                    f"target_avg_bits must lie in [bit_min, bit_max] = [{self.bit_min}, "
                    f"{self.bit_max}]; got {t}"
                )
        _check_choice("bit_reg", self.bit_reg, ("l2", "anchor"))
        _check_choice("mixed_precision", self.mixed_precision, ("no", "fp16", "bf16"))
        _check_choice("lr_schedule", self.lr_schedule, ("constant", "cosine"))
        object.__setattr__(self, "granularity", Granularity.parse(self.granularity))
        for name in ("cpu", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool; got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (granularity as its string value)."""
        d = asdict(self)
        d["granularity"] = self.granularity.value
        return d
