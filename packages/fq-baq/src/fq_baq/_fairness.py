"""The fairness term ``L_fair`` (METHOD.md eq. 4 and the objectives of section 6), vectorized.

Every objective is a small function of a vector of group losses ``L [M]`` and a mask
``present [M]`` of the groups that enter (no loop over groups, no host sync). The vector comes
either from the batch alone (:func:`batch_group_losses`: one slot per sample, the group's first
sample marks the group, so the number of groups need not be known) or from group ids
``0..K-1`` (:func:`indexed_group_losses`), which the stateful parts need: the group weights of
``dro`` and the running estimate of ``momentum > 0``. :class:`GroupObjective` holds that state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

FairLoss = Literal["gap", "gap-up", "worst", "lse", "dro"]
#: The objectives ``BAQConfig.fair_loss`` accepts; ``"gap"`` is the paper's eq. 4.
FAIR_LOSSES: tuple[str, ...] = ("gap", "gap-up", "worst", "lse", "dro")
#: The largest number of group ids ``0..K-1`` a per-group vector (DRO weights, running estimate,
#: the epoch's per-group loss) is sized for; a larger id is refused instead of allocating ``K``.
MAX_GROUPS = 65536


def check_group_count(k: int, *, what: str = "group ids") -> int:
    """``k`` (the number of group ids ``0..k-1``) if at most :data:`MAX_GROUPS`, else a
    ``ValueError`` naming the largest id and what to do (remap the groups to ``0..K-1``)."""
    if k > MAX_GROUPS:
        raise ValueError(
            f"{what}: group id {k - 1} would size a per-group vector of {k} entries (at most "
            f"MAX_GROUPS = {MAX_GROUPS}); group ids are indices 0..K-1: remap the groups to "
            "consecutive ids (e.g. fq_data's loaders, or torch.unique(g, return_inverse=True))"
        )
    return k


def _lowest(t: torch.Tensor) -> float:
    return torch.finfo(t.dtype).min


def _hi_lo(losses: torch.Tensor, present: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if present is None:
        return losses.max(), losses.min()
    hi = losses.masked_fill(~present, _lowest(losses)).max()
    lo = losses.masked_fill(~present, torch.finfo(losses.dtype).max).min()
    # no group present: 0, not +-inf (and no NaN gradient through the unselected branch)
    some = present.any()
    return torch.where(some, hi, 0.0), torch.where(some, lo, 0.0)


def gap(losses: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """``max_g L_g - min_g L_g`` over the present groups (METHOD.md eq. 4); 0 with < 2 groups.

    ``losses``: ``[M]`` group losses (nats); ``present``: ``[M]`` bool, ``None`` = all. Descent
    lowers the worst group's loss and RAISES the best group's (its coefficient is -1).
    """
    hi, lo = _hi_lo(losses, present)
    return hi - lo


def gap_up(losses: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """``max_g L_g - stopgrad(min_g L_g)``: the value of :func:`gap`, the gradient of the max only.

    Every group's coefficient is 0 or +1, so no gradient step raises a group's loss to close the gap.
    """
    hi, lo = _hi_lo(losses, present)
    return hi - lo.detach()


def worst(losses: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """``max_g L_g``: the worst present group's loss (0 with none)."""
    return _hi_lo(losses, present)[0]


def lse(losses: torch.Tensor, present: torch.Tensor | None = None, *, tau: float) -> torch.Tensor:
    """``tau * log sum_g exp(L_g / tau)`` over the present groups: the smooth worst group.

    ``max_g L_g <= lse <= max_g L_g + tau * log(G)`` for G present groups; its gradient is the
    softmax of ``L / tau`` (every group gets a share, the worst the most; all coefficients >= 0
    and summing to 1). ``tau`` in nats, > 0.
    """
    z = losses / tau
    if present is not None:
        z = torch.where(present, z, _lowest(z))
    value = tau * torch.logsumexp(z, dim=0)
    return value if present is None else torch.where(present.any(), value, 0.0)


