"""Tests of fq_baq: gradient path to the bit logits, warm start, budget, fairness, QAT, resume."""

from __future__ import annotations

import copy
import dataclasses
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from fq_baq import (
    BAQConfig,
    BAQTrainer,
    FP32Trainer,
    LearnableBitsQuantizer,
    QATTrainer,
    attach_learnable_bits,
    fairness_penalty,
    learned_assignment,
    project_to_budget,
    theta_from_bits,
)
from fq_quant import (
    BitAssignment,
    Granularity,
    ScopeLayout,
    current_assignment,
    fake_quantize,
    is_quantized,
    quantize_model,
    round_ste,
    scope_view,
)
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

CPU = dict(cpu=True)


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def tiny_data(n: int = 48, seed: int = 1) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 6, 6, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    grp = torch.randint(0, 3, (n,), generator=g)
    return TensorDataset(x, y, grp)


def tiny_loader(**kw) -> DataLoader:
    return DataLoader(tiny_data(), batch_size=16, shuffle=True, **kw)


def random_assignment(
    model: nn.Module, lo: int, hi: int, seed: int = 0, g="channel"
) -> BitAssignment:
    layout = ScopeLayout.from_model(model, g)
    gen = torch.Generator().manual_seed(seed)
    return BitAssignment(
        layout.granularity,
        {
            n: torch.randint(lo, hi + 1, s.scope_shape, generator=gen)
            for n, s in layout.layers.items()
        },
    )


# --- 1. gradient reaches theta through the task loss ------------------------------------------


@pytest.mark.parametrize("granularity", ["tensor", "channel", "param"])
def test_task_loss_gives_theta_gradient(granularity):
    model = tiny_model()
    qs = attach_learnable_bits(
        model,
        bit_min=2,
        bit_max=8,
        granularity=granularity,
        warm_start=random_assignment(model, 2, 8, g=granularity),
    )
    x, y, _ = tiny_data()[:16]
    F.cross_entropy(model(x), y).backward()  # lambda_bits = 0: the task loss alone
    for name, q in qs.items():
        assert q.theta.grad is not None, name
        assert q.theta.grad.abs().sum() > 0, name


def test_detached_public_variant_gives_no_theta_gradient_but_ours_does():
    """The public defect: ``w + (w_hat - w).detach()`` cuts the bits out of the graph."""
    torch.manual_seed(0)
    w = torch.randn(5, 7, requires_grad=True)
    theta = torch.full((5,), 0.3, requires_grad=True)
    bits = 2 + 6 * torch.tanh(theta).abs()
    q = LearnableBitsQuantizer(
        theta.detach(), bit_min=2, bit_max=8, granularity="channel", weight_shape=(5, 7)
    )
    target = torch.randn(5, 7)

    w_hat = fake_quantize(w, round_ste(bits), "channel", check=False)
    detached = w + (w_hat - w).detach()
    ((detached - target) ** 2).sum().backward()
    assert theta.grad is None or torch.count_nonzero(theta.grad) == 0

    ((q(w) - target) ** 2).sum().backward()
    assert torch.count_nonzero(q.theta.grad) == 5


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_fused_quantizer_matches_autograd_reference(granularity):
    """The fused kernel equals the autograd graph of ``s(b) * round_ste(w / s(b))`` (float64).

    ``fake_quantize``'s graph path has the same value, but its ``clamp`` splits the gradient
    wherever ``round(w / s)`` lands exactly on ``+-Q_b`` (torch's tie rule); the clamp never binds
    (``|w| <= max|w|``), so we differentiate it as the identity.
    """
    torch.manual_seed(3)
    shape = (6, 4, 3, 3)
    g = Granularity.parse(granularity)
    dims = (0, 1, 2, 3) if g is Granularity.TENSOR else (1, 2, 3)
    w1 = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w2 = w1.detach().clone().requires_grad_(True)
    theta = torch.randn(g.scope_shape(shape))
    q = LearnableBitsQuantizer(theta, bit_min=2, bit_max=8, granularity=g, weight_shape=shape)
    theta_ref = theta.clone().requires_grad_(True)
    bits_ref = scope_view(round_ste(2 + 6 * torch.tanh(theta_ref).abs()), shape, g).double()
    s = w2.detach().abs().amax(dim=dims, keepdim=True) / (torch.exp2(bits_ref - 1) - 1)
    ref = s * round_ste(w2 / s)
    out1 = q(w1)
    assert torch.equal(out1, ref)
    assert torch.equal(
        out1,
        fake_quantize(
            w1.detach(), bits_ref.reshape(g.scope_shape(shape)).detach().to(torch.uint8), g
        ),
    )
    upstream = torch.randn(shape, dtype=torch.float64)
    (out1 * upstream).sum().backward()
    (ref * upstream).sum().backward()
    assert torch.equal(w1.grad, upstream)  # the STE identity of METHOD.md section 2, exactly
    torch.testing.assert_close(q.theta.grad, theta_ref.grad, rtol=1e-5, atol=1e-7)


