"""bench/ptq_probe.py: reuses the grid's FP32 checkpoints, agrees with the grid's U4/U3 cells, and
its logit error and flips match a float64 re-quantization done here by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from fq_bench.grid import SMOKE, CellStore, run_grid
from fq_bench.grid._checkpoints import fresh_model
from fq_bench.grid._data import load_data
from fq_bench.grid._probe import probe_markdown, probe_summary, ptq_probe
from fq_bench.grid._probe_cli import probe_main

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (see conftest)

TINY = SMOKE.replace(methods=("fp32", "u4", "u3"), seeds=(0, 1), progress=False)


@pytest.fixture(scope="module")
def grid_and_probe(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("probe")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FQ_CACHE_DIR", str(tmp_path_factory.mktemp("cache_probe")))
        run_grid(TINY, out)
        ckpts = sorted((out / "checkpoints").glob("*.safetensors"))
        before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in ckpts}
        frame = ptq_probe(TINY, out, bits=(4, 3))
        after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in ckpts}
        data = load_data(TINY, "fitzpatrick17k")
    return out, frame, before, after, data


def test_probe_reuses_the_grid_checkpoints(grid_and_probe) -> None:
    _, frame, before, after, _ = grid_and_probe
    assert len(before) == 2 and before == after  # neither retrained nor rewritten
    assert frame.height == 2 * 3  # (FP32, U4, U3) x 2 seeds
    assert sorted(frame["bits"].unique().to_list()) == [3, 4, 32]


def test_probe_agrees_with_the_grid_cells(grid_and_probe) -> None:
    """Same FP32 weights, same quantizer: the probe's rows equal the grid's FP32/U4/U3 cells.

    U3 is probed after U4 on the same model, so this also shows each width starts from FP32."""
    out, frame, *_ = grid_and_probe
    bits = {"fp32": 32, "u4": 4, "u3": 3}
    cells = CellStore(out).all()
    assert len(cells) == 6
    for key, result in cells:
        row = frame.filter((pl.col("seed") == key.seed) & (pl.col("bits") == bits[key.method]))
        assert row.height == 1
        r = row.row(0, named=True)
        assert r["worst_acc"] == pytest.approx(result["metrics"]["worst_acc"], abs=1e-12)
        assert r["avg_acc"] == pytest.approx(result["metrics"]["avg_acc"], abs=1e-12)
        assert r["group_acc"] == pytest.approx(result["group_acc"], abs=1e-12, nan_ok=True)
        if key.method == "fp32":
            assert r["logit_rel_err"] == r["flips"] == r["lost"] == r["gained"] == 0.0
            continue
        ref = next(res for k, res in cells if k.method == "fp32" and k.seed == key.seed)
        # overall accuracy (sample-weighted) moves by exactly what flipped to right minus to wrong
        change = result["overall_acc"] - ref["overall_acc"]
        assert r["gained"] - r["lost"] == pytest.approx(change, abs=1e-12)
        assert r["lost"] + r["gained"] <= r["flips"] + 1e-12


def _float64_uniform(w: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor:
    """METHOD.md section 2 by hand, in float64: s = max|w| / (2^(b-1) - 1), round, clamp."""
    w = w.double()
    q_max = 2 ** (bits - 1) - 1
    m = w.abs().flatten(1).amax(1) if per_channel else w.abs().max().reshape(1)
    s = (m / q_max).clamp_min(1e-8).reshape(-1, *([1] * (w.dim() - 1)))
    return torch.clamp(torch.round(w / s), -q_max, q_max) * s


@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_logit_error_and_flips_match_a_float64_requantization(grid_and_probe, granularity) -> None:
    out, frame, _, _, data = grid_and_probe
    if granularity == "tensor":
        frame = ptq_probe(TINY.replace(seeds=(0,)), out, bits=(3,), granularity="tensor")
    from safetensors.torch import load_file

    state = load_file(str(out / "checkpoints" / "fitzpatrick17k__tiny_cnn__s0.safetensors"))
    model = fresh_model(TINY, "tiny_cnn", data, pretrained=False).double().eval()
    model.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in state.items()})
    xs, zs = [], []
    with torch.no_grad():
        for x, _, _ in data.loaders.test:
            xs.append(x.double())
            zs.append(model(xs[-1]))
        z_ref = torch.cat(zs)
        for mod in model.modules():
            if isinstance(mod, torch.nn.Conv2d | torch.nn.Linear):
                mod.weight.copy_(_float64_uniform(mod.weight, 3, granularity == "channel"))
        z = torch.cat([model(x) for x in xs])
    rel = ((z - z_ref).norm(dim=1) / z_ref.norm(dim=1)).median().item()
    flips = (z.argmax(1) != z_ref.argmax(1)).double().mean().item()
    y = torch.cat([yb for _, yb, _ in data.loaders.test])
    lost = ((z_ref.argmax(1) == y) & (z.argmax(1) != y)).double().mean().item()
    r = frame.filter((pl.col("seed") == 0) & (pl.col("bits") == 3)).row(0, named=True)
    assert rel > 1e-3  # 3 bits do change the logits: the comparison below is not 0 == 0
    assert r["logit_rel_err"] == pytest.approx(rel, rel=1e-4)
    n_test = z.shape[0]
    assert abs(r["flips"] - flips) <= 1 / n_test + 1e-12  # float32 vs float64: a near-tie at most
    assert abs(r["lost"] - lost) <= 1 / n_test + 1e-12


def test_summary_pairs_by_seed_against_hand_computed_values() -> None:
    rows = []
    for seed, (ref_w, u4_w) in enumerate([(0.80, 0.70), (0.70, 0.66)]):
        for bits, w in ((32, ref_w), (4, u4_w)):
            rows.append({"dataset": "d", "model": "m", "seed": seed, "bits": bits,
                         "avg_acc": w + 0.1, "worst_acc": w, "worst_group": f"g{seed}",
                         "logit_rel_err": 0.0 if bits == 32 else 0.1 * (seed + 1),
                         "flips": 0.0 if bits == 32 else 0.05,
                         "lost": 0.0 if bits == 32 else 0.04 - 0.02 * seed,
                         "gained": 0.0 if bits == 32 else 0.01})  # fmt: skip
    s = probe_summary(pl.DataFrame(rows))
    assert s["bits"].to_list() == [32, 4]
    u4 = s.row(1, named=True)
    assert u4["n_seeds"] == 2
    assert u4["worst_acc"] == pytest.approx(68.0)
    assert u4["d_worst_acc"] == pytest.approx(-7.0)  # mean of -10 and -4
    assert u4["d_worst_acc_std"] == pytest.approx(math.sqrt(18.0))  # sample std of -10, -4
    assert u4["logit_rel_err"] == pytest.approx(0.15)
    assert u4["flips"] == pytest.approx(5.0)
    assert u4["lost"] == pytest.approx(3.0) and u4["lost_std"] == pytest.approx(math.sqrt(2.0))
    assert u4["gained"] == pytest.approx(1.0)
    assert u4["worst_groups"] == ["g0", "g1"]
    md = probe_markdown(s)
    assert "| d | m | U4 | 78.00 ± 2.83 | 68.00 ± 2.83 | -7.00 ± 4.24 |" in md
    assert "| 0.150 ± 0.071 | 5.0 ± 0.0 | 3.0 ± 1.4 | 1.0 ± 0.0 | g0, g1 |" in md
    assert "| d | m | FP32 | 85.00 ± 7.07 | 75.00 ± 7.07 | - | - | - | - | - | - | g0, g1 |" in md


def test_cli_writes_its_files_and_rejects_bad_input(
    grid_and_probe, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = grid_and_probe[0]
    args = ["--out", str(out), "--models", "tiny_cnn", "--seeds", "0", "--image-size", "16",
            "--n-images", "120", "--batch-size", "32", "--fp32-epochs", "1", "--no-progress",
            "--threads", "1"]  # fmt: skip
    assert probe_main([*args, "--bits", "5"]) == 0
    printed = capsys.readouterr().out
    assert "| fitzpatrick17k | tiny_cnn | U5 |" in printed
    assert (out / "ptq_probe.md").read_text() in printed
    csv = pl.read_csv(out / "ptq_probe.csv")
    assert csv["bits"].to_list() == [32, 5]
    assert len(csv["group_acc"][0].split(";")) == len(csv["group_names"][0].split(";")) == 6
    for bad, needle in ((["--bits", "1"], "--bits"), (["--bits", "17"], "--bits"),
                        (["--granularity", "param"], "--granularity"),
                        (["--modles", "x"], "unrecognized")):  # fmt: skip
        with pytest.raises(SystemExit):
            probe_main([*args, *bad])
        assert needle in capsys.readouterr().err
    with pytest.raises(ValueError, match="bits must be"):
        ptq_probe(TINY, tmp_path, bits=(17,))
    with pytest.raises(ValueError, match="granularity must be one of channel, tensor"):
        ptq_probe(TINY, tmp_path, granularity="param")
    assert not np.any([p.name.startswith("ptq_probe") for p in tmp_path.iterdir()])


def test_probe_help_lists_only_the_flags_it_uses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        probe_main(["--help"])
    out = capsys.readouterr().out
    for used in ("--bits", "--models", "--seeds", "--fp32-epochs", "--lr-fp32", "--dataset"):
        assert used in out, used
    for unused in ("--epochs ", "--lambda-fair", "--lr-bits", "--palette-bits", "--budgets",
                   "--methods", "--calib-batches", "--baq-bits", "--bootstrap-resamples"):  # fmt: skip
        assert unused not in out, unused
    with pytest.raises(SystemExit):
        probe_main(["--lambda-fair", "0.1"])  # a fine-tune flag is refused, not ignored
    assert "unrecognized arguments: --lambda-fair" in capsys.readouterr().err
