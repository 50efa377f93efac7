"""Custom Keras layers, registered so that models load with safe_mode=True."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="sr_batch")
class DepthToSpace(keras.layers.Layer):
    """Pixel shuffle: (N, H, W, C*r*r) -> (N, H*r, W*r, C), in TensorFlow's DCR order.

    Channel `(dy * r + dx) * C + c` of an input pixel becomes channel `c` of the
    output pixel at offset (dy, dx) in its r x r block, as `tf.nn.depth_to_space`.
    """

    def __init__(self, block_size: int, **kwargs):
        super().__init__(**kwargs)
        if int(block_size) < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = int(block_size)

    def call(self, inputs):
        r = self.block_size
        shape = ops.shape(inputs)
        batch, height, width, depth = shape[0], shape[1], shape[2], shape[3]
        channels = depth // (r * r)
        x = ops.reshape(inputs, (batch, height, width, r, r, channels))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (batch, height * r, width * r, channels))

    def compute_output_shape(self, input_shape):
        batch, height, width, depth = input_shape
        r = self.block_size
        return (
            batch,
            None if height is None else height * r,
            None if width is None else width * r,
            None if depth is None else depth // (r * r),
        )

    def get_config(self):
        return {**super().get_config(), "block_size": self.block_size}
