"""Bytes <-> arrays: modes, bit depth, alpha, EXIF orientation, ICC.

A decoded image is colour pixels (H, W, 1 or 3) as uint8 or uint16, plus an
optional alpha plane, plus the metadata to carry to the output.
"""

from __future__ import annotations

import functools
import io
import struct
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from sr_batch.errors import (CorruptImageError, EmptyFileError, NotAnImageError,
                             TooManyPixelsError, UnsupportedModeError)

# We enforce our own pixel limit before decoding (max_pixels), so Pillow's
# global bomb check must not fire first with a different message.
Image.MAX_IMAGE_PIXELS = None

# Pillow formats --format keep can write back (the others become PNG).
_WRITABLE = frozenset({"PNG", "JPEG", "WEBP", "TIFF"})
_KEEPS_ALPHA = {"png", "webp", "tiff"}
_ORIENTATION = 0x0112  # EXIF tag
# TIFF tags that describe how the input's pixels are stored. Pillow's getexif() of a TIFF
# returns them with the real EXIF tags; carried to an output of another size or mode they
# would corrupt it (a TIFF written with the input's ImageWidth, Photometric, ...).
_STORAGE_TAGS = frozenset({
    254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 280, 281, 284, 317, 320,
    322, 323, 324, 325, 330, 332, 338, 339, 340, 341, 347, 529, 530, 531, 532, 34675,
})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
# numpy equivalents of Pillow's EXIF orientation transposes (ImageOps.exif_transpose).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


@dataclass
class DecodedImage:
    """Pixels and metadata of one decoded image."""

    pixels: np.ndarray
    """Colour planes, (H, W, 1) grey or (H, W, 3) RGB, uint8 or uint16."""
    alpha: np.ndarray | None
    """Alpha plane (H, W), same dtype as pixels, or None."""
    mode: str
    """Pillow mode of the file as stored (e.g. 'P', 'RGBA', 'I;16'); 16-bit colour, which Pillow
    has no mode for, is 'LA;16', 'RGB;16' or 'RGBA;16'."""
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
    check_size(*image.size, max_pixels)
    return image


def check_size(width: int, height: int, max_pixels: int) -> None:
    """Raise TooManyPixelsError above the limit, CorruptImageError for an empty image."""
    if width * height > max_pixels:
        raise TooManyPixelsError(
            f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} (--max-pixels)")
    if width < 1 or height < 1:
        raise CorruptImageError(f"image has no pixels ({width}x{height})")


def decode_image(data: bytes, max_pixels: int) -> DecodedImage:
    """Decode bytes to a DecodedImage, applying EXIF orientation.

    Bit depth comes from the file's header (PNG IHDR, TIFF BitsPerSample), never
    from pixel values: 16-bit PNG and TIFF go through codecs that keep 16 bits,
    since Pillow reads 16-bit colour as 8-bit.
    """
    if not data:
        raise EmptyFileError("file is empty (0 bytes)")
    if _is_png16(data):
        return _decode_png16(data, max_pixels)
    if data[:4] in _TIFF_MAGICS:
        page_info = _tiff16_layout(data)
        if page_info is not None:
            return _decode_tiff16(data, page_info, max_pixels)
    image = open_image(data, max_pixels)
    notes: list[str] = []
    n_frames = getattr(image, "n_frames", 1)
    if n_frames > 1:
        notes.append(f"multi-page ({n_frames} pages): first page only" if image.format == "TIFF"
                     else f"animated ({n_frames} frames): first frame only")
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
    exif = _exif_bytes(exif_obj)
    mode = image.mode
    if mode == "CMYK":
        image, icc = _cmyk_to_rgb(image, icc, notes)
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


@functools.cache
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _cmyk_to_rgb(image: Image.Image, icc: bytes | None,
                 notes: list[str]) -> tuple[Image.Image, bytes | None]:
    """CMYK to sRGB through the embedded profile where present, else Pillow's naive formula.

    The CMYK profile does not describe the RGB result, so it is not carried to
    the output (an untagged image is read as sRGB).
    """
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            rgb = ImageCms.profileToProfile(image, source, _srgb_profile(), outputMode="RGB")
            notes.append("CMYK converted to sRGB through its ICC profile")
            return rgb, None
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
            notes.append(f"CMYK ICC profile unusable ({' '.join(str(exc).split())[:80]}): "
                         "naive conversion")
    notes.append("CMYK converted to RGB")
    return image.convert("RGB"), None


# --- 16 bits per channel ---------------------------------------------------------------


def _is_png16(data: bytes) -> bool:
    """True when the PNG's IHDR says 16 bits per sample."""
    return data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) > 25 and data[24] == 16


