"""Each source path of fq_data on small generated folders built from real metadata rows."""

from __future__ import annotations

import logging

import datasets
import numpy as np
import polars as pl
import pytest
from fq_data import (
    DataError,
    dataset_info,
    is_semisynthetic,
    load_fitzpatrick17k,
    load_isic2019,
    stratified_split,
)


def _ids(dd, split):
    return dd[split]["id"]


# ---------------------------------------------------------------- Fitzpatrick17k, original layout


def test_fitzpatrick_layout_canonical_form(fitz_layout, caplog):
    root, rows = fitz_layout()
    with caplog.at_level(logging.INFO, logger="fq_data"):
        dd = load_fitzpatrick17k(root, label_col="three_partition_label")
    assert "dropped 2 row(s) with unknown Fitzpatrick type" in caplog.text
    assert set(dd) == {"train", "test"}
    feats = dd["train"].features
    assert isinstance(feats["image"], datasets.Image)
    assert feats["group"].names == ["1", "2", "3", "4", "5", "6"]
    assert feats["label"].names == ["malignant", "non-neoplastic"]
    assert dataset_info(dd) == (("malignant", "non-neoplastic"), ("1", "2", "3", "4", "5", "6"))
    assert not is_semisynthetic(dd)
    # every known-type row lands in exactly one split, with its real label and group
    train, test = set(_ids(dd, "train")), set(_ids(dd, "test"))
    known = rows.filter(pl.col("fitzpatrick_scale") != "-1")
    assert train.isdisjoint(test) and train | test == set(known["md5hash"])
    truth = {r["md5hash"]: r for r in known.iter_rows(named=True)}
    for split in ("train", "test"):
        ds = dd[split]
        for rid, lab, grp, fst, cond in zip(
            ds["id"],
            ds["label"],
            ds["group"],
            ds["fitzpatrick_scale"],
            ds["condition"],
            strict=True,
        ):
            assert feats["label"].names[lab] == truth[rid]["three_partition_label"]
            assert grp == int(truth[rid]["fitzpatrick_scale"]) - 1 == fst - 1
            assert cond == truth[rid]["label"]
    img = dd["test"][0]["image"]
    assert img.size == (32, 32)


def test_fitzpatrick_binary_grouping_and_default_label(fitz_layout):
    root, rows = fitz_layout()
    dd = load_fitzpatrick17k(root, grouping="binary")
    assert dd["train"].features["group"].names == ["1-3", "4-6"]
    # the default label is the 114-condition column
    assert set(dd["train"].features["label"].names) == set(
        rows.filter(pl.col("fitzpatrick_scale") != "-1")["label"]
    )
    for split in ("train", "test"):
        fst = np.array(dd[split]["fitzpatrick_scale"])
        assert (np.array(dd[split]["group"]) == (fst >= 4)).all()


def test_split_is_seeded_and_stratified(fitz_layout):
    root, _ = fitz_layout(per_type=10)
    a = load_fitzpatrick17k(root, label_col="three_partition_label", seed=3)
    b = load_fitzpatrick17k(root, label_col="three_partition_label", seed=3)
    c = load_fitzpatrick17k(root, label_col="three_partition_label", seed=4)
    assert _ids(a, "test") == _ids(b, "test")
    assert set(_ids(a, "test")) != set(_ids(c, "test"))
    # 12 strata (2 labels x 6 types) of 5 rows: 0.2 * 5 = 1 test row each, exactly
    key = np.array(a["test"]["label"]) * 6 + np.array(a["test"]["group"])
    assert sorted(np.bincount(key, minlength=12).tolist()) == [1] * 12


def test_stratified_split_hand_worked():
    # strata sizes: (0,0) x 7, (1,0) x 2, (1,1) x 1 ; fraction 0.3
    labels = np.array([0] * 7 + [1, 1, 1])
    groups = np.array([0] * 7 + [0, 0, 1])
    # exact quotas 2.1, 0.6, single -> 0; floors 2, 0; target round(2.7) = 3, the spare goes to
    # the largest remainder (0.6, stratum (1,0)); the singleton stays in train
    t = stratified_split(labels, groups, test_fraction=0.3, seed=0)
    assert t[:7].sum() == 2 and t[7:9].sum() == 1 and not t[9]
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(labels, groups, test_fraction=1.0)


def test_split_file_is_honoured(fitz_layout, tmp_path):
    root, rows = fitz_layout()
    known = rows.filter(pl.col("fitzpatrick_scale") != "-1")["md5hash"].to_list()
    chosen_test = known[::3]
    pl.DataFrame(
        {"md5hash": known, "split": ["test" if h in chosen_test else "train" for h in known]}
    ).write_csv(tmp_path / "split.csv")
    dd = load_fitzpatrick17k(
        root, label_col="three_partition_label", split_file=tmp_path / "split.csv"
    )
    assert sorted(_ids(dd, "test")) == sorted(chosen_test)
    pl.DataFrame({"md5hash": known, "split": ["train"] * len(known)}).write_csv(
        tmp_path / "all_train.csv"
    )
    with pytest.raises(DataError, match="split 'test' is empty"):
        load_fitzpatrick17k(root, split_file=tmp_path / "all_train.csv")
    pl.DataFrame({"md5hash": known, "split": ["val"] * len(known)}).write_csv(tmp_path / "bad.csv")
    with pytest.raises(DataError, match=r"unknown split value\(s\) \['val'\]"):
        load_fitzpatrick17k(root, split_file=tmp_path / "bad.csv")


