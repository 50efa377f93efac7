"""Bytes <-> arrays: modes, bit depth, alpha, EXIF orientation, ICC.

A decoded image is colour pixels (H, W, 1 or 3) as uint8 or uint16, plus an
optional alpha plane, plus the metadata to carry to the output.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sr_batch.errors import (CorruptImageError, EmptyFileError, NotAnImageError,
                             TooManyPixelsError, UnsupportedModeError)

# We enforce our own pixel limit before decoding (max_pixels), so Pillow's
# global bomb check must not fire first with a different message.
Image.MAX_IMAGE_PIXELS = None

# Pillow format name -> (output format, extension) for formats we can write.
_WRITABLE = {"PNG": ("png", ".png"), "JPEG": ("jpeg", ".jpg"), "WEBP": ("webp", ".webp"),
             "TIFF": ("tiff", ".tif")}
_EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "tiff": ".tif"}
_KEEPS_ALPHA = {"png", "webp", "tiff"}
_ORIENTATION = 0x0112  # EXIF tag


@dataclass
class DecodedImage:
    """Pixels and metadata of one decoded image."""

    pixels: np.ndarray
    """Colour planes, (H, W, 1) grey or (H, W, 3) RGB, uint8 or uint16."""
    alpha: np.ndarray | None
    """Alpha plane (H, W), same dtype as pixels, or None."""
    mode: str
    """Pillow mode of the file as stored (e.g. 'P', 'RGBA', 'I;16')."""
    format: str | None
    """Pillow format name of the file (PNG, JPEG, ...)."""
    icc_profile: bytes | None = None
    exif: bytes | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def bit_depth(self) -> int:
        return 16 if self.pixels.dtype == np.uint16 else 8

    @property
    def channels(self) -> int:
        return self.pixels.shape[2] + (1 if self.alpha is not None else 0)


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) and check the pixel limit before any pixel is decoded."""
    if not data:
        raise EmptyFileError("file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise NotAnImageError("not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImageError(f"cannot parse image header: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise TooManyPixelsError(
            f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} (--max-pixels)")
    if width < 1 or height < 1:
        raise CorruptImageError(f"image has no pixels ({width}x{height})")
    return image


def decode_image(data: bytes, max_pixels: int) -> DecodedImage:
    """Decode bytes to a DecodedImage, applying EXIF orientation."""
    image = open_image(data, max_pixels)
    notes: list[str] = []
    n_frames = getattr(image, "n_frames", 1)
    if n_frames > 1:
        notes.append(f"animated ({n_frames} frames): first frame only")
    fmt = image.format
    icc = image.info.get("icc_profile")
    try:
        image.load()
        exif_obj = image.getexif()
        if exif_obj.get(_ORIENTATION, 1) not in (1, None):
            image = ImageOps.exif_transpose(image)
            notes.append(f"EXIF orientation {exif_obj.get(_ORIENTATION)} applied")
            exif_obj = image.getexif()  # exif_transpose resets the orientation tag to 1
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CorruptImageError(f"cannot decode image data: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises assorted errors on broken EXIF
        raise CorruptImageError(f"cannot decode image metadata: {type(exc).__name__}: {exc}") from None
    exif = exif_obj.tobytes() if len(exif_obj) else None
    mode = image.mode
    pixels, alpha = _to_planes(image, notes)
    return DecodedImage(pixels=pixels, alpha=alpha, mode=mode, format=fmt,
                        icc_profile=icc, exif=exif, notes=notes)


def _to_planes(image: Image.Image, notes: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    mode = image.mode
    if mode == "1":
        image, mode = image.convert("L"), "L"
    if mode == "P":
        has_alpha = "transparency" in image.info or image.palette.mode == "RGBA"
        image = image.convert("RGBA" if has_alpha else "RGB")
        mode = image.mode
        notes.append(f"palette expanded to {mode}")
    if mode == "CMYK":
        image, mode = image.convert("RGB"), "RGB"
        notes.append("CMYK converted to RGB")
    if mode in ("YCbCr", "LAB", "HSV"):
        image, mode = image.convert("RGB"), "RGB"
    if mode == "PA":
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("L", "RGB"):
        array = np.asarray(image)
        return (array[..., None] if array.ndim == 2 else array), None
    if mode in ("LA", "RGBA"):
        array = np.asarray(image)
        return array[..., :-1], np.ascontiguousarray(array[..., -1])
    if mode in ("I;16", "I;16B", "I;16L"):
        array = np.asarray(image).astype(np.uint16)
        return array[..., None], None
    raise UnsupportedModeError(f"unsupported image mode {mode!r}")


def output_format(decoded: DecodedImage, requested: str) -> tuple[str, str, str | None]:
    """(format, extension, note) for the output; alpha forces a format that keeps it."""
    if requested == "keep":
        fmt, _ = _WRITABLE.get(decoded.format or "", ("png", ".png"))
        note = None if decoded.format in _WRITABLE else f"{decoded.format} not writable: PNG output"
    else:
        fmt, note = requested, None
    if decoded.alpha is not None and fmt not in _KEEPS_ALPHA:
        note = f"alpha channel: {fmt} cannot keep it, wrote PNG"
        fmt = "png"
    if decoded.bit_depth == 16 and fmt in ("jpeg", "webp"):
        note = f"16-bit input: {fmt} is 8-bit only, wrote PNG"
        fmt = "png"
    return fmt, _EXTENSIONS[fmt], note


def encode_image(pixels: np.ndarray, alpha: np.ndarray | None, fmt: str, *, quality: int = 95,
                 png_compress_level: int = 1, icc_profile: bytes | None = None,
                 exif: bytes | None = None) -> bytes:
    """Encode colour planes (+ alpha) to bytes in `fmt`, carrying ICC and EXIF where allowed."""
    if pixels.dtype == np.uint16:
        image = _image_from_uint16(pixels, alpha, fmt)
    else:
        planes = pixels if alpha is None else np.concatenate([pixels, alpha[..., None]], axis=2)
        if planes.shape[2] == 1:
            image = Image.fromarray(planes[..., 0], "L")
        else:
            image = Image.fromarray(planes, {2: "LA", 3: "RGB", 4: "RGBA"}[planes.shape[2]])
    options: dict = {}
    if icc_profile:
        options["icc_profile"] = icc_profile
    if exif and fmt in ("jpeg", "webp", "png", "tiff"):
        options["exif"] = exif
    if fmt == "png":
        options["compress_level"] = png_compress_level
    elif fmt in ("jpeg", "webp"):
        options["quality"] = quality
    elif fmt == "tiff":
        options["compression"] = "tiff_deflate"
    buffer = io.BytesIO()
    image.save(buffer, format=fmt.upper(), **options)
    return buffer.getvalue()


def _image_from_uint16(pixels: np.ndarray, alpha: np.ndarray | None, fmt: str) -> Image.Image:
    if pixels.shape[2] == 1 and alpha is None:
        # frombytes, not fromarray(..., "I;16"): recent Pillow (13 here) refuses that mode
        # argument for uint16 arrays ("Invalid mode for data type").
        grey = np.ascontiguousarray(pixels[..., 0], dtype="<u2")
        return Image.frombytes("I;16", (grey.shape[1], grey.shape[0]), grey.tobytes())
    # Pillow cannot hold 16-bit colour; this path is only a fallback (8-bit).
    eight = (pixels >> 8).astype(np.uint8)
    alpha8 = None if alpha is None else (alpha >> 8).astype(np.uint8)
    planes = eight if alpha8 is None else np.concatenate([eight, alpha8[..., None]], axis=2)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[planes.shape[2]]
    return Image.fromarray(planes if planes.shape[2] > 1 else planes[..., 0], mode)
