"""fq_data.load_dataset: a user's own images, with any label and group values, in every form."""

from __future__ import annotations

import logging
import time

import datasets
import numpy as np
import polars as pl
import pytest
from fq_data import DataError, dataset_info, load_dataset, make_loaders
from PIL import Image

SKIN = ("light", "medium", "dark")
DX = ("benign", "malignant")


def _write_folder(root, n=36, *, file_col="file", with_bad=False):
    """``root/images/img_<i>.png`` (a colour per label) and ``root/labels.csv``.

    Label i % 2 (as "benign"/"malignant"), group (i // 2) % 3 as a skin word, plus a ``site``
    attribute; returns the rows written.
    """
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        lab, grp = DX[i % 2], SKIN[(i // 2) % 3]
        colour = (200, 30, 30) if lab == "malignant" else (30, 200, 30)
        Image.new("RGB", (12, 12), colour).save(root / "images" / f"img_{i}.png")
        rows.append({file_col: f"images/img_{i}.png", "dx": lab, "skin": grp, "site": f"s{i % 4}"})
    df = pl.DataFrame(rows)
    if with_bad:
        df = pl.concat(
            [
                df,
                pl.DataFrame(
                    [{file_col: "images/nope.png", "dx": "benign", "skin": "dark", "site": "s0"}]
                ),
            ]  # fmt: skip
        )
    df.write_csv(root / "labels.csv")
    return df


def _truth(dd):
    out = {}
    classes, groups = dataset_info(dd)
    for split in ("train", "test"):
        ds = dd[split]
        for i, lab, grp in zip(ds["id"], ds["label"], ds["group"], strict=True):
            out[i] = (classes[lab], groups[grp])
    return out


def test_folder_with_csv_of_relative_paths_and_string_groups(tmp_path):
    rows = _write_folder(tmp_path / "mine")
    dd = load_dataset(tmp_path / "mine", image_col="file", label_col="dx", group_col="skin")
    assert dataset_info(dd) == (("benign", "malignant"), ("dark", "light", "medium"))
    assert _truth(dd) == {r["file"]: (r["dx"], r["skin"]) for r in rows.iter_rows(named=True)}
    assert len(dd["test"]) == round(0.2 * rows.height)  # 7 of 36
    assert "site" in dd["train"].column_names
    # the images are the files: a malignant row is red
    ds = dd["train"]
    k = ds["label"].index(1)
    assert np.asarray(ds[k]["image"])[0, 0].tolist() == [200, 30, 30]
    # ... and make_loaders works as for the paper's datasets, names kept
    loaders = make_loaders(dd, image_size=8, batch_size=4, train=False, seed=0)
    assert loaders.group_names == ("dark", "light", "medium")
    x, y, g = next(iter(loaders.test))
    assert x.shape == (4, 3, 8, 8) and y.dtype == g.dtype


def test_the_csv_file_itself_and_int_groups_sort_numerically(tmp_path):
    root = tmp_path / "d"
    rows = _write_folder(root)
    codes = {"light": 10, "medium": 9, "dark": 2}
    rows.with_columns(pl.col("skin").replace_strict(codes, return_dtype=pl.Int64)).write_csv(
        root / "labels.csv"
    )
    dd = load_dataset(root / "labels.csv", image_col="file", label_col="dx", group_col="skin")
    assert dataset_info(dd)[1] == ("2", "9", "10")  # numeric order, not "10" < "2"
    want = {r["file"]: (r["dx"], str(codes[r["skin"]])) for r in rows.iter_rows(named=True)}
    assert _truth(dd) == want


def test_hub_style_sources_keep_class_label_names(tmp_path):
    root = tmp_path / "src"
    rows = _write_folder(root)
    ref = load_dataset(root, image_col="file", label_col="dx", group_col="skin")
    # a save_to_disk source with the group as a ClassLabel in a custom order
    ds = datasets.Dataset.from_dict(
        {
            "img": [str(root / f) for f in rows["file"]],
            "dx": rows["dx"].to_list(),
            "skin": [SKIN.index(s) for s in rows["skin"]],
        },
        features=datasets.Features(
            {
                "img": datasets.Image(),
                "dx": datasets.Value("string"),
                "skin": datasets.ClassLabel(names=list(SKIN)),
            }
        ),
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    dd = load_dataset(tmp_path / "saved", image_col="img", label_col="dx", group_col="skin")
    assert dataset_info(dd) == (("benign", "malignant"), SKIN)  # the source's order is kept
    got = sorted(_truth(dd).values())
    assert got == sorted(_truth(ref).values())
    # an imagefolder with metadata.jsonl (datasets' own convention: file_name)
    imf = tmp_path / "imf"
    _write_folder(imf, file_col="file_name").write_ndjson(imf / "metadata.jsonl")
    (imf / "labels.csv").unlink()
    dd2 = load_dataset(imf, image_col="image", label_col="dx", group_col="skin")
    assert sorted(_truth(dd2).values()) == got


def test_missing_local_path_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for source in ("data/fitz17k", "./mine", str(tmp_path / "nope"), "labels.csv", "x/y/z"):
        t0 = time.perf_counter()
        with pytest.raises(DataError, match=r"no such file or folder") as err:
            load_dataset(source, image_col="file", label_col="dx", group_col="skin")
        assert repr(source) in str(err.value)
        assert time.perf_counter() - t0 < 5  # not the Hub's retries (report, not a benchmark)


def test_bad_input_names_what_to_do(tmp_path, caplog):
    root = tmp_path / "m"
    rows = _write_folder(root, with_bad=True)
    with pytest.raises(DataError, match=r"missing column\(s\) \['fst'\]; columns found"):
        load_dataset(root, image_col="file", label_col="dx", group_col="fst")
    with pytest.raises(ValueError, match="three different columns"):
        load_dataset(root, image_col="file", label_col="dx", group_col="dx")
    with pytest.raises(DataError, match=r"1 missing or corrupt image\(s\) \(strict=True\)"):
        load_dataset(root, image_col="file", label_col="dx", group_col="skin", strict=True)
    # empty group values: rows dropped, counted in a warning
    rows.with_columns(
        pl.when(pl.int_range(pl.len()) < 3).then(pl.lit("")).otherwise("skin").alias("skin")
    ).write_csv(root / "labels.csv")
    with caplog.at_level(logging.WARNING, logger="fq_data"):
        dd = load_dataset(root, image_col="file", label_col="dx", group_col="skin")
    assert "dropped 3 row(s) with a missing 'dx' or 'skin'" in caplog.text
    assert "skipped 1 missing or corrupt image(s)" in caplog.text
    assert len(dd["train"]) + len(dd["test"]) == rows.height - 3 - 1


def test_cli_inspect_custom(tmp_path, capsys):
    from fq_data.__main__ import main

    _write_folder(tmp_path / "mine")
    args = ["inspect", "custom", str(tmp_path / "mine"), "--image-col", "file"]
    assert main([*args, "--label-col", "dx", "--group-col", "skin"]) == 0
    out = capsys.readouterr().out
    assert "custom: real; 2 classes; groups ['dark', 'light', 'medium']" in out
    assert "train: 29 rows" in out and "test: 7 rows" in out
    with pytest.raises(SystemExit, match="missing: --label-col, --group-col"):
        main(args)
    assert main(["inspect", "custom", "./none", *args[3:], "--label-col", "a",
                 "--group-col", "b"]) == 2  # fmt: skip
    assert "no such file or folder" in capsys.readouterr().err


def test_fitzpatrick_error_points_to_custom_loader(fitz_layout):
    root, rows = fitz_layout()
    rows.with_columns(pl.lit("dark").alias("fitzpatrick_scale")).write_csv(
        root / "fitzpatrick17k.csv"
    )
    from fq_data import load_fitzpatrick17k

    with pytest.raises(DataError, match=r"\['dark'\].*fq_data.load_dataset"):
        load_fitzpatrick17k(root)


def test_imagefolder_metadata_without_file_name_says_so(tmp_path):
    # datasets' imagefolder needs 'file_name'; a 'file' column used to fail deep inside datasets
    root = tmp_path / "imf"
    _write_folder(root).write_ndjson(root / "metadata.jsonl")
    (root / "labels.csv").unlink()
    with pytest.raises(DataError, match=r"metadata.jsonl: .*needs a 'file_name' column.*'file'"):
        load_dataset(root, image_col="image", label_col="dx", group_col="skin")
    from fq_data import load_fitzpatrick17k

    with pytest.raises(DataError, match="needs a 'file_name' column"):
        load_fitzpatrick17k(root)
    # ... and the suggested fix works
    dd = load_dataset(root / "metadata.jsonl", image_col="file", label_col="dx", group_col="skin")
    assert len(dd["train"]) + len(dd["test"]) == 36
