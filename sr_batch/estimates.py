"""Cheap per-image degradation estimates that `--model auto` routes on: JPEG quality, blocking,
noise, blur.

Four independent clues, each cheap next to an upscale:

- the JPEG header's quantization tables, inverted to the IJG/libjpeg quality that made them;
- 8x8 blockiness of the luma, which still shows when a JPEG was re-saved as PNG;
- the sigma of additive noise, per colour channel in 8-bit levels (the unit of
  `degradations.Ranges.noise_sigma`);
- blur, as Crete et al.'s "blur effect" (SPIE 2007): how little of the luma's variation
  between neighbours a further low-pass removes (0 sharp, 1 blurred through).

Pixel estimates look at most `_SAMPLE_TILES` tiles of `_SAMPLE_TILE`^2 (1 MP) spread
over the image, so their cost stops growing with the image above 1 MP.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from sr_batch.quality import rgb_to_y

# ITU-T T.81 Annex K, tables K.1 (luminance) and K.2 (chrominance), in natural
# (row-major) order: libjpeg scales these by the quality factor.
_ANNEX_K_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
])
_ANNEX_K_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
] + [99] * 32)
_QUALITIES = np.arange(1, 101)
# libjpeg clamps scaled entries to 255 when it forces baseline (Pillow does), else to
# 32767 (16-bit tables, e.g. `cjpeg` below quality 25 without -baseline).
_TABLE_LIMITS = (255, 32767)
# Tables that stray from the best-fitting scaled standard table by at most this many
# levels, entry by entry, count as standard: encoders that scale Annex K with their own
# rounding, not only libjpeg's exact integer arithmetic.
_STANDARD_TOLERANCE = 1

# 1 MP of tiles: enough pixels that the 8 per-phase means of blockiness differ by well
# under 1 % on clean images, few enough that the estimates stay tens of ms per image.
_SAMPLE_TILE = 256
_SAMPLE_TILES = 16
_BLOCK = 8  # JPEG's DCT block side
# Luma levels added to a run's mean step before dividing by it: keeps runs of flat pixels
# (mean 0) and rounding steps of 1 level from ruling the normalised steps.
_RUN_FLOOR = 0.5
# Below this many pixels on a side there are too few block borders to tell blocking from content.
_MIN_BLOCKINESS_SIDE = 2 * _BLOCK
# Immerkaer's 3x3 kernel [1 -2 1; -2 4 -2; 1 -2 1] is the outer product of two
# second differences; its L2 norm is 6, so the residual of N(0, s^2) noise is N(0, 36 s^2).
_RESIDUAL_NORM = 6.0
# Only the flattest quarter of the 2x2 bins (by the luma gradient around them) feed the
# noise estimate: edges and texture inflate the residual, while noise barely moves a
# gradient of 2x2 means taken around the bin, so the choice hardly biases the noise.
# On the tests' dead-leaves images a half reads sigma 2 as 2.1-2.4, a quarter as 2.0-2.1.
_FLAT_FRACTION = 0.25
# Below this many pixels on a side no 2x2 bin has neighbours on every side.
_MIN_NOISE_SIDE = 6
_LEVELS_16_TO_8 = 257.0  # 65535 / 255
# The blur effect's low-pass: a box of this many pixels along each axis (the paper's 9-11).
_BLUR_WINDOW = 11
# Only steps between neighbours of at least this many luma levels count: the gentle steps of
# smooth areas (sky, gradients, graphics) say nothing about blur and would read as blurred.
# Without it, smooth synthetic scenes read 0.65-0.76, as blurred as a sigma 3 blur.
_BLUR_MIN_STEP = 4.0
# Fewer such steps than this share of all: too little structure to read the blur from.
_BLUR_MIN_SHARE = 0.01


@dataclass(frozen=True)
class Estimates:
    """What one image's bytes and pixels say about its degradation."""

    jpeg_quality: float | None
    """IJG quality 1-100 that made the JPEG's quantization tables; None when not a JPEG."""
    jpeg_standard_tables: bool | None
    """Whether those tables are scaled Annex K tables (libjpeg, Pillow); None when not a JPEG."""
    blockiness: float
    """8x8 luma blocking: about 1.0 when clean, 1.4 or more for JPEG decodes at quality <= 75; nan when tiny."""
    noise_sigma: float
    """Additive noise sigma per colour channel, in 8-bit levels; nan when tiny or all clipped."""
    blur: float = math.nan
    """Blur effect, 0 (sharp) to 1: clean downscales of photos read about 0.1-0.36, a Gaussian blur
    of sigma 1.5 LR px about 0.34-0.6; nan when flat, too smooth or smaller than the low-pass window."""


