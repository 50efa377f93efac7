"""Bytes -> arrays: modes, bit depth, alpha, EXIF orientation, ICC, XMP.

A decoded image is colour pixels (H, W, 1 or 3) as uint8 or uint16, plus an
optional alpha plane, plus the metadata to carry to the output. A file cut off
or broken anywhere fails as corrupt_image here, never as an image padded out.
"""
from __future__ import annotations

import functools
import io
import logging
import struct
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from sr_batch.errors import (CorruptImageError, EmptyFileError, NotAnImageError,
                             TooManyPixelsError, UnsupportedModeError)

log = logging.getLogger(__name__)

# We enforce our own pixel limit before decoding (max_pixels), so Pillow's
# global bomb check must not fire first with a different message.
Image.MAX_IMAGE_PIXELS = None
# With this flag on, Pillow pads a truncated JPEG with grey and a truncated PNG with
# black and calls it decoded; a cut-off file must fail as corrupt_image instead.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_ORIENTATION = 0x0112  # EXIF tag
# TIFF tags that describe how the input's pixels are stored. Pillow's getexif() of a TIFF
# returns them with the real EXIF tags; carried to an output of another size or mode they
# would corrupt it (a TIFF written with the input's ImageWidth, Photometric, ...).
_STORAGE_TAGS = frozenset({
    254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 280, 281, 284, 317, 320,
    322, 323, 324, 325, 330, 332, 338, 339, 340, 341, 347, 529, 530, 531, 532, 34675,
})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIFF_XMP_TAG = 700  # TIFF tag of an XMP packet
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
# Samples per pixel of each PNG colour type: grey, RGB, palette, grey + alpha, RGBA.
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 interlace passes: (first column, first row, column step, row step).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))
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
    xmp: bytes | None = None
    """The file's XMP packet as stored (untrusted: provenance.build_xmp parses it safely)."""

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
    _refuse_truncated_loads()
    _check_riff_complete(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise _unidentified(data) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImageError(f"cannot parse image header: {exc}") from None
    check_size(*image.size, max_pixels)
    return image


def _refuse_truncated_loads() -> None:
    """Turn Pillow's LOAD_TRUNCATED_IMAGES back off where other code in this process set it."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        log.warning("Pillow's ImageFile.LOAD_TRUNCATED_IMAGES was on: turned off, so that "
                    "truncated images fail as corrupt_image instead of coming out padded")
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def _check_riff_complete(data: bytes) -> None:
    """Raise CorruptImageError for a WebP shorter than the size its RIFF header declares."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        declared = 8 + struct.unpack("<I", data[4:8])[0]
        if len(data) < declared:
            raise CorruptImageError(f"truncated WebP: the file has {len(data)} of the {declared} "
                                    "bytes its RIFF header declares")


def _format_by_magic(data: bytes) -> str | None:
    """The format a file's first bytes claim (strong signatures only), or None."""
    if data[:8] == _PNG_SIGNATURE:
        return "PNG"
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:4] in TIFF_MAGICS:
        return "TIFF"
    return None


def _unidentified(data: bytes) -> Exception:
    """The error for bytes Pillow cannot open: a layout it cannot hold (unsupported_mode), a
    known format whose header is cut off or broken (corrupt_image), or no image at all."""
    fmt = _format_by_magic(data)
    if fmt is None:
        return NotAnImageError("not a recognised image format")
    if fmt == "TIFF":
        layout = _tiff_layout(data)
        if layout is not None and layout["samples"] > 4:
            return UnsupportedModeError(_too_many_samples(layout))
        if layout is not None:
            return UnsupportedModeError(
                f"unsupported TIFF layout ({layout['samples']} channels, {layout['bits']}-bit "
                f"{layout['sampleformat']}, photometric {layout['photometric']})")
    return CorruptImageError(f"{fmt} signature but the header cannot be parsed (truncated or corrupt file)")


