"""Backbones by name: timm models, plus a registry of small custom models (``tiny_cnn`` for tests)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ._names import PAPER_MODELS

logger = logging.getLogger("fq_bench.grid")

#: ``builder(num_classes, image_size) -> nn.Module`` for models timm does not provide.
CustomBuilder = Callable[[int, int], nn.Module]


class TinyCNN(nn.Module):
    """Two conv layers and a linear head (~3k weights): quick enough for end-to-end tests."""

    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, 3, H, W]`` -> logits ``[B, num_classes]``."""
        return self.head(self.features(x))


CUSTOM_MODELS: dict[str, CustomBuilder] = {"tiny_cnn": lambda c, _s: TinyCNN(c)}


def register_model(name: str, builder: CustomBuilder) -> None:
    """Make ``name`` buildable by the grid (``builder(num_classes, image_size)``)."""
    CUSTOM_MODELS[name] = builder


def check_model_names(names: tuple[str, ...]) -> None:
    """Raise ``ValueError`` listing the valid names when a name is neither custom nor timm's."""
    import timm

    known = set(timm.list_models())
    bad = [n for n in names if n not in CUSTOM_MODELS and n not in known]
    if bad:
        raise ValueError(
            f"models: unknown name(s) {bad}; valid names: {', '.join(PAPER_MODELS + tuple(CUSTOM_MODELS))}"
            " or any name in timm.list_models()"
        )


def build_model(
    name: str,
    *,
    num_classes: int,
    image_size: int,
    pretrained: bool = False,
    weights_dir: str | None = None,
) -> nn.Module:
    """A fresh model with a ``num_classes`` head; weights from the global torch RNG (seed first).

    A custom model's ``nn.MultiheadAttention`` modules are replaced by
    ``fq_quant.LinearMultiheadAttention`` (same function), so their q/k/v projections are
    quantized too; timm's attention already uses ``nn.Linear``.

    ``pretrained``: ImageNet weights, from ``weights_dir/<name>.safetensors`` when given (timm's
    ``pretrained_cfg_overlay=dict(file=...)``; the head is replaced), else through timm's hub
    download. ViT-style models get ``img_size=image_size``.
    """
    if name in CUSTOM_MODELS:
        if pretrained:
            raise ValueError(f"model {name!r} is a custom model without pretrained weights")
        from fq_quant import unpack_attention

        # torch's nn.MultiheadAttention (torchvision ViTs, nn.Transformer*) keeps q/k/v in a bare
        # parameter that would stay float: every weight matrix must be a quantizable layer
        return unpack_attention(CUSTOM_MODELS[name](num_classes, image_size))
    import timm

    kwargs: dict = {"num_classes": num_classes}
    if pretrained:
        kwargs["pretrained"] = True
        if weights_dir is not None:
            path = weights_file(weights_dir, name)
            if not path.is_file():
                raise FileNotFoundError(
                    f"--weights {weights_dir}: expected {path} for model {name!r}"
                )
            kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    try:
        if "vit" in name or "deit" in name:
            try:
                return timm.create_model(name, img_size=image_size, **kwargs)
            except TypeError as exc:
                # TinyViT has no img_size argument (its stages adapt to any resolution)
                if "img_size" not in str(exc):
                    raise
        return timm.create_model(name, **kwargs)
    except Exception as exc:  # hub unreachable, file unreadable: say how to fix it
        if pretrained and weights_dir is None:
            raise RuntimeError(
                f"could not fetch ImageNet weights for {name!r} through timm ({exc}); pass "
                "--weights DIR holding <model>.safetensors, or --no-pretrained"
            ) from exc
        raise


def weights_file(weights_dir: str | Path, name: str) -> Path:
    """``weights_dir/<name>.safetensors``: the offline ImageNet weights of model ``name``."""
    return Path(weights_dir) / f"{name}.safetensors"


def check_weights_file(path: str | Path, name: str) -> None:
    """Raise ``ValueError`` naming ``path`` unless it is a readable safetensors file holding the
    tensors of timm's ``name`` (every name and shape but the classifier head's, which is
    replaced): a truncated file or another architecture's weights fail here, before training.
    Reads the header only (no tensor data)."""
    import timm
    from safetensors import safe_open
    from timm.models import get_pretrained_cfg

    try:
        with safe_open(str(path), framework="pt") as fh:
            found = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise ValueError(
            f"weights file {path} is unreadable ({exc}); truncated or not safetensors"
        ) from None
    cfg = get_pretrained_cfg(name)
    classifier = cfg.classifier if cfg is not None and cfg.classifier else ()
    heads: tuple[str, ...] = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def body(d: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        return {k: v for k, v in d.items() if not k.startswith(tuple(f"{h}." for h in heads))}

    got, need = body(found), body(want)
    missing = sorted(k for k in set(need) - set(got) if not k.endswith("num_batches_tracked"))
    shapes = sorted(k for k in set(need) & set(got) if need[k] != got[k])
    if missing or shapes:
        detail = ", ".join(
            [f"missing {missing[:3]}" if missing else ""]
            + [f"{k}: {got[k]} vs {need[k]}" for k in shapes[:3]]
        ).strip(", ")
        raise ValueError(
            f"weights file {path} does not hold {name!r} weights ({len(missing)} tensor(s) "
            f"missing, {len(shapes)} of another shape: {detail})"
        )


def _hub_reachable(host: str = "huggingface.co", timeout_s: float = 3.0) -> bool:
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _hub_cached(name: str) -> bool:
    """Whether timm would find ``name``'s default pretrained weights in the local HF cache."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        return False
    repo = cfg.hf_hub_id
    files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
    files += ["model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"]
    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)


def check_pretrained_sources(
    models: tuple[str, ...], *, pretrained: bool, weights_dir: str | None
) -> None:
    """Fail fast, before any data is loaded, when ``pretrained`` weights cannot be had.

    Checks that no custom model is asked for ImageNet weights, that ``weights_dir`` holds
    ``<model>.safetensors`` for every model, and, without ``weights_dir``, that the Hugging Face
    hub answers (3 s TCP connect to ``huggingface.co:443``; ``HF_HUB_OFFLINE=1`` counts as
    unreachable) or the weights are already in the local HF cache. Raises ``ValueError`` or
    ``FileNotFoundError`` (naming ``--weights``) otherwise; does nothing when not ``pretrained``.
    """
    if not pretrained:
        return
    custom = [m for m in models if m in CUSTOM_MODELS]
    if custom:
        raise ValueError(
            f"pretrained=True but model(s) {custom} are custom models without ImageNet weights; "
            "pass --no-pretrained or choose timm models"
        )
    if weights_dir is not None:
        missing = [str(weights_file(weights_dir, m)) for m in models]
        missing = [p for p in missing if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(
                f"--weights {weights_dir}: missing {missing}; the folder must hold "
                "<model>.safetensors for every model (a timm state_dict, any head)"
            )
        for m in models:
            check_weights_file(weights_file(weights_dir, m), m)
        return
    uncached = [m for m in models if not _hub_cached(m)]
    if uncached and not _hub_reachable():
        raise RuntimeError(
            f"pretrained=True needs ImageNet weights for {uncached}, but the Hugging Face hub is "
            "unreachable and they are not in the local cache; pass --weights DIR holding "
            "<model>.safetensors (timm state_dicts), or --no-pretrained"
        )
