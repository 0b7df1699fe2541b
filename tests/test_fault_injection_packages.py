"""Fault injection (issue 18) in the packages and the data path: duplicate metadata rows,
corrupt images, scores with no finite value, tampered packed files, bad arguments.

The grid's cases are in ``test_fault_injection.py``.
"""

from __future__ import annotations

import gc
import json
import logging
import warnings
from pathlib import Path

import datasets
import numpy as np
import polars as pl
import pytest
from fq_data import DataError, load_fitzpatrick17k, load_isic2019
from fq_quant import tensors_sha256

# ---------------------------------------------------------------- 4. duplicate rows


def _no_id_in_both(dd: datasets.DatasetDict) -> set[str]:
    train, test = set(dd["train"]["id"]), set(dd["test"]["id"])
    assert train.isdisjoint(test)
    assert len(train) == len(dd["train"]) and len(test) == len(dd["test"])
    return train | test


def test_duplicate_fitzpatrick_rows_are_dropped_or_refused(fitz_layout, caplog) -> None:
    root, rows = fitz_layout(per_type=12)
    known = rows.filter(pl.col("fitzpatrick_scale") != "-1")
    pl.concat([rows, known[:10]]).write_csv(root / "fitzpatrick17k.csv")
    with pytest.raises(DataError, match="10 row.s. repeat an earlier id .strict=True."):
        load_fitzpatrick17k(root, strict=True)
    with caplog.at_level(logging.WARNING, logger="fq_data"):
        dd = load_fitzpatrick17k(root, label_col="three_partition_label")
    assert "dropped 10 row(s) repeating an earlier id" in caplog.text
    assert "dropped 2 row(s) with unknown Fitzpatrick type" in caplog.text  # a warning now
    assert _no_id_in_both(dd) == set(known["md5hash"])


def test_duplicate_isic_rows_are_dropped(isic_layout, caplog) -> None:
    root, gt, _ = isic_layout()
    pl.concat([gt, gt[:4]]).write_csv(root / "ISIC_2019_Training_GroundTruth.csv")
    with caplog.at_level(logging.WARNING, logger="fq_data"):
        dd = load_isic2019(root)
    assert "repeating an earlier id" in caplog.text
    assert _no_id_in_both(dd) == set(gt["image"])


def test_a_given_split_with_an_id_on_both_sides_keeps_it_once(fitz_layout, tmp_path) -> None:
    root, _ = fitz_layout()
    ref = load_fitzpatrick17k(root, label_col="three_partition_label")
    leak = datasets.DatasetDict(
        {"train": ref["train"], "test": datasets.concatenate_datasets([ref["test"], ref["train"]])}
    )
    leak.save_to_disk(str(tmp_path / "saved"))
    dd = load_fitzpatrick17k(tmp_path / "saved", label_col="label")
    assert _no_id_in_both(dd) == set(ref["train"]["id"]) | set(ref["test"]["id"])


@pytest.mark.parametrize("name", ["fitzpatrick17k", "isic2019"])
def test_semisynthetic_splits_share_no_id(name: str) -> None:
    from fq_data import load_semisynthetic

    dd = load_semisynthetic(name, n=120, image_size=8, min_test_per_group=5)
    _no_id_in_both(dd)


def test_corrupt_jpeg_leaves_no_open_file(tmp_path: Path, data_helpers) -> None:
    from fq_data import decode_images

    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = data_helpers.jpeg_bytes(pixels)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    ds = datasets.Dataset.from_dict(
        {"image": [str(tmp_path / "cut.jpg")]},
        features=datasets.Features({"image": datasets.Image()}),
    )
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(OSError, match="truncated"):
            decode_images(ds, 16, cache=False)
        gc.collect()
    assert not [w for w in seen if issubclass(w.category, ResourceWarning)]


# ---------------------------------------------------------------- 5 and 8. fairness metrics


def test_rows_without_a_finite_score_are_refused() -> None:
    from fq_fairmetrics import group_report

    y, g = np.array([0, 1, 1]), np.array([0, 0, 1])
    for bad in ([-np.inf, -np.inf], [np.inf, np.inf]):
        scores = np.array([[2.0, 1.0], bad, [0.0, 1.0]])
        with pytest.raises(ValueError, match="1 row.s. with no finite score .first: row 1"):
            group_report(y, scores, sensitive_features=g)
    # one finite score is enough: +inf wins its row, -inf loses it
    scores = np.array([[2.0, -np.inf], [np.inf, 1.0], [0.0, 1.0]])
    assert group_report(y, scores, sensitive_features=g).overall_acc == pytest.approx(2 / 3)


def test_none_in_sensitive_features_is_named() -> None:
    from fq_fairmetrics import group_report

    with pytest.raises(ValueError, match=r"sensitive_features contains None .*index 2"):
        group_report([0, 1, 1], [0, 1, 0], sensitive_features=["a", "b", None])


def test_allocate_to_budget_without_bits_says_so() -> None:
    import torch
    from fq_alloc import allocate_to_budget
    from fq_quant import Granularity, ImportanceMap, ScopeLayout

    layout = ScopeLayout.from_model(torch.nn.Sequential(torch.nn.Linear(3, 4)), Granularity.CHANNEL)
    imap = ImportanceMap("channel", {"0": torch.rand(4)})
    for bits in ((), []):
        with pytest.raises(ValueError, match="bits is empty"):
            allocate_to_budget(imap, bits, 4.0, layout=layout)


