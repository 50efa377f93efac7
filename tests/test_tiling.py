"""Tiling: plans partition the image, and tiled output equals whole-image output."""

import numpy as np
import pytest

from sr_batch.tiling import (
    TilePlan,
    extract_tiles,
    plan_tiles,
    receptive_radius_from_impulse,
    stitch_tiles,
    upscale_whole,
)

SIZES = [(1, 1), (1, 7), (2, 3), (5, 5), (13, 29), (64, 64), (97, 101)]
# (tile_size, overlap): tiny cores, no overlap, one-pixel core, and a tile larger than any image.
TILINGS = [(8, 2), (16, 4), (5, 0), (3, 1), (128, 10)]


def make_image(height, width, channels=3, dtype=np.uint8, seed=0):
    """Return a random test image."""
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        return rng.random((height, width, channels), dtype=np.float32)
    return rng.integers(0, np.iinfo(dtype).max, (height, width, channels), dtype=dtype, endpoint=True)


def upscale_nearest(scale):
    """A numpy "model" with receptive radius 0: nearest-neighbour enlargement."""

    def run(batch):
        return np.repeat(np.repeat(batch, scale, axis=1), scale, axis=2).astype(np.float32)

    return run


def blur_then_upscale(scale, passes):
    """A numpy "model" with receptive radius `passes`: zero-padded 3x3 box blurs, then nearest."""

    def run(batch):
        x = batch.astype(np.float32)
        for _ in range(passes):
            padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            height, width = x.shape[1:3]
            x = sum(padded[:, dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)) / 9
        return upscale_nearest(scale)(x)

    return run


def run_tiled(run_model, image, scale, tile_size, overlap):
    """plan -> extract -> run -> stitch, each step returning its result."""
    plan = plan_tiles(image.shape[0], image.shape[1], tile_size, overlap)
    tiles = extract_tiles(image, plan)
    return stitch_tiles(run_model(tiles.astype(np.float32)), plan, scale)


@pytest.mark.parametrize("tile_size,overlap", TILINGS)
@pytest.mark.parametrize("height,width", SIZES)
def test_plan_destinations_partition_the_image(height, width, tile_size, overlap):
    plan = plan_tiles(height, width, tile_size, overlap)
    assert isinstance(plan, TilePlan)
    coverage = np.zeros((height, width), dtype=np.int32)
    (top, bottom), (left, right) = plan.padding
    assert top == left == overlap and bottom >= overlap and right >= overlap
    padded_height, padded_width = height + top + bottom, width + left + right
    assert padded_height >= tile_size and padded_width >= tile_size
    core = tile_size - 2 * overlap
    for (origin_y, origin_x), source, destination in zip(plan.origins, plan.sources, plan.destinations):
        assert 0 <= origin_y <= padded_height - tile_size and 0 <= origin_x <= padded_width - tile_size
        src_y0, src_y1, src_x0, src_x1 = source
        dst_y0, dst_y1, dst_x0, dst_x1 = destination
        assert (src_y1 - src_y0, src_x1 - src_x0) == (dst_y1 - dst_y0, dst_x1 - dst_x0)
        # Only the core is trusted: the kept part stays `overlap` away from the tile edges.
        assert overlap <= src_y0 < src_y1 <= overlap + core and overlap <= src_x0 < src_x1 <= overlap + core
        coverage[dst_y0:dst_y1, dst_x0:dst_x1] += 1
    np.testing.assert_array_equal(coverage, 1)
    assert plan.n_tiles == len(plan.origins)


def test_last_tile_is_flush_with_the_padded_edge():
    plan = plan_tiles(13, 29, 8, 2)  # core 4: x origins 0, 4, ..., 24, then flush at 33 - 8 = 25
    origins_x = sorted({x for _, x in plan.origins})
    assert origins_x == [0, 4, 8, 12, 16, 20, 24, 25]
    assert plan.padding == ((2, 2), (2, 2))


def test_core_smaller_than_one_raises():
    with pytest.raises(ValueError, match="no core"):
        plan_tiles(10, 10, 4, 2)
    with pytest.raises(ValueError):
        plan_tiles(0, 10, 8, 2)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("height,width", [(1, 1), (13, 29), (97, 101)])
def test_extracted_tiles_have_fixed_shape_and_dtype(height, width, dtype):
    plan = plan_tiles(height, width, 16, 3)
    tiles = extract_tiles(make_image(height, width, 2, dtype), plan)
    assert tiles.shape == (plan.n_tiles, 16, 16, 2)
    assert tiles.dtype == dtype
    assert tiles.flags.c_contiguous


def test_extracted_tiles_are_crops_of_the_symmetric_padding():
    image = make_image(5, 3, 1)
    plan = plan_tiles(5, 3, 12, 2)  # tile larger than the padded image: extra mirroring bottom/right
    padded = np.pad(image, plan.padding + ((0, 0),), mode="symmetric")
    tiles = extract_tiles(image, plan)
    for tile, (origin_y, origin_x) in zip(tiles, plan.origins):
        np.testing.assert_array_equal(tile, padded[origin_y : origin_y + 12, origin_x : origin_x + 12])


