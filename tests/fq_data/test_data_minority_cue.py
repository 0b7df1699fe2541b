"""The positive-control variant: the default data is unchanged bit for bit, the planted cue is
present only on Fitzpatrick types 5 and 6, and its ring frequency codes the class."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
from fq_data import (
    MINORITY_CUE,
    SYNTH_VARIANTS,
    MinorityCue,
    build_semisynthetic,
    dataset_info,
    describe_variant,
    generate_lesion_images,
    load_semisynthetic,
)


def _digest(dd) -> str:
    h = hashlib.sha256()
    for split in ("train", "test"):
        ds = dd[split]
        h.update(repr((ds["id"], ds["label"], ds["group"])).encode())
        for im in ds["image"]:
            h.update(np.ascontiguousarray(np.asarray(im)).tobytes())
    return h.hexdigest()


def _pixels(ds) -> np.ndarray:
    return np.stack([np.asarray(i) for i in ds["image"]])


def test_default_data_is_unchanged_bit_for_bit(tmp_path):
    """Digests of the decoded pixels, ids, labels and groups, and the cache folder's name, as
    computed at commit ed713ac, before the variant existed (PNG bytes are left out: they depend
    on the zlib build, the pixels do not)."""
    dd = build_semisynthetic(n=200, image_size=32, seed=3, min_test_per_group=25)
    want = "da48f0d49de774451f6ee081f209e950282d28e5c1fec43e9800016f35871cb0"
    assert _digest(dd) == want
    same = build_semisynthetic(
        n=200, image_size=32, seed=3, min_test_per_group=25, variant="shared-cues"
    )
    assert _digest(same) == want
    assert dd["test"].info.description == (
        "semi-synthetic fitzpatrick17k: real metadata rows (labels three_partition_label, "
        "groups), generated pixels; generator synth-v2, n=200, image_size=32, seed=3, test "
        "topped up to >= 25 rows per group. Not real images."
    )
    labels, types = np.arange(60) % 3, np.arange(60) % 6 + 1
    img = generate_lesion_images(labels, types, num_classes=3, image_size=32, seed=11)
    assert hashlib.sha256(img.tobytes()).hexdigest() == (
        "a23ff3fe86a917707630b204d4caf9d9c3d6045aa3b315bcdec63e836003d7a6"
    )
    load_semisynthetic(n=60, image_size=8, seed=0, cache_dir=tmp_path)
    names = [p.name for p in (tmp_path / "semisynthetic").iterdir()]
    assert names == ["fitzpatrick17k-8px-seed0-50ecbc551a6ef92a"]  # caches built before stay found


def test_cue_only_on_types_5_and_6_of_the_dataset():
    base = build_semisynthetic(n=300, image_size=16, seed=1, min_test_per_group=10)
    var = build_semisynthetic(
        n=300, image_size=16, seed=1, min_test_per_group=10, variant="minority-cue"
    )
    assert dataset_info(var) == dataset_info(base)
    for split in ("train", "test"):
        for col in ("id", "label", "group", "fitzpatrick_scale"):
            assert var[split][col] == base[split][col]  # same rows, labels and split
        fst = np.asarray(var[split]["fitzpatrick_scale"], dtype=np.int64)
        same = (_pixels(var[split]) == _pixels(base[split])).all(axis=(1, 2, 3))
        assert np.array_equal(same, fst <= 4), split  # identical exactly on types 1-4
        assert (fst >= 5).sum() >= 10
    assert "Variant minority-cue" in var["test"].info.description
    assert "Variant" not in base["test"].info.description


def _radial_power(x: np.ndarray) -> np.ndarray:
    """``[B, S // 2]`` power of ``[B, S, S]`` images per integer radial frequency (cycles per
    image width), averaged over the ring of FFT bins at that radius."""
    s = x.shape[-1]
    p = np.abs(np.fft.fft2(x - x.mean(axis=(1, 2), keepdims=True))) ** 2
    f = np.fft.fftfreq(s) * s
    idx = np.rint(np.hypot(f[:, None], f[None, :])).astype(np.int64).ravel()
    count = np.bincount(idx, minlength=s)[: s // 2]
    return np.stack([np.bincount(idx, q.ravel(), minlength=s)[: s // 2] / count for q in p])


@pytest.mark.parametrize("fst", [5, 6])
def test_ring_frequency_codes_the_class(fst):
    """Against the same images with the contrast faded but rings of negligible amplitude (same
    noise, same jitter), the added pattern's spectral centroid, measured by FFT, rises with the
    class as the design's 4, 6, 9 cycles per width (a ratio of 1.5 between neighbours); the
    envelope puts the measured centroid about 10% below the nominal frequency."""
    per, size = 100, 32
    faint = dataclasses.replace(MINORITY_CUE, amplitude=1e-9)
    nominal = MINORITY_CUE.class_cycles(3)
    np.testing.assert_allclose(nominal, [4.0, 6.0, 9.0])
    centroid = []
    for k in range(3):
        labels, types = np.full(per, k), np.full(per, fst)
        args = {"num_classes": 3, "image_size": size, "seed": 40 + fst}
        a = generate_lesion_images(labels, types, cue=MINORITY_CUE, **args).astype(float)
        b = generate_lesion_images(labels, types, cue=faint, **args).astype(float)
        power = _radial_power(a.mean(-1) - b.mean(-1)).mean(0)[1:]
        centroid.append(float((power * np.arange(1, len(power) + 1)).sum() / power.sum()))
    ratio = np.array(centroid) / nominal
    assert ((ratio > 0.8) & (ratio < 1.05)).all(), centroid
    steps = np.array(centroid[1:]) / np.array(centroid[:-1])
    assert ((steps > 1.35) & (steps < 1.7)).all(), centroid


def test_rings_add_class_evidence_a_spectral_classifier_can_read():
    """A nearest-centroid classifier on the log radial power spectrum (translation invariant, so
    blind to where the lesion sits) of type 5-6 images: with the rings it beats the same images
    with the faded contrast and no rings; on types 1-4 the variant changes nothing to read."""
    per, size = 100, 32
    faint = dataclasses.replace(MINORITY_CUE, amplitude=1e-9)
    acc = {}
    for name, cue in (("rings", MINORITY_CUE), ("faded only", faint)):
        feats = []
        for k in range(3):
            labels, types = np.full(per, k), np.resize([5, 6], per)
            img = generate_lesion_images(
                labels, types, num_classes=3, image_size=size, seed=9, cue=cue
            )
            feats.append(np.log(_radial_power(img.astype(float).mean(-1))[:, 1:] + 1e-9))
        cent = np.stack([f[: per // 2].mean(0) for f in feats])  # fit on the first half
        hits = [
            (np.argmin(((f[per // 2 :, None] - cent[None]) ** 2).sum(-1), 1) == k).mean()
            for k, f in enumerate(feats)
        ]
        acc[name] = float(np.mean(hits))
    assert acc["rings"] > acc["faded only"] + 0.05, acc
    assert acc["rings"] > 0.85, acc


def test_cue_images_are_deterministic_and_chunk_independent():
    labels, types = np.arange(14) % 3, np.arange(14) % 6 + 1
    args = {"num_classes": 3, "image_size": 16, "seed": 7, "cue": MINORITY_CUE}
    a = generate_lesion_images(labels, types, **args)
    assert np.array_equal(a, generate_lesion_images(labels, types, chunk=3, **args))
    plain = generate_lesion_images(labels, types, num_classes=3, image_size=16, seed=7)
    same = (a == plain).all(axis=(1, 2, 3))
    assert np.array_equal(same, types <= 4)


def test_minority_cue_parameters_and_errors():
    assert SYNTH_VARIANTS["shared-cues"] is None and SYNTH_VARIANTS["minority-cue"] is MINORITY_CUE
    assert (MINORITY_CUE.types, MINORITY_CUE.contrast_scale, MINORITY_CUE.jitter) == (
        (5, 6),
        0.5,
        0.1,
    )
    assert "types 5, 6" in describe_variant("minority-cue")
    assert "4 to 9 cycles per image width" in describe_variant("minority-cue")
    assert describe_variant("shared-cues").startswith("shared-cues (the default)")
    # neighbouring classes stay apart: (9/4)^(1/4) > 1.1/0.9 codes 5 classes, 6 would overlap
    c5 = MINORITY_CUE.class_cycles(5)
    assert (c5[1:] * 0.9 > c5[:-1] * 1.1).all()
    with pytest.raises(ValueError, match=r"num_classes=6: .* code at most 5 classes apart"):
        MINORITY_CUE.class_cycles(6)
    with pytest.raises(ValueError, match=r"variant must be one of \['shared-cues', 'minority"):
        load_semisynthetic(variant="rings")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only fitzpatrick17k has"):
        build_semisynthetic("isic2019", n=50, image_size=8, variant="minority-cue")
    with pytest.raises(ValueError, match="cue needs skin given as"):
        generate_lesion_images(np.array([0]), np.full((1, 3), 0.5), num_classes=3, cue=MINORITY_CUE)
    with pytest.raises(ValueError, match="types must be Fitzpatrick types in 1..6"):
        MinorityCue(types=(7,))
    with pytest.raises(ValueError, match=r"contrast_scale must be in \(0, 1\]"):
        MinorityCue(contrast_scale=0.0)
    with pytest.raises(ValueError, match="jitter must be in"):
        MinorityCue(jitter=1.0)


def test_variant_is_cached_under_its_own_key(tmp_path):
    a = load_semisynthetic(n=60, image_size=8, seed=0, cache_dir=tmp_path)
    b = load_semisynthetic(n=60, image_size=8, seed=0, cache_dir=tmp_path, variant="minority-cue")
    names = sorted(p.name for p in (tmp_path / "semisynthetic").iterdir())
    assert len(names) == 2 and names[1].startswith("fitzpatrick17k-minority-cue-8px-seed0-")
    assert a["train"]["id"] == b["train"]["id"]
    again = load_semisynthetic(
        n=60, image_size=8, seed=0, cache_dir=tmp_path, variant="minority-cue"
    )
    assert np.array_equal(_pixels(again["test"]), _pixels(b["test"]))


def test_cli_inspect_shows_the_variant(tmp_path, monkeypatch, capsys):
    from fq_data.__main__ import main

    monkeypatch.setenv("FQ_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(
        "fq_data.load_semisynthetic",
        lambda name, **kw: load_semisynthetic(name, n=120, image_size=8, **kw),
    )
    assert main(["inspect", "semisynthetic", "--variant", "minority-cue"]) == 0
    out = capsys.readouterr().out
    assert "variant minority-cue: on Fitzpatrick types 5, 6" in out
    assert main(["inspect", "semisynthetic"]) == 0
    assert "variant" not in capsys.readouterr().out  # the default's output is unchanged
    with pytest.raises(SystemExit, match="needs fitzpatrick17k"):
        main(["inspect", "semisynthetic", "isic2019", "--variant", "minority-cue"])
