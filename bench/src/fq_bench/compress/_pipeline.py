"""``compress``: from a trained float model and the user's data to an audited low-bit file.

Steps (each resumable, see :class:`RunFolder`): FP32 predictions on the test split; calibration,
allocation and fine-tune by the grid's method runner, written as the packed low-bit file; the
fake-quantized model loaded back from that file and its predictions; the ONNX export and its
predictions in ONNX Runtime; the audit (``fq_fairmetrics.compare``); the model card.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._audit import Audit, run_audit
from ._card import CardFacts, write_card
from ._config import CompressConfig
from ._store import RunFolder

logger = logging.getLogger("fq_bench.compress")

PACKED = "model.packed.safetensors"
ONNX = "model.onnx"
#: The integer-activation file (``activations="int8"`` only).
INT8 = "model.int8.onnx"
#: The prediction files of the test split, by the model they come from (``int8``: only with
#: ``activations="int8"``).
PREDICTIONS = {
    "fp32": "predictions/fp32.csv",
    "fake_quant": "predictions/fake_quant.csv",
    "onnx": "predictions/onnx.csv",
    "int8": "predictions/int8.csv",
}


@dataclass(frozen=True, kw_only=True)
class CompressResult:
    """What :func:`compress` wrote and measured.

    Attributes:
        out: the output folder. packed / onnx / card: paths of ``model.packed.safetensors``,
            ``model.onnx`` and ``README.md`` in it.
        audit: the audit (FP32 against the fake-quantized model and against the ONNX file; with
            ``activations="int8"`` also against ``model.int8.onnx``, and that file against
            ``model.onnx``).
        avg_bits: parameter-weighted average bits per weight of the quantized layers.
        container_bits: the same average over the weights' storage containers in ``model.onnx``
            (``fq_quant.container_avg_bits``: INT4/INT8 per layer).
        int8: path of ``model.int8.onnx``, or ``None`` (``activations="float"``).
        size_bytes: size of the packed file on disk in bytes. gbops: giga bit-operations of one
            image at weight bits x 32-bit activations (``fq_fairmetrics.torch.model_cost``).
        seconds: wall time of this call (steps found finished take no time).
    """

    out: Path
    packed: Path
    onnx: Path
    card: Path
    audit: Audit
    avg_bits: float
    size_bytes: int
    gbops: float
    seconds: float
    container_bits: float | None = None
    int8: Path | None = None


class _PooledGroups:
    """A loader whose every sample is in group 0: the group-blind (pooled) calibration."""

    def __init__(self, loader: Any):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for x, y, g in self.loader:
            yield x, y, torch.zeros_like(g)


def _calibration(model: nn.Module, loaders: Any, config: CompressConfig, device: torch.device):
    """``calibration(grouping)`` for the grid's method runners: ``grape`` importance of ``model``
    on the augmented train split, per group (``"type"``) or pooled (``"pooled"``)."""
    from fq_importance import calibrate

    cache: dict[str, Any] = {}

    def run(grouping: str) -> Any:
        if grouping not in ("type", "pooled"):
            raise ValueError(f"grouping {grouping!r} is not used by the compress methods")
        if grouping not in cache:
            loader = loaders.train if grouping == "type" else _PooledGroups(loaders.train)
            batches = min(config.calib_batches, len(loaders.train))
            logger.info("calibrating %s importance on %d train batches", grouping, batches)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                cache[grouping] = calibrate(
                    model, loader, metric="grape", batches=batches, device=device, progress=False
                )
        return cache[grouping]

    return run


def _quantize(
    model: nn.Module, loaders: Any, config: CompressConfig, device: torch.device
) -> tuple[nn.Module, dict[str, Any]]:
    """The grid's runner of ``config.method`` at ``config.budget`` on a copy of ``model``."""
    from fq_bench.grid import METHODS, CellContext

    torch.manual_seed(config.seed)
    ctx = CellContext(
        config=config.grid_config(),
        model=copy.deepcopy(model).to(device),
        train_loader=loaders.train,
        calibration=_calibration(model, loaders, config, device),
        privileged_binary=0,  # Guo et al.'s binary grouping is not among the compress methods
        seed=config.seed,
        budget=float(config.budget),
        progress=config.progress,
        n_groups=loaders.num_groups,
    )
    out = METHODS[config.method](ctx)
    return out.model, {"history": list(out.history), **out.info}


def _load_quantized(model: nn.Module, packed: Path) -> nn.Module:
    """A copy of ``model`` holding the packed file's weights, fake-quantized at its bits."""
    from fq_quant import load_packed, quantize_model

    state, assignment = load_packed(packed)  # type: ignore[misc]
    fresh = copy.deepcopy(model).cpu()
    fresh.load_state_dict(state)
    return quantize_model(fresh, assignment)


