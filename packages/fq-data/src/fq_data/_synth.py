"""The offline default: real metadata rows, generated lesion pixels ("semi-synthetic").

Each sampled row keeps its real label and real group; only the pixels are generated. The class
is carried by lesion shape and texture (aspect ratio, border irregularity, texture frequency,
orientation and pattern, colour); for Fitzpatrick17k the skin tone follows the real Fitzpatrick
type and the lesion contrast falls on darker skin, so that the darker (and smaller) groups are
genuinely harder. For ISIC 2019 the pixels do not depend on sex except a mild lighting nuisance
(vignette strength), because the paper's group effect there is small.
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
from ._split import stratified_split

logger = logging.getLogger("fq_data")

GENERATOR_VERSION = "synth-v2"
"""Bumped whenever the pixels a seed produces change; part of the cache key."""

SynthName = Literal["fitzpatrick17k", "isic2019"]
DEFAULT_N = 3000

# Background skin tone per Fitzpatrick type 1..6 (RGB in [0, 1]), light to dark.
FST_TONE = np.array(
    [
        [0.93, 0.81, 0.73],
        [0.87, 0.72, 0.61],
        [0.77, 0.60, 0.46],
        [0.63, 0.45, 0.31],
        [0.44, 0.30, 0.20],
        [0.28, 0.19, 0.13],
    ]
)
# Lesion contrast per Fitzpatrick type: the class cue fades on darker skin (the effect studied).
FST_CONTRAST = np.array([1.0, 0.85, 0.72, 0.62, 0.54, 0.46])
NOISE_STD = 0.06
VISIBILITY_MIN = 0.6
ATYPICAL_SHARE = 0.06
_PHI = (np.sqrt(5.0) - 1.0) / 2.0


def class_appearance(num_classes: int) -> dict[str, np.ndarray]:
    """Per-class lesion parameters, each ``[K]``; fixed by the generator version, not the seed.

    Spread over their ranges by golden-ratio sequences with different strides, so that classes
    differ in several cues at once; the first three classes get hand-picked, well separated
    values (round smooth brown / irregular dark dotted / elongated red striped).
    """
    k = np.arange(num_classes, dtype=np.float64)
    seq = [np.mod(0.5 + k * _PHI * s, 1.0) for s in (1, 2, 3, 5, 7, 11)]
    params = {
        "aspect": 1.0 + 1.3 * seq[0],  # major / minor axis
        "lobes": np.round(3 + 9 * seq[1]),  # border irregularity frequency
        "lobe_amp": 0.04 + 0.22 * seq[2],  # border irregularity amplitude
        "tex_freq": 1.0 + 5.0 * seq[3],  # texture cycles per lesion radius
        "tex_angle": np.pi * seq[4],  # texture orientation vs lesion axis
        "tex_cross": np.round(seq[5]),  # 0 stripes, 1 dots
        "hue": np.stack([0.25 + 0.5 * seq[1], 0.10 + 0.3 * seq[3], 0.10 + 0.3 * seq[4]], 1),
    }
    hand = {
        "aspect": [1.05, 1.3, 2.3],
        "lobes": [4, 9, 5],
        "lobe_amp": [0.03, 0.26, 0.06],
        "tex_freq": [1.0, 5.0, 3.0],
        "tex_angle": [0.0, 0.8, 0.0],
        "tex_cross": [0, 1, 0],
        "hue": [[0.48, 0.30, 0.18], [0.18, 0.10, 0.12], [0.78, 0.25, 0.25]],
    }
    m = min(3, num_classes)
    for key, vals in hand.items():
        params[key][:m] = np.asarray(vals, dtype=np.float64)[:m]
    return params


def generate_lesion_images(
    labels: np.ndarray,
    skin: np.ndarray,
    *,
    num_classes: int,
    image_size: int = 64,
    seed: int | Sequence[int] = 0,
    contrast: np.ndarray | None = None,
    vignette: np.ndarray | None = None,
    chunk: int = 256,
) -> np.ndarray:
    """Generate ``[N, S, S, 3]`` uint8 images, deterministically from ``seed``.

    ``labels``: ``[N]`` class indices in ``[0, num_classes)``. ``skin``: ``[N, 3]`` background RGB
    in [0, 1] (or ``[N]`` Fitzpatrick types 1..6, mapped through ``FST_TONE``). ``contrast``:
    ``[N]`` lesion contrast in (0, 1] (default from the Fitzpatrick type when ``skin`` is types,
    else 1). ``vignette``: ``[N]`` lighting fall-off strength (default 0.1). ``seed``: an int, or
    a sequence of ints naming an independent stream (``(s, 1)`` shares no draw with ``s``).
    """
    labels = np.asarray(labels, dtype=np.int64)
    n, s = len(labels), int(image_size)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]"
        )
    skin = np.asarray(skin)
    if skin.ndim == 1:
        types = skin.astype(np.int64)
        if n and (types.min() < 1 or types.max() > 6):
            raise ValueError("skin given as Fitzpatrick types must be in 1..6")
        tone = FST_TONE[types - 1]
        contrast = FST_CONTRAST[types - 1] if contrast is None else contrast
    else:
        tone = skin.astype(np.float64)
    contrast = np.ones(n) if contrast is None else np.asarray(contrast, dtype=np.float64)
    vignette = np.full(n, 0.1) if vignette is None else np.asarray(vignette, dtype=np.float64)
    app = class_appearance(num_classes)
    stream = [int(seed)] if isinstance(seed, (int, np.integer)) else [int(x) for x in seed]
    rng = np.random.default_rng([*stream, 0x5EED])
    # lesion visibility varies per image (faint lesions are hard on any skin, harder on dark)
    contrast = contrast * rng.uniform(VISIBILITY_MIN, 1.0, n)
    # atypical presentations: a share of lesions look like a random class (all cues), which
    # caps the attainable accuracy below 100% on every skin type
    shape_cls = np.where(rng.random(n) < ATYPICAL_SHARE, rng.integers(0, num_classes, n), labels)
    # per-image jitter, drawn for all rows at once so chunking cannot change the result
    j = {
        "tone": tone + rng.normal(0, 0.025, (n, 3)),
        "cx": rng.uniform(-0.15, 0.15, n),
        "cy": rng.uniform(-0.15, 0.15, n),
        "radius": rng.uniform(0.3, 0.48, n),
        "theta": rng.uniform(0, np.pi, n),
        # class cues vary within a class so that even light skin is not solved perfectly
        "aspect": app["aspect"][shape_cls] * rng.uniform(0.75, 1.3, n),
        "lobe_amp": np.clip(app["lobe_amp"][shape_cls] + rng.normal(0, 0.05, n), 0, None),
        "lobes": app["lobes"][shape_cls],
        "tex_freq": app["tex_freq"][shape_cls] * rng.uniform(0.7, 1.3, n),
        "lobe_phase": rng.uniform(0, 2 * np.pi, n),
        "tex_phase": rng.uniform(0, 2 * np.pi, (n, 2)),
        "hue": app["hue"][shape_cls] + rng.normal(0, 0.06, (n, 3)),
        "mottle": rng.uniform(0, 2 * np.pi, (n, 3)),
        "light": rng.uniform(0, 2 * np.pi, n),
    }
    out = np.empty((n, s, s, 3), dtype=np.uint8)
    grid = (np.arange(s) + 0.5) / s * 2.0 - 1.0
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        lab = shape_cls[sl]

        def col(a: np.ndarray, sl: slice = sl) -> np.ndarray:
            return a[sl][:, None, None]

        dx, dy = gx[None] - col(j["cx"]), gy[None] - col(j["cy"])
        ct, st = np.cos(col(j["theta"])), np.sin(col(j["theta"]))
        minor = col(j["radius"]) / np.sqrt(col(j["aspect"]))
        u = (dx * ct + dy * st) / (minor * col(j["aspect"]))
        v = (-dx * st + dy * ct) / minor
        r, phi = np.hypot(u, v), np.arctan2(v, u)
        border = 1.0 + col(j["lobe_amp"]) * np.sin(col(j["lobes"]) * phi + col(j["lobe_phase"]))
        mask = 1.0 / (1.0 + np.exp(-(border - r) / 0.06))
        fa = app["tex_angle"][lab][:, None, None]
        f = 2 * np.pi * col(j["tex_freq"])
        s1 = np.sin(f * (u * np.cos(fa) + v * np.sin(fa)) + j["tex_phase"][sl, 0, None, None])
        s2 = np.sin(f * (-u * np.sin(fa) + v * np.cos(fa)) + j["tex_phase"][sl, 1, None, None])
        cross = app["tex_cross"][lab][:, None, None]
        texture = (1 - cross) * s1 + cross * s1 * s2  # [B, S, S] in [-1, 1]
        bg = j["tone"][sl][:, None, None, :]  # [B, 1, 1, 3]
        mottle = (
            0.02
            * (
                np.sin(3 * gx[None] + col(j["mottle"][:, 0]))
                * np.cos(2 * gy[None] + col(j["mottle"][:, 1]))
            )[..., None]
        )
        # the class colour is an offset from the lightest skin, added to this skin scaled by the
        # contrast: the class cue shrinks with contrast alone, not with the tone itself
        offset = (j["hue"][sl] - FST_TONE[0])[:, None, None, :] * (1.0 + 0.35 * texture[..., None])
        lesion = bg + col(contrast)[..., None] * offset
        img = bg + mottle + mask[..., None] * (lesion - bg)
        light = 1.0 - col(vignette)[..., None] * (
            (gx[None] * np.cos(col(j["light"])) + gy[None] * np.sin(col(j["light"])))[..., None]
            * 0.5
            + 0.5 * (gx[None] ** 2 + gy[None] ** 2)[..., None]
        )
        img = img * light
        # one noise stream per image, so the chunk size cannot change any pixel
        noise = np.stack(
            [
                np.random.default_rng([*stream, 0xA015E, i]).normal(0, NOISE_STD, (s, s, 3))
                for i in range(sl.start, sl.stop)
            ]
        )
        out[sl] = np.clip(np.rint((img + noise) * 255.0), 0, 255).astype(np.uint8)
    return out


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
    test_fraction: float = 0.2,
    min_test_per_group: int = 0,
) -> datasets.DatasetDict:
    """Generate the semi-synthetic ``DatasetDict`` without touching the cache.

    Arguments as :func:`load_semisynthetic`, which documents them.
    """
    if name not in ("fitzpatrick17k", "isic2019"):
        raise ValueError(f"name must be 'fitzpatrick17k' or 'isic2019', got {name!r}")
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
    pixels = _pixels(name, meta, num_classes=len(classes), image_size=image_size, stream=(seed,))
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
            name, real[extra], num_classes=len(classes), image_size=image_size, stream=(seed, 1)
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
    test_fraction: float = 0.2,
    min_test_per_group: int = 0,
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
    """
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
        )
    )
    key = hashlib.sha1(key_src.encode()).hexdigest()[:16]
    root = default_cache_dir(cache_dir) / "semisynthetic"
    target = root / f"{name}-{image_size}px-seed{seed}-{key}"
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
