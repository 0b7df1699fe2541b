"""The one training loop behind BAQTrainer, QATTrainer and FP32Trainer, on HF accelerate.

Host synchronization happens only every ``config.log_every`` batches and at epoch end: losses are
summed on the device, the non-finite check records the first bad batch on the device, and the
dual variable of ``target_avg_bits`` is a device scalar.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin, set_seed
from fq_quant import unpack_batch
from torch import nn
from tqdm.auto import tqdm

from . import _checkpoint
from ._config import BAQConfig
from ._fairness import GroupObjective, check_group_count
from ._records import BAQResult, EpochRecord
from ._wrap import Wrapping

logger = logging.getLogger("fq_baq")

#: Config fields that may differ between a checkpoint and the run resuming from it.
_RESUMABLE_CHANGES = frozenset({"epochs", "progress", "log_every"})


def make_accelerator(config: BAQConfig) -> Accelerator:
    """An ``Accelerator`` for ``config``; resets accelerate's process-global state when an earlier
    trainer in this (non-distributed) process initialized it with other settings.

    Under a multi-process launch each batch of the loader is split over the processes
    (``split_batches=True``): the optimizer sees the same batch size and number of steps per
    epoch as in one process, so N devices run the same recipe faster instead of a recipe with an
    N times larger batch. The loader's batch size must then be divisible by N (accelerate raises
    otherwise).
    """
    kwargs = dict(
        mixed_precision=config.mixed_precision,
        cpu=config.cpu,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=config.grad_accum_steps, sync_with_dataloader=True
        ),
    )
    try:
        acc = Accelerator(**kwargs)
    except ValueError as e:
        if "already been initialized" not in str(e) or torch.distributed.is_initialized():
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(**kwargs)
    stuck_on_cpu = acc.device.type == "cpu" and not config.cpu and torch.cuda.is_available()
    if stuck_on_cpu and not torch.distributed.is_initialized():
        # an earlier cpu=True trainer pinned accelerate's process state to the CPU
        AcceleratorState._reset_state(reset_partial_state=True)
        acc = Accelerator(**kwargs)
    return acc


def epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit seed that depends on ``(seed, epoch)`` only."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _seed_epoch(seed: int, epoch: int, loaders: Iterable[Any]) -> None:
    """Reseed global RNGs and the loaders' generators, and set the loaders' epoch."""
    s = epoch_seed(seed, epoch)
    set_seed(s)
    for loader in loaders:
        batch_sampler = getattr(loader, "batch_sampler", None)
        for obj in (
            loader,
            getattr(loader, "sampler", None),
            batch_sampler,
            getattr(batch_sampler, "sampler", None),
        ):
            gen = getattr(obj, "generator", None)
            if isinstance(gen, torch.Generator):
                gen.manual_seed(s)
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)


class TrainingSession:
    """One training session: the accelerator, the prepared model and optimizer, and the step.

    Get one from a trainer (:meth:`BAQTrainer.session`) to drive single steps (benchmarks, custom
    loops): ``session.step(batch)`` runs forward, backward and, at the end of an accumulation
    window, an optimizer step, with no host-device synchronization; ``session.check_finite(epoch)``
    raises on a non-finite loss since the last ``reset_epoch()``. Attributes: ``model`` and
    ``optimizer`` (as prepared by ``accelerator``), ``params`` (the trained parameters).
    """

    def __init__(self, model: nn.Module, wrapping: Wrapping, config: BAQConfig):
        self.config, self.wrapping = config, wrapping
        self.accelerator = make_accelerator(config)
        bit_ids = {id(p) for p in wrapping.bit_params()}
        weights = [p for p in model.parameters() if p.requires_grad and id(p) not in bit_ids]
        groups: list[dict[str, Any]] = [
            {"params": weights, "lr": config.lr, "weight_decay": config.weight_decay}
        ]
        if wrapping.bit_params():
            groups.append(
                {"params": wrapping.bit_params(), "lr": config.lr_bits, "weight_decay": 0.0}
            )
        self.base_lrs: list[float] = [float(g["lr"]) for g in groups]
        # the fused kernel: one pass over all parameters instead of a Python loop per tensor
        # (resnet18 on CPU: 8 ms a step against 86 ms), the same update up to float rounding
        fused = self.accelerator.device.type in ("cpu", "cuda") or None
        optimizer = torch.optim.AdamW(groups, lr=config.lr, fused=fused)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.params = [p for g in groups for p in g["params"]]
        dev = self.accelerator.device
        self.lam = torch.tensor(float(config.lambda_bits), device=dev)
        self.objective = GroupObjective(
            config.fair_loss,
            tau=config.fair_tau,
            eta=config.dro_eta,
            momentum=config.fair_ema,
            n_groups=config.n_groups,
            device=dev,
        )
        self._zero = torch.zeros((), device=dev)
        self.sums = torch.zeros(4, device=dev)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=dev)
        self.batch_t = torch.zeros((), dtype=torch.int64, device=dev)
        self.seen_ce: list[torch.Tensor] = []  # the epoch's per-sample losses and groups
        self.seen_g: list[torch.Tensor] = []
        self.opt_steps = 0
        self.total_steps: int | None = None

    def reset_epoch(self) -> None:
        self.sums.zero_()
        self.first_bad.fill_(-1)
        self.batch_t.zero_()
        self.seen_ce.clear()
        self.seen_g.clear()

    def group_losses(self) -> tuple[float, ...]:
        """Mean training cross-entropy per group id over the epoch, all processes together.

        One host synchronization per epoch: each process counts its own share with ``bincount``,
        the shares are summed across processes (``accelerate``'s reduce). ``()`` without groups.
        """
        if not self.seen_g:
            return ()
        acc = self.accelerator
        ce, g = torch.cat(self.seen_ce).double(), torch.cat(self.seen_g).long()
        keep = g >= 0
        ce, g = ce[keep], g[keep]
        k = torch.tensor([int(g.max()) + 1 if g.numel() else 0], device=g.device)
        if acc.num_processes > 1:
            k = acc.gather(k).max().reshape(1)
        n_groups = check_group_count(int(k), what="per-group training loss")
        sums = torch.bincount(g, weights=ce, minlength=n_groups)
        counts = torch.bincount(g, minlength=n_groups).double()
        if acc.num_processes > 1:
            sums, counts = acc.reduce(sums, "sum"), acc.reduce(counts, "sum")
        mean = torch.where(counts > 0, sums / counts.clamp_min(1), torch.nan)
        return tuple(float(v) for v in mean.tolist())

    def _lr_factor(self) -> float:
        if self.config.lr_schedule == "constant" or not self.total_steps:
            return 1.0
        t = min(self.opt_steps / self.total_steps, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * t))

    def _fair(self, ce: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``L_fair`` (``config.fair_loss``) of the whole batch, also when its samples are split
        over processes.

        No objective is a mean over samples (the gap, the worst group, DRO's weights all depend
        on the whole batch's group means), so averaging per-process values (what DDP would do) is
        not the batch's. Every process gathers the per-sample losses and groups of all (equal
        shares, as ``split_batches`` gives), keeps its own losses differentiable and the others'
        constant, and scales the gradient by the number of processes W: DDP's average of the W
        partial gradients is then the gradient of the batch's objective, while the value stays
        the objective's. Every process sees the same gathered batch, so the objective's state
        (DRO weights, running estimates) moves identically on all of them. With
        ``lambda_fair == 0`` the value is only logged: each process takes its own share.
        """
        acc = self.accelerator
        w = acc.num_processes
        if w == 1 or self.config.lambda_fair == 0:
            return self.objective(ce, g)
        n, i = ce.shape[0], acc.process_index
        all_ce, all_g = acc.gather(ce.detach()), acc.gather(g)
        mixed = torch.cat([all_ce[: i * n], ce, all_ce[(i + 1) * n :]])
        value = self.objective(mixed, all_g)
        return w * value - (w - 1) * value.detach()

    def step(self, batch: Any, index: int | None = None) -> None:
        """Forward, backward and (at the end of an accumulation window) an optimizer step.

        ``index`` (the batch's position in the epoch) is named in errors about the batch.
        """
        cfg, acc = self.config, self.accelerator
        x, y, g = unpack_batch(batch, index=index, need_groups=False)
        if g is None and cfg.lambda_fair > 0:
            raise ValueError(
                "lambda_fair > 0 needs sensitive groups: batches must be (image, label, group) "
                "tuples or dicts with a 'group' key (or set lambda_fair=0)"
            )
        with acc.accumulate(self.model):
            logits = self.model(x)
            ce = _cross_entropy(logits, y, index)
            task = ce.mean()
            fair = self._fair(ce, g) if g is not None else self._zero
            bits = self.wrapping.bit_loss()
            loss = task + cfg.lambda_fair * fair if cfg.lambda_fair > 0 else task
            if bits is None:
                bits = self._zero
            else:
                loss = loss + self.lam * bits
            acc.backward(loss)
            if acc.sync_gradients:
                if cfg.grad_clip is not None:
                    acc.clip_grad_norm_(self.params, cfg.grad_clip)
                f = self._lr_factor()
                for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                    group["lr"] = base * f
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if acc.sync_gradients:
                self.opt_steps += 1
                avg = None if cfg.target_avg_bits is None else self.wrapping.avg_bits()
                if cfg.target_avg_bits is not None and avg is not None:
                    excess = avg - cfg.target_avg_bits
                    self.lam = (self.lam + cfg.dual_lr * excess).clamp_(min=0.0)
        with torch.no_grad():
            self.sums += torch.stack([task.detach(), fair.detach(), bits.detach(), loss.detach()])
            if g is not None:
                self.seen_ce.append(ce.detach())
                self.seen_g.append(g.detach())
            bad = ~torch.isfinite(loss.detach())
            self.first_bad = torch.where(bad & (self.first_bad < 0), self.batch_t, self.first_bad)
            self.batch_t += 1

    def check_finite(self, epoch: int) -> None:
        """Raise ``FloatingPointError`` naming the first non-finite-loss batch of ``epoch``."""
        self.objective.check()
        bad = int(self.first_bad)
        if bad >= 0:
            raise FloatingPointError(
                f"non-finite loss at epoch {epoch + 1}, batch {bad} (0-based within the epoch); "
                "training stopped, the last good checkpoint (end of the previous epoch) is kept"
            )


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor, index: int | None) -> torch.Tensor:
    """Per-sample cross-entropy ``[B]``; a label outside ``0..C-1`` names the batch."""
    try:
        return F.cross_entropy(logits.float(), y, reduction="none")
    except IndexError:
        c = logits.shape[-1]
        bad = sorted({int(v) for v in y.reshape(-1).tolist() if not 0 <= int(v) < c})
        where = "a batch" if index is None else f"batch {index}"
        raise ValueError(
            f"{where} has label(s) {bad[:10]} outside the model's {c} classes 0..{c - 1}; "
            "give the model as many outputs as the data has classes"
        ) from None


