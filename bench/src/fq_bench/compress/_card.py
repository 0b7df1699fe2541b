"""The model card: ``README.md`` with Hugging Face ``model-index`` front matter, then plain text.

Every figure in it is read from the run (the audit's rows, the measured cost, the data's counts);
what the run did not measure is listed as not measured, never estimated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._audit import Audit
from ._config import CompressConfig
from ._store import write_text

_METHOD_WORDS = {
    "blind": "group-blind mixed precision (bits by the importance of the pooled loss), "
    "quantization-aware fine-tune without a fairness term",
    "fq-alloc": "FairQuant's balanced allocation (bits by each group's importance), "
    "quantization-aware fine-tune without a fairness term",
    "fq-qat": "FairQuant's balanced allocation, quantization-aware fine-tune with the fairness "
    "term L_fair",
    "fq-baq": "FairQuant's bit-aware quantization: bits learned during the fine-tune from the "
    "balanced allocation, ending at the budget, with L_fair",
}


@dataclass(frozen=True, kw_only=True)
class CardFacts:
    """The measured facts of a run the card states (sizes in bytes, GBOPs per image)."""

    config: CompressConfig
    about: dict[str, Any]
    avg_bits: float
    size_bytes: int
    onnx_bytes: int
    gbops: float
    fp32_gbops: float
    container_bits: float | None = None
    int8_bytes: int | None = None


def _q(text: str) -> str:
    """A YAML scalar: JSON strings are valid YAML."""
    return json.dumps(str(text))


def _front_matter(facts: CardFacts, audit: Audit, name: str, source: str) -> str:
    lines = [
        "---",
        "library_name: onnx",
        "pipeline_tag: image-classification",
        "tags:",
        "- image-classification",
        "- quantized",
        "- fairness",
        "- fairquant",
        "model-index:",
        f"- name: {_q(name)}",
        "  results:",
        "  - task:",
        "      type: image-classification",
        "      name: Image classification",
        "    dataset:",
        f"      name: {_q(source)}",
        f"      type: {_q(source)}",
        "      split: test",
        "    metrics:",
    ]
    for row in audit.rows("onnx"):
        if row["kind"] != "group":
            continue
        for what, key in (("ONNX", "candidate_acc"), ("FP32", "reference_acc")):
            label = f"accuracy, {row['group']} ({what}, n={row['n']})"
            lines += [
                "    - type: accuracy",
                f"      name: {_q(label)}",
                f"      value: {row[key] / 100:.4f}",
                "      verified: false",
            ]
    return "\n".join([*lines, "---", ""])


def _name(row: dict[str, Any]) -> str:
    return {"worst": f"worst group ({row['group']})", "average": "average over groups"}.get(
        row["kind"], row["group"]
    )


def _table(audit: Audit, key: str) -> list[str]:
    what = {"onnx": "model.onnx", "fake_quant": "fake-quant", "int8": "model.int8.onnx"}.get(
        key, "model.int8.onnx"
    )
    ref = "model.onnx" if key == "int8_vs_onnx" else "FP32"
    out = [
        f"| group | test images | {ref} | {what} | change (points) | change interval | change "
        "| margin interval | margin verdict | lost / gained |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | --- | --- | ---: |",
    ]
    for r in audit.rows(key):
        out.append(
            f"| {_name(r)} | {r['n']} | {r['reference_acc']:.1f}% | {r['candidate_acc']:.1f}% | "
            f"{r['change']:+.1f} | [{r['low']:+.1f}, {r['high']:+.1f}] | {r['verdict_change']} | "
            f"[{r['margin_low']:+.1f}, {r['margin_high']:+.1f}] | {r['verdict_margin']} | "
            f"{r['losses']} / {r['gains']} |"
        )
    return out


def _points(x: float) -> str:
    return f"{x:g} accuracy point{'s' if x != 1 else ''}"


def _verdict_words(audit: Audit, key: str) -> str:
    """The verdict in plain words, from the per-group rows' own verdicts (no new statistics)."""
    rows = [r for r in audit.rows(key) if r["kind"] == "group"]
    m = _points(audit.margin)

    def names(rs: list[dict[str, Any]]) -> str:
        return ", ".join(str(r["group"]) for r in rs)

    bad = [r for r in rows if r["verdict_margin"] == "inferior"]
    open_ = [r for r in rows if r["verdict_margin"] == "inconclusive"]
    worse = [r for r in rows if r["verdict_change"] == "worse"]
    if bad:
        text = (
            f"**Not shown safe.** For group(s) {names(bad)} the shipped model is worse than the "
            f"original by more than {m} (the whole margin interval lies beyond the margin)."
        )
    elif open_:
        text = (
            f"**Not decided.** For group(s) {names(open_)} this test set cannot tell whether the "
            f"shipped model loses more than {m} against the original: the margin interval reaches "
            "beyond the margin. More test images of these groups would decide it (see "
            "the warning below for how many)."
        )
    else:
        text = (
            f"**Non-inferior in every group.** In every group the shipped model loses at most "
            f"{m} of accuracy against the original, at {audit.confidence:.0%} confidence, on "
            "this test set."
        )
    if worse:
        text += f" A drop is shown (paired test) for group(s) {names(worse)}."
    drop = min(rows, key=lambda r: r["change"])
    if drop["change"] < 0:
        text += (
            f" Largest estimated loss: group {drop['group']}, {drop['change']:+.1f} points "
            f"({drop['reference_acc']:.1f}% -> {drop['candidate_acc']:.1f}%; change interval "
            f"{drop['low']:+.1f} to {drop['high']:+.1f}, margin interval "
            f"{drop['margin_low']:+.1f} to {drop['margin_high']:+.1f})."
        )
    return text


