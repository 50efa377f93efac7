"""Synthetic real-world degradations: HR patch -> realistic LR patch, and evaluation presets.

Training (`degrade`) follows the second-order pipeline of Real-ESRGAN (Wang et
al., 2021), with BSRGAN's (Zhang et al., 2021) idea of random resize modes:

    blur -> resize -> noise -> JPEG  [-> blur -> resize -> noise]  -> resize to HR/scale
                                                                    -> sinc and JPEG in random order

Every range lives in one `Ranges` (two named sets: MILD and STRONG, the two
ends of `--denoise`), and the model card records the set it was trained with.
Each call is a pure function of its generator: `degrade(hr, scale, ranges,
np.random.default_rng([seed, step, i]))` is the same patch on any machine and
for any number of data threads. Pixels stay float32 in [0, 1] between steps,
and are quantised to 8 bits where a real file would be (JPEG) and at the end.

Evaluation (`PRESETS`, `apply_preset`) degrades the clean LR of an evaluation
set (HR cropped to a multiple of the scale, Pillow BICUBIC downscale) with
named, fixed settings, so every number has bicubic of the same degraded LR
beside it.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Pillow's resampling filters by name; Pillow's downscales are antialiased (the filter
# support grows with the factor), BOX is area averaging.
RESIZE_MODES = {"area": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
                "bicubic": Image.Resampling.BICUBIC}
KERNEL_KINDS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


@dataclass(frozen=True)
class Ranges:
    """Every knob of the degradation pipeline; sigmas and noise are in pixels and 8-bit levels."""

    name: str
    """Label recorded in the model card."""
    # --- first order, at HR resolution ---
    blur_prob: float
    """Chance of the first blur."""
    blur_sigma_lr: tuple[float, float]
    """First blur's sigma, in LR pixels (multiplied by the scale at HR resolution)."""
    kernel_sizes: tuple[int, int] = (7, 21)
    """Odd kernel sides drawn from this range (inclusive)."""
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    """Chances of KERNEL_KINDS (Real-ESRGAN's mix)."""
    generalized_beta: tuple[float, float] = (0.5, 4.0)
    """Shape of generalized Gaussian kernels: < 2 peakier than Gaussian, > 2 flatter."""
    plateau_beta: tuple[float, float] = (1.0, 2.0)
    """Shape of plateau kernels 1 / (1 + d^beta)."""
    sinc_prob: float = 0.1
    """Chance that a blur is a sinc (ringing, as from sharpening or resampling) instead."""
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)
    """Chances of up, down, keep in the first resize."""
    resize_range: tuple[float, float] = (0.3, 1.5)
    """Factor of the first resize, relative to HR (up draws from [1, max], down from [min, 1])."""
    resize_mode_probs: tuple[float, float, float] = (0.3, 0.3, 0.4)
    """Chances of area, bilinear, bicubic for every resize."""
    noise_prob: float = 0.5
    """Chance of noise in each order."""
    gaussian_noise_prob: float = 0.6
    """Chance that noise is Gaussian rather than Poisson."""
    noise_sigma: tuple[float, float] = (1.0, 15.0)
    """Gaussian noise sigma, in 8-bit levels."""
    gray_noise_prob: float = 0.4
    """Chance that noise is the same on every channel (luma noise)."""
    poisson_peak: tuple[float, float] = (40.0, 1000.0)
    """Photons at white for Poisson noise, drawn log-uniformly (fewer = noisier)."""
    jpeg_prob: float = 0.9
    """Chance of a JPEG round trip in each order."""
    jpeg_quality: tuple[int, int] = (30, 95)
    """JPEG quality, inclusive."""
    # --- second order, around LR resolution ---
    second_order_prob: float = 0.5
    """Chance of the second pass."""
    blur2_prob: float = 0.6
    """Chance of the second blur (given a second pass)."""
    blur2_sigma: tuple[float, float] = (0.2, 1.5)
    """Second blur's sigma, in pixels of the image it blurs (about LR)."""
    resize2_range: tuple[float, float] = (0.6, 1.2)
    """Size of the second pass relative to the LR size."""
    # --- last step ---
    final_sinc_prob: float = 0.2
    """Chance of a sinc filter after the last resize (before or after the last JPEG)."""

    def to_card(self) -> dict:
        return dataclasses.asdict(self)


