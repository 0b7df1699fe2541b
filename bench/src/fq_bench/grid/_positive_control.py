"""The positive control (issue 24): does the FP32 model read the planted cue, and what do the 2x2
design and uniform low bits do to the groups that carry it?

Only for a run on a non-default ``variant`` (``--preset positive-control``):

- :func:`measure_precondition` (run before any cell, by :func:`fq_bench.grid.run_grid`): each
  seed's FP32 model scores the test split's rows of the cue-carrying types twice, rendered from
  their labels and types with one seed stream, once with the variant's cue and once with the
  same fade but no rings (``amplitude`` ~0: every random draw the same, the rings invisible).
  The per-image outcomes go to ``positive_control_fp32.json``.
- :func:`positive_control_markdown`: the PRECONDITION line first (``fq_fairmetrics.
  compare_outcomes``, paired by image and seed: without rings -> with rings), then every 2x2
  contrast per budget on the worst group and on each cue type and the cue types pooled, then the
  uniform rows against FP32 per group, with the difference of the two drops (cue types minus
  the others). Every paired difference carries both intervals, the verdict and the minimal
  detectable effect (``fq_fairmetrics.paired_difference``).

Accuracies are fractions in the computation, points in the Markdown.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from ._cells import atomic_write_bytes
from ._frontier import EFFECTS, format_interval, format_points, paired_worst, verdict_text
from ._names import UNIFORM_BITS

if TYPE_CHECKING:
    from fq_fairmetrics import PairedDifference

    from ._config import GridConfig

#: The file :func:`measure_precondition` writes in the run folder.
PRECONDITION_FILE = "positive_control_fp32.json"
#: The seed stream of the re-rendered cue images (distinct from the data's own streams).
RENDER_STREAM = (24, 1)
#: Test-set resamples behind each image interval.
RESAMPLES = 2000


def measure_precondition(config: GridConfig, out: Path) -> Path | None:
    """Score each seed's FP32 model (trained here, or loaded) on the cue types' test rows with and
    without the cue; write :data:`PRECONDITION_FILE` under ``out``. ``None`` for the default
    variant (nothing planted, nothing to check)."""
    import torch
    from fq_data import IMAGENET_MEAN, IMAGENET_STD, SYNTH_VARIANTS, generate_lesion_images

    from ._checkpoints import RunPaths, fp32_state, fresh_model
    from ._data import load_data

    cue = SYNTH_VARIANTS[config.variant]
    if cue is None:
        return None
    no_rings = dataclasses.replace(cue, amplitude=1e-9)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    paths = RunPaths(root=out)
    result: dict[str, Any] = {"variant": config.variant, "types": list(cue.types), "runs": []}
    for dataset in config.datasets:
        data = load_data(config, dataset)
        ys, gs = [], []
        for _x, y, g in data.loaders.test:
            ys.append(y.numpy())
            gs.append(g.numpy())
        labels, codes = np.concatenate(ys), np.concatenate(gs)
        names = [str(n) for n in data.loaders.group_names]
        types = np.array([int(names[c]) for c in codes])
        keep = np.isin(types, cue.types)
        lab, typ = labels[keep], types[keep]
        images = {}
        for name, c in (("with_rings", cue), ("without_rings", no_rings)):
            pix = generate_lesion_images(
                lab,
                typ,
                num_classes=data.loaders.num_classes,
                image_size=config.image_size,
                seed=RENDER_STREAM,
                cue=c,
            )
            x = torch.from_numpy(pix).permute(0, 3, 1, 2).float() / 255
            images[name] = (x - mean) / std
        for model_name in config.models:
            run: dict[str, Any] = {
                "dataset": dataset,
                "model": model_name,
                "labels": lab.tolist(),
                "types": typ.tolist(),
                "seeds": [],
                "with_rings": [],
                "without_rings": [],
            }
            for seed in config.seeds:
                net = fresh_model(config, model_name, data, pretrained=False)
                net.load_state_dict(fp32_state(config, paths, data, model_name, seed))
                net.eval()
                run["seeds"].append(int(seed))
                for name, x in images.items():
                    with torch.no_grad():
                        pred = torch.cat([net(b).argmax(1) for b in x.split(256)]).numpy()
                    run[name].append((pred == lab).tolist())
            result["runs"].append(run)
    path = out / PRECONDITION_FILE
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(result).encode())
    return path


# -- statistics ----------------------------------------------------------------------------------
def set_difference(
    correct_a: np.ndarray, correct_b: np.ndarray, groups: np.ndarray, members: list[int]
) -> PairedDifference:
    """Accuracy on the pooled groups ``members`` (int codes), ``a - b`` paired by seed, with the
    seed interval and a test-image interval (each resample redraws every group's images with
    replacement, ``fq_fairmetrics.image_weights``, the same draw for every seed and both).

    ``correct_a``, ``correct_b``: ``[S, N]`` bools; ``groups``: ``[N]`` int codes."""
    from fq_fairmetrics import image_weights, paired_difference

    a, b = np.atleast_2d(correct_a).astype(np.float64), np.atleast_2d(correct_b).astype(np.float64)
    g = np.asarray(groups, dtype=np.int64)
    mask = np.isin(g, members)
    values = a[:, mask].mean(axis=1) - b[:, mask].mean(axis=1)
    weights = image_weights(g, RESAMPLES)
    n = float(mask.sum())
    draws = np.zeros(RESAMPLES)
    for code in members:
        w, sel = weights[code], g == code
        draws += w @ (a[:, sel] - b[:, sel]).mean(axis=0) / n
    return paired_difference(values, draws)


def diff_in_drops(
    cand: np.ndarray, ref: np.ndarray, groups: np.ndarray, minority: list[int], rest: list[int]
) -> PairedDifference:
    """``(acc_minority(cand) - acc_minority(ref)) - (acc_rest(cand) - acc_rest(ref))``, paired by
    seed, with both intervals: how much more the candidate costs ``minority`` than ``rest``."""
    from fq_fairmetrics import image_weights, paired_difference

    one = set_difference(cand, ref, groups, minority)
    two = set_difference(cand, ref, groups, rest)
    a, b = np.atleast_2d(cand).astype(np.float64), np.atleast_2d(ref).astype(np.float64)

    g = np.asarray(groups, dtype=np.int64)
    weights = image_weights(g, RESAMPLES)
    draws = np.zeros(RESAMPLES)
    for members, sign in ((minority, 1.0), (rest, -1.0)):
        n = float(np.isin(g, members).sum())
        for code in members:
            sel = g == code
            draws += sign * weights[code] @ (a[:, sel] - b[:, sel]).mean(axis=0) / n
    return paired_difference(one.values - two.values, draws)


def _cell_arrays(part: pl.DataFrame) -> tuple[list[int], np.ndarray, np.ndarray]:
    part = part.sort("seed")
    return (
        part["seed"].to_list(),
        np.array([np.asarray(c, dtype=bool) for c in part["test_correct"].to_list()]),
        np.asarray(part["test_group"][0], dtype=np.int64),
    )


def _paired(a: pl.DataFrame, b: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    seeds = sorted(set(a["seed"].to_list()) & set(b["seed"].to_list()))
    _, ca, ga = _cell_arrays(a.filter(pl.col("seed").is_in(seeds)))
    _, cb, _ = _cell_arrays(b.filter(pl.col("seed").is_in(seeds)))
    return ca, cb, ga


def _fmt(pd: PairedDifference) -> list[str]:
    return [
        f"{format_points(pd.mean, True)} {format_interval(pd.low, pd.high, True)}",
        format_interval(pd.image_low, pd.image_high, True),
        verdict_text(pd.verdict, pd.mde, int(pd.values.size)),
        format_points(pd.mde),
    ]


# -- the report ----------------------------------------------------------------------------------
def precondition_line(root: Path) -> tuple[str, list[str]]:
    """The PRECONDITION line and its per-type rows, from :data:`PRECONDITION_FILE`."""
    from fq_fairmetrics import TooFewSamplesWarning, compare_outcomes

    path = root / PRECONDITION_FILE
    if not path.exists():
        return "PRECONDITION: not measured (no " + PRECONDITION_FILE + " in the run folder).", []
    data = json.loads(path.read_text())
    lines, verdicts = [], []
    for run in data["runs"]:
        with_r = np.asarray(run["with_rings"], dtype=bool)
        without = np.asarray(run["without_rings"], dtype=bool)
        types = np.asarray(run["types"])
        with warnings.catch_warnings():  # the margin verdict is not used here, only the change
            warnings.simplefilter("ignore", TooFewSamplesWarning)
            per_type = compare_outcomes(without, with_r, types, reference_name="rings removed",
                                        candidate_name="with rings")  # fmt: skip
            pooled = compare_outcomes(without, with_r, np.zeros_like(types), group_names=["pooled"],
                                      reference_name="rings removed", candidate_name="with rings")  # fmt: skip
        prow = next(r for r in pooled.rows if r.kind == "group")
        verdicts.append(prow.verdict_change == "better")
        label = "-".join(str(t) for t in data["types"])
        lines.append(
            f"| {run['model']} | {label} pooled | {prow.n} | {prow.reference_acc:.1f} | "
            f"{prow.candidate_acc:.1f} | {prow.change:+.1f} [{prow.low:+.1f}, {prow.high:+.1f}] | "
            f"{prow.verdict_change} | {prow.mde:.1f} |"
        )
        for r in per_type.rows:
            if r.kind == "group":
                lines.append(
                    f"| {run['model']} | type {r.group} | {r.n} | {r.reference_acc:.1f} | "
                    f"{r.candidate_acc:.1f} | {r.change:+.1f} [{r.low:+.1f}, {r.high:+.1f}] | "
                    f"{r.verdict_change} | {r.mde:.1f} |"
                )
    seeds = len(data["runs"][0]["seeds"]) if data["runs"] else 0
    if verdicts and all(verdicts):
        head = (
            "PRECONDITION: MET. The FP32 model reads the planted cue: on the cue types' test rows "
            f"its accuracy with the rings is resolved above the same images without them "
            f"({seeds} seeds, paired by image). The contrasts below test the allocation."
        )
    else:
        head = (
            "PRECONDITION: NOT MET. The FP32 model does not measurably read the planted cue: "
            "with the rings its accuracy on the cue types is not resolved above the same images "
            f"without them ({seeds} seeds, paired by image). The control cannot inform: there "
            "are no ring-reading channels for group-aware allocation to protect, so the "
            "contrasts below say nothing about whether the allocation protects a minority that "
            "relies on its own cue."
        )
    table = [
        "| Model | Types | Images | Acc. rings removed | Acc. with rings | Change [95%] | "
        "Verdict | MDE |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |",
        *lines,
    ]
    return head, table


def positive_control_markdown(
    root: Path, cells: pl.DataFrame, config: dict[str, Any], group_names: list[str]
) -> str:
    """The positive-control report of the run in ``root`` (its cell frame ``cells``, its
    ``config.json`` as a dict, the test set's ``group_names``: Fitzpatrick types ``"1"``..
    ``"6"``, indexed by the cells' group codes); ``""`` when the run's variant is the default."""
    from fq_data import SYNTH_VARIANTS

    variant = config.get("variant", "shared-cues")
    cue = SYNTH_VARIANTS[variant]
    if cue is None:
        return ""
    head, pre = precondition_line(root)
    out = [head, "", *pre, ""]
    plain = cells.filter(pl.col("variant") == "")
    for (ds, mo), part in plain.group_by(["dataset", "model"], maintain_order=True):
        names = group_names
        codes = {int(n): i for i, n in enumerate(names)}
        minority = [codes[t] for t in cue.types if t in codes]
        rest = [i for i in range(len(names)) if i not in minority]
        sets = [(f"type {names[c]}", [c]) for c in minority]
        sets.append(("types " + "-".join(names[c] for c in minority) + " pooled", minority))
        out += [
            f"2x2 design on {ds} {mo} (paired by seed, points; seed = 95% t-interval over "
            "seeds, images = 95% interval over test-set resamples; MDE: 80% power at 5%)",
            "",
            "| Budget | Contrast | Group | Effect [seeds] | [images] | Verdict | MDE |",
            "| ---: | --- | --- | ---: | ---: | --- | ---: |",
        ]
        budgets = sorted({b for b in part["budget"].to_list() if b}, key=float)
        for bu in budgets:
            here = part.filter(pl.col("budget") == bu)
            for name, _ingredient, a, b in EFFECTS:
                pa, pb = here.filter(pl.col("method") == a), here.filter(pl.col("method") == b)
                if pa.is_empty() or pb.is_empty():
                    continue
                rows = [("worst group", paired_worst(pa, pb, resamples=RESAMPLES))]
                ca, cb, g = _paired(pa, pb)
                rows += [(label, set_difference(ca, cb, g, m)) for label, m in sets]
                for label, pd in rows:
                    out.append(
                        f"| {bu} | {name} ({a} − {b}) | {label} | " + " | ".join(_fmt(pd)) + " |"
                    )
        out += ["", _uniform_table(part, names, minority, rest, sets)]
    return "\n".join(out) + "\n"


def _uniform_table(
    part: pl.DataFrame,
    names: list[str],
    minority: list[int],
    rest: list[int],
    sets: list[tuple[str, list[int]]],
) -> str:
    fp = part.filter((pl.col("method") == "fp32") & (pl.col("budget") == ""))
    lines = [
        "Uniform low bits against FP32, per group (paired by seed, points); the last rows of "
        "each: the drop of the cue types minus the drop of the others (< 0: the cue types pay "
        "more)",
        "",
        "| Uniform | Group | Change vs FP32 [seeds] | [images] | Verdict | MDE |",
        "| --- | --- | ---: | ---: | --- | ---: |",
    ]
    if fp.is_empty():
        return "\n".join([*lines, "(no FP32 cells)"])
    for me in sorted(UNIFORM_BITS, key=UNIFORM_BITS.__getitem__):
        uc = part.filter((pl.col("method") == me) & (pl.col("budget") == ""))
        if uc.is_empty():
            continue
        cu, cf, g = _paired(uc, fp)
        rows = [(f"type {names[c]}", set_difference(cu, cf, g, [c])) for c in range(len(names))]
        rows += [(label, set_difference(cu, cf, g, m)) for label, m in sets[-1:]]
        rows.append(("types " + ",".join(names[c] for c in rest) + " pooled",
                     set_difference(cu, cf, g, rest)))  # fmt: skip
        rows.append(("cue types' drop − others'", diff_in_drops(cu, cf, g, minority, rest)))
        for label, pd in rows:
            lines.append(f"| U{UNIFORM_BITS[me]} | {label} | " + " | ".join(_fmt(pd)) + " |")
    return "\n".join(lines) + "\n"


def write_positive_control(
    root: Path, cells: pl.DataFrame, config: dict[str, Any] | None, group_names: list[str]
) -> str:
    """Write ``positive_control.md`` under ``root`` (see :func:`positive_control_markdown`) and
    return its text (``""``, nothing written, for the default variant or no config)."""
    if not config or config.get("variant", "shared-cues") == "shared-cues":
        return ""
    text = positive_control_markdown(root, cells, config, group_names)
    if text:
        atomic_write_bytes(root / "positive_control.md", text.encode())
    return text
