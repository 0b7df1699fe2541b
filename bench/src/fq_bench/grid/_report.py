"""The report of a results folder, rebuilt from its cell files alone: tables, plots, provenance.

The parts: cell frames (:mod:`._frames`), Table 1's text (:mod:`._tables`), the ablations
(:mod:`._ablation`), the frontier (:mod:`._frontier`), the fairness objectives
(:mod:`._objectives`) and the plots (:mod:`._plots`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from ._ablation import (
    ablation_cells,
    ablation_frame,
    ablation_latex,
    ablation_markdown,
    reference_values,
    run_config,
)
from ._cells import CellKey, CellStore, atomic_write_bytes, read_cell_fingerprints, select_config
from ._frames import cells_frame, groups_frame, layer_bits_frame, summary_frame, table1_cells
from ._frontier import (
    best_lines,
    effects_frame,
    effects_markdown,
    frontier_frame,
    frontier_markdown,
    has_frontier,
    seeds_frame,
)
from ._frontier_exports import exports_markdown, frontier_exports, with_exports
from ._group_notes import group_notes
from ._names import DATASET_LABELS, DATASETS
from ._tables import observations, to_csv, to_latex, to_markdown


def provenance(
    cells_raw: Iterable[tuple[CellKey, dict[str, Any]]], config: dict[str, Any] | None
) -> tuple[str, ...]:
    """``Data:`` lines (per dataset, from the cells) and a ``Weights:`` line (from the config)."""
    data: dict[str, dict[str, Any]] = {}
    for key, res in cells_raw:
        data.setdefault(key.dataset, res.get("data", {}))
    lines = []
    for ds in sorted(data, key=lambda d: DATASETS.index(d) if d in DATASETS else 99):
        d, label = data[ds], DATASET_LABELS.get(ds, ds)
        size = f"{d.get('n_train', '?')} train / {d.get('n_test', '?')} test images"
        if d.get("semisynthetic", False):
            lines.append(
                f"Data: {label}: SEMI-SYNTHETIC (real metadata rows, generated pixels), {size}"
            )
        elif d.get("source") not in (None, "semisynthetic"):
            lines.append(f"Data: {label}: real images from {d['source']}, {size}")
        else:
            lines.append(f"Data: {label}: source not recorded in the cells")
    if config is None:
        lines.append("Weights: not recorded (no config.json next to cells/)")
    elif not config.get("pretrained"):
        lines.append("Weights: random initialization (pretrained=False), FP32 trained from scratch")
    elif config.get("weights_dir"):
        lines.append(
            f"Weights: ImageNet-pretrained, loaded from {config['weights_dir']}/<model>.safetensors"
        )
    else:
        lines.append(
            "Weights: ImageNet-pretrained, timm's default weights from the Hugging Face hub"
        )
    return tuple(lines)


@dataclass(frozen=True, kw_only=True)
class Report:
    """The rebuilt report: the frames and the text written to ``table.*`` and ``ablation.*``.

    ``group_notes``: per dataset, its empty and small test groups and those too small for a
    per-group margin (:func:`~._group_notes.group_notes`).
    ``summary``/``markdown``/``csv``/``latex`` hold Table 1's rows (variant ``""``; empty text
    when the run has none); ``ablation`` and ``ablation_*`` the swept FQ-BAQ rows (``None``/empty
    without sweeps). ``provenance``: the Data and Weights lines; ``tables``: the files written.
    """

    cells: pl.DataFrame
    summary: pl.DataFrame
    markdown: str
    csv: str
    latex: str
    semisynthetic: bool
    notes: tuple[str, ...]
    plots: tuple[Path, ...]
    ablation: pl.DataFrame | None = None
    ablation_markdown: str = ""
    ablation_csv: str = ""
    ablation_latex: str = ""
    provenance: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    frontier: pl.DataFrame | None = None
    frontier_markdown: str = ""
    effects: pl.DataFrame | None = None
    effects_markdown: str = ""
    frontier_summary: tuple[str, ...] = ()
    objectives: pl.DataFrame | None = None
    positive_control_markdown: str = ""
    ignored: tuple[CellKey, ...] = ()
    failed: tuple[tuple[CellKey, str], ...] = ()
    group_notes: tuple[str, ...] = ()

    def text(self) -> str:
        """What the CLI prints: the data caveat, provenance, the tables, and the observations."""
        lines: list[str] = list(self.warnings())
        if self.positive_control_markdown:  # its PRECONDITION line first (issue 24)
            lines += ["Positive control (positive_control.md)", "", self.positive_control_markdown]
        if self.semisynthetic:
            lines.append(
                "DATA IS SEMI-SYNTHETIC: real metadata rows (labels, groups) with generated "
                "pixels, not the paper's images; numbers are not comparable with the paper."
            )
        lines += list(self.provenance)
        lines += list(self.group_notes)
        if self.markdown:
            lines += [
                "",
                "Table 1 (mean ± std over seeds; accuracies and Gap in %)",
                "",
                self.markdown,
            ]
        if self.frontier_markdown:
            lines += [
                "",
                "Frontier (mean [95% t-interval] over seeds, %; ΔWorst vs blind: WorstAcc minus "
                "the group-blind control's at the same budget, paired by seed, in points, with "
                "its 95% t-interval over seeds; test images: the 95% interval of the same mean "
                "over resamples of the test set; resolved = both intervals exclude 0)",
                "",
                self.frontier_markdown,
            ]
        if self.effects_markdown:
            lines += [
                "FairQuant's two ingredients apart (2x2 design; paired by seed, points, "
                "95% t-interval over seeds and over test images)",
                "",
                self.effects_markdown,
            ]
        if self.frontier_summary:
            lines += ["Frontier summary:", *(f"- {line}" for line in self.frontier_summary), ""]
        if self.ablation_markdown:
            lines += [
                "",
                "Ablations (mean ± sample std [95% t-interval] over seeds; accuracies and Gap "
                "in %; (ref) = the run's own value of the swept field)",
                "",
                self.ablation_markdown,
            ]
        return "\n".join([*lines, *self.notes])

    def warnings(self) -> tuple[str, ...]:
        """Lines about cells left out of the tables: of another config, or failed."""
        out = []
        if self.ignored:
            out.append(
                f"{len(self.ignored)} cell(s) of another config or data ignored (kept on disk in "
                "cells/; the tables hold one config and one version of the data per dataset and "
                "model, the one config.json names)"
            )
        if self.failed:
            out.append(f"{len(self.failed)} cell(s) failed (details in failed/):")
            out += [f"  {key.id}: {error}" for key, error in self.failed]
        return tuple(out)


def build_report(root: str | Path, *, plots: bool = True) -> Report:
    """Rebuild the tables and plots of ``root`` from ``root/cells`` (plus ``config.json``, when
    present, for the Weights line and the ablations' reference values).

    The tables hold, per model, only the cells of the config ``config.json`` records for it
    (without one: the fingerprint most of the model's cells carry); cells of another config stay
    on disk and are counted in ``Report.ignored``, never averaged in. Failed cells are listed.

    Writes ``table.md``/``.csv``/``.tex`` when there are Table 1 cells and ``ablation.md``/
    ``.csv``/``.tex`` when there are ablation cells. With exported cells (``--export``) the
    frontier's files also show the shipped files' sizes and the integer-activation point beside
    the weight-only one (:mod:`._frontier_exports`); without, they are unchanged.
    """
    root = Path(root)
    store = CellStore(root)
    raw, ignored = select_config(store.entries(), read_cell_fingerprints(root))
    kept = {key for key, _ in raw}
    failed = tuple((k, e) for k, e in store.failures() if k not in kept)
    cells = cells_frame(raw)
    summary = summary_frame(cells)
    config = run_config(root)
    semi = bool(cells["semisynthetic"].any())
    prov = provenance(raw, config)
    notes = group_notes(raw)
    head = "".join(f"{line}  \n" for line in (*prov, *notes)) + "\n"
    written: list[str] = []
    t1 = table1_cells(summary)
    md = csv = tex = ""
    if not t1.is_empty():
        md, csv = to_markdown(t1), to_csv(t1)
        caption = "FairQuant grid" + (" on semi-synthetic data" if semi else "")
        tex = to_latex(t1, caption=caption)
        atomic_write_bytes(root / "table.md", (head + md).encode())
        atomic_write_bytes(root / "table.csv", csv.encode())
        atomic_write_bytes(root / "table.tex", tex.encode())
        written += ["table.md", "table.csv", "table.tex"]
    ab = None
    ab_md = ab_csv = ab_tex = ""
    if not ablation_cells(cells).is_empty():
        ab = ablation_frame(cells, reference_values(config))
        ab_md, ab_csv = ablation_markdown(ab), ab.write_csv(float_precision=6)
        caption = "FQ-BAQ ablations, mean, std and 95% t-interval over seeds" + (
            " (semi-synthetic data)" if semi else ""
        )
        ab_tex = ablation_latex(ab, caption=caption)
        atomic_write_bytes(root / "ablation.md", (head + ab_md).encode())
        atomic_write_bytes(root / "ablation.csv", ab_csv.encode())
        atomic_write_bytes(root / "ablation.tex", ab_tex.encode())
        written += ["ablation.md", "ablation.csv", "ablation.tex"]
    fr = eff = None
    fr_md = eff_md = ""
    fr_lines: tuple[str, ...] = ()
    if has_frontier(cells):
        fr, eff = frontier_frame(cells), effects_frame(cells)
        fr_md, eff_md = frontier_markdown(fr), effects_markdown(eff)
        exported = frontier_exports(cells, root)  # None without --export: files as before
        if exported is not None:
            fr = with_exports(fr, exported)
            fr_md += "\n" + exports_markdown(fr)
        fr_lines = tuple(best_lines(cells, fr))
        body = head + fr_md + "\n" + eff_md + "\n" + "".join(f"- {line}\n" for line in fr_lines)
        atomic_write_bytes(root / "frontier.md", body.encode())
        atomic_write_bytes(root / "frontier.csv", fr.write_csv(float_precision=6).encode())
        atomic_write_bytes(
            root / "frontier_seeds.csv", seeds_frame(cells).write_csv(float_precision=6).encode()
        )
        atomic_write_bytes(root / "frontier_effects.csv", eff.write_csv(float_precision=6).encode())
        written += ["frontier.md", "frontier.csv", "frontier_seeds.csv", "frontier_effects.csv"]
    from ._exports import write_exports_table

    written += write_exports_table(root)
    from ._objectives import write_objectives

    objectives, obj_files, obj_plots = write_objectives(root, cells, raw, head=head, plots=plots)
    written += obj_files
    from ._positive_control import write_positive_control

    names = [str(n) for n in raw[0][1].get("group_names", [])] if raw else []
    pc_md = write_positive_control(root, cells, config, names)
    written += ["positive_control.md"] if pc_md else []
    made: tuple[Path, ...] = ()
    if plots:
        from ._plots import make_plots

        made = tuple(
            make_plots(
                root,
                cells,
                groups=groups_frame(raw),
                layer_bits=layer_bits_frame(raw),
                ablation=ab,
                frontier=fr,
            )
        ) + tuple(obj_plots)
    return Report(
        cells=cells,
        summary=t1,
        markdown=md,
        csv=csv,
        latex=tex,
        semisynthetic=semi,
        notes=tuple(observations(cells)),
        plots=made,
        ablation=ab,
        ablation_markdown=ab_md,
        ablation_csv=ab_csv,
        ablation_latex=ab_tex,
        provenance=prov,
        tables=tuple(written),
        frontier=fr,
        frontier_markdown=fr_md,
        effects=eff,
        effects_markdown=eff_md,
        frontier_summary=fr_lines,
        objectives=objectives,
        positive_control_markdown=pc_md,
        ignored=tuple(ignored),
        failed=failed,
        group_notes=notes,
    )
