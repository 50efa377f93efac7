"""NIQE: rises with blur, noise and JPEG on a natural-like image; the vectorised fits match a
per-patch reference; the shipped pristine model loads, and a malformed one is a config error."""

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage, special

from sr_batch.errors import ConfigError
from sr_batch.niqe import (
    DEFAULT_PARAMS,
    NiqeParams,
    centred_luma,
    distance,
    load_params,
    niqe,
    patch_features,
)
from sr_batch.quality import rgb_to_y
from sr_batch.resample import resize_bicubic

ROOT = Path(__file__).resolve().parents[1]


def dead_leaves(size: int, seed: int = 0, texture: float = 0.3) -> np.ndarray:
    """A natural-like uint8 RGB image: occluding disks, radii from a power law, shaded, with 1/f texture.

    Disks with density ~ r^-3 (scale invariant, as in natural scenes) fall until the
    canvas is covered, each a random colour with a slight linear shading; a 1/f noise
    field modulates them (surfaces are not flat); drawn at twice the size and shrunk,
    so edges are antialiased like a camera's.
    """
    rng = np.random.default_rng(seed)
    n = 2 * size
    r_min, r_max = 3.0, n / 4
    canvas = np.zeros((n, n, 3), np.float32)
    empty = np.ones((n, n), bool)
    uncovered = n * n
    while uncovered:
        radius = 1 / math.sqrt(1 / r_min**2 - rng.random() * (1 / r_min**2 - 1 / r_max**2))
        cy, cx = rng.uniform(-radius, n + radius, 2)
        colour = rng.uniform(0.1, 0.9, 3).astype(np.float32)
        slope_y, slope_x = rng.normal(0, 0.3, 2) / radius
        y0, y1 = max(int(cy - radius), 0), min(int(cy + radius) + 1, n)
        x0, x1 = max(int(cx - radius), 0), min(int(cx + radius) + 1, n)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = (np.arange(y0, y1, dtype=np.float32) - cy)[:, None]
        dx = (np.arange(x0, x1, dtype=np.float32) - cx)[None, :]
        inside = (dy * dy + dx * dx < radius * radius) & empty[y0:y1, x0:x1]
        shade = 1 + slope_y * dy + slope_x * dx
        canvas[y0:y1, x0:x1][inside] = (colour * shade[..., None])[inside]
        empty[y0:y1, x0:x1][inside] = False
        uncovered -= int(inside.sum())
    canvas *= (1 + texture * pink_noise(n, rng))[..., None]
    shrunk = resize_bicubic(np.clip(canvas, 0, 1), (size, size)) * 255
    return np.clip(np.rint(shrunk), 0, 255).astype(np.uint8)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """An n x n field with a 1/f amplitude spectrum, unit standard deviation."""
    freq = np.fft.fftfreq(n)
    radius = np.hypot(freq[:, None], freq[None, :])
    radius[0, 0] = 1
    field = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) / radius).real
    return (field / field.std()).astype(np.float32)


def blur(image, sigma):
    blurred = ndimage.gaussian_filter(image.astype(np.float64), (sigma, sigma, 0))
    return np.clip(np.rint(blurred), 0, 255).astype(np.uint8)


def add_noise(image, sigma):
    noise = np.random.default_rng(1).normal(0, sigma, image.shape)
    return np.clip(np.rint(image + noise), 0, 255).astype(np.uint8)


def jpeg(image, quality):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


@pytest.fixture(scope="module")
def leaves():
    return dead_leaves(384)


@pytest.mark.parametrize("distort, levels", [
    (blur, [0.5, 1, 2, 3]),
    (add_noise, [5, 10, 20, 40]),
    (jpeg, [90, 50, 20, 10]),
], ids=["blur", "noise", "jpeg"])
def test_niqe_rises_with_distortion(leaves, distort, levels):
    scores = [niqe(leaves)] + [niqe(distort(leaves, level)) for level in levels]
    assert all(np.isfinite(scores)), scores
    assert np.all(np.diff(scores) > 0), f"{distort.__name__} {levels}: {np.round(scores, 2)}"


