"""The positive-control variant: a class cue that only the rarer, darker skin types carry.

FairQuant's premise is that a minority group relies on features the majority barely uses, so
that importance pooled over groups starves them at low bits. The default semi-synthetic data
("shared-cues") carries the class in the same cues on every skin type, so that premise cannot
hold there. The "minority-cue" variant builds it in: on Fitzpatrick types 5 and 6 the shared
colour cue fades further and part of the class evidence moves into concentric rings around the
lesion (a "target" pattern), whose frequency codes the class; types 1 to 4 carry no rings and are
generated exactly as in the default, pixel for pixel. The parameters were chosen once, from the
mechanism, before any model was trained on the variant (METHOD.md ours, section 11).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import numpy as np

SynthVariant = Literal["shared-cues", "minority-cue"]


@dataclass(frozen=True, kw_only=True)
class MinorityCue:
    """Where the planted cue lives and what it looks like; every length is in image widths.

    ``types``: the Fitzpatrick types (1..6) that carry the cue. On them the lesion's colour
    contrast (which also carries its shape and texture) is multiplied by ``contrast_scale`` and
    concentric rings are added to every RGB channel: ``amplitude * max(0, 1 - falloff * r) *
    cos(2 pi f rho)``, with ``rho`` the distance from the lesion centre in image widths, ``r``
    the lesion-normalized radius (1 on the lesion's smooth border), and ``f`` the class's ring
    frequency in cycles per image width, times a per-image factor uniform in ``[1 - jitter,
    1 + jitter]``. Class ``k`` of ``K`` gets ``cycles_low * (cycles_high / cycles_low) **
    (k / (K - 1))`` (geometric; 4, 6 and 9 for the three Fitzpatrick17k classes), so that
    neighbouring classes' jittered ranges never meet. ``amplitude`` is in RGB units of [0, 1].

    For a 32 px image, 9 cycles per width is a period of 3.6 px (2.9 px at +10% jitter), above
    the 2 px Nyquist limit; at 16 px the top class aliases.
    """

    types: tuple[int, ...] = (5, 6)
    contrast_scale: float = 0.5
    cycles_low: float = 4.0
    cycles_high: float = 9.0
    jitter: float = 0.1
    amplitude: float = 0.10
    falloff: float = 0.8

    def __post_init__(self) -> None:
        if not self.types or any(t not in range(1, 7) for t in self.types):
            raise ValueError(f"types must be Fitzpatrick types in 1..6, got {self.types!r}")
        if not 0.0 < self.contrast_scale <= 1.0:
            raise ValueError(f"contrast_scale must be in (0, 1], got {self.contrast_scale!r}")
        if not 0.0 < self.cycles_low <= self.cycles_high:
            raise ValueError(
                "cycles_low and cycles_high must satisfy 0 < cycles_low <= cycles_high, got "
                f"{self.cycles_low!r} and {self.cycles_high!r}"
            )
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter!r}")
        if not self.amplitude > 0.0:
            raise ValueError(f"amplitude must be > 0 (RGB units), got {self.amplitude!r}")
        if not self.falloff >= 0.0:
            raise ValueError(f"falloff must be >= 0 (per lesion radius), got {self.falloff!r}")

    def class_cycles(self, num_classes: int) -> np.ndarray:
        """``[K]`` ring frequency per class in cycles per image width (before the jitter).

        Raises ``ValueError`` when ``num_classes`` is so large that neighbouring classes'
        jittered frequency ranges would overlap (more than 5 classes with the defaults): the
        rings could then not code the class.
        """
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        if num_classes == 1:
            return np.array([self.cycles_low])
        ratio = (self.cycles_high / self.cycles_low) ** (1.0 / (num_classes - 1))
        if ratio <= (1.0 + self.jitter) / (1.0 - self.jitter):
            most = 1 + int(
                np.log(self.cycles_high / self.cycles_low)
                / np.log((1.0 + self.jitter) / (1.0 - self.jitter))
            )
            raise ValueError(
                f"num_classes={num_classes}: ring frequencies {self.cycles_low}..{self.cycles_high} "
                f"cycles per width with +-{self.jitter:.0%} jitter code at most {most} classes "
                "apart; use fewer classes (Fitzpatrick17k: three_partition_label)"
            )
        return self.cycles_low * ratio ** np.arange(num_classes, dtype=np.float64)

    def rings(self, rho: np.ndarray, r: np.ndarray, cycles: np.ndarray) -> np.ndarray:
        """``[B, S, S]`` ring offset in RGB units, added to every channel.

        ``rho``: ``[B, S, S]`` distance from the lesion centre in image widths; ``r``: ``[B, S,
        S]`` lesion-normalized radius; ``cycles``: ``[B]`` ring frequency in cycles per width.
        """
        envelope = np.clip(1.0 - self.falloff * r, 0.0, None)
        return self.amplitude * envelope * np.cos(2.0 * np.pi * cycles[:, None, None] * rho)


MINORITY_CUE = MinorityCue()
"""The parameters of the ``"minority-cue"`` variant, fixed once (METHOD.md ours, section 11)."""

SYNTH_VARIANTS: Mapping[str, MinorityCue | None] = MappingProxyType(
    {"shared-cues": None, "minority-cue": MINORITY_CUE}
)
"""Semi-synthetic variants by name: the planted cue each adds (``None``: the default data)."""


def variant_cue(variant: str) -> MinorityCue | None:
    """The planted cue of ``variant`` (``None`` for ``"shared-cues"``); a clear error otherwise."""
    if variant not in SYNTH_VARIANTS:
        raise ValueError(f"variant must be one of {list(SYNTH_VARIANTS)}, got {variant!r}")
    return SYNTH_VARIANTS[variant]


def describe_variant(variant: str) -> str:
    """One line in words: which groups carry which class cues in ``variant``."""
    cue = variant_cue(variant)
    if cue is None:
        return (
            "shared-cues (the default): every skin type carries the class in the same cues "
            "(lesion shape, border, texture, colour); the contrast falls on darker skin"
        )
    types = ", ".join(str(t) for t in cue.types)
    return (
        f"minority-cue: on Fitzpatrick types {types} the colour contrast is x{cue.contrast_scale:g} "
        f"and class-coded concentric rings carry part of the class ({cue.cycles_low:g} to "
        f"{cue.cycles_high:g} cycles per image width, geometric over the classes, "
        f"+-{cue.jitter:.0%} per image, amplitude {cue.amplitude:g}, fall-off {cue.falloff:g} "
        "per lesion radius); the other types carry no rings and are the default's pixels"
    )
