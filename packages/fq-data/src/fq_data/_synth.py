"""The offline default: real metadata rows, generated lesion pixels ("semi-synthetic").

Each sampled row keeps its real label and real group; only the pixels are generated. The class
is carried by lesion shape and texture (aspect ratio, border irregularity, texture frequency,
orientation and pattern, colour); for Fitzpatrick17k the skin tone follows the real Fitzpatrick
type and the lesion contrast falls on darker skin, so that the darker (and smaller) groups are
genuinely harder. For ISIC 2019 the pixels do not depend on sex except a mild lighting nuisance
(vignette strength), because the paper's group effect there is small. The pixels come from
``_lesions.py``; the ``"minority-cue"`` variant (``_minority_cue.py``) plants a class cue that
only Fitzpatrick types 5 and 6 carry.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Literal

import datasets
import numpy as np
import polars as pl
from PIL import Image as PILImage

from ._assemble import assemble
from ._common import METADATA_DIR, SEMISYNTHETIC_MARKER, default_cache_dir, quiet_datasets
from ._fitzpatrick import GROUP_NAMES, Grouping, canonical_fitzpatrick_meta
from ._isic import GT_NAME, META_NAME, UnknownSex, canonical_isic_meta, read_isic_metadata
from ._lesions import FST_TONE, generate_lesion_images
from ._minority_cue import SynthVariant, describe_variant, variant_cue
from ._split import DEFAULT_TEST_FRACTION, stratified_split

logger = logging.getLogger("fq_data")

GENERATOR_VERSION = "synth-v2"
"""Bumped whenever the pixels a seed produces change; part of the cache key."""

SynthName = Literal["fitzpatrick17k", "isic2019"]
DEFAULT_N = 3000


def _stratified_sample(keys: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted row indices of a size-``n`` sample keeping the joint distribution of ``keys``."""
    strata, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    exact = n * counts / counts.sum()
    quota = np.floor(exact).astype(np.int64)
    spare = n - int(quota.sum())
    order = np.lexsort((rng.random(len(strata)), -(exact - quota)))
    quota[order[:spare]] += 1
    picked = [
        rng.choice(np.flatnonzero(inverse == s), size=q, replace=False)
        for s, q in enumerate(quota)
        if q
    ]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _real_meta(name: SynthName, label_col: str, grouping: Grouping, unknown_sex: UnknownSex):
    if name == "fitzpatrick17k":
        raw = pl.read_csv(METADATA_DIR / "fitzpatrick17k.csv", infer_schema_length=0)
        _, meta, classes = canonical_fitzpatrick_meta(
            raw,
            label_col=label_col,
            group_col="fitzpatrick_scale",
            grouping=grouping,
            warn_unknown=False,
        )
        return meta, classes, GROUP_NAMES[grouping]
    raw = read_isic_metadata(METADATA_DIR / GT_NAME, METADATA_DIR / META_NAME)
    _, meta, classes, groups = canonical_isic_meta(
        raw, label_col=label_col, group_col="sex", id_col="image", unknown_sex=unknown_sex
    )
    return meta, classes, groups


def _pixels(
    name: SynthName,
    meta: pl.DataFrame,
    *,
    num_classes: int,
    image_size: int,
    stream: tuple[int, ...],
    variant: SynthVariant,
) -> np.ndarray:
    """``[N, S, S, 3]`` uint8 pixels for the metadata rows ``meta``, from the seed ``stream``."""
    labels = meta["label"].to_numpy()
    if name == "fitzpatrick17k":
        return generate_lesion_images(
            labels,
            meta["fitzpatrick_scale"].cast(pl.Int64).to_numpy(),
            num_classes=num_classes,
            image_size=image_size,
            seed=stream,
            cue=variant_cue(variant),
        )
    # dermoscopy: light skin tones and contrast independent of sex; sex only shifts the
    # lighting fall-off a little (female 0.08, male 0.16, unknown 0.12)
    rs = np.random.default_rng([*stream, 0x151C])
    tone = FST_TONE[rs.integers(0, 3, meta.height)]
    contrast = rs.uniform(0.55, 1.0, meta.height)
    sex = meta["sex"].fill_null("").to_list()
    vignette = np.array([{"female": 0.08, "male": 0.16}.get(x, 0.12) for x in sex])
    return generate_lesion_images(
        labels,
        tone,
        num_classes=num_classes,
        image_size=image_size,
        seed=stream,
        contrast=contrast,
        vignette=vignette,
    )


