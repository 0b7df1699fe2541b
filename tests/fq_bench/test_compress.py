"""``python -m fq_bench compress`` end to end on a user's folder: resnet18 at 32 px, string labels
and groups, the audit of the shipped files, resuming, and a file that was tampered with."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

GROUPS = ("light", "dark", "olive")
ARGS = [
    "--model", "resnet18", "--image-column", "file", "--label-column", "dx",
    "--group-column", "skin", "--budget", "4", "--method", "fq-qat", "--epochs", "1",
    "--batch-size", "32", "--calib-batches", "2", "--image-size", "32", "--no-progress",
]  # fmt: skip


def _train_weights(folder: Path, path: Path) -> None:
    """The user's side: an FP32 resnet18 trained on their folder, saved as safetensors."""
    import timm
    from fq_baq import BAQConfig, FP32Trainer
    from fq_data import load_dataset, make_loaders
    from safetensors.torch import save_file

    dd = load_dataset(folder, image_col="file", label_col="dx", group_col="skin", seed=0)
    loaders = make_loaders(dd, image_size=32, batch_size=32, train=False, seed=0)
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=loaders.num_classes)
    cfg = BAQConfig(epochs=3, lr=3e-3, progress=False, cpu=True)
    trained = FP32Trainer(model, cfg).fit(loaders.train).model
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(path))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, own_folder) -> dict[str, Path]:
    """One compress run shared by the tests below (its own cache folder)."""
    from fq_bench.compress import main
    from fq_fairmetrics import TooFewSamplesWarning

    root = tmp_path_factory.mktemp("compress")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FQ_CACHE_DIR", str(root / "cache"))
        data = own_folder(root / "mine", n=240, groups=GROUPS)
        weights = root / "weights.safetensors"
        _train_weights(data, weights)
        out = root / "out"
        argv = [*ARGS, "--weights", str(weights), "--data", str(data), "--out", str(out)]
        with pytest.warns(TooFewSamplesWarning):
            assert main(argv) == 0
    return {"root": root, "data": data, "weights": weights, "out": out, "argv": argv}  # type: ignore[dict-item]


def _predictions(path: Path) -> list[dict[str, str]]:
    import polars as pl

    return pl.read_csv(path, schema_overrides={"sample_id": pl.String}).to_dicts()