def test_theta_gradient_by_hand():
    """dL/db = sum_scope g * (w - w_hat) * ln2 * (Q + 1) / Q, times d b_cont / d theta (float64)."""
    torch.manual_seed(4)
    w = torch.randn(3, 5, dtype=torch.float64)
    theta = torch.tensor([0.2, -0.7, 1.1])
    q = LearnableBitsQuantizer(
        theta, bit_min=2, bit_max=8, granularity="channel", weight_shape=(3, 5)
    )
    g = torch.randn(3, 5, dtype=torch.float64)
    (q(w) * g).sum().backward()
    t = theta.double()
    b = torch.round(2 + 6 * t.tanh().abs())
    big_q = 2 ** (b - 1) - 1
    s = w.abs().amax(1) / big_q
    w_hat = torch.round(w / s[:, None]) * s[:, None]
    dldb = ((g * (w - w_hat)).sum(1)) * math.log(2) * (big_q + 1) / big_q
    dbdt = 6 * torch.sign(t) * (1 - t.tanh() ** 2)
    torch.testing.assert_close(q.theta.grad.double(), dldb * dbdt, rtol=1e-5, atol=1e-8)


# --- 2. bits rise when precision matters, fall under a strong bit penalty ----------------------


def _teacher_problem():
    """Linear classifier whose float weights are the teacher: any quantization error costs loss."""
    g = torch.Generator().manual_seed(0)
    w_star = torch.randn(4, 16, generator=g) * 2
    x = torch.randn(256, 16, generator=g)
    y = (x @ w_star.T).argmax(1)
    model = nn.Sequential(nn.Linear(16, 4, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(w_star)
    loader = DataLoader(
        TensorDataset(x, y, torch.zeros(256, dtype=torch.long)), batch_size=32, shuffle=True
    )
    return model, loader, x, y


def test_bits_rise_from_low_warm_start_when_precision_matters():
    model, loader, x, y = _teacher_problem()
    layout = ScopeLayout.from_model(model, "channel")
    two_bit = quantize_model(copy.deepcopy(model), BitAssignment.uniform(layout, 2))
    with torch.no_grad():  # the premise: 2 bits is clearly worse than float here
        assert F.cross_entropy(two_bit(x), y) > 2 * F.cross_entropy(model(x), y)
    cfg = BAQConfig(lr=1e-8, lr_bits=0.1, lambda_bits=0.0, lambda_fair=0.0, epochs=3, **CPU)
    res = BAQTrainer(model, cfg, BitAssignment.uniform(layout, 2)).fit(loader)
    assert res.history[-1].avg_bits >= 4.0
    assert res.assignment.avg_bits(layout) >= 4.0
    assert res.history[-1].task_loss < 0.5 * res.history[0].task_loss


def test_bits_fall_toward_bit_min_with_large_lambda_bits():
    model, loader, _, _ = _teacher_problem()
    cfg = BAQConfig(lr=1e-8, lr_bits=0.05, lambda_bits=10.0, lambda_fair=0.0, epochs=6, **CPU)
    res = BAQTrainer(model, cfg).fit(loader)  # starts at bit_max = 8
    assert res.history[0].avg_bits <= 8.0
    assert min(h.avg_bits for h in res.history) == 2.0
    assert res.history[-1].avg_bits <= 3.0


# --- 3. warm start reproduces the allocation exactly ------------------------------------------


def test_warm_start_rounds_back_for_every_range_and_value():
    for lo in range(2, 17):
        for hi in range(lo, 17):
            bits = torch.arange(lo, hi + 1)
            theta = theta_from_bits(bits, lo, hi)
            b_cont = lo + (hi - lo) * torch.tanh(theta).abs()
            assert torch.equal(torch.round(b_cont).long(), bits), (lo, hi)
            # tanh keeps a usable gradient: |tanh| <= 0.95 (METHOD.md's clip) up to a span of 8
            # bits, then the clip narrows so endpoints start 0.4 bits inside (2..16: 0.971)
            r_max = 0.95 if hi - lo <= 8 else 1 - 0.4 / (hi - lo)
            assert bool((torch.tanh(theta).abs() <= r_max + 1e-6).all()), (lo, hi)


@pytest.mark.parametrize("granularity", ["tensor", "channel", "param"])
def test_warm_start_first_forward_equals_quantize_model(granularity):
    model = tiny_model()
    ref = copy.deepcopy(model)
    warm = random_assignment(model, 2, 8, seed=5, g=granularity)
    attach_learnable_bits(model, bit_min=2, bit_max=8, granularity=granularity, warm_start=warm)
    assert learned_assignment(model) == warm
    quantize_model(ref, warm)
    x = tiny_data()[:16][0]
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_no_warm_start_starts_at_bit_max():
    model = tiny_model()
    attach_learnable_bits(model, bit_min=3, bit_max=7, granularity="channel")
    hist = learned_assignment(model).histogram()
    assert list(hist) == [7]


# --- 4. target_avg_bits -----------------------------------------------------------------------


@pytest.mark.parametrize("target", [3.3, 6.71])
def test_target_avg_bits_met_within_005(target):
    model = tiny_model()
    cfg = BAQConfig(epochs=1, lr=1e-3, lr_bits=1e-2, target_avg_bits=target, **CPU)
    res = BAQTrainer(model, cfg, random_assignment(model, 2, 8)).fit(tiny_loader())
    layout = ScopeLayout.from_model(res.model, "channel")
    assert abs(res.assignment.avg_bits(layout) - target) <= 0.05
    assert current_assignment(res.model) == res.assignment


@given(
    st.lists(st.floats(2.0, 8.0), min_size=1, max_size=40),
    st.lists(st.integers(1, 50), min_size=40, max_size=40),
    st.floats(2.0, 8.0),
)
def test_project_to_budget_is_closest_reachable_by_one_shift(b_cont, weights, target):
    b = torch.tensor(b_cont, dtype=torch.float64)
    w = torch.tensor(weights[: len(b_cont)], dtype=torch.float64)
    out = project_to_budget(b, w, target, bit_min=2, bit_max=8)
    assert out.dtype == torch.int64 and bool(((out >= 2) & (out <= 8)).all())
    avg = float((out * w).sum() / w.sum())
    # every scope moved in the same direction, by at most what the common shift implies
    r = torch.round(b)
    moved = out - r
    assert bool((moved >= 0).all()) or bool((moved <= 0).all())
    # closest to the target up to half of one scope's parameter share
    assert abs(avg - target) <= float(w.max() / w.sum()) / 2 + 1e-9 or avg in (2.0, 8.0)


def test_project_to_budget_splits_ties_between_identical_scopes():
    b = torch.full((100,), 5.0, dtype=torch.float64)  # untrained: all scopes share one logit
    out = project_to_budget(b, torch.ones(100), 4.3, bit_min=2, bit_max=8)
    assert float(out.double().mean()) == pytest.approx(4.3)


# --- 5. fairness penalty ----------------------------------------------------------------------


def test_fairness_penalty_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(12, 4, dtype=torch.float64)
    targets = torch.randint(0, 4, (12,))
    groups = torch.tensor([5, 5, -1, 7, 7, 7, -1, 5, 5, 7, -1, 5])  # arbitrary ids
    got = fairness_penalty(logits, targets, groups)
    losses = {}
    for gid in (5, -1, 7):  # by hand: -log softmax at the target, averaged per group
        idx = [i for i in range(12) if int(groups[i]) == gid]
        ce = [-(logits[i, targets[i]] - torch.logsumexp(logits[i], 0)) for i in idx]
        losses[gid] = float(sum(ce) / len(ce))
    expected = max(losses.values()) - min(losses.values())
    assert float(got) == pytest.approx(expected, rel=1e-6)
    assert expected > 0


def test_fairness_penalty_one_group_is_zero_and_differentiable():
    logits = torch.randn(8, 3, requires_grad=True)
    p = fairness_penalty(logits, torch.randint(0, 3, (8,)), torch.full((8,), 2))
    assert float(p.detach()) == 0.0
    p.backward()
    assert logits.grad is not None


def test_fairness_penalty_bad_input():
    with pytest.raises(TypeError, match="groups"):
        fairness_penalty(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.zeros(4))
    with pytest.raises(ValueError, match="targets"):
        fairness_penalty(
            torch.randn(4, 3), torch.zeros(5, dtype=torch.long), torch.zeros(4, dtype=torch.long)
        )


# --- 6. QAT never changes bits; FP32 trainer --------------------------------------------------


def test_qat_trainer_never_changes_bits():
    model = tiny_model()
    before = copy.deepcopy(model)
    assignment = random_assignment(model, 2, 8, seed=2)
    res = QATTrainer(model, assignment, BAQConfig(epochs=2, lr=1e-2, **CPU)).fit(tiny_loader())
    assert res.assignment == assignment
    assert current_assignment(res.model) == assignment
    assert all(h.bit_histogram == assignment.histogram() for h in res.history)
    assert not torch.equal(  # the weights did train
        res.model[0].parametrizations.weight.original, before[0].weight
    )


def test_fp32_trainer_plain_model_and_rejects_quantized():
    res = FP32Trainer(tiny_model(), BAQConfig(epochs=1, lr=1e-3, **CPU)).fit(tiny_loader())
    assert res.assignment is None and res.history[0].avg_bits is None
    q = quantize_model(tiny_model(), random_assignment(tiny_model(), 2, 8))
    with pytest.raises(ValueError, match="strip_quantization"):
        FP32Trainer(q, BAQConfig(**CPU))


def test_fp32_trainer_trains_without_the_fairness_term():
    # BAQConfig's default lambda_fair=0.5 must not leak into the FP32 reference: the loss is the
    # task's alone, so the result equals an explicit lambda_fair=0 run and needs no groups
    cfg = BAQConfig(epochs=1, lr=1e-2, seed=4, **CPU)
    assert cfg.lambda_fair == 0.5
    trainer = FP32Trainer(tiny_model(), cfg)
    assert trainer.config.lambda_fair == 0.0
    a = trainer.fit(tiny_loader()).model
    b = FP32Trainer(tiny_model(), dataclasses.replace(cfg, lambda_fair=0.0)).fit(tiny_loader())
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.model.parameters(), strict=True))
    x, y, _ = tiny_data().tensors
    res = FP32Trainer(tiny_model(), cfg).fit(DataLoader(TensorDataset(x, y), batch_size=16))
    assert len(res.history) == 1  # (image, label) batches: no groups needed


