"""Encoding: every output format round-trips its pixels, alpha, 16 bits, ICC and EXIF."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from conftest import alpha_ramp, deep_planes, saved, scene
from sr_batch.decode import decode_image
from sr_batch.encode import encode_image

MAX_PIXELS = 1_000_000
MAKE = 0x010F


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize("fmt, lossless", [("png", True), ("tiff", True), ("jpeg", False), ("webp", False)])
def test_encode_round_trip(fmt, lossless):
    rgb = scene(21, 34, seed=5)

    data = encode_image(rgb, None, fmt)
    back = decode_image(data, MAX_PIXELS)

    assert back.format == fmt.upper()
    assert back.pixels.shape == (21, 34, 3)
    if lossless:
        np.testing.assert_array_equal(back.pixels, rgb)
    else:
        assert np.abs(back.pixels.astype(int) - rgb).mean() < 6


@pytest.mark.parametrize("fmt", ["png", "tiff", "webp"])
def test_encode_keeps_alpha(fmt):
    rgb, alpha = scene(10, 16), alpha_ramp(10, 16)

    back = decode_image(encode_image(rgb, alpha, fmt, quality=100), MAX_PIXELS)

    assert back.alpha is not None
    assert np.abs(back.alpha.astype(int) - alpha).max() <= 2


def test_encode_grey_with_alpha_png():
    grey, alpha = scene(10, 16)[..., :1], alpha_ramp(10, 16)

    back = decode_image(encode_image(grey, alpha, "png"), MAX_PIXELS)

    assert back.mode == "LA"
    np.testing.assert_array_equal(back.pixels, grey)
    np.testing.assert_array_equal(back.alpha, alpha)


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_encode_sixteen_bit_grey(fmt):
    values = (np.arange(9 * 11).reshape(9, 11, 1) * 601).astype(np.uint16)

    back = decode_image(encode_image(values, None, fmt), MAX_PIXELS)

    assert back.pixels.dtype == np.uint16
    np.testing.assert_array_equal(back.pixels, values)


def test_icc_profile_carried_to_png():
    icc = srgb_icc()
    source = saved(Image.fromarray(scene(8, 12)), "PNG", icc_profile=icc)
    decoded = decode_image(source, MAX_PIXELS)
    assert decoded.icc_profile == icc

    data = encode_image(decoded.pixels, decoded.alpha, "png", icc_profile=decoded.icc_profile)

    assert Image.open(io.BytesIO(data)).info.get("icc_profile") == icc


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_png_is_lossless_at_every_level(level):
    rgb, alpha = scene(19, 23, seed=3), alpha_ramp(19, 23)

    back = decode_image(encode_image(rgb, alpha, "png", png_compress_level=level), MAX_PIXELS)

    np.testing.assert_array_equal(back.pixels, rgb)
    np.testing.assert_array_equal(back.alpha, alpha)


def test_png_level_trades_size():
    rgb = scene(64, 64, seed=4)

    sizes = [len(encode_image(rgb, None, "png", png_compress_level=level)) for level in (0, 1, 9)]

    assert sizes[0] > sizes[1] >= sizes[2]


def test_exif_carried_to_eight_bit_png():
    exif = Image.Exif()
    exif[MAKE] = "TestCam"

    data = encode_image(scene(8, 12), None, "png", exif=exif.tobytes())

    with Image.open(io.BytesIO(data)) as image:
        assert image.getexif().get(MAKE) == "TestCam"


def test_exif_carried_to_jpeg():
    exif = Image.Exif()
    exif[MAKE] = "TestCam"
    source = saved(Image.fromarray(scene(8, 12)), "JPEG", exif=exif.tobytes())
    decoded = decode_image(source, MAX_PIXELS)

    data = encode_image(decoded.pixels, None, "jpeg", exif=decoded.exif)

    assert Image.open(io.BytesIO(data)).getexif().get(MAKE) == "TestCam"


# --- 16 bits per channel, read from the header -------------------------------------------


# --- 16 bits per channel ------------------------------------------------------------------


@pytest.mark.parametrize("channels, mode", [(1, "I;16"), (2, "LA;16"), (3, "RGB;16"), (4, "RGBA;16")])
@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_sixteen_bit_round_trip_keeps_every_bit(fmt, channels, mode):
    planes = deep_planes(7, 9, channels)
    colour = 1 if channels <= 2 else 3
    pixels, alpha = planes[..., :colour], (planes[..., colour] if channels in (2, 4) else None)

    back = decode_image(encode_image(pixels, alpha, fmt), MAX_PIXELS)

    assert back.format == fmt.upper() and back.mode == mode and back.bit_depth == 16
    np.testing.assert_array_equal(back.pixels, pixels)
    if alpha is None:
        assert back.alpha is None
    else:
        np.testing.assert_array_equal(back.alpha, alpha)


def test_sixteen_bit_to_an_eight_bit_format_rounds():
    from sr_batch.encode import _image_from_uint16

    pixels = np.array([0, 128, 129, 32896, 65407, 65535], np.uint16).reshape(1, 2, 3)
    alpha = np.array([[300, 65000]], np.uint16)

    image = _image_from_uint16(pixels, alpha, "webp")

    assert image.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(image)[..., :3], [[[0, 0, 1], [128, 255, 255]]])
    np.testing.assert_array_equal(np.asarray(image)[..., 3], [[1, 253]])


def test_tiff_storage_tags_are_not_carried_as_exif():
    # Pillow reports a TIFF's ImageWidth, Photometric, ... as EXIF; carried to an output of
    # another size they would make the output claim the input's size.
    exif = Image.Exif()
    exif[MAKE] = "TestCam"
    decoded = decode_image(saved(Image.fromarray(scene(6, 10)), "TIFF", exif=exif.tobytes()), MAX_PIXELS)
    big = np.repeat(np.repeat(decoded.pixels, 2, axis=0), 2, axis=1)

    back = decode_image(encode_image(big, None, "tiff", exif=decoded.exif), MAX_PIXELS)

    assert (back.width, back.height) == (20, 12)
    carried = Image.Exif()
    carried.load(back.exif)
    assert carried.get(MAKE) == "TestCam" and 256 not in carried


def test_sixteen_bit_png_carries_icc_and_exif():
    icc = srgb_icc()
    exif = Image.Exif()
    exif[MAKE] = "TestCam"

    data = encode_image(deep_planes(5, 6, 3), None, "png", icc_profile=icc, exif=exif.tobytes())

    with Image.open(io.BytesIO(data)) as image:
        assert image.info["icc_profile"] == icc and image.getexif().get(MAKE) == "TestCam"
    assert decode_image(data, MAX_PIXELS).icc_profile == icc