# ---------------------------------------------------------------- 3. packed files


def _packed(tmp_path: Path) -> tuple[Path, dict]:
    import torch
    from fq_quant import BitAssignment, Granularity, ScopeLayout, export_packed, quantize_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    layout = ScopeLayout.from_model(model, Granularity.CHANNEL)
    bits = {
        n: torch.tensor([2, 4, 8, 4, 2, 8][: s.scope_shape[0]]) for n, s in layout.layers.items()
    }
    wrapped = quantize_model(model, BitAssignment(Granularity.CHANNEL, bits))
    path = export_packed(wrapped, tmp_path / "m.safetensors")
    with torch.no_grad():
        ref = {k: v.clone() for k, v in wrapped.state_dict().items()}
    return path, ref


def _rewrite(path: Path, *, tensors=None, meta=None, rehash: bool = True) -> None:
    """Re-save ``path`` with edited tensors/metadata; ``rehash``: a content hash computed as the
    format documents it (canonical JSON of the other metadata, then ``tensors_sha256``)."""
    import hashlib

    from safetensors.torch import load, save

    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    old_meta = json.loads(blob[8 : 8 + n])["__metadata__"]
    t = load(blob)
    t = tensors(t) if tensors else t
    m = meta(dict(old_meta)) if meta else dict(old_meta)
    if rehash:
        body = {k: v for k, v in m.items() if k != "content_sha256"}
        h = hashlib.sha256(json.dumps(body, sort_keys=True).encode())
        h.update(tensors_sha256(save(t, metadata=body)).encode())
        m["content_sha256"] = h.hexdigest()
    path.write_bytes(save(t, metadata=m))


def test_packed_file_faults_are_refused_with_the_path(tmp_path: Path) -> None:
    from fq_quant import load_packed

    path, _ = _packed(tmp_path)
    good = path.read_bytes()
    load_packed(path)
    data = bytearray(path.read_bytes())  # a flipped byte in the last tensor's data
    data[-8] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{path}: content hash mismatch"):
        load_packed(path)

    # a changed bit width in the header: the hash, and, rehashed, the code stream's length
    def wider(m: dict) -> dict:
        a = json.loads(m["assignment"])
        a["bits"]["0"]["values"] = [8] * len(a["bits"]["0"]["values"])
        return {**m, "assignment": json.dumps(a)}

    for rehash, message in ((False, "content hash mismatch"), (True, "code stream holds")):
        path.write_bytes(good)
        _rewrite(path, meta=wider, rehash=rehash)
        with pytest.raises(ValueError, match=f"{path}: .*{message}"):
            load_packed(path)

    # a NaN scale, even under a valid hash
    def nan_scale(t: dict) -> dict:
        s = t["0.weight:scales"].clone()
        s[1] = float("nan")
        return {**t, "0.weight:scales": s}

    path.write_bytes(good)
    _rewrite(path, tensors=nan_scale)
    with pytest.raises(ValueError, match=r"layer '0': 1 non-finite scale"):
        load_packed(path)
    # truncated, empty
    for blob in (good[: len(good) // 2], b""):
        path.write_bytes(blob)
        with pytest.raises(ValueError, match=f"{path}: not a readable safetensors file"):
            load_packed(path)


def test_packed_version_1_is_read_only_on_request(tmp_path: Path) -> None:
    import torch
    from fq_quant import load_packed

    path, ref = _packed(tmp_path)
    state, _ = load_packed(path)

    def v1(m: dict) -> dict:
        return {k: v for k, v in m.items() if k != "content_sha256"} | {
            "format": "fq_quant.packed/1"
        }

    _rewrite(path, meta=v1, rehash=False)
    with pytest.raises(ValueError, match="version 1 carries no content hash.*allow_unverified"):
        load_packed(path)
    with pytest.warns(UserWarning, match="version 1 carries no content hash"):
        old, _ = load_packed(path, allow_unverified=True)
    assert all(torch.equal(old[k], state[k]) for k in state)


def test_fake_quantize_bits_types_accepted_or_refused_clearly() -> None:
    import torch
    from fq_quant import fake_quantize

    w = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    want = fake_quantize(w, torch.tensor([4, 4, 4]), "channel")
    for bits in (4, np.int64(4), [4, 4, 4], np.array([4, 4, 4]), (4, 4, 4)):
        assert torch.equal(fake_quantize(w, bits, "channel"), want)
    for bits in (4.0, np.float32(4), True, None, "4"):
        with pytest.raises(TypeError, match="bits must be an int, or a tensor/array/list"):
            fake_quantize(w, bits, "channel")


def test_calibration_labels_outside_the_classes_name_the_batch() -> None:
    import torch
    from fq_importance import calibrate

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x = torch.randn(4, 3, 2, 2)
    g = torch.tensor([0, 0, 1, 1])
    batches = [(x, torch.tensor([0, 1, 2, 0]), g), (x, torch.tensor([0, 3, 2, 7]), g)]
    with pytest.raises(ValueError, match=r"batch 1 has label\(s\) \[3, 7\] outside 0..2"):
        calibrate(model, batches, metric="grape", device="cpu", progress=False)
