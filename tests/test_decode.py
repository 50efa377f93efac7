"""Decoding: modes, bit depth, alpha, EXIF orientation, ICC, the output format a decoded image
takes, and per-image errors (cut-off, broken or oversize files)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import alpha_ramp, deep_planes, png_bytes, saved, scene
from sr_batch.decode import decode_image
from sr_batch.encode import encode_image
from sr_batch.errors import (CorruptImageError, EmptyFileError, NotAnImageError,
                             TooManyPixelsError, UnsupportedModeError)
from sr_batch.formats import output_format

MAX_PIXELS = 1_000_000
ORIENTATION = 0x0112
MAKE = 0x010F


# --- modes -----------------------------------------------------------------------------


def test_rgb():
    rgb = scene(12, 17, seed=3)

    decoded = decode_image(png_bytes(rgb), MAX_PIXELS)

    assert decoded.mode == "RGB" and decoded.format == "PNG"
    assert decoded.pixels.dtype == np.uint8
    np.testing.assert_array_equal(decoded.pixels, rgb)
    assert decoded.alpha is None
    assert (decoded.height, decoded.width, decoded.channels, decoded.bit_depth) == (12, 17, 3, 8)


def test_grayscale_stays_one_channel():
    grey = scene(10, 14)[..., 1]

    decoded = decode_image(png_bytes(grey), MAX_PIXELS)

    assert decoded.mode == "L"
    assert decoded.pixels.shape == (10, 14, 1)
    np.testing.assert_array_equal(decoded.pixels[..., 0], grey)
    assert decoded.alpha is None and decoded.channels == 1


def test_rgba_keeps_alpha_plane():
    rgb, alpha = scene(9, 16), alpha_ramp(9, 16)

    decoded = decode_image(png_bytes(np.dstack([rgb, alpha])), MAX_PIXELS)

    assert decoded.mode == "RGBA"
    np.testing.assert_array_equal(decoded.pixels, rgb)
    np.testing.assert_array_equal(decoded.alpha, alpha)
    assert decoded.alpha.min() == 0 and decoded.alpha.max() == 255
    assert decoded.channels == 4


def test_la_keeps_alpha_plane():
    grey, alpha = scene(9, 16)[..., 0], alpha_ramp(9, 16)

    decoded = decode_image(png_bytes(np.dstack([grey, alpha])), MAX_PIXELS)

    assert decoded.mode == "LA"
    assert decoded.pixels.shape == (9, 16, 1)
    np.testing.assert_array_equal(decoded.pixels[..., 0], grey)
    np.testing.assert_array_equal(decoded.alpha, alpha)
    assert (decoded.alpha < 255).any()
    assert decoded.channels == 2


def test_palette_with_transparency_expands_to_rgba():
    indices = (np.arange(8 * 12).reshape(8, 12) % 4).astype(np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 250, 250, 250])
    data = saved(image, "PNG", transparency=2)  # palette index 2 (blue) is see-through

    decoded = decode_image(data, MAX_PIXELS)

    assert decoded.mode == "P"
    assert decoded.alpha is not None
    np.testing.assert_array_equal(decoded.alpha == 0, indices == 2)
    np.testing.assert_array_equal(decoded.pixels[indices == 0], [[255, 0, 0]] * int((indices == 0).sum()))
    assert any("palette expanded to RGBA" in n for n in decoded.notes)


def test_palette_without_transparency_expands_to_rgb():
    indices = (np.arange(8 * 12).reshape(8, 12) % 3).astype(np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90])

    decoded = decode_image(saved(image, "PNG"), MAX_PIXELS)

    assert decoded.alpha is None
    assert decoded.pixels.shape == (8, 12, 3)
    np.testing.assert_array_equal(decoded.pixels[indices == 1][0], [40, 50, 60])
    assert any("palette expanded to RGB" in n for n in decoded.notes)


def test_one_bit_is_treated_as_grey():
    bits = (np.indices((6, 10)).sum(axis=0) % 2).astype(bool)
    image = Image.fromarray(bits)
    assert image.mode == "1"

    decoded = decode_image(saved(image, "PNG"), MAX_PIXELS)

    assert decoded.mode == "1"
    assert decoded.pixels.shape == (6, 10, 1) and decoded.pixels.dtype == np.uint8
    np.testing.assert_array_equal(decoded.pixels[..., 0], np.where(bits, 255, 0))


def test_sixteen_bit_grey_keeps_its_depth():
    values = (np.arange(12 * 20).reshape(12, 20) * 271).astype(np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"

    decoded = decode_image(saved(image, "PNG"), MAX_PIXELS)

    assert decoded.mode == "I;16"
    assert decoded.pixels.dtype == np.uint16 and decoded.bit_depth == 16
    assert decoded.pixels.max() > 255
    np.testing.assert_array_equal(decoded.pixels[..., 0], values)


def test_cmyk_jpeg_becomes_rgb_with_a_note():
    rgb = scene(16, 24, seed=2)
    data = saved(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)

    decoded = decode_image(data, MAX_PIXELS)

    assert decoded.mode == "CMYK" and decoded.format == "JPEG"
    assert decoded.pixels.shape == (16, 24, 3)
    assert "CMYK converted to RGB" in decoded.notes
    # Naive CMYK round trip, then JPEG: the colours come back close, not inverted.
    assert np.abs(decoded.pixels.astype(int) - rgb).mean() < 12


def test_exif_orientation_is_applied():
    # Stored 20 wide x 10 high: left half white, right half black.
    stored = np.zeros((10, 20, 3), np.uint8)
    stored[:, :10] = 255
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # display = stored rotated 90 degrees clockwise
    exif[MAKE] = "TestCam"
    data = saved(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())

    decoded = decode_image(data, MAX_PIXELS)

    assert (decoded.width, decoded.height) == (10, 20)
    # Rotated clockwise, the stored left half is now the top half.
    assert decoded.pixels[:8].min() > 200
    assert decoded.pixels[12:].max() < 50
    assert any("orientation 6" in n for n in decoded.notes)
    # The carried EXIF keeps the other tags but must not ask viewers to rotate again.
    carried = Image.Exif()
    carried.load(decoded.exif)
    assert carried.get(MAKE) == "TestCam"
    assert carried.get(ORIENTATION, 1) == 1


@pytest.mark.parametrize("value", [0, 9, 255])
def test_exif_orientation_outside_one_to_eight_is_ignored(value):
    stored = scene(10, 20)
    exif = Image.Exif()
    exif[ORIENTATION] = value
    exif[MAKE] = "TestCam"
    data = saved(Image.fromarray(stored), "PNG", exif=exif.tobytes())

    decoded = decode_image(data, MAX_PIXELS)

    np.testing.assert_array_equal(decoded.pixels, stored)
    assert decoded.notes == [f"EXIF orientation {value} invalid, ignored"]
    carried = Image.Exif()
    carried.load(decoded.exif)
    assert carried.get(MAKE) == "TestCam" and ORIENTATION not in carried


def test_sixteen_bit_exif_orientation_outside_one_to_eight_is_ignored():
    import tifffile

    deep = deep_planes(5, 8, 1)[..., 0]
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, deep, extratags=[(274, "H", 1, 9, True)])

    decoded = decode_image(buffer.getvalue(), MAX_PIXELS)

    np.testing.assert_array_equal(decoded.pixels[..., 0], deep)
    assert decoded.notes == ["EXIF orientation 9 invalid, ignored"]


def test_animated_gif_notes_first_frame_only():
    frames = [Image.fromarray(scene(8, 8, seed=s)).convert("P") for s in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])

    decoded = decode_image(buffer.getvalue(), MAX_PIXELS)

    assert decoded.format == "GIF"
    assert decoded.pixels.shape[:2] == (8, 8)
    assert any("animated (3 frames)" in n for n in decoded.notes)


# --- errors ----------------------------------------------------------------------------


def test_empty_bytes():
    with pytest.raises(EmptyFileError) as info:
        decode_image(b"", MAX_PIXELS)
    assert info.value.error_type == "empty_file"


def test_text_is_not_an_image():
    with pytest.raises(NotAnImageError):
        decode_image(b"hello, this is a text file\n" * 20, MAX_PIXELS)


def test_truncated_png_is_corrupt():
    data = png_bytes(scene(64, 64))

    with pytest.raises(CorruptImageError) as info:
        decode_image(data[: len(data) // 2], MAX_PIXELS)
    assert info.value.error_type == "corrupt_image"


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_from_rows(width: int, height: int, depth: int, colour: int, raw: bytes,
                   interlace: int = 0) -> bytes:
    """A PNG from its raw (filtered) pixel stream, whatever the IHDR says."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw, 9))
            + _png_chunk(b"IEND", b""))


