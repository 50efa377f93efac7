"""The custom layer: DepthToSpace is TensorFlow's depth_to_space and saves by its registered name."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from sr_batch.models.layers import DepthToSpace  # noqa: E402


def test_depth_to_space_matches_tensorflow_and_round_trips_config():
    x = np.random.default_rng(0).random((2, 3, 5, 3 * 9), dtype=np.float32)
    layer = DepthToSpace(3)
    np.testing.assert_array_equal(np.asarray(layer(x)), tf.nn.depth_to_space(x, 3).numpy())
    clone = DepthToSpace.from_config(layer.get_config())
    assert clone.block_size == 3
    assert keras.saving.get_registered_name(DepthToSpace) == "sr_batch>DepthToSpace"
