"""The demo's pictures: seeded and sized, with the hard edges, fine detail and smooth areas
that show what upscaling does."""

import numpy as np
import pytest

from sr_batch import quality, resample
from sr_batch.demo_images import render_original


def test_render_original_is_seeded_and_sized():
    a = render_original(96, 128, seed=3, scale=2)
    assert a.shape == (96, 128, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_original(96, 128, seed=3, scale=2))
    assert not np.array_equal(a, render_original(96, 128, seed=4, scale=2))
    portrait = render_original(150, 90, seed=0, scale=3)
    assert portrait.shape == (150, 90, 3)
    with pytest.raises(ValueError, match="at least 16x16"):
        render_original(15, 40, scale=2)


def test_render_original_has_what_upscaling_shows():
    """Hard edges and fine detail (bicubic loses a lot of it), and smooth gradient too."""
    original = render_original(240, 320, seed=0, scale=2)
    bicubic = resample.upscale_bicubic(resample.downscale_bicubic(original, 2), 2)
    # Fine detail: bicubic of the shrunk picture is far from the original, unlike a smooth image.
    assert quality.psnr_y(bicubic, original, 2) < 30.0
    y = quality.rgb_to_y(original)
    steps = np.abs(np.diff(y, axis=1))
    assert (steps > 100).mean() > 0.02  # hard edges: text, bars, leaves, shapes
    assert (steps < 3).mean() > 0.4  # smooth areas: the gradient, cards, disks
