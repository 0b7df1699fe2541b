"""fq-data: the data path of the FairQuant toolkit, free of the quantization packages.

Every source becomes a ``datasets.DatasetDict`` with splits ``train`` and ``test`` and columns
``image`` (``Image``), ``label`` and ``group`` (``ClassLabel``), ``id``, plus raw attributes:
:func:`load_fitzpatrick17k`, :func:`load_isic2019`, and the offline default
:func:`load_semisynthetic` (real metadata rows, generated pixels), and :func:`load_dataset` for
your own images with any label and group columns. :func:`make_loaders` turns it
into seeded ``(image, label, group)`` batches. ``python -m fq_data prepare|inspect`` is the
command line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names below, imported on first use (see __getattr__)
    from ._common import (
        CANONICAL_COLUMNS,
        METADATA_DIR,
        SEMISYNTHETIC_MARKER,
        DataError,
        check_canonical,
        dataset_info,
        default_cache_dir,
        is_semisynthetic,
    )
    from ._custom import load_dataset
    from ._download import PrepareResult, prepare_fitzpatrick17k
    from ._fitzpatrick import load_fitzpatrick17k
    from ._io import atomic_write_bytes
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
    from ._synth import (
        GENERATOR_VERSION,
        SynthName,
        build_semisynthetic,
        generate_lesion_images,
        load_semisynthetic,
    )

#: Public name -> the submodule that defines it. Nothing heavy (torch, torchvision, datasets) is
#: imported until a name that needs it is used, so ``python -m fq_data --help`` starts at once.
_HOMES: dict[str, str] = {
    "CANONICAL_COLUMNS": "_common",
    "METADATA_DIR": "_common",
    "SEMISYNTHETIC_MARKER": "_common",
    "DataError": "_common",
    "check_canonical": "_common",
    "dataset_info": "_common",
    "default_cache_dir": "_common",
    "is_semisynthetic": "_common",
    "load_dataset": "_custom",
    "PrepareResult": "_download",
    "prepare_fitzpatrick17k": "_download",
    "load_fitzpatrick17k": "_fitzpatrick",
    "atomic_write_bytes": "_io",
    "ISIC_CLASSES": "_isic",
    "load_isic2019": "_isic",
    "IMAGENET_MEAN": "_loaders",
    "IMAGENET_STD": "_loaders",
    "Loaders": "_loaders",
    "LoadingTiming": "_loaders",
    "PaperAugment": "_loaders",
    "SeededBatchSampler": "_loaders",
    "decode_images": "_loaders",
    "make_loaders": "_loaders",
    "measure_loading_time": "_loaders",
    "stratified_split": "_split",
    "GENERATOR_VERSION": "_synth",
    "SynthName": "_synth",
    "build_semisynthetic": "_synth",
    "generate_lesion_images": "_synth",
    "load_semisynthetic": "_synth",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'fq_data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


__all__ = [
    "SynthName",
    "CANONICAL_COLUMNS",
    "GENERATOR_VERSION",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ISIC_CLASSES",
    "METADATA_DIR",
    "SEMISYNTHETIC_MARKER",
    "DataError",
    "Loaders",
    "LoadingTiming",
    "PaperAugment",
    "PrepareResult",
    "SeededBatchSampler",
    "atomic_write_bytes",
    "build_semisynthetic",
    "check_canonical",
    "dataset_info",
    "decode_images",
    "default_cache_dir",
    "generate_lesion_images",
    "is_semisynthetic",
    "load_dataset",
    "load_fitzpatrick17k",
    "load_isic2019",
    "load_semisynthetic",
    "make_loaders",
    "measure_loading_time",
    "prepare_fitzpatrick17k",
    "stratified_split",
]