def test_writes_every_file_and_the_onnx_file_predicts_as_the_model(run) -> None:
    out = run["out"]
    for name in ("model.onnx", "model.packed.safetensors", "audit.md", "audit.json", "audit.png",
                 "README.md", "run.json", "predictions/fp32.csv", "predictions/fake_quant.csv",
                 "predictions/onnx.csv"):  # fmt: skip
        assert (out / name).is_file(), name
    fp32, fq, onnx = (
        _predictions(out / f"predictions/{k}.csv") for k in ("fp32", "fake_quant", "onnx")
    )
    assert len(fp32) == len(fq) == len(onnx) > 0
    assert {r["group"] for r in fp32} == set(GROUPS)
    assert {r["label"] for r in fp32} == {"nevus", "melanoma"}
    # the exported file computes the fake-quantized model: the same class for every image
    assert [r["prediction"] for r in fq] == [r["prediction"] for r in onnx]
    # what a deployer needs without the toolkit travels in the file
    import onnx
    from fq_quant import tensors_sha256

    proto = onnx.load(str(out / "model.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == ["melanoma", "nevus"]
    assert json.loads(meta["input_shape"]) == [3, 32, 32]
    assert json.loads(meta["normalization"])["mean"] == pytest.approx([0.485, 0.456, 0.406])
    packed = (out / "model.packed.safetensors").read_bytes()
    assert meta["packed_content_sha256"] == tensors_sha256(packed)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # the FP32 model learned the colours: the audit has something to lose
    assert np.mean([r["label"] == r["prediction"] for r in fp32]) > 0.9


def test_audit_rows_match_a_recount_of_the_prediction_files(run) -> None:
    out = run["out"]
    audit = json.loads((out / "audit.json").read_text())
    assert audit["margin"] == 1.0
    fp32 = _predictions(out / "predictions/fp32.csv")
    onnx = _predictions(out / "predictions/onnx.csv")
    rows = {r["group"]: r for r in audit["comparisons"]["onnx"]["rows"]}
    for g in GROUPS:
        idx = [i for i, r in enumerate(fp32) if r["group"] == g]
        right_ref = [fp32[i]["label"] == fp32[i]["prediction"] for i in idx]
        right_new = [onnx[i]["label"] == onnx[i]["prediction"] for i in idx]
        assert rows[g]["n"] == len(idx)
        assert rows[g]["reference_acc"] == pytest.approx(100 * np.mean(right_ref))
        assert rows[g]["candidate_acc"] == pytest.approx(100 * np.mean(right_new))
        assert rows[g]["losses"] == sum(
            a and not b for a, b in zip(right_ref, right_new, strict=True)
        )
        # small groups cannot bound a one-point loss: never called non-inferior
        assert rows[g]["verdict_margin"] == "inconclusive"
    assert audit["comparisons"]["onnx"]["warnings"]  # each says how many images it would need


def test_model_card_front_matter_lists_every_group_and_the_measured_cost(run) -> None:
    import yaml

    card = (run["out"] / "README.md").read_text()
    _, front, text = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    audit = json.loads((run["out"] / "audit.json").read_text())
    onnx_rows = {r["group"]: r for r in audit["comparisons"]["onnx"]["rows"]}
    for g in GROUPS:
        (m,) = [m for m in metrics if m["name"].startswith(f"accuracy, {g} (ONNX")]
        assert m["value"] == pytest.approx(onnx_rows[g]["candidate_acc"] / 100, abs=5e-5)
    assert "Not decided" in text
    size = (run["out"] / "model.packed.safetensors").stat().st_size
    assert f"{size / 2**20:.2f} MiB" in text
    assert "semi-synthetic" not in text  # the user's own data is not labelled demo data


def test_a_finished_run_is_not_redone_and_a_lost_file_redoes_only_what_follows(
    run, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fq_bench.compress import main
    from fq_fairmetrics import TooFewSamplesWarning

    out = run["out"]
    monkeypatch.setenv("FQ_CACHE_DIR", str(run["root"] / "cache"))
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert main(run["argv"]) == 0  # nothing to redo: no training, no warning from a new audit
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    (out / "model.onnx").unlink()
    with pytest.warns(TooFewSamplesWarning):
        assert main(run["argv"]) == 0
    assert (out / "model.packed.safetensors").stat().st_mtime_ns == stamps[
        out / "model.packed.safetensors"
    ]
    assert (out / "predictions/fp32.csv").stat().st_mtime_ns == stamps[out / "predictions/fp32.csv"]
    assert (out / "model.onnx").is_file()
    assert (out / "audit.json").stat().st_mtime_ns > stamps[out / "audit.json"]


def test_other_settings_in_the_same_folder_are_refused(run, capsys) -> None:
    from fq_bench.compress import main

    argv = [a if a != "4" else "3" for a in run["argv"]]  # --budget 3
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "holds a run with other inputs" in err and "config" in err


def _tamper_one_layer(path: Path) -> str:
    """Swap the rows of the classifier's integer weight codes in an exported ONNX file."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    (init,) = [i for i in proto.graph.initializer if "fc" in i.name and i.data_type in (3, 22)]
    codes = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array(codes[::-1].copy(), init.name))
    onnx.save(proto, str(path))
    return init.name


def test_a_tampered_onnx_layer_is_flagged_inferior_and_worse(
    run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fq_quant
    from fq_bench.compress import main
    from fq_fairmetrics import TooFewSamplesWarning

    out = tmp_path / "out"
    shutil.copytree(run["out"], out)
    (out / "model.onnx").unlink()  # resume at the export, through a broken exporter
    real = fq_quant.export_onnx

    def broken_export(*args, **kwargs):
        path = real(*args, **kwargs)
        _tamper_one_layer(path)
        return path

    monkeypatch.setattr(fq_quant, "export_onnx", broken_export)
    monkeypatch.setenv("FQ_CACHE_DIR", str(run["root"] / "cache"))
    argv = [a if a != str(run["out"]) else str(out) for a in run["argv"]]
    with warnings.catch_warnings():  # the small group may or may not be decidable now
        warnings.simplefilter("ignore", TooFewSamplesWarning)
        assert main(argv) == 0
    audit = json.loads((out / "audit.json").read_text())
    onnx_rows = {r["group"]: r for r in audit["comparisons"]["onnx"]["rows"]}
    fq_rows = {r["group"]: r for r in audit["comparisons"]["fake_quant"]["rows"]}
    for g in ("light", "dark"):  # the two larger groups: enough discordant images to tell
        assert onnx_rows[g]["verdict_margin"] == "inferior"
        assert onnx_rows[g]["verdict_change"] == "worse"
        assert fq_rows[g]["verdict_change"] != "worse"  # the torch model itself is fine
    assert "Not shown safe" in (out / "README.md").read_text()


def test_weights_that_do_not_fit_name_the_tensors(run, tmp_path: Path, capsys) -> None:
    from fq_bench.compress import main
    from safetensors.torch import load_file, save_file

    state = load_file(str(run["weights"]))
    state["fc.weight"] = torch.zeros(5, 512)  # another number of classes
    del state["layer4.1.bn2.bias"]
    state["head.extra"] = torch.zeros(3)
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    argv = [a if a != str(run["weights"]) else str(bad) for a in run["argv"]]
    argv = [a if a != str(run["out"]) else str(tmp_path / "out") for a in argv]
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    assert "layer4.1.bn2.bias" in err and "head.extra" in err
    assert "fc.weight: (5, 512) in the file, (2, 512) in the model" in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_bad_options_fail_before_any_work(tmp_path: Path) -> None:
    from fq_bench.compress import CompressConfig

    with pytest.raises(ValueError, match="method='ptq' is invalid; allowed: blind, fq-alloc"):
        CompressConfig(method="ptq")
    with pytest.raises(
        ValueError, match=r"budget=9.0 is invalid; allowed: bits per weight in \[2, 8\]"
    ):
        CompressConfig(budget=9.0)
    with pytest.raises(ValueError, match="fair_loss"):
        CompressConfig(fair_loss="nope")  # type: ignore[arg-type]


def test_python_api_compresses_a_model_object_that_is_not_timm(tmp_path: Path, own_folder) -> None:
    """``compress(model, dataset_dict, out, config)`` for any nn.Module (the grid's TinyCNN)."""
    from fq_bench.compress import CompressConfig, compress
    from fq_bench.grid import TinyCNN
    from fq_data import load_dataset
    from fq_fairmetrics import Predictions, TooFewSamplesWarning

    data = own_folder(tmp_path / "mine", n=96)
    dd = load_dataset(data, image_col="file", label_col="dx", group_col="skin", seed=0)
    torch.manual_seed(0)
    model = TinyCNN(num_classes=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = CompressConfig(
        budget=3.0, method="fq-alloc", epochs=1, batch_size=16, image_size=16, calib_batches=2,
        progress=False, cpu=True,
    )  # fmt: skip
    with pytest.warns(TooFewSamplesWarning):
        result = compress(model, dd, tmp_path / "out", config, about={"model": "tiny_cnn"})
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # not modified
    assert abs(result.avg_bits - 3.0) <= 0.05  # allocate_to_budget meets the budget
    assert result.size_bytes == result.packed.stat().st_size
    fq = Predictions.load(tmp_path / "out" / "predictions" / "fake_quant.csv")
    onnx = Predictions.load(tmp_path / "out" / "predictions" / "onnx.csv")
    assert fq.n_samples == len(dd["test"]) and (fq.prediction == onnx.prediction).all()
    groups = [r["group"] for r in result.audit.rows("onnx") if r["kind"] == "group"]
    assert groups == ["dark", "light", "medium", "olive"]
    assert "# tiny_cnn-fq-alloc-3bit" in result.card.read_text()


def test_an_unknown_architecture_is_refused_naming_the_fix(tmp_path: Path, capsys) -> None:
    from fq_bench.compress import main

    argv = ["--model", "resnet19", "--weights", "w.safetensors", "--data", "x", "--out", "o"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "--model 'resnet19' is not a timm architecture" in capsys.readouterr().err


def _recount(pred: list[dict[str, str]], g: str) -> float:
    right = [r["label"] == r["prediction"] for r in pred if r["group"] == g]
    return 100 * float(np.mean(right))


def test_int8_activations_and_container_cost_end_to_end(run, monkeypatch, capsys) -> None:
    """``--activations int8 --group-balanced --estimator percentile --cost container``: the
    integer-activation file is audited per group against FP32 and against the weight-only file
    (rows equal a recount of the prediction files), and the budget holds in container bits
    (each layer's widest channel sets its INT4/INT8 container, recounted here from the packed
    file's bits and the model's parameter counts)."""
    import timm
    from fq_bench.compress import main
    from fq_quant import load_packed

    monkeypatch.setenv("FQ_CACHE_DIR", str(run["root"] / "cache"))
    out = run["root"] / "int8"
    argv = [a if a != str(run["out"]) else str(out) for a in run["argv"]]
    argv += ["--activations", "int8", "--estimator", "percentile", "--group-balanced",
             "--cost", "container", "--calib-batches", "1"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # too few test images for a 1-point margin
        assert main(argv) == 0
    printed = capsys.readouterr().out
    assert (out / "model.int8.onnx").is_file()
    audit = json.loads((out / "audit.json").read_text())
    fp32, onnx, int8 = (
        _predictions(out / f"predictions/{k}.csv") for k in ("fp32", "onnx", "int8")
    )
    for key, ref, cand in (("int8", fp32, int8), ("int8_vs_onnx", onnx, int8)):
        rows = {r["group"]: r for r in audit["comparisons"][key]["rows"] if r["kind"] == "group"}
        assert set(rows) == set(GROUPS)
        for g in GROUPS:
            assert rows[g]["reference_acc"] == pytest.approx(_recount(ref, g))
            assert rows[g]["candidate_acc"] == pytest.approx(_recount(cand, g))
    # the budget in container bits, recounted from the packed file
    _, assignment = load_packed(out / "model.packed.safetensors")  # type: ignore[misc]
    model = timm.create_model("resnet18", num_classes=2)
    params = dict(model.named_parameters())
    total = stored = 0
    for name, bits in assignment.bits.items():
        n = params[f"{name}.weight"].numel()
        widest = int(bits.max())
        stored += n * (4 if widest <= 4 else 8 if widest <= 8 else 16)
        total += n
    assert stored / total <= 4.0 + 1e-9
    card = (out / "README.md").read_text()
    assert "container" in card and "model.int8.onnx" in card
    size = (out / "model.int8.onnx").stat().st_size
    assert f"{size / 2**20:.2f} MiB" in card and "int8" in printed
    # budget, packed size and both ONNX sizes side by side: printed, and one row of the card
    mib = {k: (out / k).stat().st_size / 2**20 for k in ("model.packed.safetensors", "model.onnx")}
    packed, onnx_mib, int8_mib = mib["model.packed.safetensors"], mib["model.onnx"], size / 2**20
    assert "budget 4 (container)" in printed
    assert f"packed {packed:.2f} MiB, onnx {onnx_mib:.2f} MiB, int8 {int8_mib:.2f} MiB" in printed
    row = next(line for line in card.splitlines() if line.startswith("| 4 |"))
    assert row.endswith(f"| {packed:.2f} MiB | {onnx_mib:.2f} MiB | {int8_mib:.2f} MiB |")
