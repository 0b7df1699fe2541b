"""fq_importance.calibrate: equality with a naive per-group reference, model untouched, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fq_importance import GroupImportance, calibrate
from fq_quant import BitAssignment, ScopeLayout, quantizable_layers, quantize_model
from torch import nn
from torch.nn.utils import parametrize


def _model(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, groups=2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(6 * 2 * 2, 5),
    ).to(dtype)


def _data(dtype: torch.dtype = torch.float64, n_batches: int = 3, groups: int = 3) -> list[tuple]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n_batches):
        x = torch.randn(8, 3, 8, 8, generator=g).to(dtype)
        out.append(
            (x, torch.randint(0, 5, (8,), generator=g), torch.randint(0, groups, (8,), generator=g))
        )
    return out


def _weight(layer: nn.Module) -> torch.Tensor:
    return (
        layer.parametrizations.weight.original
        if parametrize.is_parametrized(layer, "weight")
        else layer.weight
    )


def naive(
    model: nn.Module,
    data: list[tuple],
    metric: str,
    granularity: str,
    probes: int = 1,
    seed: int = 0,
) -> dict:
    """Separate forward and backward per (batch, group), float64, straight from METHOD.md section 3."""
    layers = quantizable_layers(model)
    ws = [_weight(m) for m in layers.values()]
    gen = torch.Generator().manual_seed(seed)
    out: dict[int, dict[str, torch.Tensor]] = {}
    model.eval()
    for x, y, g in data:
        for gid in sorted(set(g.tolist())):
            m = g == gid
            loss = F.cross_entropy(model(x[m]), y[m])  # mean over the group's samples
            grads = torch.autograd.grad(loss, ws, create_graph=metric == "hessian")
            for name, w, gr in zip(layers, ws, grads, strict=False):
                w64, gr64 = w.detach().double(), gr.detach().double()
                if metric == "grape":
                    e = (gr64 * w64) ** 2
                elif metric == "taylor":
                    e = (gr64 * w64).abs()
                elif metric == "gradient":
                    e = gr64.abs()
                else:
                    e = None
                if e is not None:
                    out.setdefault(gid, {}).setdefault(name, []).append(e)
            if metric == "hessian":
                diag = [torch.zeros_like(w, dtype=torch.float64) for w in ws]
                for _ in range(probes):
                    vs = [
                        (torch.randint(0, 2, w.shape, generator=gen) * 2 - 1).to(w.dtype)
                        for w in ws
                    ]
                    hv = torch.autograd.grad(grads, ws, grad_outputs=vs, retain_graph=True)
                    for d, v, h in zip(diag, vs, hv, strict=False):
                        d += v.double() * h.double() / probes
                for name, w, d in zip(layers, ws, diag, strict=False):
                    out.setdefault(gid, {}).setdefault(name, []).append(
                        d.abs() * w.detach().double() ** 2
                    )
    result = {}
    for gid, maps in out.items():
        result[gid] = {}
        for name, items in maps.items():
            e = torch.stack(items).sum(0)
            if granularity == "channel":
                e = e.flatten(1).mean(1) if e.dim() > 1 else e
            elif granularity == "tensor":
                e = e.mean().reshape(1)
            result[gid][name] = e
    return result


def _assert_close(gi: GroupImportance, ref: dict, rel: float) -> None:
    assert set(gi.groups) == set(ref)
    for gid in ref:
        for name, want in ref[gid].items():
            got = gi.importance[gid][name].double()
            scale = want.abs().max().clamp_min(1e-300)
            assert got.shape == want.shape
            assert float((got - want).abs().max() / scale) <= rel, (gid, name)


CASES = [
    ("auto", m, g) for m in ("grape", "taylor", "gradient") for g in ("channel", "tensor", "param")
]
CASES += [(s, "grape", g) for s in ("loop", "batched") for g in ("channel", "param")]


@pytest.mark.parametrize(("strategy", "metric", "granularity"), CASES)
def test_equals_naive_reference(strategy: str, metric: str, granularity: str) -> None:
    model, data = _model(), _data()
    gi = calibrate(
        model,
        data,
        metric=metric,
        granularity=granularity,
        batches=None,
        device=None,
        groups=None,
        probes=1,
        seed=0,
        progress=False,
        strategy=strategy,
    )
    _assert_close(gi, naive(model, data, metric, granularity), 1e-6)
    assert gi.counts == {k: sum(int((g == k).sum()) for _, _, g in data) for k in range(3)}
    assert gi.batches == 3 and gi.metric == metric


@pytest.mark.parametrize("granularity", ["channel", "param"])
def test_hessian_equals_naive_hutchinson(granularity: str) -> None:
    model, data = _model(), _data(n_batches=2)
    gi = calibrate(
        model, data, metric="hessian", granularity=granularity, probes=2, seed=3, progress=False
    )
    _assert_close(gi, naive(model, data, "hessian", granularity, probes=2, seed=3), 1e-6)


def test_hessian_hutchinson_matches_exact_diagonal() -> None:
    # Linear model, CE: the Hutchinson mean over P probes is within 5 standard errors of the exact
    # diagonal; the estimator's variance for element i is sum_{j != i} H_ij^2 / P.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2)).double()
    data = [
        (
            torch.randn(16, 3).double(),
            torch.randint(0, 2, (16,)),
            torch.zeros(16, dtype=torch.int64),
        )
    ]
    probes = 300
    gi = calibrate(
        model, data, metric="hessian", granularity="param", probes=probes, seed=0, progress=False
    )
    w = model[0].weight.detach()

    def f(flat: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(F.linear(data[0][0], flat.reshape(2, 3), model[0].bias), data[0][1])

    hess = torch.autograd.functional.hessian(f, w.reshape(-1))
    exact = hess.diagonal()
    stderr = ((hess**2).sum(1) - exact**2).clamp_min(0).sqrt() / probes**0.5
    est = (gi.importance[0]["0"].double() / w**2).reshape(-1)  # |diag estimate|
    assert bool(((est - exact.abs()).abs() <= 5 * stderr + 1e-12).all())


def test_float32_model_close_to_float64_reference() -> None:
    model32, data32 = _model(torch.float32), _data(torch.float32)
    gi = calibrate(model32, data32, progress=False)
    assert all(t.dtype == torch.float32 for m in gi.importance.values() for t in m.values())
    _assert_close(gi, naive(_model(torch.float64), _data(torch.float64), "grape", "channel"), 1e-3)


def test_mapping_batches_and_batch_limit() -> None:
    model, data = _model(), _data(n_batches=4)
    as_dicts = [{"image": x, "label": y, "group": g, "extra": 0} for x, y, g in data]
    a = calibrate(model, as_dicts, batches=2, progress=False)
    b = calibrate(model, data[:2], batches=None, progress=True)  # the bar must not break anything
    assert a.batches == 2 and a.counts == b.counts
    for gid in a.groups:
        for name in a.layers:
            assert torch.equal(a.importance[gid][name], b.importance[gid][name])


def test_model_untouched() -> None:
    model = _model(torch.float32)
    model.train()
    model[5].eval()  # mixed modes must come back exactly
    model[3].weight.requires_grad_(False)
    model[0].bias.requires_grad_(False)
    model[6].weight.grad = torch.full_like(model[6].weight, 7.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    data = _data(torch.float32)
    for metric in ("grape", "taylor", "gradient", "hessian"):
        calibrate(model, data, metric=metric, progress=False)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats included
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    for p, g in zip(model.parameters(), grads, strict=False):
        assert (p.grad is None) if g is None else torch.equal(p.grad, g)


def test_eval_mode_is_used() -> None:
    # Dropout off and BN on running statistics: a train-mode model gives the eval-mode result.
    model, data = _model(), _data()
    want = calibrate(model.eval(), data, progress=False)
    got = calibrate(model.train(), data, progress=False)
    for gid in want.groups:
        for name in want.layers:
            assert torch.equal(want.importance[gid][name], got.importance[gid][name])
    assert model.training


def test_quantized_model_uses_float_weights() -> None:
    model, data = _model(), _data()
    layout = ScopeLayout.from_model(model, "channel")
    quantize_model(model, BitAssignment.uniform(layout, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gi = calibrate(model, data, progress=False)
    _assert_close(gi, naive(model, data, "grape", "channel"), 1e-6)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())


def test_absent_group_warns_and_is_zero() -> None:
    model, data = _model(), _data(groups=2)
    with pytest.warns(UserWarning, match=r"group\(s\) \[2\] never appeared"):
        gi = calibrate(model, data, groups=[0, 1, 2], progress=False)
    assert gi.counts[2] == 0 and gi.groups == (0, 1, 2)
    assert all(float(t.abs().sum()) == 0 for t in gi.importance[2].values())
    # Default expected groups are 0..max seen: a gap is reported too.
    gapped = [(x, y, g * 2) for x, y, g in data]
    with pytest.warns(UserWarning, match=r"\[1\] never appeared"):
        gi = calibrate(model, gapped, progress=False)
    assert gi.counts[1] == 0


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        ((torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.int64)), "2-tuple"),
        (
            {"image": torch.randn(4, 3, 8, 8), "label": torch.zeros(4, dtype=torch.int64)},
            r"lacks key\(s\) \['group'\]",
        ),
        (
            (torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.int64), torch.zeros(4)),
            "group must be an integer",
        ),
        (
            (
                torch.randn(4, 3, 8, 8),
                torch.zeros(4, dtype=torch.int64),
                torch.zeros(3, dtype=torch.int64),
            ),
            r"shape \[4\]",
        ),
        (
            (
                torch.randn(4, 3, 8, 8),
                torch.zeros(4, dtype=torch.int64),
                -torch.ones(4, dtype=torch.int64),
            ),
            "group ids",
        ),
    ],
)
def test_bad_batches(batch: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        calibrate(_model(torch.float32), [batch], progress=False)


def test_nan_loss_names_batch() -> None:
    data = _data(torch.float32)
    data[1] = (torch.full_like(data[1][0], float("nan")), data[1][1], data[1][2])
    with pytest.raises(ValueError, match="batch 1: the loss is NaN"):
        calibrate(_model(torch.float32), data, progress=False)


def test_bad_arguments() -> None:
    model, data = _model(torch.float32), _data(torch.float32)
    with pytest.raises(ValueError, match="metric must be one of"):
        calibrate(model, data, metric="fisher", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="granularity must be one of"):
        calibrate(model, data, granularity="row", progress=False)
    with pytest.raises(ValueError, match="batches must be"):
        calibrate(model, data, batches=0, progress=False)
    with pytest.raises(ValueError, match="never moves it"):
        calibrate(model, data, device="cuda", progress=False)
    with pytest.raises(ValueError, match=r"expected ids in \[0, 1\]"):
        calibrate(model, data, groups=[0, 1], progress=False)
    with pytest.raises(ValueError, match="no batches"):
        calibrate(model, [], progress=False)
    with pytest.raises(ValueError, match="has no quantizable layer"):
        calibrate(nn.Sequential(nn.ReLU()), data, progress=False)


class _BatchCentre(nn.Module):
    """Subtracts the batch mean: samples interact even in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(0, keepdim=True)