@pytest.mark.parametrize("kind", ["fp32", "qat", "baq"])
def test_trainers_leave_the_given_model_untouched_unless_inplace(kind):
    def trainer(model, **kw):
        cfg = BAQConfig(epochs=1, lr=1e-2, lambda_fair=0.0, **CPU)
        if kind == "fp32":
            return FP32Trainer(model, cfg, **kw)
        if kind == "qat":
            return QATTrainer(model, random_assignment(model, 2, 8), cfg, **kw)
        return BAQTrainer(model, cfg, **kw)

    model = tiny_model()
    before = copy.deepcopy(model.state_dict())
    res = trainer(model).fit(tiny_loader())
    assert res.model is not model
    assert not is_quantized(model)  # the FP32 model is still there
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert set(model.state_dict()) == set(before)
    # inplace=True: the given model itself is trained (and, but for FP32, quantized)
    same = tiny_model()
    res2 = trainer(same, inplace=True).fit(tiny_loader())
    assert res2.model is same and is_quantized(same) == (kind != "fp32")
    assert all(
        torch.equal(a, b)
        for a, b in zip(res.model.state_dict().values(), same.state_dict().values(), strict=True)
    )  # a copy trains exactly like the original
    with pytest.raises(TypeError, match="inplace must be a bool"):
        trainer(tiny_model(), inplace="yes")


