"""Upscaler: packed batches equal per-image results, one trace serves every batch, grey stays grey,
and self-ensemble is the mean of the eight flips and quarter turns."""

from __future__ import annotations

import numpy as np
import pytest

from sr_batch import tiling
from sr_batch.upscaler import Upscaler, make_tf_batch_fn, to_float, to_integer

from conftest import scene
from models.helpers import randomise, run_eager


@pytest.fixture(scope="module")
def model():
    import keras

    from sr_batch.models.architectures import build_model, receptive_radius

    keras.utils.set_random_seed(1)
    return build_model("residual", 2), receptive_radius("residual", 2)


def test_packed_batches_match_whole_image_inference(model):
    net, radius = model
    run, traces = make_tf_batch_fn(net, 24)
    upscaler = Upscaler(run, scale=2, tile_size=24, overlap=radius, batch_size=5)
    images = [scene(h, w, seed=i) for i, (h, w) in enumerate([(1, 1), (13, 29), (40, 31), (7, 64)])]
    results = upscaler.upscale(images)
    for image, result in zip(images, results):
        whole = tiling.upscale_whole(lambda x: net(x, training=False).numpy(), to_float(image), 2,
                                     radius)
        assert result.pixels.shape == (2 * image.shape[0], 2 * image.shape[1], 3)
        np.testing.assert_allclose(result.pixels, np.clip(whole, 0, 1), atol=1e-5)
        assert result.n_tiles == tiling.plan_tiles(*image.shape[:2], 24, radius).n_tiles
        assert result.infer_s > 0
    # One traced function for every batch, including the ragged last one.
    assert traces() == 1


def test_one_trace_serves_many_calls_of_any_size(model):
    """As in an actor: one Upscaler, call after call, images of every size, grey too."""
    net, radius = model
    run, traces = make_tf_batch_fn(net, 24)
    upscaler = Upscaler(run, scale=2, tile_size=24, overlap=radius, batch_size=3)
    sizes = [(5, 5), (50, 17), (24, 24), (1, 90), (33, 33)]
    for i, (h, w) in enumerate(sizes):
        (result,) = upscaler.upscale([scene(h, w, seed=i)])
        assert result.pixels.shape == (2 * h, 2 * w, 3)
    results = upscaler.upscale([scene(9, 9), scene(30, 12)[..., :1], scene(70, 3)])
    assert [r.pixels.shape for r in results] == [(18, 18, 3), (60, 24, 1), (140, 6, 3)]
    assert traces() == 1


def test_two_tile_sides_each_image_takes_the_cheaper_and_output_is_unchanged(model):
    """The default: a small and a large tile, one trace each; small images take the small
    tile, large ones the large; the pixels equal a one-tile run's (and whole-image inference)."""
    net, radius = model
    small, large = 8 + 2 * radius, 32 + 2 * radius
    traced, traces = make_tf_batch_fn(net, (small, large))
    calls = []

    def run(batch):
        calls.append(batch.shape)
        return traced(batch)

    both = Upscaler(run, scale=2, tile_size=(large, small), overlap=radius, batch_size=16)
    assert both.tile_sizes == (small, large) and both.largest_tile == large
    single_run, _ = make_tf_batch_fn(net, small)
    single = Upscaler(single_run, scale=2, tile_size=small, overlap=radius, batch_size=4)
    images = [scene(h, w, seed=i) for i, (h, w) in enumerate([(6, 7), (64, 64), (8, 8), (70, 33), (3, 90)])]
    results = both.upscale(images)
    expected = single.upscale(images)
    chosen = [r.tile_size for r in results]
    assert chosen[0] == small and chosen[2] == small  # fits one small tile
    assert chosen[1] == large  # 4 large tiles cost less than 16 small ones
    for image, result, reference in zip(images, results, expected):
        plan = both.plan(*image.shape[:2])
        costs = {size: tiling.plan_tiles(*image.shape[:2], size, radius).n_tiles * size ** 2
                 for size in (small, large)}
        assert plan.tile_size == min(costs, key=lambda size: (costs[size], size))
        assert result.n_tiles == plan.n_tiles
        np.testing.assert_allclose(result.pixels, reference.pixels, atol=1e-5)
    # No call holds more tile pixels than batch_size small tiles: large tiles go in smaller
    # batches (the same activation memory), and every large call is as full as it can be.
    assert {shape[1] for shape in calls} == {small, large}
    assert all(n * side * side <= 16 * small * small for n, side, _, _ in calls)
    assert max(n for n, side, _, _ in calls if side == large) == 2  # 16 * 16^2 px // 40^2 px
    assert traces() == 2  # one per tile side, however many calls and images
    both.upscale(images[::-1])
    assert traces() == 2


def test_a_tile_side_without_a_trace_is_refused(model):
    net, _ = model
    run, _ = make_tf_batch_fn(net, 16)
    with pytest.raises(ValueError, match="no traced function for 20 px tiles"):
        run(np.zeros((1, 20, 20, 3), np.float32))


def test_grey_images_stay_single_channel(model):
    net, radius = model
    run, _ = make_tf_batch_fn(net, 16)
    grey = scene(20, 20)[..., :1]
    (result,) = Upscaler(run, 2, 16, radius, 4).upscale([grey])
    assert result.pixels.shape == (40, 40, 1)


def test_bicubic_upscaler_is_pillow_bicubic():
    from sr_batch import resample

    image = scene(15, 22)
    (result,) = Upscaler(None, 3, 16, 2, 4).upscale([image])
    np.testing.assert_array_equal(to_integer(result.pixels, np.uint8),
                                  resample.upscale_bicubic(image, 3))
    assert result.n_tiles == 0


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_integer_float_round_trip_is_exact(dtype):
    values = np.arange(0, np.iinfo(dtype).max + 1, 1 if dtype == np.uint8 else 257, dtype=dtype)
    pixels = values.reshape(1, -1, 1)
    assert to_float(pixels).dtype == np.float32
    np.testing.assert_array_equal(to_integer(to_float(pixels), dtype), pixels)


def test_self_ensemble_is_the_mean_of_the_eight_transformed_predictions():
    from sr_batch.models.architectures import build_model
    from sr_batch.upscaler import self_ensemble

    model = randomise(build_model("subpixel", 2), seed=5, std=0.1)
    run = run_eager(model)
    tiles = np.random.default_rng(6).random((3, 12, 12, 3), dtype=np.float32)
    expected = np.zeros((3, 24, 24, 3), np.float64)
    for k in range(4):
        for flip in (False, True):
            t = np.rot90(tiles, k, axes=(1, 2))
            t = t[:, :, ::-1] if flip else t
            out = run(np.ascontiguousarray(t))
            out = out[:, :, ::-1] if flip else out
            expected += np.rot90(out, -k, axes=(1, 2)) / 8
    np.testing.assert_allclose(self_ensemble(run)(tiles), expected, atol=1e-5)
    assert not np.allclose(run(tiles), expected, atol=1e-3)  # a generic net is not equivariant


def test_self_ensemble_of_an_equivariant_model_is_a_no_op():
    from sr_batch.models.architectures import build_model
    from sr_batch.upscaler import make_tf_batch_fn, self_ensemble

    # The untrained residual model is exactly bicubic, which commutes with flips and quarter turns.
    run, traces = make_tf_batch_fn(build_model("residual", 3), 10)
    tiles = np.random.default_rng(7).random((2, 10, 10, 3), dtype=np.float32)
    np.testing.assert_allclose(self_ensemble(run)(tiles), run(tiles), atol=1e-5)
    assert traces() == 1  # square tiles: every transformed batch reuses the one trace
