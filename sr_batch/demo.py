"""Demo images made on the spot, so a fresh machine can run the job with no data at hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_images(folder: Path | str, count: int, size: int | tuple[int, int], seed: int = 0) -> list[Path]:
    """Write `count` photo-like PNGs: smooth gradients, a dark disk, stripes and mild noise.

    They compress like photographs (not like noise) and have edges for the model to sharpen.
    """
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y /= max(height, width)
    x /= max(height, width)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        a, b, c = rng.uniform(1, 6, 3)
        base = np.stack([np.sin(a * x + i), np.cos(b * y), np.sin(c * (x + y))], axis=2) * 0.35 + 0.5
        cy, cx, r = rng.uniform(0.2, 0.8, 3)
        base[((y - cy) ** 2 + (x - cx) ** 2) < (r / 3) ** 2] *= 0.5
        base[(((x * 40).astype(int) % 2) == 0) & (y > 0.8)] += 0.15
        base += rng.normal(0, 0.02, base.shape).astype(np.float32)
        path = folder / f"demo{i:03d}.png"
        Image.fromarray((np.clip(base, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)
        paths.append(path)
    return paths
