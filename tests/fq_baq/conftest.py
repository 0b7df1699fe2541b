"""A tiny model, its data and random bit assignments, shared by the fq_baq tests (``tiny``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from fq_quant import BitAssignment, ScopeLayout
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


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


@pytest.fixture(scope="session")
def tiny() -> SimpleNamespace:
    """``tiny.model(seed)``, ``tiny.data(n, seed)``, ``tiny.loader(**kw)``, ``tiny.assignment(...)``."""
    return SimpleNamespace(
        model=tiny_model, data=tiny_data, loader=tiny_loader, assignment=random_assignment
    )