def _adam7_png(grey: np.ndarray) -> bytes:
    """An interlaced 8-bit grey PNG (Pillow cannot write Adam7): each pass's rows, filter 0."""
    raw = b""
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
                           (1, 0, 2, 2), (0, 1, 1, 2)):
        sub = grey[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    return _png_from_rows(grey.shape[1], grey.shape[0], 8, 0, raw, interlace=1)


@pytest.mark.parametrize("depth, colour, bytes_per_row", [(8, 0, 10_000), (16, 2, 60_000)])
def test_one_row_of_data_under_a_huge_png_header_is_corrupt(depth, colour, bytes_per_row):
    # 10000x10000 declared, one row of pixel data: decoders zero-fill the other 9999 rows
    # (a black image "ok") unless the stream's length is checked against the header.
    bomb = _png_from_rows(10_000, 10_000, depth, colour, b"\x00" + b"\x80" * bytes_per_row)
    assert len(bomb) < 200

    with pytest.raises(CorruptImageError, match="truncated PNG: its pixel data holds 1 of 10000 rows"):
        decode_image(bomb, 10**9)


def _cut(data: bytes, fraction: float = 0.6) -> bytes:
    return data[: int(len(data) * fraction)]


def _deep_tiff(array: np.ndarray, **options) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


TRUNCATED = {
    "png": lambda: saved(Image.fromarray(scene(64, 64)), "PNG"),
    "png-16": lambda: encode_image(deep_planes(64, 64, 3), None, "png"),
    "jpeg": lambda: saved(Image.fromarray(scene(64, 64)), "JPEG"),
    "jpeg-progressive": lambda: saved(Image.fromarray(scene(64, 64)), "JPEG", progressive=True),
    "tiff": lambda: saved(Image.fromarray(scene(64, 64)), "TIFF"),
    "tiff-deflate": lambda: saved(Image.fromarray(scene(64, 64)), "TIFF", compression="tiff_deflate"),
    "tiff-16-strips": lambda: _deep_tiff(deep_planes(64, 64, 3), rowsperstrip=8),
    "tiff-16-deflate": lambda: _deep_tiff(deep_planes(64, 64, 1)[..., 0], compression="zlib"),
    "webp": lambda: saved(Image.fromarray(scene(64, 64)), "WEBP"),
    "webp-lossless": lambda: saved(Image.fromarray(scene(64, 64)), "WEBP", lossless=True),
    "gif": lambda: saved(Image.fromarray(scene(64, 64)).convert("P"), "GIF"),
    "png-interlaced": lambda: _adam7_png(scene(37, 29)[..., 1]),
}


@pytest.mark.parametrize("fraction", [0.6, 0.9])
@pytest.mark.parametrize("kind", sorted(TRUNCATED))
def test_truncated_images_are_corrupt(kind, fraction):
    data = TRUNCATED[kind]()
    assert decode_image(data, MAX_PIXELS).width > 0  # whole, it decodes

    with pytest.raises(CorruptImageError) as info:
        decode_image(_cut(data, fraction), MAX_PIXELS)
    assert info.value.error_type == "corrupt_image"


def test_truncated_jpeg_fails_even_where_pillow_was_told_to_pad_it(monkeypatch):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as some other library might
    data = saved(Image.fromarray(scene(64, 64)), "JPEG")

    with pytest.raises(CorruptImageError, match="truncated"):
        decode_image(data[:-40], MAX_PIXELS)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_webp_says_how_much_is_missing():
    data = saved(Image.fromarray(scene(64, 64)), "WEBP")

    with pytest.raises(CorruptImageError, match=f"truncated WebP: the file has 100 of the {len(data)} bytes"):
        decode_image(data[:100], MAX_PIXELS)


@pytest.mark.parametrize("make", [
    lambda: _adam7_png(scene(37, 29)[..., 1]),                                  # interlaced
    lambda: _adam7_png(scene(1, 1)[..., 1]),                                    # passes left empty
    lambda: saved(Image.fromarray(scene(13, 13)[..., 0] > 128), "PNG"),         # 1 bit a pixel
    lambda: saved(Image.fromarray(scene(9, 11)).convert("P", colors=4), "PNG", bits=2),  # 2-bit palette
    lambda: encode_image(deep_planes(7, 5, 1), deep_planes(7, 5, 1)[..., 0], "png"),  # 16-bit LA
])
def test_complete_pngs_of_every_layout_pass_the_length_check(make):
    data = make()
    with Image.open(io.BytesIO(data)) as image:
        expected = np.asarray(image.convert("RGBA" if "A" in image.mode else "L")
                              if image.mode != "I;16" else image)

    decoded = decode_image(data, MAX_PIXELS)

    assert (decoded.height, decoded.width) == expected.shape[:2]


def test_interlaced_png_decodes_to_its_pixels():
    grey = scene(37, 29)[..., 1]

    np.testing.assert_array_equal(decode_image(_adam7_png(grey), MAX_PIXELS).pixels[..., 0], grey)


def test_png_cut_inside_its_stream_checksum_is_corrupt():
    # Every row inflates, but the zlib stream's last bytes (its Adler-32) are gone.
    grey = scene(16, 16)[..., 0]
    raw = zlib.compress(b"".join(b"\x00" + row.tobytes() for row in grey), 9)[:-2]
    ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 0, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", raw)
            + _png_chunk(b"IEND", b""))

    with pytest.raises(CorruptImageError, match="stops before the end of its stream"):
        decode_image(data, MAX_PIXELS)