def dro_weights(
    weights: torch.Tensor, losses: torch.Tensor, present: torch.Tensor, *, eta: float
) -> torch.Tensor:
    """One exponentiated-gradient step of online group DRO (Sagawa et al., ICLR 2020, alg. 1):

    ``q_g <- q_g * exp(eta * L_g) / sum_h q_h * exp(eta * L_h)``, with ``L_g = 0`` for a group
    absent from the step (its weight then only shrinks by the normalization, as in the paper's
    code). ``weights``: ``[K]`` on the simplex; ``losses`` ``[K]`` are taken as constants.
    """
    step = torch.where(present, losses.detach(), 0.0) * eta
    return torch.softmax(torch.log(weights) + step, dim=0)


def weighted(
    weights: torch.Tensor, losses: torch.Tensor, present: torch.Tensor | None = None
) -> torch.Tensor:
    """``sum_g q_g L_g`` over the present groups (``q``: ``[K]`` weights, constants)."""
    terms = weights.detach() * losses
    return (terms if present is None else torch.where(present, terms, 0.0)).sum()


def batch_group_losses(
    per_sample: torch.Tensor, groups: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group means of the batch without knowing the number of groups.

    ``per_sample`` ``[N]`` float, ``groups`` ``[N]`` integer ids (any values). Returns
    ``(losses [N], first [N] bool)``: ``losses[i]`` is the mean over the samples of ``i``'s group
    (an ``[N, N]`` same-group mask, ``O(N^2)``), and ``first`` marks each group's first sample,
    so ``losses[first]`` holds every present group once.
    """
    same = groups[:, None] == groups[None, :]
    samef = same.to(per_sample.dtype)
    losses = (samef @ per_sample) / samef.sum(dim=1)
    first = ~torch.tril(same, diagonal=-1).any(dim=1)
    return losses, first


def indexed_group_losses(
    per_sample: torch.Tensor, groups: torch.Tensor, n_groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(losses [K], counts [K])``: mean and number of the samples of each group id ``0..K-1``.

    A group without samples has loss 0 and count 0; ids outside ``0..K-1`` are not counted.
    """
    ids = torch.arange(n_groups, device=groups.device)
    onehot = (groups[:, None] == ids[None, :]).to(per_sample.dtype)  # [N, K]
    counts = onehot.sum(dim=0)
    return (onehot.T @ per_sample) / counts.clamp_min(1), counts


def group_gap(per_sample: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``max_g mean_{i in g} v_i - min_g mean_{i in g} v_i`` over the groups present; 0 if < 2.

    ``per_sample`` is ``[N]`` float, ``groups`` ``[N]`` integer ids (any values). Each sample gets
    its group's mean through an ``[N, N]`` same-group mask, so the number of groups need not be
    known and absent groups never enter; cost ``O(N^2)``, negligible for training batch sizes.
    """
    if per_sample.shape[0] == 0:
        return per_sample.sum()
    return gap(batch_group_losses(per_sample, groups)[0])


#: The objectives that need no state: ``f(losses [M], present [M], tau) -> scalar``.
_STATELESS: dict[str, Callable[[torch.Tensor, torch.Tensor | None, float], torch.Tensor]] = {
    "gap": lambda v, p, tau: gap(v, p),
    "gap-up": lambda v, p, tau: gap_up(v, p),
    "worst": lambda v, p, tau: worst(v, p),
    "lse": lambda v, p, tau: lse(v, p, tau=tau),
}


def _check_objective(name: str, tau: float, eta: float, momentum: float) -> None:
    if name not in FAIR_LOSSES:
        raise ValueError(
            f"fair_loss must be one of {', '.join(map(repr, FAIR_LOSSES))}; got {name!r}"
        )
    for field, value, ok, allowed in (
        ("fair_tau", tau, tau > 0, "> 0"),
        ("dro_eta", eta, eta >= 0, ">= 0"),
        ("fair_ema", momentum, 0 <= momentum < 1, "in [0, 1)"),
    ):
        if not ok:
            raise ValueError(f"{field} must be {allowed}; got {value!r}")


class GroupObjective:
    """``L_fair`` of one training run: the objective, its parameters and its state across steps.

    Call it on a batch's per-sample losses ``[N]`` and group ids ``[N]`` (the whole batch, every
    process's share gathered) for a differentiable scalar in nats.

    Args:
        name: one of :data:`FAIR_LOSSES`.
        tau: temperature of ``"lse"`` (nats).
        eta: step size of ``"dro"``'s exponentiated-gradient update (per nat of group loss).
        momentum: ``m`` of the running group-loss estimate ``R_g <- m R_g + (1 - m) L_g`` (a
            group's first batch sets ``R_g = L_g``; a batch without the group leaves it); 0 uses
            the batch's own group losses. With ``m > 0`` an objective sees ``R_g`` for every group
            seen so far (value) and the batch's ``L_g`` of the groups present (gradient: the
            estimate is ``stopgrad(R_g) + L_g - stopgrad(L_g)``, so ``lambda_fair`` keeps its scale).
        n_groups: number of group ids ``0..K-1`` of the stateful parts (``dro``, ``momentum > 0``).
            ``None``: grown to the largest id seen, one host sync (two integers) per call; given:
            no sync, and an id outside ``0..K-1`` is recorded on the device and raised by
            :meth:`check`.
        device: where the state lives.
    """

    def __init__(
        self,
        name: str = "gap",
        *,
        tau: float = 0.1,
        eta: float = 0.01,
        momentum: float = 0.0,
        n_groups: int | None = None,
        device: torch.device | str | None = None,
    ):
        _check_objective(name, tau, eta, momentum)
        if n_groups is not None and (
            isinstance(n_groups, bool) or not isinstance(n_groups, int) or n_groups < 1
        ):
            raise ValueError(f"n_groups must be None or an int >= 1; got {n_groups!r}")
        if n_groups is not None:
            check_group_count(n_groups, what="n_groups")
        self.name, self.tau, self.eta, self.momentum = name, float(tau), float(eta), float(momentum)
        self.fixed_groups = n_groups is not None
        k = n_groups or 0
        self.weights = torch.full((k,), 1.0 / max(k, 1), device=device)  # dro's q
        self.running = torch.zeros(k, device=device)  # R_g
        self.seen = torch.zeros(k, dtype=torch.bool, device=device)
        self.bad_ids = torch.zeros((), dtype=torch.bool, device=device)

    @property
    def stateful(self) -> bool:
        """Whether the objective keeps state across steps (``dro`` or ``momentum > 0``)."""
        return self.name == "dro" or self.momentum > 0

    @property
    def n_groups(self) -> int:
        return int(self.weights.shape[0])

    def __call__(self, per_sample: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        if per_sample.shape[0] == 0:
            return per_sample.sum()
        if not self.stateful:
            if self.name == "gap":
                return group_gap(per_sample, groups)  # eq. 4 exactly as it always was
            losses, first = batch_group_losses(per_sample, groups)
            return _STATELESS[self.name](losses, first, self.tau)
        self._fit_groups(groups)
        losses, counts = indexed_group_losses(per_sample, groups, self.n_groups)
        present = counts > 0
        if self.momentum > 0:
            losses, present = self._smoothed(losses, present)
        if self.name == "dro":
            self.weights = dro_weights(self.weights, losses, present, eta=self.eta)
            return weighted(self.weights, losses, present)
        return _STATELESS[self.name](losses, present, self.tau)

    def _smoothed(
        self, losses: torch.Tensor, present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m, now = self.momentum, losses.detach()
        updated = torch.where(self.seen, m * self.running + (1 - m) * now, now)
        self.running = torch.where(present, updated, self.running)
        self.seen = self.seen | present
        estimate = self.running + torch.where(present, losses - now, 0.0)
        return estimate, self.seen

    def _fit_groups(self, groups: torch.Tensor) -> None:
        if self.fixed_groups:
            self.bad_ids = self.bad_ids | ((groups < 0) | (groups >= self.n_groups)).any()
            return
        lo, hi = torch.stack([groups.min(), groups.max()]).tolist()
        if lo < 0:
            raise ValueError(f"group ids must be >= 0 for fair_loss={self.name!r}; got {lo}")
        if hi >= self.n_groups:
            self._grow(check_group_count(int(hi) + 1, what=f"fair_loss={self.name!r}"))

    def _grow(self, k: int) -> None:
        """New groups join with weight ``1/k``, the others keep their ratios (sum stays 1)."""
        old, dev = self.n_groups, self.weights.device
        scale = old / k if old else 0.0
        self.weights = torch.cat(
            [self.weights * scale, torch.full((k - old,), 1.0 / k, device=dev)]
        )
        self.running = torch.cat([self.running, torch.zeros(k - old, device=dev)])
        self.seen = torch.cat([self.seen, torch.zeros(k - old, dtype=torch.bool, device=dev)])

    def check(self) -> None:
        """Raise ``ValueError`` if a group id fell outside ``0..n_groups-1`` (one host sync)."""
        if bool(self.bad_ids):
            raise ValueError(
                f"a batch held a group id outside 0..{self.n_groups - 1} (n_groups={self.n_groups});"
                " give the number of groups of the data, or n_groups=None to grow on first sight"
            )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The state across steps (``dro`` weights, running estimate), CPU tensors."""
        return {
            "weights": self.weights.detach().cpu(),
            "running": self.running.detach().cpu(),
            "seen": self.seen.detach().cpu(),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict` (on this objective's device)."""
        dev = self.weights.device
        k = int(state["weights"].shape[0])
        if self.fixed_groups and k != self.n_groups:
            raise ValueError(f"checkpoint holds {k} group weights; n_groups is {self.n_groups}")
        self.weights = state["weights"].to(dev)
        self.running = state["running"].to(dev)
        self.seen = state["seen"].to(dev)


def _check_inputs(logits: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(
            f"logits must be a float [N, C] tensor; got {getattr(logits, 'shape', logits)!r}"
        )
    n = logits.shape[0]
    for name, t in (("targets", targets), ("groups", groups)):
        if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError(
                f"{name} must be an integer torch.Tensor; got {getattr(t, 'dtype', type(t))}"
            )
        if tuple(t.shape) != (n,):
            raise ValueError(f"{name} must have shape ({n},) to match logits; got {tuple(t.shape)}")


def fairness_penalty(
    logits: torch.Tensor,
    targets: torch.Tensor,
    groups: torch.Tensor,
    fair_loss: FairLoss = "gap",
    *,
    tau: float = 0.1,
) -> torch.Tensor:
    """``L_fair`` of one batch, a differentiable scalar (nats).

    Args:
        logits: ``[N, C]`` float class scores.
        targets: ``[N]`` int class indices.
        groups: ``[N]`` int sensitive-group ids.
        fair_loss: ``"gap"`` (METHOD.md eq. 4: ``max_g L_g - min_g L_g``, 0 with < 2 groups),
            ``"gap-up"``, ``"worst"`` or ``"lse"`` (temperature ``tau``); ``"dro"`` keeps weights
            across steps: use :class:`GroupObjective`.

    ``L_g`` is the mean cross-entropy over the samples of group ``g`` in the batch, over the
    groups present.

    >>> import torch
    >>> from fq_baq import fairness_penalty
    >>> logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    >>> pen = fairness_penalty(logits, torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 1, 1]))
    >>> round(float(pen), 4)  # log 2 - log(1 + e^-2)
    0.5662
    """
    _check_inputs(logits, targets, groups)
    if fair_loss == "dro":
        raise ValueError("fair_loss='dro' keeps group weights across steps; use GroupObjective")
    objective = GroupObjective(fair_loss, tau=tau)
    return objective(F.cross_entropy(logits.float(), targets.long(), reduction="none"), groups)
