"""Torch helpers (optional extra ``fq-fairmetrics[torch]``): evaluating a model, measuring its cost.

``evaluate`` runs a model (an ``nn.Module``, an ONNX Runtime session or any callable to logits) over
``(image, label, group)`` batches into a :class:`FairnessReport`; ``predict`` keeps each sample's
prediction as :class:`~fq_fairmetrics.Predictions` (saved as CSV/Parquet).
``layer_costs`` runs one forward pass with hooks on every ``nn.Conv2d`` and ``nn.Linear`` and turns
the real input/output shapes into MACs, so a Linear applied to 197 tokens counts 197 times;
``model_cost`` adds every other stored tensor, so its ``size_bytes`` is the packed file's payload.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - exercised in the clean-venv test
    raise ImportError(
        'fq_fairmetrics.torch needs PyTorch: pip install "fq-fairmetrics[torch]"'
    ) from exc

from ._cost import FLOAT_BITS, CostReport, LayerCost, cost_report
from ._predictions import Predictions
from ._report import FairnessAccumulator, FairnessReport

__all__ = ["evaluate", "layer_costs", "model_cost", "predict"]

_LAYER_TYPES = (nn.Conv2d, nn.Linear)


def _macs(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> int:
    """MACs of one call over the whole batch.

    Conv: ``numel(output) * (C_in/groups) * kh * kw`` = ``B * H_out * W_out * C_out * (C_in/groups)
    * kh * kw``. Linear: ``numel(input) / in_features * in_features * out_features``.
    """
    if isinstance(module, nn.Conv2d):
        return output.numel() * int(np.prod(module.weight.shape[1:]))
    x = inputs[0]
    return (x.numel() // module.in_features) * module.in_features * module.out_features


def _scopes(
    name: str, weight_shape: tuple[int, ...], bits: Any
) -> tuple[np.ndarray, np.ndarray, int | None]:
    """Bits ``[S]``, params per scope ``[S]`` and the scale count for one layer's bit tensor.

    Scope shape ``(1,)`` = per tensor, ``(O,)`` = per output channel, the weight shape = per
    parameter (scales shared per (output channel, bit-width) pair with ``1 <= b < 32``).
    """
    b = np.asarray(bits.detach().cpu() if isinstance(bits, torch.Tensor) else bits).astype(np.int64)
    n = int(np.prod(weight_shape))
    out_ch = weight_shape[0]
    if b.shape == tuple(weight_shape):
        rows = b.reshape(out_ch, -1)
        quantized = (rows >= 1) & (rows < FLOAT_BITS)
        pairs = np.unique(
            (np.arange(out_ch)[:, None] * 64 + rows)[quantized]
        )  # one scale per (channel, bit) pair present
        return b.reshape(-1), np.ones(n, dtype=np.int64), int(pairs.size)
    if b.size in (1, out_ch) and b.ndim <= 1:
        return b.reshape(-1), np.full(b.size, n // b.size, dtype=np.int64), None
    raise ValueError(
        f"assignment bits for layer {name!r} have shape {tuple(b.shape)}; "
        "expected (1,) per tensor, "
        f"({out_ch},) per channel or {tuple(weight_shape)} per parameter"
    )


def _model_device(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def _batch_parts(batch: Any, i: int) -> tuple[Any, Any, Any]:
    if isinstance(batch, Mapping):
        missing = [k for k in ("image", "label", "group") if k not in batch]
        if missing:
            raise ValueError(f"batch {i}: dict batch lacks key(s) {missing}; found {sorted(batch)}")
        return batch["image"], batch["label"], batch["group"]
    if isinstance(batch, tuple | list) and len(batch) == 3:
        return batch[0], batch[1], batch[2]
    raise ValueError(
        f"batch {i}: expected (image, label, group) or a dict with those keys; got "
        f"{type(batch).__name__}"
        + (f" of length {len(batch)}" if hasattr(batch, "__len__") else "")
    )


def _forward(model: Any) -> Any:
    """``x [B, ...] -> logits`` for an ``nn.Module`` (on its device), an ONNX Runtime session
    (its first input, float32 numpy) or any other callable."""
    if isinstance(model, nn.Module):
        device = _model_device(model)
        return lambda x: model(x.to(device))
    if callable(getattr(model, "run", None)) and callable(getattr(model, "get_inputs", None)):
        name = model.get_inputs()[0].name
        return lambda x: model.run(None, {name: x.detach().cpu().numpy().astype(np.float32)})[0]
    if callable(model):
        return model
    raise TypeError(
        "model must be an nn.Module, an onnxruntime.InferenceSession or a callable from a batch "
        f"[B, ...] to logits [B, C]; got {type(model).__name__}"
    )


def _scored_batches(
    model: Any, loader: Iterable[Any], names: tuple[Hashable, ...] | None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(labels [B], logits [B, C] float32, group codes [B])`` per batch, under ``no_grad`` and,
    for an ``nn.Module``, in eval mode (each module's training flag restored afterwards)."""
    modes = {m: m.training for m in model.modules()} if isinstance(model, nn.Module) else {}
    forward = _forward(model)
    try:
        for m in modes:
            m.eval()
        with torch.no_grad():
            for i, batch in enumerate(loader):
                x, y, g = _batch_parts(batch, i)
                out = forward(x)
                logits = torch.as_tensor(out) if not isinstance(out, torch.Tensor) else out
                if logits.ndim != 2:
                    raise ValueError(
                        f"batch {i}: model output must be logits [B, C]; got "
                        f"{getattr(out, 'shape', type(out).__name__)}"
                    )
                g_codes = torch.as_tensor(g).reshape(-1).cpu().numpy()
                if names is not None:
                    bad = sorted({int(v) for v in g_codes if not 0 <= int(v) < len(names)})
                    if bad:
                        raise ValueError(
                            f"batch {i}: group code(s) {bad[:5]} outside group_names "
                            f"({len(names)} names: codes 0..{len(names) - 1})"
                        )
                yield (
                    torch.as_tensor(y).reshape(-1).cpu().numpy(),
                    logits.float().cpu().numpy(),
                    g_codes,
                )
    finally:
        for m, mode in modes.items():
            m.training = mode