# --- 7. determinism and resume ----------------------------------------------------------------


def _baq_run(tmp_path=None, epochs=2, **loader_kw):
    model = tiny_model()
    cfg = BAQConfig(epochs=epochs, lr=1e-2, lr_bits=5e-2, seed=3, **CPU)
    trainer = BAQTrainer(model, cfg, random_assignment(model, 3, 6))
    res = trainer.fit(tiny_loader(**loader_kw), checkpoint_dir=tmp_path)
    return trainer, res


def _state(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_same_seed_same_result():
    t1, r1 = _baq_run()
    t2, r2 = _baq_run()
    s1, s2 = _state(t1), _state(t2)
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert r1.assignment == r2.assignment
    assert [h.loss for h in r1.history] == [h.loss for h in r2.history]


@pytest.mark.parametrize("generator", [False, True])
def test_resume_equals_uninterrupted(tmp_path, generator):
    kw = {"generator": torch.Generator().manual_seed(9)} if generator else {}
    t_full, r_full = _baq_run(epochs=2, **kw)
    kw = {"generator": torch.Generator().manual_seed(9)} if generator else {}
    _baq_run(tmp_path, epochs=1, **kw)  # "killed" after epoch 1
    kw = {"generator": torch.Generator().manual_seed(9)} if generator else {}
    t_res, r_res = _baq_run(tmp_path, epochs=2, **kw)
    s1, s2 = _state(t_full), _state(t_res)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert r_full.assignment == r_res.assignment
    strip = lambda h: {k: v for k, v in h.to_dict().items() if k != "seconds"}  # noqa: E731
    assert [strip(h) for h in r_full.history] == [strip(h) for h in r_res.history]
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp files left


def test_resume_rejects_other_config(tmp_path):
    _baq_run(tmp_path, epochs=1)
    model = tiny_model()
    cfg = BAQConfig(epochs=2, lr=1e-2, lr_bits=1e-3, seed=3, **CPU)
    with pytest.raises(ValueError, match="lr_bits"):
        BAQTrainer(model, cfg, random_assignment(model, 3, 6)).fit(
            tiny_loader(), checkpoint_dir=tmp_path
        )


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(bit_min=6, bit_max=4), "bit_min must be <= bit_max"),
        (dict(bit_max=17), "bit_max must be in 2..16"),
        (dict(bit_min=1), "bit_min must be in 2..16"),
        (dict(bit_reg="l1"), "bit_reg"),
        (dict(mixed_precision="fp8"), "mixed_precision"),
        (dict(target_avg_bits=9.0), "target_avg_bits"),
        (dict(lr=0.0), "lr"),
        (dict(epochs=0), "epochs"),
        (dict(granularity="row"), "granularity"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BAQConfig(**kwargs)


def test_warm_start_mismatches_are_rejected():
    model = tiny_model()
    with pytest.raises(ValueError, match="granularity"):
        BAQTrainer(model, BAQConfig(**CPU), random_assignment(tiny_model(), 2, 8, g="tensor"))
    other = nn.Sequential(nn.Conv2d(3, 5, 3), nn.Flatten(), nn.Linear(5, 3))
    with pytest.raises(ValueError, match="does not match"):
        BAQTrainer(tiny_model(), BAQConfig(**CPU), random_assignment(other, 2, 8))
    with pytest.raises(ValueError, match=r"\[bit_min, bit_max\]"):
        BAQTrainer(tiny_model(), BAQConfig(bit_min=3, **CPU), random_assignment(tiny_model(), 2, 8))


def test_batch_without_groups():
    ds = tiny_data()
    loader = DataLoader(TensorDataset(ds.tensors[0], ds.tensors[1]), batch_size=16)
    with pytest.raises(ValueError, match="lambda_fair > 0 needs sensitive groups"):
        BAQTrainer(tiny_model(), BAQConfig(epochs=1, **CPU)).fit(loader)
    res = BAQTrainer(tiny_model(), BAQConfig(epochs=1, lambda_fair=0.0, **CPU)).fit(loader)
    assert res.history[0].fair_loss == 0.0


def test_non_finite_loss_names_epoch_and_batch_and_keeps_checkpoint(tmp_path):
    from fq_baq import _checkpoint

    class Poison(torch.utils.data.Dataset):
        """Finite in epoch 1; the second batch of epoch 2 holds an inf."""

        def __init__(self):
            self.base, self.epoch = tiny_data(), 0

        def __len__(self):
            return len(self.base)

        def __getitem__(self, i):
            x, y, g = self.base[i]
            return (x * math.inf if self.epoch == 1 and 16 <= i < 32 else x), y, g

    ds = Poison()

    class Loader(DataLoader):
        def set_epoch(self, epoch):
            ds.epoch = epoch

    cfg = BAQConfig(epochs=3, lr=1e-3, **CPU)
    with pytest.raises(FloatingPointError, match=r"epoch 2, batch 1"):
        BAQTrainer(tiny_model(), cfg).fit(Loader(ds, batch_size=16), checkpoint_dir=tmp_path)
    assert _checkpoint.load(tmp_path)["epoch"] == 1


# --- accelerate integration -------------------------------------------------------------------


def test_several_trainers_with_different_precision_in_one_process():
    loader = tiny_loader()
    r1 = QATTrainer(
        tiny_model(),
        random_assignment(tiny_model(), 2, 8),
        BAQConfig(epochs=1, mixed_precision="bf16", **CPU),
    ).fit(loader)
    r2 = BAQTrainer(tiny_model(), BAQConfig(epochs=1, **CPU)).fit(loader)
    assert math.isfinite(r1.history[0].loss) and math.isfinite(r2.history[0].loss)


def test_eval_fn_history_and_dict_batches():
    ds = tiny_data()

    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            x, y, g = ds[i]
            return {"image": x, "label": y, "group": g}

    calls = []

    def eval_fn(model):
        calls.append(model.training)
        return {"acc": 0.5}

    cfg = BAQConfig(epochs=2, grad_accum_steps=2, lr_schedule="cosine", **CPU)
    res = BAQTrainer(tiny_model(), cfg).fit(DataLoader(Dicts(), batch_size=8), eval_fn=eval_fn)
    assert calls == [False, False]
    assert [h.eval for h in res.history] == [{"acc": 0.5}, {"acc": 0.5}]
    assert res.history[0].batches == 6


def test_fit_twice_on_one_trainer_is_refused():
    trainer = FP32Trainer(tiny_model(), BAQConfig(epochs=1, lambda_fair=0.0, **CPU))
    trainer.fit(tiny_loader())
    with pytest.raises(RuntimeError, match="fit already ran"):
        trainer.fit(tiny_loader())


@pytest.mark.parametrize("granularity", ["channel", "param"])
def test_training_step_makes_no_python_level_host_sync(monkeypatch, granularity):
    """CPU proxy of ``torch.cuda.set_sync_debug_mode("error")``: inside a BAQ step no tensor is
    turned into a Python value (``item``, ``bool``, ``int``, ``float``, ``tolist``, ``cpu``,
    ``numpy``), which is what forces a host sync on a GPU."""
    model = tiny_model()
    cfg = BAQConfig(target_avg_bits=4.0, granularity=granularity, **CPU)
    session = BAQTrainer(model, cfg).session()
    batch = tiny_data()[:16]
    session.step(batch)  # warm-up outside the guard (lazy optimizer state)

    def forbidden(name):
        original = getattr(torch.Tensor, name)

        def fail(self, *args, **kwargs):
            # torch.optim reads its step counter, a CPU tensor also on GPU (capturable=False):
            # no device sync there
            if sys._getframe(1).f_globals.get("__name__", "").startswith("torch.optim"):
                return original(self, *args, **kwargs)
            raise AssertionError(f"host sync via Tensor.{name} inside the training step")

        return fail

    for name in ("item", "__bool__", "__int__", "__float__", "tolist", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, forbidden(name))
    for _ in range(2):
        session.step(batch)
    monkeypatch.undo()
    session.check_finite(0)
