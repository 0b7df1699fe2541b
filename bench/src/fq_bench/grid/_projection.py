"""How many GPU-hours a grid costs: FLOPs per image x images each stage sees / an assumed GPU.

The arithmetic, per (dataset, model) and per seed, with ``F`` the FLOPs of one forward pass of one
image (:func:`model_flops`), ``N_train``/``N_test`` the split sizes and ``B`` the batch size:

- FP32 reference: ``fp32_epochs x floor(N_train / B) x B`` images, each ``3 F`` (forward plus a
  backward of about twice the forward: the gradients of the inputs and of the weights);
- calibration: ``calib_batches x B`` images per grouping the methods ask for, each ``3 F`` (one
  forward, one backward to the layer outputs, each group's weight gradients split from it);
- each training cell (``fp32-ft`` and the mixed-precision methods): ``epochs x floor(N_train / B)
  x B`` images, each ``3 F`` (fake quantization's element-wise work is not counted: a few FLOPs
  per weight and step against ``B x F``);
- each cell's evaluation: ``N_test`` images, each ``F``.

GPU-hours = total FLOPs / (``peak_tflops x utilisation x 1e12``) / 3600. The peak and the
utilisation are assumptions stated with the result (:data:`GPUS`), never inferred from a CPU run:
a CPU's time per step says nothing about a GPU's. A rehearsal on a GPU measures the utilisation it
actually reached (FLOPs of its steps / their time), which can replace the assumed one.
Data loading, checkpoints, the bootstrap and the reports are not counted (they run beside the GPU
or take seconds).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass

from ._cells import grid_cells
from ._config import GridConfig
from ._names import METHOD_GROUPINGS, TRAINING_METHODS

#: The paper fine-tunes the ViTs' FP32 reference for 20 epochs, the ResNets' for the preset's
#: ``fp32_epochs`` (200); see the notes of the ``paper`` preset.
PAPER_FP32_EPOCHS: dict[str, int] = {"deit_tiny_patch16_224": 20, "tiny_vit_5m_224": 20}


@dataclass(frozen=True, kw_only=True)
class Throughput:
    """An assumed GPU: dense tensor-core peak [TFLOP/s] and the share of it sustained."""

    name: str
    peak_tflops: float
    utilisation: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.peak_tflops) and self.peak_tflops > 0):
            raise ValueError(f"peak_tflops={self.peak_tflops!r} is invalid; allowed: a number > 0")
        if not 0 < self.utilisation <= 1:
            raise ValueError(f"utilisation={self.utilisation!r} is invalid; allowed: (0, 1]")

    @property
    def sustained_flops(self) -> float:
        """FLOP/s assumed sustained: ``peak_tflops x 1e12 x utilisation``."""
        return self.peak_tflops * 1e12 * self.utilisation


#: Datasheet dense peaks (NVIDIA A100 and H100 SXM datasheets; no sparsity) at an assumed 30%
#: utilisation: small models (1.3-4.1 GMACs per image) at batch 128 with fake-quantized weights
#: keep a GPU far from its peak. ``tf32``: float32 training (``mixed_precision="no"``, the paper
#: preset; convolutions use TF32 by default, matmuls only with
#: ``torch.set_float32_matmul_precision("high")``); ``bf16``: ``--mixed-precision bf16``.
GPUS: dict[str, Throughput] = {
    "a100-tf32": Throughput(name="A100 TF32", peak_tflops=156.0, utilisation=0.3),
    "a100-bf16": Throughput(name="A100 BF16", peak_tflops=312.0, utilisation=0.3),
    "h100-tf32": Throughput(name="H100 SXM TF32", peak_tflops=494.7, utilisation=0.3),
    "h100-bf16": Throughput(name="H100 SXM BF16", peak_tflops=989.4, utilisation=0.3),
}
DEFAULT_GPU = "a100-tf32"
#: The names of :data:`GPUS`, the default first (the CLI's ``--gpu`` choices).
GPU_NAMES: tuple[str, ...] = (DEFAULT_GPU, *(g for g in GPUS if g != DEFAULT_GPU))


def metadata_rows(dataset: str) -> int:
    """Rows of the bundled real metadata of ``dataset`` (Fitzpatrick17k: 16,577 images; ISIC
    2019: 25,331): the size of the real dataset the paper grid runs on."""
    from fq_data import METADATA_DIR

    files = {
        "fitzpatrick17k": "fitzpatrick17k.csv",
        "isic2019": "ISIC_2019_Training_GroundTruth.csv",
    }
    if dataset not in files:
        raise ValueError(
            f"dataset={dataset!r} has no bundled metadata; allowed: {', '.join(files)} "
            "(give the size of your own dataset with dataset_rows)"
        )
    with open(METADATA_DIR / files[dataset], newline="") as fh:
        return sum(1 for _ in csv.reader(fh)) - 1


def model_flops(name: str, *, num_classes: int, image_size: int) -> float:
    """FLOPs of one forward pass of one ``[3, image_size, image_size]`` image through ``name``.

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (no computation,
    no memory): every convolution and matmul, attention's included. For the convolution and
    linear layers this is ``2 x`` the MACs ``fq_fairmetrics.torch.layer_costs`` reports (the
    paper's cost); the attention matmuls, which have no weights, come on top for the ViTs.
    Backward passes are not counted here: their count is wrong for grouped convolutions
    (TinyViT), so training is priced at ``3 x`` the forward (see the module docstring).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ._models import build_model

    with torch.device("meta"):
        model = build_model(name, num_classes=num_classes, image_size=image_size)
        x = torch.zeros(1, 3, image_size, image_size)
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return float(counter.get_total_flops())


@dataclass(frozen=True, kw_only=True)
class StageCost:
    """One stage of one (dataset, model) over all seeds: optimizer steps (or batches), images
    through the network, FLOPs, and GPU-hours at the projection's throughput."""

    dataset: str
    model: str
    stage: str
    runs: int
    steps: int
    images: int
    flops: float
    gpu_hours: float


@dataclass(frozen=True, kw_only=True)
class Projection:
    """The projected cost of a grid: one :class:`StageCost` per (dataset, model, stage)."""

    throughput: Throughput
    stages: tuple[StageCost, ...]
    dataset_rows: Mapping[str, int]

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_hours for s in self.stages)

    def markdown(self) -> str:
        """The projection as a markdown table with a total and the assumption it rests on."""
        t = self.throughput
        lines = [
            "| dataset | model | stage | runs | steps | images | PFLOP | GPU-hours |",
            "|---|---|---|---:|---:|---:|---:|---:|",
        ]
        for s in self.stages:
            lines.append(
                f"| {s.dataset} | {s.model} | {s.stage} | {s.runs} | {s.steps} | {s.images} | "
                f"{s.flops / 1e15:.2f} | {s.gpu_hours:.2f} |"
            )
        rows = ", ".join(f"{d} {n} rows" for d, n in self.dataset_rows.items())
        lines += [
            "",
            f"Total: {self.gpu_hours:.1f} GPU-hours on {t.name} at {t.peak_tflops:g} TFLOP/s peak "
            f"x {t.utilisation:.0%} assumed utilisation = {t.sustained_flops / 1e12:.1f} TFLOP/s "
            f"sustained; {rows}. FLOPs: 3 x forward per trained image, 1 x per evaluated image "
            "(fq_bench.grid._projection). Data loading is not counted.",
        ]
        return "\n".join(lines)