def estimate(data: bytes, pixels: np.ndarray) -> Estimates:
    """All estimates of one image: header clues from its file bytes, pixel clues from its decode.

    `pixels` is HxW or HxWx{1,3,4} uint8 or uint16 (alpha ignored); images above 1 MP
    are sampled as a grid of 16 tiles of 256^2 at block-aligned positions.
    """
    quality, standard = _jpeg_estimate(data)
    tiles = sample_tiles(pixels)
    luma = _tiles_luma(tiles)
    return Estimates(
        jpeg_quality=quality,
        jpeg_standard_tables=standard,
        blockiness=_tiles_blockiness(luma),
        noise_sigma=_tiles_noise_sigma(tiles, luma),
        blur=_tiles_blur(luma),
    )


# --- JPEG header -------------------------------------------------------------------------


def jpeg_quality_from_tables(tables: Mapping[int, Sequence[int]]) -> tuple[float | None, bool]:
    """(IJG quality, standard) of quantization tables as Pillow's `Image.quantization` gives them.

    Entries are in natural (row-major) order, as Pillow returns them since 8.3
    (python-pillow/Pillow#4989; the file stores them in zigzag order). Table 0 is compared with Annex K luminance, the others
    with chrominance. The quality is the best fit over 1..100 (the mean of the qualities
    that fit equally well); `standard` is False when even the best fit is off by more
    than one level somewhere. Returns (None, False) for no tables.
    """
    if not tables:
        return None, False
    # error[limit, quality]: summed |log ratio| of every entry to the scaled standard table;
    # deviation[limit, quality]: the largest difference of one entry, in levels.
    error = np.zeros((len(_TABLE_LIMITS), len(_QUALITIES)))
    deviation = np.zeros_like(error)
    for index, table in tables.items():
        actual = np.asarray(table, dtype=np.float64)
        if actual.shape != (64,):
            raise ValueError(f"quantization table {index} has {actual.size} entries, expected 64")
        base = _ANNEX_K_LUMA if index == 0 else _ANNEX_K_CHROMA
        for row, limit in enumerate(_TABLE_LIMITS):
            expected = _scaled_tables(base, limit)
            # Log ratios weigh a 2-vs-1 at high quality like a 200-vs-100 at low quality.
            error[row] += np.abs(np.log(np.maximum(actual, 1)) - np.log(expected)).sum(axis=1)
            deviation[row] = np.maximum(deviation[row], np.abs(actual - expected).max(axis=1))
    best = error <= error.min() + 1e-9
    return float(_QUALITIES[best.any(axis=0)].mean()), bool(deviation[best].min() <= _STANDARD_TOLERANCE)


def jpeg_quality_of(data: bytes) -> float | None:
    """IJG quality of a JPEG from its header alone (no pixel decode); None for other data."""
    return _jpeg_estimate(data)[0]


def _jpeg_estimate(data: bytes) -> tuple[float | None, bool | None]:
    tables = _read_quantization(data)
    if tables is None:
        return None, None
    return jpeg_quality_from_tables(tables)


