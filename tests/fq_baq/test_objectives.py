"""The fairness objectives of ``BAQConfig.fair_loss`` (issue 19): each against a hand computation
(value and gradient with respect to the per-sample losses), the sign of every group's coefficient
(``gap-up`` never raises a group's loss), DRO's exponentiated-gradient weights step by step, the
running estimate and the checkpoint. Two processes against one: tests/fq_bench/
test_grid_accelerate.py (one launch for every objective)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fq_baq import (
    FAIR_LOSSES,
    BAQConfig,
    GroupObjective,
    QATTrainer,
    fairness_penalty,
)
from fq_quant import BitAssignment, Granularity, ScopeLayout
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

# a constructed batch: group 0 = {1, 3} (mean 2), group 1 = {2.5} (mean 2.5),
# group 2 = {0.5, 0.7, 0.3} (mean 0.5); group 3 never appears
CE = [1.0, 3.0, 2.5, 0.5, 0.7, 0.3]
GROUPS = [0, 0, 1, 2, 2, 2]
MEANS = {0: 2.0, 1: 2.5, 2: 0.5}
SIZE = {0: 2, 1: 1, 2: 3}


def _value_and_grad(objective: GroupObjective) -> tuple[float, list[float]]:
    ce = torch.tensor(CE, dtype=torch.float64, requires_grad=True)
    value = objective(ce, torch.tensor(GROUPS))
    (grad,) = torch.autograd.grad(value, ce)
    return float(value.detach()), grad.tolist()


def _per_sample(coef: dict[int, float]) -> list[float]:
    """d L_fair / d ce_i = coef[g(i)] / n_g(i): a group's mean spreads its coefficient evenly."""
    return [coef.get(g, 0.0) / SIZE[g] for g in GROUPS]


def _hand(name: str, tau: float = 0.5) -> tuple[float, dict[int, float]]:
    """The value and each group's coefficient ``d L_fair / d L_g``, worked by hand."""
    if name == "gap":
        return 2.5 - 0.5, {1: 1.0, 2: -1.0}
    if name == "gap-up":
        return 2.5 - 0.5, {1: 1.0}
    if name == "worst":
        return 2.5, {1: 1.0}
    z = {g: math.exp(v / tau) for g, v in MEANS.items()}
    total = sum(z.values())
    return tau * math.log(total), {g: z[g] / total for g in MEANS}


@pytest.mark.parametrize("name", ["gap", "gap-up", "worst", "lse"])
@pytest.mark.parametrize("n_groups", [None, "indexed"])
def test_stateless_objectives_by_hand(name: str, n_groups: str | None) -> None:
    # "indexed": the same objective through the group-id path (a running estimate that keeps
    # nothing yet, momentum tiny, first batch: the estimate is the batch's own group loss)
    kw = {} if n_groups is None else {"momentum": 1e-9, "n_groups": 4}
    value, grad = _value_and_grad(GroupObjective(name, tau=0.5, **kw))
    want, coef = _hand(name)
    assert value == pytest.approx(want, rel=1e-12)
    assert grad == pytest.approx(_per_sample(coef), rel=1e-9, abs=1e-12)


def test_fairness_penalty_takes_the_objective() -> None:
    # logits whose cross-entropies are the CE above: class 0 logit 0, class 1 logit ce + log(e^ce-1)
    ce = torch.tensor(CE, dtype=torch.float64)
    logits = torch.stack([torch.zeros(6, dtype=torch.float64), torch.log(torch.expm1(ce))], 1)
    targets = torch.zeros(6, dtype=torch.long)
    for name in ("gap", "gap-up", "worst", "lse"):
        got = fairness_penalty(logits, targets, torch.tensor(GROUPS), name, tau=0.5)
        assert float(got.detach()) == pytest.approx(_hand(name)[0], rel=1e-5)
    with pytest.raises(ValueError, match="GroupObjective"):
        fairness_penalty(logits, targets, torch.tensor(GROUPS), "dro")


