"""Table 1's methods, one function each, dispatched through the ``METHODS`` registry.

Every method receives a :class:`CellContext` holding the FP32 checkpoint already loaded into a
fresh model and returns a :class:`MethodOutput`: the model to evaluate (fake-quantized where the
method quantizes) and its bit assignment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fq_quant import BitAssignment, Granularity, ScopeLayout, quantize_model
from torch import nn

from ._config import GridConfig
from ._names import METHOD_GROUPINGS, UNIFORM_BITS

if TYPE_CHECKING:
    from fq_importance import Reducer

#: ``calibration(grouping)`` -> ``GroupImportance``; grouping ``"type"``: the dataset's groups,
#: ``"binary"``: two groups (Guo et al.), ``"pooled"``: every sample in one group (group-blind).
Calibrator = Callable[[str], Any]


@dataclass(frozen=True, kw_only=True)
class CellContext:
    """What a method needs for one cell.

    Attributes:
        config: the grid config with the cell's ablation override applied.
        model: a fresh model holding the FP32 checkpoint, on the run's device.
        train_loader: the seeded, augmented train loader (``(x, y, g)`` batches).
        calibration: ``calibration(grouping)`` -> ``fq_importance.GroupImportance`` of the FP32
            model, computed once per (dataset, model, seed, grouping) and cached.
        privileged_binary: the privileged group id (0 or 1) of the binary grouping (Guo et al.).
        seed: the cell's training seed (the same for every method of one (dataset, model,
            seed): the fine-tunes that a paired comparison sets side by side see the same batches
            in the same order with the same augmentation).
        budget: the frontier budget in parameter-weighted average bits per weight, or ``None``
            for Table 1 (the fixed palette).
        progress: show the fine-tune's epoch progress bar.
        n_groups: the dataset's number of sensitive groups (ids ``0..n_groups-1``), for the
            objectives that keep a weight or an estimate per group (``None``: grown as seen).
    """

    config: GridConfig
    model: nn.Module
    train_loader: Any
    calibration: Calibrator
    privileged_binary: int
    seed: int
    budget: float | None = None
    progress: bool = False
    n_groups: int | None = None


@dataclass(frozen=True, kw_only=True)
class MethodOutput:
    """The model to evaluate, its bits (``None`` = float), and the training history (dicts)."""

    model: nn.Module
    assignment: BitAssignment | None
    history: tuple[dict[str, Any], ...] = ()
    info: dict[str, Any] = field(default_factory=dict)


def _train_config(ctx: CellContext, *, lambda_fair: float):
    return train_config(
        ctx.config,
        seed=ctx.seed,
        progress=ctx.progress,
        lambda_fair=lambda_fair,
        n_groups=ctx.n_groups,
    )


def train_config(
    c: GridConfig, *, seed: int, progress: bool, lambda_fair: float, n_groups: int | None = None
):
    """The ``fq_baq.BAQConfig`` of a fine-tune under the cell config ``c`` (``n_groups``: the
    dataset's number of groups, for the objectives that keep a weight per group)."""
    from fq_baq import BAQConfig

    return BAQConfig(
        bit_min=c.bit_min,
        bit_max=c.bit_max,
        lambda_bits=c.lambda_bits,
        lambda_fair=lambda_fair,
        fair_loss=c.fair_loss,
        fair_tau=c.fair_tau,
        dro_eta=c.dro_eta,
        fair_ema=c.fair_ema,
        n_groups=n_groups,
        lr=c.lr,
        lr_bits=c.lr_bits,
        weight_decay=c.weight_decay,
        epochs=c.epochs,
        granularity=Granularity.CHANNEL,
        mixed_precision=c.mixed_precision,
        seed=seed,
        cpu=c.cpu,
        progress=progress,
    )


#: Methods that allocate bits from a palette (Table 1) or a budget (the frontier).
_ALLOCATING: frozenset[str] = frozenset(METHOD_GROUPINGS)


def check_method_config(c: GridConfig, method: str, budget: float | None) -> None:
    """Raise ``ValueError``/``TypeError`` now for what ``method`` would refuse under the cell
    config ``c`` (its ablation override applied) at ``budget`` only after FP32 training and
    calibration: the fine-tune's ``BAQConfig`` (FQ-BAQ's target bits included), the palette or the
    budget's bit-widths, FQ-BAQ's warm start."""
    from fq_alloc import Palette

    if method not in METHODS:
        raise ValueError(f"method {method!r} is unknown; valid: {', '.join(METHODS)}")
    if method == "fp32" or method in UNIFORM_BITS:
        return
    cfg = train_config(c, seed=0, progress=False, lambda_fair=c.lambda_fair)
    if method == "fq-baq":
        dataclasses.replace(cfg, target_avg_bits=budget)
        warm = (c.baq_bits, c.baq_warm_avg_bits) if budget is None else (c.budget_bits, budget)
        if not min(warm[0]) <= warm[1] <= max(warm[0]):
            raise ValueError(f"FQ-BAQ's warm start at {warm[1]} bits is outside {warm[0]}")
        bad = [b for b in warm[0] if not c.bit_min <= b <= c.bit_max]
        if bad:
            raise ValueError(
                f"FQ-BAQ's warm-start bit-widths {bad} are outside [bit_min, bit_max] = "
                f"[{c.bit_min}, {c.bit_max}]"
            )
    if method in _ALLOCATING:
        if budget is None:
            Palette(tuple(c.palette_bits), tuple(c.palette_props))
        elif not min(c.budget_bits) <= budget <= max(c.budget_bits):
            raise ValueError(f"budget {budget} bits is outside budget_bits {c.budget_bits}")


def _history(result: Any) -> tuple[dict[str, Any], ...]:
    return tuple(
        {
            "epoch": h.epoch,
            "task_loss": h.task_loss,
            "fair_loss": h.fair_loss,
            "group_loss": list(h.group_loss),
            "worst_group_loss": h.worst_group_loss,
            "avg_bits": h.avg_bits,
            "lambda_bits": h.lambda_bits,
        }
        for h in result.history
    )


def _allocate(ctx: CellContext, importance: Any) -> BitAssignment:
    """Table 1's fixed palette (``palette_bits`` at ``palette_props``), or, on the frontier,
    ``allocate_to_budget`` over ``budget_bits`` at the cell's budget (within 0.05 bits)."""
    from fq_alloc import Palette, allocate, allocate_to_budget

    c = ctx.config
    if ctx.budget is None:
        return allocate(importance, Palette(tuple(c.palette_bits), tuple(c.palette_props)))
    return allocate_to_budget(
        importance,
        tuple(c.budget_bits),
        ctx.budget,
        layout=ctx.model,
        cost=c.alloc_cost,  # type: ignore[arg-type]
    )


def _qat(ctx: CellContext, assignment: BitAssignment, *, lambda_fair: float) -> MethodOutput:
    from fq_baq import QATTrainer

    trainer = QATTrainer(ctx.model, assignment, _train_config(ctx, lambda_fair=lambda_fair))
    res = trainer.fit(ctx.train_loader)
    return MethodOutput(model=res.model, assignment=res.assignment, history=_history(res))


def _reduced(ctx: CellContext, method: str, reducer: Reducer, **kw: Any) -> Any:
    """``method``'s importance map: its grouping's calibration (:data:`METHOD_GROUPINGS`)
    reduced over the groups by ``reducer``."""
    from fq_importance import reduce

    return reduce(ctx.calibration(METHOD_GROUPINGS[method]), reducer, **kw)


def _uniform(bits: int) -> Callable[[CellContext], MethodOutput]:
    def run(ctx: CellContext) -> MethodOutput:
        """Post-training uniform quantization, per channel, no training."""
        layout = ScopeLayout.from_model(ctx.model, Granularity.CHANNEL)
        assignment = BitAssignment.uniform(layout, bits)
        return MethodOutput(model=quantize_model(ctx.model, assignment), assignment=assignment)

    run.__name__ = f"run_u{bits}"
    return run


def run_fp32(ctx: CellContext) -> MethodOutput:
    """The FP32 reference checkpoint itself."""
    return MethodOutput(model=ctx.model, assignment=None)


def run_fp32_ft(ctx: CellContext) -> MethodOutput:
    """Control: the FP32 model trained ``epochs`` more epochs exactly as the QAT/BAQ fine-tunes
    are (same lr, schedule, data and cell seed), unquantized and without L_fair.

    The fine-tuned rows also get this extra training; comparing them with this row, rather than
    with FP32, separates what quantization and the fairness loss do from what training does.
    """
    from fq_baq import FP32Trainer

    res = FP32Trainer(ctx.model, _train_config(ctx, lambda_fair=0.0)).fit(ctx.train_loader)
    return MethodOutput(model=res.model, assignment=None, history=_history(res))


#: The group reducer of each allocating method's importance map (``fq_importance.reduce``).
_REDUCERS: dict[str, Reducer] = {
    "blind": "mean",
    "blind-fair": "mean",
    "fq-alloc": "balanced",
    "lin": "max",
    "guo": "subtractive",
    "fq-qat": "balanced",
    "fq-baq": "balanced",
}


def method_allocation(ctx: CellContext, method: str) -> BitAssignment:
    """The bits ``method`` (an allocating one, :data:`METHOD_GROUPINGS`) starts its training
    from: its importance map (its grouping's calibration reduced by its reducer) allocated to
    Table 1's palette or, on the frontier, to the cell's budget; FQ-BAQ's warm start.

    The fine-tune that follows is the only other work of these methods; the rehearsal checks the
    other budgets of a method through this allocation and a forward only."""
    from fq_alloc import allocate_to_budget

    if method not in _REDUCERS:
        raise ValueError(f"method {method!r} does not allocate; allocating: {', '.join(_REDUCERS)}")
    kw = {"privileged": ctx.privileged_binary} if method == "guo" else {}
    imap = _reduced(ctx, method, _REDUCERS[method], **kw)
    c = ctx.config
    if method == "fq-baq" and ctx.budget is None:
        return allocate_to_budget(imap, tuple(c.baq_bits), c.baq_warm_avg_bits, layout=ctx.model)
    return _allocate(ctx, imap)


def allocation_only(ctx: CellContext, method: str) -> MethodOutput:
    """``method``'s bits (:func:`method_allocation`) on the FP32 model, fake-quantized, without
    its fine-tune: the part of a cell that differs between budgets (``info["trained"]`` False)."""
    assignment = method_allocation(ctx, method)
    return MethodOutput(
        model=quantize_model(ctx.model, assignment),
        assignment=assignment,
        info={"trained": False},
    )


def run_blind(ctx: CellContext) -> MethodOutput:
    """Group-blind mixed precision: the same ``grape`` importance on the pooled loss of all
    samples as one group (a standard sensitivity-based allocation), QAT without L_fair."""
    return _qat(ctx, method_allocation(ctx, "blind"), lambda_fair=0.0)


def run_blind_fair(ctx: CellContext) -> MethodOutput:
    """The group-blind allocation, QAT with L_fair: the fairness term alone."""
    return _qat(ctx, method_allocation(ctx, "blind-fair"), lambda_fair=ctx.config.lambda_fair)


def run_fq_alloc(ctx: CellContext) -> MethodOutput:
    """FairQuant's balanced allocation, QAT without L_fair: the allocation alone."""
    return _qat(ctx, method_allocation(ctx, "fq-alloc"), lambda_fair=0.0)


def run_lin(ctx: CellContext) -> MethodOutput:
    """Lin et al. (FairGRAPE-style): grape + max over groups, fixed palette, QAT without L_fair."""
    return _qat(ctx, method_allocation(ctx, "lin"), lambda_fair=0.0)


def run_guo(ctx: CellContext) -> MethodOutput:
    """Guo et al. (FairQuantize-style): grape + subtractive on the binary grouping, QAT, no L_fair.

    The subtractive reducer needs exactly two groups, so calibration uses the binary grouping
    (Fitzpatrick 1-3 vs 4-6; ISIC female vs male, unknown sex left out); the privileged group is
    the larger one in the training split.
    """
    return _qat(ctx, method_allocation(ctx, "guo"), lambda_fair=0.0)


def run_fq_qat(ctx: CellContext) -> MethodOutput:
    """FQ-QAT: grape + balanced, fixed palette (or the budget), QAT with the fairness loss."""
    return _qat(ctx, method_allocation(ctx, "fq-qat"), lambda_fair=ctx.config.lambda_fair)


def run_fq_baq(ctx: CellContext) -> MethodOutput:
    """FQ-BAQ: learn bits in [bit_min, bit_max], warm-started from the balanced allocation.

    Table 1: the warm start is ``allocate_to_budget`` over ``baq_bits`` (2..8) at
    ``baq_warm_avg_bits``, and the bits are free to move. Frontier: the warm start is at the
    cell's budget over ``budget_bits``, and training ends at that budget (``target_avg_bits``).
    """
    from fq_baq import BAQTrainer

    c = ctx.config
    warm = method_allocation(ctx, "fq-baq")
    layout = ScopeLayout.from_model(ctx.model, Granularity.CHANNEL)
    warm_bits = warm.avg_bits(layout)
    cfg = dataclasses.replace(
        _train_config(ctx, lambda_fair=c.lambda_fair), target_avg_bits=ctx.budget
    )
    res = BAQTrainer(ctx.model, cfg, warm_start=warm).fit(ctx.train_loader)
    return MethodOutput(
        model=res.model,
        assignment=res.assignment,
        history=_history(res),
        info={"warm_start_avg_bits": warm_bits},
    )


METHODS: dict[str, Callable[[CellContext], MethodOutput]] = {
    "fp32": run_fp32,
    **{m: _uniform(b) for m, b in UNIFORM_BITS.items()},
    "fp32-ft": run_fp32_ft,
    "blind": run_blind,
    "blind-fair": run_blind_fair,
    "fq-alloc": run_fq_alloc,
    "lin": run_lin,
    "guo": run_guo,
    "fq-qat": run_fq_qat,
    "fq-baq": run_fq_baq,
}
"""Method id -> runner; the ids are :data:`fq_bench.grid._config.METHOD_IDS`."""
