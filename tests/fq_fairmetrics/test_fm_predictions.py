"""Evaluate what you ship (issue 23 section 2): any callable or an ONNX Runtime session, per-sample
predictions saved and loaded, and ``python -m fq_fairmetrics compare`` on two files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fq_fairmetrics import Predictions, compare
from fq_fairmetrics.__main__ import main
from fq_fairmetrics.torch import evaluate, predict
from torch import nn


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))  # fmt: skip


def _batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(8, 3, 12, 12, generator=g), torch.randint(0, 3, (8,), generator=g),
         torch.randint(0, 2, (8,), generator=g))
        for _ in range(3)
    ]  # fmt: skip


def test_a_callable_and_an_onnx_session_give_the_modules_report(tmp_path: Path) -> None:
    model, batches = _model(), _batches()
    names = ("light", "dark")
    want = evaluate(model, batches, group_names=names)
    as_numpy = evaluate(lambda x: model(x).detach().numpy(), batches, group_names=names)
    assert np.array_equal(want.counts, as_numpy.counts)

    from fq_quant import export_onnx, ort_session

    path = export_onnx(model, batches[0][0], tmp_path / "m.onnx", allow_float=True)
    session = ort_session(path)
    got = evaluate(session, batches, group_names=names)
    assert np.array_equal(want.counts, got.counts) and got.group_names == names
    p = predict(session, batches, group_names=names, class_names=["a", "b", "c"])
    assert p.n_samples == 24 and set(p.group.tolist()) <= set(names)
    assert p.report(group_names=names).metrics() == pytest.approx(
        want.metrics()
    )  # names instead of codes: the same counts
    with pytest.raises(TypeError, match="callable"):
        evaluate(42, batches)


def test_predictions_round_trip_through_csv_and_parquet(tmp_path: Path) -> None:
    model, batches = _model(), _batches()
    p = predict(model, batches, group_names=("light", "dark"))
    manual = torch.cat([model(x).argmax(1) for x, _, _ in batches]).numpy()
    assert np.array_equal(p.prediction, manual)
    assert np.array_equal(p.label, torch.cat([y for _, y, _ in batches]).numpy())
    for suffix in (".csv", ".parquet"):
        back = Predictions.load(p.save(tmp_path / f"p{suffix}"))
        for c in ("sample_id", "label", "group", "prediction"):
            assert getattr(back, c).tolist() == getattr(p, c).tolist(), (suffix, c)
    text = (tmp_path / "p.csv").read_text().splitlines()
    assert text[0] == "sample_id,label,group,prediction" and len(text) == 25
    with pytest.raises(ValueError, match="unique"):
        Predictions(sample_id=[0, 0], label=[1, 1], group=["a", "a"], prediction=[1, 0])
    with pytest.raises(ValueError, match=".csv or .parquet"):
        p.save(tmp_path / "p.txt")


def _files(tmp_path: Path, flips: int, n: int = 1200) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    labels = rng.choice(["mel", "nev"], n)
    groups = np.repeat(["I-III", "IV-VI"], n // 2)
    ref = np.where(rng.random(n) < 0.85, labels, np.where(labels == "mel", "nev", "mel"))
    cand = ref.copy()
    cand[:flips] = np.where(labels[:flips] == "mel", "nev", "mel")  # wrong on the first flips
    ids = np.array([f"img{i:05d}" for i in range(n)])
    a = Predictions(sample_id=ids, label=labels, group=groups, prediction=ref).save(
        tmp_path / "fp32.csv"
    )
    order = rng.permutation(n)  # another framework may write the rows in another order
    b = Predictions(sample_id=ids[order], label=labels[order], group=groups[order],
                    prediction=cand[order]).save(tmp_path / "int4.csv")  # fmt: skip
    return a, b


def test_compare_cli_prints_the_comparison_and_exits_by_verdict(tmp_path: Path, capsys) -> None:
    ref, cand = _files(tmp_path, flips=0)
    assert main(["compare", str(ref), str(cand), "--margin", "2"]) == 0
    out = capsys.readouterr().out
    assert "| I-III | 600 |" in out and "non-inferior in every group" in out
    loaded = Predictions.load(ref)
    assert compare(
        loaded.label, loaded.group, loaded.prediction, loaded.prediction, margin=2
    ).non_inferior

    ref, cand = _files(tmp_path, flips=60)
    assert main(["compare", str(ref), str(cand)]) == 1
    out = capsys.readouterr().out
    assert "inferior" in out and "worse" in out and "NOT shown non-inferior" in out


def test_compare_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    ref, cand = _files(tmp_path, flips=0)
    broken = tmp_path / "broken.csv"
    broken.write_text("id,label,group,prediction\n1,a,b,a\n")
    short = tmp_path / "short.csv"
    short.write_text("\n".join(ref.read_text().splitlines()[:-3]) + "\n")
    cases = {
        str(tmp_path / "missing.csv"): "no prediction file",
        str(broken): "lacks column(s) ['sample_id']",
        str(short): "do not hold the same samples",
    }
    for other, message in cases.items():
        run = subprocess.run(
            [sys.executable, "-m", "fq_fairmetrics", "compare", str(ref), other],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert run.returncode == 2, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