def test_missing_and_corrupt_images_skipped_listed_or_strict(fitz_layout, tmp_path, caplog):
    root, rows = fitz_layout()
    known = rows.filter(pl.col("fitzpatrick_scale") != "-1")["md5hash"].to_list()
    (root / "images" / f"{known[0]}.jpg").unlink()
    data = (root / "images" / f"{known[1]}.jpg").read_bytes()
    (root / "images" / f"{known[1]}.jpg").write_bytes(data[: len(data) // 2])  # truncated
    (root / "images" / f"{known[2]}.jpg").write_bytes(b"not an image")
    out = tmp_path / "skipped.csv"
    with pytest.raises(DataError, match="3 missing or corrupt image"):
        load_fitzpatrick17k(root, strict=True, skipped_out=out)
    assert not out.exists()  # strict: nothing written
    with caplog.at_level(logging.WARNING, logger="fq_data"):
        dd = load_fitzpatrick17k(root, label_col="three_partition_label", skipped_out=out)
    assert "skipped 3 missing or corrupt image(s)" in caplog.text
    skipped = pl.read_csv(out)
    assert sorted(skipped["id"]) == sorted(known[:3])
    reasons = dict(zip(skipped["id"], skipped["reason"], strict=True))
    assert reasons[known[0]] == "missing" and reasons[known[1]].startswith("corrupt")
    kept = set(_ids(dd, "train")) | set(_ids(dd, "test"))
    assert kept == set(known[3:])


def test_bad_columns_and_group_values(fitz_layout):
    root, rows = fitz_layout()
    rows.drop("fitzpatrick_scale").write_csv(root / "fitzpatrick17k.csv")
    with pytest.raises(
        DataError,
        match=r"missing column\(s\) \['fitzpatrick_scale'\]; "
        r"columns found: \[.*'md5hash'.*\]",
    ):
        load_fitzpatrick17k(root)
    rows.with_columns(
        pl.when(pl.int_range(pl.len()) == 0)
        .then(pl.lit("7"))
        .otherwise(pl.col("fitzpatrick_scale"))
        .alias("fitzpatrick_scale")
    ).write_csv(root / "fitzpatrick17k.csv")
    with pytest.raises(DataError, match=r"unknown Fitzpatrick type value\(s\) \['7'\]"):
        load_fitzpatrick17k(root)
    with pytest.raises(ValueError, match="grouping must be one of"):
        load_fitzpatrick17k(root, grouping="three")


# ---------------------------------------------------------------- hub / parquet / disk sources


def test_parquet_folder_with_column_mapping(fitz_layout, tmp_path):
    root, rows = fitz_layout()
    ref = load_fitzpatrick17k(root, label_col="three_partition_label")
    # re-publish the data as a parquet folder with other column names, as a hub dataset might
    rows = pl.concat([ref["train"].to_polars(), ref["test"].to_polars()])
    ds = datasets.concatenate_datasets([ref["train"], ref["test"]])
    ds = ds.select_columns(["image", "id", "fitzpatrick_scale", "three_partition_label"])
    ds = ds.rename_columns(
        {"image": "img", "three_partition_label": "dx", "fitzpatrick_scale": "fst"}
    )
    (tmp_path / "pq" / "data").mkdir(parents=True)
    ds.to_parquet(str(tmp_path / "pq" / "data" / "train-00000-of-00001.parquet"))
    dd = load_fitzpatrick17k(
        tmp_path / "pq", image_col="img", label_col="dx", group_col="fst", verify_images=True
    )
    assert dataset_info(dd) == dataset_info(ref)
    got = {
        i: (lab, g)
        for s in ("train", "test")
        for i, lab, g in zip(dd[s]["id"], dd[s]["label"], dd[s]["group"], strict=True)
    }
    want = {i: (lab, g) for i, lab, g in zip(rows["id"], rows["label"], rows["group"], strict=True)}
    assert got == want
    assert np.array_equal(np.asarray(dd["train"][0]["image"]).shape, (32, 32, 3))
    with pytest.raises(DataError, match=r"missing column\(s\) \['image'\]; columns found"):
        load_fitzpatrick17k(tmp_path / "pq")


def test_saved_dataset_dict_keeps_its_split_and_checks_class_mappings(fitz_layout, tmp_path):
    root, _ = fitz_layout()
    ref = load_fitzpatrick17k(root, label_col="three_partition_label")
    ref.save_to_disk(str(tmp_path / "saved"))
    dd = load_fitzpatrick17k(tmp_path / "saved", label_col="label")
    assert sorted(_ids(dd, "test")) == sorted(_ids(ref, "test"))
    # a source whose splits disagree on the class mapping is refused
    bad = datasets.DatasetDict(
        {
            "train": ref["train"],
            "test": ref["test"].cast_column(
                "label", datasets.ClassLabel(names=["non-neoplastic", "malignant"])
            ),
        }
    )
    bad.save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError, match="class mappings of column 'label' differ"):
        load_fitzpatrick17k(tmp_path / "bad")


def test_imagefolder_with_metadata(fitz_layout, tmp_path, data_helpers):
    rows = data_helpers.fitz_rows(per_type=6, n_unknown=0)
    folder = tmp_path / "imf" / "train"
    data_helpers.write_fitz_images(rows, folder)
    rows.select(
        pl.concat_str([pl.col("md5hash"), pl.lit(".jpg")]).alias("file_name"),
        "md5hash",
        "fitzpatrick_scale",
        "three_partition_label",
    ).write_ndjson(folder / "metadata.jsonl")
    dd = load_fitzpatrick17k(tmp_path / "imf", label_col="three_partition_label")
    assert len(dd["train"]) + len(dd["test"]) == rows.height
    assert set(_ids(dd, "train")) | set(_ids(dd, "test")) == set(rows["md5hash"])


# ---------------------------------------------------------------- ISIC 2019


def test_isic_layout_labels_and_sex_groups(isic_layout):
    root, gt, md = isic_layout()
    dd = load_isic2019(root)
    feats = dd["train"].features
    assert feats["label"].names == ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    assert feats["group"].names == ["female", "male", "unknown"]
    onehot_cols = feats["label"].names
    truth_label = {
        r["image"]: onehot_cols[[float(r[c]) for c in onehot_cols].index(1.0)]
        for r in gt.iter_rows(named=True)
    }
    truth_sex = {r["image"]: r["sex"] or "unknown" for r in md.iter_rows(named=True)}
    seen = set()
    for split in ("train", "test"):
        ds = dd[split]
        for rid, lab, grp in zip(ds["id"], ds["label"], ds["group"], strict=True):
            assert onehot_cols[lab] == truth_label[rid]
            assert feats["group"].names[grp] == truth_sex[rid]
            seen.add(rid)
    assert seen == set(gt["image"])
    dropped = load_isic2019(root, unknown_sex="drop")
    assert dropped["train"].features["group"].names == ["female", "male"]
    n_unknown = sum(v == "unknown" for v in truth_sex.values())
    assert n_unknown >= 3
    assert len(dropped["train"]) + len(dropped["test"]) == gt.height - n_unknown


def test_isic_bad_inputs(isic_layout):
    root, gt, md = isic_layout()
    gt.with_columns(
        pl.when(pl.int_range(pl.len()) == 0)
        .then(pl.lit("1.0"))
        .otherwise(pl.col("UNK"))
        .alias("UNK")
    ).write_csv(root / "ISIC_2019_Training_GroundTruth.csv")
    with pytest.raises(DataError, match="not one-hot"):
        load_isic2019(root)
    gt.write_csv(root / "ISIC_2019_Training_GroundTruth.csv")
    md.with_columns(pl.lit("x").alias("sex")).write_csv(root / "ISIC_2019_Training_Metadata.csv")
    with pytest.raises(DataError, match=r"unknown sex value\(s\) \['x'\]"):
        load_isic2019(root)
    (root / "ISIC_2019_Training_Metadata.csv").unlink()
    with pytest.raises(DataError, match="ISIC_2019_Training_Metadata.csv is missing"):
        load_isic2019(root)


def test_isic_from_parquet_with_string_labels(isic_layout, tmp_path):
    root, _, _ = isic_layout()
    ref = load_isic2019(root)
    ds = datasets.concatenate_datasets([ref["train"], ref["test"]]).select_columns(
        ["image", "id", "diagnosis", "sex"]
    )
    ds = ds.rename_column("diagnosis", "label")
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "train.parquet"))
    dd = load_isic2019(tmp_path / "pq")
    assert dataset_info(dd) == dataset_info(ref)
    assert len(dd["train"]) + len(dd["test"]) == len(ds)


def test_cli_inspect_maps_columns(fitz_layout, tmp_path, capsys):
    from fq_data.__main__ import main

    root, _ = fitz_layout()
    assert (
        main(
            [
                "inspect",
                "fitzpatrick17k",
                str(root),
                "--label-col",
                "three_partition_label",
                "--grouping",
                "binary",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    # 48 known-type rows in 4 strata of 12 (label x binary group): 2.4 test rows each, floors
    # give 8, largest remainder adds 2 (ties broken by the seed-0 RNG) -> 10 test rows
    assert "fitzpatrick17k: real; 2 classes; groups ['1-3', '4-6']" in out
    assert "train: 38 rows (1-3=19, 4-6=19)" in out and "test: 10 rows (1-3=5, 4-6=5)" in out
    assert main(["inspect", "fitzpatrick17k", str(root), "--group-col", "nope"]) == 2
    assert "missing column(s) ['nope']" in capsys.readouterr().err
