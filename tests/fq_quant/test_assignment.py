"""BitAssignment and ImportanceMap are values: they copy the caller's tensors on construction."""

from __future__ import annotations

import torch
from fq_quant import BitAssignment, ImportanceMap, current_assignment, quantize_model
from torch import nn


def test_bit_assignment_copies_the_callers_tensors():
    bits = torch.tensor([2, 4, 8], dtype=torch.uint8)  # already the storage dtype, on the CPU
    a = BitAssignment("channel", {"fc": bits})
    bits.fill_(17)  # an invalid width, written after validation
    assert a.bits["fc"].tolist() == [2, 4, 8]
    assert a.bits["fc"].data_ptr() != bits.data_ptr()


def test_importance_map_copies_the_callers_tensors():
    for scores in (torch.tensor([0.5, 1.5, 2.5]), torch.tensor([1, 2, 3])):
        m = ImportanceMap("channel", {"fc": scores})
        want = m.scores["fc"].clone()
        scores[0] = 7  # in place, after construction
        assert torch.equal(m.scores["fc"], want)
    s = torch.tensor([0.5, 1.5, 2.5])
    m = ImportanceMap("channel", {"fc": s})
    s[1] = float("nan")  # would bypass the finiteness check if the map held s itself
    assert bool(torch.isfinite(m.scores["fc"]).all())


def test_quantized_model_does_not_alias_the_assignment():
    model = nn.Sequential(nn.Linear(4, 3))
    a = BitAssignment("channel", {"0": torch.tensor([2, 4, 8], dtype=torch.uint8)})
    quantize_model(model, a)
    model[0].parametrizations.weight[0].bits.fill_(3)  # e.g. what load_state_dict does
    assert a.bits["0"].tolist() == [2, 4, 8]
    got = current_assignment(model)
    model[0].parametrizations.weight[0].bits.fill_(5)
    assert got.bits["0"].tolist() == [3, 3, 3]
