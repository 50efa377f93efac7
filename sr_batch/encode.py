"""Arrays -> bytes: PNG, JPEG, WebP and TIFF, 8 or 16 bits, with ICC, EXIF and XMP where
each format holds them."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from sr_batch.decode import TIFF_XMP_TAG

# iTXt header of an XMP packet: keyword, then uncompressed, no language, no translated keyword.
_PNG_XMP_KEYWORD = b"XML:com.adobe.xmp\x00\x00\x00\x00\x00"


# From this --png-compress-level on, 8-bit PNG goes through Pillow: slower, smaller files.
PILLOW_PNG_FROM_LEVEL = 4


# Largest XMP packet one JPEG APP1 segment holds (65533 bytes less the XMP namespace header);
# a larger one would need Extended XMP, which sr-batch does not write.
JPEG_XMP_MAX = 65533 - len(b"http://ns.adobe.com/xap/1.0/\x00")


def encode_image(pixels: np.ndarray, alpha: np.ndarray | None, fmt: str, *, quality: int = 95,
                 png_compress_level: int = 1, icc_profile: bytes | None = None,
                 exif: bytes | None = None, xmp: bytes | None = None) -> bytes:
    """Encode colour planes (+ alpha) to bytes in `fmt`, carrying ICC, EXIF and XMP where allowed.

    XMP goes where each format's readers look: PNG iTXt `XML:com.adobe.xmp`, JPEG APP1 (at
    most JPEG_XMP_MAX bytes), WebP `XMP ` chunk, TIFF tag 700.

    16-bit stays 16-bit in PNG and TIFF. PNG goes through libpng (imagecodecs) below
    PILLOW_PNG_FROM_LEVEL and for 16-bit colour or alpha, else through Pillow; a 16-bit
    colour or alpha TIFF, which Pillow cannot hold, through tifffile (no EXIF).
    """
    deep_colour = pixels.dtype == np.uint16 and (pixels.shape[2] == 3 or alpha is not None)
    if fmt == "png" and (png_compress_level < PILLOW_PNG_FROM_LEVEL or deep_colour):
        return _encode_png(pixels, alpha, png_compress_level, icc_profile, exif, xmp)
    if fmt == "tiff" and deep_colour:
        return _encode_tiff16(pixels, alpha, png_compress_level, icc_profile, xmp)
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
        if xmp:
            from PIL.PngImagePlugin import PngInfo

            options["pnginfo"] = info = PngInfo()
            info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8"))
    elif fmt in ("jpeg", "webp"):
        options["quality"] = quality
        if xmp:
            options["xmp"] = xmp
    elif fmt == "tiff":
        options["compression"] = "tiff_deflate"
        if xmp:
            options["tiffinfo"] = {TIFF_XMP_TAG: xmp}
    buffer = io.BytesIO()
    image.save(buffer, format=fmt.upper(), **options)
    return buffer.getvalue()


def _encode_png(pixels: np.ndarray, alpha: np.ndarray | None, level: int,
                icc_profile: bytes | None, exif: bytes | None, xmp: bytes | None = None) -> bytes:
    """PNG through libpng (imagecodecs), 8 or 16 bits, grey or colour, with or without alpha.

    One fixed filter (Paeth) instead of Pillow's per-row trial of all five: at
    levels 1-2 this is 2x faster than Pillow for the same file size
    (bench/bench_codecs.py). At level 1 (the default) zlib's run-length strategy:
    on photographs upscaled x2, 15 % less time and 5 % smaller files than level 1's
    usual matching (bench/bench_codecs.py). At 4 and above Pillow makes 3-9 %
    smaller files, so 8-bit PNG goes through Pillow there (16-bit colour cannot).
    """
    import imagecodecs

    planes = pixels if alpha is None else np.concatenate([pixels, alpha[..., None]], axis=2)
    png_filter = imagecodecs.PNG.FILTER.NONE if level == 0 else imagecodecs.PNG.FILTER.PAETH
    strategy = imagecodecs.PNG.STRATEGY.RLE if level == 1 else None
    data = imagecodecs.png_encode(planes if planes.shape[2] > 1 else planes[..., 0], level=level,
                                  filter=png_filter, strategy=strategy)
    return _png_with_metadata(data, icc_profile, exif, xmp)


def _png_with_metadata(png: bytes, icc_profile: bytes | None, exif: bytes | None,
                       xmp: bytes | None = None) -> bytes:
    """Insert iCCP, eXIf and XMP (iTXt) chunks right after IHDR (iCCP and eXIf must precede
    IDAT; readers find XMP soonest there too)."""
    chunks = b""
    if icc_profile:
        chunks += _png_chunk_bytes(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile))
    if exif:
        chunks += _png_chunk_bytes(b"eXIf", exif.removeprefix(b"Exif\x00\x00"))
    if xmp:
        chunks += _png_chunk_bytes(b"iTXt", _PNG_XMP_KEYWORD + xmp)
    ihdr_end = 8 + 12 + 13
    return png[:ihdr_end] + chunks + png[ihdr_end:]


def _png_chunk_bytes(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def _encode_tiff16(pixels: np.ndarray, alpha: np.ndarray | None, level: int,
                   icc_profile: bytes | None, xmp: bytes | None = None) -> bytes:
    """16-bit colour or alpha TIFF, which Pillow cannot hold, through tifffile (no EXIF)."""
    import tifffile

    planes = pixels if alpha is None else np.concatenate([pixels, alpha[..., None]], axis=2)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, planes, photometric="rgb" if pixels.shape[2] == 3 else "minisblack",
                     planarconfig="contig", extrasamples=["unassalpha"] if alpha is not None else None,
                     compression="zlib", compressionargs={"level": max(1, level)},
                     iccprofile=icc_profile, metadata=None,
                     extratags=[(TIFF_XMP_TAG, "B", len(xmp), xmp, True)] if xmp else None)
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