def test_dro_by_hand() -> None:
    eta = 0.3
    value, grad = _value_and_grad(GroupObjective("dro", eta=eta, n_groups=4))
    # q starts uniform over the 4 ids; one step: q_g ~ exp(eta L_g), L_3 = 0 (absent)
    raw = [math.exp(eta * MEANS.get(g, 0.0)) for g in range(4)]
    q = [r / sum(raw) for r in raw]
    assert value == pytest.approx(sum(q[g] * MEANS[g] for g in MEANS), rel=1e-12)
    assert grad == pytest.approx(_per_sample({g: q[g] for g in MEANS}), rel=1e-9)


@pytest.mark.parametrize("name", FAIR_LOSSES)
def test_no_gradient_raises_a_group_loss_except_gaps_min(name: str) -> None:
    """``gap-up``, ``worst``, ``lse`` and ``dro`` give every sample a coefficient >= 0 (so a
    descent step never raises a group's loss to shrink the objective); the paper's ``gap`` does
    not: its best group gets -1."""
    gen = torch.Generator().manual_seed(0)
    negative = 0
    objective = GroupObjective(name, tau=0.2, eta=0.5, n_groups=5 if name == "dro" else None)
    for _ in range(50):
        ce = (torch.rand(24, generator=gen, dtype=torch.float64) * 3).requires_grad_()
        groups = torch.randint(0, 5, (24,), generator=gen)
        (grad,) = torch.autograd.grad(objective(ce, groups), ce)
        negative += int((grad < 0).sum())
    assert (negative > 0) == (name == "gap")


def test_dro_weights_follow_exponentiated_gradient_step_by_step() -> None:
    eta, k = 0.7, 4
    objective = GroupObjective("dro", eta=eta)  # n_groups=None: grows on first sight
    gen = torch.Generator().manual_seed(1)
    q = np.zeros(0)
    batches = [torch.tensor([0, 1, 1, 0])]  # ids 0..1 first, then up to 3; group 2 often absent
    batches += [torch.randint(0, k, (10,), generator=gen) for _ in range(6)]
    batches[3] = torch.tensor([3, 3, 0, 1])
    for groups in batches:
        ce = torch.rand(groups.shape[0], generator=gen, dtype=torch.float64) * 2
        k_now = int(groups.max()) + 1
        if k_now > q.size:  # the documented growth rule: new ids join at 1/K, the rest rescaled
            q = np.concatenate([q * q.size / k_now, np.full(k_now - q.size, 1 / k_now)])
        losses = np.array(
            [ce[groups == g].mean().item() if (groups == g).any() else 0.0 for g in range(q.size)]
        )
        value = objective(ce, groups)
        q = q * np.exp(eta * losses)
        q = q / q.sum()
        np.testing.assert_allclose(objective.weights.numpy(), q, rtol=1e-6, atol=1e-12)
        assert float(value.detach()) == pytest.approx(float((q * losses).sum()), rel=1e-6)
    assert q.size == k and abs(q.sum() - 1) < 1e-12


def test_running_estimate_value_and_gradient() -> None:
    m = 0.75
    objective = GroupObjective("worst", momentum=m, n_groups=3)
    first = torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)
    objective(first, torch.tensor([0, 0, 1]))  # R = [3, 1, -]
    ce = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    value = objective(ce, torch.tensor([1, 2, 2]))  # batch: L_1 = 1, L_2 = 1.25 (first sight)
    # R_0 = 3 (absent, kept), R_1 = 0.75 * 1 + 0.25 * 1 = 1, R_2 = 1.25: the worst is group 0,
    # which this batch does not hold: the value is its estimate, no gradient reaches the batch
    assert float(value.detach()) == pytest.approx(3.0)
    assert torch.autograd.grad(value, ce)[0].tolist() == [0.0, 0.0, 0.0]
    ce = torch.tensor([9.0, 1.0], dtype=torch.float64, requires_grad=True)
    value = objective(ce, torch.tensor([0, 1]))  # R_0 = 0.75 * 3 + 0.25 * 9 = 4.5
    assert float(value.detach()) == pytest.approx(4.5)
    assert torch.autograd.grad(value, ce)[0].tolist() == [1.0, 0.0]  # the batch's own L_0


def test_out_of_range_group_is_raised_at_the_check() -> None:
    objective = GroupObjective("dro", n_groups=2)
    objective(torch.ones(3), torch.tensor([0, 1, 2]))  # no sync here: recorded on the device
    with pytest.raises(ValueError, match="outside 0..1"):
        objective.check()
    with pytest.raises(ValueError, match=">= 0"):
        GroupObjective("dro")(torch.ones(2), torch.tensor([0, -1]))