# `--denoise 0` end: mostly clean downscales, light blur and noise, camera-quality JPEG.
MILD = Ranges(
    name="mild", blur_prob=0.3, blur_sigma_lr=(0.1, 0.5), sinc_prob=0.0,
    resize_probs=(0.1, 0.3, 0.6), resize_range=(0.6, 1.2), resize_mode_probs=(0.2, 0.2, 0.6),
    noise_prob=0.3, noise_sigma=(0.5, 4.0), poisson_peak=(300.0, 3000.0),
    jpeg_prob=0.7, jpeg_quality=(60, 95), second_order_prob=0.0, final_sinc_prob=0.0,
)
# `--denoise 1` end: Real-ESRGAN's pipeline with its blur and noise scaled for PSNR-trained
# models: heavy JPEG (30-95), noisy scans and phones, blur up to 1.5 LR px.
STRONG = Ranges(
    name="strong", blur_prob=0.5, blur_sigma_lr=(0.1, 0.8),
    noise_prob=0.6, noise_sigma=(1.0, 20.0), poisson_peak=(30.0, 1000.0),
    jpeg_prob=0.9, jpeg_quality=(30, 95), second_order_prob=0.5,
)
RANGES = {r.name: r for r in (MILD, STRONG)}


# --- kernels --------------------------------------------------------------------------


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    half = size // 2
    y, x = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
    return x, y


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """d^T C^-1 d over a size x size grid, C the covariance of a rotated Gaussian."""
    x, y = _grid(size)
    cos, sin = math.cos(theta), math.sin(theta)
    u = cos * x + sin * y
    v = -sin * x + cos * y
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None,
                    theta: float = 0.0, beta: float = 1.0, plateau: bool = False) -> np.ndarray:
    """A normalised blur kernel: Gaussian (beta 1), generalized Gaussian (exp(-q^beta / 2)
    with q the Gaussian's quadratic form) or plateau (1 / (1 + q^beta))."""
    q = _quadratic_form(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    kernel = 1.0 / (1.0 + q ** beta) if plateau else np.exp(-0.5 * q ** beta)
    return (kernel / kernel.sum()).astype(np.float32)


def sinc_kernel(size: int, cutoff: float) -> np.ndarray:
    """A circular low-pass (2-D sinc, jinc) of `cutoff` radians per pixel: it rings at edges."""
    from scipy.special import j1

    x, y = _grid(size)
    r = np.hypot(x, y)
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = cutoff * j1(cutoff * r) / (2 * np.pi * r)
    kernel[r == 0] = cutoff ** 2 / (4 * np.pi)
    return (kernel / kernel.sum()).astype(np.float32)


def random_kernel(rng: np.random.Generator, ranges: Ranges, sigma: tuple[float, float]) -> np.ndarray:
    """One blur kernel of a random kind, size and shape (or a sinc, with ranges.sinc_prob)."""
    low, high = ranges.kernel_sizes
    size = int(rng.choice(np.arange(low | 1, high + 1, 2)))
    if rng.random() < ranges.sinc_prob:
        # Small kernels keep a gentle cutoff; only large ones may cut low (strong ringing).
        return sinc_kernel(size, rng.uniform(math.pi / 3 if size < 13 else math.pi / 5, math.pi))
    kind = KERNEL_KINDS[rng.choice(len(KERNEL_KINDS), p=np.asarray(ranges.kernel_probs) / sum(ranges.kernel_probs))]
    sigma_x = rng.uniform(*sigma)
    sigma_y, theta = sigma_x, 0.0
    if kind.endswith("aniso"):
        sigma_y, theta = rng.uniform(*sigma), rng.uniform(-math.pi, math.pi)
    if kind.startswith("generalized"):
        return gaussian_kernel(size, sigma_x, sigma_y, theta, beta=_shape(rng, ranges.generalized_beta))
    if kind.startswith("plateau"):
        return gaussian_kernel(size, sigma_x, sigma_y, theta, beta=rng.uniform(*ranges.plateau_beta),
                               plateau=True)
    return gaussian_kernel(size, sigma_x, sigma_y, theta)


def _shape(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    # Half the draws below 1 (peaky), half above (flat), as Real-ESRGAN draws beta.
    low, high = bounds
    return rng.uniform(low, 1.0) if rng.random() < 0.5 and low < 1.0 else rng.uniform(1.0, high)


# --- steps ----------------------------------------------------------------------------


def blur(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve float32 HxWxC with a kernel, reflecting at the borders (FFT, all channels at once)."""
    from scipy.signal import fftconvolve

    pad = kernel.shape[0] // 2
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    return fftconvolve(padded, kernel[:, :, None], mode="valid", axes=(0, 1)).astype(np.float32)


def resize(image: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    """Resize float32 HxWxC with Pillow's `mode` filter, channel by channel in float."""
    if image.shape[:2] == (height, width):
        return image
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, c]), "F")
                         .resize((width, height), RESIZE_MODES[mode]))
              for c in range(image.shape[2])]
    return np.stack(planes, axis=2)