def _predict(model: Any, loader: Any, ids: np.ndarray, path: Path, **names: Any) -> None:
    """``fq_fairmetrics.torch.predict`` over the test ``loader`` (unshuffled, in the dataset's
    order), written to ``path`` with the dataset's sample ids and names for labels and groups."""
    from fq_fairmetrics.torch import predict
    from torch.nn.utils import parametrize

    with parametrize.cached():  # a fake-quantized model's weights are quantized once per pass
        p = predict(model, loader, **names)
    dataclasses.replace(p, sample_id=ids).save(path)


def _calibration_batches(
    dataset_dict: Any, config: CompressConfig
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Up to ``config.calib_batches`` ``(image, label, group)`` batches of the train split with
    the eval transforms (no augmentation), for the integer activations' ranges (batches of any
    size: ``fq_quant.calibrate_activations`` re-cuts them for ONNX Runtime's calibrators)."""
    from fq_data import make_loaders

    loader = make_loaders(
        dataset_dict,
        image_size=config.image_size,
        batch_size=config.batch_size,
        train=False,
        seed=config.seed,
    ).train
    return list(itertools.islice(loader, config.calib_batches))


def _device(config: CompressConfig) -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and not config.cpu else "cpu")


def compress(
    model: nn.Module,
    dataset_dict: Any,
    out: str | Path,
    config: CompressConfig | None = None,
    *,
    about: dict[str, Any] | None = None,
) -> CompressResult:
    """Quantize ``model`` to ``config.budget`` bits per weight and audit what is shipped, per group.

    Args:
        model: the trained float classifier (any ``nn.Module`` whose Conv2d/Linear layers
            ``fq_quant`` quantizes), taking ``[B, 3, S, S]`` ImageNet-normalized images
            (``S = config.image_size``) to ``[B, classes]`` logits in the data's class order.
            Not modified.
        dataset_dict: a canonical ``datasets.DatasetDict`` (``fq_data.load_dataset`` and the
            other loaders): ``train`` for calibration and the fine-tune, ``test`` for the audit.
        out: output folder; a finished step found there is not redone (see :class:`RunFolder`).
        config: the options (default :class:`CompressConfig()`: ``fq-qat`` at 4 bits).
        about: JSON facts for ``run.json`` and the model card: ``model`` (a name), ``weights``
            (file and sha256), ``data`` (source and columns); what is not given is not claimed.

    Returns:
        :class:`CompressResult`. Files in ``out``: ``model.packed.safetensors``, ``model.onnx``,
        ``predictions/{fp32,fake_quant,onnx}.csv`` (with ``activations="int8"`` also
        ``model.int8.onnx`` and ``predictions/int8.csv``), ``audit.{md,json,png}``, ``README.md`` (the
        model card), ``run.json``.

    Raises:
        ValueError: ``out`` holds a run with other inputs; a dataset without ``train``/``test``.
    """
    from fq_data import IMAGENET_MEAN, IMAGENET_STD, dataset_info, is_semisynthetic, make_loaders
    from fq_fairmetrics import Predictions
    from fq_fairmetrics.torch import model_cost
    from fq_quant import (
        ScopeLayout,
        container_avg_bits,
        current_assignment,
        export_onnx,
        export_packed,
        ort_session,
    )

    t0 = time.perf_counter()
    config = config or CompressConfig()
    about = dict(about or {})
    class_names, group_names = dataset_info(dataset_dict)
    about.setdefault("data", {})
    about["data"] = {
        **about["data"],
        "semisynthetic": bool(is_semisynthetic(dataset_dict)),
        "n_train": len(dataset_dict["train"]),
        "n_test": len(dataset_dict["test"]),
        "class_names": list(class_names),
        "group_names": list(group_names),
    }
    folder = RunFolder(out, {"config": config.fingerprint_fields(), **about})
    device = _device(config)
    loaders = make_loaders(
        dataset_dict,
        image_size=config.image_size,
        batch_size=config.batch_size,
        train=True,
        seed=config.seed,
    )
    ids = np.asarray([str(i) for i in dataset_dict["test"]["id"]])
    names = {"class_names": class_names, "group_names": group_names}
    int8 = config.activations == "int8"
    steps = 9 if int8 else 7
    redo = False  # a step redone makes every later one stale

    def todo(i: int, step: str, what: str) -> bool:
        nonlocal redo
        if not redo and folder.done(step) is not None:
            logger.info("[%d/%d] %s: done before, kept", i, steps, what)
            return False
        logger.info("[%d/%d] %s ...", i, steps, what)
        redo = True
        return True

    fp32 = copy.deepcopy(model).to(device)
    if todo(1, "fp32", "FP32 predictions on the test split"):
        _predict(fp32, loaders.test, ids, folder.path(PREDICTIONS["fp32"]), **names)
        folder.finish("fp32", files=[PREDICTIONS["fp32"]])

    packed = folder.path(PACKED)
    if todo(2, "quantize", f"{config.method} to {config.budget} bits per weight"):
        quantized, info = _quantize(fp32, loaders, config, device)
        export_packed(quantized.cpu(), packed)
        folder.finish("quantize", files=[PACKED], **info)
    quantized = _load_quantized(model, packed)
    cost = model_cost(quantized, torch.zeros(1, 3, config.image_size, config.image_size))

    if todo(3, "fake_quant", "fake-quantized model (from the packed file): predictions"):
        _predict(quantized, loaders.test, ids, folder.path(PREDICTIONS["fake_quant"]), **names)
        folder.finish("fake_quant", files=[PREDICTIONS["fake_quant"]])

    onnx = folder.path(ONNX)
    if todo(4, "onnx", "ONNX export with integer weights"):
        export_onnx(
            quantized,
            torch.zeros(1, 3, config.image_size, config.image_size),
            onnx,
            class_names=[str(c) for c in class_names],
            normalization={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            packed=packed,
        )
        folder.finish("onnx", files=[ONNX])

    if todo(5, "onnx_predictions", "ONNX Runtime predictions of model.onnx"):
        session = ort_session(onnx, threads=torch.get_num_threads())
        _predict(session, loaders.test, ids, folder.path(PREDICTIONS["onnx"]), **names)
        folder.finish("onnx_predictions", files=[PREDICTIONS["onnx"]])

    int8_path = folder.path(INT8) if int8 else None
    if int8_path is not None:
        balanced = "group-balanced " if config.group_balanced else ""
        if todo(6, "int8", f"ONNX export with int8 activations ({balanced}{config.estimator})"):
            export_onnx(
                quantized,
                torch.zeros(1, 3, config.image_size, config.image_size),
                int8_path,
                activations="int8",
                calibration=_calibration_batches(dataset_dict, config),
                estimator=config.estimator,  # type: ignore[arg-type]
                group_balanced=config.group_balanced,
                class_names=[str(c) for c in class_names],
                normalization={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
                packed=packed,
            )
            folder.finish("int8", files=[INT8])
        if todo(7, "int8_predictions", "ONNX Runtime predictions of model.int8.onnx"):
            session = ort_session(int8_path, threads=torch.get_num_threads(), exact=False)
            _predict(session, loaders.test, ids, folder.path(PREDICTIONS["int8"]), **names)
            folder.finish("int8_predictions", files=[PREDICTIONS["int8"]])

    tables = {
        k: Predictions.load(folder.path(v)) for k, v in PREDICTIONS.items() if k != "int8" or int8
    }
    if todo(steps - 1, "audit", f"audit at a margin of {config.margin} points"):
        audit = run_audit(
            tables,
            margin=config.margin,
            confidence=config.confidence,
            class_names=class_names,
            group_names=group_names,
            plot_path=folder.path("audit.png"),
        )
        audit.write(folder.out)
        folder.finish("audit", files=["audit.json", "audit.md", "audit.png"])
    else:
        audit = Audit.read(folder.out)

    card = folder.path("README.md")
    assignment = current_assignment(quantized)
    container_bits = container_avg_bits(
        assignment, ScopeLayout.from_model(quantized, assignment.granularity)
    )
    if todo(steps, "card", "model card README.md"):
        facts = CardFacts(
            config=config,
            about=about,
            avg_bits=cost.avg_bits,
            container_bits=container_bits,
            size_bytes=packed.stat().st_size,
            onnx_bytes=onnx.stat().st_size,
            int8_bytes=int8_path.stat().st_size if int8_path is not None else None,
            gbops=cost.gbops,
            fp32_gbops=model_cost(
                model, torch.zeros(1, 3, config.image_size, config.image_size)
            ).gbops,
        )
        write_card(card, facts, audit)
        folder.finish("card", files=["README.md"])
    seconds = time.perf_counter() - t0
    logger.info("done in %.0f s: %s", seconds, folder.out)
    return CompressResult(
        out=folder.out,
        packed=packed,
        onnx=onnx,
        card=card,
        audit=audit,
        avg_bits=cost.avg_bits,
        size_bytes=packed.stat().st_size,
        gbops=cost.gbops,
        seconds=seconds,
        container_bits=container_bits,
        int8=int8_path,
    )
