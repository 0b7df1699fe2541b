"""One cell: its seed and fingerprint, its run from the FP32 state, its result, its ONNX file."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ._cells import CellKey, atomic_write_bytes, read_cell_fingerprints, stable_seed
from ._checkpoints import CalibrationCache, fresh_model, weights_source, with_data, with_weights
from ._config import GridConfig
from ._evaluation import evaluate
from ._methods import METHODS, CellContext, MethodOutput
from ._names import DATASET_LABELS, METHOD_LABELS, MODEL_LABELS
from ._processes import is_main_process, seed_everything

if TYPE_CHECKING:
    from ._data import DataBundle

logger = logging.getLogger("fq_bench.grid")

#: Bumped when the same config computes different cell numbers, so that older cell files are
#: recomputed rather than mixed in.
CELL_VERSION = 3


def cell_seed(key: CellKey) -> int:
    """The training seed of ``key``: one per (dataset, model, seed), shared by every method,
    budget and ablation value (common random numbers for paired comparisons)."""
    return stable_seed("cell", key.dataset, key.model, key.seed)


def cell_fingerprint(config: GridConfig, model_name: str, content: str | None = None) -> str:
    """What a cell file of ``model_name`` under ``config`` must carry to be reused, on a dataset
    whose content fingerprint is ``content`` (``DataBundle.content``; ``None``: semi-synthetic
    data, whose cells keep the fingerprint of the config alone)."""
    fp = hashlib.sha256(f"{config.fingerprint()}:cell-v{CELL_VERSION}".encode()).hexdigest()[:16]
    return with_data(with_weights(fp, config, model_name), content)


def fingerprint_key(dataset: str, model_name: str, content: str | None) -> str:
    """The key of a cell fingerprint in ``config.json``'s ``cell_fingerprints``: the model for
    semi-synthetic data (as before the data's content counted), ``"<dataset>/<model>"`` for data
    read from a source (each dataset's content gives its own fingerprint)."""
    return model_name if content is None else f"{dataset}/{model_name}"


def apply_override(config: GridConfig, key: CellKey) -> GridConfig:
    """``config`` with ``key``'s ablation override (``(field, value)``) applied, if it has one."""
    ov = key.override
    return config if ov is None else config.replace(**{ov[0]: ov[1]})


def export_cell_onnx(
    model: torch.nn.Module, key: CellKey, config: GridConfig, folder: Path
) -> Path | None:
    """``folder/<cell id>.onnx``: the quantized ``model`` with integer weights
    (``fq_quant.export_onnx``, batch dimension dynamic, input ``[N, 3, S, S]`` at the config's
    image size). An existing file is complete (atomic write) and kept, so a re-run resumes; a model
    the exporter refuses is logged and skipped, never fails the cell."""
    from fq_quant import export_onnx

    path = folder / f"{key.id}.onnx"
    if path.exists():
        return path
    x = torch.zeros(1, 3, config.image_size, config.image_size)
    try:
        return export_onnx(model, x, path)
    except (ValueError, TypeError, NotImplementedError, RuntimeError) as exc:
        logger.warning("cell %s: ONNX export skipped: %s", key.id, exc)
        return None


def run_cell(
    key: CellKey,
    config: GridConfig,
    data: DataBundle,
    state: dict[str, torch.Tensor],
    calibration: CalibrationCache,
    device: torch.device,
    *,
    progress: bool = False,
    export_dir: Path | None = None,
    export_int8: bool = False,
    method: Callable[[CellContext], MethodOutput] | None = None,
) -> dict[str, Any]:
    """Run one cell from the FP32 state; returns the JSON-able result.

    ``method`` replaces the cell's method runner (default ``METHODS[key.method]``): the
    rehearsal's allocation-only check (:func:`fq_bench.grid._methods.allocation_only`).

    With ``export_dir``, a quantized cell's model is also written there as ONNX with integer
    weights (:func:`export_cell_onnx`), with its packed file and sizes; ``export_int8`` adds the
    integer-activation file and its per-group audit (``fq_bench.grid._exports``).

    Under several processes every process trains (the trainers split each batch over them), but
    only the main process evaluates, on the whole test split, and the others return ``{}``.
    """
    cfg = apply_override(config, key)
    s = cell_seed(key)
    seed_everything(s)
    t0 = time.perf_counter()
    model = fresh_model(cfg, key.model, data, pretrained=False)
    model.load_state_dict(state)
    model.to(device)
    ctx = CellContext(
        config=cfg,
        model=model,
        train_loader=data.reseed(s),
        calibration=calibration,
        privileged_binary=data.privileged_binary,
        seed=s,
        budget=key.budget_bits,
        progress=progress,
        n_groups=len(data.loaders.group_names),
    )
    out = (method or METHODS[key.method])(ctx)
    if not is_main_process():
        return {}
    result = evaluate(out, data, cfg, device)
    if export_dir is not None and out.assignment is not None:
        from ._exports import export_cell_files

        fp32 = fresh_model(cfg, key.model, data, pretrained=False)
        fp32.load_state_dict(state)
        export_cell_files(out.model, fp32, key, cfg, data, export_dir, int8=export_int8)
    result.update(
        {
            "labels": {
                "dataset": DATASET_LABELS.get(key.dataset, key.dataset),
                "model": MODEL_LABELS.get(key.model, key.model),
                "method": METHOD_LABELS[key.method],
            },
            "target_bits": key.budget_bits,
            "history": list(out.history),
            "info": dict(out.info),
            "data": {
                "source": data.source,
                "semisynthetic": data.semisynthetic,
                "n_train": data.n_train,
                "n_test": data.n_test,
                "content_sha256": data.content,
                "image_size": cfg.image_size,
            },
            # where the FP32 model started: None = random init (or timm's hub weights when
            # config.pretrained), else the --weights file and its sha256
            "weights": weights_source(cfg, key.model),
            "seconds": time.perf_counter() - t0,
        }
    )
    return result


def check_cells(config: GridConfig, cells: Iterable[CellKey]) -> None:
    """Raise ``ValueError`` naming the cell for any cell whose configuration (its ablation
    override, fine-tune config, palette, budget, FQ-BAQ warm start) would fail, before any data
    is loaded or model trained."""
    from ._methods import check_method_config

    seen: set[tuple[str, str, str]] = set()
    for key in cells:
        sig = (key.method, key.variant, key.budget)
        if sig in seen:
            continue
        seen.add(sig)
        try:
            check_method_config(apply_override(config, key), key.method, key.budget_bits)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"cell {key.id}: {exc}") from None


def write_run_config(
    out: Path, config: GridConfig, content: dict[str, str | None] | None = None
) -> dict[str, str]:
    """Write ``out/config.json`` and return its ``cell_fingerprints`` (model, or
    ``"<dataset>/<model>"`` for data read from a source, -> the cell fingerprint the report uses
    for those cells; :func:`fingerprint_key`).

    ``content``: dataset -> its content fingerprint (``DataBundle.content``), also recorded under
    ``data``. The models of ``config`` take this config's (and data's) fingerprint; other models
    and datasets keep the one an earlier run recorded (the paper's ViTs run as a second invocation
    with other FP32 epochs). A table only ever holds cells of one config and one version of the
    data per (dataset, model) (see :func:`select_config`).
    """
    content = content or {}
    merged = dict(read_cell_fingerprints(out) or {})
    merged.update({m: cell_fingerprint(config, m) for m in config.models})
    merged.update(
        {
            fingerprint_key(d, m, fp): cell_fingerprint(config, m, fp)
            for d, fp in content.items()
            if fp is not None
            for m in config.models
        }
    )
    from ._notes import run_notes

    meta = {
        # the notes derived from this run (a preset's notes only while they describe it)
        "config": {**config.to_dict(), "notes": list(run_notes(config))},
        "fingerprint": config.fingerprint(),
        "cell_fingerprints": dict(sorted(merged.items())),
        "data": {
            d: {"source": config.data_source(d), "content_sha256": fp, "images": "content"}
            for d, fp in sorted(content.items())
            if fp is not None
        },
    }
    atomic_write_bytes(out / "config.json", json.dumps(meta, indent=1, default=str).encode())
    return merged
