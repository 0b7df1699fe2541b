"""A cell's shipped files (``--export onnx`` / ``onnx-int8``), their sizes and per-group audit.

Beside ``<out>/onnx/<cell id>.onnx`` (weight-only, :func:`~._cell_run.export_cell_onnx`) each
exported cell gets ``<cell id>.packed.safetensors`` and ``<cell id>.sizes.json`` (budget, reached
bits, packed and ONNX bytes). ``onnx-int8`` adds ``<cell id>.int8.onnx`` (int8 activations, ranges
from the cell's train split), ``<cell id>.audit.json``/``.md``: ``fq_fairmetrics.compare`` of
the int8 file against the FP32 reference and against the weight-only file, per group, on the test
split (``fq_bench.compress.run_audit``), and the two files' test predictions
(``<cell id>.onnx.predictions.csv``, ``<cell id>.int8.predictions.csv``; the frontier audits
several seeds at once from them, :mod:`._frontier_exports`). :func:`write_exports_table` gathers
the summaries into ``exports.md``/``.csv``. A file already there is kept (atomic writes), so a
re-run resumes.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ._cells import CellKey, atomic_write_bytes
from ._config import GridConfig

if TYPE_CHECKING:
    from ._data import DataBundle

logger = logging.getLogger("fq_bench.grid")

#: ``--export`` values.
EXPORTS: tuple[str, ...] = ("onnx", "onnx-int8")

#: The grid's audits: non-inferiority margin (accuracy points) and level of every interval.
AUDIT_MARGIN, AUDIT_CONFIDENCE = 1.0, 0.95


def predictions_path(folder: Path, cell: str, which: str) -> Path:
    """Where an exported cell's test predictions of ``which`` (``"onnx"``: the weight-only
    file; ``"int8"``: the integer-activation file) are kept: ``fq_fairmetrics.Predictions``
    CSV."""
    if which not in ("onnx", "int8"):
        raise ValueError(f"which={which!r} is invalid; allowed: 'onnx', 'int8'")
    return folder / f"{cell}.{which}.predictions.csv"


def read_summaries(root: Path) -> dict[str, dict[str, Any]]:
    """Cell id -> the sizes summary of every exported cell under ``root/onnx``
    (``<cell id>.sizes.json``, see :func:`export_cell_files`); empty without exports."""
    folder = root / "onnx"
    files = sorted(folder.glob("*.sizes.json")) if folder.is_dir() else []
    out: dict[str, dict[str, Any]] = {}
    for f in files:
        s = json.loads(f.read_text())
        out[str(s["cell"])] = s
    return out


def _predict(model: Any, data: DataBundle) -> Any:
    from fq_fairmetrics.torch import predict
    from torch.nn.utils import parametrize

    names = {"class_names": data.loaders.class_names, "group_names": data.loaders.group_names}
    with parametrize.cached():
        return predict(model, data.loaders.test, **names)


def _calibration(data: DataBundle, config: GridConfig) -> list[Any]:
    """Up to ``calib_batches`` batches of the train loader (as the cells train on it, augmented;
    every cell reseeds it, so this changes no other cell)."""
    return list(itertools.islice(data.loaders.train, config.calib_batches))


def export_cell_files(
    model: torch.nn.Module,
    fp32: torch.nn.Module,
    key: CellKey,
    config: GridConfig,
    data: DataBundle,
    folder: Path,
    *,
    int8: bool,
) -> dict[str, Any] | None:
    """Write the cell's files into ``folder`` (see the module docstring); returns the sizes
    summary (bytes; ``audit``: the int8 audit's rows, with ``int8``), ``None`` where the
    exporter refused the model (logged, the cell still counts).

    ``model``: the quantized cell model; ``fp32``: its FP32 reference (same architecture).
    """
    from fq_quant import ScopeLayout, container_avg_bits, current_assignment, export_packed

    from ._cell_run import export_cell_onnx

    onnx = export_cell_onnx(model, key, config, folder)
    if onnx is None:
        return None
    sizes_path = folder / f"{key.id}.sizes.json"
    if sizes_path.exists():
        return dict(json.loads(sizes_path.read_text()))
    packed = folder / f"{key.id}.packed.safetensors"
    export_packed(model.cpu(), packed)
    a = current_assignment(model)
    layout = ScopeLayout.from_model(model, a.granularity)
    summary: dict[str, Any] = {
        "cell": key.id,
        "method": key.method,
        "budget": key.budget_bits,
        "avg_bits": float(a.avg_bits(layout)),
        "container_bits": float(container_avg_bits(a, layout)),
        "packed_bytes": packed.stat().st_size,
        "onnx_bytes": onnx.stat().st_size,
    }
    if int8:
        summary.update(_int8_audit(model, fp32, key, config, data, folder, packed, onnx))
    atomic_write_bytes(sizes_path, json.dumps(summary, indent=1).encode())
    return summary


def _int8_audit(
    model: torch.nn.Module,
    fp32: torch.nn.Module,
    key: CellKey,
    config: GridConfig,
    data: DataBundle,
    folder: Path,
    packed: Path,
    onnx: Path,
) -> dict[str, Any]:
    from fq_quant import export_onnx, ort_session

    from fq_bench.compress import run_audit

    path = folder / f"{key.id}.int8.onnx"
    x = torch.zeros(1, 3, config.image_size, config.image_size)
    export_onnx(
        model.cpu(),
        x,
        path,
        activations="int8",
        calibration=_calibration(data, config),
        packed=packed,
    )
    tables = {
        "fp32": _predict(fp32.cpu().eval(), data),
        "onnx": _predict(ort_session(onnx, threads=torch.get_num_threads()), data),
        "int8": _predict(ort_session(path, exact=False, threads=torch.get_num_threads()), data),
    }
    for which in ("onnx", "int8"):
        tables[which].save(predictions_path(folder, key.id, which))
    audit = run_audit(
        tables,
        margin=AUDIT_MARGIN,
        confidence=AUDIT_CONFIDENCE,
        class_names=[str(c) for c in data.loaders.class_names],
        group_names=[str(g) for g in data.loaders.group_names],
    )
    atomic_write_bytes(
        folder / f"{key.id}.audit.json", json.dumps(audit.to_json(), indent=1).encode()
    )
    atomic_write_bytes(folder / f"{key.id}.audit.md", audit.to_markdown().encode())
    return {
        "int8_bytes": path.stat().st_size,
        "audit": {k: audit.rows(k) for k in ("int8", "int8_vs_onnx")},
    }


def write_exports_table(root: Path) -> list[str]:
    """``exports.md``/``.csv`` from ``root/onnx/*.sizes.json``: per exported cell its budget,
    reached bits, packed / ONNX / int8 sizes and (``onnx-int8``) the worst-group and mean
    accuracy of FP32, the weight-only file and the int8 file, with the int8 file's change
    against each and its 95% interval. Nothing is written without exported cells."""
    import polars as pl

    summaries = read_summaries(root)
    if not summaries:
        return []
    rows = []
    for s in summaries.values():
        row: dict[str, Any] = {
            "cell": s["cell"],
            "method": s["method"],
            "budget": s["budget"],
            "avg_bits": s["avg_bits"],
            "container_bits": s["container_bits"],
            "packed_MiB": s["packed_bytes"] / 2**20,
            "onnx_MiB": s["onnx_bytes"] / 2**20,
            "int8_MiB": s["int8_bytes"] / 2**20 if "int8_bytes" in s else None,
        }
        for key, tag in (("int8", "vs_fp32"), ("int8_vs_onnx", "vs_weight_only")):
            for r in s.get("audit", {}).get(key, []):
                if r["kind"] in ("worst", "average"):
                    k = r["kind"]
                    ref = "fp32" if tag == "vs_fp32" else "weight_only"
                    row[f"{k}_{ref}_acc"] = r["reference_acc"]
                    row[f"{k}_int8_acc"] = r["candidate_acc"]
                    row[f"{k}_int8_{tag}"] = r["change"]
                    row[f"{k}_int8_{tag}_ci"] = f"[{r['low']:+.1f}, {r['high']:+.1f}]"
                    if k == "worst":
                        row[f"worst_group_{tag}"] = r["group"]
        rows.append(row)
    frame = pl.DataFrame(rows).sort(["budget", "method", "cell"], nulls_last=True)
    atomic_write_bytes(root / "exports.csv", frame.write_csv(float_precision=6).encode())
    lines = [
        "# Exported cells: budget, sizes and (onnx-int8) the integer-activation file per group",
        "",
        "Sizes in MiB; accuracies in %; changes in points, paired on the test split with 95% "
        "intervals (fq_fairmetrics.compare); worst = the worst group of the reference.",
        "",
        "| cell | budget | reached bits | container bits | packed | onnx | int8 onnx "
        "| worst FP32 / weight-only / int8 | int8 - FP32 (worst) | int8 - weight-only (worst) "
        "| int8 - FP32 (mean of groups) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- |",
    ]

    def num(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for r in frame.to_dicts():
        has = r.get("worst_int8_vs_fp32") is not None
        worst = (
            f"{r['worst_fp32_acc']:.1f} / {r['worst_weight_only_acc']:.1f} / "
            f"{r['worst_int8_acc']:.1f}"
            if has
            else "-"
        )

        def ch(tag: str, k: str = "worst", r: dict[str, Any] = r) -> str:
            v = r.get(f"{k}_int8_{tag}")
            return "-" if v is None else f"{v:+.1f} {r[f'{k}_int8_{tag}_ci']}"

        lines.append(
            f"| {r['cell']} | {num(r['budget'], 'g')} | {r['avg_bits']:.2f} "
            f"| {r['container_bits']:.2f} | {r['packed_MiB']:.3f} | {r['onnx_MiB']:.3f} "
            f"| {num(r['int8_MiB'], '.3f')} | {worst} | {ch('vs_fp32')} "
            f"| {ch('vs_weight_only')} | {ch('vs_fp32', 'average')} |"
        )
    atomic_write_bytes(root / "exports.md", ("\n".join(lines) + "\n").encode())
    return ["exports.md", "exports.csv"]
