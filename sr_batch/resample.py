"""Resizing with Pillow: bicubic, the convention SR benchmarks use to make LR images, and
Lanczos for the job's final resize to an exact output size."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Pillow modes that hold uint8 channels natively, by channel count. RGBA is
# deliberately absent: Pillow premultiplies alpha when resizing RGBA, which would
# make colour depend on alpha; CMYK has four independent 8-bit channels and is
# resized channel by channel, like every other path here.
_UINT8_MODES = {1: "L", 3: "RGB", 4: "CMYK"}

_SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


def resize_bicubic(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an HxW or HxWxC array to size=(width, height) with Pillow BICUBIC (see `resize`)."""
    return resize(image, size, Image.BICUBIC)


def resize_lanczos(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize with Pillow's LANCZOS (3 lobes, antialiased when shrinking): the job's final
    resize to an exact output size (--outscale, --width, --height, --fit)."""
    return resize(image, size, Image.LANCZOS)


def resize(image: np.ndarray, size: tuple[int, int], method: int) -> np.ndarray:
    """Resize an HxW or HxWxC array to size=(width, height) with a Pillow filter.

    Keeps dtype and layout. uint8 with 1, 3 or 4 channels goes through Pillow's
    native 8-bit path; everything else is resized channel by channel in float32
    (mode "F"), then rounded and clipped for integer dtypes. Float output is not
    clipped: bicubic overshoot is left for the caller to keep or clip.
    """
    width, height = (int(v) for v in size)
    if width < 1 or height < 1:
        raise ValueError(f"target size must be at least 1x1, got {width}x{height}")
    if image.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC array, got shape {image.shape}")
    if image.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"unsupported dtype {image.dtype}; expected uint8, uint16 or float32")

    channels = 1 if image.ndim == 2 else image.shape[2]
    if image.dtype == np.uint8 and channels in _UINT8_MODES:
        resized = _resize_uint8(image.reshape(image.shape[0], image.shape[1], channels), width, height, method)
    else:
        resized = _resize_float(image.reshape(image.shape[0], image.shape[1], channels), width, height, method)
    return resized.reshape((height, width) if image.ndim == 2 else (height, width, channels))


def downscale_bicubic(image: np.ndarray, scale: int) -> np.ndarray:
    """Shrink by an integer factor to (W // scale, H // scale), as SR datasets make LR."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    height, width = image.shape[:2]
    if width // scale < 1 or height // scale < 1:
        raise ValueError(f"image {width}x{height} is too small to downscale by {scale}")
    return resize_bicubic(image, (width // scale, height // scale))


def upscale_bicubic(image: np.ndarray, scale: int) -> np.ndarray:
    """Enlarge by an integer factor to (W * scale, H * scale): the bicubic baseline."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    height, width = image.shape[:2]
    return resize_bicubic(image, (width * scale, height * scale))


def _resize_uint8(image: np.ndarray, width: int, height: int, method: int) -> np.ndarray:
    """Resize HxWxC uint8 (C in 1, 3, 4) in one Pillow call."""
    mode = _UINT8_MODES[image.shape[2]]
    pixels = np.ascontiguousarray(image)
    source = Image.frombuffer(mode, (image.shape[1], image.shape[0]), pixels, "raw", mode, 0, 1)
    resized = source.resize((width, height), method)
    # np.array, not asarray: Pillow hands out a read-only buffer.
    return np.array(resized, dtype=np.uint8).reshape(height, width, image.shape[2])


def _resize_float(image: np.ndarray, width: int, height: int, method: int) -> np.ndarray:
    """Resize HxWxC channel by channel through Pillow's float32 mode "F"."""
    out = np.empty((height, width, image.shape[2]), dtype=image.dtype)
    is_integer = np.issubdtype(image.dtype, np.integer)
    limits = np.iinfo(image.dtype) if is_integer else None
    for channel in range(image.shape[2]):
        # float32 holds every uint16 value exactly, so nothing is lost going in.
        plane = np.ascontiguousarray(image[:, :, channel], dtype=np.float32)
        resized = np.asarray(Image.fromarray(plane).resize((width, height), method))
        if is_integer:
            resized = np.clip(np.rint(resized), limits.min, limits.max)
        out[:, :, channel] = resized
    return out