def test_clean_leaves_score_like_a_natural_image(leaves):
    # The shipped model's own training photographs score about 2-6; a natural-like image should too.
    assert 1 < niqe(leaves) < 7


# --- the vectorised fits against a plain per-patch reference ----------------------------


def reference_features(mscn: np.ndarray) -> list[float]:
    """The 18 features of one patch of MSCN coefficients, as the MATLAB code computes them one by one."""
    shapes = np.round(np.arange(200, 10001) * 1e-3, 3)
    g1, g2, g3 = (special.gamma(k / shapes) for k in (1, 2, 3))
    values = mscn.ravel()
    rho = np.mean(values**2) / np.mean(np.abs(values)) ** 2
    features = [shapes[np.argmin(np.abs(rho - g1 * g3 / g2**2))], np.mean(values**2)]
    pairs = [mscn[:, 1:] * mscn[:, :-1], mscn[1:] * mscn[:-1], mscn[1:, 1:] * mscn[:-1, :-1],
             mscn[1:, :-1] * mscn[:-1, 1:]]
    for pair in pairs:
        p = pair.ravel()
        left = math.sqrt(np.mean(p[p < 0] ** 2))
        right = math.sqrt(np.mean(p[p > 0] ** 2))
        ratio = left / right
        r_hat = np.mean(np.abs(p)) ** 2 / np.mean(p**2)
        r_norm = r_hat * (ratio**3 + 1) * (ratio + 1) / (ratio**2 + 1) ** 2
        best = np.argmin((g2**2 / (g1 * g3) - r_norm) ** 2)
        alpha = shapes[best]
        mean = (right - left) * g2[best] / g1[best] * math.sqrt(g1[best] / g3[best])
        features += [alpha, mean, left**2, right**2]
    return features


def reference_mscn(luma: np.ndarray) -> np.ndarray:
    """MSCN coefficients with a full 7x7 window and replicated edges (MATLAB imfilter 'replicate')."""
    taps = np.exp(-np.arange(-3, 4) ** 2 / (2 * (7 / 6) ** 2))
    window = np.outer(taps, taps) / np.outer(taps, taps).sum()
    mu = ndimage.correlate(luma, window, mode="nearest")
    sigma = np.sqrt(np.abs(ndimage.correlate(luma * luma, window, mode="nearest") - mu * mu))
    return (luma - mu) / (sigma + 1)


def test_features_match_per_patch_reference(leaves):
    image = leaves[:192, :288]
    features, sharpness = patch_features(image, np.float64)
    assert features.shape == (6, 36) and sharpness.shape == (6,)

    luma = rgb_to_y(image) - 125.5
    half = resize_bicubic(luma.astype(np.float32), (144, 96)).astype(np.float64)
    for index in (0, 4):
        row, col = divmod(index, 3)
        expected = []
        for scaled, size in ((luma, 96), (half, 48)):
            mscn = reference_mscn(scaled)[row * size : (row + 1) * size, col * size : (col + 1) * size]
            expected += reference_features(mscn)
        # Shapes are grid points (equal, or a neighbour where a ratio falls near a midpoint).
        np.testing.assert_allclose(features[index], expected, rtol=1e-6, atol=1.5e-3)
        taps = np.exp(-np.arange(-3, 4) ** 2 / (2 * (7 / 6) ** 2))
        window = np.outer(taps, taps) / np.outer(taps, taps).sum()
        mu = ndimage.correlate(luma, window, mode="nearest")
        sigma = np.sqrt(np.abs(ndimage.correlate(luma * luma, window, mode="nearest") - mu * mu))
        assert sharpness[index] == pytest.approx(sigma[row * 96 : (row + 1) * 96, col * 96 : (col + 1) * 96].mean())


def test_float32_scoring_features_match_float64(leaves):
    single, _ = patch_features(leaves, np.float32)
    double, _ = patch_features(leaves, np.float64)
    np.testing.assert_allclose(single, double, rtol=1e-3, atol=2e-3)


def test_luma_is_rgb_to_y_centred(leaves):
    np.testing.assert_allclose(centred_luma(leaves), rgb_to_y(leaves) - 125.5, atol=1e-4)