def _sizes(facts: CardFacts) -> list[str]:
    """Budget, reached bits and the files' sizes side by side (the size lines of the card)."""
    c = facts.config
    counts = {"packed": "each weight's own bits", "container": "each layer's storage container"}
    lines = [
        f"- Budget: {c.budget:g} bits per weight, counting {counts[c.cost]} "
        f"(`--cost {c.cost}`); reached: {facts.avg_bits:.2f} bits per weight on average over "
        "the quantized layers (mixed precision, bits per output channel)"
        + (
            f", {facts.container_bits:.2f} as stored in per-layer INT4/INT8 containers."
            if facts.container_bits is not None
            else "."
        ),
        f"- Packed low-bit file `model.packed.safetensors`: {facts.size_bytes / 2**20:.2f} MiB; "
        f"`model.onnx` (integer weights): {facts.onnx_bytes / 2**20:.2f} MiB"
        + (
            f"; `model.int8.onnx` (integer weights and activations): "
            f"{facts.int8_bytes / 2**20:.2f} MiB."
            if facts.int8_bytes is not None
            else "."
        ),
        "",
        "| budget (bits/weight) | reached (packed) | reached (containers) | packed file | "
        "model.onnx | model.int8.onnx |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {c.budget:g} | {facts.avg_bits:.2f} | "
        + (f"{facts.container_bits:.2f}" if facts.container_bits is not None else "-")
        + f" | {facts.size_bytes / 2**20:.2f} MiB | {facts.onnx_bytes / 2**20:.2f} MiB | "
        + (f"{facts.int8_bytes / 2**20:.2f} MiB" if facts.int8_bytes is not None else "not made")
        + " |",
        "",
    ]
    return lines


def _int8_section(audit: Audit, facts: CardFacts) -> list[str]:
    """The integer-activation file's audit: against FP32 and against ``model.onnx``."""
    if "int8" not in audit.comparisons:
        return []
    c = facts.config
    how = "per group, widest range kept" if c.group_balanced else "pooled over all images"
    return [
        "## Integer activations (`model.int8.onnx`)",
        "",
        f"Activations quantized to int8 with ranges calibrated on training images ({how}, "
        f"estimator `{c.estimator}`). Against the original:",
        "",
        *_table(audit, "int8"),
        "",
        *[f"- Warning: {w}" for w in audit.comparisons["int8"]["warnings"]],
        "",
        "Against the weight-only file `model.onnx` (what quantizing the activations changed):",
        "",
        *_table(audit, "int8_vs_onnx"),
        "",
        _verdict_words(audit, "int8"),
        "",
    ]