def _eval_dict(out: Any) -> dict[str, float]:
    if not isinstance(out, Mapping):
        raise TypeError(f"eval_fn must return a mapping of str -> number; got {type(out).__name__}")
    return {str(k): float(v) for k, v in out.items()}


def _resume(
    session: TrainingSession, ckpt: dict[str, Any], kind: str
) -> tuple[int, list[EpochRecord]]:
    if ckpt.get("kind") != kind:
        raise ValueError(f"checkpoint was written by a {ckpt.get('kind')!r} trainer, not {kind!r}")
    # a field added after the checkpoint was written reads as its default there
    old = {**BAQConfig().to_dict(), **ckpt["config"]}
    new = session.config.to_dict()
    diff = sorted(k for k in new if k not in _RESUMABLE_CHANGES and old.get(k) != new[k])
    if diff:
        raise ValueError(
            f"checkpoint config differs in {diff} (stored {[old.get(k) for k in diff]}, "
            f"given {[new[k] for k in diff]}); use a fresh checkpoint_dir"
        )
    session.accelerator.unwrap_model(session.model).load_state_dict(ckpt["model"])
    session.optimizer.load_state_dict(ckpt["optimizer"])
    session.lam.copy_(ckpt["lambda_bits"])
    if "fair_state" in ckpt:
        session.objective.load_state_dict(ckpt["fair_state"])
    session.opt_steps = int(ckpt["opt_steps"])
    _checkpoint.set_rng_state(ckpt["rng"])
    return int(ckpt["epoch"]), [EpochRecord.from_dict(h) for h in ckpt["history"]]


