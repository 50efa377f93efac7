"""NIQE: a no-reference naturalness score (Mittal, Soundararajan & Bovik, IEEE SPL 2013).

The recipe of the paper and its MATLAB release: BT.601 luma (`quality.rgb_to_y`'s Y in
[16, 235], which `centred_luma` makes channel by channel, in float32 for scoring;
the paper used MATLAB's rgb2gray), cropped to whole 96x96 patches; at two
scales (the second a half-size antialiased bicubic downscale, Pillow's, as
`resample.resize_bicubic`) the MSCN coefficients (x - mu) / (sigma + 1) under a 7x7
Gaussian window (sigma 7/6, edges replicated); per patch 18 features: the GGD shape
and variance of the MSCN coefficients, and for the products of horizontal, vertical,
main- and anti-diagonal neighbours the AGGD shape, mean and left and right variances,
each shape fitted by moment matching on a grid 0.2:0.001:10. The test image's patch
features get a multivariate Gaussian, and the score is the distance
sqrt((mu_p - mu_t)^T ((S_p + S_t) / 2)^+ (mu_p - mu_t)) to the pristine model.
Lower is more natural.

Choices where the MATLAB code leaves room:
- Neighbour products stay inside the patch (MATLAB's circshift also pairs each
  patch's opposite edges, about 1 % of pairs).
- A deviation from the local mean under 1e-4 grey levels is round-off of a flat
  window and counts as exactly 0 (neither left nor right in the AGGD).
- A patch whose shape is undefined (flat, or products of one sign only) has NaN
  features and is left out; an image with no patch left, or smaller than one
  patch, scores NaN.
- Scoring runs in float32 (fast); fitting in float64, so a refit reproduces the
  shipped model to round-off on any machine.

The shipped pristine model (`niqe_pristine.json`) is fitted by `niqe_fit`
(`python jobs/fit_niqe.py datasets/T91/HR datasets/BSDS200/HR -o sr_batch/niqe_pristine.json`)
on patches whose sharpness (mean sigma) exceeds 0.75 of their image's sharpest, as
the paper does. It is not the paper's pristine set (125 other photographs), so these
scores are not comparable with published NIQE values: compare them with each other.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import special

from sr_batch import quality, resample, storage
from sr_batch.errors import ConfigError

PATCH = 96  # the paper's patch side, at full scale (half of it at the second scale)
DEFAULT_PARAMS = Path(__file__).with_name("niqe_pristine.json")
FEATURES_PER_SCALE = 18
SCALES = 2

# The MSCN window: MATLAB's fspecial('gaussian', 7, 7/6), separable.
_WINDOW_RADIUS = 3
_WINDOW_SIGMA = 7 / 6
# Deviations from the local mean under this many grey levels (Y, 0-255 scale) are the
# filter's round-off on a flat window (float32: a few 1e-5), not signal: a one-level
# step of an 8-bit image in the window's corner already gives 1.4e-4.
_FLAT_TOLERANCE = 1e-4
# BT.601 Y of black, and the centre of Y's range [16, 235]: centred values keep the
# float32 variance (E[x^2] - mu^2) precise.
_Y_BLACK = 16.0
_Y_CENTRE = 125.5
# Tile of patches processed at a time: its dozen float32 temporaries stay in the L2 cache.
_TILE_PIXELS = 48_000
# The moment-matching grid of shape parameters, as the MATLAB code's 0.2:0.001:10.
_SHAPES = np.round(np.arange(200, 10001) * 1e-3, 3)
_NEIGHBOURS = ("horizontal", "vertical", "diagonal", "antidiagonal")
FEATURE_NAMES = tuple(
    f"s{scale}_{name}"
    for scale in range(1, SCALES + 1)
    for name in ["mscn_shape", "mscn_variance"]
    + [f"{pair}_{what}" for pair in _NEIGHBOURS for what in ("shape", "mean", "left_variance", "right_variance")]
)


@dataclass(frozen=True)
class NiqeParams:
    """A pristine model: the mean and covariance of the 36 patch features, and where they came from."""

    mu: np.ndarray
    """Mean feature vector, shape (36,)."""
    cov: np.ndarray
    """Feature covariance, shape (36, 36)."""
    provenance: dict
    """How it was fitted: folders, image and patch counts, patch size, threshold, inputs' hash."""