def _read_quantization(data: bytes) -> dict[int, Sequence[int]] | None:
    """The quantization tables of a JPEG (or MPO, JPEG frames), read from the header only."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ("JPEG", "MPO"):
                return None
            return dict(image.quantization) or None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def _scaled_tables(base: np.ndarray, limit: int) -> np.ndarray:
    """libjpeg's jpeg_quality_scaling + jpeg_add_quant_table: (100, 64) tables for qualities 1..100."""
    scale = np.where(_QUALITIES < 50, 5000 // _QUALITIES, 200 - 2 * _QUALITIES)
    scaled = (base[None, :] * scale[:, None] + 50) // 100
    return np.clip(scaled, 1, limit).astype(np.float64)


# --- pixels ------------------------------------------------------------------------------


def sample_tiles(image: np.ndarray) -> np.ndarray:
    """The pixels the pixel estimates look at, as an (N, h, w, ...) stack of tiles.

    Up to 1 MP: the whole image, one tile. Larger: a grid of up to 16 tiles of 256^2
    spread evenly, each starting at a multiple of 8 px so that a JPEG block grid has the
    same phase in every tile.
    """
    height, width = image.shape[:2]
    if height * width <= _SAMPLE_TILES * _SAMPLE_TILE**2:
        return image[None]
    tile_h, tile_w = min(_SAMPLE_TILE, height), min(_SAMPLE_TILE, width)
    # As many rows and columns of tiles as the image's shape asks for, 16 tiles in all.
    rows = int(np.clip(round(math.sqrt(_SAMPLE_TILES * height / width)), 1, _SAMPLE_TILES))
    cols = _SAMPLE_TILES // rows
    tops = _aligned_starts(height, tile_h, rows)
    lefts = _aligned_starts(width, tile_w, cols)
    return np.stack([image[t:t + tile_h, l:l + tile_w] for t in tops for l in lefts])


def _aligned_starts(length: int, tile: int, count: int) -> list[int]:
    """`count` tile starts spread over `length`, each rounded down to a multiple of the block."""
    starts = np.linspace(0, length - tile, count)
    return sorted({int(s) // _BLOCK * _BLOCK for s in starts})


def blockiness(luma: np.ndarray) -> float:
    """8x8 JPEG blocking of a luma plane (any scale): about 1.0 when clean, higher when blocky.

    Per axis, the absolute steps between neighbours are cut into runs of 8, each run
    divided by its mean (plus half a level), and averaged separately for each of the 8
    phases of the step's position; with JPEG blocking the phase on the block border
    stands out. The score of an axis is the strongest phase over the second strongest,
    so an unknown grid offset (a crop) costs nothing and a clean image's random strongest
    phase is measured against its runner-up, not the average. The image's score is the
    smaller of the two axes: JPEG blocks both axes, stripes or periodic content one.
    Returns nan below 16 px on a side.
    """
    if luma.ndim != 2:
        raise ValueError(f"expected an HxW luma plane, got shape {luma.shape}")
    return _tiles_blockiness(luma[None].astype(np.float32, copy=False))


def _tiles_blockiness(luma: np.ndarray) -> float:
    _, height, width = luma.shape
    if min(height, width) < _MIN_BLOCKINESS_SIDE:
        return math.nan
    # Steps down columns, then (transposed, so that runs are rows of memory) along rows.
    return min(_axis_blockiness(luma), _axis_blockiness(np.ascontiguousarray(luma.transpose(0, 2, 1))))


def _axis_blockiness(luma: np.ndarray) -> float:
    """Blockiness of the steps between vertically neighbouring pixels of (N, h, w) luma."""
    steps = np.abs(np.diff(luma, axis=1))
    phases = _phase_means(steps)
    # Runs that hold one block's inner steps and its border (the border step last) score
    # JPEG blocks best, as blocks are coded flat or busy as a whole: realign the runs
    # so that the strongest phase, the likely border, ends them.
    shift = (int(np.argmax(phases)) + 1) % _BLOCK
    if shift:
        phases = _phase_means(steps[:, shift:])
    phases = np.sort(phases)
    strongest, runner_up = phases[-1], phases[-2]
    if strongest == 0:
        return 1.0  # flat: no steps anywhere
    return float(strongest / max(runner_up, 1e-6 * strongest))


def _phase_means(steps: np.ndarray) -> np.ndarray:
    """Mean normalised step at each of the 8 positions in runs of 8 rows of (N, h, w) steps."""
    count, rows, cols = steps.shape
    runs = steps[:, : rows // _BLOCK * _BLOCK].reshape(count, rows // _BLOCK, _BLOCK, cols)
    # Each run counts as much as any other: blocking shows in smooth areas, which
    # a plain mean would drown in the large steps of edges and texture.
    runs = runs / (runs.mean(axis=2, keepdims=True) + _RUN_FLOOR)
    return runs.mean(axis=(0, 1, 3), dtype=np.float64)


def blur(luma: np.ndarray) -> float:
    """Crete et al.'s blur effect of a luma plane: per axis, the variation between neighbours
    that a box low-pass of _BLUR_WINDOW px removes, as a share of all of it (steps of at least
    _BLUR_MIN_STEP levels only); one minus that, taken on the blurrier axis. 0 sharp, 1 blurred
    through; nan when flat, too smooth to read, or smaller than the low-pass window."""
    if luma.ndim != 2:
        raise ValueError(f"expected an HxW luma plane, got shape {luma.shape}")
    return _tiles_blur(luma[None].astype(np.float32, copy=False))


def _tiles_blur(luma: np.ndarray) -> float:
    from scipy.ndimage import uniform_filter1d

    if min(luma.shape[1:]) < _BLUR_WINDOW:
        return math.nan
    scores = []
    for axis in (1, 2):
        variation = np.abs(np.diff(luma, axis=axis))
        low_passed = np.abs(np.diff(uniform_filter1d(luma, _BLUR_WINDOW, axis=axis), axis=axis))
        counted = variation >= _BLUR_MIN_STEP
        if counted.sum() < _BLUR_MIN_SHARE * counted.size:
            return math.nan
        total = float(variation[counted].sum(dtype=np.float64))
        removed = float(np.maximum(variation - low_passed, 0)[counted].sum(dtype=np.float64))
        scores.append((total - removed) / total)
    return max(scores)


def noise_sigma(image: np.ndarray) -> float:
    """Sigma of additive white noise in 8-bit levels, the mean over colour channels.

    `image` is HxW or HxWx{1,3,4}: uint8, uint16 (scaled to 8-bit levels) or float in
    [0, 1]; alpha is ignored. Immerkaer (1996): the residual of a 3x3 kernel that cancels
    planes and ramps, sigma = sqrt(pi/2) mean|residual| / 6, averaged over the flattest
    quarter of the 2x2 bins (by the luma gradient around them) so that edges and texture
    count little; bins with a clipped value (0 or full scale, where noise cannot show)
    are left out. Per channel, not on luma, because luma mixes the channels: its noise
    is 0.57 of the channels' for independent (colour) noise but 0.86 for the same noise
    on every channel (grey noise). Returns nan below 6 px on a side or when every bin
    is clipped.
    """
    tiles = image[None]
    return _tiles_noise_sigma(tiles, _tiles_luma(tiles))


def _tiles_noise_sigma(tiles: np.ndarray, luma: np.ndarray) -> float:
    height, width = tiles.shape[1:3]
    if min(height, width) < _MIN_NOISE_SIDE:
        return math.nan
    # Whole 2x2 bins only: the flatness mask is made on 2x2 means.
    height, width = height // 2 * 2, width // 2 * 2
    channels = _tiles_levels(tiles[:, :height, :width])
    clipped = np.zeros((tiles.shape[0], height // 2 - 2, width // 2 - 2), dtype=bool)
    for channel in channels:
        # Bins of pixels 2 .. h - 3, the ones with a bin on every side (bool sums are ors).
        clipped |= _bin_sums(((channel <= 0) | (channel >= 255))[:, 2:-2, 2:-2])
    flat = _flat_bins(luma[:, :height, :width], usable=~clipped)
    if not flat.any():
        return math.nan
    sigmas = []
    for channel in channels:
        # The residual starts at pixel 1: its [1:-1] covers pixels 2 .. h - 3 as the bins do.
        residual = np.abs(_immerkaer_residual(channel)[:, 1:-1, 1:-1])
        mean_abs = _bin_sums(residual)[flat].mean(dtype=np.float64) / 4
        sigmas.append(math.sqrt(math.pi / 2) * mean_abs / _RESIDUAL_NORM)
    return float(np.mean(sigmas))


def _immerkaer_residual(plane: np.ndarray) -> np.ndarray:
    """Second difference along rows, then along columns: (N, h - 2, w - 2)."""
    # In place, without the temporaries of `a - 2 * b + c`: this is the hot loop of `estimate`.
    across = plane[:, :, :-2] + plane[:, :, 2:]
    across -= plane[:, :, 1:-1]
    across -= plane[:, :, 1:-1]
    residual = across[:, :-2] + across[:, 2:]
    residual -= across[:, 1:-1]
    residual -= across[:, 1:-1]
    return residual


def _bin_sums(plane: np.ndarray) -> np.ndarray:
    """Sums over the 2x2 bins of (N, h, w) with h and w even: (N, h/2, w/2)."""
    return plane[:, 0::2, 0::2] + plane[:, 1::2, 0::2] + plane[:, 0::2, 1::2] + plane[:, 1::2, 1::2]


def _flat_bins(luma: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """True on the flattest quarter of the usable inner 2x2 bins of (N, h, w) luma.

    The gradient is a central difference of 2x2 means, so it looks past the bin's own
    pixels and averages noise down: where noise rules, the choice is nearly random.
    """
    bins = _bin_sums(luma)
    across = bins[:, 1:-1, 2:] - bins[:, 1:-1, :-2]
    down = bins[:, 2:, 1:-1] - bins[:, :-2, 1:-1]
    gradient = (across**2 + down**2)[usable]
    if gradient.size == 0:
        return usable
    rank = int(_FLAT_FRACTION * (gradient.size - 1))
    threshold = np.partition(gradient, rank)[rank]
    flat = np.zeros_like(usable)
    flat[usable] = gradient <= threshold
    return flat


def _tiles_levels(tiles: np.ndarray) -> list[np.ndarray]:
    """Colour channels of (N, h, w[, C]) tiles as float32 (N, h, w) planes in 8-bit levels."""
    if tiles.ndim == 3:
        planes = [tiles]
    elif tiles.ndim == 4 and tiles.shape[3] in (1, 3, 4):
        planes = [tiles[..., c] for c in range(min(tiles.shape[3], 3))]
    else:
        raise ValueError(f"expected HxW, HxWx1, HxWx3 or HxWx4, got shape {tiles.shape[1:]}")
    if tiles.dtype == np.uint8:
        factor = 1.0
    elif tiles.dtype == np.uint16:
        factor = 1.0 / _LEVELS_16_TO_8
    elif np.issubdtype(tiles.dtype, np.floating):
        factor = 255.0
    else:
        raise TypeError(f"unsupported dtype {tiles.dtype}; expected uint8, uint16 or float")
    return [plane.astype(np.float32) * np.float32(factor) for plane in planes]


def _tiles_luma(tiles: np.ndarray) -> np.ndarray:
    """BT.601 luma (0-255 scale) of (N, h, w[, C]) tiles as float32 (N, h, w)."""
    count, height, width = tiles.shape[:3]
    flat = tiles.reshape(count * height, width, *tiles.shape[3:])
    return rgb_to_y(flat).astype(np.float32).reshape(count, height, width)
