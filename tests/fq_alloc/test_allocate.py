"""fq_alloc: quantile tiering against a brute-force reference, plus its properties and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fq_alloc import Palette, allocate, allocate_to_budget, budget_palette
from fq_quant import BitAssignment, Granularity, ImportanceMap, LayerScopes, ScopeLayout
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

PAL = Palette((2, 4, 8), (0.2, 0.4, 0.4))


# -- helpers ---------------------------------------------------------------------------------
def _layout(widths: list[tuple[int, int]]) -> ScopeLayout:
    """Channel layout of linear layers: (out channels, params per channel) each."""
    layers = {
        f"l{i}": LayerScopes(
            name=f"l{i}", weight_shape=(o, k), scope_shape=(o,), params_per_scope=k
        )
        for i, (o, k) in enumerate(widths)
    }
    return ScopeLayout(Granularity.CHANNEL, layers)


def _map(layout: ScopeLayout, flat: list[float]) -> ImportanceMap:
    out, i = {}, 0
    for name, s in layout.layers.items():
        out[name] = torch.tensor(flat[i : i + s.num_scopes], dtype=torch.float64)
        i += s.num_scopes
    return ImportanceMap(layout.granularity, out)


def _flat_bits(a: BitAssignment) -> list[int]:
    return torch.cat([b.reshape(-1) for b in a.bits.values()]).tolist()


def _sizes(layout: ScopeLayout) -> list[int]:
    return [s.params_per_scope for s in layout.layers.values() for _ in range(s.num_scopes)]


def brute_force(scores: list[float], sizes: list[int], palette: Palette) -> list[int]:
    """METHOD.md section 5 by hand: rank by (score, index), a scope's tier is the number of levels
    c_k with c_k * total <= its midpoint (weight before it + half its own)."""
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    total = sum(sizes)
    levels = list(palette.levels)
    bits, before = [0] * len(scores), 0
    for i in order:
        mid = before + sizes[i] / 2
        bits[i] = palette.bits[sum(1 for c in levels if c * total <= mid)]
        before += sizes[i]
    return bits


widths_st = st.lists(st.tuples(st.integers(1, 12), st.integers(1, 9)), min_size=1, max_size=4)
# A small value set makes ties frequent; floats make them rare.
value_st = st.one_of(st.integers(0, 4).map(float), st.floats(-1e6, 1e6, allow_nan=False, width=64))


@st.composite
def palettes(draw: st.DrawFn) -> Palette:
    bits = sorted(
        draw(st.sets(st.sampled_from([0, 1, 2, 3, 4, 6, 8, 16, 32]), min_size=1, max_size=5))
    )
    raw = draw(st.lists(st.integers(0, 10), min_size=len(bits), max_size=len(bits)))
    if sum(raw) == 0:
        raw[-1] = 1
    return Palette(tuple(bits), tuple(r / sum(raw) for r in raw))


@st.composite
def problems(draw: st.DrawFn) -> tuple[ScopeLayout, list[float], Palette]:
    layout = _layout(draw(widths_st))
    scores = draw(st.lists(value_st, min_size=layout.num_scopes, max_size=layout.num_scopes))
    return layout, scores, draw(palettes())


# -- equality with the brute-force reference ---------------------------------------------------
@given(problems())
def test_matches_brute_force_scopes(problem: tuple[ScopeLayout, list[float], Palette]) -> None:
    layout, scores, pal = problem
    got = _flat_bits(allocate(_map(layout, scores), pal))
    assert got == brute_force(scores, [1] * len(scores), pal)


@given(problems())
def test_matches_brute_force_params(problem: tuple[ScopeLayout, list[float], Palette]) -> None:
    layout, scores, pal = problem
    got = _flat_bits(allocate(_map(layout, scores), pal, weighting="params", layout=layout))
    assert got == brute_force(scores, _sizes(layout), pal)


# -- properties ----------------------------------------------------------------------------------
@given(problems(), st.sampled_from(["scopes", "params"]))
def test_monotone(problem: tuple[ScopeLayout, list[float], Palette], weighting: str) -> None:
    layout, scores, pal = problem
    bits = _flat_bits(allocate(_map(layout, scores), pal, weighting=weighting, layout=layout))
    for i in range(len(scores)):
        for j in range(len(scores)):
            if scores[i] > scores[j]:
                assert bits[i] >= bits[j]


@given(problems())
def test_proportions_within_one_scope_per_tier(
    problem: tuple[ScopeLayout, list[float], Palette],
) -> None:
    # Ties are broken by index, so this holds with ties too.
    layout, scores, pal = problem
    bits = _flat_bits(allocate(_map(layout, scores), pal))
    n = len(scores)
    for b, p in zip(pal.bits, pal.proportions, strict=False):
        assert abs(bits.count(b) - p * n) <= 1 + 1e-9


@given(problems())
def test_params_within_largest_scope(problem: tuple[ScopeLayout, list[float], Palette]) -> None:
    layout, scores, pal = problem
    bits = _flat_bits(allocate(_map(layout, scores), pal, weighting="params", layout=layout))
    sizes = _sizes(layout)
    total, biggest = sum(sizes), max(sizes)
    for b, p in zip(pal.bits, pal.proportions, strict=False):
        in_tier = sum(s for s, x in zip(sizes, bits, strict=False) if x == b)
        assert abs(in_tier - p * total) <= biggest + 1e-9


@given(problems(), st.sampled_from(["affine", "cube", "exp", "rank"]))
def test_invariant_under_increasing_transform(
    problem: tuple[ScopeLayout, list[float], Palette], kind: str
) -> None:
    layout, scores, pal = problem
    t = torch.tensor(scores, dtype=torch.float64)
    f = {
        "affine": lambda x: 3.0 * x - 7.0,
        "cube": lambda x: x**3,
        "exp": lambda x: torch.exp(x / 1e6),
        "rank": lambda x: torch.unique(x, return_inverse=True)[1].double(),
    }[kind](t)
    # The transform must stay strictly increasing after float rounding (ties stay ties).
    pairs = [(a, b) for a in range(len(scores)) for b in range(len(scores))]
    assume(all((t[a] < t[b]) == (f[a] < f[b]) for a, b in pairs))
    for w in ("scopes", "params"):
        a = allocate(_map(layout, scores), pal, weighting=w, layout=layout)
        b = allocate(_map(layout, f.tolist()), pal, weighting=w, layout=layout)
        assert a == b


@given(widths_st, st.sampled_from([0, 1, 4, 8, 32]), st.sampled_from(["scopes", "params"]))
def test_one_bit_palette_is_uniform(widths: list[tuple[int, int]], b: int, weighting: str) -> None:
    layout = _layout(widths)
    imap = _map(layout, [float(i % 3) for i in range(layout.num_scopes)])
    assert allocate(
        imap, Palette((b,), (1.0,)), weighting=weighting, layout=layout
    ) == BitAssignment.uniform(layout, b)


def test_ties_hand_worked() -> None:
    # 10 equal scores: ranks follow the index, so 20 % / 40 % / 40 % in order.
    layout = _layout([(4, 1), (6, 1)])
    a = allocate(_map(layout, [0.0] * 10), PAL)
    assert _flat_bits(a) == [2, 2, 4, 4, 4, 4, 8, 8, 8, 8]
    assert a == allocate(_map(layout, [0.0] * 10), PAL)  # deterministic
    # Ties straddling the 40 % cut (N=5 -> 2 scopes in tier 0): the earlier tied scope ranks lower.
    layout = _layout([(5, 1)])
    a = allocate(_map(layout, [1.0, 0.0, 1.0, 2.0, 1.0]), Palette((2, 8), (0.4, 0.6)))
    assert _flat_bits(a) == [2, 2, 8, 8, 8]


def test_paper_palette_hand_worked() -> None:
    # 5 scopes; levels 0.2, 0.6 -> cuts at 1 and 3 scopes.
    layout = _layout([(2, 1), (3, 1)])
    a = allocate(_map(layout, [0.5, 0.1, 0.9, 0.3, 0.7]), PAL)
    assert a.bits["l0"].tolist() == [4, 2] and a.bits["l1"].tolist() == [8, 4, 8]


def test_per_parameter_resnet_scale_path() -> None:
    # The selection path (no full sort) on a vector beyond torch.quantile's 2**24 limit would be
    # slow for CI; check it on 2e5 scopes with many ties against a plain stable argsort instead.
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 50, (200_000,), generator=g).double()
    imap = ImportanceMap("param", {"w": scores.reshape(400, 500)})
    a = allocate(imap, PAL)
    order = torch.sort(scores, stable=True).indices
    want = torch.empty(200_000, dtype=torch.uint8)
    want[order[:40_000]], want[order[40_000:120_000]], want[order[120_000:]] = 2, 4, 8
    assert torch.equal(a.bits["w"].reshape(-1), want)


# -- budget ----------------------------------------------------------------------------------------
@given(st.floats(2.0, 8.0), st.integers(0, 2**16))
def test_budget_met(target: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    widths = [
        (int(o), int(k))
        for o, k in zip(
            torch.randint(16, 64, (5,), generator=g),
            torch.randint(1, 40, (5,), generator=g),
            strict=False,
        )
    ]
    layout = _layout(widths)
    scores = torch.rand(layout.num_scopes, generator=g).tolist()
    a = allocate_to_budget(_map(layout, scores), target_avg_bits=target, layout=layout)
    assert abs(a.avg_bits(layout) - target) <= 0.05
    bits = _flat_bits(a)
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    assert all(bits[order[i]] <= bits[order[i + 1]] for i in range(len(order) - 1))


def test_budget_on_resnet_like_model() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3), nn.Conv2d(32, 64, 3), nn.Flatten(), nn.Linear(64, 10)
    )
    layout = ScopeLayout.from_model(model, "channel")
    imap = ImportanceMap(
        "channel", {n: torch.rand(s.scope_shape) for n, s in layout.layers.items()}
    )
    for target in (2.0, 3.1, 4.3, 6.5, 8.0):
        a = allocate_to_budget(imap, target_avg_bits=target, layout=model)
        assert abs(a.avg_bits(layout) - target) <= 0.05


def _budget_reference(
    imap: ImportanceMap, layout: ScopeLayout, bits: tuple[int, ...], target: float
) -> BitAssignment:
    """allocate_to_budget's documented rule, the slow way: bisection on the tilt ``lam`` in
    [-1e3, 1e3], all 100 tries, each a validated Palette tiered by the public ``allocate`` and
    measured by ``BitAssignment.avg_bits``; the first try closest to the target wins."""
    z = (np.asarray(bits, dtype=np.float64) - bits[0]) / (bits[-1] - bits[0])

    def tried(lam: float) -> BitAssignment:
        w = np.exp(lam * (z - (z.max() if lam > 0 else z.min())))
        pal = Palette(bits, tuple((w / w.sum()).tolist()))
        return allocate(imap, pal, weighting="params", layout=layout)

    lo, hi = -1e3, 1e3
    best, best_err = tried(lo), math.inf
    for _ in range(100):
        mid = (lo + hi) / 2
        a = tried(mid)
        avg = a.avg_bits(layout)
        if abs(avg - target) < best_err:
            best, best_err = a, abs(avg - target)
        if avg < target:
            lo = mid
        else:
            hi = mid
        if best_err < 1e-9:
            break
    return best


@pytest.mark.parametrize("seed", range(6))
def test_budget_equals_the_full_bisection_reference(seed: int) -> None:
    """The budget search stops early and skips per-try palettes; the bits are the reference's."""
    g = torch.Generator().manual_seed(seed)
    n_layers = int(torch.randint(1, 8, (1,), generator=g))
    widths = [
        (
            int(torch.randint(1, 80, (1,), generator=g)),
            int(torch.randint(1, 600, (1,), generator=g)),
        )
        for _ in range(n_layers)
    ]
    if seed == 5:  # every scope the same size: Ranking's arithmetic path instead of its sort
        widths = [(o, 7) for o, _ in widths]
    layout = _layout(widths)
    scores = (torch.rand(layout.num_scopes, generator=g) ** 3).tolist()  # skewed, some near ties
    imap = _map(layout, scores)
    bits = ((2, 3, 4, 5, 6, 7, 8), (2, 4, 8), (1, 2, 16), (3, 5))[seed % 4]
    for _ in range(4):
        target = bits[0] + (bits[-1] - bits[0]) * float(torch.rand((), generator=g))
        try:
            got = allocate_to_budget(imap, bits, target, layout=layout)
        except ValueError:
            # unreachable within 0.05 bits: the reference's closest average says so too
            ref = _budget_reference(imap, layout, bits, target)
            assert abs(ref.avg_bits(layout) - target) > 0.05
            continue
        assert got == _budget_reference(imap, layout, bits, target)


