"""How each trainer wraps the model: learnable bits (BAQ), frozen bits (QAT), nothing (FP32).

The training loop is shared (:mod:`fq_baq._loop`); only these wrappers differ.
"""

from __future__ import annotations

import torch
from fq_quant import BitAssignment, ScopeLayout, current_assignment, is_quantized, quantize_model
from torch import nn

from ._bits import assignment_of, attach_learnable_bits, detach_learnable_bits
from ._budget import project_to_budget
from ._config import BAQConfig


class Wrapping:
    """No quantizer: the FP32 fine-tune."""

    kind = "fp32"

    def bit_params(self) -> list[nn.Parameter]:
        return []

    def bit_loss(self) -> torch.Tensor | None:
        """Differentiable ``L_bits`` (0-dim), or ``None`` when there are no learnable bits."""
        return None

    def avg_bits(self) -> torch.Tensor | None:
        """Parameter-weighted average of the current rounded bits (0-dim, on device, no grad)."""
        return None

    def assignment(self) -> BitAssignment | None:
        return None

    def finalize(self, model: nn.Module) -> tuple[nn.Module, BitAssignment | None]:
        return model, None


class FixedWrapping(Wrapping):
    """Bits frozen at an assignment (:func:`fq_quant.quantize_model`): FQ-QAT and its baselines."""

    kind = "qat"

    def __init__(self, model: nn.Module, assignment: BitAssignment):
        if not isinstance(assignment, BitAssignment):
            raise TypeError(f"assignment must be a BitAssignment; got {type(assignment).__name__}")
        quantize_model(model, assignment)
        self._assignment = current_assignment(model)
        self._avg = self._assignment.avg_bits(ScopeLayout.from_model(model, assignment.granularity))

    def avg_bits(self) -> torch.Tensor:
        return torch.tensor(self._avg, dtype=torch.float64)

    def assignment(self) -> BitAssignment:
        return self._assignment

    def finalize(self, model: nn.Module) -> tuple[nn.Module, BitAssignment]:
        return model, current_assignment(model)


class LearnableWrapping(Wrapping):
    """Learnable bits on every Conv2d/Linear weight (BAQ)."""

    kind = "baq"

    def __init__(self, model: nn.Module, config: BAQConfig, warm_start: BitAssignment | None):
        self.config = config
        self.quantizers = attach_learnable_bits(
            model,
            bit_min=config.bit_min,
            bit_max=config.bit_max,
            granularity=config.granularity,
            warm_start=warm_start,
        )
        self.layout = ScopeLayout.from_model(model, config.granularity)
        self._pps = [float(self.layout[n].params_per_scope) for n in self.quantizers]
        self._num_params = float(self.layout.num_params)

    def bit_params(self) -> list[nn.Parameter]:
        return [q.theta for q in self.quantizers.values()]

    def bit_loss(self) -> torch.Tensor:
        if self.config.bit_reg == "anchor":
            terms = [(q.theta - q.theta_init).square().sum() for q in self.quantizers.values()]
        else:
            terms = [q.theta.square().sum() for q in self.quantizers.values()]
        return torch.stack(terms).sum() / self.layout.num_scopes

    def avg_bits(self) -> torch.Tensor:
        with torch.no_grad():
            sums = torch.stack(
                [
                    torch.round(q.continuous_bits()).sum() * w
                    for q, w in zip(self.quantizers.values(), self._pps, strict=True)
                ]
            )
            return sums.sum() / self._num_params

    def assignment(self) -> BitAssignment:
        return assignment_of(self.quantizers)

    def final_assignment(self) -> BitAssignment:
        """``round(b_cont)``, projected onto ``target_avg_bits`` when that is set (see _budget)."""
        target = self.config.target_avg_bits
        if target is None:
            return self.assignment()
        with torch.no_grad():
            conts = [q.continuous_bits().detach().cpu() for q in self.quantizers.values()]
        weights = torch.cat(
            [torch.full((c.numel(),), w) for c, w in zip(conts, self._pps, strict=True)]
        )
        flat = project_to_budget(
            torch.cat([c.reshape(-1) for c in conts]),
            weights,
            target,
            bit_min=self.config.bit_min,
            bit_max=self.config.bit_max,
        )
        bits, start = {}, 0
        for name, c in zip(self.quantizers, conts, strict=True):
            bits[name] = flat[start : start + c.numel()].reshape(c.shape)
            start += c.numel()
        return BitAssignment(self.config.granularity, bits)

    def finalize(self, model: nn.Module) -> tuple[nn.Module, BitAssignment]:
        assignment = self.final_assignment()
        detach_learnable_bits(model)
        quantize_model(model, assignment)
        return model, assignment


def fp32_wrapping(model: nn.Module) -> Wrapping:
    if is_quantized(model):
        raise ValueError(
            "FP32Trainer got a quantized model; call fq_quant.strip_quantization(model) "
            "(or train it "
            "with QATTrainer)"
        )
    return Wrapping()