def niqe(image: np.ndarray, params: NiqeParams | None = None) -> float:
    """NIQE of an image (uint8, uint16 or float in [0, 1]; grey, RGB or RGBA); NaN if undefined.

    Undefined: smaller than one 96x96 patch, or no patch with defined features (flat).
    `params` defaults to the shipped pristine model.
    """
    if params is None:
        params = load_params()
    features, _ = patch_features(image, np.float32)
    features = features[~np.isnan(features).any(axis=1)]
    if len(features) == 0:
        return math.nan
    return distance(params, features)


def distance(params: NiqeParams, features: np.ndarray) -> float:
    """The NIQE distance between the pristine model and a Gaussian fitted to patch features (n, 36)."""
    features = features.astype(np.float64, copy=False)
    mu = features.mean(axis=0)
    # One patch has no spread: its covariance is zero, as MATLAB's nancov gives.
    cov = np.cov(features, rowvar=False) if len(features) > 1 else np.zeros_like(params.cov)
    delta = params.mu - mu
    # The SVD route: pinv's hermitian (eigh) route costs 100x more where BLAS threads contend.
    pooled = np.linalg.pinv((params.cov + cov) / 2)
    return float(math.sqrt(max(delta @ pooled @ delta, 0.0)))


def patch_features(image: np.ndarray, dtype=np.float32, patch: int = PATCH) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, 36) and sharpness (n,) of an image's whole patches, row by row.

    Sharpness is a patch's mean local sigma at full scale. Rows with an undefined
    feature hold NaN there. An image smaller than one patch gives n = 0.
    """
    rows, cols = image.shape[0] // patch, image.shape[1] // patch
    scaled = centred_luma(image[: rows * patch, : cols * patch], dtype)  # checks dtype and layout
    if rows == 0 or cols == 0:
        return np.empty((0, SCALES * FEATURES_PER_SCALE)), np.empty(0)
    per_scale = []
    sharpness = None
    for scale in range(1, SCALES + 1):
        size = patch // scale
        sums = _patch_sums(scaled, size)
        per_scale.append(_features_from_sums(sums, size))
        if sharpness is None:
            sharpness = sums[..., _SIGMA_SUM].reshape(-1) / (size * size)
        if scale < SCALES:
            half = resample.resize_bicubic(scaled.astype(np.float32, copy=False),
                                           (scaled.shape[1] // 2, scaled.shape[0] // 2))
            scaled = half.astype(dtype, copy=False)
    return np.concatenate(per_scale, axis=1), sharpness


def centred_luma(image: np.ndarray, dtype=np.float32) -> np.ndarray:
    """`quality.rgb_to_y`'s BT.601 Y less 125.5 (the middle of [16, 235]), made in dtype.

    Channel by channel in float32 it is 3x faster than rgb_to_y and equal to it to 1e-4.
    """
    weights = quality._unit_luma_weights(image).astype(dtype)
    planes = image if image.ndim == 3 else image[:, :, None]
    luma = planes[:, :, 0].astype(dtype)
    luma *= weights[0]
    for channel in range(1, len(weights)):
        plane = planes[:, :, channel].astype(dtype)
        plane *= weights[channel]
        luma += plane
    luma += _Y_BLACK - _Y_CENTRE
    return luma


# Per-patch sums, by index on the last axis: of the MSCN coefficients m (squared,
# absolute) and of the local sigma; then per neighbour pair of the products p = m m'
# the sums of p^2, p|p| and |p| and the counts of p < 0 and p != 0, from which the
# AGGD's left and right parts follow: the sum of p^2 where p < 0 is
# (sum p^2 - sum p|p|) / 2, the count of p > 0 is (count p != 0) - (count p < 0).
_M2, _M1, _SIGMA_SUM = 0, 1, 2
_PAIR_PRODUCTS = 3
_PAIR_SUMS = _PAIR_PRODUCTS + 2
_SUMS = 3 + _PAIR_SUMS * len(_NEIGHBOURS)


def _patch_sums(luma: np.ndarray, patch: int) -> np.ndarray:
    """Per-patch sums (rows, cols, _SUMS) of a luma plane whose sides are multiples of patch."""
    rows, cols = luma.shape[0] // patch, luma.shape[1] // patch
    r = _WINDOW_RADIUS
    window = _gaussian_window(luma.dtype)
    tile_cols = max(1, min(cols, _TILE_PIXELS // (patch * patch)))
    # Work buffers for every tile: fresh large arrays per tile would page-fault.
    size = patch * tile_cols * patch
    buffers = (np.empty(_PAIR_PRODUCTS * size, luma.dtype), np.empty(_PAIR_PRODUCTS * size, luma.dtype),
               np.empty(4 * size, bool))
    sums = np.empty((rows, cols, _SUMS), dtype=np.float64)
    for row in range(rows):
        # One row of patches with a window radius around it, edges replicated (MATLAB
        # imfilter's 'replicate'); padded band by band, never a copy of the whole plane.
        lines = np.clip(np.arange(row * patch - r, (row + 1) * patch + r), 0, luma.shape[0] - 1)
        band = np.pad(luma[lines], ((0, 0), (r, r)), mode="edge")
        for col in range(0, cols, tile_cols):
            count = min(tile_cols, cols - col)
            tile = band[:, col * patch : (col + count) * patch + 2 * r]
            sums[row, col : col + count] = _tile_sums(tile, patch, window, buffers)
    return sums


def _tile_sums(tile: np.ndarray, patch: int, window: np.ndarray, buffers: tuple) -> np.ndarray:
    """Per-patch sums (cols, _SUMS) of one row of patches, given with a window-radius margin."""
    factors_buffer, products_buffer, flags_buffer = buffers
    r = _WINDOW_RADIUS
    mu = _filter(_filter(tile, window, axis=1), window, axis=0)
    sigma = _filter(_filter(tile * tile, window, axis=1), window, axis=0)
    sigma -= mu * mu
    np.abs(sigma, out=sigma)  # round-off can make a flat window's variance slightly negative
    np.sqrt(sigma, out=sigma)
    deviation = np.subtract(tile[r:-r, r:-r], mu, out=mu)

    # Per-pixel factors whose neighbour products give each pair's sums: m^2, m|m|, |m|;
    # and flags whose neighbour pairs give its counts: m < 0, m != 0 (a deviation under
    # the tolerance is 0).
    height, width = deviation.shape
    factors = _view(factors_buffer, (_PAIR_PRODUCTS, height, width))
    square, signed_square, magnitude = factors
    negative, nonzero = _view(flags_buffer, (2, height, width))
    np.abs(deviation, out=magnitude)
    np.greater_equal(magnitude, _FLAT_TOLERANCE, out=nonzero)
    np.multiply(deviation, nonzero, out=deviation)
    sigma_plus_one = sigma + 1
    mscn = np.divide(deviation, sigma_plus_one, out=deviation)
    np.less(mscn, 0, out=negative)
    np.abs(mscn, out=magnitude)
    np.multiply(mscn, mscn, out=square)
    np.multiply(mscn, magnitude, out=signed_square)

    cols = width // patch
    out = np.empty((cols, _SUMS))
    out[:, _M2] = _sum_patches(square[None], patch)[0]
    out[:, _M1] = _sum_patches(magnitude[None], patch)[0]
    out[:, _SIGMA_SUM] = _sum_patches(sigma[None], patch)[0]
    # Products over whole rows of the tile (long inner loops, several times faster than
    # per-patch slices); the pairs that straddle two patches are dropped when summing.
    shifts = (
        (np.s_[:, 1:], np.s_[:, :-1]),  # horizontal
        (np.s_[1:, :], np.s_[:-1, :]),  # vertical
        (np.s_[1:, 1:], np.s_[:-1, :-1]),  # main diagonal
        (np.s_[1:, :-1], np.s_[:-1, 1:]),  # anti-diagonal
    )
    for k, (a, b) in enumerate(shifts):
        first = 3 + _PAIR_SUMS * k
        shape = negative[a].shape
        products = np.multiply(factors[(slice(None), *a)], factors[(slice(None), *b)],
                               out=_view(products_buffer, (_PAIR_PRODUCTS, *shape)))
        out[:, first : first + _PAIR_PRODUCTS] = _sum_patches(products, patch).T
        # A product is negative where exactly one factor is, and counts where neither is 0.
        pair_flags = _view(flags_buffer[2 * height * width :], (2, *shape))
        opposite = np.not_equal(negative[a], negative[b], out=pair_flags[0])
        both = np.logical_and(nonzero[a], nonzero[b], out=pair_flags[1])
        opposite &= both
        out[:, first + _PAIR_PRODUCTS : first + _PAIR_SUMS] = _count_patches(pair_flags, patch).T
    return out


def _view(buffer: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A contiguous array of `shape` on the front of a flat work buffer."""
    return buffer[: math.prod(shape)].reshape(shape)


