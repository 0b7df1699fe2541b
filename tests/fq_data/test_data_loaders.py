"""make_loaders: batch contract, exact eval preprocessing, seeded determinism, decode cache."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from fq_data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataError,
    PaperAugment,
    _loaders,
    decode_images,
    load_fitzpatrick17k,
    load_semisynthetic,
    make_loaders,
)
from PIL import Image


@pytest.fixture
def small_dd():
    return load_semisynthetic(n=150, image_size=24, seed=0)


def _collect(loader):
    return [tuple(t.clone() for t in batch) for batch in loader]


def test_batch_contract_and_metadata(small_dd):
    L = make_loaders(small_dd, image_size=24, batch_size=16, train=True, seed=0)
    x, y, g = next(iter(L.train))
    assert x.dtype == torch.float32 and x.shape == (16, 3, 24, 24)
    assert y.dtype == torch.int64 and g.dtype == torch.int64 and y.shape == g.shape == (16,)
    assert L.num_classes == 3 and L.num_groups == 6
    assert L.class_names == ("benign", "malignant", "non-neoplastic")
    assert L.group_names == ("1", "2", "3", "4", "5", "6")
    assert len(L.train) == len(small_dd["train"]) // 16  # drop_last when training
    assert sum(len(b[1]) for b in L.test) == len(small_dd["test"])


def test_eval_batches_equal_an_independent_float64_preprocessing(fitz_layout):
    root, _ = fitz_layout(size=40)
    dd = load_fitzpatrick17k(root, label_col="three_partition_label")
    # 40 px JPEGs to 24 px: no JPEG draft (DCT) reduction applies, so the reference is a plain
    # full decode and a bilinear resize
    L = make_loaders(dd, image_size=24, batch_size=7, train=False, seed=0)
    got = torch.cat([b[0] for b in L.test]).double()
    mean = np.array(IMAGENET_MEAN).reshape(3, 1, 1)
    std = np.array(IMAGENET_STD).reshape(3, 1, 1)
    want = []
    for img in dd["test"]["image"]:
        arr = np.asarray(
            img.convert("RGB").resize((24, 24), Image.Resampling.BILINEAR, reducing_gap=3.0),
            dtype=np.float64,
        )
        want.append((arr.transpose(2, 0, 1) / 255.0 - mean) / std)
    np.testing.assert_allclose(got.numpy(), np.stack(want), atol=1e-5)
    # test loader: no shuffle, labels and groups in dataset order
    assert torch.cat([b[1] for b in L.test]).tolist() == dd["test"]["label"]
    assert torch.cat([b[2] for b in L.test]).tolist() == dd["test"]["group"]


def test_same_seed_same_batches_regardless_of_global_rng(small_dd):
    a = make_loaders(small_dd, image_size=24, batch_size=16, seed=5)
    b = make_loaders(small_dd, image_size=24, batch_size=16, seed=5)
    torch.manual_seed(123)
    a1, a2 = _collect(a.train), _collect(a.train)
    torch.manual_seed(999)
    b1, b2 = _collect(b.train), _collect(b.train)
    for u, v in zip(a1 + a2, b1 + b2, strict=True):
        for s, t in zip(u, v, strict=True):
            assert torch.equal(s, t)
    # the two epochs differ (new order, new augmentations)
    assert not torch.equal(a1[0][1], a2[0][1]) or not torch.equal(a1[0][0], a2[0][0])
    # resuming at epoch 1 reproduces the second epoch
    c = make_loaders(small_dd, image_size=24, batch_size=16, seed=5)
    c.set_epoch(1)
    assert all(torch.equal(s[0], t[0]) for s, t in zip(_collect(c.train), a2, strict=True))
    d = make_loaders(small_dd, image_size=24, batch_size=16, seed=6)
    assert not torch.equal(_collect(d.train)[0][0], a1[0][0])


def test_worker_processes_give_the_same_batches(small_dd):
    a = make_loaders(small_dd, image_size=24, batch_size=32, seed=1, num_workers=0)
    b = make_loaders(small_dd, image_size=24, batch_size=32, seed=1, num_workers=1)
    for u, v in zip(_collect(a.train), _collect(b.train), strict=True):
        assert all(torch.equal(s, t) for s, t in zip(u, v, strict=True))


def test_train_false_uses_eval_transforms_but_still_shuffles(small_dd):
    L = make_loaders(small_dd, image_size=24, batch_size=16, train=False, seed=0)
    batches = _collect(L.train)
    assert sum(len(b[1]) for b in batches) == len(small_dd["train"])  # no drop_last
    seen = torch.cat([b[1] for b in batches])
    assert not torch.equal(seen, torch.tensor(small_dd["train"]["label"]))  # shuffled
    # un-augmented: each image equals its eval-normalized decode, found by its position
    images = decode_images(small_dd["train"], 24)
    order = L.train.batch_sampler
    order.set_epoch(0)
    first = [i for _, i in next(iter(order))]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    want = (images[first].double() / 255 - mean.double()) / std.double()
    torch.testing.assert_close(batches[0][0].double(), want, atol=1e-5, rtol=0)


def test_paper_augment_flips_and_rotation():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.int64).remainder(251).to(torch.uint8)
    x = x.view(2, 3, 8, 8)
    aug = PaperAugment(rotation_degrees=0.0)
    aug.autoaugment = lambda t: t  # isolate the flips
    seen = set()
    for seed in range(40):
        out = aug(x, seed)
        for b in range(2):
            variants = {
                "id": x[b],
                "h": x[b].flip(-1),
                "v": x[b].flip(-2),
                "hv": x[b].flip(-1).flip(-2),
            }
            match = [k for k, t in variants.items() if torch.equal(out[b], t)]
            assert match, "a flip-only augmentation must be one of the four flips"
            seen.add(match[0])
    assert seen == {"id", "h", "v", "hv"}
    assert torch.equal(PaperAugment(15.0)(x, 3), PaperAugment(15.0)(x, 3))
    with pytest.raises(TypeError, match="uint8"):
        aug(x.float(), 0)
    with pytest.raises(ValueError, match="rotation_degrees"):
        PaperAugment(-1.0)


def test_paper_augment_depends_on_the_image_not_its_position():
    # accelerate's split_batches hands each process a slice of the batch (same batch seed): each
    # slice, and any reordering, must be augmented exactly as inside the whole batch
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=g)
    keys = [40, 7, 13, 2, 99, 5]
    aug = PaperAugment(15.0)
    whole = aug(x, 11, keys=keys)
    halves = torch.cat([aug(x[:3], 11, keys=keys[:3]), aug(x[3:], 11, keys=keys[3:])])
    assert torch.equal(whole, halves)
    perm = [5, 2, 0, 4, 1, 3]
    assert torch.equal(aug(x[perm], 11, keys=[keys[i] for i in perm]), whole[perm])
    # different images of the same batch draw differently: same pixels, different keys
    same = x[:1].expand(6, -1, -1, -1).contiguous()
    outs = aug(same, 11, keys=keys)
    assert len({o.numpy().tobytes() for o in outs}) > 1
    assert not torch.equal(aug(x, 12, keys=keys), whole)  # and the batch seed matters
    with pytest.raises(ValueError, match="keys must name each of the 6 images"):
        aug(x, 11, keys=keys[:5])


def test_bad_arguments_and_non_canonical_input(small_dd):
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        make_loaders(small_dd, image_size=24, batch_size=0)
    with pytest.raises(DataError, match=r"missing split\(s\) \['test'\]"):
        make_loaders(datasets.DatasetDict({"train": small_dd["train"]}), image_size=8, batch_size=4)
    bad = datasets.DatasetDict(
        {"train": small_dd["train"].remove_columns("group"), "test": small_dd["test"]}
    )
    with pytest.raises(DataError, match=r"missing column\(s\) \['group'\]; columns found"):
        make_loaders(bad, image_size=8, batch_size=4)


def test_decoded_tensor_is_cached_on_disk(small_dd, monkeypatch):
    first = decode_images(small_dd["train"], 16)

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(_loaders, "_decode_one", boom)
    again = decode_images(small_dd["train"], 16)
    assert torch.equal(first, again)
    with pytest.raises(AssertionError, match="decoded again"):
        decode_images(small_dd["train"], 16, cache=False)
