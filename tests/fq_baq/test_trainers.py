"""The trainers and their loop: QAT, FP32, determinism, resume, config, errors, no host sync."""

from __future__ import annotations

import copy
import dataclasses
import math
import sys

import pytest
import torch
from fq_baq import (
    BAQConfig,
    BAQTrainer,
    FP32Trainer,
    QATTrainer,
)
from fq_quant import (
    current_assignment,
    is_quantized,
    quantize_model,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

# --- QAT never changes bits; FP32 trainer --------------------------------------------------


def test_qat_trainer_never_changes_bits(tiny):
    model = tiny.model()
    before = copy.deepcopy(model)
    assignment = tiny.assignment(model, 2, 8, seed=2)
    res = QATTrainer(model, assignment, BAQConfig(epochs=2, lr=1e-2, cpu=True)).fit(tiny.loader())
    assert res.assignment == assignment
    assert current_assignment(res.model) == assignment
    assert all(h.bit_histogram == assignment.histogram() for h in res.history)
    assert not torch.equal(  # the weights did train
        res.model[0].parametrizations.weight.original, before[0].weight
    )


def test_fp32_trainer_plain_model_and_rejects_quantized(tiny):
    res = FP32Trainer(tiny.model(), BAQConfig(epochs=1, lr=1e-3, cpu=True)).fit(tiny.loader())
    assert res.assignment is None and res.history[0].avg_bits is None
    q = quantize_model(tiny.model(), tiny.assignment(tiny.model(), 2, 8))
    with pytest.raises(ValueError, match="strip_quantization"):
        FP32Trainer(q, BAQConfig(cpu=True))


# --- determinism and resume ----------------------------------------------------------------


def _baq_run(tiny, tmp_path=None, epochs=2, **loader_kw):
    model = tiny.model()
    cfg = BAQConfig(epochs=epochs, lr=1e-2, lr_bits=5e-2, seed=3, cpu=True)
    trainer = BAQTrainer(model, cfg, tiny.assignment(model, 3, 6))
    res = trainer.fit(tiny.loader(**loader_kw), checkpoint_dir=tmp_path)
    return trainer, res


def _state(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_same_seed_same_result(tiny):
    t1, r1 = _baq_run(tiny)
    t2, r2 = _baq_run(tiny)
    s1, s2 = _state(t1), _state(t2)
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert r1.assignment == r2.assignment
    assert [h.loss for h in r1.history] == [h.loss for h in r2.history]


@pytest.mark.parametrize("generator", [False, True])
def test_resume_equals_uninterrupted(tiny, tmp_path, generator):
    kw = {"generator": torch.Generator().manual_seed(9)} if generator else {}
    t_full, r_full = _baq_run(tiny, epochs=2, **kw)
    kw = {"generator": torch.Generator().manual_seed(9)} if generator else {}
    _baq_run(tiny, tmp_path, epochs=1, **kw)  # "killed" after epoch 1
    kw = {"generator": torch.Generator().manual_seed(9)} if generator else {}
    t_res, r_res = _baq_run(tiny, tmp_path, epochs=2, **kw)
    s1, s2 = _state(t_full), _state(t_res)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert r_full.assignment == r_res.assignment
    strip = lambda h: {k: v for k, v in h.to_dict().items() if k != "seconds"}  # noqa: E731
    assert [strip(h) for h in r_full.history] == [strip(h) for h in r_res.history]
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp files left


def test_resume_rejects_other_config(tiny, tmp_path):
    _baq_run(tiny, tmp_path, epochs=1)
    model = tiny.model()
    cfg = BAQConfig(epochs=2, lr=1e-2, lr_bits=1e-3, seed=3, cpu=True)
    with pytest.raises(ValueError, match="lr_bits"):
        BAQTrainer(model, cfg, tiny.assignment(model, 3, 6)).fit(
            tiny.loader(), checkpoint_dir=tmp_path
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


def test_warm_start_mismatches_are_rejected(tiny):
    model = tiny.model()
    with pytest.raises(ValueError, match="granularity"):
        BAQTrainer(model, BAQConfig(cpu=True), tiny.assignment(tiny.model(), 2, 8, g="tensor"))
    other = nn.Sequential(nn.Conv2d(3, 5, 3), nn.Flatten(), nn.Linear(5, 3))
    with pytest.raises(ValueError, match="does not match"):
        BAQTrainer(tiny.model(), BAQConfig(cpu=True), tiny.assignment(other, 2, 8))
    with pytest.raises(ValueError, match=r"\[bit_min, bit_max\]"):
        BAQTrainer(
            tiny.model(), BAQConfig(bit_min=3, cpu=True), tiny.assignment(tiny.model(), 2, 8)
        )


def test_batch_without_groups(tiny):
    ds = tiny.data()
    loader = DataLoader(TensorDataset(ds.tensors[0], ds.tensors[1]), batch_size=16)
    with pytest.raises(ValueError, match="lambda_fair > 0 needs sensitive groups"):
        BAQTrainer(tiny.model(), BAQConfig(epochs=1, cpu=True)).fit(loader)
    res = BAQTrainer(tiny.model(), BAQConfig(epochs=1, lambda_fair=0.0, cpu=True)).fit(loader)
    assert res.history[0].fair_loss == 0.0


def test_non_finite_loss_names_epoch_and_batch_and_keeps_checkpoint(tiny, tmp_path):
    from fq_baq import _checkpoint

    class Poison(torch.utils.data.Dataset):
        """Finite in epoch 1; the second batch of epoch 2 holds an inf."""

        def __init__(self):
            self.base, self.epoch = tiny.data(), 0

        def __len__(self):
            return len(self.base)

        def __getitem__(self, i):
            x, y, g = self.base[i]
            return (x * math.inf if self.epoch == 1 and 16 <= i < 32 else x), y, g

    ds = Poison()

    class Loader(DataLoader):
        def set_epoch(self, epoch):
            ds.epoch = epoch

    cfg = BAQConfig(epochs=3, lr=1e-3, cpu=True)
    with pytest.raises(FloatingPointError, match=r"epoch 2, batch 1"):
        BAQTrainer(tiny.model(), cfg).fit(Loader(ds, batch_size=16), checkpoint_dir=tmp_path)
    assert _checkpoint.load(tmp_path)["epoch"] == 1


# --- accelerate integration -------------------------------------------------------------------


def test_several_trainers_with_different_precision_in_one_process(tiny):
    loader = tiny.loader()
    r1 = QATTrainer(
        tiny.model(),
        tiny.assignment(tiny.model(), 2, 8),
        BAQConfig(epochs=1, mixed_precision="bf16", cpu=True),
    ).fit(loader)
    r2 = BAQTrainer(tiny.model(), BAQConfig(epochs=1, cpu=True)).fit(loader)
    assert math.isfinite(r1.history[0].loss) and math.isfinite(r2.history[0].loss)


def test_eval_fn_history_and_dict_batches(tiny):
    ds = tiny.data()

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

    cfg = BAQConfig(epochs=2, grad_accum_steps=2, lr_schedule="cosine", cpu=True)
    res = BAQTrainer(tiny.model(), cfg).fit(DataLoader(Dicts(), batch_size=8), eval_fn=eval_fn)
    assert calls == [False, False]
    assert [h.eval for h in res.history] == [{"acc": 0.5}, {"acc": 0.5}]
    assert res.history[0].batches == 6


def test_fit_twice_on_one_trainer_is_refused(tiny):
    trainer = FP32Trainer(tiny.model(), BAQConfig(epochs=1, lambda_fair=0.0, cpu=True))
    trainer.fit(tiny.loader())
    with pytest.raises(RuntimeError, match="fit already ran"):
        trainer.fit(tiny.loader())


@pytest.mark.parametrize("granularity", ["channel", "param"])
def test_training_step_makes_no_python_level_host_sync(tiny, monkeypatch, granularity):
    """CPU proxy of ``torch.cuda.set_sync_debug_mode("error")``: inside a BAQ step no tensor is
    turned into a Python value (``item``, ``bool``, ``int``, ``float``, ``tolist``, ``cpu``,
    ``numpy``), which is what forces a host sync on a GPU."""
    model = tiny.model()
    cfg = BAQConfig(target_avg_bits=4.0, granularity=granularity, cpu=True)
    session = BAQTrainer(model, cfg).session()
    batch = tiny.data()[:16]
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


# --- FP32 without the fairness term; copies unless inplace ---------------------------------


def test_fp32_trainer_trains_without_the_fairness_term(tiny):
    # BAQConfig's default lambda_fair=0.5 must not leak into the FP32 reference: the loss is the
    # task's alone, so the result equals an explicit lambda_fair=0 run and needs no groups
    cfg = BAQConfig(epochs=1, lr=1e-2, seed=4, cpu=True)
    assert cfg.lambda_fair == 0.5
    trainer = FP32Trainer(tiny.model(), cfg)
    assert trainer.config.lambda_fair == 0.0
    a = trainer.fit(tiny.loader()).model
    b = FP32Trainer(tiny.model(), dataclasses.replace(cfg, lambda_fair=0.0)).fit(tiny.loader())
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.model.parameters(), strict=True))
    x, y, _ = tiny.data().tensors
    res = FP32Trainer(tiny.model(), cfg).fit(DataLoader(TensorDataset(x, y), batch_size=16))
    assert len(res.history) == 1  # (image, label) batches: no groups needed


@pytest.mark.parametrize("kind", ["fp32", "qat", "baq"])
def test_trainers_leave_the_given_model_untouched_unless_inplace(kind, tiny):
    def trainer(model, **kw):
        cfg = BAQConfig(epochs=1, lr=1e-2, lambda_fair=0.0, cpu=True)
        if kind == "fp32":
            return FP32Trainer(model, cfg, **kw)
        if kind == "qat":
            return QATTrainer(model, tiny.assignment(model, 2, 8), cfg, **kw)
        return BAQTrainer(model, cfg, **kw)

    model = tiny.model()
    before = copy.deepcopy(model.state_dict())
    res = trainer(model).fit(tiny.loader())
    assert res.model is not model
    assert not is_quantized(model)  # the FP32 model is still there
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert set(model.state_dict()) == set(before)
    # inplace=True: the given model itself is trained (and, but for FP32, quantized)
    same = tiny.model()
    res2 = trainer(same, inplace=True).fit(tiny.loader())
    assert res2.model is same and is_quantized(same) == (kind != "fp32")
    assert all(
        torch.equal(a, b)
        for a, b in zip(res.model.state_dict().values(), same.state_dict().values(), strict=True)
    )  # a copy trains exactly like the original
    with pytest.raises(TypeError, match="inplace must be a bool"):
        trainer(tiny.model(), inplace="yes")