def test_config_rejects_bad_objectives() -> None:
    for kw, match in (
        ({"fair_loss": "max"}, "fair_loss must be one of"),
        ({"fair_tau": 0.0}, "fair_tau"),
        ({"dro_eta": -1.0}, "dro_eta"),
        ({"fair_ema": 1.0}, "fair_ema"),
        ({"n_groups": 0}, "n_groups"),
    ):
        with pytest.raises(ValueError, match=match):
            BAQConfig(**kw)
    assert BAQConfig().fair_loss == "gap"  # the paper's eq. 4 stays the default


def _data() -> TensorDataset:
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(64, 6, generator=gen), torch.randint(0, 3, (64,), generator=gen)
    return TensorDataset(x, y, torch.randint(0, 3, (64,), generator=gen))


def _fit(tmp: Path | None, epochs: int, **kw) -> tuple[nn.Module, dict]:
    from fq_baq import _checkpoint

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    cfg = BAQConfig(epochs=epochs, lr=3e-2, lambda_fair=1.0, cpu=True, seed=2, **kw)
    # QAT at 8 bits, not FP32Trainer: the FP32 reference trains without the fairness term
    bits = BitAssignment.uniform(ScopeLayout.from_model(model, Granularity.CHANNEL), 8)
    res = QATTrainer(model, bits, cfg).fit(DataLoader(_data(), batch_size=16), checkpoint_dir=tmp)
    return res.model, (_checkpoint.load(tmp) if tmp is not None else {})


def test_dro_weights_saved_and_restored_by_the_checkpoint(tmp_path: Path) -> None:
    kw = {"fair_loss": "dro", "dro_eta": 2.0, "fair_ema": 0.5}
    full, ckpt_full = _fit(tmp_path / "full", 2, **kw)
    _fit(tmp_path / "cut", 1, **kw)  # "killed" after epoch 1
    resumed, ckpt = _fit(tmp_path / "cut", 2, **kw)
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    q = ckpt["fair_state"]["weights"]
    assert torch.equal(q, ckpt_full["fair_state"]["weights"])
    assert q.shape == (3,) and abs(float(q.sum()) - 1) < 1e-6 and float(q.max()) > 0.4  # moved
    # and the state matters: a resume that forgot it would not reach the same weights
    _fit(tmp_path / "forgot", 1, **kw)
    state = torch.load(tmp_path / "forgot" / "last.pt", weights_only=True)
    del state["fair_state"]
    torch.save(state, tmp_path / "forgot" / "last.pt")
    forgot, _ = _fit(tmp_path / "forgot", 2, **kw)
    assert any(
        not torch.equal(a, b) for a, b in zip(full.parameters(), forgot.parameters(), strict=True)
    )


def test_checkpoint_from_before_the_objectives_resumes(tmp_path: Path) -> None:
    """A checkpoint whose config lacks the new fields reads them as their defaults."""
    _fit(tmp_path, 1)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    for k in ("fair_loss", "fair_tau", "dro_eta", "fair_ema", "n_groups"):
        del state["config"][k]
    del state["fair_state"]
    torch.save(state, tmp_path / "last.pt")
    _fit(tmp_path, 2)


def test_gap_up_and_worst_have_the_same_gradient_everywhere() -> None:
    """``stopgrad(min)`` is a constant: ``gap-up`` and ``worst`` differ in value, never in
    gradient, so they train identical models (the 5-seed CPU sweep: bit-identical predictions in
    all 30 pairs of cells). Random batches, with and without a running estimate."""
    gen = torch.Generator().manual_seed(0)
    for kw in ({}, {"momentum": 0.9, "n_groups": 6}):
        up, wo = GroupObjective("gap-up", **kw), GroupObjective("worst", **kw)
        for _ in range(20):
            ce = torch.rand(32, generator=gen, dtype=torch.float64) * 3
            groups = torch.randint(0, 6, (32,), generator=gen)
            grads = []
            for objective in (up, wo):
                x = ce.clone().requires_grad_(True)
                (g,) = torch.autograd.grad(objective(x, groups), x)
                grads.append(g)
            assert torch.equal(grads[0], grads[1])
