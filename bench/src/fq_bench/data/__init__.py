"""The data path: canonical ``DatasetDict`` sources and seeded torch loaders.

Every source becomes a ``datasets.DatasetDict`` with splits ``train`` and ``test`` and columns
``image`` (``Image``), ``label`` and ``group`` (``ClassLabel``), ``id``, plus raw attributes.
:func:`make_loaders` turns it into ``(image, label, group)`` batches.
"""

from __future__ import annotations

from ._common import (
    CANONICAL_COLUMNS,
    SEMISYNTHETIC_MARKER,
    DataError,
    check_canonical,
    dataset_info,
    default_cache_dir,
    is_semisynthetic,
)
from ._download import PrepareResult, prepare_fitzpatrick17k
from ._fitzpatrick import load_fitzpatrick17k
from ._isic import ISIC_CLASSES, load_isic2019
from ._loaders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Loaders,
    LoadingTiming,
    PaperAugment,
    SeededBatchSampler,
    decode_images,
    make_loaders,
    measure_loading_time,
)
from ._split import stratified_split
from ._synth import GENERATOR_VERSION, generate_lesion_images, load_semisynthetic

__all__ = [
    "CANONICAL_COLUMNS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Loaders",
    "LoadingTiming",
    "PaperAugment",
    "PrepareResult",
    "SeededBatchSampler",
    "decode_images",
    "make_loaders",
    "measure_loading_time",
    "prepare_fitzpatrick17k",
    "GENERATOR_VERSION",
    "ISIC_CLASSES",
    "SEMISYNTHETIC_MARKER",
    "DataError",
    "check_canonical",
    "dataset_info",
    "default_cache_dir",
    "generate_lesion_images",
    "is_semisynthetic",
    "load_fitzpatrick17k",
    "load_isic2019",
    "load_semisynthetic",
    "stratified_split",
]
