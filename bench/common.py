"""What several benches share: x2 outputs to measure on, and a best-of timer."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sr_batch import resample
from sr_batch.demo_images import make_images


def upscaled_outputs(folder: str | None, sides: tuple[int, ...]) -> dict[str, np.ndarray]:
    """x2 bicubic outputs of the images in `folder` (default: demo images), tiled to each side^2."""
    if folder is None:
        folder = tempfile.mkdtemp(prefix="sr-bench-")
        make_images(folder, 4, 512)
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".bmp"))
    tiles = [resample.upscale_bicubic(np.asarray(Image.open(p).convert("RGB")), 2) for p in paths[:6]]
    height = min(t.shape[0] for t in tiles)
    strip = np.concatenate([t[:height] for t in tiles], axis=1)
    result = {}
    for side in sides:
        reps = (side // strip.shape[0] + 1, side // strip.shape[1] + 1, 1)
        result[f"{side}^2"] = np.ascontiguousarray(np.tile(strip, reps)[:side, :side])
    return result


def best_of(fn, repeats: int, clock=time.perf_counter) -> float:
    """The fastest of `repeats` calls, in seconds (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        began = clock()
        fn()
        times.append(clock() - began)
    return min(times)
