"""The named configurations: ``default``, ``smoke``, ``paper``, ``frontier``, ``ablations``,
``positive-control``."""

from __future__ import annotations

from ._config import GridConfig
from ._names import DATASETS, PAPER_MODELS, TABLE1_METHODS

#: The frontier's methods in the default run: the 2x2 design (``--preset frontier`` adds Lin et
#: al., Guo et al. and FQ-BAQ; the default must finish in 10 minutes on a 2-core CPU).
DEFAULT_FRONTIER: tuple[str, ...] = ("blind", "blind-fair", "fq-alloc", "fq-qat")

DEFAULT = GridConfig(
    calib_batches=10,
    test_fraction=0.4,
    min_test_per_group=150,
    methods=(*TABLE1_METHODS[:3], "u3", "u2", *TABLE1_METHODS[3:]),
    budgets=(2.5, 3.0, 4.0),
    frontier_methods=DEFAULT_FRONTIER,
    notes=(
        "Default run: semi-synthetic Fitzpatrick17k-like data (real metadata rows, generated "
        "pixels), timm resnet18 from scratch at 32 px, short schedules; the numbers show the "
        "method's mechanics on CPU, not the paper's values. U3 and U2 (extra) are lower uniform "
        "points: per-channel U4 barely hurts this small from-scratch model (`uv run python "
        "bench/ptq_probe.py` prints the cost of each bit-width per group, and bench/README.md "
        "why). Every skin type has at least 150 test images (the rarer types are topped up with "
        "generated images of their own real metadata rows; the training set is unchanged).",
    ),
)

PAPER = GridConfig(
    preset="paper",
    datasets=DATASETS,
    models=PAPER_MODELS,
    seeds=(0, 1, 2),
    image_size=224,
    n_images=None,
    batch_size=128,
    fp32_epochs=200,
    epochs=10,
    lr_fp32=1e-4,
    lr=3e-5,
    calib_batches=50,
    pretrained=True,
    budgets=(3.0, 4.0, 5.0, 6.0),
    frontier_methods=("blind", "blind-fair", "fq-alloc", "lin", "guo", "fq-qat", "fq-baq"),
    notes=(
        "Paper protocol (METHOD.md section 9): ImageNet-pretrained backbones, 224 px, real images; "
        "the Weights and Data lines above say what this run actually used. The paper fine-tunes "
        "the ViTs for 20 FP32 epochs, the ResNets for 200: run the ViTs as a second invocation "
        "into the same --out with --models deit_tiny_patch16_224 tiny_vit_5m_224 --fp32-epochs 20. "
        "The frontier (3, 4, 5 and 6 bits) is an addition to the paper's single operating points.",
    ),
)

FRONTIER = DEFAULT.replace(
    preset="frontier",
    methods=("fp32", "u8", "u4", "u3", "u2", "fp32-ft"),
    budgets=(2.25, 2.5, 2.75, 3.0, 3.5, 4.0, 5.0, 6.0),
    frontier_methods=("blind", "blind-fair", "fq-alloc", "lin", "guo", "fq-qat", "fq-baq"),
    seeds=(0, 1, 2, 3, 4),
    notes=(
        "Frontier preset: the default's data and schedules, every mixed method at budgets 2.25 to "
        "6 bits per weight over 5 seeds, with the uniform rows and the FP32 + FT control (about "
        "ten times the default's cells).",
    ),
)

ABLATIONS = GridConfig(
    preset="ablations",
    datasets=DATASETS,
    models=("resnet18",),
    methods=("fq-baq",),
    seeds=(0, 1, 2, 3, 4),
    calib_batches=10,
    sweeps=(
        ("lambda_bits", (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)),
        ("lambda_fair", (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)),
        ("lr_bits", (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)),
    ),
    notes=(
        "Ablations (Fig. 2): FQ-BAQ with one hyper-parameter swept at a time (lambda_bits, "
        "lambda_fair, the bit-logit lr), the others at the run's values (the `ref` rows); "
        "mean, sample std and 95% t-interval over seeds in ablation.md and ablation_<dataset>.png.",
    ),
)

SMOKE = DEFAULT.replace(
    preset="smoke",
    models=("tiny_cnn",),
    methods=("fp32", "u4", "fq-qat"),
    seeds=(0,),
    image_size=16,
    n_images=120,
    batch_size=32,
    fp32_epochs=1,
    epochs=1,
    calib_batches=2,
    budgets=(),
    frontier_methods=(),
    min_test_per_group=0,
    bootstrap_resamples=100,
    notes=(
        "Smoke preset: a two-conv CNN on 120 semi-synthetic images at 16 px, one epoch each; it "
        "checks that an install runs end to end in seconds. Its numbers mean nothing.",
    ),
)

#: The positive control (issue 24): the 2x2 design and the uniform rows on the minority-cue
#: variant. Sizes chosen once, before any quantized cell ran (bench/README.md says why): twice the
#: default's training images (1920: about 260 of types 5-6 carry the rings) and 8 FP32 epochs, so
#: that FP32 has the most ring images the 20-minute CPU budget allows; 3 seeds and 300 test
#: images per group, the most that budget allows (the MDE it gives is printed, not assumed).
POSITIVE_CONTROL = DEFAULT.replace(
    preset="positive-control",
    variant="minority-cue",
    methods=("fp32", "u8", "u7", "u6", "u5", "u4", "u3", "u2"),
    budgets=(2.5, 3.0, 4.0),
    frontier_methods=DEFAULT_FRONTIER,
    seeds=(0, 1, 2),
    n_images=2400,
    test_fraction=0.2,
    min_test_per_group=300,
    fp32_epochs=8,
    epochs=1,
    calib_batches=8,
    notes=(
        "Positive control (issue 24): semi-synthetic Fitzpatrick17k, variant minority-cue (types "
        "5-6 carry class-coded rings; docs/METHOD.md section 11). positive_control.md: the "
        "PRECONDITION (does FP32 read the rings?), the 2x2 per budget on the worst group and on "
        "types 5, 6 and 5-6, uniform low bits per group against FP32.",
    ),
)

PRESETS: dict[str, GridConfig] = {
    "default": DEFAULT,
    "smoke": SMOKE,
    "paper": PAPER,
    "frontier": FRONTIER,
    "ablations": ABLATIONS,
    "positive-control": POSITIVE_CONTROL,
}