def evaluate(
    model: Any,
    loader: Iterable[Any],
    *,
    group_names: Sequence[Hashable] | None = None,
    class_names: Sequence[Hashable] | None = None,
) -> FairnessReport:
    """Group fairness of ``model`` on ``loader``: the README's ``--evaluate-->`` arrow as a call.

    Runs the model over every batch under ``torch.no_grad()`` and streams the argmax predictions
    into a :class:`FairnessAccumulator`. An ``nn.Module`` runs in eval mode on its own device,
    each module's training flag restored afterwards.

    Args:
        model: a classifier returning logits ``[B, C]``: an ``nn.Module``, an
            ``onnxruntime.InferenceSession`` (so the exported file itself is evaluated; fed its
            first input as float32), or any callable from an image batch to logits (a torch
            tensor or a numpy array).
        loader: yields ``(image [B, ...], label [B] int, group [B] int)`` tuples, or dicts with keys
            ``image``, ``label``, ``group`` (``fq_data.make_loaders(...).test`` does).
        group_names: names of group codes ``0..G-1`` (e.g. ``loaders.group_names``); the report
            lists every named group, also one without samples (NaN, ignored by the metrics).
            Default: the codes present.
        class_names: names of classes ``0..C-1`` (e.g. ``loaders.class_names``); default: codes.

    Returns:
        The :class:`FairnessReport` (``.worst_acc``, ``.gap``, ``.eodd``, ...; ``.group_names``).

    Raises:
        ValueError: an empty loader, a malformed batch, logits that are not ``[B, C]``, a group
            code outside ``group_names``. TypeError: a model that is none of the above.
    """
    names = None if group_names is None else tuple(group_names)
    acc: FairnessAccumulator | None = None
    for y, logits, g in _scored_batches(model, loader, names):
        if acc is None:
            acc = FairnessAccumulator(
                n_classes=None if class_names is not None else int(logits.shape[1]),
                class_names=class_names,
                group_names=names,
            )
        acc.update(y, logits, sensitive_features=g)
    if acc is None:
        raise ValueError("loader is empty; evaluate needs at least one batch")
    return acc.compute()