@given(st.floats(2.0, 8.0))
def test_budget_palette_mean(target: float) -> None:
    pal = budget_palette((2, 3, 4, 5, 6, 7, 8), target)
    assert math.isclose(pal.avg_bits, target, abs_tol=1e-9)
    assert all(p > 0 for p in pal.proportions) or target in (2.0, 8.0)


def test_budget_unreachable_names_closest() -> None:
    # One layer holds 90 % of the parameters: per-tensor scopes cannot average 5 bits within 0.05.
    layout = ScopeLayout(
        Granularity.TENSOR,
        {
            "a": LayerScopes(name="a", weight_shape=(9, 10), scope_shape=(1,), params_per_scope=90),
            "b": LayerScopes(name="b", weight_shape=(1, 10), scope_shape=(1,), params_per_scope=10),
        },
    )
    imap = ImportanceMap("tensor", {"a": torch.tensor([1.0]), "b": torch.tensor([0.0])})
    with pytest.raises(ValueError, match="closest monotone allocation averages"):
        allocate_to_budget(imap, bits=(2, 8), target_avg_bits=5.0, layout=layout)


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bits", "props", "match"),
    [
        ((4, 2), (0.5, 0.5), "strictly increasing"),
        ((2, 2), (0.5, 0.5), "strictly increasing"),
        ((2, 17), (0.5, 0.5), "contain 17"),
        ((2, 4), (1.2, -0.2), ">= 0"),
        ((2, 4), (0.5, 0.4), "sum to 1"),
        ((2, 4), (1.0,), "one entry per bit-width"),
        ((), (), "at least one"),
        ((2, 4), (float("nan"), 1.0), "finite"),
    ],
)
def test_palette_rejects(bits: tuple[int, ...], props: tuple[float, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Palette(bits, props)


def test_palette_types() -> None:
    with pytest.raises(TypeError, match="ints"):
        Palette((2.5, 4), (0.5, 0.5))
    with pytest.raises(TypeError, match="numbers"):
        Palette((2, 4), ("a", 0.5))
    assert Palette([2, 4], [0.25, 0.75]).avg_bits == 3.5


def test_allocate_rejects() -> None:
    layout = _layout([(3, 2)])
    imap = _map(layout, [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="weighting must be one of"):
        allocate(imap, PAL, weighting="channels")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs layout"):
        allocate(imap, PAL, weighting="params")
    other = nn.Sequential(nn.Linear(2, 3))
    with pytest.raises(ValueError, match="does not match the model's layers"):
        allocate(imap, PAL, layout=other)
    with pytest.raises(TypeError, match="Palette"):
        allocate(imap, (2, 4))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ImportanceMap"):
        allocate({"l0": torch.zeros(3)}, PAL)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"target_avg_bits must lie in \[2, 8\]"):
        allocate_to_budget(imap, target_avg_bits=9.0, layout=layout)
    with pytest.raises(ValueError, match="strictly increasing"):
        allocate_to_budget(imap, bits=(8, 2), target_avg_bits=4.0, layout=layout)


def test_reexports_importance_map() -> None:
    import fq_alloc
    import fq_quant

    assert fq_alloc.ImportanceMap is fq_quant.ImportanceMap
