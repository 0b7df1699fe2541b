"""Backbones by name: timm models, plus a registry of small custom models (``tiny_cnn`` for tests)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ._config import PAPER_MODELS

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

    ``pretrained``: ImageNet weights, from ``weights_dir/<name>.safetensors`` when given (timm's
    ``pretrained_cfg_overlay=dict(file=...)``; the head is replaced), else through timm's hub
    download. ViT-style models get ``img_size=image_size``.
    """
    if name in CUSTOM_MODELS:
        if pretrained:
            raise ValueError(f"model {name!r} is a custom model without pretrained weights")
        return CUSTOM_MODELS[name](num_classes, image_size)
    import timm

    kwargs: dict = {"num_classes": num_classes}
    if pretrained:
        kwargs["pretrained"] = True
        if weights_dir is not None:
            path = Path(weights_dir) / f"{name}.safetensors"
            if not path.is_file():
                raise FileNotFoundError(
                    f"--weights {weights_dir}: expected {path} for model {name!r}"
                )
            kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    if "vit" in name or "deit" in name:
        kwargs["img_size"] = image_size
    try:
        return timm.create_model(name, **kwargs)
    except Exception as exc:  # hub unreachable, file unreadable: say how to fix it
        if pretrained and weights_dir is None:
            raise RuntimeError(
                f"could not fetch ImageNet weights for {name!r} through timm ({exc}); pass "
                "--weights DIR holding <model>.safetensors, or --no-pretrained"
            ) from exc
        raise