def _sum_patches(stack: np.ndarray, patch: int) -> np.ndarray:
    """Per-patch sums (k, cols) of a (k, rows, width) stack of patch-wide columns."""
    # A matrix-vector product adds the rows: several times faster than a reduce over two axes.
    return _sum_columns(np.matmul(np.ones(stack.shape[1], dtype=stack.dtype), stack), patch)


def _count_patches(flags: np.ndarray, patch: int) -> np.ndarray:
    """Per-patch counts (k, cols) of a (k, rows, width) stack of boolean flags."""
    # Bytes add up in a byte while a column holds fewer than 256 rows: 4x less memory traffic.
    dtype = np.uint8 if flags.shape[1] < 256 else np.int64
    return _sum_columns(np.add.reduce(flags.view(np.uint8), axis=1, dtype=dtype), patch)


def _sum_columns(column_sums: np.ndarray, patch: int) -> np.ndarray:
    """Per-patch sums (k, cols) of column sums (k, width).

    A width one short of whole patches holds pairs of horizontal neighbours: the
    last pair of each patch (which would straddle two patches) is left out.
    """
    k, width = column_sums.shape
    if width % patch:
        column_sums = np.concatenate([column_sums, np.zeros((k, 1), dtype=column_sums.dtype)], axis=1)
        return column_sums.reshape(k, -1, patch)[:, :, :-1].sum(axis=-1, dtype=np.float64)
    return column_sums.reshape(k, -1, patch).sum(axis=-1, dtype=np.float64)


