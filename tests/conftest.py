"""Shared fixtures: a real local Ray (2 CPUs, 2 logical GPUs) and small generated images."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth synthetic RGB scene with edges (uint8): gradients, a disk and stripes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 0.5 + 0.4 * np.sin(x / max(width, 1) * 3 + seed)
    g = 0.5 + 0.4 * np.cos(y / max(height, 1) * 2)
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    disk = ((y - cy) ** 2 + (x - cx) ** 2) < (0.25 * min(height, width)) ** 2
    b = np.where(disk, 0.9, 0.2) + 0.05 * ((x // 6) % 2)
    return (np.clip(np.stack([r, g, b], axis=2), 0, 1) * 255 + 0.5).astype(np.uint8)


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the session: 2 CPUs like the CI machine, 2 logical GPUs."""
    import ray

    if not ray.is_initialized():
        # "local": a fresh cluster of our own, never one that `ray start` left on this machine.
        ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False,
                 logging_level="WARNING",
                 runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}})
    yield ray
    ray.shutdown()


@pytest.fixture
def image_dir(tmp_path):
    """Five small RGB PNGs (two in a subfolder) with varied sizes."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    sizes = [(24, 32), (17, 29), (40, 40), (9, 13), (33, 21)]
    for i, (h, w) in enumerate(sizes):
        folder = root / "sub" if i >= 3 else root
        Image.fromarray(scene(h, w, seed=i)).save(folder / f"im{i}.png")
    return root
