"""The frontier with shipped files (issue 27, sections 3 and 4): ``--export onnx-int8`` on the
default grid's frontier methods, shrunk to ``tiny_cnn`` on 120 semi-synthetic images at 16 px,
two seeds, one budget. Every added figure is recounted here from the files on disk (the ONNX files' sizes,
the stored per-image predictions) with numpy, or read from each cell's own ``audit.json``.
"""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from fq_bench.grid import DEFAULT, SMOKE, CellStore, build_report, grid_cells, run_grid
from fq_bench.grid._frames import cells_frame
from fq_bench.grid._frontier import FRONTIER_COLUMNS
from fq_bench.grid._frontier_exports import INT8_COLUMNS, SIZE_COLUMNS, frontier_exports
from fq_bench.grid._names import UNIFORM_BITS

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (see conftest)

#: The default grid's frontier methods and a uniform row, tiny (the default's other Table 1 rows
#: export the same way; left out to keep the run short).
TINY_DEFAULT = SMOKE.replace(
    methods=("fp32", "u4"),
    frontier_methods=DEFAULT.frontier_methods,
    budgets=(3.0,),
    seeds=(0, 1),
    progress=False,
    bootstrap_resamples=0,
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exported")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FQ_CACHE_DIR", str(tmp_path_factory.mktemp("cache_exported")))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # too few test images per group for a 1-point margin
            summary = run_grid(TINY_DEFAULT, out, export="onnx-int8")
        assert len(summary.computed) == len(grid_cells(TINY_DEFAULT))
        build_report(out, plots=True)
    return out


def _frontier(root: Path) -> pl.DataFrame:
    return pl.read_csv(root / "frontier.csv", infer_schema_length=None)


