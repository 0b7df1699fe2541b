"""Pooled against group-balanced int8 activation calibration, audited per group.

One ``compress`` run (``fq_bench.compress``, the API the command line calls) on the default
semi-synthetic data writes the packed 4-bit model, its weight-only ONNX file and a pooled int8
file with the audit. Then, from that packed file, ``fq_quant.export_onnx`` writes the other
calibrations (pooled / group-balanced, per estimator), ONNX Runtime predicts the test split with
each, and ``fq_fairmetrics.compare`` audits each against FP32, against the weight-only file, and
group-balanced against pooled. ``fq_quant.clipped_fractions`` gives the share of each group's
activation values outside each calibration's ranges (test images).

    uv run python bench/int8_group_audit.py --weights FP32.safetensors --out /tmp/int8audit \
        --md bench/results/int8-group-audit.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

GROUP_NAMES_NOTE = "Fitzpatrick skin types 1 (lightest) to 6 (darkest)"


def _fmt(r: dict[str, Any]) -> str:
    return f"{r['change']:+.1f} [{r['low']:+.1f}, {r['high']:+.1f}]"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="FP32 resnet18 safetensors (3 classes)")
    p.add_argument("--out", required=True)
    p.add_argument("--md", default=None, help="write the markdown report here too")
    p.add_argument("--estimators", nargs="+", default=["percentile", "entropy"])
    p.add_argument("--method", default="fq-qat")
    p.add_argument("--budget", type=float, default=4.0)
    p.add_argument("--calib-batches", type=int, default=10, help="compress's calib_batches")
    p.add_argument(
        "--act-images",
        type=int,
        default=192,
        help="training images the int8 variants calibrate on",
    )
    p.add_argument("--no-clipped", action="store_true", help="skip the clipped-share columns")
    p.add_argument("--reuse", action="store_true", help="keep int8 files already in --out")
    args = p.parse_args()
    import dataclasses

    from fq_bench.compress import INT8, PREDICTIONS, CompressConfig, compress, load_weights
    from fq_bench.grid import build_model
    from fq_data import IMAGENET_MEAN, IMAGENET_STD, dataset_info, load_semisynthetic, make_loaders
    from fq_fairmetrics import Predictions, compare
    from fq_fairmetrics.torch import predict
    from fq_quant import (
        calibrate_activations,
        clipped_fractions,
        export_onnx,
        load_packed,
        ort_session,
    )

    t0 = time.perf_counter()
    torch.set_num_threads(1)
    out = Path(args.out)
    dd = load_semisynthetic(
        "fitzpatrick17k", n=1600, image_size=32, seed=0, test_fraction=0.4, min_test_per_group=150
    )
    class_names, group_names = dataset_info(dd)
    model = build_model("resnet18", num_classes=len(class_names), image_size=32, pretrained=False)
    load_weights(model, Path(args.weights))
    first = args.estimators[0]
    config = CompressConfig(
        budget=args.budget,
        method=args.method,
        calib_batches=args.calib_batches,
        test_fraction=0.4,
        activations="int8",
        estimator=first,
        cpu=True,
        progress=False,
    )
    run = out / f"compress-{first}-pooled"
    res = compress(model, dd, run, config, about={"model": "resnet18"})
    t_compress = time.perf_counter() - t0

    loaders = make_loaders(dd, image_size=32, batch_size=64, train=False, seed=0)
    # the first --act-images training images, in batches (calibrate_activations re-cuts ragged
    # batches, such as the short last one here or each group's share, into equal ones)
    calib, left = [], args.act_images
    for x, y, g in itertools.islice(loaders.train, args.calib_batches):
        if left > 0:
            calib.append((x[:left], y[:left], g[:left]))
            left -= len(x[:left])
    test = list(loaders.test)
    state, assignment = load_packed(res.packed)  # type: ignore[misc]
    plain = build_model("resnet18", num_classes=len(class_names), image_size=32, pretrained=False)
    plain.load_state_dict(state)
    tables = {k: Predictions.load(run / PREDICTIONS[k]) for k in ("fp32", "onnx", "int8")}
    ids = np.asarray([str(i) for i in dd["test"]["id"]])
    files: dict[str, Path] = {}
    assert (run / INT8).is_file()
    sizes = {"packed": res.size_bytes, "onnx": res.onnx.stat().st_size}
    clipped: dict[str, dict[str, float]] = {}
    for est in args.estimators:
        for balanced in (False, True):
            name = f"{est}-{'balanced' if balanced else 'pooled'}"
            path = out / f"{name}.onnx"
            if not (args.reuse and path.is_file()):
                export_onnx(
                    plain,
                    torch.zeros(1, 3, 32, 32),
                    path,
                    assignment=assignment,
                    activations="int8",
                    calibration=calib,
                    estimator=est,
                    group_balanced=balanced,
                    class_names=[str(c) for c in class_names],
                    normalization={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
                    packed=res.packed,
                )
            pr = predict(
                ort_session(path, exact=False, threads=1),
                test,
                class_names=class_names,
                group_names=group_names,
            )
            tables[name] = dataclasses.replace(pr, sample_id=ids)
            files[name] = path
            sizes[name] = path.stat().st_size
            # share of each group's (test) activation values outside this calibration's ranges
            if args.no_clipped:
                continue
            ranges = calibrate_activations(res.onnx, calib, estimator=est, group_balanced=balanced)
            per = clipped_fractions(res.onnx, test, ranges)
            clipped[name] = {
                str(group_names[g]): float(np.mean(list(v.values()))) for g, v in per.items()
            }

    def cmp(ref: str, cand: str) -> list[dict[str, Any]]:
        a, b = tables[ref], tables[cand]
        assert (np.asarray(a.sample_id).astype(str) == np.asarray(b.sample_id).astype(str)).all()
        c = compare(
            np.asarray(a.label).astype(str),
            np.asarray(a.group).astype(str),
            np.asarray(a.prediction).astype(str),
            np.asarray(b.prediction).astype(str),
            margin=1.0,
            confidence=0.95,
            class_names=[str(x) for x in class_names],
            group_names=[str(g) for g in group_names],
            reference_name=ref,
            candidate_name=cand,
        )
        return c.to_dicts()

    lines = [
        "# Integer activations on the default data: pooled vs group-balanced calibration",
        "",
        f"resnet18 at 32 px on the semi-synthetic Fitzpatrick17k data (1600 images, "
        f"{len(ids)} test images, at least 150 per skin type), {args.method} at "
        f"{args.budget:g} bits per weight (`fq_bench.compress`, reached "
        f"{res.avg_bits:.2f} bits, {res.container_bits:.2f} in containers), int8 activations "
        f"calibrated on {sum(len(b[0]) for b in calib)} training images (eval transforms). "
        f"Groups: {GROUP_NAMES_NOTE}. Every change is in accuracy points on the same test "
        "images (paired), with its 95% interval (`fq_fairmetrics.compare`); `*` marks a change "
        "McNemar's exact test calls significant. Made by `bench/int8_group_audit.py` "
        f"({time.strftime('%Y-%m-%d')}, CPU).",
        "",
        "## Sizes",
        "",
        "| file | MiB |",
        "| --- | ---: |",
        *(f"| {k} | {v / 2**20:.3f} |" for k, v in sizes.items()),
        "",
    ]
    # the compress run's own pooled file (calibrated in batches of 64) against this one's
    same = np.asarray(tables["int8"].prediction) == np.asarray(tables[f"{first}-pooled"].prediction)
    summary: dict[str, Any] = {
        "sizes": sizes,
        "clipped": clipped,
        "audits": {},
        "compress_int8_agreement": float(same.mean()),
    }
    for est in args.estimators:
        pooled, bal = f"{est}-pooled", f"{est}-balanced"
        audits = {
            "pooled vs FP32": cmp("fp32", pooled),
            "balanced vs FP32": cmp("fp32", bal),
            "pooled vs weight-only": cmp("onnx", pooled),
            "balanced vs weight-only": cmp("onnx", bal),
            "balanced vs pooled": cmp(pooled, bal),
        }
        summary["audits"][est] = audits

        def by(key: str, audits: dict[str, Any] = audits) -> dict[tuple[str, str], Any]:
            return {(r["kind"], r["group"]): r for r in audits[key]}

        wo, pv = by("pooled vs weight-only"), by("pooled vs FP32")
        bv, bp = by("balanced vs FP32"), by("balanced vs pooled")
        lines += [
            f"## Estimator `{est}`",
            "",
            "| group | n | FP32 | weight-only | int8 pooled | int8 balanced | pooled - FP32 "
            "| balanced - FP32 | balanced - pooled | pooled - weight-only | clipped pooled "
            "| clipped balanced |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- | ---: | ---: |",
        ]
        for r in audits["pooled vs FP32"]:
            g = (r["kind"], r["group"])
            star = {k: "*" if d[g]["verdict_change"] in ("better", "worse") else "" for k, d in
                    (("p", pv), ("b", bv), ("bp", bp), ("w", wo))}  # fmt: skip
            clip = (
                f"{100 * clipped[pooled].get(str(g[1]), float('nan')):.3f}% | "
                f"{100 * clipped[bal].get(str(g[1]), float('nan')):.3f}%"
                if r["kind"] == "group" and clipped
                else "- | -"
            )
            label = {"worst": f"worst ({g[1]})", "average": "mean of groups"}.get(g[0], str(g[1]))
            lines.append(
                f"| {label} | {r['n']} | {r['reference_acc']:.1f} | {wo[g]['reference_acc']:.1f} "
                f"| {r['candidate_acc']:.1f} | {bv[g]['candidate_acc']:.1f} | {_fmt(pv[g])}{star['p']} "
                f"| {_fmt(bv[g])}{star['b']} | {_fmt(bp[g])}{star['bp']} | {_fmt(wo[g])}{star['w']} "
                f"| {clip} |"
            )
        lines.append("")
    lines.append(
        f"The compress run's own `model.int8.onnx` ({first}, pooled, calibrated in batches of 64) "
        f"predicts the same class as the `{first}-pooled` file above on {100 * same.mean():.1f}% "
        "of the test images."
    )
    lines.append(f"Wall time: compress {t_compress:.0f} s, all {time.perf_counter() - t0:.0f} s.")
    text = "\n".join(lines) + "\n"
    (out / "int8-group-audit.md").write_text(text)
    (out / "int8-group-audit.json").write_text(json.dumps(summary, indent=1, default=str))
    if args.md:
        Path(args.md).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
