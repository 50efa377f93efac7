"""Degradation estimates: JPEG quality from real Pillow files, blockiness and noise on a natural-like image."""

import dataclasses
import io
import math

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from sr_batch.estimates import (
    Estimates,
    blockiness,
    estimate,
    jpeg_quality_from_tables,
    jpeg_quality_of,
    noise_sigma,
    sample_tiles,
)
from sr_batch import estimates
from sr_batch.quality import rgb_to_y


def natural_image(height: int, width: int, seed: int = 0, texture: float = 4.0) -> np.ndarray:
    """A photo-like uint8 RGB image: dead leaves (occluding disks, p(r) ~ r^-3), shading, grain.

    Disks have soft (anti-aliased) edges and muted colours; a smooth shading spans the
    image; band-limited grain of `texture` levels covers about half of it, in patches.
    """
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3))
    image[:] = rng.uniform(60, 200, 3)
    r_min, r_max = 3.0, max(height, width) / 3
    u = rng.uniform(size=height * width // 60)  # about 3x coverage of the area
    radii = 1 / np.sqrt((1 - u) / r_min**2 + u / r_max**2)  # inverse CDF of r^-3 on [r_min, r_max]
    for r in radii:
        cy, cx = rng.uniform(-r, height + r), rng.uniform(-r, width + r)
        y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, height)
        x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, width)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        alpha = np.clip(r - np.hypot(yy - cy, xx - cx) + 0.5, 0, 1)[..., None]
        colour = np.clip(rng.uniform(50, 200) + rng.normal(0, 20, 3), 30, 225)
        image[y0:y1, x0:x1] += alpha * (colour - image[y0:y1, x0:x1])
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    image *= (1 + 0.15 * np.sin(2.1 * xx + 0.7) * np.cos(1.7 * yy + 0.3))[..., None]
    grain = ndimage.gaussian_filter(rng.normal(size=(height, width)), 1.5)
    field = ndimage.gaussian_filter(rng.normal(size=(height, width)), 16)
    patches = np.clip(2 * field / field.std() - 0.5, 0, 1)
    image += (texture * grain / grain.std() * patches)[..., None]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def jpeg_bytes(array: np.ndarray, quality: int | None, **options) -> bytes:
    buffer = io.BytesIO()
    if quality is not None:
        options["quality"] = quality
    Image.fromarray(array).save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def add_noise(image: np.ndarray, sigma: float, seed: int, grey: bool = False) -> np.ndarray:
    """uint8 image plus N(0, sigma) in 8-bit levels, the same on every channel when grey, rounded."""
    rng = np.random.default_rng(seed)
    shape = image.shape[:2] + (1,) * (image.ndim - 2) if grey else image.shape
    return np.clip(np.rint(image + rng.normal(0.0, sigma, shape)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photo():
    return natural_image(384, 512, seed=1)


# --- JPEG header -------------------------------------------------------------------------


def zigzag_positions() -> list[int]:
    """Natural (row-major) position of each zigzag index of an 8x8 block (T.81 figure 5)."""
    positions = []
    for diagonal in range(15):
        rows = range(max(0, diagonal - 7), min(diagonal, 7) + 1)
        # Even diagonals run up and to the right (row falling), odd ones down and to the left.
        for row in (reversed(rows) if diagonal % 2 == 0 else rows):
            positions.append(row * 8 + diagonal - row)
    return positions


def file_tables(data: bytes) -> dict[int, list[int]]:
    """Quantization tables as the DQT segments of a baseline JPEG store them: zigzag order."""
    tables, at = {}, 2  # after SOI
    while data[at + 1] != 0xDA:  # up to start of scan
        marker, length = data[at + 1], int.from_bytes(data[at + 2:at + 4], "big")
        payload = data[at + 4:at + 2 + length]
        while marker == 0xDB and payload:
            precision, index = payload[0] >> 4, payload[0] & 15
            size = 64 * (precision + 1)
            entries = payload[1:1 + size]
            tables[index] = [int.from_bytes(entries[i:i + precision + 1], "big")
                             for i in range(0, size, precision + 1)]
            payload = payload[1 + size:]
        at += 2 + length
    return tables


def test_pillow_gives_quantization_tables_in_natural_order(photo):
    data = jpeg_bytes(photo, 30)
    zigzag = file_tables(data)
    natural = {}
    for index, table in zigzag.items():
        entries = [0] * 64
        for k, position in enumerate(zigzag_positions()):
            entries[position] = table[k]
        natural[index] = entries
    pillow = {index: list(table) for index, table in Image.open(io.BytesIO(data)).quantization.items()}
    assert sorted(zigzag) == [0, 1]
    assert pillow == natural
    assert pillow != zigzag


@pytest.mark.parametrize("quality", [10, 20, 30, 50, 75, 90, 95])
@pytest.mark.parametrize("kind", ["rgb 4:2:0", "rgb 4:4:4", "grey"])
def test_jpeg_quality_within_5_of_the_quality_pillow_wrote(photo, quality, kind):
    if kind == "grey":
        data = jpeg_bytes(photo[..., 1], quality)
    else:
        data = jpeg_bytes(photo, quality, subsampling=0 if kind == "rgb 4:4:4" else 2)
    tables = Image.open(io.BytesIO(data)).quantization
    assert len(tables) == (1 if kind == "grey" else 2)
    estimated, standard = jpeg_quality_from_tables(tables)
    assert abs(estimated - quality) <= 5
    assert standard
    assert jpeg_quality_of(data) == estimated


def test_every_pillow_quality_is_recovered_exactly():
    tiny = np.zeros((8, 8, 3), np.uint8)
    for quality in range(1, 101):
        estimated, standard = jpeg_quality_from_tables(
            Image.open(io.BytesIO(jpeg_bytes(tiny, quality))).quantization)
        assert (estimated, standard) == (quality, True)


def test_tables_scaled_outside_pillow_are_standard():
    # Quality 50 is libjpeg's scale 100: Pillow writes Annex K luminance as it is.
    annex_k = Image.open(io.BytesIO(jpeg_bytes(np.zeros((8, 8), np.uint8), 50))).quantization[0]
    q60 = Image.open(io.BytesIO(jpeg_bytes(np.zeros((8, 8), np.uint8), 60))).quantization[0]
    # Quality 60 (scale 80) rounded up instead of libjpeg's half-up: off by one level at most.
    rounded_up = [max(1, math.ceil(entry * 0.8)) for entry in annex_k]
    assert rounded_up != list(q60)
    estimated, standard = jpeg_quality_from_tables({0: rounded_up})
    assert abs(estimated - 60) <= 1 and standard
    # Quality 5 (scale 1000) without forced baseline: 16-bit entries above 255, as `cjpeg` writes.
    sixteen_bit = [(entry * 1000 + 50) // 100 for entry in annex_k]
    assert max(sixteen_bit) > 255
    assert jpeg_quality_from_tables({0: sixteen_bit}) == (5.0, True)


def test_custom_tables_are_flagged_non_standard(photo):
    flat = [12] * 64
    annex_k = list(Image.open(io.BytesIO(jpeg_bytes(photo, 50))).quantization[0])
    # The standard luminance table with its high frequencies halved: a "sharper" custom table.
    sharpened = [entry if position % 8 + position // 8 < 6 else entry // 2
                 for position, entry in enumerate(annex_k)]
    for tables in ({0: flat, 1: flat}, {0: sharpened, 1: sharpened}):
        # No quality: Pillow (libjpeg) would scale the custom tables by it.
        data = jpeg_bytes(photo, None, qtables=tables)
        read = Image.open(io.BytesIO(data)).quantization
        assert [list(read[i]) for i in sorted(read)] == [tables[i] for i in sorted(tables)]
        estimated, standard = jpeg_quality_from_tables(read)
        assert 1 <= estimated <= 100
        assert not standard
        assert estimate(data, decode(data)).jpeg_standard_tables is False


def test_non_jpeg_bytes_give_none(photo):
    webp = io.BytesIO()
    Image.fromarray(photo).save(webp, format="WEBP", quality=50)
    for data in (png_bytes(photo), webp.getvalue(), b"not an image", b"", jpeg_bytes(photo, 50)[:2]):
        assert jpeg_quality_of(data) is None
    estimates = estimate(png_bytes(photo), photo)
    assert (estimates.jpeg_quality, estimates.jpeg_standard_tables) == (None, None)


# --- blockiness --------------------------------------------------------------------------


def test_jpeg_decodes_saved_as_png_are_blocky_and_the_clean_image_is_not(photo):
    clean = blockiness(rgb_to_y(photo))
    assert 1.0 <= clean < 1.05
    assert blockiness(rgb_to_y(photo[3:, 5:])) < 1.05  # a crop shifts no grid that is not there
    assert blockiness(rgb_to_y(add_noise(photo, 3, seed=2))) < 1.05
    for quality in (30, 50):
        decoded = decode(png_bytes(decode(jpeg_bytes(photo, quality))))
        assert blockiness(rgb_to_y(decoded)) > 1.4
        # A crop puts the block grid at another offset on each axis.
        assert blockiness(rgb_to_y(decoded[3:, 5:])) > 1.4
    assert blockiness(rgb_to_y(decode(jpeg_bytes(photo, 75)))) > 1.2


def test_blockiness_does_not_take_stripes_on_one_axis_for_blocks(photo):
    stripes = photo.astype(np.int16)
    stripes[:, (np.arange(photo.shape[1]) // 8) % 2 == 1] += 20  # 8-px bars: steps every 8 px across
    assert blockiness(rgb_to_y(np.clip(stripes, 0, 255).astype(np.uint8))) < 1.05


def test_blockiness_of_flat_and_tiny_planes():
    assert blockiness(np.full((64, 64), 100.0)) == 1.0
    assert math.isnan(blockiness(np.zeros((12, 64))))
    with pytest.raises(ValueError):
        blockiness(np.zeros((64, 64, 3)))


# --- noise -------------------------------------------------------------------------------


def test_noise_of_the_clean_image_is_small(photo):
    assert noise_sigma(photo) < 1.0


@pytest.mark.parametrize("sigma", [2, 5, 10, 20])
def test_noise_sigma_within_15_percent(photo, sigma):
    assert noise_sigma(add_noise(photo, sigma, seed=sigma)) == pytest.approx(sigma, rel=0.15)


@pytest.mark.parametrize("sigma", [0, 5, 10])
def test_grey_and_rgb_noise_read_the_same(photo, sigma):
    grey_image = np.asarray(Image.fromarray(photo).convert("L"))
    rgb_colour_noise = noise_sigma(add_noise(photo, sigma, seed=3))
    rgb_grey_noise = noise_sigma(add_noise(photo, sigma, seed=3, grey=True))
    grey = noise_sigma(add_noise(grey_image, sigma, seed=3))
    grey_one_channel = noise_sigma(add_noise(grey_image, sigma, seed=3)[..., None])
    assert grey == grey_one_channel
    if sigma == 0:
        assert max(rgb_colour_noise, rgb_grey_noise, grey) < 1.0
    else:
        assert rgb_colour_noise == pytest.approx(grey, rel=0.1)
        assert rgb_grey_noise == pytest.approx(grey, rel=0.1)


def test_uint16_and_alpha_read_like_uint8(photo):
    noisy = add_noise(photo, 5, seed=4)
    wide = noisy.astype(np.uint16) * 257  # the same picture in 16 bits
    assert noise_sigma(wide) == pytest.approx(noise_sigma(noisy), rel=1e-4)
    # 16-bit noise below one 8-bit level is seen, not rounded away.
    fine = np.clip(photo.astype(np.float64) * 257 + np.random.default_rng(5).normal(0, 0.5 * 257, photo.shape),
                   0, 65535).astype(np.uint16)
    assert noise_sigma(fine) == pytest.approx(0.5, abs=0.25)
    alpha = np.random.default_rng(6).integers(0, 256, photo.shape[:2] + (1,), dtype=np.uint8)
    assert noise_sigma(np.concatenate([noisy, alpha], axis=2)) == noise_sigma(noisy)
    assert noise_sigma(noisy.astype(np.float64) / 255) == pytest.approx(noise_sigma(noisy), rel=1e-4)


# --- estimate ----------------------------------------------------------------------------


def test_estimate_of_a_noisy_jpeg(photo):
    data = jpeg_bytes(add_noise(photo, 5, seed=7), 40)
    estimates = estimate(data, decode(data))
    assert estimates.jpeg_quality == 40.0
    assert estimates.jpeg_standard_tables is True
    assert estimates.blockiness > 1.4
    with pytest.raises(dataclasses.FrozenInstanceError):
        estimates.noise_sigma = 0.0
    clean = estimate(png_bytes(photo), photo)
    assert clean == Estimates(None, None, clean.blockiness, clean.noise_sigma, clean.blur)
    assert clean.blockiness < 1.05 and clean.noise_sigma < 1.0


def test_estimate_of_a_large_image_looks_at_block_aligned_tiles(photo):
    # 1.4 MP: above the 1 MP that is read whole. Tiles of the photo, then a JPEG of it all.
    large = np.tile(photo, (3, 3, 1))[:1000, :1400]
    tiles = sample_tiles(large)
    assert 12 <= len(tiles) <= 16 and tiles.shape[1:] == (256, 256, 3)
    # Every tile starts at a multiple of 8 px: the tiles of a coordinate picture say where.
    y, x = np.mgrid[0:1000, 0:1400]
    where = sample_tiles(np.stack([y % 8, x % 8], axis=2))
    assert not where[:, 0, 0].any()
    noisy = add_noise(large, 10, seed=8)
    data = jpeg_bytes(noisy, 50)
    estimates = estimate(data, decode(data))
    assert estimates.jpeg_quality == 50.0
    assert estimates.blockiness > 1.4
    # No header to read (not a JPEG): only the pixel estimates speak.
    assert estimate(b"", noisy).noise_sigma == pytest.approx(10, rel=0.15)
    assert estimate(b"", large).blockiness < 1.05


def test_estimate_of_a_tiny_image_is_nan_not_an_error():
    tiny = np.full((4, 5, 3), 128, np.uint8)
    estimates = estimate(png_bytes(tiny), tiny)
    assert math.isnan(estimates.blockiness) and math.isnan(estimates.noise_sigma)


def test_blur_grows_with_a_gaussian_blur_and_is_nan_when_it_cannot_be_read(photo):
    luma = rgb_to_y(photo).astype(np.float32)
    sharp = estimates.blur(luma)
    readings = [estimates.blur(ndimage.gaussian_filter(luma, sigma)) for sigma in (0.8, 1.5, 3.0)]
    assert 0.0 < sharp < readings[0] < readings[1] < readings[2] < 1.0
    assert math.isnan(estimates.blur(np.full((64, 64), 128, np.float32)))  # flat: no variation
    assert math.isnan(estimates.blur(luma[:8, :8]))  # smaller than the low-pass window
    assert estimate(png_bytes(photo), photo).blur == pytest.approx(sharp, abs=1e-6)