def _save(
    session: TrainingSession, directory: Path, epoch: int, history: list[EpochRecord], kind: str
) -> None:
    acc = session.accelerator
    acc.wait_for_everyone()
    if acc.is_main_process:
        _checkpoint.save(
            directory,
            {
                "kind": kind,
                "epoch": epoch,
                "opt_steps": session.opt_steps,
                "config": session.config.to_dict(),
                "model": {
                    k: v.detach().cpu()
                    for k, v in acc.unwrap_model(session.model).state_dict().items()
                },
                "optimizer": session.optimizer.state_dict(),
                "lambda_bits": session.lam.detach().cpu(),
                "fair_state": session.objective.state_dict(),
                "rng": _checkpoint.rng_state(),
                "history": [h.to_dict() for h in history],
            },
        )
    acc.wait_for_everyone()


def train(
    model: nn.Module,
    wrapping: Wrapping,
    config: BAQConfig,
    train_loader: Iterable[Any],
    *,
    eval_fn: Callable[[nn.Module], Mapping[str, float]] | None = None,
    checkpoint_dir: str | Path | None = None,
) -> BAQResult:
    """Run ``config.epochs`` epochs (resuming from ``checkpoint_dir``) and finalize the model."""
    session = TrainingSession(model, wrapping, config)
    acc = session.accelerator
    loader = acc.prepare(train_loader)
    try:
        n_batches = len(loader)
    except TypeError:
        n_batches = None
    if config.lr_schedule == "cosine":
        if n_batches is None:
            raise ValueError("lr_schedule='cosine' needs a train_loader with a length")
        session.total_steps = config.epochs * max(n_batches // config.grad_accum_steps, 1)
    start, history = 0, list[EpochRecord]()
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None and (ckpt := _checkpoint.load(ckpt_dir)) is not None:
        start, history = _resume(session, ckpt, wrapping.kind)
        logger.info("resuming from %s after epoch %d", ckpt_dir, start)
    show = config.progress and acc.is_local_main_process
    for epoch in range(start, config.epochs):
        _seed_epoch(config.seed, epoch, (train_loader, loader))
        session.reset_epoch()
        session.model.train()
        t0 = time.perf_counter()
        seen = 0
        # leave=False: finished epochs vanish, so a caller's own bar (a grid of cells) stays legible
        bar = tqdm(
            total=n_batches,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not show,
            leave=False,
        )
        for batch in loader:
            session.step(batch, seen)
            seen += 1
            bar.update(1)
            if seen % config.log_every == 0:
                session.check_finite(epoch)
                if show:
                    bar.set_postfix(loss=f"{float(session.sums[3]) / seen:.4f}")
        bar.close()
        if seen == 0:
            raise ValueError("train_loader yielded no batches")
        session.check_finite(epoch)
        sums = (session.sums / seen).tolist()
        seconds = time.perf_counter() - t0
        current = wrapping.assignment()
        avg = wrapping.avg_bits()
        group_loss = session.group_losses()
        finite = [v for v in group_loss if math.isfinite(v)]
        record = dict(
            epoch=epoch + 1,
            task_loss=sums[0],
            fair_loss=sums[1],
            bit_loss=sums[2],
            loss=sums[3],
            avg_bits=None if avg is None else float(avg),
            bit_histogram={} if current is None else current.histogram(),
            lambda_bits=float(session.lam),
            seconds=seconds,
            batches=seen,
            group_loss=group_loss,
            worst_group_loss=max(finite) if finite else None,
        )
        if eval_fn is not None:
            session.model.eval()
            with torch.no_grad():
                record["eval"] = _eval_dict(eval_fn(acc.unwrap_model(session.model)))
            session.model.train()
        history.append(EpochRecord(**record))
        logger.info("epoch %d/%d: %s", epoch + 1, config.epochs, history[-1])
        if ckpt_dir is not None:
            _save(session, ckpt_dir, epoch + 1, history, wrapping.kind)
    final = acc.unwrap_model(session.model, keep_fp32_wrapper=False)
    final, assignment = wrapping.finalize(final)
    final.eval()
    acc.free_memory()
    return BAQResult(model=final, assignment=assignment, history=tuple(history))
