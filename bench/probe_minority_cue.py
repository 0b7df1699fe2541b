"""Is the positive control's planted cue learnable? ``python bench/probe_minority_cue.py``.

A sanity measurement, not a tuning loop (the variant's parameters were fixed before it ran):
a timm ResNet18 from scratch at 32 px, on 1600 semi-synthetic rows (the grid default's data
size and image size), AdamW, cosine schedule, augmented batches, for each variant; then
accuracy on a fresh class-balanced set per Fitzpatrick type (generated with the same variant,
other seeds), and for the minority-cue model also on types 5-6 with the contrast faded but the
rings removed: the drop there is how much the model reads the rings. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import timm
import torch
from fq_data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MINORITY_CUE,
    SYNTH_VARIANTS,
    generate_lesion_images,
    load_semisynthetic,
    make_loaders,
)
from torch import nn


def small_cnn() -> nn.Module:
    """The 3-layer CNN of fq-data's README check (tests/fq_data: darkest skin is hardest)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 3),
    )


def train(
    variant: str, *, model: str, n: int, size: int, epochs: int, seed: int, augment: bool
) -> nn.Module:
    """``model`` trained on ``variant``'s data (AdamW, cosine schedule, from scratch)."""
    torch.manual_seed(seed)
    dd = load_semisynthetic(n=n, image_size=size, seed=0, variant=variant)  # type: ignore[arg-type]
    loaders = make_loaders(dd, image_size=size, batch_size=64, train=augment, seed=seed)
    net = small_cnn() if model == "cnn" else timm.create_model(model, num_classes=3)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loaders.train))
    net.train()
    for epoch in range(epochs):
        loaders.set_epoch(epoch)
        for x, y, _g in loaders.train:
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


def accuracy(net: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy on ``[N, S, S, 3]`` uint8 images."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        return float((net(x).argmax(1).numpy() == labels).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1600)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="resnet18", help="a timm model, or cnn (3 conv layers)")
    ap.add_argument("--no-augment", action="store_true", help="plain batches (no AutoAugment)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    labels = np.repeat(np.arange(3), args.per_class)
    no_rings = dataclasses.replace(MINORITY_CUE, amplitude=1e-9)  # same fade, no visible rings
    print("| trained and tested on | type 1 | 2 | 3 | 4 | 5 | 6 | 5-6 without rings |")
    print("|---|---|---|---|---|---|---|---|")
    for variant, cue in SYNTH_VARIANTS.items():
        start = time.perf_counter()
        net = train(
            variant,
            model=args.model,
            n=args.n,
            size=args.size,
            epochs=args.epochs,
            seed=args.seed,
            augment=not args.no_augment,
        )
        row = []
        for fst in range(1, 7):
            img = generate_lesion_images(
                labels,
                np.full(len(labels), fst),
                num_classes=3,
                image_size=args.size,
                seed=100 + fst,
                cue=cue,
            )
            row.append(f"{accuracy(net, img, labels):.3f}")
        faded = "-"
        if cue is not None:
            both = np.resize([5, 6], len(labels))
            img = generate_lesion_images(
                labels, both, num_classes=3, image_size=args.size, seed=107, cue=no_rings
            )
            faded = f"{accuracy(net, img, labels):.3f}"
        took = time.perf_counter() - start
        print(f"| {variant} ({took:.0f} s) | " + " | ".join(row) + f" | {faded} |", flush=True)


if __name__ == "__main__":
    main()
