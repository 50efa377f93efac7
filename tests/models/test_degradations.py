"""The degradation pipeline: each step does what it says, and a seed gives the same patch."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sr_batch.models import degradations as d


def textured(size: int = 96, seed: int = 0) -> np.ndarray:
    """A smooth gradient with a soft texture, uint8 RGB: no 8x8 structure of its own."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    base = np.stack([0.3 + 0.4 * x, 0.3 + 0.4 * y, 0.5 + 0.2 * np.sin(5 * x + 3 * y)], axis=2)
    noise = rng.normal(0, 1, (size, size, 1)).astype(np.float32)
    texture = d.blur(noise, d.gaussian_kernel(7, 1.2)) * 0.1
    return np.clip(np.rint((base + texture) * 255), 0, 255).astype(np.uint8)


def blockiness(image: np.ndarray) -> float:
    """Mean |difference| across 8-px block borders over the mean inside blocks (columns and rows)."""
    y = image.astype(np.float64).mean(axis=2)
    dx = np.abs(np.diff(y, axis=1))
    dy = np.abs(np.diff(y, axis=0))
    border_x, border_y = (np.arange(dx.shape[1]) % 8) == 7, (np.arange(dy.shape[0]) % 8) == 7
    across = np.concatenate([dx[:, border_x].ravel(), dy[border_y].ravel()]).mean()
    inside = np.concatenate([dx[:, ~border_x].ravel(), dy[~border_y].ravel()]).mean()
    return across / inside


def neighbour_difference_variance(image: np.ndarray) -> float:
    """Variance of horizontal neighbour differences, in [0, 1] units: high-frequency energy."""
    return float(np.var(np.diff(image.astype(np.float64), axis=1)))


@pytest.mark.parametrize("ranges", [d.MILD, d.STRONG], ids=lambda r: r.name)
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_degrade_makes_an_lr_patch_of_the_right_size(ranges, scale):
    hr = textured(24 * scale)
    for i in range(8):
        lr = d.degrade(hr, scale, ranges, np.random.default_rng([0, i]))
        assert lr.shape == (24, 24, 3) and lr.dtype == np.uint8


def test_the_seed_reproduces_the_patch_and_another_seed_does_not():
    hr = textured(96)
    first = d.degrade(hr, 2, d.STRONG, np.random.default_rng([7, 3, 1]))
    again = d.degrade(hr, 2, d.STRONG, np.random.default_rng([7, 3, 1]))
    np.testing.assert_array_equal(first, again)
    others = [d.degrade(hr, 2, d.STRONG, np.random.default_rng([7, 3, k])) for k in range(2, 6)]
    assert all(np.abs(o.astype(int) - first).mean() > 0.5 for o in others)


def test_strong_degrades_more_than_mild_on_average():
    hr = textured(96)
    clean = d.resize(hr.astype(np.float32) / 255, 48, 48, "bicubic")

    def error(ranges):
        return np.mean([np.abs(d.degrade(hr, 2, ranges, np.random.default_rng([1, i])) / 255.0 - clean).mean()
                        for i in range(40)])

    assert error(d.STRONG) > 1.5 * error(d.MILD)


def test_jpeg_leaves_8x8_block_statistics():
    image = textured(128).astype(np.float32) / 255
    assert blockiness(d.to_uint8(image)) == pytest.approx(1.0, abs=0.15)
    assert blockiness(d.to_uint8(d.jpeg(image, 30))) > 1.4
    # A higher quality leaves weaker blocks.
    assert blockiness(d.to_uint8(d.jpeg(image, 30))) > blockiness(d.to_uint8(d.jpeg(image, 90)))


def test_gaussian_noise_raises_high_frequency_energy_by_two_sigma_squared():
    image = textured(192).astype(np.float32) / 255
    before = neighbour_difference_variance(image)
    for sigma in (5.0, 15.0):
        noisy = d.add_gaussian_noise(image, sigma, np.random.default_rng(0))
        # The difference of two pixels carries two independent noise samples.
        added = neighbour_difference_variance(noisy) - before
        assert added == pytest.approx(2 * (sigma / 255) ** 2, rel=0.05)