def _gaussian_window(dtype) -> np.ndarray:
    """The normalised 1-D taps of the MSCN window (radius 3, sigma 7/6)."""
    offsets = np.arange(-_WINDOW_RADIUS, _WINDOW_RADIUS + 1, dtype=np.float64)
    taps = np.exp(-(offsets**2) / (2 * _WINDOW_SIGMA**2))
    return (taps / taps.sum()).astype(dtype)


def _filter(plane: np.ndarray, window: np.ndarray, axis: int) -> np.ndarray:
    """'Valid' correlation along one axis with a symmetric odd window (drops radius on each side)."""
    r = len(window) // 2
    length = plane.shape[axis] - 2 * r

    def shifted(offset: int) -> np.ndarray:
        index = [slice(None)] * plane.ndim
        index[axis] = slice(r + offset, r + offset + length)
        return plane[tuple(index)]

    out = shifted(0) * window[r]
    pair = np.empty_like(out)
    for k in range(1, r + 1):
        np.add(shifted(-k), shifted(k), out=pair)
        pair *= window[r + k]
        out += pair
    return out


def _features_from_sums(sums: np.ndarray, patch: int) -> np.ndarray:
    """The 18 features (n, 18) of every patch from its sums, fitted all at once."""
    sums = sums.reshape(-1, _SUMS)
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = sums[:, _M2] / (patch * patch)
        mean_abs = sums[:, _M1] / (patch * patch)
        features = [_ggd_shape(variance / mean_abs**2), variance]
        for k in range(len(_NEIGHBOURS)):
            first = 3 + _PAIR_SUMS * k
            square, signed_square, magnitude, negative, nonzero = sums[:, first : first + _PAIR_SUMS].T
            # The diagonal pairs have (patch - 1)^2 products, the others patch (patch - 1).
            count = patch * (patch - 1) if k < 2 else (patch - 1) ** 2
            left = np.sqrt(np.maximum(square - signed_square, 0) / 2 / negative)
            right = np.sqrt(np.maximum(square + signed_square, 0) / 2 / (nonzero - negative))
            ratio = left / right
            r_hat = (magnitude / count) ** 2 / (square / count)
            r_norm = r_hat * (ratio**3 + 1) * (ratio + 1) / (ratio**2 + 1) ** 2
            shape, mean_factor = _aggd_shape(r_norm)
            features += [shape, (right - left) * mean_factor, left**2, right**2]
    return np.stack(features, axis=1)


