"""The shipped files on the frontier (``--export``): sizes, and the integer-activation point.

With exported cells under ``<root>/onnx`` (:mod:`._exports`), each frontier row (dataset, model,
method, budget) gains the means over its exported seeds of the packed file's, the weight-only ONNX
file's and (``onnx-int8``) the integer-activation file's sizes, and, with ``onnx-int8``, the int8
file's WorstAcc / AvgAcc beside the weight-only file's, with the paired change int8 - weight-only
and its verdict. Every change, interval and verdict is ``fq_fairmetrics.compare``'s: with one seed
the cell's own audit rows (``<cell id>.sizes.json``, as ``<cell id>.audit.json`` holds them); with
several, ``compare`` on the seeds' test predictions stacked ``[S, N]`` (its multi-seed form, the
same call the audit makes for one). A run whose seeds' predictions were not kept (exported before
they were) lists the per-seed verdicts and no interval. Without exported cells nothing here runs
and the frontier's files are those of a run without ``--export``.

WorstAcc per seed: the lowest group accuracy among the audit's group rows (the frontier's
definition); ``d_worst_int8_vs_wo``: the change on the weight-only file's worst group (the
audit's ``worst`` row), in the group ``d_worst_int8_vs_wo_group``; AvgAcc: the unweighted mean of
group accuracies (the audit's ``average`` row). Fractions in the frame and CSV, points in Markdown.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ._cells import CellKey
from ._exports import AUDIT_CONFIDENCE, AUDIT_MARGIN, predictions_path, read_summaries
from ._frontier import budget_text, format_interval, format_points, frontier_cells, target_bits_of

#: Columns added to frontier.csv when the run has exported cells.
SIZE_COLUMNS: tuple[str, ...] = ("exported_seeds", "packed_bytes", "onnx_bytes")
#: Columns added besides when some exported cell has an integer-activation file.
INT8_COLUMNS: tuple[str, ...] = (
    "int8_bytes", "int8_seeds", "wo_worst_acc", "int8_worst_acc", "wo_avg_acc", "int8_avg_acc",
    "d_worst_int8_vs_wo", "d_worst_int8_vs_wo_low", "d_worst_int8_vs_wo_high",
    "d_worst_int8_vs_wo_verdict", "d_worst_int8_vs_wo_group", "d_avg_int8_vs_wo",
    "d_avg_int8_vs_wo_low", "d_avg_int8_vs_wo_high", "d_avg_int8_vs_wo_verdict",
)  # fmt: skip
_TEXT = ("d_worst_int8_vs_wo_verdict", "d_worst_int8_vs_wo_group", "d_avg_int8_vs_wo_verdict")
_KEYS = ("dataset", "model", "method", "target_bits")


def _row(rows: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(r for r in rows if r["kind"] == kind)


def _change(row: dict[str, Any] | None, tag: str) -> dict[str, Any]:
    """A ``compare`` row's change (points -> fraction), interval and verdict under ``tag``."""
    if row is None:
        return {tag: None, f"{tag}_low": None, f"{tag}_high": None, f"{tag}_verdict": None}
    return {
        tag: row["change"] / 100,
        f"{tag}_low": None if row["low"] is None else row["low"] / 100,
        f"{tag}_high": None if row["high"] is None else row["high"] / 100,
        f"{tag}_verdict": str(row["verdict_change"]),
    }


def seed_comparison(folder: Path, cells: list[str]) -> list[dict[str, Any]] | None:
    """``fq_fairmetrics.compare`` of the integer-activation files against the weight-only files of
    ``cells`` (ids of one frontier row's seeds, each with its stored predictions in ``folder``),
    paired per seed and per test image (``[S, N]``): its rows as dicts (accuracies and changes in
    points). ``None`` when some cell's predictions were not kept; ``ValueError`` when the seeds'
    predictions are not of the same test images in the same order."""
    from fq_fairmetrics import Predictions, TooFewSamplesWarning, compare

    paths = [
        (predictions_path(folder, c, "onnx"), predictions_path(folder, c, "int8")) for c in cells
    ]
    if not all(a.is_file() and b.is_file() for a, b in paths):
        return None
    tables = [(Predictions.load(a), Predictions.load(b)) for a, b in paths]

    def text(x: np.ndarray) -> np.ndarray:
        return np.asarray(x).astype(str)

    first = tables[0][0]
    for cell, (wo, i8) in zip(cells, tables, strict=True):
        for p in (wo, i8):
            if p.n_samples != first.n_samples or not (
                (text(p.sample_id) == text(first.sample_id)).all()
                and (text(p.label) == text(first.label)).all()
            ):
                raise ValueError(
                    f"exported predictions of {cell} are not of {cells[0]}'s test images in order"
                )
    with warnings.catch_warnings():
        # too few test images per group for the margin: each cell's audit.md already says so
        warnings.simplefilter("ignore", TooFewSamplesWarning)
        comparison = compare(
            text(first.label),
            text(first.group),
            np.stack([text(wo.prediction) for wo, _ in tables]),
            np.stack([text(i8.prediction) for _, i8 in tables]),
            margin=AUDIT_MARGIN,
            confidence=AUDIT_CONFIDENCE,
            reference_name="weight-only",
            candidate_name="int8",
        )
    return [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in d.items()}
        | {"group": str(d["group"])}
        for d in comparison.to_dicts()
    ]


