"""Group-conditioned importance: one forward per batch, per-group gradients from the shared graph."""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Iterable, Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from fq_quant import Granularity, float_weight, quantizable_layers, unpack_batch
from torch import nn
from tqdm.auto import tqdm

from ._group_grads import (
    capture,
    check_fused,
    fused_group_grads,
    grad_or_zeros,
    is_fusable,
    not_batch_first,
)
from ._group_importance import METRICS, GroupImportance

Metric = Literal["grape", "taylor", "gradient", "hessian"]
#: How per-group gradients come out of the shared graph (bench/results/calibration.md):
#: "fused" (default where it applies): one backward to the layer outputs, then each group's weight
#: gradient from its own samples' rows; "loop": ``autograd.grad`` per group with ``retain_graph``;
#: "batched": one ``autograd.grad`` with ``is_grads_batched=True`` (vmap over one-hot group rows).
Strategy = Literal["auto", "fused", "loop", "batched"]
DEFAULT_STRATEGY: Strategy = "auto"


def calibrate(
    model: nn.Module,
    loader: Iterable[object],
    *,
    metric: Metric = "grape",
    granularity: Granularity | str = Granularity.CHANNEL,
    batches: int | None = 50,
    device: torch.device | str | None = None,
    groups: Iterable[int] | None = None,
    probes: int = 1,
    seed: int = 0,
    progress: bool = True,
    strategy: Strategy = DEFAULT_STRATEGY,
) -> GroupImportance:
    """Per-group importance of every scope of every ``nn.Conv2d`` / ``nn.Linear`` weight.

    For each batch: one forward pass; ``L_g`` = mean cross-entropy over the batch's samples of
    group ``g``; the gradient of each ``L_g`` w.r.t. the float weights from the shared graph; per
    element ``grape = (dL_g/dw * w)^2``, ``taylor = |dL_g/dw * w|``, ``gradient = |dL_g/dw|``,
    ``hessian = |diag(H_g)| * w^2`` (Hutchinson, ``probes`` Rademacher vectors per group and batch,
    seeded by ``seed``); averaged to scopes (channel: mean over all dims but 0; tensor: mean;
    param: identity) and summed over batches (METHOD.md section 3).

    Per-group gradients come from one backward to the layer outputs, split by sample rows, or, for
    custom layers, quantized models and ``hessian``, from ``autograd.grad`` per group on the
    shared graph. The row split is exact when every layer's input and output are batch-first and
    samples do not interact in eval mode; ``"auto"`` checks both before any batch's gradients are
    used (leading dims on every batch; on the first batch, the split gradients against
    ``autograd.grad`` per group, or per half of the batch when it holds one group) and falls back
    to the exact path where they fail (e.g. a sequence-first ``[L, N, E]`` ``nn.Linear`` input).

    The model is left untouched: it runs in eval mode (BatchNorm uses its running statistics,
    Dropout is off: calibration measures the deployed model), no optimizer, no ``.grad`` written,
    ``requires_grad`` flags and every module's train/eval mode restored on exit. On a model wrapped
    by ``fq_quant.quantize_model``, gradients are taken w.r.t. the float weights
    (``parametrizations.weight.original``) through the straight-through quantizer.

    Args:
        model: the classifier; logits ``[B, C]``.
        loader: yields ``(x, y, g)`` tuples or mappings with keys ``image``, ``label``, ``group``;
            ``g`` holds int group ids ``0..G-1`` (``[B]``).
        metric: one of ``"grape"``, ``"taylor"``, ``"gradient"``, ``"hessian"``.
        granularity: scope granularity of the result.
        batches: number of batches to visit (``None``: the whole loader).
        device: where to run; defaults to the model's device. Batches are moved there; the model
            is never moved (a mismatch raises ``ValueError``).
        groups: the expected group ids; default ``0..max seen``. A listed group that never appears
            gets a warning, an all-zero map and count 0; a group seen but not listed is an error.
        probes: Hutchinson probes per group and batch (``metric="hessian"`` only).
        seed: seed of the Hutchinson probes.
        progress: show a tqdm bar over batches.
        strategy: how per-group gradients come out of the shared graph (same result up to float
            rounding): ``"auto"`` (default) is ``"fused"`` where it applies, verified against
            ``"loop"`` before its gradients are used, else ``"loop"``; ``"fused"``: one backward to
            the layer outputs, each group's weight gradient from its own rows (plain
            Conv2d/Linear layers with batch-first inputs, first-order metrics); ``"loop"``:
            ``autograd.grad`` per group; ``"batched"``: one vmapped ``autograd.grad``.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}; got {metric!r}")
    gran = Granularity.parse(granularity)
    if batches is not None and (
        isinstance(batches, bool) or not isinstance(batches, int) or batches < 1
    ):
        raise ValueError(f"batches must be an int >= 1 or None; got {batches!r}")
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes must be an int >= 1; got {probes!r}")
    if strategy not in ("auto", "fused", "loop", "batched"):
        raise ValueError(f"strategy must be 'auto', 'fused', 'loop' or 'batched'; got {strategy!r}")
    expected = _expected_groups(groups)
    layers = quantizable_layers(model)
    weights = {name: float_weight(layer) for name, layer in layers.items()}
    fusable = metric != "hessian" and all(is_fusable(m) for m in layers.values())
    # "auto" checks the fused identity before its gradients are used (see check_fused).
    verify = strategy == "auto"
    if strategy == "auto":
        strategy = "fused" if fusable else "loop"
    elif strategy == "fused" and not fusable:
        raise ValueError(
            "strategy 'fused' needs plain nn.Conv2d/nn.Linear forwards and a first-order metric"
        )
    dev = _device(weights, device)
    gen = torch.Generator().manual_seed(seed)
    acc: dict[int, dict[str, torch.Tensor]] = {}
    counts: dict[int, int] = {}
    seen = 0
    it = itertools.islice(loader, batches) if batches is not None else loader
    total = batches if batches is not None else _len_or_none(loader)
    with _frozen(model, list(weights.values())), torch.enable_grad():
        for index, batch in enumerate(
            tqdm(it, total=total, desc="calibrate", unit="batch", disable=not progress)
        ):
            x, y, g = unpack_batch(batch, index=index)
            present, inverse, n = torch.unique(
                g, sorted=True, return_inverse=True, return_counts=True
            )
            ids = present.tolist()
            if ids[0] < 0 or (expected is not None and not set(ids) <= set(expected)):
                raise ValueError(
                    f"batch {index} has group ids {ids}; expected ids in "
                    f"{list(expected) if expected is not None else '0, 1, ...'}"
                )
            x, y, inverse, n = x.to(dev), y.to(dev), inverse.to(dev), n.to(dev)
            with capture(layers if strategy == "fused" else {}) as captured:
                logits = model(x)
            n_cls = logits.shape[-1]
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_cls):
                bad = sorted({int(v) for v in y[(y < 0) | (y >= n_cls)].tolist()})
                raise ValueError(
                    f"batch {index} has label(s) {bad[:10]} outside 0..{n_cls - 1} (the model "
                    f"has {n_cls} outputs)"
                )
            ce = F.cross_entropy(logits, y, reduction="none")  # [B]
            # Row k: weight 1/n_k on the samples of the k-th present group, so losses[k] = L_g.
            rows = F.one_hot(inverse, len(ids)).T.to(ce.dtype) / n[:, None].to(ce.dtype)
            losses = rows @ ce  # [G_b]
            if not bool(torch.isfinite(losses).all()):
                raise ValueError(
                    f"batch {index}: the loss is NaN or inf (per-group losses {losses.tolist()})"
                )
            if strategy == "fused":
                odd = not_batch_first(captured, x.shape[0])
                if odd is not None:
                    if not verify:
                        raise ValueError(
                            f"strategy 'fused' needs batch-first layer inputs and outputs; {odd} "
                            f"in batch {index} of {x.shape[0]} samples (e.g. a sequence-first "
                            "[L, N, E] nn.Linear input); use strategy='auto' or 'loop'"
                        )
                    warnings.warn(
                        f"calibrate: the fused per-group gradients cannot be used: {odd} in "
                        f"batch {index} is not batch-first; using the exact loop (same scores, "
                        "one backward per group); pass strategy='loop' to silence this",
                        UserWarning,
                        stacklevel=2,
                    )
                    strategy, verify = "loop", False
            per_group = None
            if strategy == "fused":
                parts = [torch.nonzero(inverse == k).squeeze(1) for k in range(len(ids))]
                grads_of = fused_group_grads(ce, inverse, n, captured, layers, weights, keep=verify)
                if verify:
                    exact, verified = check_fused(ce, inverse, n, parts, grads_of, weights)
                    if exact is not None:  # the identity fails: the exact path from here on
                        warnings.warn(
                            "calibrate: the fused per-group gradients disagree with autograd's "
                            f"on batch {index} (samples interact, e.g. a batch statistic in "
                            "eval mode, or a weight is used outside its layer's forward); "
                            "using the exact loop (same scores, one backward per group); pass "
                            "strategy='loop' to silence this",
                            UserWarning,
                            stacklevel=2,
                        )
                        strategy, verify = "loop", False
                        if len(exact) == len(ids):  # computed per group already
                            per_group = _scores_of(exact.__getitem__, metric, weights, gran)
                    elif verified:
                        verify = False
                if strategy == "fused":
                    per_group = _scores_of(
                        lambda k, f=grads_of, p=parts: f(p[k]), metric, weights, gran
                    )
            if per_group is None:
                per_group = _scores(metric, strategy, losses, weights, gran, probes, gen)
            for k, gid in enumerate(ids):
                dst = acc.setdefault(gid, {})
                for name, s in per_group(k).items():
                    if name in dst:
                        dst[name] += s
                    else:
                        dst[name] = s.to(torch.promote_types(s.dtype, torch.float32)).clone()
                counts[gid] = counts.get(gid, 0) + int(n[k])
            seen += 1
    if seen == 0:
        raise ValueError("loader yielded no batches")
    return _result(acc, counts, expected, weights, gran, metric, seen)


def _scores(metric, strategy, losses, weights, gran, probes, gen):
    """A function ``k -> {layer: scope-shaped score of the k-th present group}`` for this batch."""
    ws = list(weights.values())
    names = list(weights)
    if metric == "hessian":

        def hutchinson(k: int) -> dict[str, torch.Tensor]:
            grads = grad_or_zeros(losses[k], ws, create_graph=True)
            diag = [torch.zeros_like(w) for w in ws]
            for _ in range(probes):
                vs = [_rademacher(w, gen) for w in ws]
                hv = grad_or_zeros(grads, ws, grad_outputs=vs, retain_graph=True)
                for d, v, h in zip(diag, vs, hv, strict=True):
                    d += v * h.detach() / probes
            return {
                n: _to_scopes(d.abs() * w.detach() ** 2, gran, 0)
                for n, d, w in zip(names, diag, ws, strict=True)
            }

        return hutchinson
    if strategy == "batched":
        eye = torch.eye(len(losses), dtype=losses.dtype, device=losses.device)
        grads = grad_or_zeros(
            losses, ws, grad_outputs=eye, is_grads_batched=True, retain_graph=True
        )
        scores = {
            n: _to_scopes(_element(metric, gr, w.detach()), gran, 1)
            for n, gr, w in zip(names, grads, ws, strict=True)
        }
        return lambda k: {n: s[k] for n, s in scores.items()}

    def loop(k: int) -> dict[str, torch.Tensor]:
        return dict(zip(names, grad_or_zeros(losses[k], ws, retain_graph=True), strict=True))

    return _scores_of(loop, metric, weights, gran)


def _scores_of(grads_of_group, metric, weights, gran):
    """``k -> {layer: scope-shaped score}`` from ``k -> {layer: weight gradient of group k}``."""
    return lambda k: _grads_to_scores(metric, grads_of_group(k), weights, gran)


def _grads_to_scores(metric, grads, weights, gran):
    return {
        name: _to_scopes(_element(metric, g.detach(), weights[name].detach()), gran, 0)
        for name, g in grads.items()
    }


def _element(metric: str, grad: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if metric == "grape":
        return (grad * w) ** 2
    if metric == "taylor":
        return (grad * w).abs()
    return grad.abs()


def _to_scopes(t: torch.Tensor, gran: Granularity, lead: int) -> torch.Tensor:
    """Average an element map (``lead`` leading batch dims, then the weight dims) to scopes."""
    if gran is Granularity.PARAM:
        return t
    if gran is Granularity.CHANNEL:
        return t.mean(dim=tuple(range(lead + 1, t.dim()))) if t.dim() > lead + 1 else t
    return t.mean(dim=tuple(range(lead, t.dim()))).unsqueeze(-1)


def _rademacher(w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    v = torch.randint(0, 2, w.shape, generator=gen).to(device=w.device, dtype=w.dtype)
    return v * 2 - 1


@contextlib.contextmanager
def _frozen(model: nn.Module, weights: list[torch.Tensor]) -> Iterator[None]:
    """Eval mode and ``requires_grad`` on the weights for the duration; everything restored after."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(w, w.requires_grad) for w in weights]
    try:
        model.eval()
        for w in weights:
            w.requires_grad_(True)
        yield
    finally:
        for w, flag in flags:
            w.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode  # per module: Module.train() would recurse and overwrite children