def add_gaussian_noise(image: np.ndarray, sigma: float, rng: np.random.Generator,
                       gray: bool = False) -> np.ndarray:
    """Add N(0, sigma / 255) noise, the same on every channel when `gray`."""
    shape = image.shape[:2] + (1,) if gray else image.shape
    return image + rng.normal(0.0, sigma / 255.0, shape).astype(np.float32)


def add_poisson_noise(image: np.ndarray, peak: float, rng: np.random.Generator,
                      gray: bool = False) -> np.ndarray:
    """Shot noise of a sensor that counts `peak` photons at white; on luma only when `gray`."""
    clipped = np.clip(image, 0.0, 1.0)
    if gray:
        luma = clipped @ np.array([0.299, 0.587, 0.114], np.float32)
        noise = rng.poisson(luma * peak) / peak - luma
        return image + noise[:, :, None].astype(np.float32)
    return image + (rng.poisson(clipped * peak) / peak - clipped).astype(np.float32)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """A real JPEG encode and decode (Pillow's libjpeg, 4:2:0 chroma as cameras write)."""
    return jpeg_decoded(jpeg_file(image, quality))


def jpeg_file(image: np.ndarray, quality: int) -> bytes:
    """The JPEG file of a float image in [0, 1] (Pillow's libjpeg, 4:2:0 chroma)."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


def jpeg_decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as decoded:
        return np.asarray(decoded.convert("RGB"), np.float32) * np.float32(1 / 255)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# --- the pipeline ---------------------------------------------------------------------


def _random_mode(rng: np.random.Generator, ranges: Ranges) -> str:
    probs = np.asarray(ranges.resize_mode_probs, np.float64)
    return tuple(RESIZE_MODES)[rng.choice(3, p=probs / probs.sum())]


def _noise(image: np.ndarray, rng: np.random.Generator, ranges: Ranges) -> np.ndarray:
    gray = rng.random() < ranges.gray_noise_prob
    if rng.random() < ranges.gaussian_noise_prob:
        return add_gaussian_noise(image, rng.uniform(*ranges.noise_sigma), rng, gray)
    low, high = np.log(ranges.poisson_peak)
    return add_poisson_noise(image, float(np.exp(rng.uniform(low, high))), rng, gray)


def _jpeg_quality(rng: np.random.Generator, ranges: Ranges) -> int:
    return int(rng.integers(ranges.jpeg_quality[0], ranges.jpeg_quality[1] + 1))


def degrade(hr: np.ndarray, scale: int, ranges: Ranges, rng: np.random.Generator) -> np.ndarray:
    """A realistic LR patch (uint8, HR size / scale) from an HR patch (uint8 RGB, sides a
    multiple of `scale`). A pure function of `rng`'s state."""
    height, width = hr.shape[0] // scale, hr.shape[1] // scale
    image = hr.astype(np.float32) * np.float32(1 / 255)

    # First order, at HR resolution.
    if rng.random() < ranges.blur_prob:
        sigma = tuple(s * scale for s in ranges.blur_sigma_lr)
        image = blur(image, random_kernel(rng, ranges, sigma))
    direction = rng.choice(3, p=np.asarray(ranges.resize_probs) / sum(ranges.resize_probs))
    factor = (rng.uniform(1.0, ranges.resize_range[1]) if direction == 0 else
              rng.uniform(ranges.resize_range[0], 1.0) if direction == 1 else 1.0)
    image = resize(image, max(2, round(hr.shape[0] * factor)), max(2, round(hr.shape[1] * factor)),
                   _random_mode(rng, ranges))
    if rng.random() < ranges.noise_prob:
        image = _noise(image, rng, ranges)
    if rng.random() < ranges.jpeg_prob:
        image = jpeg(image, _jpeg_quality(rng, ranges))

    # Second order, around LR resolution.
    if rng.random() < ranges.second_order_prob:
        if rng.random() < ranges.blur2_prob:
            image = blur(image, random_kernel(rng, ranges, ranges.blur2_sigma))
        factor = rng.uniform(*ranges.resize2_range)
        image = resize(image, max(2, round(height * factor)), max(2, round(width * factor)),
                       _random_mode(rng, ranges))
        if rng.random() < ranges.noise_prob:
            image = _noise(image, rng, ranges)

    # Last: the exact LR size, then a sinc and the final JPEG in either order.
    image = resize(image, height, width, _random_mode(rng, ranges))
    sinc = (sinc_kernel(int(rng.choice([7, 9, 11, 13])), rng.uniform(math.pi / 3, math.pi))
            if rng.random() < ranges.final_sinc_prob else None)
    compress = rng.random() < ranges.jpeg_prob
    quality = _jpeg_quality(rng, ranges)
    if rng.random() < 0.5:
        if sinc is not None:
            image = blur(image, sinc)
        if compress:
            image = jpeg(image, quality)
    else:
        if compress:
            image = jpeg(image, quality)
        if sinc is not None:
            image = blur(image, sinc)
    return to_uint8(image)