def _shape_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Moment ratios over the shape grid: GGD's E[x^2]/E|x|^2, its inverse for the AGGD, the AGGD mean factor."""
    g = _SHAPES
    ggd_ratio = np.exp(special.gammaln(1 / g) + special.gammaln(3 / g) - 2 * special.gammaln(2 / g))
    # AGGD mean = (right - left) * Gamma(2/a) / Gamma(1/a) * sqrt(Gamma(1/a) / Gamma(3/a)).
    mean_factor = np.exp(special.gammaln(2 / g) - 0.5 * (special.gammaln(1 / g) + special.gammaln(3 / g)))
    return ggd_ratio, 1 / ggd_ratio, mean_factor


_GGD_RATIO, _AGGD_RATIO, _AGGD_MEAN_FACTOR = _shape_tables()


def _ggd_shape(ratio: np.ndarray) -> np.ndarray:
    """GGD shape whose E[x^2]/E|x|^2 on the grid is nearest each ratio (falls with the shape)."""
    index = _nearest(_GGD_RATIO[::-1], ratio)
    return np.where(index < 0, np.nan, _SHAPES[::-1][index])


def _aggd_shape(ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AGGD shape nearest each normalised ratio (rises with the shape), and its mean factor."""
    index = _nearest(_AGGD_RATIO, ratio)
    undefined = index < 0
    return (np.where(undefined, np.nan, _SHAPES[index]), np.where(undefined, np.nan, _AGGD_MEAN_FACTOR[index]))


def _nearest(table: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of an ascending table per value; -1 for NaN."""
    finite = np.isfinite(values)
    safe = np.where(finite, values, table[0])
    above = np.clip(np.searchsorted(table, safe), 1, len(table) - 1)
    below = above - 1
    index = np.where(safe - table[below] <= table[above] - safe, below, above)
    return np.where(finite, index, -1)


# --- the pristine model: load ----------------------------------------------------------


def load_params(path: str | Path = DEFAULT_PARAMS) -> NiqeParams:
    """Read a pristine model (JSON with mu, cov, provenance); the shipped one by default."""
    if Path(path) == DEFAULT_PARAMS:
        return _load_default()
    return _parse_params(storage.read_bytes(storage.to_uri(str(path))), str(path))


@functools.cache
def _load_default() -> NiqeParams:
    """The shipped model, read once per process."""
    return _parse_params(DEFAULT_PARAMS.read_bytes(), str(DEFAULT_PARAMS))


def _parse_params(data: bytes, where: str) -> NiqeParams:
    """NiqeParams from JSON bytes; ConfigError if malformed."""
    size = SCALES * FEATURES_PER_SCALE
    try:
        raw = json.loads(data)
        mu = np.asarray(raw["mu"], dtype=np.float64)
        cov = np.asarray(raw["cov"], dtype=np.float64)
        provenance = dict(raw.get("provenance", {}))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{where}: not a NIQE parameter file ({type(exc).__name__}: {exc})") from None
    if mu.shape != (size,) or cov.shape != (size, size):
        raise ConfigError(f"{where}: expected mu of {size} and cov of {size}x{size}, "
                          f"got {mu.shape} and {cov.shape}")
    mu.setflags(write=False)
    cov.setflags(write=False)
    return NiqeParams(mu=mu, cov=cov, provenance=provenance)