def write_card(path: Path, facts: CardFacts, audit: Audit) -> None:
    """Write the model card for the run ``facts`` with the audit ``audit`` (atomically)."""
    c, about = facts.config, facts.about
    data = about.get("data", {})
    source = str(data.get("source", "the user's dataset"))
    model_name = str(about.get("model", "the model"))
    name = f"{model_name}-{c.method}-{c.budget:g}bit"
    groups = ", ".join(data.get("group_names", []))
    classes = ", ".join(data.get("class_names", []))
    synth = (
        " The images are **semi-synthetic** (real metadata, generated pixels): these figures "
        "describe the toolkit's demo, not a clinical model."
        if data.get("semisynthetic")
        else ""
    )
    weights = about.get("weights") or {}
    lines = [
        _front_matter(facts, audit, name, source),
        f"# {name}",
        "",
        f"A low-bit version of `{model_name}`"
        + (
            f" (trained weights `{Path(weights['file']).name}`, sha256 `{weights['sha256'][:12]}…`)"
            if weights
            else ""
        )
        + f", compressed with {_METHOD_WORDS[c.method]}, and audited per patient group on "
        "held-out test images. Made with the FairQuant toolkit (`python -m fq_bench compress`).",
        "",
        "## Verdict",
        "",
        _verdict_words(audit, "onnx"),
        "",
        "## Data",
        "",
        f"Source: `{source}`"
        + (
            f" (label column `{data['label_column']}`, group column `{data['group_column']}`)"
            if data.get("group_column")
            else ""
        )
        + f". {data.get('n_train', '?')} training images (calibration and fine-tune) and "
        f"{data.get('n_test', '?')} test images (audit only). Classes: {classes}. "
        f"Groups: {groups}.{synth}",
        "",
        "## Size and cost",
        "",
        *_sizes(facts),
        f"- Compute: {facts.gbops:.3f} GBOPs per image (weight bits x 32-bit activations), "
        f"against {facts.fp32_gbops:.3f} for the float original.",
        "",
        "## Per-group results of the shipped file (`model.onnx`)",
        "",
        *_table(audit, "onnx"),
        "",
        f"Change: accuracy of the shipped file minus the original's, in points, on the same "
        f"test images (paired), with its {audit.confidence:.0%} interval; `better` / `worse` "
        "where McNemar's exact test rejects (the interval then excludes 0). *Margin interval*: "
        "a wider interval that also allows for how many images could have changed, so a small "
        "group cannot look safe by chance; `non-inferior` when its lower end lies above "
        f"-{_points(audit.margin)}, `inferior` when its upper end lies below, `inconclusive` "
        "otherwise. "
        "*Lost / gained*: test images the original classified right and the shipped file wrong, "
        "and the reverse. Rules: `fq_fairmetrics.compare` (docs/METHOD.md, section 7).",
        "",
        *[f"- Warning: {w}" for w in audit.comparisons["onnx"]["warnings"]],
        "",
        "## Fake-quantized model (torch) against the original",
        "",
        "The same audit for the model as the toolkit computes it, before export: a difference "
        "between this table and the one above would come from the export.",
        "",
        *_table(audit, "fake_quant"),
        "",
        *_int8_section(audit, facts),
        "## What was not measured",
        "",
        "- Populations, cameras or sites other than this test split; groups not listed above.",
        "- Calibration of the predicted probabilities; only the predicted class is audited.",
        "- Speed or memory on a deployment device.",
        "",
        "## Deploying `model.onnx`",
        "",
        f"Input `input` `[batch, 3, {c.image_size}, {c.image_size}]` float32: RGB pixels scaled to "
        "[0, 1], then normalized with the `normalization` mean and std in the file's "
        "`metadata_props`; output `logits` `[batch, classes]` in the order of its `class_names`. "
        "The metadata also holds the bits per layer and the content hash of "
        "`model.packed.safetensors` (`packed_content_sha256`).",
        "",
        "Files: `model.onnx`, `model.packed.safetensors`, `predictions/*.csv` (one row per test "
        "image), `audit.md`, `audit.json`, `audit.png`, `run.json` (the settings).",
        "",
    ]
    write_text(path, "\n".join(lines))