@pytest.mark.parametrize("tile_size,overlap", TILINGS)
@pytest.mark.parametrize("height,width", SIZES)
def test_identity_model_reproduces_the_image(height, width, tile_size, overlap):
    image = make_image(height, width)
    stitched = run_tiled(lambda batch: batch, image, 1, tile_size, overlap)
    assert stitched.dtype == np.float32
    np.testing.assert_array_equal(stitched, image.astype(np.float32))


@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("height,width", [(1, 1), (13, 29), (97, 101)])
def test_nearest_model_reproduces_whole_image_output(height, width, scale):
    image = make_image(height, width)
    expected = upscale_nearest(scale)(image[None])[0]
    for tile_size, overlap in [(8, 2), (5, 0), (128, 10)]:
        stitched = run_tiled(upscale_nearest(scale), image, scale, tile_size, overlap)
        np.testing.assert_array_equal(stitched, expected)


@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("height,width", [(1, 1), (2, 3), (13, 29), (31, 17)])
def test_local_model_tiled_equals_whole_when_overlap_covers_radius(height, width, scale):
    model = blur_then_upscale(scale, passes=2)
    radius = receptive_radius_from_impulse(model, scale, channels=3, size=16)
    assert radius == 2
    image = make_image(height, width, dtype=np.float32)
    for tile_size in (2 * radius + 1, 7, 64):
        whole = upscale_whole(model, image, scale, radius)
        tiled = run_tiled(model, image, scale, tile_size, radius)
        np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-6)


def test_upscale_whole_crops_back_to_scaled_size():
    image = make_image(7, 13)
    whole = upscale_whole(upscale_nearest(3), image, 3, 4)
    assert whole.shape == (21, 39, 3) and whole.dtype == np.float32
    np.testing.assert_array_equal(whole, upscale_nearest(3)(image[None])[0])


def test_stitch_rejects_wrong_output_shape():
    plan = plan_tiles(13, 29, 8, 2)
    with pytest.raises(ValueError):
        stitch_tiles(np.zeros((plan.n_tiles, 8, 8, 3), dtype=np.float32), plan, 2)


def test_impulse_probe_too_small_raises():
    with pytest.raises(ValueError, match="larger size"):
        receptive_radius_from_impulse(blur_then_upscale(2, passes=6), 2, size=8)


# A radius known to cover the tiny Keras model below: two 3x3 convs reach 2 input
# pixels, a stride-2 4x4 transposed conv at most 2 more.
DECLARED_RADIUS = 4
SCALE = 2


@pytest.fixture(scope="module")
def keras_model():
    """A tiny x2 super-resolution net with random weights, built once for the module."""
    import keras

    keras.utils.set_random_seed(1234)
    model = keras.Sequential(
        [
            keras.Input((None, None, 3)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu", bias_initializer="random_normal"),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu", bias_initializer="random_normal"),
            keras.layers.Conv2DTranspose(
                3, 4, strides=SCALE, padding="same", bias_initializer="random_normal"
            ),
        ]
    )
    return lambda batch: np.asarray(model(batch, training=False))


@pytest.fixture(scope="module")
def measured_radius(keras_model):
    """The Keras model's receptive radius, measured once."""
    return receptive_radius_from_impulse(keras_model, SCALE, channels=3, size=32)


def test_measured_radius_is_within_declared(measured_radius):
    assert 1 <= measured_radius <= DECLARED_RADIUS


@pytest.mark.parametrize("height,width", [(1, 1), (7, 13), (31, 17), (64, 64)])
@pytest.mark.parametrize("radius_source", ["measured", "declared"])
def test_keras_model_tiled_equals_whole(keras_model, measured_radius, height, width, radius_source):
    overlap = measured_radius if radius_source == "measured" else DECLARED_RADIUS
    image = make_image(height, width, dtype=np.float32, seed=height * 100 + width)
    whole = upscale_whole(keras_model, image, SCALE, overlap)
    assert whole.shape == (height * SCALE, width * SCALE, 3)
    # One tile size smaller than every image but 1x1, and one larger than all of them.
    for tile_size in (2 * overlap + 5, 80):
        tiled = run_tiled(keras_model, image, SCALE, tile_size, overlap)
        np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)


def test_keras_model_too_little_overlap_breaks_equality(keras_model):
    # Guards the test above: with no overlap, tile borders must show.
    image = make_image(31, 17, dtype=np.float32)
    whole = upscale_whole(keras_model, image, SCALE, 0)
    tiled = run_tiled(keras_model, image, SCALE, 8, 0)
    assert np.abs(tiled - whole).max() > 1e-3