def _decode_png16(data: bytes, max_pixels: int) -> DecodedImage:
    import imagecodecs

    image = open_image(data, max_pixels)  # header: size check, ICC, frame count
    notes: list[str] = []
    n_frames = getattr(image, "n_frames", 1)
    if n_frames > 1:
        notes.append(f"animated ({n_frames} frames): first frame only")
    try:
        array = imagecodecs.png_decode(data)
    except Exception as exc:  # noqa: BLE001 - imagecodecs raises its own PngError (RuntimeError)
        raise CorruptImageError(f"cannot decode image data: {type(exc).__name__}: {exc}") from None
    if array.dtype != np.uint16:
        raise CorruptImageError(f"16-bit PNG header but {array.dtype} pixels")
    # Pillow leaves eXIf after IDAT unread until it decodes pixels (8-bit); find it directly.
    exif_obj = Image.Exif()
    raw_exif = image.info.get("exif") or _png_chunk(data, b"eXIf")
    if raw_exif:
        try:
            exif_obj.load(raw_exif)
        except Exception:  # noqa: BLE001 - broken EXIF must not lose the pixels
            notes.append("EXIF unreadable: dropped")
            exif_obj = Image.Exif()
    return _sixteen_bit_image(array, "PNG", image.info.get("icc_profile"), exif_obj, notes)


