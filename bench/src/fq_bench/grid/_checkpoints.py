"""What a run keeps between cells and runs: FP32 checkpoints, calibrations, the weights' digest.

Each artifact carries the fingerprint of the config fields it depends on, extended by the
``--weights`` file's digest and, for data read from a source, the dataset's content fingerprint,
so a stale one (another config, weights file or version of the data) is recomputed, never mixed in.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ._artifacts import load_group_importance, load_tensors, save_checkpoint, save_group_importance
from ._cells import stable_seed
from ._config import CALIBRATION_FIELDS, FP32_FIELDS
from ._data import Batches, RemapGroups, grouping_map
from ._models import build_model
from ._processes import barrier, broadcast, is_main_process, seed_everything
from ._progress import progress_mode

if TYPE_CHECKING:
    from ._config import GridConfig
    from ._data import DataBundle


@dataclass(frozen=True, kw_only=True)
class RunPaths:
    """Where a results folder ``root`` keeps its FP32 checkpoints and calibrations."""

    root: Path

    def checkpoint(self, dataset: str, model: str, seed: int) -> Path:
        return self.root / "checkpoints" / f"{dataset}__{model}__s{seed}.safetensors"

    def calibration(self, dataset: str, model: str, seed: int, grouping: str) -> Path:
        return (
            self.root / "calibration" / f"{dataset}__{model}__s{seed}__grape-{grouping}.safetensors"
        )


def fresh_model(
    config: GridConfig, name: str, data: DataBundle, *, pretrained: bool
) -> torch.nn.Module:
    """A new ``name`` model for ``data``'s classes at the config's image size (random init, or
    ImageNet weights when ``pretrained``)."""
    return build_model(
        name,
        num_classes=data.loaders.num_classes,
        image_size=config.image_size,
        pretrained=pretrained,
        weights_dir=config.weights_dir,
    )


_DIGESTS: dict[tuple[str, int, int], str] = {}


def weights_source(config: GridConfig, model_name: str) -> dict[str, str] | None:
    """``{"file", "sha256"}`` of the ``--weights`` file ``model_name`` starts from, else ``None``.

    The digest is of the file's bytes (memoized per path, size and mtime), so replacing a weights
    file under the same name makes every checkpoint, calibration and cell built on it stale.
    """
    if not (config.pretrained and config.weights_dir):
        return None
    from ._models import weights_file

    path = weights_file(config.weights_dir, model_name).resolve()
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[memo] = h.hexdigest()
    return {"file": str(path), "sha256": _DIGESTS[memo]}


def with_weights(fingerprint: str, config: GridConfig, model_name: str) -> str:
    """``fingerprint`` extended by the weights file's digest (unchanged without ``--weights``)."""
    src = weights_source(config, model_name)
    if src is None:
        return fingerprint
    return hashlib.sha256(f"{fingerprint}:{src['sha256']}".encode()).hexdigest()[:16]


def with_data(fingerprint: str, content: str | None) -> str:
    """``fingerprint`` extended by a dataset's content fingerprint (``DataBundle.content``);
    unchanged for semi-synthetic data (``None``), whose content the config's fields determine, so
    the default run's checkpoints, calibrations and cells keep their fingerprints."""
    if content is None:
        return fingerprint
    return hashlib.sha256(f"{fingerprint}:data:{content}".encode()).hexdigest()[:16]


