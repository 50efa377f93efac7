"""Quality metrics: known values of the SR convention (BT.601 Y, border shave, bicubic beside)."""

import math

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from sr_batch.quality import (
    grid_blockiness,
    no_reference_metrics,
    crop_to_multiple,
    gradient_energy_y,
    psnr,
    psnr_y,
    psnr_y_consistency,
    reference_metrics,
    rgb_to_y,
    sharpness_ratio,
    shave,
    ssim,
    ssim_y,
)
from sr_batch.resample import downscale_bicubic, resize_bicubic, upscale_bicubic

# Y spans 16..235, so a grey step of d / 219 in [0, 1] moves Y by exactly d.
Y_SPAN = 219.0


def make_smooth_rgb(height, width):
    """Return a smooth uint8 RGB image (low-frequency sinusoids), like a natural photo's large scale."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [
        0.5 + 0.4 * np.sin(x / 7.0) * np.cos(y / 9.0),
        0.5 + 0.4 * np.cos((x + y) / 11.0),
        0.5 + 0.3 * np.sin(y / 5.0),
    ]
    return np.rint(np.stack(channels, axis=-1) * 255).astype(np.uint8)


def naive_ssim(a, b, data_range=255.0):
    """SSIM with a full 2-D window per pixel: slow, obviously right, for cross-checking."""
    offsets = np.arange(11) - 5.0
    g = np.exp(-(offsets**2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    pa, pb = sliding_window_view(a, (11, 11)), sliding_window_view(b, (11, 11))
    mu_a = (pa * window).sum(axis=(-2, -1))
    mu_b = (pb * window).sum(axis=(-2, -1))
    var_a = ((pa - mu_a[..., None, None]) ** 2 * window).sum(axis=(-2, -1))
    var_b = ((pb - mu_b[..., None, None]) ** 2 * window).sum(axis=(-2, -1))
    cov = ((pa - mu_a[..., None, None]) * (pb - mu_b[..., None, None]) * window).sum(axis=(-2, -1))
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.mean()


def test_rgb_to_y_extremes_and_dtypes():
    white8 = np.full((2, 3, 3), 255, dtype=np.uint8)
    assert np.allclose(rgb_to_y(white8), 235.0)
    assert np.allclose(rgb_to_y(np.zeros((2, 3, 3), dtype=np.uint8)), 16.0)
    assert np.allclose(rgb_to_y(np.full((2, 3, 3), 65535, dtype=np.uint16)), 235.0)
    assert np.allclose(rgb_to_y(np.ones((2, 3, 3), dtype=np.float32)), 235.0)
    assert rgb_to_y(white8).dtype == np.float64 and rgb_to_y(white8).shape == (2, 3)


def test_rgb_to_y_weights_each_channel():
    for channel, weight in enumerate([65.481, 128.553, 24.966]):
        pure = np.zeros((1, 1, 3), dtype=np.float32)
        pure[..., channel] = 1.0
        assert rgb_to_y(pure)[0, 0] == pytest.approx(16.0 + weight)


def test_rgb_to_y_grey_and_alpha():
    grey = np.random.default_rng(0).integers(0, 256, (4, 5), dtype=np.uint8)
    as_rgb = np.repeat(grey[..., None], 3, axis=-1)
    np.testing.assert_allclose(rgb_to_y(grey), rgb_to_y(as_rgb))
    np.testing.assert_allclose(rgb_to_y(grey[..., None]), rgb_to_y(as_rgb))
    with_alpha = np.concatenate([as_rgb, np.zeros_like(grey)[..., None]], axis=-1)
    np.testing.assert_allclose(rgb_to_y(with_alpha), rgb_to_y(as_rgb))


def test_crop_to_multiple_and_shave():
    image = np.zeros((13, 30, 3))
    assert crop_to_multiple(image, 4).shape == (12, 28, 3)
    assert shave(image, 2).shape == (9, 26, 3)
    assert shave(image, 0) is image
    with pytest.raises(ValueError):
        shave(image, 7)


def test_identical_images_give_inf_psnr_and_unit_ssim():
    image = np.random.default_rng(1).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    assert psnr_y(image, image.copy(), border=2) == math.inf
    assert ssim_y(image, image.copy(), border=2) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("delta", [1.0, 4.0, 25.5])
def test_constant_offset_gives_known_psnr(delta):
    expected = 20 * math.log10(255.0 / delta)
    y = np.random.default_rng(2).uniform(16, 200, (16, 16))
    assert psnr(y + delta, y) == pytest.approx(expected, abs=1e-9)
    grey = np.random.default_rng(3).uniform(0.0, 0.8, (20, 24)).astype(np.float64)
    assert psnr_y(grey + delta / Y_SPAN, grey, border=0) == pytest.approx(expected, abs=1e-9)


def test_border_shave_changes_nothing_for_constant_error():
    grey = np.random.default_rng(4).uniform(0.0, 0.8, (30, 30))
    values = [psnr_y(grey + 3.0 / Y_SPAN, grey, border=b) for b in (0, 2, 4)]
    assert values == pytest.approx([values[0]] * 3, abs=1e-9)


def test_ssim_matches_a_direct_two_dimensional_window():
    rng = np.random.default_rng(5)
    a = rng.uniform(0, 255, (23, 17))
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    assert ssim(a, b) == pytest.approx(naive_ssim(a, b), abs=1e-12)
    assert 0 < ssim(a, b) < 1


def test_metrics_reject_mismatched_or_tiny_inputs():
    with pytest.raises(ValueError):
        psnr_y(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8), border=0)
    with pytest.raises(ValueError):
        ssim_y(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8), border=0)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((10, 30)), np.zeros((10, 30)))


def test_reference_metrics_on_a_smooth_image():
    scale = 4
    reference = make_smooth_rgb(50, 66)  # not a multiple of 4: cropped to 48x64
    lr = downscale_bicubic(crop_to_multiple(reference, scale), scale)
    output = upscale_bicubic(lr, scale)
    metrics = reference_metrics(output, lr, reference, scale)
    assert set(metrics) == {"psnr_y", "ssim_y", "psnr_y_bicubic", "ssim_y_bicubic"}
    assert math.isfinite(metrics["psnr_y_bicubic"]) and metrics["psnr_y_bicubic"] > 20
    # The output is bicubic itself, so it must score exactly like the baseline.
    assert metrics["psnr_y"] == metrics["psnr_y_bicubic"]
    assert metrics["ssim_y"] == metrics["ssim_y_bicubic"]
    assert 0 < metrics["ssim_y"] <= 1


def test_reference_metrics_rejects_wrong_reference_size():
    scale = 2
    reference = make_smooth_rgb(40, 40)
    lr = downscale_bicubic(reference, scale)
    output = upscale_bicubic(lr, scale)
    with pytest.raises(ValueError, match="reference is 46x40"):
        reference_metrics(output, lr, make_smooth_rgb(40, 46), scale)


def test_reference_metrics_at_any_output_size_need_the_reference_at_that_size():
    reference = make_smooth_rgb(60, 45)
    lr = downscale_bicubic(reference[:60, :44], 2)  # 22x30
    output = resize_bicubic(lr, (45, 60))  # an output 1.5x wider than... any size: 45x60
    metrics = reference_metrics(output, lr, reference, 2)
    assert metrics["psnr_y"] == pytest.approx(metrics["psnr_y_bicubic"])  # the output is bicubic
    with pytest.raises(ValueError, match="must have the output's size"):
        reference_metrics(output, lr, make_smooth_rgb(50, 45), 2)


def test_psnr_y_consistency_of_bicubic_round_trip_is_high():
    lr = make_smooth_rgb(24, 32)
    output = upscale_bicubic(lr, 2)
    assert psnr_y_consistency(output, lr) > 35
    assert psnr_y_consistency(output.astype(np.float32) / 255, lr) > 35
    # Any output size (--outscale 1.5): shrunk to the input's size before comparing.
    assert psnr_y_consistency(resize_bicubic(lr, (48, 36)), lr) > 35
    assert psnr_y_consistency(output[::-1], lr) < 25


def test_sharpness_ratio_of_bicubic_is_one_and_sharpening_raises_it():
    scale = 3
    lr = make_smooth_rgb(20, 24)
    output = upscale_bicubic(lr, scale)
    assert sharpness_ratio(output, lr) == pytest.approx(1.0, abs=1e-9)
    assert sharpness_ratio(resize_bicubic(lr, (30, 25)), lr) == pytest.approx(1.0, abs=1e-9)
    # Unsharp mask: add back the difference from a 3x3 box blur, doubling fine detail.
    values = output.astype(np.float32) / 255
    padded = np.pad(values, ((1, 1), (1, 1), (0, 0)), mode="edge")
    height, width = values.shape[:2]
    blurred = sum(padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)) / 9
    sharpened = values + 1.0 * (values - blurred)
    assert sharpness_ratio(sharpened, lr) > 1.0


def float64_gradient_energy(luma):
    """The definition, on a whole float64 luma plane."""
    energy = 0.0
    if luma.shape[1] > 1:
        energy += np.mean(np.diff(luma, axis=1) ** 2)
    if luma.shape[0] > 1:
        energy += np.mean(np.diff(luma, axis=0) ** 2)
    return energy


@pytest.mark.parametrize("height, width", [(150, 97), (64, 1), (1, 70), (129, 2)])
@pytest.mark.parametrize("kind", ["uint8", "uint16", "float32", "grey", "rgba"])
def test_gradient_energy_in_strips_matches_the_float64_definition(height, width, kind):
    rng = np.random.default_rng(height * width)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = {
        "uint8": rgb,
        "uint16": rgb.astype(np.uint16) * 257 + rng.integers(0, 257, rgb.shape).astype(np.uint16),
        "float32": rgb.astype(np.float32) / 255,
        "grey": rgb[..., 0],
        "rgba": np.dstack([rgb, rng.integers(0, 256, (height, width), dtype=np.uint8)]),
    }[kind]

    expected = float64_gradient_energy(rgb_to_y(image))

    assert expected > 0
    assert gradient_energy_y(image) == pytest.approx(expected, rel=1e-5)


def test_sharpness_ratio_of_flat_input_is_nan():
    lr = np.full((8, 8, 3), 128, dtype=np.uint8)
    assert math.isnan(sharpness_ratio(upscale_bicubic(lr, 2), lr))


@pytest.mark.parametrize("size", [(48, 64), (36, 48), (61, 47)])  # x2, x1.5, an odd size
def test_no_reference_metrics_on_luma_match_the_rgb_definitions(size):
    """The job's luma-first metrics against the RGB definitions: equal where nothing is rounded
    (float images), and within the 8-bit rounding of resized RGB for uint8 images."""
    rng = np.random.default_rng(size[0])  # texture: PSNRs of a photo's, not of a smooth ramp's
    lr = np.clip(make_smooth_rgb(24, 32) + rng.normal(0, 12, (24, 32, 3)), 0, 255).astype(np.uint8)
    height, width = size
    lr_float = lr.astype(np.float32) / 255
    for output, source in ((resize_bicubic(lr_float, (width, height)) * 1.1 - 0.05, lr_float),
                           (resize_bicubic(lr, (width, height)), lr)):
        consistency, sharpness = no_reference_metrics(output, source)
        rounded = output.dtype == np.uint8
        if rounded:  # the RGB path rounds resized RGB to 8 bits (about 0.3 levels of noise)
            assert consistency == pytest.approx(psnr_y_consistency(output, source), abs=0.3)
            assert sharpness == pytest.approx(sharpness_ratio(output, source), rel=0.03)
        else:
            assert consistency == pytest.approx(psnr_y_consistency(output, source), abs=1e-3)
            assert sharpness == pytest.approx(sharpness_ratio(output, source), rel=1e-4)
    # The bicubic upscale in float is the baseline itself; flipped content is inconsistent.
    bicubic = resize_bicubic(lr.astype(np.float32), (64, 48)) / 255
    assert no_reference_metrics(bicubic, lr)[1] == pytest.approx(1.0, abs=1e-5)
    assert no_reference_metrics(resize_bicubic(lr, (64, 48))[::-1], lr)[0] < 25
    flat = np.full((8, 8, 3), 128, dtype=np.uint8)
    assert math.isnan(no_reference_metrics(upscale_bicubic(flat, 2), flat)[1])


def test_no_reference_metrics_baseline_in_bands_is_the_whole_resize():
    """The bicubic baseline made band by band has the gradient energy of the whole resize."""
    rng = np.random.default_rng(3)
    lr = rng.integers(0, 256, (150, 70, 3), dtype=np.uint8)  # several bands at x2 and x3
    for scale in (2, 3):
        output = upscale_bicubic(lr.astype(np.float32) / 255, scale)
        assert no_reference_metrics(output, lr)[1] == pytest.approx(1.0, abs=1e-4)


def test_grid_blockiness_sees_the_inputs_jpeg_grid_in_an_upscale():
    """About 1 for an upscale of a clean input, well above for a JPEG q30 input's, at x2 and x4;
    the interpolator's own pattern of `scale` phases does not count as blocking."""
    import io

    from PIL import Image

    rng = np.random.default_rng(7)
    lr = np.clip(make_smooth_rgb(96, 128) + rng.normal(0, 6, (96, 128, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(lr).save(buffer, "JPEG", quality=30)
    jpeg = np.asarray(Image.open(buffer))
    for scale in (2, 4):
        clean = grid_blockiness(upscale_bicubic(lr, scale), scale)
        blocky = grid_blockiness(upscale_bicubic(jpeg, scale), scale)
        assert 0.9 < clean < 1.1
        assert blocky > 1.25
    # Steps only on the 8 * scale grid: all blocking; too small to hold a border: nan.
    grid = np.zeros((64, 64), np.uint8)
    grid[:, 16:32] = grid[:, 48:] = 40
    grid[:, 8:16] += 1  # a weak step off the grid
    assert grid_blockiness(grid, 2) > 10
    assert math.isnan(grid_blockiness(np.zeros((8, 8), np.uint8), 2))