def predict(
    model: Any,
    loader: Iterable[Any],
    *,
    group_names: Sequence[Hashable] | None = None,
    class_names: Sequence[Hashable] | None = None,
) -> Predictions:
    """Every sample's predicted label, as :class:`Predictions` (save it with ``.save(path)``).

    ``model``, ``loader``, ``group_names``: as :func:`evaluate`. ``sample_id`` is the sample's
    position in the loader (keep the test loader unshuffled to pair two models' files). With
    ``class_names``, labels and predictions are written as names; with ``group_names``, groups.
    """
    names = None if group_names is None else tuple(group_names)
    parts = list(_scored_batches(model, loader, names))
    if not parts:
        raise ValueError("loader is empty; predict needs at least one batch")
    y = np.concatenate([p[0] for p in parts]).astype(np.int64)
    pred = np.concatenate([p[1].argmax(axis=1) for p in parts]).astype(np.int64)
    g = np.concatenate([p[2] for p in parts]).astype(np.int64)
    label: np.ndarray = y
    prediction: np.ndarray = pred
    if class_names is not None:
        classes = np.asarray([str(c) for c in class_names])
        for arr, what in ((y, "label"), (pred, "prediction")):
            if arr.min() < 0 or arr.max() >= classes.size:
                raise ValueError(
                    f"a {what} code is outside class_names ({classes.size} names: codes "
                    f"0..{classes.size - 1})"
                )
        label, prediction = classes[y], classes[pred]
    group = g if names is None else np.asarray([str(n) for n in names])[g]
    return Predictions(sample_id=np.arange(y.size), label=label, group=group, prediction=prediction)


def _quantizer_bits(name: str, module: nn.Module) -> Any:
    """The bits a weight parametrization computes with, or ``None`` for a plain layer.

    Duck-typed (this package never imports fq-quant): ``rounded_bits()`` (learnable bits) or a
    ``bits`` tensor (fixed bits). A parametrization without either raises: its bits are unknown.
    """
    params = getattr(module, "parametrizations", None)
    if params is None or "weight" not in params:
        return None
    for q in params["weight"]:
        if callable(getattr(q, "rounded_bits", None)):
            return q.rounded_bits()
        bits = getattr(q, "bits", None)
        if isinstance(bits, torch.Tensor):
            return bits
    kinds = [type(q).__name__ for q in params["weight"]]
    raise ValueError(
        f"layer {name!r} has a weight parametrization {kinds} whose bits cannot be read "
        "(no rounded_bits() or bits tensor); pass assignment= with the bits it computes with"
    )


