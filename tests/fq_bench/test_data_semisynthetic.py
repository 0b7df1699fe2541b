"""The offline default: determinism, the real joint distribution, the cache, the marker, and
the group difficulty ordering it is built to show."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from fq_bench.data import (
    GENERATOR_VERSION,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SEMISYNTHETIC_MARKER,
    _synth,
    dataset_info,
    generate_lesion_images,
    is_semisynthetic,
    load_semisynthetic,
    make_loaders,
)
from fq_bench.data._common import METADATA_DIR
from torch import nn


def test_generator_is_deterministic_and_chunk_independent():
    labels = np.array([0, 1, 2, 0, 1, 2, 2])
    types = np.array([1, 2, 3, 4, 5, 6, 1])
    a = generate_lesion_images(labels, types, num_classes=3, image_size=16, seed=7)
    b = generate_lesion_images(labels, types, num_classes=3, image_size=16, seed=7, chunk=3)
    c = generate_lesion_images(labels, types, num_classes=3, image_size=16, seed=8)
    assert a.shape == (7, 16, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)  # chunking only batches the arithmetic
    assert np.array_equal(
        a, generate_lesion_images(labels, types, num_classes=3, image_size=16, seed=7)
    )
    assert not np.array_equal(a, c)
    # skin tone follows the Fitzpatrick type: the corner pixels (skin) darken from type 1 to 6
    corner = a[:, :3, :3].reshape(7, -1).mean(1)
    assert corner[0] > corner[1] > corner[2] > corner[3] > corner[4] > corner[5]
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        generate_lesion_images(np.array([3]), np.array([1]), num_classes=3)


def test_same_seed_same_dataset_across_cache_dirs(tmp_path):
    a = load_semisynthetic(n=120, image_size=16, seed=3, cache_dir=tmp_path / "a")
    b = load_semisynthetic(n=120, image_size=16, seed=3, cache_dir=tmp_path / "b")
    c = load_semisynthetic(n=120, image_size=16, seed=4, cache_dir=tmp_path / "c")
    for split in ("train", "test"):
        assert a[split]["id"] == b[split]["id"]
        pa = np.stack([np.asarray(i) for i in a[split]["image"]])
        pb = np.stack([np.asarray(i) for i in b[split]["image"]])
        assert np.array_equal(pa, pb)
    assert set(a["train"]["id"]) != set(c["train"]["id"])


def test_sample_keeps_the_real_joint_label_group_distribution():
    n = 900
    dd = load_semisynthetic(n=n, image_size=8, seed=0)
    real = pl.read_csv(METADATA_DIR / "fitzpatrick17k.csv").filter(pl.col("fitzpatrick_scale") > 0)
    classes, groups = dataset_info(dd)
    want = {}
    counts = real.group_by("three_partition_label", "fitzpatrick_scale").len()
    for lab, fst, cnt in counts.iter_rows():
        want[(classes.index(lab), fst - 1)] = n * cnt / real.height
    got = {}
    for split in ("train", "test"):
        for lab, grp in zip(dd[split]["label"], dd[split]["group"], strict=True):
            got[(lab, grp)] = got.get((lab, grp), 0) + 1
    assert sum(got.values()) == n
    for key, expected in want.items():
        assert abs(got.get(key, 0) - expected) < 1.0, key  # largest-remainder rounding
    # the real rows are kept: every id is a real md5hash with its real type
    truth = dict(zip(real["md5hash"], real["fitzpatrick_scale"], strict=True))
    assert all(
        truth[i] == f
        for i, f in zip(dd["train"]["id"], dd["train"]["fitzpatrick_scale"], strict=True)
    )


def test_marker_and_cache_hit(tmp_path, monkeypatch):
    dd = load_semisynthetic(n=60, image_size=8, seed=0, cache_dir=tmp_path)
    assert is_semisynthetic(dd)
    assert dd["test"].info.description.startswith(SEMISYNTHETIC_MARKER)
    assert GENERATOR_VERSION in dd["train"].info.description
    cached = list((tmp_path / "semisynthetic").iterdir())
    assert len(cached) == 1 and (cached[0] / "dataset_dict.json").is_file()

    def boom(*a, **k):
        raise AssertionError("regenerated")

    monkeypatch.setattr(_synth, "build_semisynthetic", boom)
    again = load_semisynthetic(n=60, image_size=8, seed=0, cache_dir=tmp_path)
    assert again["train"]["id"] == dd["train"]["id"] and is_semisynthetic(again)
    with pytest.raises(AssertionError, match="regenerated"):  # another size is another key
        load_semisynthetic(n=60, image_size=12, seed=0, cache_dir=tmp_path)
    assert not list(tmp_path.glob("semisynthetic/.*"))  # no temp dir left behind


def test_isic_semisynthetic_groups_from_real_sex():
    dd = load_semisynthetic("isic2019", n=400, image_size=8, seed=0)
    classes, groups = dataset_info(dd)
    assert classes == ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
    assert groups == ("female", "male", "unknown")
    for split in ("train", "test"):
        sex = [s or "unknown" for s in dd[split]["sex"]]
        assert [groups[g] for g in dd[split]["group"]] == sex
    assert is_semisynthetic(dd)
    dropped = load_semisynthetic("isic2019", n=400, image_size=8, seed=0, unknown_sex="drop")
    assert dataset_info(dropped)[1] == ("female", "male")


def test_bad_arguments():
    with pytest.raises(ValueError, match="name must be 'fitzpatrick17k' or 'isic2019'"):
        load_semisynthetic("ham10000")
    with pytest.raises(ValueError, match=r"n must be an int in \[2, 16012\]"):
        load_semisynthetic(n=10**6)
    with pytest.raises(ValueError, match="image_size must be an int >= 8"):
        load_semisynthetic(image_size=4)


def test_darkest_skin_is_hardest_for_a_small_cnn():
    """Train a tiny CNN on the default-style data (32 px), then score it on a fresh balanced set
    per Fitzpatrick type: same labels everywhere, so only the skin (tone, contrast) differs."""
    torch.manual_seed(0)
    dd = load_semisynthetic(n=1500, image_size=32, seed=0)
    loaders = make_loaders(dd, image_size=32, batch_size=64, train=False, seed=0)
    net = nn.Sequential(
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
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(10):
        for x, y, _g in loaders.train:
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    acc = {}
    per = 120
    labels = np.repeat(np.arange(3), per)
    for fst in (1, 2, 5, 6):
        img = generate_lesion_images(
            labels, np.full(3 * per, fst), num_classes=3, image_size=32, seed=100 + fst
        )
        x = (torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255 - mean) / std
        with torch.no_grad():
            acc[fst] = (net(x).argmax(1).numpy() == labels).mean()
    light, dark = (acc[1] + acc[2]) / 2, (acc[5] + acc[6]) / 2
    assert light > 0.6, acc  # learnable on light skin (chance is 1/3)
    assert dark < light - 0.2, acc  # and genuinely harder on the darkest skin