def _too_many_samples(layout: dict) -> str:
    return (f"unsupported TIFF with {layout['samples']} channels ({layout['bits']}-bit, photometric "
            f"{layout['photometric']}); sr-batch reads 1 to 4 (grey, grey + alpha, RGB, RGBA, CMYK)")


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
    if data[:4] in TIFF_MAGICS:
        layout = _tiff_layout(data)
        if layout is not None and layout["samples"] > 4:
            check_size(*layout["size"], max_pixels)
            raise UnsupportedModeError(_too_many_samples(layout))
        if layout is not None and layout["deep"]:
            return _decode_tiff16(data, layout, max_pixels)
    image = open_image(data, max_pixels)
    if image.format == "PNG":
        _check_png_complete(data)
    notes: list[str] = []
    n_frames = getattr(image, "n_frames", 1)
    if n_frames > 1:
        notes.append(f"multi-page ({n_frames} pages): first page only" if image.format == "TIFF"
                     else f"animated ({n_frames} frames): first frame only")
    fmt = image.format
    icc = image.info.get("icc_profile")
    try:
        image.load()
        xmp = _xmp_of(image)  # after load: a PNG's iTXt may follow its pixels
        exif_obj = image.getexif()
        orientation = exif_obj.get(_ORIENTATION, 1)
        if orientation in _ORIENT:
            image = ImageOps.exif_transpose(image)
            notes.append(f"EXIF orientation {orientation} applied")
            exif_obj = image.getexif()  # exif_transpose resets the orientation tag to 1
        elif orientation not in (1, None):
            notes.append(_invalid_orientation(exif_obj))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CorruptImageError(f"cannot decode image data (truncated or corrupt file): {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises assorted errors on broken EXIF
        raise CorruptImageError(f"cannot decode image metadata: {type(exc).__name__}: {exc}") from None
    exif = _exif_bytes(exif_obj)
    mode = image.mode
    if mode == "CMYK":
        image, icc = _cmyk_to_rgb(image, icc, notes)
    pixels, alpha = _to_planes(image, notes)
    return DecodedImage(pixels=pixels, alpha=alpha, mode=mode, format=fmt,
                        icc_profile=icc, exif=exif, notes=notes, xmp=xmp)


def _xmp_of(image: Image.Image) -> bytes | None:
    """The XMP packet Pillow found in the header (JPEG APP1, PNG iTXt, WebP XMP, TIFF tag 700)."""
    return xmp_bytes(image.info.get("xmp"))


def tiff_xmp(tif) -> bytes | None:
    """The XMP packet of an open tifffile.TiffFile's first page (tag 700), or None."""
    return xmp_bytes(tif.pages.first.tags.valueof(TIFF_XMP_TAG))


def xmp_bytes(value) -> bytes | None:
    """A stored XMP value as bytes (str, bytes, or a tuple of byte values as TIFF tags hold
    them); None for anything else, which a later step would only fail on."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace") or None
    try:
        return bytes(value) or None if value is not None else None
    except (TypeError, ValueError):
        return None


def _invalid_orientation(exif_obj: Image.Exif) -> str:
    """Drop an Orientation tag outside 1-8 (so viewers get no meaningless value) and say so."""
    value = exif_obj.pop(_ORIENTATION)
    return f"EXIF orientation {str(value)[:20]!s} invalid, ignored"


def _png_data_size(width: int, height: int, depth: int, colour: int, interlace: int) -> int:
    """Bytes the IDAT stream of this IHDR inflates to: every row of every pass, plus its filter byte."""
    bits = _PNG_SAMPLES[colour] * depth
    if not interlace:
        return height * (1 + (width * bits + 7) // 8)
    total = 0
    for x0, y0, dx, dy in _ADAM7:
        columns, rows = max(0, (width - x0 + dx - 1) // dx), max(0, (height - y0 + dy - 1) // dy)
        if columns and rows:
            total += rows * (1 + (columns * bits + 7) // 8)
    return total


def _check_png_complete(data: bytes) -> None:
    """Raise CorruptImageError unless the IDAT chunks inflate to every row the IHDR declares.

    Pillow and libpng both leave the rows after a short pixel stream zero-filled and call
    the image decoded (a one-row IDAT under a 10000x10000 header comes out black). The
    stream must also reach its end (its Adler-32 checked); a missing IEND after it is let
    pass, as the decoders do. Costs one extra inflate of the pixel data, counted, not kept.
    """
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if colour not in _PNG_SAMPLES or depth not in (1, 2, 4, 8, 16):
        return  # an invalid header: the decoder reports it
    expected = _png_data_size(width, height, depth, colour, interlace)
    inflater = zlib.decompressobj()
    inflated, pos = 0, 8
    try:
        while pos + 8 <= len(data) and not inflater.eof:
            length, name = struct.unpack(">I4s", data[pos:pos + 8])
            if name == b"IEND":
                break
            if name == b"IDAT":
                pending = data[pos + 8:pos + 8 + length]
                while pending and not inflater.eof:
                    inflated += len(inflater.decompress(pending, 1 << 20))
                    pending = inflater.unconsumed_tail
            pos += 12 + length
    except zlib.error as exc:
        raise CorruptImageError(f"PNG pixel data is corrupt: {exc}") from None
    if inflated < expected:
        what = (f"{inflated // (expected // height)} of {height} rows" if not interlace
                else f"{inflated} of {expected} bytes")
        raise CorruptImageError(f"truncated PNG: its pixel data holds {what} ({width}x{height} declared)")
    if not inflater.eof:  # every row is there, but not the stream's end and its checksum
        raise CorruptImageError("truncated PNG: its pixel data stops before the end of its stream")


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
    _check_png_complete(data)  # before libpng allocates the declared size
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
    return _sixteen_bit_image(array, "PNG", image.info.get("icc_profile"), exif_obj, notes,
                              _xmp_of(image))


def _tiff_layout(data: bytes) -> dict | None:
    """The first page's layout from its tags (tifffile), or None where tifffile cannot parse it.

    `deep` marks a 16-bit grey or RGB page, which tifffile decodes (Pillow would cut it to
    8 bits); `samples` counts every channel, extra samples included.
    """
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages.first
            deep = (page.bitspersample == 16 and page.sampleformat == 1
                    and page.photometric in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB))
            return {"shape": page.shape, "size": (page.imagewidth, page.imagelength),
                    "pages": len(tif.pages), "deep": deep, "samples": page.samplesperpixel,
                    "bits": page.bitspersample,
                    "sampleformat": tifffile.SAMPLEFORMAT(page.sampleformat).name.lower(),
                    "photometric": tifffile.PHOTOMETRIC(page.photometric).name}
    except Exception:  # noqa: BLE001 - not for us; Pillow reports what is wrong with it
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
            xmp = page.tags.valueof(TIFF_XMP_TAG)
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
    return _sixteen_bit_image(array, "TIFF", icc, exif_obj, notes, xmp_bytes(xmp))


def _sixteen_bit_image(array: np.ndarray, fmt: str, icc: bytes | None, exif_obj: Image.Exif,
                       notes: list[str], xmp: bytes | None = None) -> DecodedImage:
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
    elif orientation not in (1, None):
        notes.append(_invalid_orientation(exif_obj))
    if _ORIENTATION in exif_obj:
        del exif_obj[_ORIENTATION]
    mode = {1: "I;16", 2: "LA;16", 3: "RGB;16", 4: "RGBA;16"}[channels]
    return DecodedImage(pixels=np.ascontiguousarray(pixels),
                        alpha=None if alpha is None else np.ascontiguousarray(alpha),
                        mode=mode, format=fmt, icc_profile=icc,
                        exif=_exif_bytes(exif_obj), notes=notes, xmp=xmp)


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