def layer_costs(
    model: nn.Module, example_input: torch.Tensor | tuple[Any, ...], assignment: Any = None
) -> list[LayerCost]:
    """One :class:`LayerCost` per ``nn.Conv2d`` / ``nn.Linear`` (subclasses too), in module order.

    MACs are per sample: measured by forward hooks on one pass of ``example_input`` (batch on dim
    0 of its first tensor) and divided by the batch size. Conv: ``H_out*W_out*(C_in/groups)*C_out
    *kh*kw``; Linear: ``(numel(input)/in_features) * in * out`` (every token counts). A layer used
    twice counts twice; a layer never called gets 0 MACs. ``nn.MultiheadAttention`` applies its
    ``out_proj`` without calling it: that layer is counted from the attention's query shape
    (``tokens * E * E``). Its input projection is a bare parameter (``in_proj_weight``), not a
    layer, and the attention matmuls are not layers: neither is counted
    (``fq_quant.unpack_attention(model)`` turns the input projection into counted layers).

    The pass runs under ``torch.no_grad()`` in eval mode; each module's training flag is
    restored afterwards. The model and input stay on the caller's device.

    Args:
        model: the network.
        example_input: a tensor ``[B, ...]`` or a tuple of positional inputs.
        assignment: ``None``: the bits the model itself computes with, read from each layer's
            weight quantizer (``fq_quant.quantize_model``'s fixed bits, ``fq_baq``'s learnable
            bits rounded); a layer without one is float (one 32-bit scope). Or a mapping layer
            name -> bit tensor, or any object with such a ``.bits`` mapping (e.g. fq-quant's
            ``BitAssignment``). Bit tensor shapes: ``(1,)`` per tensor, ``(O,)`` per channel,
            the weight shape per parameter. Layers missing from it stay float (32 bits).

    Raises:
        ValueError: the model has no Conv2d/Linear, the assignment names an unknown layer or has
            a bit tensor of the wrong shape; without ``assignment``, a layer carries a weight
            parametrization whose bits cannot be read.
    """
    layers = {n: m for n, m in model.named_modules() if n and isinstance(m, _LAYER_TYPES)}
    if not layers:
        raise ValueError(f"model {type(model).__name__} has no nn.Conv2d or nn.Linear layer")
    bits_map: Mapping[str, Any] = {}
    if assignment is None:
        read = {n: _quantizer_bits(n, m) for n, m in layers.items()}
        bits_map = {n: b for n, b in read.items() if b is not None}
    else:
        bits_map = assignment.bits if hasattr(assignment, "bits") else assignment
        if not isinstance(bits_map, Mapping):
            raise TypeError(
                "assignment must be None, a Mapping of layer name -> bits, or have a .bits "
                "Mapping; "
                f"got {type(assignment).__name__}"
            )
        unknown = sorted(set(bits_map) - set(layers))
        if unknown:
            raise ValueError(f"assignment names layers not in the model: {unknown[:5]}")

    inputs = example_input if isinstance(example_input, tuple | list) else (example_input,)
    batch = int(inputs[0].shape[0])
    macs = dict.fromkeys(layers, 0)

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            macs[name] += _macs(module, args, output)

        return hook

    def mha_hooks(out_name: str, embed: int):
        """``nn.MultiheadAttention`` applies ``out_proj`` without calling it: count it here."""
        before: list[int] = []

        def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            before.append(macs[out_name])

        def post(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
        ) -> None:
            query = args[0] if args else kwargs["query"]
            if macs[out_name] == before.pop():  # out_proj's own hook did not fire
                macs[out_name] += (query.numel() // embed) * embed * embed

        return pre, post

    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(hook_for(n)) for n, m in layers.items()]
    for name, m in model.named_modules():
        out_name = f"{name}.out_proj" if name else "out_proj"
        if isinstance(m, nn.MultiheadAttention) and out_name in layers:
            pre, post = mha_hooks(out_name, m.embed_dim)
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post, with_kwargs=True))
    try:
        model.eval()
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode  # per module: submodules may have had mixed modes

    costs = []
    for name, module in layers.items():
        shape = tuple(module.weight.shape)
        if name in bits_map:
            bits, pps, n_scales = _scopes(name, shape, bits_map[name])
        else:
            bits, pps, n_scales = np.array([FLOAT_BITS]), np.array([int(np.prod(shape))]), None
        costs.append(
            LayerCost(
                name=name,
                macs=macs[name] // batch,
                bits=bits,
                params_per_scope=pps,
                n_scales=n_scales,
            )
        )
    return costs


def model_cost(
    model: nn.Module,
    example_input: torch.Tensor | tuple[Any, ...],
    assignment: Any = None,
    *,
    act_bits: int = FLOAT_BITS,
) -> CostReport:
    """:func:`cost_report` of a whole model: its layers, plus every other tensor it stores.

    ``layer_costs(model, example_input, assignment)`` (bits read from the model when
    ``assignment`` is None) and ``extra_bytes`` = the bytes of every ``state_dict`` tensor that is
    not a Conv2d/Linear weight (biases, norms, their running statistics, ``num_batches_tracked``,
    embeddings), each at its own dtype size; a weight quantizer's own state (bits, the float
    original under ``parametrizations``) is not stored in a packed file and is not counted. So
    ``size_bytes`` is the payload of ``fq_quant.export_packed``'s file, which adds a safetensors
    header (names, shapes and the assignment as JSON) that is not counted here.
    """
    layers = layer_costs(model, example_input, assignment)
    weights = {f"{c.name}.weight" for c in layers}
    extra = 0
    for key, value in model.state_dict().items():
        if key in weights or ".parametrizations." in f".{key}":
            continue
        extra += value.numel() * value.element_size()
    return cost_report(layers, extra_bytes=extra, act_bits=act_bits)