def _test_top_up(
    name: SynthName,
    meta: pl.DataFrame,
    picked: np.ndarray,
    is_test: np.ndarray,
    group_names: Sequence[str],
    *,
    min_test_per_group: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Sorted-per-group row indices into ``meta`` (the real metadata) to add to the test split.

    ``picked``: ``[n]`` rows already sampled; ``is_test``: ``[n]`` their split. For each group
    with fewer than ``min_test_per_group`` test rows, the missing rows are drawn from the group's
    real rows not yet sampled, stratified by label (largest remainder), so the added labels
    follow the group's real label distribution.
    """
    groups, labels = meta["group"].to_numpy(), meta["label"].to_numpy()
    unused = np.ones(meta.height, dtype=bool)
    unused[picked] = False
    test_groups = groups[picked][is_test]
    extra = []
    for g, group in enumerate(group_names):
        have = int((test_groups == g).sum())
        need = min_test_per_group - have
        if need <= 0:
            continue
        pool = np.flatnonzero(unused & (groups == g))
        if len(pool) < need:
            raise ValueError(
                f"min_test_per_group={min_test_per_group}: group {group!r} of {name} has {have} "
                f"test row(s) after the split and only {len(pool)} unused real metadata row(s) "
                f"({need} needed); lower min_test_per_group or n"
            )
        extra.append(pool[_stratified_sample(labels[pool], need, rng)])
    return np.concatenate(extra) if extra else np.zeros(0, dtype=np.int64)


@quiet_datasets()
def build_semisynthetic(
    name: SynthName = "fitzpatrick17k",
    *,
    n: int | None = None,
    image_size: int = 64,
    seed: int = 0,
    label_col: str | None = None,
    grouping: Grouping = "type",
    unknown_sex: UnknownSex = "group",
    test_fraction: float = DEFAULT_TEST_FRACTION,
    min_test_per_group: int = 0,
    variant: SynthVariant = "shared-cues",
) -> datasets.DatasetDict:
    """Generate the semi-synthetic ``DatasetDict`` without touching the cache.

    Arguments as :func:`load_semisynthetic`, which documents them.
    """
    if name not in ("fitzpatrick17k", "isic2019"):
        raise ValueError(f"name must be 'fitzpatrick17k' or 'isic2019', got {name!r}")
    if variant_cue(variant) is not None and name != "fitzpatrick17k":
        raise ValueError(
            f"variant={variant!r} plants a cue on Fitzpatrick skin types, which only "
            f"fitzpatrick17k has; use variant='shared-cues' for {name}"
        )
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
    if not isinstance(min_test_per_group, int) or min_test_per_group < 0:
        raise ValueError(f"min_test_per_group must be an int >= 0, got {min_test_per_group!r}")
    label_col = label_col or ("three_partition_label" if name == "fitzpatrick17k" else "diagnosis")
    real, classes, group_names = _real_meta(name, label_col, grouping, unknown_sex)
    n = DEFAULT_N if n is None else n
    if not isinstance(n, int) or not 2 <= n <= real.height:
        raise ValueError(f"n must be an int in [2, {real.height}] for {name}, got {n!r}")
    rng = np.random.default_rng([seed, 0x5A3])
    keys = real["label"].to_numpy() * (len(group_names) + 1) + real["group"].to_numpy()
    picked = _stratified_sample(keys, n, rng)
    meta = real[picked]
    pixels = _pixels(
        name, meta, num_classes=len(classes), image_size=image_size, stream=(seed,), variant=variant
    )
    given_split = None
    if min_test_per_group > 0:
        # the split assemble() would draw, then extra real rows straight into test: the sampled
        # rows, their split and their pixels are exactly those of min_test_per_group=0
        is_test = stratified_split(
            meta["label"].to_numpy(),
            meta["group"].to_numpy(),
            test_fraction=test_fraction,
            seed=seed,
        )
        extra = _test_top_up(
            name,
            real,
            picked,
            is_test,
            group_names,
            min_test_per_group=min_test_per_group,
            rng=np.random.default_rng([seed, 0x70B]),
        )
        # an independent pixel stream: the added rows share no noise or jitter with the others
        extra_pixels = _pixels(
            name,
            real[extra],
            num_classes=len(classes),
            image_size=image_size,
            stream=(seed, 1),
            variant=variant,
        )
        meta = pl.concat([meta, real[extra]])
        pixels = np.concatenate([pixels, extra_pixels])
        given_split = np.concatenate([is_test, np.ones(len(extra), dtype=bool)]).astype(np.int64)
    feats = datasets.Features({"image": datasets.Image(decode=False)})
    images = datasets.Dataset.from_dict(
        {"image": [{"bytes": _png(p), "path": None} for p in pixels]}, features=feats
    )
    top_up = (
        f", test topped up to >= {min_test_per_group} rows per group" if min_test_per_group else ""
    )
    description = (
        f"{SEMISYNTHETIC_MARKER} {name}: real metadata rows (labels {label_col}, "
        f"groups), generated pixels; generator {GENERATOR_VERSION}, n={n}, "
        f"image_size={image_size}, seed={seed}{top_up}. Not real images."
    )
    if variant_cue(variant) is not None:  # the default's description stays as it was
        description += f" Variant {describe_variant(variant)}."

    return assemble(
        name=f"{name}-semisynthetic",
        source=f"semisynthetic:{name}",
        images=images,
        meta=meta,
        class_names=classes,
        group_names=group_names,
        given_split=given_split,
        seed=seed,
        test_fraction=test_fraction,
        verify_images=False,
        description=description,
    )


@quiet_datasets()
def load_semisynthetic(
    name: SynthName = "fitzpatrick17k",
    *,
    n: int | None = None,
    image_size: int = 64,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    label_col: str | None = None,
    grouping: Grouping = "type",
    unknown_sex: UnknownSex = "group",
    test_fraction: float = DEFAULT_TEST_FRACTION,
    min_test_per_group: int = 0,
    variant: SynthVariant = "shared-cues",
) -> datasets.DatasetDict:
    """The offline default: real metadata of ``name`` with generated pixels, cached on disk.

    ``n`` rows (default 3000) are sampled from the real metadata keeping the joint label x group
    distribution; ``label_col`` defaults to ``three_partition_label`` (3 classes) for
    Fitzpatrick17k, since 114 classes cannot be learned from a few thousand rows, and to the 8
    diagnoses for ISIC 2019. Images are ``image_size`` px PNGs. The result is cached as an Arrow
    dataset under ``cache_dir`` (default ``$FQ_CACHE_DIR`` or ``~/.cache/fq_bench``), keyed by all
    arguments and ``GENERATOR_VERSION``; a second call loads it instead of regenerating. Every
    split's ``info.description`` starts with "semi-synthetic" (see :func:`is_semisynthetic`).

    The split is stratified by label x group (``test_fraction`` of each stratum, seeded by
    ``seed``). ``min_test_per_group`` (rows, default 0: off) then tops up every group's test
    split to at least that many rows with further real metadata rows of that group, not among
    the ``n`` (drawn stratified by label within the group, seeded), whose pixels are generated
    as for the others from an independent stream; the ``n`` rows, their split and their pixels
    are unchanged, so the training split is the same as with 0 and only the test split grows.
    A group without enough unused real rows raises ``ValueError`` naming it and the counts.

    ``variant`` (one of :data:`SYNTH_VARIANTS`): ``"shared-cues"`` (the default data; every skin
    type carries the class in the same cues) or ``"minority-cue"`` (Fitzpatrick17k only: types 5
    and 6 carry part of the class in rings that the other types lack, see :class:`MinorityCue`
    and :func:`describe_variant`; rows, labels, split and the other types' pixels are those of
    the default). The variant is stated in the description and is part of the cache key.
    """
    extra_key: tuple[str, ...] = ()
    if variant_cue(variant) is not None:  # the default keeps the cache key it always had
        extra_key = (variant,)
    key_src = repr(
        (
            GENERATOR_VERSION,
            name,
            n,
            image_size,
            seed,
            label_col,
            grouping,
            unknown_sex,
            test_fraction,
            min_test_per_group,
            *extra_key,
        )
    )
    key = hashlib.sha1(key_src.encode()).hexdigest()[:16]
    root = default_cache_dir(cache_dir) / "semisynthetic"
    target = root / "-".join([name, *extra_key, f"{image_size}px", f"seed{seed}", key])
    if (target / "dataset_dict.json").is_file():
        logger.info("semi-synthetic %s: loading cached %s", name, target)
        return datasets.DatasetDict.load_from_disk(str(target))
    logger.info("semi-synthetic %s: generating (n=%s, %d px, seed %d)", name, n, image_size, seed)
    dd = build_semisynthetic(
        name,
        n=n,
        image_size=image_size,
        seed=seed,
        label_col=label_col,
        grouping=grouping,
        unknown_sex=unknown_sex,
        test_fraction=test_fraction,
        min_test_per_group=min_test_per_group,
        variant=variant,
    )
    root.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=root, prefix=f".{target.name}.")
    try:
        dd.save_to_disk(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race: its copy is equivalent
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return datasets.DatasetDict.load_from_disk(str(target))