class _Bypass(nn.Module):
    """Uses its Linear's weight without calling the Linear (forward hooks never fire)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).mean((2, 3))
        return F.linear(h, self.fc.weight, self.fc.bias)


@pytest.mark.parametrize("kind", ["mixing", "bypass"])
def test_auto_falls_back_when_fused_identity_fails(kind: str) -> None:
    torch.manual_seed(0)
    if kind == "mixing":
        model = nn.Sequential(nn.Conv2d(3, 4, 3), _BatchCentre(), nn.Flatten(), nn.Linear(144, 5))
    else:
        model = _Bypass()
    model = model.double()
    data = _data()
    kw = dict(
        metric="grape",
        granularity="channel",
        batches=None,
        device=None,
        groups=None,
        probes=1,
        seed=0,
        progress=False,
    )
    reason = "samples interact" if kind == "mixing" else "disagree with autograd"
    with pytest.warns(UserWarning, match=f"calibrate: the fused.*{reason}.*exact loop") as rec:
        auto = calibrate(model, data, strategy="auto", **kw)
    assert len(rec) == 1  # once per call, not per batch
    loop = calibrate(model, data, strategy="loop", **kw)
    fused = calibrate(model, data, strategy="fused", **kw)
    same = lambda a: all(  # noqa: E731
        torch.allclose(a.importance[g][n], loop.importance[g][n], rtol=1e-9, atol=0)
        for g in loop.groups
        for n in loop.layers
    )
    assert same(auto)
    assert not same(fused)  # the fused identity really fails here
    if kind == "bypass":  # no batch mixing: the shared graph equals separate forwards
        _assert_close(auto, naive(model, data, "grape", "channel"), 1e-6)


class _SeqFirst(nn.Module):
    """A Linear on a sequence-first ``[L, N, E]`` input (the layout of torch's Transformer default)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.conv(x).flatten(2).permute(2, 0, 1)  # [L, N, E]
        return self.head(torch.tanh(self.fc(tokens)).mean(0))


def _one_group_first(hw: tuple[int, int]) -> list[tuple]:
    """Two batches of 8: the first all group 0 (nothing to compare groups on), then groups 0/1."""
    g = torch.Generator().manual_seed(2)
    x = [torch.randn(8, 3, *hw, generator=g, dtype=torch.float64) for _ in range(2)]
    y = [torch.randint(0, 5, (8,), generator=g) for _ in range(2)]
    return [(x[0], y[0], torch.zeros(8, dtype=torch.int64)), (x[1], y[1], torch.arange(8) % 2)]


@pytest.mark.parametrize(
    ("kind", "hw"),
    [("seq_first", (8, 8)), ("seq_first", (10, 3)), ("bypass", (8, 8))],
    ids=["seq-first-36-tokens", "seq-first-8-tokens-as-many-as-samples", "bypass"],
)
def test_auto_checks_the_fused_split_before_using_any_batch(kind: str, hw: tuple[int, int]) -> None:
    # 36 tokens vs 8 samples: the row split would read tokens as samples; 8 tokens: the leading
    # dims agree, only the numerical check can tell; bypass: a weight used outside its layer.
    torch.manual_seed(0)
    model = (_SeqFirst() if kind == "seq_first" else _Bypass()).double()
    data = _one_group_first(hw)
    kw = dict(metric="grape", granularity="channel", batches=None, progress=False)
    why = "not batch-first" if (kind, hw) == ("seq_first", (8, 8)) else "disagree"
    with pytest.warns(UserWarning, match=f"calibrate: the fused.*{why}"):
        gi = calibrate(model, data, strategy="auto", **kw)
    _assert_close(gi, naive(model, data, "grape", "channel"), 1e-6)
    if kind == "seq_first" and hw == (8, 8):
        with pytest.raises(ValueError, match=r"batch-first.*'fc'.*\(36, 8, 4\)"):
            calibrate(model, data, strategy="fused", **kw)


@pytest.mark.usefixtures("one_thread")  # 325 s with two threads on a loaded 2-core machine
@pytest.mark.parametrize("arch", ["sequential", "mobilenet_v3_small"])
def test_fused_path_works_with_in_place_activations(arch: str) -> None:
    # An in-place activation right after a layer (mobilenet_v3's Hardswish(inplace=True)) used to
    # overwrite the recorded layer output, so the fused identity failed and auto fell back.
    torch.manual_seed(0)
    if arch == "sequential":
        model = nn.Sequential(
            nn.Flatten(), nn.Linear(192, 6), nn.Hardswish(inplace=True), nn.Linear(6, 5)
        ).double()
        data = _data()
    else:
        import torchvision

        model = torchvision.models.mobilenet_v3_small(num_classes=5).double().eval()
        g = torch.Generator().manual_seed(3)
        data = [
            (torch.randn(6, 3, 32, 32, generator=g, dtype=torch.float64),
             torch.randint(0, 5, (6,), generator=g), torch.arange(6) % 2)
        ]  # fmt: skip
    kw = dict(metric="grape", granularity="channel", batches=None, progress=False)
    fused = calibrate(model, data, strategy="fused", **kw)  # forced: no fallback possible
    auto = calibrate(model, data, strategy="auto", **kw)  # no warning (warnings are errors)
    loop = calibrate(model, data, strategy="loop", **kw)
    for gi in (fused, auto):
        for grp in loop.groups:
            for n in loop.layers:
                a, b = gi.importance[grp][n], loop.importance[grp][n]
                assert torch.allclose(a, b, rtol=1e-6, atol=1e-12 * float(b.abs().max())), n