def test_png_with_all_its_rows_but_no_iend_still_decodes():
    # Every pixel is there and checked (zlib's Adler-32); only the end marker is missing.
    data = saved(Image.fromarray(scene(16, 16)), "PNG")

    np.testing.assert_array_equal(decode_image(data[:-12], MAX_PIXELS).pixels, scene(16, 16))


def _with_png_size(data: bytes, width: int, height: int) -> bytes:
    """The same PNG with its IHDR claiming another size (CRC fixed, pixel data untouched)."""
    assert data[12:16] == b"IHDR"
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    return data[:16] + bytes(ihdr) + crc + data[33:]


def test_too_many_pixels_is_refused_before_decoding():
    # A 10000x10000 header over 8x8 pixels of data: decoding it would fail as corrupt,
    # so only a check made on the header alone can raise TooManyPixelsError.
    bomb = _with_png_size(png_bytes(scene(8, 8)[..., 0]), 10_000, 10_000)
    assert len(bomb) < 1_000

    with pytest.raises(TooManyPixelsError, match="100000000 pixels exceeds the limit of 1000000"):
        decode_image(bomb, MAX_PIXELS)
    with pytest.raises(CorruptImageError):
        decode_image(bomb, 10**9)


def test_pixel_limit_is_inclusive():
    data = png_bytes(scene(10, 10))

    assert decode_image(data, 100).width == 10
    with pytest.raises(TooManyPixelsError):
        decode_image(data, 99)