def fp32_state(
    config: GridConfig, paths: RunPaths, data: DataBundle, model_name: str, seed: int
) -> dict[str, torch.Tensor]:
    """The FP32 reference weights for (dataset, model, seed): loaded, or trained and saved."""
    from fq_baq import BAQConfig, FP32Trainer

    fp = with_data(with_weights(config.fingerprint(FP32_FIELDS), config, model_name), data.content)
    path = paths.checkpoint(data.name, model_name, seed)
    got = load_tensors(path, fingerprint=fp) if is_main_process() else None
    got = broadcast(got)
    if got is not None:
        return got[0]
    s = stable_seed("fp32", data.name, model_name, seed)
    seed_everything(s)
    model = fresh_model(config, model_name, data, pretrained=config.pretrained)
    cfg = BAQConfig(
        lr=config.lr_fp32,
        weight_decay=config.weight_decay,
        epochs=config.fp32_epochs,
        lambda_fair=0.0,
        lr_schedule="cosine",
        mixed_precision=config.mixed_precision,
        seed=s,
        cpu=config.cpu,
        progress=progress_mode(config) == "bars",
    )
    t0 = time.perf_counter()
    res = FP32Trainer(model, cfg).fit(data.reseed(s))
    state = {k: v.detach().cpu() for k, v in res.model.state_dict().items()}
    # DDP keeps the parameters equal on every process, but not the BatchNorm running statistics
    # (each process updates them from its own share of the last batch): every process continues
    # from the main process's state, the one saved below.
    state = broadcast(state)
    if is_main_process():
        info = {
            "dataset": data.name,
            "model": model_name,
            "seed": seed,
            "epochs": config.fp32_epochs,
            "seconds": time.perf_counter() - t0,
            "final_task_loss": res.history[-1].task_loss,
            "weights": weights_source(config, model_name),
            "data_content": data.content,
        }
        save_checkpoint(path, res.model, fingerprint=fp, info=info)
    barrier()
    return state


class CalibrationCache:
    """``grape`` calibration of one FP32 model per grouping: memory, then disk, then computed."""

    def __init__(
        self,
        config: GridConfig,
        paths: RunPaths,
        data: DataBundle,
        model_name: str,
        seed: int,
        state: dict[str, torch.Tensor],
        device: torch.device,
    ):
        self.config, self.paths, self.data = config, paths, data
        self.model_name, self.seed, self.state, self.device = model_name, seed, state, device
        self.memory: dict[str, Any] = {}

    def __call__(self, grouping: str) -> Any:
        if grouping in self.memory:
            return self.memory[grouping]
        grouping_map(self.data, grouping)  # an unknown grouping fails before any work

        fp = with_data(
            with_weights(self.config.fingerprint(CALIBRATION_FIELDS), self.config, self.model_name),
            self.data.content,
        )
        path = self.paths.calibration(self.data.name, self.model_name, self.seed, grouping)
        gi = load_group_importance(path, fingerprint=fp) if is_main_process() else None
        gi = broadcast(gi)
        if gi is None:
            # computed by the main process alone and broadcast: every process must allocate the
            # same bits, or DDP would average gradients of differently quantized models
            gi = self._compute(grouping, path, fp) if is_main_process() else None
            gi = broadcast(gi)
        self.memory[grouping] = gi
        return gi

    def _compute(self, grouping: str, path: Path, fp: str) -> Any:
        s = stable_seed("calib", self.data.name, self.model_name, self.seed, grouping)
        # calibration draws from the same train loader as the cell that asked for it: put the
        # loader's seed and epoch back afterwards, or that cell (and only it, on the process that
        # calibrated) would train on the calibration's shuffle, so its numbers would depend on
        # whether the calibration was computed here or loaded
        sampler = self.data.loaders.train.batch_sampler
        saved = (sampler.seed, sampler.epoch)
        try:
            gi = self._calibrate(grouping, s)
        finally:
            sampler.seed = saved[0]
            sampler.set_epoch(saved[1])
        save_group_importance(path, gi, fingerprint=fp, extra={"grouping": grouping})
        return gi

    def _calibrate(self, grouping: str, s: int) -> Any:
        from fq_importance import calibrate

        with torch.random.fork_rng(devices=[]):
            seed_everything(s)
            model = fresh_model(self.config, self.model_name, self.data, pretrained=False)
            model.load_state_dict(self.state)
            model.to(self.device)
            loader: Any = self.data.reseed(s)
            mapping = grouping_map(self.data, grouping)
            if mapping is not None:
                loader = RemapGroups(loader, mapping)
            gi = calibrate(
                model,
                Batches(loader, self.config.calib_batches),
                metric="grape",
                batches=self.config.calib_batches,
                device=self.device,
                progress=False,
            )
        return gi
