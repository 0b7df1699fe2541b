"""Static activation ranges for integer activations: calibrated, group-balanced, audited per group.

Ranges are estimated by ONNX Runtime's own calibrators (``onnxruntime.quantization``'s min-max,
percentile and entropy) on a float ONNX graph; the group-balanced rule (METHOD.md section 10) runs
the estimator on each group's samples alone and keeps, per tensor, the widest range over the groups.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ._batches import unpack_batch
from ._onnx_base import INPUT_NAME, require

Estimator = Literal["minmax", "percentile", "entropy"]
ESTIMATORS: tuple[str, ...] = ("minmax", "percentile", "entropy")
#: Percentile of the percentile estimator (ONNX Runtime's default).
DEFAULT_PERCENTILE = 99.999


@dataclass(frozen=True)
class ActivationRanges:
    """Per activation tensor of an ONNX graph, the real range ``(low, high)`` its int8 codes cover.

    ``ranges[name] = (low, high)`` with ``low <= 0 <= high`` after quantization (the runtime widens
    a range to hold 0); ``estimator``: how they were found; ``group_balanced``: widest over groups.
    """

    ranges: Mapping[str, tuple[float, float]]
    estimator: str = "minmax"
    group_balanced: bool = False
    groups: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        for name, (lo, hi) in self.ranges.items():
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
                raise ValueError(
                    f"ranges[{name!r}] must be finite with low <= high; got {(lo, hi)}"
                )


def widest_ranges(per_group: Mapping[int, ActivationRanges]) -> ActivationRanges:
    """Combine per-group ranges by the widest: per tensor, ``(min_g low_g, max_g high_g)``.

    Every group's estimator range lies inside the result, so no group is clipped beyond what its
    own estimator accepted. Tensors missing from a group are taken from the groups that have them.
    """
    if not per_group:
        raise ValueError("per_group must hold at least one group's ActivationRanges")
    first = next(iter(per_group.values()))
    names: dict[str, None] = {}
    for r in per_group.values():
        names.update(dict.fromkeys(r.ranges))
    out = {}
    for name in names:
        pairs = [r.ranges[name] for r in per_group.values() if name in r.ranges]
        out[name] = (min(p[0] for p in pairs), max(p[1] for p in pairs))
    return ActivationRanges(
        out, estimator=first.estimator, group_balanced=True, groups=tuple(sorted(per_group))
    )


def _split(batches: Iterable[Any], by_group: bool) -> dict[int, list[np.ndarray]]:
    """Input arrays ``[B, C, H, W]`` float32, all under key -1 or per group code."""
    out: dict[int, list[np.ndarray]] = {}
    for batch in batches:
        if isinstance(batch, torch.Tensor):
            if by_group:
                raise ValueError(
                    "group_balanced=True needs (image, label, group) batches; got bare tensors"
                )
            out.setdefault(-1, []).append(batch.detach().cpu().float().numpy())
            continue
        x, _, g = unpack_batch(batch, need_groups=by_group)
        xs = x.detach().cpu().float().numpy()
        if not by_group or g is None:
            out.setdefault(-1, []).append(xs)
            continue
        gs = g.cpu().numpy()
        for code in np.unique(gs):
            out.setdefault(int(code), []).append(xs[gs == code])
    if not out:
        raise ValueError("calibration yielded no batches")
    return out


def _equal_chunks(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """The same images in the same order, cut into batches that all have one size.

    ``arrays``: input batches ``[B_i, C, H, W]`` (sizes may differ: a short last batch, or one
    group's share of each batch). The size is the largest divisor of ``N = sum B_i`` not above
    ``max B_i`` (1 where ``N`` is prime). ONNX Runtime's histogram calibrators stack every batch of
    one ``collect_data`` call into one array, which needs equal sizes; stacked, each tensor's
    histogram is that of all ``N`` images, so the ranges do not depend on how the caller batched.
    """
    x = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    n, top = len(x), max(len(a) for a in arrays)
    size = max(d for d in range(1, min(n, top) + 1) if n % d == 0)
    return [x[i : i + size] for i in range(0, n, size)]


class _Reader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over a list of input arrays."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self._it: Iterator[np.ndarray] = iter(arrays)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {INPUT_NAME: x}


def calibration_method(estimator: str) -> Any:
    cal = require("onnxruntime.quantization.calibrate")
    return {
        "minmax": cal.CalibrationMethod.MinMax,
        "percentile": cal.CalibrationMethod.Percentile,
        "entropy": cal.CalibrationMethod.Entropy,
    }[estimator]


def _ort_ranges(
    model: Path,
    arrays: Mapping[int, list[np.ndarray]],
    estimator: str,
    percentile: float,
    tmp: str,
) -> dict[int, dict[str, tuple[float, float]]]:
    """ONNX Runtime's calibrator for ``estimator`` over each key's arrays (a group, or -1 pooled).

    One calibrator (one augmented model and session) serves every key: its collected data are
    dropped between keys (:func:`_forget`). Returns ``{key: {tensor: (low, high)}}``.
    """
    cal = require("onnxruntime.quantization.calibrate")
    options: dict[str, Any] = {"percentile": percentile} if estimator == "percentile" else {}

    def new_calibrator() -> Any:
        return cal.create_calibrator(
            model,
            None,
            augmented_model_path=os.path.join(tmp, "augmented.onnx"),
            calibrate_method=calibration_method(estimator),
            extra_options=options,
        )

    calibrator = new_calibrator()
    out = {}
    try:
        for i, (key, xs) in enumerate(arrays.items()):
            if i and not _forget(calibrator):
                calibrator = new_calibrator()
            calibrator.collect_data(_Reader(_equal_chunks(xs)))
            data = calibrator.compute_data()
            out[key] = {
                name: (
                    float(np.asarray(td.range_value[0]).min()),
                    float(np.asarray(td.range_value[1]).max()),
                )
                for name, td in data.data.items()
            }
    finally:
        del calibrator
    return out


def _forget(calibrator: Any) -> bool:
    """Drop what an ONNX Runtime calibrator has collected (its histograms or running min/max);
    ``False`` where this runtime's calibrator keeps them elsewhere (then a new one is made)."""
    # a new calibrator holds None in both (min-max has only the second)
    states = [s for s in ("collector", "calibrate_tensors_range") if hasattr(calibrator, s)]
    if not states:
        return False
    calibrator.clear_collected_data()
    for state in states:
        setattr(calibrator, state, None)
    return True


def calibrate_activations(
    model: str | os.PathLike[str],
    batches: Iterable[Any],
    *,
    estimator: Estimator = "minmax",
    group_balanced: bool = False,
    percentile: float = DEFAULT_PERCENTILE,
) -> ActivationRanges:
    """Ranges of every activation tensor of a float ONNX ``model``, from a few batches of data.

    Args:
        model: an ONNX file whose input is ``"input"`` ``[batch, C, H, W]`` (a float or
            weight-only file of :func:`export_onnx`).
        batches: ``(image, label, group)`` batches (tuples or mappings, e.g. a DataLoader) or bare
            image tensors ``[B, C, H, W]`` (pooled only). A few hundred images suffice. Batch
            sizes may differ (a short last batch; each group's share in group-balanced mode):
            the images are re-cut into equal batches, and every estimator sees the values of all
            of them at once, so the ranges depend on the images, not on how they were batched.
        estimator: ``"minmax"`` (observed extremes), ``"percentile"`` (the central
            ``percentile`` % of a histogram of ``|x|``), ``"entropy"`` (KL-optimal threshold).
        group_balanced: run the estimator on each group's images alone and keep, per tensor,
            the widest range over groups (:func:`widest_ranges`); with ``"minmax"`` this equals
            the pooled range, with the other estimators it is at least as wide.
        percentile: for ``"percentile"``, in ``(0, 100]``.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}; got {estimator!r}")
    if not 0.0 < float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in (0, 100]; got {percentile!r}")
    path = Path(model)
    if not path.is_file():
        raise ValueError(f"model must be an existing .onnx file; got {model!r}")
    arrays = _split(batches, group_balanced)
    if group_balanced and estimator == "minmax":
        # the widest of the groups' extremes is the pooled extreme: one pass over all images
        groups = tuple(sorted(arrays))
        arrays = {-1: [x for xs in arrays.values() for x in xs]}
    with tempfile.TemporaryDirectory(prefix="fq_calib.") as tmp:
        found = _ort_ranges(path, arrays, estimator, percentile, tmp)
    per = {code: ActivationRanges(r, estimator=estimator) for code, r in found.items()}
    if group_balanced and estimator == "minmax":
        return ActivationRanges(found[-1], estimator=estimator, group_balanced=True, groups=groups)
    if group_balanced:
        return widest_ranges(per)
    return per[-1]


def clipped_fractions(
    model: str | os.PathLike[str], batches: Iterable[Any], ranges: ActivationRanges
) -> dict[int, dict[str, float]]:
    """Per group, per tensor of ``ranges`` found in ``model``: the fraction of values outside it.

    ``model``: a float ONNX file (its activations are the unquantized ones the ranges apply to).
    Returns ``{group: {tensor: fraction in [0, 1]}}``; bare-tensor batches count under group -1.
    """
    onnx = require("onnx")
    ort = require("onnxruntime")
    proto = onnx.load(str(model))
    produced = {o for node in proto.graph.node for o in node.output} | {INPUT_NAME}
    names = [n for n in ranges.ranges if n in produced]
    if not names:
        raise ValueError("none of the tensors in ranges is computed by model")
    outputs = {o.name for o in proto.graph.output}
    for n in names:
        if n not in outputs:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    outside: dict[int, np.ndarray] = {}
    total: dict[int, np.ndarray] = {}
    for code, xs in _split(batches, not _bare(batches)).items():
        o, t = np.zeros(len(names)), np.zeros(len(names))
        for x in xs:
            values = sess.run(names, {INPUT_NAME: x})
            for i, (n, v) in enumerate(zip(names, values, strict=True)):
                lo, hi = ranges.ranges[n]
                o[i] += np.count_nonzero((v < lo) | (v > hi))
                t[i] += v.size
        outside[code], total[code] = o, t
    return {
        code: {n: float(outside[code][i] / max(total[code][i], 1)) for i, n in enumerate(names)}
        for code in outside
    }


def _bare(batches: Iterable[Any]) -> bool:
    return isinstance(batches, list | tuple) and all(isinstance(b, torch.Tensor) for b in batches)
