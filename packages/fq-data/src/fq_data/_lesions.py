"""Lesion pixels from a label and a skin: the generator behind the semi-synthetic data.

The class is carried by lesion shape and texture (aspect ratio, border irregularity, texture
frequency, orientation and pattern, colour); the skin tone follows the Fitzpatrick type and the
lesion contrast falls on darker skin. A :class:`~fq_data.MinorityCue` adds, on the types it
names, class-coded rings while the colour contrast fades further (the positive control).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._minority_cue import MinorityCue

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
    cue: MinorityCue | None = None,
    chunk: int = 256,
) -> np.ndarray:
    """Generate ``[N, S, S, 3]`` uint8 images, deterministically from ``seed``.

    ``labels``: ``[N]`` class indices in ``[0, num_classes)``. ``skin``: ``[N, 3]`` background RGB
    in [0, 1] (or ``[N]`` Fitzpatrick types 1..6, mapped through ``FST_TONE``). ``contrast``:
    ``[N]`` lesion contrast in (0, 1] (default from the Fitzpatrick type when ``skin`` is types,
    else 1). ``vignette``: ``[N]`` lighting fall-off strength (default 0.1). ``seed``: an int, or
    a sequence of ints naming an independent stream (``(s, 1)`` shares no draw with ``s``).
    ``cue``: a planted group-specific cue (``skin`` must then be Fitzpatrick types): the images of
    ``cue.types`` get their contrast scaled and class-coded rings; its draws come from a stream
    of their own, so every other image is exactly what ``cue=None`` gives.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n, s = len(labels), int(image_size)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]"
        )
    skin = np.asarray(skin)
    carries = np.zeros(n, dtype=bool)  # which images carry the planted cue
    if skin.ndim == 1:
        types = skin.astype(np.int64)
        if n and (types.min() < 1 or types.max() > 6):
            raise ValueError("skin given as Fitzpatrick types must be in 1..6")
        tone = FST_TONE[types - 1]
        contrast = FST_CONTRAST[types - 1] if contrast is None else contrast
        if cue is not None:
            carries = np.isin(types, cue.types)
            contrast = np.asarray(contrast, dtype=np.float64) * np.where(
                carries, cue.contrast_scale, 1.0
            )
    elif cue is not None:
        raise ValueError("cue needs skin given as [N] Fitzpatrick types 1..6, not as RGB")
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
    if cue is not None:
        # a stream of its own: the draws above, hence every image without the cue, are unchanged
        rc = np.random.default_rng([*stream, 0xC0E])
        cycles = cue.class_cycles(num_classes)[shape_cls] * rc.uniform(
            1.0 - cue.jitter, 1.0 + cue.jitter, n
        )
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
        if cue is not None and carries[sl].any():
            # grid units span 2 per image width; rings only on the images that carry the cue
            rings = cue.rings(np.hypot(dx, dy) / 2.0, r, cycles[sl])
            img = img + np.where(carries[sl][:, None, None], rings, 0.0)[..., None]
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