def test_float_tiff_is_unsupported():
    image = Image.fromarray(np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8))
    assert image.mode == "F"

    with pytest.raises(UnsupportedModeError, match="'F'"):
        decode_image(saved(image, "TIFF"), MAX_PIXELS)


@pytest.mark.parametrize("photometric, extrasamples", [
    ("minisblack", ["unspecified"] * 4),        # Pillow cannot open it at all
    ("rgb", ["unassalpha", "unspecified"]),     # Pillow would open it as RGBA, dropping one
])
def test_five_channel_tiff_is_an_unsupported_mode(photometric, extrasamples):
    data = _deep_tiff(np.zeros((6, 8, 5), np.uint8), photometric=photometric,
                      planarconfig="contig", extrasamples=extrasamples)

    with pytest.raises(UnsupportedModeError, match="TIFF with 5 channels") as info:
        decode_image(data, MAX_PIXELS)
    assert info.value.error_type == "unsupported_mode"


def test_five_channel_tiff_above_the_limit_is_too_many_pixels():
    data = _deep_tiff(np.zeros((20, 20, 5), np.uint8), photometric="minisblack",
                      planarconfig="contig", extrasamples=["unspecified"] * 4)

    with pytest.raises(TooManyPixelsError):
        decode_image(data, 399)


def test_tiff_cut_before_its_header_ends_is_corrupt_not_unrecognised():
    # Pillow writes the IFD after the pixels: cut short, Pillow cannot identify the file.
    data = saved(Image.fromarray(scene(32, 32)), "TIFF", compression="tiff_deflate")

    with pytest.raises(CorruptImageError, match="TIFF signature but the header cannot be parsed"):
        decode_image(_cut(data, 0.7), MAX_PIXELS)


