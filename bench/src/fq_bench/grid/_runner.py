"""Run the grid: load each dataset once, train/reuse FP32 checkpoints, run and store each cell.

Reproducibility: every cell seeds the global RNGs, the loader and its trainer from
:func:`cell_seed`, so its numbers do not depend on which cells ran before it in the process (or in
which shard). The seed depends on (dataset, model, seed) alone: every fine-tune of one seed sees the
same batches in the same order with the same augmentation (common random numbers), so a paired
difference between two methods measures the methods, not two different data orders. Under ``accelerate launch`` every process runs every cell together (the
trainers use all GPUs); only the main process writes files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from ._artifacts import (
    load_group_importance,
    load_tensors,
    save_checkpoint,
    save_group_importance,
)
from ._cells import (
    CellKey,
    CellStore,
    atomic_write_bytes,
    canonical_key,
    grid_cells,
    read_cell_fingerprints,
    shard_cells,
    stable_seed,
)
from ._config import (
    CALIBRATION_FIELDS,
    DATASET_LABELS,
    FP32_FIELDS,
    METHOD_LABELS,
    MODEL_LABELS,
    GridConfig,
)
from ._methods import METHODS, CellContext, MethodOutput
from ._models import build_model

if TYPE_CHECKING:
    from fq_data import SynthName

logger = logging.getLogger("fq_bench.grid")


# -- processes ------------------------------------------------------------------------------------
def _state():
    from accelerate import PartialState

    return PartialState()


def init_processes(config: GridConfig) -> None:
    """Initialize accelerate's process state before anything else asks for it.

    On a machine without CUDA, accelerate only joins the processes of a ``torchrun`` /
    ``accelerate launch --multi_gpu`` launch (gloo) when the state is created with ``cpu=True``;
    created without it, every process believes it is alone and the main process, so all of them
    would write every file. Raises ``RuntimeError`` when the launcher started several processes
    (``WORLD_SIZE``) but accelerate did not join them.
    """
    import os

    from accelerate import PartialState

    state = PartialState(cpu=bool(config.cpu) or not torch.cuda.is_available())
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and state.num_processes != launched:
        raise RuntimeError(
            f"the launcher started WORLD_SIZE={launched} processes but accelerate joined "
            f"{state.num_processes} ({state.distributed_type}); on CPU launch with "
            "`accelerate launch --multi_gpu --num_processes N` or `torchrun --nproc_per_node N`"
        )


def is_main_process() -> bool:
    return _state().is_main_process


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _barrier() -> None:
    if _distributed():
        _state().wait_for_everyone()


def _broadcast(obj: Any) -> Any:
    """``obj`` as the main process has it (identity outside ``accelerate launch``)."""
    if not _distributed():
        return obj
    from accelerate.utils import broadcast_object_list

    box = [obj]
    broadcast_object_list(box, from_process=0)
    return box[0]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- data -----------------------------------------------------------------------------------------
def binary_grouping(group_names: tuple[str, ...]) -> tuple[list[int], tuple[str, str]]:
    """Map the dataset's groups onto two (``-1`` = left out) for the subtractive reducer.

    Fitzpatrick types ``1``-``3`` -> 0 and ``4``-``6`` -> 1; ISIC ``female`` -> 0, ``male`` -> 1,
    other (unknown sex) -> -1; a dataset with two groups keeps them.
    """
    names = [str(n) for n in group_names]
    if names and set(names) <= {"1", "2", "3", "4", "5", "6"}:
        return [0 if int(n) <= 3 else 1 for n in names], ("1-3", "4-6")
    if "female" in names and "male" in names:
        return [{"female": 0, "male": 1}.get(n, -1) for n in names], ("female", "male")
    if len(names) == 2:
        return [0, 1], (names[0], names[1])
    raise ValueError(f"no binary grouping known for groups {names}; Guo et al. needs two groups")


def grouping_map(data: DataBundle, grouping: str) -> list[int] | None:
    """Group id -> calibration group for ``grouping``: ``"type"`` keeps the dataset's groups
    (``None``), ``"binary"`` maps onto two (:func:`binary_grouping`), ``"pooled"`` puts every
    sample in group 0 (the group-blind control's one pooled loss)."""
    if grouping == "type":
        return None
    if grouping == "binary":
        return data.binary_map
    if grouping == "pooled":
        return [0] * len(data.loaders.group_names)
    raise ValueError(f"grouping={grouping!r} is invalid; allowed: 'type', 'binary', 'pooled'")


class RemapGroups:
    """A loader whose group ids go through ``mapping`` (rows mapped to -1 are dropped)."""

    def __init__(self, loader: Any, mapping: list[int]):
        self.loader, self.mapping = loader, torch.tensor(mapping, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for x, y, g in self.loader:
            gb = self.mapping[g]
            keep = gb >= 0
            if not bool(keep.all()):
                x, y, gb = x[keep], y[keep], gb[keep]
            if len(gb):
                yield x, y, gb


class Batches:
    """``n`` batches from ``loader``, running over as many epochs as needed (calibration)."""

    def __init__(self, loader: Any, n: int):
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Any]:
        seen = 0
        while seen < self.n:
            for batch in self.loader:
                yield batch
                seen += 1
                if seen == self.n:
                    return


@dataclass(kw_only=True)
class DataBundle:
    """One dataset, loaded and decoded once per process, with its loaders."""

    name: str
    source: str
    loaders: Any
    semisynthetic: bool
    n_train: int
    n_test: int
    binary_map: list[int]
    binary_names: tuple[str, str]
    privileged_binary: int

    def reseed(self, seed: int) -> Any:
        """The train loader, its shuffling and augmentation reset to ``seed`` at epoch 0."""
        sampler = self.loaders.train.batch_sampler
        sampler.seed = int(seed)
        sampler.set_epoch(0)
        return self.loaders.train


def load_data(config: GridConfig, dataset: str) -> DataBundle:
    """Load ``dataset`` (semi-synthetic unless a source is configured) and build its loaders."""
    from fq_data import is_semisynthetic, make_loaders

    source = config.data_source(dataset)
    label_col = config.label_column(dataset)
    if source == "semisynthetic":
        from fq_data import load_semisynthetic

        dd = load_semisynthetic(
            cast("SynthName", dataset),  # GridConfig.__post_init__ checked the name
            n=config.n_images,
            image_size=config.image_size,
            seed=0,
            test_fraction=config.test_fraction,
            label_col=label_col,
            min_test_per_group=config.min_test_per_group,
        )
    elif config.is_custom(dataset):
        from fq_data import load_dataset

        cols = config.custom_columns(dataset)
        dd = load_dataset(
            source,
            seed=0,
            test_fraction=config.test_fraction,
            image_col=cols["image_col"],
            label_col=cols["label_col"],
            group_col=cols["group_col"],
        )
    elif dataset == "fitzpatrick17k":
        from fq_data import load_fitzpatrick17k

        dd = load_fitzpatrick17k(
            source, seed=0, test_fraction=config.test_fraction, label_col=label_col or "label"
        )
    else:
        from fq_data import load_isic2019

        dd = load_isic2019(source, seed=0, test_fraction=config.test_fraction, label_col=label_col)
    loaders = make_loaders(
        dd, image_size=config.image_size, batch_size=config.batch_size, train=True, seed=0
    )
    train_groups = torch.as_tensor(np.asarray(dd["train"]["group"], dtype=np.int64))
    try:
        mapping, names = binary_grouping(loaders.group_names)
    except ValueError:  # any other groups (a user's own): the largest against the rest
        sizes = torch.bincount(train_groups, minlength=len(loaders.group_names))
        top = int(sizes.argmax())
        mapping = [1 if k == top else 0 for k in range(len(loaders.group_names))]
        names = ("rest", str(loaders.group_names[top]))
    binary = torch.tensor(mapping)[train_groups]
    counts = [int((binary == k).sum()) for k in (0, 1)]
    return DataBundle(
        name=dataset,
        source=source,
        loaders=loaders,
        semisynthetic=is_semisynthetic(dd),
        n_train=len(dd["train"]),
        n_test=len(dd["test"]),
        binary_map=mapping,
        binary_names=names,
        privileged_binary=int(counts[1] > counts[0]),
    )


# -- evaluation -----------------------------------------------------------------------------------
#: Metrics that get a per-cell stratified bootstrap interval (``result["bootstrap"]``).
BOOTSTRAP_METRICS: tuple[str, ...] = ("worst_acc", "avg_acc", "gap")


@torch.no_grad()
def predict(model: torch.nn.Module, loader: Any, device: torch.device) -> tuple[np.ndarray, ...]:
    """``(labels [N], predictions [N], groups [N])`` over ``loader`` in eval mode.

    A fake-quantized model's weights are quantized once for the whole pass
    (``torch.nn.utils.parametrize.cached``), not once per batch: the same weights, computed once.
    """
    from torch.nn.utils import parametrize

    model.eval()
    ys, ps, gs = [], [], []
    with parametrize.cached():
        for x, y, g in loader:
            ps.append(model(x.to(device)).argmax(1).cpu())
            ys.append(y)
            gs.append(g)
    return tuple(torch.cat(t).numpy() for t in (ys, ps, gs))


def evaluate(
    out: MethodOutput, data: DataBundle, config: GridConfig, device: torch.device
) -> dict[str, Any]:
    """Fairness and cost of ``out.model`` on the test split (METHOD.md sections 7 and 8)."""
    from fq_fairmetrics import cost_report, group_report
    from fq_fairmetrics.torch import layer_costs
    from fq_quant import BitAssignment, Granularity, ScopeLayout, packed_size

    model = out.model
    y, p, g = predict(model, data.loaders.test, device)
    n_groups = len(data.loaders.group_names)
    kw: dict[str, Any] = {
        "sensitive_features": g,
        "n_classes": data.loaders.num_classes,
        "group_names": list(range(n_groups)),
    }
    rep = group_report(y, p, **kw)
    bootstrap: dict[str, list[float]] = {}
    if config.bootstrap_resamples > 0:
        from fq_fairmetrics import bootstrap_ci

        ci = bootstrap_ci(y, p, n_resamples=config.bootstrap_resamples, seed=0, **kw)
        bootstrap = {m: [ci.low[m], ci.high[m]] for m in BOOTSTRAP_METRICS}
    x = torch.zeros(1, 3, config.image_size, config.image_size, device=device)
    layers = layer_costs(model, x, out.assignment)
    cost = cost_report(layers)
    layout = ScopeLayout.from_model(model, Granularity.CHANNEL)
    # the size of what fq_quant.export_packed writes for this model (header, BatchNorm buffers and
    # every float tensor included); FP32 is the same file with every weight at 32 bits
    bits = out.assignment if out.assignment is not None else BitAssignment.uniform(layout, 32)
    size_bytes = packed_size(model, bits)
    layer_bits: list[list[Any]] = []
    if out.assignment is not None:
        layer_bits = [
            [name, float(b.to(torch.float64).mean()), int(layout[name].num_params)]
            for name, b in out.assignment.bits.items()
        ]
    return {
        "metrics": rep.metrics(),
        "overall_acc": rep.overall_acc,
        "group_names": [str(n) for n in data.loaders.group_names],
        "group_acc": [float(a) for a in rep.group_acc],
        "group_n": [int(n) for n in rep.group_n],
        "cost": {
            "avg_bits": cost.avg_bits,
            "gbops": cost.gbops,
            "paper_gops": cost.paper_gops,
            "size_bytes": size_bytes,
            "macs": cost.macs,
            "n_params": cost.n_params,
        },
        "layer_bits": layer_bits,
        "bit_histogram": {}
        if out.assignment is None
        else {str(k): v for k, v in out.assignment.histogram().items()},
        # per-group percentile interval over resamples of the test images within each group
        "bootstrap": {"n_resamples": config.bootstrap_resamples, "confidence": 0.95, **bootstrap},
        # the test split's labels and groups (the same for every cell of a dataset) and this
        # cell's predictions, so any interval or paired statistic can be recomputed from the cell
        "test": {"labels": y.tolist(), "groups": g.tolist(), "predictions": p.tolist()},
    }


# -- artifacts ------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class RunPaths:
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


#: Bumped when the same config computes different cell numbers, so that older cell files are
#: recomputed rather than mixed in.
CELL_VERSION = 3


def cell_seed(key: CellKey) -> int:
    """The training seed of ``key``: one per (dataset, model, seed), shared by every method,
    budget and ablation value (common random numbers for paired comparisons)."""
    return stable_seed("cell", key.dataset, key.model, key.seed)


def cell_fingerprint(config: GridConfig, model_name: str) -> str:
    """What a cell file of ``model_name`` under ``config`` must carry to be reused."""
    fp = hashlib.sha256(f"{config.fingerprint()}:cell-v{CELL_VERSION}".encode()).hexdigest()[:16]
    return with_weights(fp, config, model_name)


def with_weights(fingerprint: str, config: GridConfig, model_name: str) -> str:
    """``fingerprint`` extended by the weights file's digest (unchanged without ``--weights``)."""
    src = weights_source(config, model_name)
    if src is None:
        return fingerprint
    return hashlib.sha256(f"{fingerprint}:{src['sha256']}".encode()).hexdigest()[:16]


def fp32_state(
    config: GridConfig, paths: RunPaths, data: DataBundle, model_name: str, seed: int
) -> dict[str, torch.Tensor]:
    """The FP32 reference weights for (dataset, model, seed): loaded, or trained and saved."""
    from fq_baq import BAQConfig, FP32Trainer

    fp = with_weights(config.fingerprint(FP32_FIELDS), config, model_name)
    path = paths.checkpoint(data.name, model_name, seed)
    got = load_tensors(path, fingerprint=fp) if is_main_process() else None
    got = _broadcast(got)
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
    state = _broadcast(state)
    if is_main_process():
        info = {
            "dataset": data.name,
            "model": model_name,
            "seed": seed,
            "epochs": config.fp32_epochs,
            "seconds": time.perf_counter() - t0,
            "final_task_loss": res.history[-1].task_loss,
            "weights": weights_source(config, model_name),
        }
        save_checkpoint(path, res.model, fingerprint=fp, info=info)
    _barrier()
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

        fp = with_weights(self.config.fingerprint(CALIBRATION_FIELDS), self.config, self.model_name)
        path = self.paths.calibration(self.data.name, self.model_name, self.seed, grouping)
        gi = load_group_importance(path, fingerprint=fp) if is_main_process() else None
        gi = _broadcast(gi)
        if gi is None:
            # computed by the main process alone and broadcast: every process must allocate the
            # same bits, or DDP would average gradients of differently quantized models
            gi = self._compute(grouping, path, fp) if is_main_process() else None
            gi = _broadcast(gi)
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


# -- cells ----------------------------------------------------------------------------------------
def apply_override(config: GridConfig, key: CellKey) -> GridConfig:
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
) -> dict[str, Any]:
    """Run one cell from the FP32 state; returns the JSON-able result.

    With ``export_dir``, a quantized cell's model is also written there as ONNX with integer
    weights (:func:`export_cell_onnx`).

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
    out = METHODS[key.method](ctx)
    if not is_main_process():
        return {}
    result = evaluate(out, data, cfg, device)
    if export_dir is not None and out.assignment is not None:
        export_cell_onnx(out.model, key, cfg, export_dir)
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
                "image_size": cfg.image_size,
            },
            # where the FP32 model started: None = random init (or timm's hub weights when
            # config.pretrained), else the --weights file and its sha256
            "weights": weights_source(cfg, key.model),
            "seconds": time.perf_counter() - t0,
        }
    )
    return result


def progress_mode(config: GridConfig) -> str:
    """``"bars"`` (a terminal: a bar over cells and one over each training's epoch, redrawn in
    place), ``"lines"`` (output to a file or pipe: one plain line per finished step, no bars), or
    ``"off"`` (``progress=False``, or not the main process)."""
    if not config.progress or not is_main_process():
        return "off"
    return "bars" if sys.stderr.isatty() else "lines"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _cell_line(done: int, total: int, key: CellKey, result: dict[str, Any], how: str) -> str:
    if not result:
        return f"[{done}/{total}] {key.id}: {how}"
    m, c = result["metrics"], result["cost"]
    return (
        f"[{done}/{total}] {key.id}: {how} in {result.get('seconds', 0.0):.1f} s, "
        f"WorstAcc {100 * m['worst_acc']:.1f}%, AvgAcc {100 * m['avg_acc']:.1f}%, "
        f"{c['avg_bits']:.2f} bits"
    )


@dataclass(kw_only=True)
class RunSummary:
    """What :func:`run_grid` did: cells in this shard, skipped (already done, or finished by a
    concurrent run while this one waited on its claim), computed, and failed (key, error)."""

    out: Path
    cells: list[CellKey]
    skipped: list[CellKey] = field(default_factory=list)
    computed: list[CellKey] = field(default_factory=list)
    failed: list[tuple[CellKey, str]] = field(default_factory=list)
    seconds: float = 0.0


#: Seconds between looks at cells another live run has claimed, once nothing else is left.
CLAIM_POLL_SECONDS = 5.0


def run_device(config: GridConfig) -> torch.device:
    # accelerate names the CPU ``cpu:0`` under a multi-process CPU launch, while tensors moved
    # there report plain ``cpu`` (and fq_importance.calibrate compares the two strictly)
    device = _state().device
    return torch.device("cpu") if config.cpu or device.type == "cpu" else device


def _finished_twin(
    store: CellStore, twins: Iterable[CellKey], fingerprints: dict[str, str]
) -> dict[str, Any] | None:
    """The stored result of a finished cell that computes the same thing, if one is readable."""
    for twin in twins:
        got = store.read(twin, fingerprint=fingerprints[twin.model])
        if got is not None:
            return got
    return None


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


class _Lazy:
    """A value computed on first use; an exception is kept and raised again on every use (an
    FP32 training that failed fails each of its cells, without training again)."""

    def __init__(self, make: Any):
        self.make, self.value = make, None
        self.error: Exception | None = None
        self.done = False

    def __call__(self) -> Any:
        if self.error is not None:
            raise self.error
        if not self.done:
            try:
                self.value = self.make()
            except Exception as exc:
                self.error = exc
                raise
            self.done = True
        return self.value


def write_run_config(out: Path, config: GridConfig) -> dict[str, str]:
    """Write ``out/config.json`` and return its ``cell_fingerprints`` (model -> the cell
    fingerprint the report uses for that model's cells).

    The models of ``config`` take this config's fingerprint; other models keep the one an
    earlier run recorded (the paper's ViTs run as a second invocation with other FP32 epochs).
    A table only ever holds cells of one config per model (see :func:`select_config`).
    """
    merged = dict(read_cell_fingerprints(out) or {})
    merged.update({m: cell_fingerprint(config, m) for m in config.models})
    meta = {
        "config": config.to_dict(),
        "fingerprint": config.fingerprint(),
        "cell_fingerprints": dict(sorted(merged.items())),
    }
    atomic_write_bytes(out / "config.json", json.dumps(meta, indent=1, default=str).encode())
    return merged


def run_grid(
    config: GridConfig,
    out: str | Path,
    *,
    shard: tuple[int, int] = (0, 1),
    fail_fast: bool = False,
    export: str | None = None,
) -> RunSummary:
    """Compute every missing cell of ``config`` (this shard's share) into ``out``.

    Finished cells (valid checksum, same config fingerprint) are skipped; FP32 checkpoints and
    calibrations under ``out`` are reused. Every cell's configuration is checked before anything
    is loaded (:func:`check_cells`). A cell is claimed before it is computed
    (``CellStore.claim``), so shards and duplicate launches into one folder share the work; a
    cell another live run holds is waited for at the end. A cell that raises is recorded under
    ``out/failed/`` and in ``RunSummary.failed`` and the other cells still run, unless
    ``fail_fast`` (or several processes, which must stay in step), where the error propagates.
    Does not build the report (see ``build_report``).
    """
    t_start = time.perf_counter()
    from ._models import check_pretrained_sources

    out = Path(out)
    if export not in (None, "onnx"):
        raise ValueError(f"export={export!r} is invalid; allowed: None, 'onnx'")
    export_dir = out / "onnx" if export == "onnx" else None
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out={str(out)!r} is a file; give a folder for the results")
    # before anything is loaded or trained: missing weights files, unreachable hub, bad cells
    check_pretrained_sources(
        config.models, pretrained=config.pretrained, weights_dir=config.weights_dir
    )
    cells = shard_cells(grid_cells(config), *shard)
    check_cells(config, cells)
    init_processes(config)
    fail_fast = fail_fast or _distributed()
    store, paths = CellStore(out), RunPaths(root=out)
    cell_fp = {m: cell_fingerprint(config, m) for m in config.models}
    done = (
        [c for c in cells if store.read(c, fingerprint=cell_fp[c.model]) is not None]
        if is_main_process()
        else None
    )
    done_ids = {c.id for c in _broadcast(done)}
    canon = {c.id: canonical_key(c, config).id for c in cells}
    # finished cells by the cell they compute (main process only: it alone reads the store)
    done_by_canon: dict[str, list[CellKey]] = {}
    for c in done or []:
        done_by_canon.setdefault(canon[c.id], []).append(c)
    memo: dict[str, dict[str, Any]] = {}  # canonical id -> result computed in this run
    todo = [c for c in cells if c.id not in done_ids]
    summary = RunSummary(out=out, cells=cells, skipped=[c for c in cells if c.id in done_ids])
    if is_main_process():
        write_run_config(out, config)
    device = run_device(config)
    mode = progress_mode(config)
    bar = tqdm(total=len(todo), desc="grid cells", unit="cell", disable=mode != "bars")
    if mode == "lines":
        _say(f"{len(todo)} cell(s) to compute, {len(summary.skipped)} already finished in {out}")

    def attempt(key: CellKey, calib: _Lazy, state: _Lazy, data: _Lazy) -> str:
        """Compute or reuse ``key``: ``"computed"``, ``"reused a finished twin"``,
        ``"finished by another run"``, ``"claimed"`` (another live run holds it) or ``"failed"``."""
        result = memo.get(canon[key.id])
        if result is None and is_main_process():
            result = _finished_twin(store, done_by_canon.get(canon[key.id], ()), cell_fp)
        # every process takes the same branch (run_cell trains on all of them)
        if _broadcast(result is not None):
            memo[canon[key.id]] = result or {}
            if is_main_process():
                store.write(key, result or {}, fingerprint=cell_fp[key.model])
            _barrier()
            return "reused a finished twin"
        got = store.claim(key) if is_main_process() else None
        if not _broadcast(got):
            return "claimed"
        try:
            # a concurrent run may have finished it between our first look and the claim
            fresh = is_main_process() and store.read(key, fingerprint=cell_fp[key.model])
            if _broadcast(fresh is not None and fresh is not False):
                return "finished by another run"
            result = run_cell(
                key,
                config,
                data(),
                state(),
                calib(),
                device,
                progress=mode == "bars",
                export_dir=export_dir,
            )
            memo[canon[key.id]] = result
            if is_main_process():
                store.write(key, result, fingerprint=cell_fp[key.model])
                store.clear_failure(key)
            _barrier()
            return "computed"
        except Exception as exc:
            # the data not loading is the run's error, not a cell's: every cell would repeat it
            if fail_fast or exc is data.error:
                raise
            logger.error("cell %s failed: %s: %s", key.id, type(exc).__name__, exc)
            store.write_failure(key, exc, fingerprint=cell_fp[key.model])
            summary.failed.append((key, f"{type(exc).__name__}: {exc}"))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return "failed"
        finally:
            if is_main_process():
                store.release(key)

    pending = todo
    while pending:
        waiting: list[CellKey] = []
        for dataset in dict.fromkeys(c.dataset for c in pending):

            def _load(dataset: str = dataset) -> DataBundle:
                # the main process first fills the on-disk data caches; the others then read them
                with _state().main_process_first():
                    return load_data(config, dataset)

            data = _Lazy(_load)
            for model_name, seed in dict.fromkeys(
                (c.model, c.seed) for c in pending if c.dataset == dataset
            ):

                def _fp32(
                    model_name: str = model_name, seed: int = seed, data: _Lazy = data
                ) -> Any:
                    bar.set_postfix_str(f"FP32 {model_name} seed {seed}")
                    t_fp32 = time.perf_counter()
                    st = fp32_state(config, paths, data(), model_name, seed)
                    if mode == "lines":
                        _say(
                            f"FP32 {data().name} {model_name} seed {seed}: ready "
                            f"({time.perf_counter() - t_fp32:.1f} s; trained or loaded)"
                        )
                    return st

                state = _Lazy(_fp32)
                calib = _Lazy(
                    lambda model_name=model_name, seed=seed, state=state, data=data: (
                        CalibrationCache(config, paths, data(), model_name, seed, state(), device)
                    )
                )
                for key in [
                    c
                    for c in pending
                    if (c.dataset, c.model, c.seed) == (dataset, model_name, seed)
                ]:
                    bar.set_postfix_str(key.id)
                    how = attempt(key, calib, state, data)
                    if how == "claimed":
                        waiting.append(key)
                        continue
                    if how == "finished by another run":
                        summary.skipped.append(key)
                    elif how != "failed":
                        summary.computed.append(key)
                    bar.update(1)
                    if mode == "lines":
                        n = len(summary.computed) + len(summary.failed)
                        _say(_cell_line(n, len(todo), key, memo.get(canon[key.id], {}), how))
        pending = []
        if waiting:
            # cells other live runs are computing: wait until they finish or their claim goes
            # stale (the owner died), then take those over
            time.sleep(CLAIM_POLL_SECONDS)
            finished = _broadcast(
                {k.id for k in waiting if store.read(k, fingerprint=cell_fp[k.model]) is not None}
                if is_main_process()
                else None
            )
            for key in waiting:
                if key.id in finished:
                    summary.skipped.append(key)
                    bar.update(1)
                else:
                    pending.append(key)
            if mode == "lines" and pending:
                _say(f"waiting for {len(pending)} cell(s) claimed by another run in {out}")
    bar.close()
    summary.seconds = time.perf_counter() - t_start
    return summary
