"""The per-group training loss kept in each epoch's record (issue 15: worst-group training loss)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from fq_baq import BAQConfig, EpochRecord, FP32Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def _data() -> TensorDataset:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, 6, generator=gen)
    y = torch.randint(0, 3, (40,), generator=gen)
    g = torch.tensor([0] * 25 + [2] * 15)  # group 1 never appears
    return TensorDataset(x, y, g)


def test_group_loss_is_the_mean_cross_entropy_per_group_over_the_epoch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    ref = copy.deepcopy(model)
    data = _data()
    # lr so small that AdamW's steps (~1e-30) leave every weight as it was: the epoch's losses are
    # the initial model's, which a plain loop recomputes by hand
    cfg = BAQConfig(epochs=1, lr=1e-30, weight_decay=0.0, lambda_fair=0.5, cpu=True, seed=0)
    res = FP32Trainer(model, cfg).fit(DataLoader(data, batch_size=8, shuffle=True))
    (record,) = res.history
    x, y, g = data.tensors
    with torch.no_grad():
        ce = F.cross_entropy(ref(x), y, reduction="none").double()
    want = [float(ce[g == 0].mean()), math.nan, float(ce[g == 2].mean())]
    assert len(record.group_loss) == 3
    assert math.isnan(record.group_loss[1])  # absent group: NaN, not 0
    for got, w in zip(record.group_loss, want, strict=True):
        if not math.isnan(w):
            assert abs(got - w) < 1e-6
    assert record.worst_group_loss == max(record.group_loss[0], record.group_loss[2])
    assert abs(record.worst_group_loss - max(want[0], want[2])) < 1e-6
    # the record round-trips (checkpoints) and old records without the field still load
    back = EpochRecord.from_dict(record.to_dict())
    assert back.group_loss[::2] == record.group_loss[::2] and math.isnan(back.group_loss[1])
    old = record.to_dict()
    del old["group_loss"], old["worst_group_loss"]
    assert EpochRecord.from_dict(old).group_loss == ()


def test_no_groups_no_group_loss() -> None:
    x, y, _ = _data().tensors
    cfg = BAQConfig(epochs=1, lr=1e-3, lambda_fair=0.0, cpu=True)
    model = nn.Sequential(nn.Linear(6, 3))
    res = FP32Trainer(model, cfg).fit(DataLoader(TensorDataset(x, y), batch_size=8))
    assert res.history[0].group_loss == () and res.history[0].worst_group_loss is None
