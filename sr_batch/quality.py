"""Per-image quality metrics: the one implementation, in the SR literature's convention.

Convention: PSNR and SSIM on the Y channel of BT.601 (Y in [16, 235] on a 0-255
scale, not rounded), after shaving `border` = scale pixels on every side, with
data_range 255. SSIM is Wang et al. 2004 with 'valid' filtering, as MATLAB's
ssim used by SR papers. Every reference number stands beside bicubic on the same pixels.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from sr_batch.resample import resize_bicubic

# BT.601 studio-swing luma for RGB in [0, 1]: Y = 16 + (65.481 R + 128.553 G + 24.966 B).
_Y_OFFSET = 16.0
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966])

# Wang et al. 2004: an 11x11 Gaussian window with sigma 1.5, and the constants
# that keep the ratios stable where means or variances are near zero.
_SSIM_WINDOW_SIZE = 11
_SSIM_SIGMA = 1.5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03

# Rows of float32 luma made at a time by the gradient energy: a few hundred KB, which
# stays in cache, where a whole float64 luma plane of an 8192^2 output is 537 MB.
_STRIP_ROWS = 64


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """BT.601 luma of an image as float64 HxW on the 0-255 scale, in [16, 235].

    uint8 is read as /255, uint16 as /65535, floats as already in [0, 1].
    HxW and HxWx1 are grey (R = G = B); a fourth (alpha) channel is ignored.
    """
    if image.dtype == np.uint8:
        unit = image.astype(np.float64) / np.iinfo(np.uint8).max
    elif image.dtype == np.uint16:
        unit = image.astype(np.float64) / np.iinfo(np.uint16).max
    elif np.issubdtype(image.dtype, np.floating):
        unit = image.astype(np.float64, copy=False)
    else:
        raise TypeError(f"unsupported dtype {image.dtype}; expected uint8, uint16 or float")

    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        grey = unit.reshape(image.shape[:2])
        return _Y_OFFSET + _Y_WEIGHTS.sum() * grey
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return _Y_OFFSET + unit[:, :, :3] @ _Y_WEIGHTS
    raise ValueError(f"expected HxW, HxWx1, HxWx3 or HxWx4, got shape {image.shape}")


def crop_to_multiple(image: np.ndarray, scale: int) -> np.ndarray:
    """Crop bottom and right so height and width are multiples of scale."""
    height, width = image.shape[:2]
    return image[: height - height % scale, : width - width % scale]


def shave(array: np.ndarray, border: int) -> np.ndarray:
    """Drop `border` pixels on every side, where SR models see padding instead of context."""
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    height, width = array.shape[:2]
    if height <= 2 * border or width <= 2 * border:
        raise ValueError(f"shaving {border} from {width}x{height} leaves nothing")
    if border == 0:
        return array
    return array[border:-border, border:-border]


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB; inf for identical arrays."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    if mse == 0:
        return math.inf
    return float(10.0 * np.log10(data_range**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM of two 2-D arrays (Wang et al. 2004, 'valid' Gaussian filtering)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.ndim != 2:
        raise ValueError(f"ssim compares 2-D arrays, got shape {a.shape}")
    if min(a.shape) < _SSIM_WINDOW_SIZE:
        raise ValueError(f"ssim needs at least {_SSIM_WINDOW_SIZE}x{_SSIM_WINDOW_SIZE} pixels, got {a.shape}")
    a = a.astype(np.float64, copy=False)
    b = b.astype(np.float64, copy=False)
    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2
    window = _gaussian_window(_SSIM_WINDOW_SIZE, _SSIM_SIGMA)

    mu_a = _filter_valid(a, window)
    mu_b = _filter_valid(b, window)
    var_a = _filter_valid(a * a, window) - mu_a * mu_a
    var_b = _filter_valid(b * b, window) - mu_b * mu_b
    cov = _filter_valid(a * b, window) - mu_a * mu_b
    numerator = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    denominator = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return float((numerator / denominator).mean())


def psnr_y(output: np.ndarray, reference: np.ndarray, border: int) -> float:
    """PSNR on BT.601 Y after shaving `border` pixels; same height and width required."""
    _check_same_size(output, reference)
    return psnr(shave(rgb_to_y(output), border), shave(rgb_to_y(reference), border))


def ssim_y(output: np.ndarray, reference: np.ndarray, border: int) -> float:
    """SSIM on BT.601 Y after shaving `border` pixels; same height and width required."""
    _check_same_size(output, reference)
    return ssim(shave(rgb_to_y(output), border), shave(rgb_to_y(reference), border))


def psnr_y_consistency(output: np.ndarray, lr_input: np.ndarray) -> float:
    """PSNR on Y between the output bicubic-downscaled to the input's size and the LR input.

    No reference needed: a faithful SR output, shrunk the way LR images are made,
    should give its input back. No border is shaved here, to keep it simple;
    expect edge pixels to pull the number down slightly.
    """
    shrunk = resize_bicubic(output, (lr_input.shape[1], lr_input.shape[0]))
    return psnr(rgb_to_y(shrunk), rgb_to_y(lr_input))


def sharpness_ratio(output: np.ndarray, lr_input: np.ndarray, baseline: np.ndarray | None = None) -> float:
    """Gradient energy of the output over that of a bicubic upscale of the input to the output's
    size (`baseline`, when the caller has made it already); nan if flat. Above 1 means more
    high-frequency detail than bicubic (real or hallucinated).
    """
    if baseline is None:
        baseline = resize_bicubic(lr_input, (output.shape[1], output.shape[0]))
    denominator = gradient_energy_y(baseline)
    if denominator == 0:
        return math.nan
    return gradient_energy_y(output) / denominator


def no_reference_metrics(output: np.ndarray, lr_input: np.ndarray) -> tuple[float, float]:
    """(psnr_y_consistency, sharpness_ratio) made on luma alone, what the job records.

    The same definitions as the two functions above, with the order of two linear steps
    swapped: luma is taken first and the bicubic resizes run on the float32 luma plane (one
    plane instead of three, and no rounding of resized RGB to 8 bits). The bicubic baseline
    is made band by band (Pillow's resize of a box of the input), so only the output's
    float32 luma plane is held whole. bench/bench_codecs.py gives the cost and the difference
    from the RGB definitions.
    """
    out_luma = _luma_plane(output)
    lr_luma = _luma_plane(lr_input)
    out_h, out_w = out_luma.shape
    lr_h, lr_w = lr_luma.shape
    shrunk = np.asarray(Image.fromarray(out_luma, "F").resize((lr_w, lr_h), Image.BICUBIC))
    consistency = psnr(shrunk.astype(np.float64), lr_luma.astype(np.float64))
    source = Image.fromarray(lr_luma, "F")

    def baseline_strips():
        for top in range(0, out_h, _STRIP_ROWS):
            bottom = min(top + _STRIP_ROWS, out_h)
            box = (0, top * lr_h / out_h, lr_w, bottom * lr_h / out_h)
            yield np.asarray(source.resize((out_w, bottom - top), Image.BICUBIC, box=box))

    denominator = _gradient_energy(baseline_strips(), out_h, out_w)
    if denominator == 0:
        return consistency, math.nan
    strips = (out_luma[top:top + _STRIP_ROWS] for top in range(0, out_h, _STRIP_ROWS))
    return consistency, _gradient_energy(strips, out_h, out_w) / denominator


def _luma_plane(image: np.ndarray) -> np.ndarray:
    """BT.601 luma without its offset (which cancels in every difference), float32 HxW, on the
    0-255 scale of `rgb_to_y`, made in strips of rows (no float64 planes)."""
    weights = _unit_luma_weights(image)
    luma = np.empty(image.shape[:2], np.float32)
    for top in range(0, image.shape[0], _STRIP_ROWS):
        luma[top:top + _STRIP_ROWS] = _luma_strip(image[top:top + _STRIP_ROWS], weights)
    return luma


def _gradient_energy(strips, height: int, width: int) -> float:
    """Mean squared forward difference along x plus along y of a plane given as strips of rows."""
    across = down = 0.0
    previous = None
    for luma in strips:
        if width > 1:
            step = (luma[:, 1:] - luma[:, :-1]).ravel()
            across += float(np.dot(step, step))
        if previous is not None:
            luma = np.vstack([previous, luma])
        if luma.shape[0] > 1:
            step = (luma[1:] - luma[:-1]).ravel()
            down += float(np.dot(step, step))
        previous = luma[-1:]
    energy = 0.0
    if width > 1:
        energy += across / (height * (width - 1))
    if height > 1:
        energy += down / ((height - 1) * width)
    return energy


def grid_blockiness(output: np.ndarray, scale: int, block: int = 8) -> float:
    """How much the input's JPEG grid shows in an upscaled output: the mean |step| of luma
    across the input's block borders (every `block` * `scale` output pixels, both axes) over
    the mean |step| across the other input pixel borders (every `scale` output pixels), so
    that an interpolator's own pattern of `scale` phases cancels. About 1.0 for a clean
    photo; a bicubic upscale of a JPEG at quality 30-50 reads 1.3-1.6. nan where the output
    holds no border or no step.
    """
    luma = _luma_plane(output)
    period = block * scale
    border_sum = other_sum = 0.0
    border_count = other_count = 0
    for plane in (luma, luma.T):
        steps = np.abs(np.diff(plane, axis=1))  # steps[:, j]: between columns j and j + 1
        position = np.arange(1, steps.shape[1] + 1)
        on_border = position % period == 0
        same_phase = (position % scale == 0) & ~on_border
        border_sum += float(steps[:, on_border].sum())
        other_sum += float(steps[:, same_phase].sum())
        border_count += steps.shape[0] * int(on_border.sum())
        other_count += steps.shape[0] * int(same_phase.sum())
    if not border_count or not other_count or other_sum == 0:
        return math.nan
    return (border_sum / border_count) / (other_sum / other_count)


def gradient_energy_y(image: np.ndarray) -> float:
    """Mean squared forward difference of the BT.601 luma along x plus along y.

    The same number as differencing `rgb_to_y(image)` (to about 1e-6 relative), made
    in float32 strips of rows: a few hundred KB of temporaries instead of float64
    planes of the whole image, 5-15x faster on outputs of 1-67 MP.
    """
    height, width = image.shape[:2]
    weights = _unit_luma_weights(image)
    strips = (_luma_strip(image[top:top + _STRIP_ROWS], weights) for top in range(0, height, _STRIP_ROWS))
    return _gradient_energy(strips, height, width)


def _unit_luma_weights(image: np.ndarray) -> np.ndarray:
    """float32 luma weights that also map the dtype's range to [0, 1] (the offset cancels in differences)."""
    if image.dtype in (np.uint8, np.uint16):
        unit = 1.0 / np.iinfo(image.dtype).max
    elif np.issubdtype(image.dtype, np.floating):
        unit = 1.0
    else:
        raise TypeError(f"unsupported dtype {image.dtype}; expected uint8, uint16 or float")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return np.array([_Y_WEIGHTS.sum() * unit], dtype=np.float32)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return (_Y_WEIGHTS * unit).astype(np.float32)
    raise ValueError(f"expected HxW, HxWx1, HxWx3 or HxWx4, got shape {image.shape}")


def _luma_strip(strip: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Luma without its offset, float32, of a strip of rows (channels past the weights ignored)."""
    planes = strip.reshape(strip.shape[0], strip.shape[1], -1)
    luma = planes[:, :, 0].astype(np.float32)
    luma *= weights[0]
    for channel in range(1, len(weights)):
        plane = planes[:, :, channel].astype(np.float32)
        plane *= weights[channel]
        luma += plane
    return luma


def reference_metrics(output: np.ndarray, lr_input: np.ndarray, reference: np.ndarray, scale: int) -> dict:
    """PSNR/SSIM on Y of the output and of bicubic (of the input to the output's size) against
    the reference: at the output's size, or cropped to a multiple of `scale` as SR sets are."""
    cropped = reference if reference.shape[:2] == output.shape[:2] else crop_to_multiple(reference, scale)
    if cropped.shape[:2] != output.shape[:2]:
        raise ValueError(
            f"reference is {reference.shape[1]}x{reference.shape[0]} "
            f"({cropped.shape[1]}x{cropped.shape[0]} cropped to a multiple of {scale}), "
            f"the output {output.shape[1]}x{output.shape[0]}: a reference must have the output's size"
        )
    bicubic = resize_bicubic(lr_input, (output.shape[1], output.shape[0]))
    # border = scale (the output's factor): the SR convention, the pixels a model sees only
    # padding for.
    border = max(1, round(output.shape[1] / lr_input.shape[1]))
    return {
        "psnr_y": psnr_y(output, cropped, border),
        "ssim_y": ssim_y(output, cropped, border),
        "psnr_y_bicubic": psnr_y(bicubic, cropped, border),
        "ssim_y_bicubic": ssim_y(bicubic, cropped, border),
    }


def _check_same_size(a: np.ndarray, b: np.ndarray) -> None:
    """Raise ValueError unless two images have the same height and width."""
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"sizes differ: {a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]}")


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian; its outer product is MATLAB's fspecial('gaussian')."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    weights = np.exp(-(offsets**2) / (2 * sigma**2))
    return weights / weights.sum()


def _filter_valid(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of a 2-D float64 array with window x window."""
    taps = len(window)
    rows = image.shape[0] - taps + 1
    cols = image.shape[1] - taps + 1
    vertical = window[0] * image[:rows]
    for k in range(1, taps):
        vertical += window[k] * image[k : k + rows]
    filtered = window[0] * vertical[:, :cols]
    for k in range(1, taps):
        filtered += window[k] * vertical[:, k : k + cols]
    return filtered
