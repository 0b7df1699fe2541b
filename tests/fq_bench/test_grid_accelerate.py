"""The grid under ``accelerate launch`` with two CPU processes (gloo), end to end in a subprocess.

A small wrapper script (written to the test's temp dir) runs the real CLI (``fq_bench.grid.main``)
in each process and records, per process: accelerate's view (rank, world size), every file it
moved into place (all grid files are written through ``os.replace``), the batches each trainer
step saw, and the trained parameters of every ``fit``. The test then checks invariants that hold
only when the processes cooperate as the runner claims:

* rank 1 writes nothing, rank 0 writes every cell, checkpoint and calibration exactly once;
* every cell file is valid (checksum, fingerprint) and the table is built;
* every cell is evaluated on the FULL test split (its group counts equal the split's, counted
  independently from the semi-synthetic dataset);
* each batch is split over the processes (each step sees ``batch_size / 2`` images, the two
  processes see different images, and each runs as many steps as one process would);
* DDP keeps the trained parameters bit-identical on both processes, both processes quantize
  with the same bits (FQ-QAT's come from the main process's calibration), and the FP32
  checkpoint on disk holds exactly those parameters.

A second launch checks that splitting a batch over two processes changes nothing but float
rounding: ``BAQTrainer`` (learnable bits and the fairness loss, whose group gap is not a mean over
samples) on a BatchNorm-free model with a fixed loader ends with the same weights and bits as in
one process, for every fairness objective (``gap``, ``gap-up``, ``worst`` with a running
estimate, ``lse``, ``dro`` and its group weights).

Launched with ``--multi_gpu`` because ``accelerate launch --cpu --num_processes 2`` starts ONE
process (accelerate leaves multi-CPU launches to mpirun); on a machine without CUDA the runner
then joins the two torchrun processes over gloo.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from fq_bench.grid import CellStore, build_parser, grid_cells
from fq_bench.grid._cell_run import cell_fingerprint
from fq_bench.grid._cli import config_from_args
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
BATCH = 16
N_IMAGES = 120
ARGS = [
    "--models", "tiny_cnn", "--methods", "fp32", "u4", "fq-qat", "fq-baq", "--seeds", "0",
    "--image-size", "16", "--n-images", str(N_IMAGES), "--batch-size", str(BATCH),
    "--fp32-epochs", "1", "--epochs", "1", "--calib-batches", "2", "--no-progress",
    "--threads", "1", "--cpu", "--no-plots", "--budgets", "--frontier-methods",
    "--min-test-per-group", "0",
]  # fmt: skip

WRAPPER = textwrap.dedent(
    '''
    """Run the grid CLI and record what this process did (see test_grid_accelerate.py)."""
    import hashlib, json, os, sys

    import fq_baq._loop as loop
    import fq_baq._trainers as trainers
    from accelerate import PartialState
    from fq_bench.grid import main

    LOG, OUT = sys.argv[1], os.path.realpath(sys.argv[2])
    rec = {"replaced": [], "steps": [], "fits": []}

    def digest(t):
        return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()

    real_replace = os.replace
    def replace(src, dst, *a, **k):
        if os.path.realpath(dst).startswith(OUT):
            rec["replaced"].append(os.path.relpath(os.path.realpath(dst), OUT))
        return real_replace(src, dst, *a, **k)
    os.replace = replace

    real_step = loop.TrainingSession.step
    def step(self, batch, *args):
        x, y, g = batch
        rec["steps"].append([int(x.shape[0]), digest(x)])
        return real_step(self, batch, *args)
    loop.TrainingSession.step = step

    real_train = trainers.train
    def train(model, wrapping, config, loader, **kw):
        res = real_train(model, wrapping, config, loader, **kw)
        params = {n: digest(p) for n, p in res.model.named_parameters()}
        bits = {} if res.assignment is None else {
            n: digest(b) for n, b in res.assignment.bits.items()
        }
        rec["fits"].append({"kind": wrapping.kind, "params": params, "bits": bits})
        return res
    trainers.train = train

    try:
        rc = main(sys.argv[3:] + ["--out", sys.argv[2]])
    finally:
        state = PartialState()
        rec["rank"], rec["world"] = state.process_index, state.num_processes
        with open(f"{LOG}.rank{state.process_index}.json", "w") as f:
            json.dump(rec, f)
    sys.exit(rc)
    '''
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("acc")
    out, log = tmp / "out", tmp / "log"
    script = tmp / "wrapper.py"
    script.write_text(WRAPPER)
    env = dict(os.environ, FQ_CACHE_DIR=str(tmp / "cache"), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "bench" / "src"), *filter(None, [env.get("PYTHONPATH")])]
    )
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        str(script), str(log), str(out), *ARGS,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    ranks = [log.with_name(f"log.rank{r}.json") for r in (0, 1)]
    recs = [json.loads(p.read_text()) if p.is_file() else None for p in ranks]
    return proc, out, recs


def test_exit_code_and_two_processes(launched) -> None:
    proc, _, recs = launched
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert [r["rank"] for r in recs] == [0, 1]
    assert [r["world"] for r in recs] == [2, 2]
    # only the main process prints the table
    assert proc.stdout.count("| FitzP. | TinyCNN | FQ-BAQ |") == 1


def test_only_main_writes_each_file_once(launched) -> None:
    _, out, (r0, r1) = launched
    assert r1["replaced"] == []
    cells = sorted(f"cells/{p.name}" for p in (out / "cells").iterdir())
    assert len(cells) == 4
    expected = sorted(
        [*cells, "config.json", "checkpoints/fitzpatrick17k__tiny_cnn__s0.safetensors"]
        + ["calibration/fitzpatrick17k__tiny_cnn__s0__grape-type.safetensors"]
        + ["table.md", "table.csv", "table.tex"]
    )
    assert sorted(r0["replaced"]) == expected  # each exactly once


def test_cells_valid_and_table_built(launched) -> None:
    _, out, _ = launched
    parser = build_parser()
    config = config_from_args(parser.parse_args(ARGS), parser)
    store = CellStore(out)
    keys = grid_cells(config)
    assert len(keys) == 4
    for key in keys:
        assert store.read(key, fingerprint=cell_fingerprint(config, key.model)) is not None, key.id
    table = (out / "table.md").read_text()
    for label in ("FP32", "U4", "FQ-QAT", "FQ-BAQ"):
        assert f"| TinyCNN | {label} |" in table


def test_cells_evaluate_the_full_test_split(launched) -> None:
    from fq_data import load_semisynthetic

    _, out, _ = launched
    parser = build_parser()
    config = config_from_args(parser.parse_args(ARGS), parser)
    dd = load_semisynthetic(
        "fitzpatrick17k",
        n=N_IMAGES,
        image_size=16,
        seed=0,
        test_fraction=config.test_fraction,
        cache_dir=out.parent / "cache",
    )
    groups = np.asarray(dd["test"]["group"], dtype=np.int64)
    counts = np.bincount(groups, minlength=groups.max() + 1).tolist()
    for key in grid_cells(config):
        result = CellStore(out).read(key)
        assert result["group_n"] == counts, key.id
        assert sum(result["group_n"]) == len(dd["test"]) == result["data"]["n_test"]


def test_batches_split_over_processes(launched) -> None:
    _, out, (r0, r1) = launched
    n_train = json.loads(next((out / "cells").iterdir()).read_text())["result"]["data"]["n_train"]
    per_epoch = n_train // BATCH  # one process: drop_last batches of BATCH
    # FP32, FQ-QAT and FQ-BAQ train one epoch each
    assert len(r0["steps"]) == len(r1["steps"]) == 3 * per_epoch
    assert {s[0] for s in r0["steps"] + r1["steps"]} == {BATCH // 2}
    assert all(a[1] != b[1] for a, b in zip(r0["steps"], r1["steps"], strict=True))


def test_ddp_keeps_parameters_identical(launched) -> None:
    _, out, (r0, r1) = launched
    assert [f["kind"] for f in r0["fits"]] == [f["kind"] for f in r1["fits"]]
    assert len(r0["fits"]) == 3
    for f0, f1 in zip(r0["fits"], r1["fits"], strict=True):
        assert f0["params"] == f1["params"], f0["kind"]
        # FQ-QAT's bits come from the calibration: both processes must use the main's
        assert f0["bits"] == f1["bits"], f0["kind"]
    assert [bool(f["bits"]) for f in r0["fits"]] == [False, True, True]
    # the FP32 checkpoint holds those very parameters
    saved = load_file(out / "checkpoints" / "fitzpatrick17k__tiny_cnn__s0.safetensors")
    fp32 = next(f for f in r0["fits"] if f["kind"] == "fp32")["params"]
    assert {n: _digest(saved[n]) for n in fp32} == fp32


EXACT = textwrap.dedent(
    """
    import sys

    import torch
    from accelerate import PartialState
    from fq_baq import BAQConfig, BAQTrainer, _checkpoint
    from safetensors.torch import save_file
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    state = PartialState(cpu=True)
    for name, kw in OBJECTIVES:
        torch.manual_seed(0)
        x, y, g = torch.randn(128, 48), torch.randint(0, 3, (128,)), torch.randint(0, 3, (128,))
        model = nn.Sequential(nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 3))
        loader = DataLoader(TensorDataset(x, y, g), batch_size=16, shuffle=False)
        cfg = BAQConfig(lr=1e-2, epochs=2, lambda_fair=1.0, seed=0, cpu=True, progress=False,
                        fair_loss=name, **kw)
        res = BAQTrainer(model, cfg).fit(loader, checkpoint_dir=f"{sys.argv[1]}.{name}.ckpt")
        if state.is_main_process:
            sd = {k: v.detach().contiguous() for k, v in res.model.state_dict().items()}
            ckpt = _checkpoint.load(f"{sys.argv[1]}.{name}.ckpt")
            sd["fair_state.weights"] = ckpt["fair_state"]["weights"]  # DRO's group weights
            save_file(sd, f"{sys.argv[1]}.{name}")
    """
)
#: Every fairness objective (issue 19), with the options that give each its own code path.
OBJECTIVES = (
    ("gap", {}),
    ("gap-up", {}),
    ("worst", {"fair_ema": 0.5, "n_groups": 3}),
    ("lse", {"fair_tau": 0.3}),
    ("dro", {"dro_eta": 1.0}),
)
EXACT = f"OBJECTIVES = {OBJECTIVES!r}\n" + EXACT


def test_split_batches_train_like_one_process(tmp_path: Path) -> None:
    script = tmp_path / "exact.py"
    script.write_text(EXACT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
    ]  # fmt: skip
    for cmd in ([sys.executable, str(script), str(one)], [*launch, str(script), str(two)]):
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-5000:]
    for name, _ in OBJECTIVES:
        a, b = load_file(f"{one}.{name}"), load_file(f"{two}.{name}")
        assert sorted(a) == sorted(b)
        assert any(k.endswith(".bits") for k in a)
        # 16 steps; float32 rounding of the gradient reduction only (measured ~5e-8)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=f"{name}: {k}")
    # DRO's group weights moved off uniform (1/3): the comparison above is not of a constant
    assert float(load_file(f"{one}.dro")["fair_state.weights"].max()) > 0.34
    a = load_file(f"{one}.gap")
    # and the weights did move: the comparison is not between two untrained models
    torch.manual_seed(0)
    torch.randn(128, 48), torch.randint(0, 3, (128,)), torch.randint(0, 3, (128,))
    init = torch.nn.Linear(48, 32)
    moved = (a["0.parametrizations.weight.original"] - init.weight.detach()).abs().max()
    assert float(moved) > 1e-3
