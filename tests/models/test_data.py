"""Training data: the HR listing, and batches seeded by (seed, step) and degraded as evaluation does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from sr_batch import resample  # noqa: E402


def test_batches_are_seeded_and_degraded_like_evaluation(hr_folder):
    from sr_batch.models.data import list_images, load_images, sample_batch

    assert [Path(u).name for u in list_images(str(hr_folder))] == ["extra.BMP", "img0.png", "img1.png", "img2.png"]
    images = load_images([str(hr_folder)])
    lr, hr = sample_batch(images, seed=3, step=5, batch_size=4, patch_size=24, scale=2)
    again, _ = sample_batch(images, seed=3, step=5, batch_size=4, patch_size=24, scale=2)
    other, _ = sample_batch(images, seed=3, step=6, batch_size=4, patch_size=24, scale=2)
    assert lr.shape == (4, 12, 12, 3) and hr.shape == (4, 24, 24, 3) and lr.dtype == np.float32
    np.testing.assert_array_equal(lr, again)
    assert not np.array_equal(lr, other)
    hr_u8 = np.rint(hr[0] * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.rint(lr[0] * 255).astype(np.uint8), resample.downscale_bicubic(hr_u8, 2))


def test_scale_augmentation_adds_a_bicubic_downscaled_copy_per_factor():
    from PIL import Image

    from sr_batch.errors import ConfigError
    from sr_batch.models.data import add_downscaled

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)]
    out = add_downscaled(images, (0.9, 0.5))
    assert [im.shape for im in out] == [(40, 60, 3), (30, 20, 3), (36, 54, 3), (27, 18, 3),
                                        (20, 30, 3), (15, 10, 3)]
    assert out[0] is images[0] and out[1] is images[1]
    expected = np.asarray(Image.fromarray(images[0]).resize((30, 20), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(out[4], expected)
    assert add_downscaled(images, ()) == images
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        add_downscaled(images, (1.5,))
