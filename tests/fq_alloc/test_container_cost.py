"""allocate_to_budget(cost="container"): the budget counts the container each layer ships in.

Properties over random layer sizes and scores (never above the budget in container bits, one
width per layer, more important layers never in narrower containers when equal in size), and the
exact optimum against brute force over every container choice on tiny models.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from fq_alloc import allocate_to_budget
from fq_quant import ImportanceMap, ScopeLayout, container_avg_bits
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

PALETTE = (2, 3, 4, 5, 6, 7, 8)


def _model(widths: list[int]) -> nn.Module:
    """A chain of Linear layers; layer i has widths[i+1] channels of widths[i] weights."""
    return nn.Sequential(*[nn.Linear(a, b) for a, b in itertools.pairwise(widths)])


def _imap(layout: ScopeLayout, seed: int) -> ImportanceMap:
    g = torch.Generator().manual_seed(seed)
    return ImportanceMap(
        "channel", {n: torch.rand(s.scope_shape, generator=g) for n, s in layout.layers.items()}
    )


@st.composite
def cases(draw):
    widths = draw(st.lists(st.integers(1, 12), min_size=2, max_size=6))
    target = draw(st.floats(4.0, 8.0, allow_nan=False))
    return widths, target, draw(st.integers(0, 10_000))


@given(cases())
def test_never_above_the_budget_in_container_bits(case) -> None:
    widths, target, seed = case
    layout = ScopeLayout.from_model(_model(widths), "channel")
    a = allocate_to_budget(_imap(layout, seed), PALETTE, target, layout=layout, cost="container")
    assert container_avg_bits(a, layout) <= target
    for bits in a.bits.values():  # one width per layer: the widest that fits its container
        assert bits.unique().numel() == 1 and int(bits[0]) in (4, 8)
    assert a.avg_bits(layout) == container_avg_bits(a, layout)  # nothing below its container


def _value(layout: ScopeLayout, imap: ImportanceMap, bits: dict[str, int]) -> float:
    """sum_l n_l * b_l * u_l with u_l the layer's mean midpoint quantile (independent recount)."""
    entries = []  # (score, global index, layer, params)
    for i, (name, s) in enumerate(imap.scores.items()):
        for j, v in enumerate(s.reshape(-1).tolist()):
            entries.append((v, i, j, name, layout[name].params_per_scope))
    entries.sort(key=lambda e: (e[0], e[1], e[2]))
    total = sum(e[4] for e in entries)
    below, mass = 0, dict.fromkeys(imap.scores, 0.0)
    for _, _, _, name, p in entries:
        mass[name] += p * (below + p / 2) / total
        below += p
    return sum(bits[n] * mass[n] for n in imap.scores)


@pytest.mark.parametrize("seed", range(6))
def test_exact_optimum_against_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    widths = rng.integers(1, 9, size=6).tolist()
    layout = ScopeLayout.from_model(_model(widths), "channel")
    imap = _imap(layout, seed)
    n = {name: layout[name].num_params for name in layout.layers}
    total = sum(n.values())
    for target in (4.0, 4.5, 5.3, 6.0, 7.9):
        got = allocate_to_budget(imap, PALETTE, target, layout=layout, cost="container")
        got_bits = {name: int(b[0]) for name, b in got.bits.items()}
        best = max(
            (
                dict(zip(n, choice, strict=True))
                for choice in itertools.product((4, 8), repeat=len(n))
                if sum(n[k] * c for k, c in zip(n, choice, strict=True)) <= target * total
            ),
            key=lambda b: _value(layout, imap, b),
        )
        assert _value(layout, imap, got_bits) == pytest.approx(
            _value(layout, imap, best), rel=1e-12
        )


def test_palette_choices_and_float_layers() -> None:
    layout = ScopeLayout.from_model(_model([3, 4, 5]), "channel")
    imap = _imap(layout, 0)
    # (2, 3, 4, 6) at 8: INT8 holds 6 bits at most, so every layer is 6 bits in INT8
    a = allocate_to_budget(imap, (2, 3, 4, 6), 6.0, layout=layout, cost="container")
    assert sum(int(b.unique()) == 6 for b in a.bits.values()) >= 1
    assert {int(b.unique()) for b in a.bits.values()} <= {4, 6}
    assert container_avg_bits(a, layout) <= 6.0
    # 32 in the palette: a layer may stay float when the budget allows it
    a = allocate_to_budget(imap, (4, 8, 32), 32.0, layout=layout, cost="container")
    assert {int(b.unique()) for b in a.bits.values()} == {32}


def test_more_important_layer_gets_the_wider_container() -> None:
    layout = ScopeLayout.from_model(_model([4, 4, 4]), "channel")  # two equal layers
    names = list(layout.layers)
    imap = ImportanceMap(
        "channel", {names[0]: torch.full((4,), 0.1), names[1]: torch.full((4,), 0.9)}
    )
    a = allocate_to_budget(imap, PALETTE, 6.0, layout=layout, cost="container")
    assert [int(a.bits[n][0]) for n in names] == [4, 8]


def test_target_below_the_narrowest_container_is_refused() -> None:
    layout = ScopeLayout.from_model(_model([3, 4, 5]), "channel")
    with pytest.raises(ValueError, match="narrowest container"):
        allocate_to_budget(_imap(layout, 0), PALETTE, 3.5, layout=layout, cost="container")
    with pytest.raises(ValueError, match="cost must be one of"):
        allocate_to_budget(_imap(layout, 0), PALETTE, 4.5, layout=layout, cost="onnx")  # type: ignore[arg-type]
