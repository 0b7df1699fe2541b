"""Fault injection (issue 25): a user's own data, trusted.

Each test is one case of the issue's probe, on the package side: results that follow the data,
paths that stay inside the dataset folder, missing-value markers, degenerate groups, the packed
format's hash, bounded memory for large ids, and clear command-line errors. The grid's cases are
in ``test_fault_injection.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

# ---------------------------------------------------------------- 6. packed format downgrade


def _packed_file(tmp_path: Path) -> Path:
    import torch
    from fq_quant import BitAssignment, Granularity, ScopeLayout, export_packed, quantize_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    layout = ScopeLayout.from_model(model, Granularity.CHANNEL)
    wrapped = quantize_model(model, BitAssignment.uniform(layout, 4))
    return export_packed(wrapped, tmp_path / "m.safetensors")


def _edit(path: Path, *, scale: float | None, meta: dict[str, str | None]) -> None:
    """Re-save ``path`` with layer 0's first scale set to ``scale`` and metadata keys replaced
    (``None``: removed); the stored content hash is left as it was."""
    from safetensors.torch import load, save

    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    m = json.loads(blob[8 : 8 + n])["__metadata__"]
    t = load(blob)
    if scale is not None:
        s = t["0.weight:scales"].clone()
        s[0] = scale
        t["0.weight:scales"] = s
    for k, v in meta.items():
        if v is None:
            m.pop(k, None)
        else:
            m[k] = v
    path.write_bytes(save(t, metadata=m))


def test_a_packed_file_with_a_hash_is_verified_whatever_its_version(tmp_path: Path) -> None:
    from fq_quant import load_packed

    path = _packed_file(tmp_path)
    state, _ = load_packed(path)
    # the probe: the header's version edited from 2 to 1, and a scale edited, hash kept
    _edit(
        path, scale=float(state["0.weight"].abs().max()) * 7, meta={"format": "fq_quant.packed/1"}
    )
    with pytest.raises(ValueError, match=f"{path}: content hash mismatch"):
        load_packed(path)
    with pytest.raises(ValueError, match="content hash mismatch"):
        load_packed(path, allow_unverified=True)  # a hash is checked even then


def test_a_version_1_file_is_read_only_on_request(tmp_path: Path) -> None:
    from fq_quant import load_packed

    path = _packed_file(tmp_path)
    state, _ = load_packed(path)
    _edit(path, scale=None, meta={"format": "fq_quant.packed/1", "content_sha256": None})
    with pytest.raises(ValueError, match="version 1 carries no content hash.*allow_unverified"):
        load_packed(path)
    with pytest.warns(UserWarning, match="read unverified"):
        old, _ = load_packed(path, allow_unverified=True)
    assert all(np.array_equal(old[k].numpy(), state[k].numpy()) for k in state)


# ---------------------------------------------------------------- your own folder: helpers


def _folder(
    root: Path, rows: list[tuple[str, str, str]], *, ids: bool = False, images: bool = True
) -> Path:
    """``root/labels.csv`` with columns ``file, dx, skin`` (plus ``id`` = row number) and, for
    each distinct file path (as normalised), a 10x10 PNG of its own colour."""
    import polars as pl
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    if images:
        for k, f in enumerate(sorted({(root / r[0]).resolve() for r in rows})):
            if f.is_relative_to(root.resolve()) and not f.exists():
                f.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (10, 10), (k * 37 % 256, k * 91 % 256, 90)).save(f)
    cols = {"file": [r[0] for r in rows], "dx": [r[1] for r in rows], "skin": [r[2] for r in rows]}
    if ids:
        cols = {"id": [f"r{i}" for i in range(len(rows))], **cols}
    pl.DataFrame(cols).write_csv(root / "labels.csv")
    return root


def _rows(n: int = 40) -> list[tuple[str, str, str]]:
    return [
        (f"img/{i}.png", ("benign", "malignant")[i % 2], ("light", "dark")[i // 2 % 2])
        for i in range(n)
    ]


def _load(root: Path, **kw):
    from fq_data import load_dataset

    return load_dataset(root, image_col="file", label_col="dx", group_col="skin", **kw)


def _files(ds) -> set[str]:
    """The resolved image files of a split."""
    import datasets

    raw = ds.cast_column("image", datasets.Image(decode=False))["image"]
    return {str(Path(r["path"]).resolve()) for r in raw}


# ---------------------------------------------------------------- 1. results follow the data


def test_the_dataset_fingerprint_follows_the_content(tmp_path: Path) -> None:
    import polars as pl
    from fq_data import dataset_fingerprint

    root = _folder(tmp_path / "mine", _rows())
    ref = dataset_fingerprint(_load(root))
    assert len(ref) == 64 and ref == dataset_fingerprint(_load(root))  # deterministic
    # the same content elsewhere (another source string) is the same data
    import shutil

    shutil.copytree(root, tmp_path / "copy")
    assert dataset_fingerprint(_load(tmp_path / "copy")) == ref
    table = pl.read_csv(root / "labels.csv")
    flipped = table.with_columns(
        pl.when(pl.col("dx") == "benign")
        .then(pl.lit("malignant"))
        .otherwise(pl.lit("benign"))
        .alias("dx")
    )
    seen = {ref}
    for changed in (flipped, table[:30]):  # the probe: labels flipped, rows removed
        changed.write_csv(root / "labels.csv")
        fp = dataset_fingerprint(_load(root))
        assert fp not in seen
        seen.add(fp)
    table.write_csv(root / "labels.csv")
    assert dataset_fingerprint(_load(root)) == ref
    # one image's bytes changed in place: "content" sees it; "stat" sees the new size/mtime
    stat_ref = dataset_fingerprint(_load(root), images="stat")
    from PIL import Image

    img = root / "img" / "3.png"
    before = img.stat()
    Image.new("RGB", (10, 10), (1, 2, 3)).save(img)
    os_times = (before.st_atime_ns, before.st_mtime_ns + 10**9)
    import os

    os.utime(img, ns=os_times)
    assert dataset_fingerprint(_load(root)) not in seen
    assert dataset_fingerprint(_load(root), images="stat") != stat_ref
    with pytest.raises(ValueError, match="images must be 'content' or 'stat'"):
        dataset_fingerprint(_load(root), images="fast")  # type: ignore[arg-type]


# ---------------------------------------------------------------- 2. one image, two spellings


@pytest.mark.parametrize("ids", [False, True])
def test_one_file_under_several_spellings_is_one_image(tmp_path: Path, ids: bool) -> None:
    base = _rows(40)
    spelled = [
        (s.format(f=f), dx, skin) for f, dx, skin in base for s in ("{f}", "./{f}", "img/../{f}")
    ]
    root = _folder(tmp_path / "mine", spelled, ids=ids)
    dd = _load(root)
    train, test = _files(dd["train"]), _files(dd["test"])
    assert train.isdisjoint(test)
    assert len(train) + len(test) == 40 == len(dd["train"]) + len(dd["test"])
    if not ids:
        assert set(dd["train"]["id"]) | set(dd["test"]["id"]) == {f for f, _, _ in base}
    from fq_data import DataError

    if ids:
        with pytest.raises(DataError, match="80 row.s. name an image file an earlier row names"):
            _load(root, strict=True)


# ---------------------------------------------------------------- 3. missing-value markers


def test_missing_value_markers_are_missing_not_groups(tmp_path: Path, caplog) -> None:
    import logging

    from fq_data import MISSING_VALUES, dataset_info

    markers = ["NA", "NaN", "null", "None", "N/A", " n/a ", "", "nan"]
    rows = _rows(40) + [(f"img/m{i}.png", "benign", m) for i, m in enumerate(markers)]
    rows += [(f"img/l{i}.png", m, "light") for i, m in enumerate(markers)]
    root = _folder(tmp_path / "mine", rows)
    with caplog.at_level(logging.WARNING, logger="fq_data"):
        dd = _load(root)
    assert dataset_info(dd) == (("benign", "malignant"), ("dark", "light"))
    assert len(dd["train"]) + len(dd["test"]) == 40
    assert "dropped 16 row(s) with a missing 'dx' or 'skin'" in caplog.text
    assert {"NA", "NaN", "null", "None", "N/A", "n/a", ""} <= MISSING_VALUES
    # a literal value kept on request
    dd = _load(root, missing_values=MISSING_VALUES - {"NA"})
    assert dataset_info(dd)[1] == ("NA", "dark", "light")
    with pytest.raises(ValueError, match="missing_values must be a collection of strings"):
        _load(root, missing_values="NA")


def test_a_float_nan_in_a_parquet_column_is_missing(tmp_path: Path) -> None:
    import polars as pl
    from fq_data import dataset_info, load_dataset

    root = _folder(tmp_path / "mine", _rows(40))
    table = pl.read_csv(root / "labels.csv")
    skin = [1.0 if s == "light" else 2.0 for s in table["skin"]]
    skin[:4] = [float("nan")] * 4
    table.with_columns(pl.Series("skin", skin)).write_parquet(root / "t.parquet")
    (root / "labels.csv").unlink()
    dd = load_dataset(root / "t.parquet", image_col="file", label_col="dx", group_col="skin")
    assert dataset_info(dd)[1] == ("1.0", "2.0")
    assert len(dd["train"]) + len(dd["test"]) == 36


# ---------------------------------------------------------------- 4. degenerate data


def test_a_single_class_task_is_refused(tmp_path: Path) -> None:
    from fq_data import DataError

    rows = [(f, "benign", skin) for f, _, skin in _rows(40)]
    with pytest.raises(DataError, match=r"every usable row has the label \['benign'\].*two"):
        _load(_folder(tmp_path / "mine", rows))


def test_a_group_without_test_images_is_reported(tmp_path: Path, caplog, capsys) -> None:
    import logging

    from fq_data.__main__ import main

    # group 'rare': one image per label, so each stratum has one row, which stays in train
    rows = _rows(40) + [("img/r0.png", "benign", "rare"), ("img/r1.png", "malignant", "rare")]
    root = _folder(tmp_path / "mine", rows)
    with caplog.at_level(logging.WARNING, logger="fq_data"):
        dd = _load(root)
    assert "group(s) ['rare'] have no test image" in caplog.text
    assert dd["test"]["group"].count(dd["test"].features["group"].str2int("rare")) == 0
    cli = ["inspect", "custom", str(root), "--image-col", "file", "--label-col", "dx"]
    assert main([*cli, "--group-col", "skin"]) == 0
    out = capsys.readouterr().out
    assert "no test image in group(s) ['rare']" in out
    assert "fewer than 30 test images in group(s) {'dark': 4, 'light': 4}" in out


def test_small_and_empty_groups_warn_and_are_recorded() -> None:
    from fq_fairmetrics import MIN_GROUP_N, SmallGroupWarning, group_report

    rng = np.random.default_rng(0)
    g = np.array(["a"] * 60 + ["b"] * 5)
    y = rng.integers(0, 2, g.size)
    with pytest.warns(SmallGroupWarning, match=r"no sample in group\(s\) \['c'\].*\{'b': 5\}"):
        r = group_report(y, y, sensitive_features=g, group_names=["a", "b", "c"])
    assert r.small_groups == ("b",) and r.empty_groups == ("c",) and MIN_GROUP_N == 30
    d = r.to_dict()
    assert d["small_groups"] == ["b"] and d["empty_groups"] == ["c"]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a report with every group large says nothing
        big = group_report(y[:60], y[:60], sensitive_features=g[:60])
    assert big.small_groups == () and big.empty_groups == ()


def test_evaluate_warns_about_small_test_groups() -> None:
    import torch
    from fq_fairmetrics import SmallGroupWarning
    from fq_fairmetrics.torch import evaluate

    x = torch.randn(40, 4)
    batches = [(x, torch.zeros(40, dtype=torch.int64), torch.tensor([0] * 33 + [1] * 7))]
    with pytest.warns(SmallGroupWarning, match=r"\{'dark': 7\}"):
        r = evaluate(torch.nn.Linear(4, 2), batches, group_names=["light", "dark"])
    assert r.small_groups == ("dark",)


def test_the_small_group_thresholds_agree() -> None:
    from fq_data._constants import SMALL_GROUP_N
    from fq_fairmetrics import MIN_GROUP_N

    assert SMALL_GROUP_N == MIN_GROUP_N


# ---------------------------------------------------------------- 7. paths stay home


def test_paths_outside_the_dataset_folder_are_refused_unless_allowed(tmp_path: Path) -> None:
    from fq_data import DataError, dataset_info
    from PIL import Image

    Image.new("RGB", (10, 10), (9, 9, 9)).save(tmp_path / "private.png")
    Image.new("RGB", (10, 10), (8, 8, 8)).save(tmp_path / "elsewhere.png")
    root = tmp_path / "mine"
    rows = _rows(40)
    _folder(root, rows)
    (root / "img" / "link.png").symlink_to(tmp_path / "elsewhere.png")
    for bad in ("../private.png", "img/link.png", str(tmp_path / "private.png")):
        _folder(root, rows + [(bad, "benign", "dark")])
        with pytest.raises(DataError, match=r"1 image path\(s\) lead outside the dataset folder"):
            _load(root)
        dd = _load(root, allow_outside_root=True)
        assert len(dd["train"]) + len(dd["test"]) == 41
        assert dataset_info(dd)[1] == ("dark", "light")


def test_the_cli_flag_allows_outside_paths(tmp_path: Path, capsys) -> None:
    from fq_data.__main__ import main
    from PIL import Image

    Image.new("RGB", (10, 10), (9, 9, 9)).save(tmp_path / "private.png")
    root = _folder(tmp_path / "mine", _rows(40) + [("../private.png", "benign", "dark")])
    cli = ["inspect", "custom", str(root), "--image-col", "file", "--label-col", "dx"]
    cli += ["--group-col", "skin"]
    assert main(cli) == 2
    assert "allow_outside_root=True (--allow-outside-root)" in capsys.readouterr().err
    assert main([*cli, "--allow-outside-root"]) == 0


# ---------------------------------------------------------------- 8. only regular files


def test_a_fifo_is_skipped_with_its_reason_not_read(tmp_path: Path) -> None:
    import os
    import threading

    import polars as pl

    root = _folder(tmp_path / "mine", _rows(40))
    os.mkfifo(root / "img" / "pipe.png")
    pl.concat(
        [
            pl.read_csv(root / "labels.csv"),
            pl.DataFrame([{"file": "img/pipe.png", "dx": "benign", "skin": "dark"}]),
        ]
    ).write_csv(root / "labels.csv")
    got: dict[str, object] = {}

    def run() -> None:
        try:
            got["dd"] = _load(root, skipped_out=tmp_path / "skipped.csv")
        except BaseException as exc:  # noqa: BLE001  # reported below
            got["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout=120)
    if t.is_alive():  # release the blocked reader, then fail
        fd = os.open(root / "img" / "pipe.png", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join(timeout=30)
        pytest.fail("loading blocked on a FIFO")
    assert "error" not in got, got.get("error")
    skipped = pl.read_csv(tmp_path / "skipped.csv")
    assert skipped.rows() == [("img/pipe.png", "not a regular file (fifo)")]
    from fq_data import decode_images

    with pytest.raises(OSError, match="not a regular file .fifo."):
        import datasets

        decode_images(
            datasets.Dataset.from_dict(
                {"image": [str(root / "img" / "pipe.png")]},
                features=datasets.Features({"image": datasets.Image()}),
            ),
            8,
            cache=False,
        )


# ---------------------------------------------------------------- 9. bounded memory


def test_a_huge_label_is_refused_before_the_counts_are_allocated() -> None:
    from fq_fairmetrics import MAX_COUNT_CELLS, FairnessAccumulator, group_report

    y = np.array([0, 1, 2**20, 1])
    with pytest.raises(
        ValueError, match=r"1048577 classes .*MAX_COUNT_CELLS = 16777216.*1048576.*remap"
    ):
        group_report(y, y, sensitive_features=[0, 0, 1, 1])
    with pytest.raises(ValueError, match="MAX_COUNT_CELLS"):
        group_report([0, 1], [0, 1], sensitive_features=[0, 1], n_classes=10**9)
    with pytest.raises(ValueError, match="MAX_COUNT_CELLS"):
        FairnessAccumulator(n_classes=10**6)
    assert MAX_COUNT_CELLS == 2**24
    # a large group id is only a name: groups are encoded compactly
    r = group_report([0, 1, 1], [0, 1, 0], sensitive_features=[3 * 10**9, 0, 3 * 10**9])
    assert r.group_names == (0, 3 * 10**9)


def test_the_data_path_encodes_large_values_compactly(tmp_path: Path) -> None:
    from fq_data import dataset_info, make_loaders

    rows = [
        (f, str(20000 * (i % 2)), str(3 * 10**9 * (i // 2 % 2)))
        for i, (f, _, _) in enumerate(_rows(40))
    ]
    dd = _load(_folder(tmp_path / "mine", rows))
    assert dataset_info(dd) == (("0", "20000"), ("0", "3000000000"))
    loaders = make_loaders(dd, image_size=8, batch_size=8, train=False, seed=0)
    _, y, g = next(iter(loaders.test))
    assert loaders.num_classes == 2 and loaders.num_groups == 2
    assert int(y.max()) <= 1 and int(g.max()) <= 1


@pytest.mark.parametrize("fair_loss", ["gap", "dro"])
def test_a_huge_group_id_is_refused_by_the_trainer(fair_loss: str) -> None:
    import torch
    from fq_baq import MAX_GROUPS, BAQConfig, FP32Trainer
    from torch.utils.data import DataLoader, TensorDataset

    x = torch.randn(16, 4)
    y = torch.tensor([0, 1] * 8)
    g = torch.tensor([0, 2**40] * 8)
    cfg = BAQConfig(epochs=1, lr=1e-3, lambda_fair=0.5, fair_loss=fair_loss, cpu=True)
    loader = DataLoader(TensorDataset(x, y, g), batch_size=8)
    with pytest.raises(ValueError, match=rf"group id {2**40}.*MAX_GROUPS = {MAX_GROUPS}.*remap"):
        FP32Trainer(torch.nn.Sequential(torch.nn.Linear(4, 2)), cfg).fit(loader)


# ---------------------------------------------------------------- 10. command-line errors


def test_the_data_cli_turns_bad_input_into_one_line(tmp_path: Path, capsys) -> None:
    from fq_data.__main__ import main

    root = _folder(tmp_path / "mine", _rows(40))
    cli = ["inspect", "custom", str(root), "--label-col", "dx", "--group-col", "skin"]
    for extra, message in (
        (["--image-col", ""], "image_col must be a non-empty column name"),
        (["--image-col", "file", "--test-fraction", "1.5"], r"test_fraction must be in (0, 1)"),
    ):
        assert main([*cli, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_the_onnx_cli_checks_its_arguments_before_any_work(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    import torch
    from fq_quant import BitAssignment, Granularity, ScopeLayout, export_packed, quantize_model
    from fq_quant.__main__ import main

    calls = tmp_path / "built"
    (tmp_path / "trust_builder.py").write_text(
        "import torch\n"
        "def build(name, num_classes, image_size):\n"
        "    import pathlib\n"
        f"    pathlib.Path({str(calls)!r}).write_text(name)\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    for g in (Granularity.CHANNEL, Granularity.PARAM):
        layout = ScopeLayout.from_model(model, g)
        export_packed(
            quantize_model(model, BitAssignment.uniform(layout, 4)), tmp_path / f"{g.value}.st"
        )
    base = ["export-onnx", "--model", "m", "--num-classes", "3", "--image-size", "4"]
    base += ["--builder", "trust_builder:build"]
    out = tmp_path / "out.onnx"
    (tmp_path / "a_dir").mkdir()
    for packed, extra, message in (
        ("channel", ["--out", str(out), "--opset", "7"], "--opset must be in [18, "),
        ("channel", ["--out", str(tmp_path / "a_dir")], "is an existing folder"),
        ("param", ["--out", str(out)], "granularity 'param' cannot be exported to ONNX"),
    ):
        assert main([*base, str(tmp_path / f"{packed}.st"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
        assert not calls.exists()  # refused before the model was built
    assert main([*base, str(tmp_path / "channel.st"), "--out", str(out)]) == 0
    assert out.is_file() and calls.read_text() == "m"


# ---------------------------------------------------------------- 11. vague errors made clear


def test_a_table_without_the_image_column_lists_its_columns(tmp_path: Path) -> None:
    from fq_data import DataError

    root = _folder(tmp_path / "mine", _rows(40))
    with pytest.raises(
        DataError,
        match=r"no table holds the image column 'path'.*labels.csv: \['dx', 'file', 'skin'\]",
    ):
        from fq_data import load_dataset

        load_dataset(root, image_col="path", label_col="dx", group_col="skin")


def test_an_empty_csv_is_named(tmp_path: Path) -> None:
    from fq_data import DataError

    root = _folder(tmp_path / "mine", _rows(40))
    (root / "labels.csv").write_bytes(b"")
    for source in (root, root / "labels.csv"):
        with pytest.raises(DataError, match=f"{root / 'labels.csv'}: the table file is empty"):
            _load(source)


def test_a_training_label_outside_the_classes_names_the_batch() -> None:
    import torch
    from fq_baq import BAQConfig, FP32Trainer
    from torch.utils.data import DataLoader, TensorDataset

    y = torch.tensor([0, 1] * 8)
    y[11] = 5
    data = TensorDataset(torch.randn(16, 4), y, torch.zeros(16, dtype=torch.int64))
    cfg = BAQConfig(epochs=1, lr=1e-3, lambda_fair=0.0, cpu=True)
    with pytest.raises(
        ValueError, match=r"batch 1 has label\(s\) \[5\] outside the model's 2 classes"
    ):
        FP32Trainer(torch.nn.Sequential(torch.nn.Linear(4, 2)), cfg).fit(
            DataLoader(data, batch_size=8)
        )


def test_model_cost_of_an_empty_example_input_says_so() -> None:
    import torch
    from fq_fairmetrics.torch import model_cost

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    with pytest.raises(ValueError, match=r"example_input must be a tensor \[B, ...\] with B >= 1"):
        model_cost(model, torch.zeros(0, 3, 2, 2))
    assert model_cost(model, torch.zeros(2, 3, 2, 2)).size_bytes > 0


# ---------------------------------------------------------------- 12. one test fraction


def test_one_default_test_fraction_and_inspect_shows_any(tmp_path: Path, capsys) -> None:
    import inspect

    from fq_data import (
        DEFAULT_TEST_FRACTION,
        load_dataset,
        load_fitzpatrick17k,
        load_isic2019,
        stratified_split,
    )
    from fq_data.__main__ import main

    for fn in (load_dataset, load_fitzpatrick17k, load_isic2019, stratified_split):
        assert inspect.signature(fn).parameters["test_fraction"].default is DEFAULT_TEST_FRACTION
    root = _folder(tmp_path / "mine", _rows(40))
    cli = ["inspect", "custom", str(root), "--image-col", "file", "--label-col", "dx"]
    for fraction in (None, 0.4):
        extra = [] if fraction is None else ["--test-fraction", str(fraction)]
        assert main([*cli, "--group-col", "skin", *extra]) == 0
        want = len(_load(root, test_fraction=fraction or DEFAULT_TEST_FRACTION)["test"])
        assert f"  test: {want} rows" in capsys.readouterr().out
    assert want == 16  # 0.4 of 40