def _device(weights: dict[str, torch.Tensor], device: torch.device | str | None) -> torch.device:
    devices = {w.device for w in weights.values()}
    if len(devices) != 1:
        raise ValueError(
            f"the model's quantizable weights are spread over devices {sorted(map(str, devices))}"
        )
    here = devices.pop()
    if device is None:
        return here
    want = torch.device(device)
    if want.type != here.type or (want.index is not None and want.index != here.index):
        raise ValueError(
            f"device={str(device)!r} but the model is on {here}; move the model yourself "
            f"(calibrate never moves it)"
        )
    return here


def _expected_groups(groups: Iterable[int] | None) -> tuple[int, ...] | None:
    if groups is None:
        return None
    out = []
    for g in groups:
        if isinstance(g, bool) or not isinstance(g, int) or g < 0:
            raise ValueError(f"groups must be int ids >= 0; got {g!r}")
        out.append(g)
    if not out or len(set(out)) != len(out):
        raise ValueError(f"groups must be a non-empty list of distinct ids; got {out}")
    return tuple(sorted(out))


def _len_or_none(loader: object) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _result(acc, counts, expected, weights, gran, metric, seen) -> GroupImportance:
    wanted = expected if expected is not None else tuple(range(max(acc) + 1))
    missing = [g for g in wanted if g not in acc]
    if missing:
        warnings.warn(
            f"group(s) {missing} never appeared in the {seen} calibration batches; "
            f"their importance is all zeros and their count 0",
            UserWarning,
            stacklevel=3,
        )
    template = next(iter(acc.values()))
    importance = {}
    for g in wanted:
        maps = acc.get(g) or {n: torch.zeros_like(t) for n, t in template.items()}
        importance[g] = {n: maps[n].detach().cpu() for n in weights}
    return GroupImportance(
        importance=importance,
        counts={g: counts.get(g, 0) for g in wanted},
        metric=metric,
        granularity=gran,
        batches=seen,
    )