def _predictions(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {
        k: np.array([r[k] for r in rows]) for k in ("sample_id", "label", "group", "prediction")
    }


def _group_accs(p: dict[str, np.ndarray]) -> dict[str, float]:
    right = p["label"] == p["prediction"]
    return {g: float(right[p["group"] == g].mean()) for g in np.unique(p["group"])}


def _cell_id(r: dict, seed: int) -> str:
    parts = [r["dataset"], r["model"], r["method"], f"s{seed}"]
    if r["method"] not in UNIFORM_BITS:
        parts.append(f"b{r['target_bits']:g}")
    return "__".join(parts)


def test_every_quantized_cell_is_exported_audited_and_on_the_frontier(exported) -> None:
    onnx = exported / "onnx"
    quantized = [k for k, _ in CellStore(exported).all() if k.method != "fp32"]
    assert len(quantized) == 2 * (len(TINY_DEFAULT.methods) - 1 + len(DEFAULT.frontier_methods))
    for k in quantized:
        for suffix in (".onnx", ".int8.onnx", ".audit.json", ".onnx.predictions.csv",
                       ".int8.predictions.csv"):  # fmt: skip
            assert (onnx / f"{k.id}{suffix}").is_file(), (k.id, suffix)
    fr = _frontier(exported)
    assert fr.columns == [*FRONTIER_COLUMNS, *SIZE_COLUMNS, *INT8_COLUMNS]
    shipped = fr.filter(pl.col("method") != "fp32")
    uniform = [m for m in TINY_DEFAULT.methods if m in UNIFORM_BITS]
    assert shipped.height == len(uniform) + len(DEFAULT.frontier_methods)
    assert shipped["exported_seeds"].to_list() == [2] * shipped.height
    assert shipped["int8_seeds"].to_list() == [2] * shipped.height
    assert fr.filter(pl.col("method") == "fp32")["exported_seeds"].to_list() == [None]
    assert (exported / "frontier.png").is_file()


def test_sizes_are_the_files_on_disk_beside_the_budget(exported) -> None:
    fr = _frontier(exported).filter(pl.col("method") != "fp32")
    onnx = exported / "onnx"
    md = (exported / "frontier.md").read_text()
    for r in fr.iter_rows(named=True):
        ids = [_cell_id(r, s) for s in (0, 1)]
        for col, suffix in (("packed_bytes", ".packed.safetensors"), ("onnx_bytes", ".onnx"),
                            ("int8_bytes", ".int8.onnx")):  # fmt: skip
            assert r[col] == pytest.approx(np.mean([(onnx / f"{i}{suffix}").stat().st_size
                                                    for i in ids]))  # fmt: skip
        # frontier.md: budget, reached bits, packed, ONNX and int8 ONNX sizes on one line
        budget = f"{r['target_bits']:g}" + (" (uniform)" if r["method"] in UNIFORM_BITS else "")
        sizes = " | ".join(f"{r[c] / 2**20:.3f}" for c in ("packed_bytes", "onnx_bytes"))
        line = f"| {budget} | {r['method_label']} | {r['avg_bits']:.2f} | {sizes} | "
        line += f"{r['int8_bytes'] / 2**20:.3f} |"
        assert line in md, line


def test_int8_point_is_recounted_from_the_stored_predictions(exported) -> None:
    """WorstAcc / AvgAcc of both files: per seed from the prediction files, mean over seeds;
    the paired change on the weight-only file's worst group (lowest seed-mean accuracy) and on
    the mean of groups, mean over seeds; the verdict follows its interval (several seeds: no
    exact test, the interval alone decides)."""
    fr = _frontier(exported).filter(pl.col("method") != "fp32")
    onnx = exported / "onnx"
    for r in fr.iter_rows(named=True):
        ids = [_cell_id(r, s) for s in (0, 1)]
        wo = [_group_accs(_predictions(onnx / f"{i}.onnx.predictions.csv")) for i in ids]
        i8 = [_group_accs(_predictions(onnx / f"{i}.int8.predictions.csv")) for i in ids]
        groups = sorted(wo[0])
        assert r["wo_worst_acc"] == pytest.approx(np.mean([min(a.values()) for a in wo]))
        assert r["int8_worst_acc"] == pytest.approx(np.mean([min(a.values()) for a in i8]))
        assert r["wo_avg_acc"] == pytest.approx(np.mean([np.mean(list(a.values())) for a in wo]))
        assert r["int8_avg_acc"] == pytest.approx(np.mean([np.mean(list(a.values())) for a in i8]))
        mean_wo = {g: np.mean([a[g] for a in wo]) for g in groups}
        g = str(r["d_worst_int8_vs_wo_group"])
        assert mean_wo[g] == min(mean_wo.values())
        assert r["d_worst_int8_vs_wo"] == pytest.approx(
            np.mean([b[g] - a[g] for a, b in zip(wo, i8, strict=True)])
        )
        d_avg = np.mean(
            [np.mean([b[h] - a[h] for h in groups]) for a, b in zip(wo, i8, strict=True)]
        )
        assert r["d_avg_int8_vs_wo"] == pytest.approx(d_avg)
        for tag in ("d_worst_int8_vs_wo", "d_avg_int8_vs_wo"):
            low, high = r[f"{tag}_low"], r[f"{tag}_high"]
            assert low <= r[tag] + 1e-12 and r[tag] <= high + 1e-12
            rule = "better" if low > 0 else "worse" if high < 0 else "no difference shown"
            assert r[f"{tag}_verdict"] == rule


def test_one_seed_reads_the_cells_own_audit(exported) -> None:
    cells = cells_frame(CellStore(exported).all()).filter(pl.col("seed") == 0)
    ex = frontier_exports(cells, exported)
    assert ex is not None and ex["int8_seeds"].to_list() == [1] * ex.height
    for r in ex.iter_rows(named=True):
        audit = json.loads((exported / "onnx" / f"{_cell_id(r, 0)}.audit.json").read_text())
        rows = audit["comparisons"]["int8_vs_onnx"]["rows"]
        for tag, kind in (("d_worst_int8_vs_wo", "worst"), ("d_avg_int8_vs_wo", "average")):
            (a,) = [x for x in rows if x["kind"] == kind]
            assert r[tag] == pytest.approx(a["change"] / 100)
            assert r[f"{tag}_low"] == pytest.approx(a["low"] / 100)
            assert r[f"{tag}_high"] == pytest.approx(a["high"] / 100)
            assert r[f"{tag}_verdict"] == a["verdict_change"]


def test_without_exports_the_frontier_files_are_those_of_a_plain_run(exported, tmp_path) -> None:
    """The same cells without ``onnx/``: frontier.csv holds exactly the frontier's columns, each
    line the exported run's first columns; frontier.md is the exported run's without the shipped
    files' table; with ``onnx`` exports only (no audits) the int8 columns are absent."""
    plain = tmp_path / "plain"
    shutil.copytree(exported, plain, ignore=shutil.ignore_patterns("onnx", "*.png"))
    build_report(plain, plots=False)
    with open(exported / "frontier.csv", newline="") as f:
        full = list(csv.reader(f))
    with open(plain / "frontier.csv", newline="") as f:
        bare = list(csv.reader(f))
    assert bare[0] == list(FRONTIER_COLUMNS)
    assert [row[: len(FRONTIER_COLUMNS)] for row in full] == bare
    md_full, md_bare = ((p / "frontier.md").read_text() for p in (exported, plain))
    assert "Shipped files" not in md_bare
    start = md_full.index("\nShipped files")
    end = md_full.index("\n\n|", md_full.index("| Seeds |", start)) + 1  # the effects table
    assert md_full[:start] + md_full[end:] == md_bare
    for name in ("frontier_seeds.csv", "frontier_effects.csv"):
        assert (plain / name).read_bytes() == (exported / name).read_bytes()
    # weight-only exports: sizes beside the budget, no int8 columns
    only = tmp_path / "only_onnx"
    shutil.copytree(exported, only, ignore=shutil.ignore_patterns("*.png"))
    for f in (only / "onnx").glob("*.sizes.json"):
        s = json.loads(f.read_text())
        f.write_text(json.dumps({k: v for k, v in s.items() if k not in ("audit", "int8_bytes")}))
    build_report(only, plots=False)
    assert _frontier(only).columns == [*FRONTIER_COLUMNS, *SIZE_COLUMNS]
    assert "int8 ONNX" not in (only / "frontier.md").read_text()