# --- output format ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt, planned", [("PNG", "png"), ("JPEG", "jpeg"), ("WEBP", "webp"), ("TIFF", "tiff")])
def test_the_planned_format_is_written(fmt, planned):
    """The plan decides the format from the output's name (--format keep: the input's
    extension); a format that can hold the image is kept, with no note."""
    decoded = decode_image(saved(Image.fromarray(scene(8, 8)), fmt), MAX_PIXELS)

    assert output_format(decoded, planned, "keep") == (planned, None)


@pytest.mark.parametrize("fmt", ["GIF", "BMP"])
def test_keep_with_unwritable_input_notes_the_png_output(fmt):
    decoded = decode_image(saved(Image.fromarray(scene(8, 8)), fmt), MAX_PIXELS)

    out, note = output_format(decoded, "png", "keep")

    assert out == "png"
    assert fmt in note and "PNG" in note


def test_requested_format_is_used():
    decoded = decode_image(png_bytes(scene(8, 8)), MAX_PIXELS)

    assert output_format(decoded, "jpeg", "jpeg") == ("jpeg", None)
    assert output_format(decoded, "webp", "webp") == ("webp", None)


def test_alpha_with_jpeg_requested_writes_png():
    decoded = decode_image(png_bytes(np.dstack([scene(8, 8), alpha_ramp(8, 8)])), MAX_PIXELS)

    out, note = output_format(decoded, "jpeg", "jpeg")

    assert out == "png"
    assert "alpha" in note and "jpeg" in note
    # Formats that keep alpha are left alone.
    assert output_format(decoded, "webp", "webp") == ("webp", None)


def test_sixteen_bit_with_jpeg_requested_writes_png():
    decoded = decode_image(saved(Image.fromarray(np.full((4, 4), 1000, np.uint16)), "PNG"), MAX_PIXELS)

    out, note = output_format(decoded, "jpeg", "jpeg")

    assert out == "png" and "16-bit" in note


# --- encoding --------------------------------------------------------------------------


# --- 16 bits per channel, read from the header -------------------------------------------


def test_bit_depth_comes_from_the_header_not_the_values():
    import imagecodecs

    dark = np.full((4, 6, 3), 200, np.uint16)  # 16-bit file whose values all fit in 8 bits

    decoded = decode_image(imagecodecs.png_encode(dark), MAX_PIXELS)

    assert decoded.bit_depth == 16 and decoded.pixels.dtype == np.uint16
    np.testing.assert_array_equal(decoded.pixels, dark)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_sixteen_bit_orientation_matches_pillow(orientation):
    import imagecodecs
    from PIL import ImageOps

    eight = scene(5, 8, seed=orientation)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[MAKE] = "TestCam"
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(
        saved(Image.fromarray(eight), "PNG", exif=exif.tobytes())))))
    data = imagecodecs.png_encode(eight.astype(np.uint16) * 257)
    chunk = exif.tobytes()[6:]  # eXIf holds the TIFF structure without the "Exif\0\0" prefix
    data = data[:33] + struct.pack(">I", len(chunk)) + b"eXIf" + chunk + struct.pack(
        ">I", zlib.crc32(b"eXIf" + chunk)) + data[33:]

    decoded = decode_image(data, MAX_PIXELS)

    np.testing.assert_array_equal(decoded.pixels // 257, upright)
    carried = Image.Exif()
    carried.load(decoded.exif)
    assert carried.get(MAKE) == "TestCam" and carried.get(ORIENTATION, 1) == 1


def test_sixteen_bit_pixel_limit_is_checked():
    with pytest.raises(TooManyPixelsError):
        decode_image(encode_image(deep_planes(10, 10, 3), None, "tiff"), 99)
    with pytest.raises(TooManyPixelsError):
        decode_image(encode_image(deep_planes(10, 10, 3), None, "png"), 99)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animated_inputs_decode_their_first_frame(fmt):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    options = {"lossless": True} if fmt == "WEBP" else {}
    data = saved(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **options)

    decoded = decode_image(data, MAX_PIXELS)

    assert "animated (3 frames): first frame only" in decoded.notes
    assert tuple(decoded.pixels[4, 4]) == (255, 0, 0)


def test_multi_page_tiff_notes_first_page_only():
    pages = [Image.fromarray(scene(6, 6, seed=s)) for s in range(2)]

    decoded = decode_image(saved(pages[0], "TIFF", save_all=True, append_images=pages[1:]), MAX_PIXELS)

    assert "multi-page (2 pages): first page only" in decoded.notes
    np.testing.assert_array_equal(decoded.pixels, scene(6, 6, seed=0))