def test_distance_is_zero_to_own_model_and_follows_the_formula():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 36)) @ rng.normal(size=(36, 36))
    own = NiqeParams(mu=features.mean(axis=0), cov=np.cov(features, rowvar=False), provenance={})
    assert distance(own, features) == pytest.approx(0, abs=1e-9)

    shifted = features + 3.0
    delta = own.mu - shifted.mean(axis=0)
    pooled = (own.cov + np.cov(shifted, rowvar=False)) / 2
    assert distance(own, shifted) == pytest.approx(math.sqrt(delta @ np.linalg.pinv(pooled) @ delta))


# --- inputs: layouts, bit depths, small and flat images ---------------------------------


def test_layouts_and_bit_depths_give_the_same_score(leaves):
    rgb = leaves[:200, :300]
    grey = rgb[:, :, 1]
    grey_rgb = np.repeat(grey[:, :, None], 3, axis=2)
    alpha = np.random.default_rng(0).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    cases = {
        "grey HxW": (grey, grey_rgb),
        "grey HxWx1": (grey[:, :, None], grey_rgb),
        "RGBA": (np.dstack([rgb, alpha]), rgb),
        "uint16": (rgb.astype(np.uint16) * 257, rgb),
        "float": (rgb.astype(np.float32) / 255, rgb),
    }
    for name, (variant, reference) in cases.items():
        assert niqe(variant) == pytest.approx(niqe(reference), rel=1e-3), name


def test_image_smaller_than_a_patch_is_nan():
    assert math.isnan(niqe(dead_leaves(48)[:40, :40]))
    assert math.isnan(niqe(np.zeros((40, 400), np.uint8)))


def test_unsupported_inputs_raise_even_when_small():
    with pytest.raises(TypeError, match="dtype"):
        niqe(np.zeros((40, 40, 3), np.int32))
    with pytest.raises(ValueError, match="HxWx4"):
        niqe(np.zeros((200, 200, 2), np.uint8))


def test_flat_image_is_nan_and_one_patch_is_enough(leaves):
    assert math.isnan(niqe(np.full((256, 256, 3), 128, np.uint8)))
    assert math.isnan(niqe(np.zeros((100, 100), np.uint16)))
    assert np.isfinite(niqe(leaves[:100, :120]))  # one patch: its covariance is zero


def test_half_flat_image_scores_on_its_textured_patches(leaves):
    image = leaves.copy()
    image[:, :192] = 90
    features, _ = patch_features(image)
    flat = np.isnan(features).any(axis=1).reshape(4, 4)
    # The second column of patches touches the texture through the windows and the downscale.
    assert flat[:, 0].all() and not flat[:, 2:].any()
    assert np.isfinite(niqe(image))


# --- the pristine model: the shipped file ------------------------------------------------


def test_shipped_params_load_with_shapes_and_provenance():
    params = load_params()
    assert params.mu.shape == (36,) and params.cov.shape == (36, 36)
    assert np.all(np.isfinite(params.mu)) and np.all(np.isfinite(params.cov))
    np.testing.assert_array_equal(params.cov, params.cov.T)
    eigenvalues = np.linalg.eigvalsh(params.cov)
    assert eigenvalues.min() >= -1e-12 * eigenvalues.max()
    provenance = params.provenance
    assert provenance["folders"] == ["datasets/T91/HR", "datasets/BSDS200/HR"]
    assert provenance["image_count"] == 291
    assert 0 < provenance["patch_count"] <= provenance["candidate_patch_count"]
    assert provenance["patch_size"] == 96 and provenance["sharpness_threshold"] == 0.75
    assert len(provenance["inputs_sha256"]) == 64
    assert len(provenance["features"]) == 36
    assert load_params(DEFAULT_PARAMS) is load_params()  # read once


def test_shipped_params_are_package_data():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"niqe_pristine.json"' in text


def test_malformed_params_file_is_a_config_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"mu": [0.0] * 35, "cov": [[0.0] * 36] * 36}))
    with pytest.raises(ConfigError, match="mu of 36"):
        load_params(path)
    path.write_text("not json")
    with pytest.raises(ConfigError, match="not a NIQE parameter file"):
        load_params(path)
