"""Bicubic resizing keeps dtype and layout and follows Pillow."""

import numpy as np
import pytest
from PIL import Image

from sr_batch.resample import downscale_bicubic, resize_bicubic, upscale_bicubic

# Full-scale values per dtype, to fill test images across their whole range.
FULL_SCALE = {np.uint8: 255, np.uint16: 65535, np.float32: 1.0}


def make_image(shape, dtype, seed=0):
    """Return a random image of the given shape spanning the dtype's range."""
    values = np.random.default_rng(seed).random(shape) * FULL_SCALE[dtype]
    return np.rint(values).astype(dtype) if dtype != np.float32 else values.astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("shape", [(9, 14), (9, 14, 1), (9, 14, 2), (9, 14, 3), (9, 14, 4)])
def test_resize_keeps_dtype_and_layout(shape, dtype):
    resized = resize_bicubic(make_image(shape, dtype), (5, 20))
    assert resized.dtype == dtype
    assert resized.shape == (20, 5) + shape[2:]


@pytest.mark.parametrize("mode_shape", [(11, 17), (11, 17, 3)])
def test_uint8_matches_pillow(mode_shape):
    image = make_image(mode_shape, np.uint8)
    expected = np.asarray(Image.fromarray(image).resize((6, 23), Image.BICUBIC))
    np.testing.assert_array_equal(resize_bicubic(image, (6, 23)), expected)


def test_uint8_four_channels_are_resized_independently_of_alpha():
    image = make_image((11, 17, 4), np.uint8)
    image[..., 3] = 0  # fully transparent: Pillow's RGBA path would premultiply colour away
    per_channel = np.stack(
        [np.asarray(Image.fromarray(image[..., c]).resize((6, 5), Image.BICUBIC)) for c in range(4)], axis=-1
    )
    np.testing.assert_array_equal(resize_bicubic(image, (6, 5)), per_channel)


def test_uint16_keeps_sixteen_bit_range():
    ramp = np.linspace(0, 65535, 32 * 24).reshape(24, 32).astype(np.uint16)
    image = np.stack([ramp, ramp[::-1], np.full_like(ramp, 40000)], axis=-1)
    resized = downscale_bicubic(image, 2)
    assert resized.shape == (12, 16, 3)
    assert resized.max() > 255
    np.testing.assert_array_equal(resized[..., 2], 40000)  # a flat channel stays exactly flat


def test_uint16_matches_pillow_float_mode_rounded():
    image = make_image((10, 13), np.uint16)
    resized_float = np.asarray(Image.fromarray(image.astype(np.float32)).resize((7, 4), Image.BICUBIC))
    expected = np.clip(np.rint(resized_float), 0, 65535).astype(np.uint16)
    np.testing.assert_array_equal(resize_bicubic(image, (7, 4)), expected)


def test_integer_overshoot_is_clipped():
    # A hard black/white edge makes bicubic ring past both ends of the range.
    image = np.zeros((8, 8), dtype=np.uint16)
    image[:, 4:] = 65535
    float_result = resize_bicubic(image.astype(np.float32) / 65535, (32, 32))
    assert float_result.min() < 0 and float_result.max() > 1  # float is left unclipped
    result = resize_bicubic(image, (32, 32))
    assert result.min() == 0 and result.max() == 65535


def test_downscale_and_upscale_sizes():
    image = make_image((13, 29, 3), np.uint8)
    assert downscale_bicubic(image, 4).shape == (3, 7, 3)
    assert upscale_bicubic(image, 3).shape == (39, 87, 3)
    with pytest.raises(ValueError):
        downscale_bicubic(image, 14)


def test_unsupported_dtype_raises():
    with pytest.raises(TypeError):
        resize_bicubic(np.zeros((4, 4), dtype=np.int32), (2, 2))
