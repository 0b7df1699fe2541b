"""Seeded torch loaders over a canonical ``DatasetDict``: decode once, augment uint8 batches.

Images are decoded and resized once into a uint8 tensor ``[N, 3, S, S]`` (kept in memory, and on
disk under the cache dir for datasets backed by files, keyed by their fingerprint and ``S``), so
that a batch costs an index, the paper's augmentations on small uint8 images, and a normalize.
Shuffling and augmentation draw from seeds derived from ``(seed, epoch, batch)``, never from the
global RNG, so the same seed gives the same batches in the same order, with any ``num_workers``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from torch.utils.data import DataLoader, Sampler
from torchvision.transforms import v2

from ._assemble import open_image
from ._common import check_canonical, dataset_info, default_cache_dir, quiet_datasets
from ._io import atomic_write_bytes

logger = logging.getLogger("fq_data")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _decode_one(ref: dict | str, size: int) -> np.ndarray:
    img = open_image(ref, draft_size=size).convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), PILImage.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8)


@quiet_datasets()
def decode_images(ds: datasets.Dataset, image_size: int, *, cache: bool = True) -> torch.Tensor:
    """All images of ``ds`` decoded and resized to ``[N, 3, S, S]`` uint8 (S = ``image_size``).

    Resize squashes to S x S (bilinear, antialiased). With ``cache`` and a file-backed dataset the
    tensor is also stored as ``.npy`` under the cache dir (no pickle) and reused next time.
    """
    path = None
    if cache and ds.cache_files:
        key = hashlib.sha1(f"{ds._fingerprint}-{image_size}".encode()).hexdigest()[:20]
        path = default_cache_dir() / "decoded" / f"{key}.npy"
        if path.is_file():
            arr = np.load(path, allow_pickle=False)
            if arr.shape == (len(ds), 3, image_size, image_size):
                return torch.from_numpy(arr)
    raw = ds.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
    out = np.empty((len(ds), image_size, image_size, 3), dtype=np.uint8)
    pos = 0
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for batch in raw.iter(batch_size=512):
            refs = batch["image"]
            for k, arr in enumerate(pool.map(lambda r: _decode_one(r, image_size), refs)):
                out[pos + k] = arr
            pos += len(refs)
    chw = np.ascontiguousarray(out.transpose(0, 3, 1, 2))
    if path is not None:
        buf = io.BytesIO()
        np.save(buf, chw, allow_pickle=False)
        atomic_write_bytes(path, buf.getvalue())
    return torch.from_numpy(chw)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on a uint64 array (wrapping arithmetic, no warnings)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _image_streams(seed: int, keys: list[int]) -> np.ndarray:
    """``[B]`` uint64 stream states, a function of ``(seed, key)`` only."""
    s = _splitmix64(np.array([seed % 2**64], dtype=np.uint64))
    k = np.array([key % 2**64 for key in keys], dtype=np.uint64)
    return _splitmix64(s + _splitmix64(k + _GOLDEN))


def _uniforms(stream: np.ndarray, n: int) -> np.ndarray:
    """``[B, n]`` float64 uniforms in [0, 1) from each stream (53-bit mantissas)."""
    j = np.arange(n, dtype=np.uint64)[None, :] * _GOLDEN
    return (_splitmix64(stream[:, None] + j) >> np.uint64(11)).astype(np.float64) / 2.0**53


class PaperAugment:
    """The paper's train-time augmentation on a uint8 batch ``[B, 3, S, S]`` (resize done before).

    Per image: random horizontal and vertical flips (p = 0.5 each), a random rotation drawn
    uniformly in ``[-rotation_degrees, rotation_degrees]`` (nearest neighbour, zero fill, as
    torchvision's ``RandomRotation``), then AutoAugment with the ImageNet policy. Flips and
    rotation are batched (one ``grid_sample``); AutoAugment runs per image. Every draw of image
    ``i`` comes from ``(seed, keys[i])`` alone, so an image is augmented the same way whatever its
    position, and a batch split over processes (``accelerate``'s ``split_batches``) is augmented
    exactly like the whole batch.
    """

    def __init__(self, rotation_degrees: float = 15.0):
        if not rotation_degrees >= 0:
            raise ValueError(f"rotation_degrees must be >= 0, got {rotation_degrees!r}")
        self.rotation_degrees = float(rotation_degrees)
        self.autoaugment = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)

    def __call__(
        self, x: torch.Tensor, seed: int, keys: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Augment ``x`` (uint8 ``[B, 3, S, S]``); ``keys``: ``B`` ints naming the images (the
        dataset indices in the loaders; default ``0..B-1``)."""
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise TypeError(
                f"x must be a uint8 [B, 3, S, S] tensor, got {x.dtype} {tuple(x.shape)}"
            )
        b = x.shape[0]
        keys = list(range(b)) if keys is None else [int(k) for k in keys]
        if len(keys) != b:
            raise ValueError(f"keys must name each of the {b} images, got {len(keys)} keys")
        stream = _image_streams(int(seed), keys)  # [B] uint64, one stream per image
        u = torch.from_numpy(_uniforms(stream, 3)).float()  # [B, 3]
        hflip = (u[:, 0] < 0.5).view(b, 1, 1, 1)
        vflip = (u[:, 1] < 0.5).view(b, 1, 1, 1)
        x = torch.where(hflip, x.flip(-1), x)
        x = torch.where(vflip, x.flip(-2), x)
        if self.rotation_degrees > 0:
            angle = (u[:, 2] * 2 - 1) * np.deg2rad(self.rotation_degrees)
            cos, sin, zero = angle.cos(), angle.sin(), torch.zeros(b)
            theta = torch.stack(
                [torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1
            )
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(
                x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
            ).to(torch.uint8)
        # AutoAugment draws from the global RNG: fork it so batches stay reproducible and the
        # caller's RNG stream is untouched; one torch seed per image, from the image's own stream
        aa_seeds = (_splitmix64(stream + np.uint64(3)) >> np.uint64(2)).tolist()
        with torch.random.fork_rng(devices=[]):
            out = []
            for xi, s in zip(x, aa_seeds, strict=True):
                torch.default_generator.manual_seed(s)  # CPU only: torch.manual_seed costs 8x
                out.append(self.autoaugment(xi))
            return torch.stack(out)


class SeededBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(batch_seed, index)`` pairs; order and seeds depend on (seed, epoch) only.

    Each ``iter()`` runs one epoch and advances the epoch counter; :meth:`set_epoch` sets it (to
    resume at epoch ``e``). The batch seed drives the augmentation of that batch.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, drop_last: bool, seed: int):
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next ``iter()`` runs (0-based)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        order = (
            np.random.default_rng([self.seed, epoch]).permutation(self.n)
            if self.shuffle
            else np.arange(self.n)
        )
        seeds = np.random.SeedSequence([self.seed, epoch]).generate_state(max(len(self), 1))
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield [(int(seeds[b]), int(i)) for i in idx]


class _TensorSplit(torch.utils.data.Dataset):
    """One split as tensors; ``__getitems__`` builds a whole normalized batch at once."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        groups: torch.Tensor,
        augment: PaperAugment | None,
    ):
        self.images, self.labels, self.groups, self.augment = images, labels, groups, augment
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.inv_std = 1.0 / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, items: list[tuple[int, int]]):
        idx = torch.tensor([i for _, i in items], dtype=torch.int64)
        x = self.images[idx]
        if self.augment is not None:
            x = self.augment(x, items[0][0], keys=idx.tolist())
        x = (x.float().div_(255.0) - self.mean).mul_(self.inv_std)
        return x, self.labels[idx], self.groups[idx]

    def __getitem__(self, item: int):
        x, y, g = self.__getitems__([(0, int(item))])
        return x[0], y[0], g[0]


def _as_batch(batch):
    return batch


@dataclass(frozen=True, kw_only=True)
class Loaders:
    """Train and test loaders of one canonical ``DatasetDict`` plus its class and group names.

    Batches are ``(image float32 [B, 3, S, S] ImageNet-normalized, label int64 [B],
    group int64 [B])``. ``train`` is shuffled (seeded) and augmented when built with
    ``train=True``; ``test`` is neither.
    """

    train: DataLoader
    test: DataLoader
    class_names: tuple[str, ...]
    group_names: tuple[str, ...]
    image_size: int
    seed: int
    num_classes: int = field(init=False)
    num_groups: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_classes", len(self.class_names))
        object.__setattr__(self, "num_groups", len(self.group_names))

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass over ``train`` the given epoch (for resuming a run)."""
        sampler = self.train.batch_sampler
        if not isinstance(sampler, SeededBatchSampler):
            raise TypeError(
                "Loaders.set_epoch needs train.batch_sampler to be a SeededBatchSampler "
                f"(as make_loaders builds it), got {type(sampler).__name__}"
            )
        sampler.set_epoch(epoch)


def _split_tensors(
    ds: datasets.Dataset, image_size: int, cache: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images = decode_images(ds, image_size, cache=cache)
    labels = torch.as_tensor(np.asarray(ds["label"], dtype=np.int64))
    groups = torch.as_tensor(np.asarray(ds["group"], dtype=np.int64))
    return images, labels, groups


def make_loaders(
    dataset_dict: datasets.DatasetDict,
    *,
    image_size: int,
    batch_size: int,
    train: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool | None = None,
    rotation_degrees: float = 15.0,
    cache: bool = True,
) -> Loaders:
    """Build seeded loaders over the ``train`` and ``test`` splits of a canonical DatasetDict.

    ``train=True``: the train split gets the paper's augmentations (flips, rotation of up to
    ``rotation_degrees``, AutoAugment ImageNet), else eval transforms (resize and normalize),
    which calibration may want; it is shuffled either way. ``drop_last`` (train only) defaults to
    True when training and the split holds at least one full batch. Deterministic: same seed,
    same batches in the same order.
    """
    for name, value in (("image_size", image_size), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    class_names, group_names = dataset_info(dataset_dict)
    check_canonical(dataset_dict)
    tr, te = (_split_tensors(dataset_dict[s], image_size, cache) for s in ("train", "test"))
    if drop_last is None:
        drop_last = train and len(tr[1]) >= batch_size
    augment = PaperAugment(rotation_degrees) if train else None

    def loader(
        t: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        aug: PaperAugment | None,
        shuffle: bool,
        last: bool,
        offset: int,
    ) -> DataLoader:
        sampler = SeededBatchSampler(
            len(t[1]), batch_size, shuffle=shuffle, drop_last=last, seed=seed + offset
        )
        return DataLoader(
            _TensorSplit(t[0], t[1], t[2], aug),
            batch_sampler=sampler,
            collate_fn=_as_batch,
            num_workers=num_workers,
            persistent_workers=False,
        )

    return Loaders(
        train=loader(tr, augment, True, drop_last, 0),
        test=loader(te, None, False, False, 1),
        class_names=class_names,
        group_names=group_names,
        image_size=image_size,
        seed=seed,
    )


@dataclass(frozen=True, kw_only=True)
class LoadingTiming:
    """Data-loading cost measured by :func:`measure_loading_time` (seconds, wall clock)."""

    decode_seconds: float
    seconds_per_batch: float
    batches: int
    batch_size: int
    image_size: int

    def share_of(self, step_seconds: float) -> float:
        """Loading time as a fraction of ``loading + step`` for a training step of that length."""
        if step_seconds <= 0:
            raise ValueError(f"step_seconds must be > 0, got {step_seconds!r}")
        return self.seconds_per_batch / (self.seconds_per_batch + step_seconds)


def measure_loading_time(
    dataset_dict: datasets.DatasetDict | None = None,
    *,
    image_size: int = 64,
    batch_size: int = 64,
    batches: int = 20,
    seed: int = 0,
) -> LoadingTiming:
    """Time the one-off decode and the mean time per augmented train batch.

    Default data: the semi-synthetic Fitzpatrick17k default (64 px, batch 64), which is what the
    grid trains on offline. Compare ``seconds_per_batch`` with a training step via
    :meth:`LoadingTiming.share_of`.
    """
    if dataset_dict is None:
        from ._synth import load_semisynthetic

        dataset_dict = load_semisynthetic("fitzpatrick17k", image_size=image_size, seed=seed)
    t0 = time.perf_counter()
    loaders = make_loaders(
        dataset_dict,
        image_size=image_size,
        batch_size=batch_size,
        train=True,
        seed=seed,
        cache=False,
    )
    decode = time.perf_counter() - t0
    n, t0 = 0, time.perf_counter()
    while n < batches:
        for _ in loaders.train:
            n += 1
            if n == batches:
                break
    per_batch = (time.perf_counter() - t0) / max(n, 1)
    return LoadingTiming(
        decode_seconds=decode,
        seconds_per_batch=per_batch,
        batches=n,
        batch_size=batch_size,
        image_size=image_size,
    )
