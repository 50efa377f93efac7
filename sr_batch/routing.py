"""`--model auto`'s rules: from one image's degradation estimates to a model and a denoise strength.

The estimates themselves (JPEG quality, blockiness, noise sigma) live in `estimates.py`;
the thresholds here were measured against them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sr_batch.estimates import Estimates

# Bump when the rules change: the version is part of `--model auto`'s identity, so an
# incremental run redoes the images whose route the new rules would choose differently.
RULES_VERSION = 3
# The rules' thresholds, measured on Set5 + Set14 (jobs/evaluate.py --preset jpegQ / noiseS
# with the clean default and `real` at every denoise level; docs/models.md#--model-auto): where
# `real` starts to beat the clean model on the same LR, and which --denoise does best.
CLEAN_ABOVE_QUALITY = 93
"""A JPEG of higher quality goes to the clean model (x4: q95 clean 28.36 dB, real 28.14)."""
BLOCKY = 1.3
"""Blockiness at or above this (a JPEG saved as PNG, or similar) counts as JPEG."""
CLEAN_BELOW_SIGMA = 9.0
"""Estimated noise sigma (8-bit levels, per channel) below which an image counts as clean. The
estimate reads fine texture as noise too (clean x4 LRs of Set5/Set14 read up to 8.8), and
sending a clean image to `real` costs far more (x4: about 0.8 dB) than leaving light noise to
the clean model (sigma 4: the clean model is still 0.2 dB ahead; sigma 6: 0.1 dB behind)."""
# (quality at or below, denoise) for JPEGs, strongest first; (sigma at or above, denoise) for noise.
# JPEG: the strongest denoise within 0.1 dB of the best Y-PSNR on Set14 at that quality (real at
# denoise 0 to 1 on jpeg30 .. jpeg85): the grid goes with the stronger denoise at almost no cost
# (x4 q30: dn0.75 24.89 dB, blockiness 1.32; dn0.5 24.91, 1.40; dn0 24.77, 1.62).
JPEG_DENOISE = ((50, 0.75), (65, 0.5), (88, 0.25), (CLEAN_ABOVE_QUALITY, 0.0))
# x2 (Set14): q40 dn0.75 28.75 dB, 1.18; q50 dn0.5 29.21, 1.20 (dn0.75 0.13 dB behind).
# x3 (Set14): q50 dn0.75 26.83 dB, 1.15 (dn0.5 26.91, 1.20); q75 dn0.5 27.79, 1.06 (dn0.25 27.88, 1.09).
JPEG_RULES = {2: ((45, 0.75), (65, 0.5), (88, 0.25), (CLEAN_ABOVE_QUALITY, 0.0)),
              3: ((50, 0.75), (75, 0.5), (88, 0.25), (CLEAN_ABOVE_QUALITY, 0.0))}
"""Per scale: the JPEG table; other scales use JPEG_DENOISE (measured at x4)."""
NOISE_DENOISE = ((13.0, 0.75), (CLEAN_BELOW_SIGMA, 0.5))
# x2 reads less texture as noise (clean x2 LRs of Set5/Set14: at most 5.7), and there `real`
# already wins from sigma 6 (x2, sigma 6: real dn0.25 34.16 dB, residual 33.07; sigma 4: 34.93
# against 34.75), so x2 sends noise from sigma 6 to `real`.
NOISE_RULES = {2: (6.0, ((13.0, 0.75), (9.0, 0.5), (6.0, 0.25)))}
"""Per scale: (the sigma below which an image counts as clean, the noise table); other scales
use CLEAN_BELOW_SIGMA and NOISE_DENOISE (measured at x4)."""
BLURRY = 0.40
"""Blur effect (estimates.blur) at or above which an image no other clue sends to `real` goes to
`real` at BLUR_DENOISE. Above every clean x2/x4 LR of 310 natural photos (Set5, Set14, BSDS200,
T91: at most 0.36), as a clean image sent to `real` loses 2-4 dB; a Gaussian blur of sigma 1.5 LR
px reads 0.28-0.60 on Set5/Set14 (13 of 19 images at or above 0.40 at x2 and at x4), where the
clean model gains 0.03 dB over bicubic and `real` at denoise 1 0.6-0.9 dB."""
BLUR_DENOISE = 1.0
DENOISE_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
"""Every denoise strength a rule can choose: auto loads one interpolation of `real` per level
(when an image first takes it)."""
# The quality that blockiness most resembles (a decoded JPEG at that quality), for non-JPEG files.
_BLOCKINESS_QUALITY = ((3.0, 15), (2.4, 25), (2.0, 40), (1.7, 60), (1.4, 80))


@dataclass(frozen=True)
class Choice:
    """Where one image goes: the clean model, or `real` at a denoise strength, and why."""

    model: str
    """`clean` or `real`."""
    denoise: float | None
    reason: str
    """Short and queryable: 'jpeg q45', 'blocky 1.9 (like q40)', 'noise 8.1', 'clean'."""

    @property
    def key(self) -> str:
        return self.model if self.denoise is None else f"{self.model} dn{self.denoise:g}"


def choose(estimates: Estimates, scale: int = 4) -> Choice:
    """The route of one image at `scale`: a visibly compressed or noisy image goes to `real`,
    with the denoise strength its degradation calls for (the stronger of its JPEG and noise
    clues); the rest to the clean model."""
    clean_below, noise_denoise = NOISE_RULES.get(scale, (CLEAN_BELOW_SIGMA, NOISE_DENOISE))
    jpeg_denoise = JPEG_RULES.get(scale, JPEG_DENOISE)
    quality, why = estimates.jpeg_quality, None
    if quality is not None:
        why = f"jpeg q{quality:.0f}"
    elif _measured(estimates.blockiness) and estimates.blockiness >= BLOCKY:
        quality = next((q for b, q in _BLOCKINESS_QUALITY if estimates.blockiness >= b), 90)
        why = f"blocky {estimates.blockiness:.2f} (like q{quality})"
    sigma = estimates.noise_sigma if _measured(estimates.noise_sigma) else 0.0
    strengths, reasons = [], []
    if quality is not None and quality <= CLEAN_ABOVE_QUALITY:
        strengths.append(next(d for q, d in jpeg_denoise if quality <= q))
        reasons.append(why)
    if sigma >= clean_below:
        strengths.append(next(d for s, d in noise_denoise if sigma >= s))
        reasons.append(f"noise {sigma:.1f}")
    blur = estimates.blur if _measured(estimates.blur) else 0.0
    if not strengths and blur >= BLURRY:
        return Choice("real", BLUR_DENOISE, (why + ", " if why else "") + f"blurry {blur:.2f}")
    if not strengths:
        return Choice("clean", None, (why + ", " if why else "") + f"clean (noise {sigma:.1f})")
    return Choice("real", max(strengths), ", ".join(reasons))


def _measured(value: float | None) -> bool:
    """True for an estimate that was made (not None, not nan from too small an image)."""
    return value is not None and math.isfinite(value)
