"""Helpers shared by the model tests (and the self-ensemble tests of tests/test_upscaler.py):
random weights for a model, its eager forward pass, and a synthetic image SR should beat bicubic on."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras


def randomise(model: keras.Model, seed: int = 0, std: float = 0.2) -> keras.Model:
    """Give every weight (zero-initialised ones too) a random value, so every path carries signal."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0.0, std, w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def run_eager(model: keras.Model):
    return lambda batch: np.asarray(model(batch, training=False))


def synthetic_image(size: int = 96) -> np.ndarray:
    """Smooth gradients with a few hard-edged disks and stripes: what SR should beat bicubic on."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    image = np.stack([0.2 + 0.6 * x, 0.3 + 0.4 * y, 0.5 + 0.3 * np.sin(3 * x + 2 * y)], axis=-1)
    for cy, cx, r, colour in ((0.3, 0.3, 0.15, (0.9, 0.1, 0.1)), (0.7, 0.6, 0.2, (0.1, 0.2, 0.8)),
                              (0.25, 0.75, 0.1, (1.0, 1.0, 0.9))):
        image[(y - cy) ** 2 + (x - cx) ** 2 < r**2] = colour
    stripes = (np.floor(x * size / 6) % 2 == 0) & (y > 0.8)
    image[stripes] = 0.05
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
