"""The offline default: determinism, the real joint distribution, the cache, the marker, and
the group difficulty ordering it is built to show."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from fq_data import (
    GENERATOR_VERSION,
    IMAGENET_MEAN,
    IMAGENET_STD,
    METADATA_DIR,
    SEMISYNTHETIC_MARKER,
    _synth,
    build_semisynthetic,
    dataset_info,
    generate_lesion_images,
    is_semisynthetic,
    load_semisynthetic,
    make_loaders,
)
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


def _group_counts(ds, num_groups: int) -> np.ndarray:
    return np.bincount(np.asarray(ds["group"]), minlength=num_groups)


def _pixels(ds) -> np.ndarray:
    return np.stack([np.asarray(i) for i in ds["image"]])


@pytest.mark.parametrize("name", ["fitzpatrick17k", "isic2019"])
def test_min_test_per_group_tops_up_test_and_leaves_train_alone(name):
    k = 40
    base = build_semisynthetic(name, n=400, image_size=8, seed=5)
    top = build_semisynthetic(name, n=400, image_size=8, seed=5, min_test_per_group=k)
    _, groups = dataset_info(top)
    before = _group_counts(base["test"], len(groups))
    after = _group_counts(top["test"], len(groups))
    assert before.min() < k  # the case this option exists for (small groups)
    assert np.array_equal(after, np.maximum(before, k))  # every group >= k, none grows beyond
    # the training split is the one min_test_per_group=0 gives: same rows, same pixels
    assert top["train"]["id"] == base["train"]["id"]
    assert np.array_equal(_pixels(top["train"]), _pixels(base["train"]))
    assert top["train"].column_names == base["train"].column_names
    # the old test rows stay, in order, and the new ones are real rows never used elsewhere
    n_old = len(base["test"])
    assert top["test"]["id"][:n_old] == base["test"]["id"]
    assert np.array_equal(_pixels(top["test"])[:n_old], _pixels(base["test"]))
    ids_train, ids_test = top["train"]["id"], top["test"]["id"]
    assert len(set(ids_test)) == len(ids_test) and not set(ids_train) & set(ids_test)
    # the added images are generated, not copies of rows already in the data
    added = _pixels(top["test"])[n_old:]
    old = np.concatenate([_pixels(top["train"]), _pixels(base["test"])])
    assert not any((old == a).all(axis=(1, 2, 3)).any() for a in added)
    assert "test topped up to >= 40 rows per group" in top["test"].info.description


def test_min_test_per_group_rows_are_real_and_follow_the_group_label_mix():
    """Fitzpatrick type 6 is the smallest group: the added rows are real type-6 rows, with their
    real labels, in the proportions of the type-6 rows the sample left unused."""
    k = 200
    dd = build_semisynthetic(n=600, image_size=8, seed=1, min_test_per_group=k)
    base = build_semisynthetic(n=600, image_size=8, seed=1)
    classes, groups = dataset_info(dd)
    real = pl.read_csv(METADATA_DIR / "fitzpatrick17k.csv", infer_schema_length=0)
    truth = dict(zip(real["md5hash"], real["three_partition_label"], strict=True))
    fst = dict(zip(real["md5hash"], real["fitzpatrick_scale"], strict=True))
    before = set(base["test"]["id"])
    added = [
        (i, classes[lab], groups[g])
        for i, lab, g in zip(
            dd["test"]["id"], dd["test"]["label"], dd["test"]["group"], strict=True
        )
        if i not in before
    ]
    assert all(truth[i] == lab and fst[i] == grp for i, lab, grp in added)
    six = [lab for _, lab, grp in added if grp == "6"]
    used = set(base["train"]["id"]) | set(base["test"]["id"])
    pool = real.filter((pl.col("fitzpatrick_scale") == "6") & ~pl.col("md5hash").is_in(used))
    for cls in classes:
        share = (pool["three_partition_label"] == cls).sum() / pool.height
        assert abs(six.count(cls) - share * len(six)) < 1.0, cls  # largest remainder


def test_min_test_per_group_is_deterministic_cached_and_keyed(tmp_path, monkeypatch):
    a = load_semisynthetic(n=200, image_size=8, seed=2, cache_dir=tmp_path, min_test_per_group=30)
    b = build_semisynthetic(n=200, image_size=8, seed=2, min_test_per_group=30)
    c = build_semisynthetic(n=200, image_size=8, seed=3, min_test_per_group=30)
    assert a["test"]["id"] == b["test"]["id"]
    assert np.array_equal(_pixels(a["test"]), _pixels(b["test"]))
    assert a["test"]["id"] != c["test"]["id"]

    def boom(*args, **kwargs):
        raise AssertionError("regenerated")

    monkeypatch.setattr(_synth, "build_semisynthetic", boom)
    again = load_semisynthetic(
        n=200, image_size=8, seed=2, cache_dir=tmp_path, min_test_per_group=30
    )
    assert again["test"]["id"] == a["test"]["id"]
    with pytest.raises(AssertionError, match="regenerated"):  # another K is another key
        load_semisynthetic(n=200, image_size=8, seed=2, cache_dir=tmp_path, min_test_per_group=31)


def test_min_test_per_group_bad_values_and_too_few_rows():
    with pytest.raises(ValueError, match="min_test_per_group must be an int >= 0, got -1"):
        build_semisynthetic(n=100, image_size=8, min_test_per_group=-1)
    # ISIC 2019 has 384 rows of unknown sex in all: 400 test rows of it cannot exist
    with pytest.raises(
        ValueError,
        match=r"min_test_per_group=400: group 'unknown' of isic2019 has \d+ test row\(s\) after "
        r"the split and only \d+ unused real metadata row\(s\) \(\d+ needed\)",
    ):
        build_semisynthetic("isic2019", n=100, image_size=8, min_test_per_group=400)


def test_cli_prepare_semisynthetic_passes_min_test_per_group(tmp_path, capsys):
    from fq_data.__main__ import main

    args = ["prepare", "semisynthetic", "--n", "120", "--image-size", "8", "--seed", "4"]
    assert main([*args, "--cache-dir", str(tmp_path), "--min-test-per-group", "20"]) == 0
    want = build_semisynthetic(n=120, image_size=8, seed=4, min_test_per_group=20)
    out = capsys.readouterr().out
    assert f"train {len(want['train'])}, test {len(want['test'])} rows" in out
    assert len(want["test"]) > 24  # the top-up happened (0.2 x 120 without it)