# --- evaluation presets ---------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A named degradation of the clean LR, for evaluation; random ones are seeded per image."""

    name: str
    description: str
    blur_sigma: tuple[float, float] | None = None
    """Gaussian blur sigma in LR pixels (a fixed value is a range of one)."""
    noise_sigma: tuple[float, float] | None = None
    """Gaussian colour noise sigma in 8-bit levels."""
    jpeg_quality: tuple[int, int] | None = None
    """JPEG quality, inclusive."""

    def apply(self, lr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The degraded LR (uint8) of a clean uint8 LR: blur, then noise, then JPEG."""
        return self.apply_file(lr, rng)[0]

    def apply_file(self, lr: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, bytes | None]:
        """(the degraded LR, the JPEG file it was decoded from; None where the preset ends in
        no JPEG): what an archive would hold, for rules that read the file (--model auto)."""
        if self.blur_sigma is None and self.noise_sigma is None and self.jpeg_quality is None:
            return lr.copy(), None
        data = None
        image = lr.astype(np.float32) * np.float32(1 / 255)
        if image.ndim == 2:
            image = image[:, :, None]
        if self.blur_sigma is not None:
            sigma = rng.uniform(*self.blur_sigma)
            image = blur(image, gaussian_kernel(2 * math.ceil(3 * sigma) + 1, sigma))
        if self.noise_sigma is not None:
            image = add_gaussian_noise(image, rng.uniform(*self.noise_sigma), rng)
        if self.jpeg_quality is not None:
            rgb = image if image.shape[2] == 3 else np.repeat(image, 3, axis=2)
            data = jpeg_file(rgb, int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1)))
            image = jpeg_decoded(data)
            if lr.ndim == 2 or lr.shape[2] == 1:
                image = image[:, :, :1]
        out = to_uint8(image)
        return out.reshape(lr.shape), data


PRESETS = {p.name: p for p in (
    Preset("clean", "the clean bicubic LR"),
    Preset("jpeg30", "JPEG quality 30", jpeg_quality=(30, 30)),
    Preset("jpeg50", "JPEG quality 50", jpeg_quality=(50, 50)),
    Preset("jpeg75", "JPEG quality 75", jpeg_quality=(75, 75)),
    Preset("noise15", "Gaussian colour noise, sigma 15 levels", noise_sigma=(15.0, 15.0)),
    Preset("blur1.5", "Gaussian blur, sigma 1.5 LR px", blur_sigma=(1.5, 1.5)),
    Preset("realistic", "per image: blur sigma 0.3-1.2 LR px, noise sigma 2-10 levels, JPEG 40-85",
           blur_sigma=(0.3, 1.2), noise_sigma=(2.0, 10.0), jpeg_quality=(40, 85)),
)}


def preset(name: str) -> Preset:
    """A named preset; `jpegQ` (any quality 1-100), `noiseS` (any sigma) and `blurS` are made on
    demand, so a sweep can ask for jpeg35 or noise7."""
    if name in PRESETS:
        return PRESETS[name]
    import re

    match = re.fullmatch(r"(jpeg|noise|blur)(\d+(?:\.\d+)?)", name)
    if match:
        kind, value = match.group(1), float(match.group(2))
        if kind == "jpeg" and 1 <= value <= 100 and value == int(value):
            return Preset(name, f"JPEG quality {value:g}", jpeg_quality=(int(value), int(value)))
        if kind == "noise":
            return Preset(name, f"Gaussian colour noise, sigma {value:g} levels", noise_sigma=(value, value))
        if kind == "blur" and value > 0:
            return Preset(name, f"Gaussian blur, sigma {value:g} LR px", blur_sigma=(value, value))
    raise ValueError(f"unknown degradation preset {name!r}; choose from {', '.join(PRESETS)}, "
                     "or jpegQ, noiseS, blurS with your own numbers")


def apply_preset(lr: np.ndarray, name: str, seed: int, index: int) -> np.ndarray:
    """The `name` preset on one clean LR; image `index` of a set always gets the same draw."""
    return apply_preset_file(lr, name, seed, index)[0]


def apply_preset_file(lr: np.ndarray, name: str, seed: int, index: int) -> tuple[np.ndarray, bytes | None]:
    """apply_preset, with the JPEG file the LR was decoded from (None: no JPEG in the preset)."""
    return preset(name).apply_file(lr, np.random.default_rng([seed, index]))