def test_gray_noise_is_the_same_on_every_channel():
    image = np.full((64, 64, 3), 0.5, np.float32)
    noisy = d.add_gaussian_noise(image, 10.0, np.random.default_rng(0), gray=True)
    np.testing.assert_allclose(noisy[..., 0], noisy[..., 1])
    assert noisy[..., 0].std() == pytest.approx(10 / 255, rel=0.05)


def test_poisson_noise_variance_follows_the_signal():
    peak = 200.0
    for level in (0.2, 0.8):
        image = np.full((128, 128, 3), level, np.float32)
        noisy = d.add_poisson_noise(image, peak, np.random.default_rng(0))
        # Shot noise: variance = mean / peak in [0, 1] units.
        assert noisy.var() == pytest.approx(level / peak, rel=0.08)


def test_kernels_are_normalised_and_shaped_as_asked():
    iso = d.gaussian_kernel(21, 2.0)
    assert iso.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(iso, iso.T, atol=1e-7)
    aniso = d.gaussian_kernel(21, 3.0, 1.0, theta=0.0)
    grid = np.arange(-10, 11)
    var_x = (aniso.sum(axis=0) * grid ** 2).sum()
    var_y = (aniso.sum(axis=1) * grid ** 2).sum()
    assert var_x == pytest.approx(9.0, rel=0.05) and var_y == pytest.approx(1.0, rel=0.05)
    # A generalized Gaussian with beta > 1 is flatter at the centre than the Gaussian.
    flat = d.gaussian_kernel(21, 2.0, beta=3.0)
    assert flat[10, 10] / flat[10, 11] < iso[10, 10] / iso[10, 11]
    plateau = d.gaussian_kernel(21, 2.0, beta=2.0, plateau=True)
    assert plateau.sum() == pytest.approx(1.0, abs=1e-6) and plateau[10, 10] == plateau.max()


def test_sinc_kernel_is_a_low_pass_with_its_cutoff():
    kernel = d.sinc_kernel(21, math.pi / 3)
    response = np.abs(np.fft.fft2(kernel, (256, 256)))
    frequencies = np.fft.fftfreq(256) * 2 * math.pi  # radians per pixel
    fy, fx = np.meshgrid(frequencies, frequencies, indexing="ij")
    radius = np.hypot(fx, fy)
    assert response[radius < math.pi / 6].min() > 0.85
    assert response[radius > math.pi / 2].max() < 0.15


def test_blur_lowers_and_keeps_flat_regions():
    image = textured(64).astype(np.float32) / 255
    blurred = d.blur(image, d.gaussian_kernel(9, 1.5))
    assert blurred.shape == image.shape
    assert neighbour_difference_variance(blurred) < 0.5 * neighbour_difference_variance(image)
    flat = np.full((32, 32, 3), 0.4, np.float32)
    np.testing.assert_allclose(d.blur(flat, d.random_kernel(np.random.default_rng(0), d.STRONG, (0.5, 2))),
                               flat, atol=1e-5)


def test_presets_are_seeded_per_image_and_clean_is_the_identity():
    lr = textured(48)
    np.testing.assert_array_equal(d.apply_preset(lr, "clean", 0, 0), lr)
    a = d.apply_preset(lr, "realistic", 0, 3)
    np.testing.assert_array_equal(a, d.apply_preset(lr, "realistic", 0, 3))
    assert not np.array_equal(a, d.apply_preset(lr, "realistic", 0, 4))
    assert blockiness(d.apply_preset(textured(128), "jpeg30", 0, 0)) > 1.4
    grey = lr[..., 0]
    assert d.apply_preset(grey, "jpeg50", 0, 0).shape == grey.shape
    with pytest.raises(ValueError, match="unknown degradation preset"):
        d.apply_preset(lr, "jpeg101", 0, 0)
    with pytest.raises(ValueError, match="unknown degradation preset"):
        d.apply_preset(lr, "sharpen2", 0, 0)
    # Any quality or sigma on demand, the same as the named ones.
    np.testing.assert_array_equal(d.apply_preset(lr, "jpeg50", 0, 1), d.preset("jpeg50").apply(lr, np.random.default_rng([0, 1])))
    assert blockiness(d.apply_preset(textured(128), "jpeg35", 0, 0)) > 1.4
    assert d.preset("noise7").noise_sigma == (7.0, 7.0)