def _int8_point(folder: Path, audited: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The int8 columns of one frontier row from its audited seeds (``(cell id, summary)``)."""
    per_seed = [s["audit"]["int8_vs_onnx"] for _, s in audited]
    groups = [[r for r in rows if r["kind"] == "group"] for rows in per_seed]
    out: dict[str, Any] = {
        "int8_bytes": float(np.mean([s["int8_bytes"] for _, s in audited])),
        "int8_seeds": len(audited),
        "wo_worst_acc": float(np.mean([min(r["reference_acc"] for r in g) for g in groups])) / 100,
        "int8_worst_acc": float(np.mean([min(r["candidate_acc"] for r in g) for g in groups]))
        / 100,
        "wo_avg_acc": float(np.mean([_row(r, "average")["reference_acc"] for r in per_seed])) / 100,
        "int8_avg_acc": float(np.mean([_row(r, "average")["candidate_acc"] for r in per_seed]))
        / 100,
    }
    rows = per_seed[0] if len(audited) == 1 else seed_comparison(folder, [c for c, _ in audited])
    if rows is not None:
        worst = _row(rows, "worst")
        out |= _change(worst, "d_worst_int8_vs_wo") | _change(
            _row(rows, "average"), "d_avg_int8_vs_wo"
        )
        return out | {"d_worst_int8_vs_wo_group": str(worst["group"])}
    # predictions not kept: each seed's own verdict, no interval over seeds
    for tag, kind in (("d_worst_int8_vs_wo", "worst"), ("d_avg_int8_vs_wo", "average")):
        seen = [str(_row(r, kind)["verdict_change"]) for r in per_seed]
        counts = ", ".join(f"{v} {seen.count(v)}" for v in dict.fromkeys(seen))
        out |= _change(None, tag) | {
            tag: float(np.mean([_row(r, kind)["change"] for r in per_seed])) / 100,
            f"{tag}_verdict": f"per seed: {counts}",
        }
    return out | {"d_worst_int8_vs_wo_group": None}


def frontier_exports(cells: pl.DataFrame, root: Path) -> pl.DataFrame | None:
    """Per frontier row with exported cells: :data:`SIZE_COLUMNS` (and, where an int8 file was
    audited, :data:`INT8_COLUMNS`) keyed by ``dataset, model, method, target_bits``; ``None``
    when no cell of ``cells`` (the cell frame) was exported under ``root/onnx``. Sizes in
    bytes, accuracies as fractions (module docstring)."""
    summaries = read_summaries(Path(root))
    if not summaries:
        return None
    rows: list[dict[str, Any]] = []
    keys = ["dataset", "model", "method", "budget"]
    any_int8 = False
    for (ds, mo, me, bu), part in frontier_cells(cells).group_by(keys, maintain_order=True):
        ids = [
            CellKey(dataset=ds, model=mo, method=me, seed=int(s), budget=bu).id
            for s in sorted(part["seed"].to_list())
        ]
        got = [(i, summaries[i]) for i in ids if i in summaries]
        if not got:
            continue
        row: dict[str, Any] = {
            "dataset": ds, "model": mo, "method": me, "target_bits": target_bits_of(me, bu),
            "exported_seeds": len(got),
            "packed_bytes": float(np.mean([s["packed_bytes"] for _, s in got])),
            "onnx_bytes": float(np.mean([s["onnx_bytes"] for _, s in got])),
        }  # fmt: skip
        audited = [(i, s) for i, s in got if "audit" in s]
        if audited:
            any_int8 = True
            row |= _int8_point(Path(root) / "onnx", audited)
        rows.append(row)
    if not rows:
        return None
    cols = [*_KEYS, *SIZE_COLUMNS, *(INT8_COLUMNS if any_int8 else ())]
    schema: dict[str, Any] = {c: pl.Float64 for c in cols}
    schema |= {c: pl.String for c in ("dataset", "model", "method", *_TEXT) if c in cols}
    schema |= {c: pl.Int64 for c in ("exported_seeds", "int8_seeds") if c in cols}
    return pl.DataFrame([{c: r.get(c) for c in cols} for r in rows], schema=schema)


def with_exports(frontier: pl.DataFrame, exports: pl.DataFrame) -> pl.DataFrame:
    """``frontier`` (:func:`~._frontier.frontier_frame`) with the columns of ``exports``
    (:func:`frontier_exports`) appended, rows and their order unchanged (null where a row has no
    exported cell)."""
    out = (
        frontier.with_row_index("_row")
        .join(exports, on=list(_KEYS), how="left")
        .sort("_row")
        .drop("_row")
    )
    if out.height != frontier.height:
        raise ValueError("exports match more than one frontier row per key")
    return out


def exports_markdown(frontier: pl.DataFrame) -> str:
    """Markdown of the shipped files beside the frontier, one row per frontier row with exported
    cells: budget, reached bits, packed / ONNX / int8 ONNX sizes (MiB) and, with int8 files, the
    weight-only and int8 WorstAcc and AvgAcc (%) with the paired change int8 - weight-only
    (points, 95% interval, verdict; ``fq_fairmetrics.compare``)."""
    from ._names import DATASET_LABELS, MODEL_LABELS

    int8 = "int8_seeds" in frontier.columns
    header = ["Dataset", "Model", "Budget", "Method", "AvgBits", "Packed (MiB)", "ONNX (MiB)"]
    header += ["int8 ONNX (MiB)", "WorstAcc WO → int8", "ΔWorst int8 − WO", "Verdict",
               "AvgAcc WO → int8", "ΔAvg int8 − WO", "Verdict"] if int8 else []  # fmt: skip
    header += ["Seeds"]
    align = (
        ["---"] * 4 + ["---:"] * 3 + (["---:"] * 3 + ["---", "---:", "---:", "---"] if int8 else [])
    )
    lines = [
        "Shipped files (--export; sizes in MiB, mean over the exported seeds"
        + (
            "; WO = the weight-only ONNX file, int8 = integer activations; accuracies in %; "
            "Δ int8 − WO paired on the same test images, points, with its 95% interval and "
            "verdict from fq_fairmetrics.compare, ΔWorst on the weight-only file's worst group)"
            if int8
            else ")"
        ),
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join([*align, "---:"]) + " |",
    ]
    mib = 2**20
    for r in frontier.filter(pl.col("exported_seeds").is_not_null()).iter_rows(named=True):
        cells = [
            DATASET_LABELS.get(r["dataset"], r["dataset"]), MODEL_LABELS.get(r["model"], r["model"]),
            budget_text(r["target_bits"], r["method"]), r["method_label"], f"{r['avg_bits']:.2f}",
            f"{r['packed_bytes'] / mib:.3f}", f"{r['onnx_bytes'] / mib:.3f}",
        ]  # fmt: skip
        seeds = str(r["exported_seeds"])
        if int8 and r["int8_seeds"] is not None:
            cells += [f"{r['int8_bytes'] / mib:.3f}"]
            for m in ("worst", "avg"):
                tag = f"d_{m}_int8_vs_wo"
                cells += [
                    f"{format_points(r[f'wo_{m}_acc'])} → {format_points(r[f'int8_{m}_acc'])}",
                    f"{format_points(r[tag], True)} "
                    f"{format_interval(r[f'{tag}_low'], r[f'{tag}_high'], True)}",
                    str(r[f"{tag}_verdict"]),
                ]
            if r["int8_seeds"] != r["exported_seeds"]:
                seeds = f"{r['exported_seeds']} ({r['int8_seeds']} with int8)"
        elif int8:
            cells += ["-"] * 7
        lines.append("| " + " | ".join([*cells, seeds]) + " |")
    return "\n".join(lines) + "\n"
