"""fairness_penalty (eq. 4) by hand, with one group, and on bad input."""

from __future__ import annotations

import pytest
import torch
from fq_baq import (
    fairness_penalty,
)

# --- fairness penalty ----------------------------------------------------------------------


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