def _tiff16_layout(data: bytes):
    """The first page of a 16-bit grey or RGB TIFF (tifffile), else None (Pillow reads it)."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages.first
            if (page.bitspersample == 16 and page.sampleformat == 1
                    and page.photometric in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB)):
                return {"shape": page.shape, "pages": len(tif.pages)}
    except Exception:  # noqa: BLE001 - not for us; Pillow reports what is wrong with it
        return None
    return None


def _decode_tiff16(data: bytes, layout: dict, max_pixels: int) -> DecodedImage:
    import tifffile

    height, width = layout["shape"][:2]
    check_size(width, height, max_pixels)
    notes: list[str] = []
    if layout["pages"] > 1:
        notes.append(f"multi-page ({layout['pages']} pages): first page only")
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages.first
            array = page.asarray()
            icc = page.iccprofile
            orientation = page.tags.valueof(274, 1)
            if array.ndim == 3 and page.planarconfig == tifffile.PLANARCONFIG.SEPARATE:
                array = np.moveaxis(array, 0, -1)
    except Exception as exc:  # noqa: BLE001 - tifffile raises assorted errors on broken files
        raise CorruptImageError(f"cannot decode image data: {type(exc).__name__}: {exc}") from None
    exif_obj = Image.Exif()
    try:  # Pillow parses the TIFF tags as EXIF when it can open the file at all
        with Image.open(io.BytesIO(data)) as image:
            exif_obj = image.getexif()
    except Exception:  # noqa: BLE001 - e.g. 16-bit grey+alpha, which Pillow cannot open
        exif_obj[_ORIENTATION] = orientation
    return _sixteen_bit_image(array, "TIFF", icc, exif_obj, notes)


def _sixteen_bit_image(array: np.ndarray, fmt: str, icc: bytes | None, exif_obj: Image.Exif,
                       notes: list[str]) -> DecodedImage:
    """Split a (H, W[, C]) uint16 array into planes, apply EXIF orientation."""
    if array.ndim == 2:
        array = array[..., None]
    channels = array.shape[2]
    if channels not in (1, 2, 3, 4):
        raise UnsupportedModeError(f"unsupported 16-bit image with {channels} channels")
    colour = 1 if channels <= 2 else 3
    pixels = array[..., :colour]
    alpha = array[..., colour] if channels in (2, 4) else None
    orientation = exif_obj.get(_ORIENTATION, 1)
    if orientation in _ORIENT:
        pixels = _ORIENT[orientation](pixels)
        alpha = None if alpha is None else _ORIENT[orientation](alpha)
        notes.append(f"EXIF orientation {orientation} applied")
    if _ORIENTATION in exif_obj:
        del exif_obj[_ORIENTATION]
    mode = {1: "I;16", 2: "LA;16", 3: "RGB;16", 4: "RGBA;16"}[channels]
    return DecodedImage(pixels=np.ascontiguousarray(pixels),
                        alpha=None if alpha is None else np.ascontiguousarray(alpha),
                        mode=mode, format=fmt, icc_profile=icc,
                        exif=_exif_bytes(exif_obj), notes=notes)


def _exif_bytes(exif_obj: Image.Exif) -> bytes | None:
    """EXIF to carry: the tags that describe the picture, not how the input stored its pixels."""
    for tag in _STORAGE_TAGS & set(exif_obj):
        del exif_obj[tag]
    return exif_obj.tobytes() if len(exif_obj) else None


def _png_chunk(data: bytes, kind: bytes) -> bytes | None:
    """The payload of the first PNG chunk of this type, walking chunk headers only."""
    pos = 8
    while pos + 8 <= len(data):
        length, name = struct.unpack(">I4s", data[pos:pos + 8])
        if name == kind:
            return data[pos + 8:pos + 8 + length]
        if name == b"IEND":
            return None
        pos += 12 + length
    return None


def _png_with_metadata(png: bytes, icc_profile: bytes | None, exif: bytes | None) -> bytes:
    """Insert iCCP and eXIf chunks right after IHDR (both must precede IDAT)."""
    chunks = b""
    if icc_profile:
        chunks += _png_chunk_bytes(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile))
    if exif:
        chunks += _png_chunk_bytes(b"eXIf", exif.removeprefix(b"Exif\x00\x00"))
    ihdr_end = 8 + 12 + 13
    return png[:ihdr_end] + chunks + png[ihdr_end:]


def _png_chunk_bytes(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def output_format(decoded: DecodedImage, planned: str, requested: str = "keep") -> tuple[str, str | None]:
    """(format, note) for the output: the planned format (from the output's name), unless it
    cannot hold the image; alpha and 16 bits force PNG."""
    fmt, note = planned, None
    if requested == "keep" and decoded.format not in _WRITABLE:
        note = f"{decoded.format} not writable: {fmt.upper()} output"
    if decoded.alpha is not None and fmt not in _KEEPS_ALPHA:
        note = f"alpha channel: {fmt} cannot keep it, wrote PNG"
        fmt = "png"
    if decoded.bit_depth == 16 and fmt in ("jpeg", "webp"):
        note = f"16-bit input: {fmt} is 8-bit only, wrote PNG"
        fmt = "png"
    return fmt, note


# From this --png-compress-level on, 8-bit PNG goes through Pillow: slower, smaller files.
PILLOW_PNG_FROM_LEVEL = 4


def encode_image(pixels: np.ndarray, alpha: np.ndarray | None, fmt: str, *, quality: int = 95,
                 png_compress_level: int = 1, icc_profile: bytes | None = None,
                 exif: bytes | None = None) -> bytes:
    """Encode colour planes (+ alpha) to bytes in `fmt`, carrying ICC and EXIF where allowed.

    16-bit stays 16-bit in PNG and TIFF. PNG goes through libpng (imagecodecs) below
    PILLOW_PNG_FROM_LEVEL and for 16-bit colour or alpha, else through Pillow; a 16-bit
    colour or alpha TIFF, which Pillow cannot hold, through tifffile (no EXIF).
    """
    deep_colour = pixels.dtype == np.uint16 and (pixels.shape[2] == 3 or alpha is not None)
    if fmt == "png" and (png_compress_level < PILLOW_PNG_FROM_LEVEL or deep_colour):
        return _encode_png(pixels, alpha, png_compress_level, icc_profile, exif)
    if fmt == "tiff" and deep_colour:
        return _encode_tiff16(pixels, alpha, png_compress_level, icc_profile)
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


def _encode_png(pixels: np.ndarray, alpha: np.ndarray | None, level: int,
                icc_profile: bytes | None, exif: bytes | None) -> bytes:
    """PNG through libpng (imagecodecs), 8 or 16 bits, grey or colour, with or without alpha.

    One fixed filter (Paeth) instead of Pillow's per-row trial of all five: at
    levels 1-2 this is 2x faster than Pillow for the same file size
    (bench/bench_codecs.py). At 4 and above Pillow makes 3-9 % smaller files, so
    8-bit PNG goes through Pillow there (16-bit colour cannot).
    """
    import imagecodecs

    planes = pixels if alpha is None else np.concatenate([pixels, alpha[..., None]], axis=2)
    png_filter = imagecodecs.PNG.FILTER.NONE if level == 0 else imagecodecs.PNG.FILTER.PAETH
    data = imagecodecs.png_encode(planes if planes.shape[2] > 1 else planes[..., 0], level=level,
                                  filter=png_filter)
    return _png_with_metadata(data, icc_profile, exif)


def _encode_tiff16(pixels: np.ndarray, alpha: np.ndarray | None, level: int,
                   icc_profile: bytes | None) -> bytes:
    """16-bit colour or alpha TIFF, which Pillow cannot hold, through tifffile (no EXIF)."""
    import tifffile

    planes = pixels if alpha is None else np.concatenate([pixels, alpha[..., None]], axis=2)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, planes, photometric="rgb" if pixels.shape[2] == 3 else "minisblack",
                     planarconfig="contig", extrasamples=["unassalpha"] if alpha is not None else None,
                     compression="zlib", compressionargs={"level": max(1, level)},
                     iccprofile=icc_profile, metadata=None)
    return buffer.getvalue()


def _image_from_uint16(pixels: np.ndarray, alpha: np.ndarray | None, fmt: str) -> Image.Image:
    """16-bit grey for PNG/TIFF; for the 8-bit formats (jpeg, webp), every plane rounded to 8 bits."""
    if pixels.shape[2] == 1 and alpha is None and fmt in ("png", "tiff"):
        # frombytes, not fromarray(..., "I;16"): recent Pillow (13 here) refuses that mode
        # argument for uint16 arrays ("Invalid mode for data type").
        grey = np.ascontiguousarray(pixels[..., 0], dtype="<u2")
        return Image.frombytes("I;16", (grey.shape[1], grey.shape[0]), grey.tobytes())
    planes = pixels if alpha is None else np.concatenate([pixels, alpha[..., None]], axis=2)
    # Round to the nearest 8-bit level (x * 255 / 65535), not truncate with >> 8.
    eight = ((planes.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[eight.shape[2]]
    return Image.fromarray(eight if eight.shape[2] > 1 else eight[..., 0], mode)