def project_grid(
    config: GridConfig,
    *,
    flops_per_image: Mapping[str, float],
    dataset_rows: Mapping[str, int],
    throughput: Throughput,
    fp32_epochs: Mapping[str, int] | None = None,
) -> Projection:
    """Project the cost of every cell of ``config`` (see the module docstring for the formula).

    Args:
        config: the grid (e.g. the ``paper`` preset): its cells, seeds, epochs, batch size.
        flops_per_image: model -> FLOPs of one forward pass of one image (:func:`model_flops`).
        dataset_rows: dataset -> rows, split by ``config.test_fraction`` into
            ``N_test = round(rows x test_fraction)`` and ``N_train = rows - N_test``.
        throughput: the assumed GPU.
        fp32_epochs: model -> FP32 epochs where they differ from ``config.fp32_epochs``
            (the paper: :data:`PAPER_FP32_EPOCHS`).
    """
    epochs_fp32 = dict(fp32_epochs or {})
    missing = [m for m in config.models if m not in flops_per_image]
    missing += [d for d in config.datasets if d not in dataset_rows]
    if missing:
        raise ValueError(f"flops_per_image/dataset_rows: no entry for {missing}")
    b = config.batch_size
    cells = grid_cells(config)
    rate = throughput.sustained_flops
    out: list[StageCost] = []
    for d in config.datasets:
        n_test = round(dataset_rows[d] * config.test_fraction)
        n_train = dataset_rows[d] - n_test
        per_epoch = n_train // b if n_train >= b else 1
        epoch_images = per_epoch * b if n_train >= b else n_train
        for m in config.models:
            f = float(flops_per_image[m])
            mine = [c for c in cells if (c.dataset, c.model) == (d, m)]
            seeds = len({c.seed for c in mine})
            groupings = {METHOD_GROUPINGS[c.method] for c in mine if c.method in METHOD_GROUPINGS}
            trained = sum(c.method in TRAINING_METHODS for c in mine)
            e32 = epochs_fp32.get(m, config.fp32_epochs)
            stages = (
                ("fp32", seeds, e32 * per_epoch, e32 * epoch_images, 3.0),
                (
                    "calibration",
                    seeds * len(groupings),
                    config.calib_batches,
                    config.calib_batches * b,
                    3.0,
                ),
                (
                    "fine-tune",
                    trained,
                    config.epochs * per_epoch,
                    config.epochs * epoch_images,
                    3.0,
                ),
                ("evaluation", len(mine), -(-n_test // b), n_test, 1.0),
            )
            for stage, runs, steps, images, factor in stages:
                flops = runs * images * factor * f
                out.append(
                    StageCost(
                        dataset=d,
                        model=m,
                        stage=stage,
                        runs=runs,
                        steps=runs * steps,
                        images=runs * images,
                        flops=flops,
                        gpu_hours=flops / rate / 3600.0,
                    )
                )
    return Projection(throughput=throughput, stages=tuple(out), dataset_rows=dict(dataset_rows))
