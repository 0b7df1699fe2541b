"""target_avg_bits: the dual ascent during training and the final projection (project_to_budget)."""

from __future__ import annotations

import pytest
import torch
from fq_baq import (
    BAQConfig,
    BAQTrainer,
    project_to_budget,
)
from fq_quant import (
    ScopeLayout,
    current_assignment,
)
from hypothesis import given
from hypothesis import strategies as st

# --- target_avg_bits -----------------------------------------------------------------------


@pytest.mark.parametrize("target", [3.3, 6.71])
def test_target_avg_bits_met_within_005(tiny, target):
    model = tiny.model()
    cfg = BAQConfig(epochs=1, lr=1e-3, lr_bits=1e-2, target_avg_bits=target, cpu=True)
    res = BAQTrainer(model, cfg, tiny.assignment(model, 2, 8)).fit(tiny.loader())
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
