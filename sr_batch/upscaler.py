"""Model + tiling = upscale(images) -> images; stateless per call.

Tiles of several images are packed into the same model batches, so small
images still fill the batch. Every batch has one of a few fixed tile shapes
(by default two: a 128 px and a 256 px core), so one traced function per shape
serves every call; each image takes the tile that runs the fewest padded
pixels through the model for it. Tiled output equals whole-image output
whatever the tile (see tiling.py), so the choice only changes the cost.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from sr_batch import resample, tiling

RunBatch = Callable[..., np.ndarray]
"""(N, T, T, 3) float32 tiles in [0, 1] -> (N, T*s, T*s, 3) float32; an integer batch function
takes the output dtype too, `run(tiles, np.uint8)`, and returns rounded, clipped integers."""
# Distinct image sizes whose tile plans an Upscaler keeps (a plan is a few KB of tuples).
PLAN_CACHE_SIZES = 256


@dataclass(frozen=True)
class Upscaled:
    """One image's result: RGB/grey pixels (float32 in [0, 1], or the input's integer dtype from an
    integer Upscaler), its tile count and side, and model time."""

    pixels: np.ndarray
    n_tiles: int
    infer_s: float
    tile_size: int = 0
    """Input-pixel side of the tiles this image ran in; 0 for bicubic (no model)."""


def to_float(pixels: np.ndarray) -> np.ndarray:
    """uint8/uint16 planes to float32 in [0, 1] (one multiply, no float64)."""
    out = pixels.astype(np.float32)
    out *= np.float32(1.0 / np.iinfo(pixels.dtype).max)
    return out


def to_integer(pixels: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float32 in [0, 1] to uint8/uint16 with rounding and clipping (integers of `dtype` pass)."""
    if pixels.dtype == dtype:
        return pixels
    top = np.float32(np.iinfo(dtype).max)
    # One float32 temporary, worked in place: a 8192^2 RGB output is 805 MB per copy.
    out = pixels * top
    out += np.float32(0.5)
    np.clip(out, 0, top, out=out)
    return out.astype(dtype)


class Upscaler:
    """Upscales lists of images with a batch function over fixed-shape tiles."""

    def __init__(self, run_batch: RunBatch | None, scale: int, tile_size: int | Sequence[int],
                 overlap: int, batch_size: int, integer: bool = False, blend: int = 0,
                 whole: bool = False) -> None:
        """`run_batch` maps (N, T, T, 3) float32 to (N, T*s, T*s, 3) for every T in
        `tile_size` (one side or several); None means bicubic. `integer`: `run_batch` is an
        integer batch function and results come out in each image's own dtype (the job's
        way: the model's output is rounded where it is made, and 4x smaller than float32).
        `blend` feathers neighbouring tiles (tiling.plan_tiles); `whole` runs each image in one
        piece, mirror-padded by `overlap`, through a `run_batch` that takes any height and width."""
        self.run_batch = run_batch
        self.integer = integer
        self.scale = scale
        self.tile_sizes = tuple(sorted({tile_size} if isinstance(tile_size, int) else set(tile_size)))
        if not self.tile_sizes:
            raise ValueError("need at least one tile size")
        self.overlap = overlap
        self.blend = blend
        self.whole = whole
        self.batch_size = batch_size
        self._plan = functools.lru_cache(maxsize=PLAN_CACHE_SIZES)(self._plan_uncached)

    @property
    def largest_tile(self) -> int:
        """The largest tile side: what a streamed block is cut to fill."""
        return self.tile_sizes[-1]

    def batch_for(self, size: int) -> int:
        """Tiles per model call for tiles of side `size`: batch_size of the smallest tile, and
        the same number of pixels (so the same activation memory) for a larger one."""
        return max(1, self.batch_size * self.tile_sizes[0] ** 2 // size ** 2)

    def plan(self, height: int, width: int) -> tiling.TilePlan:
        """The tiling of an image that runs the fewest padded pixels through the model
        (the smaller tile on a tie). Cached per image size: the actor sizes its chunks
        with the same plans that `upscale` then cuts, and archives repeat sizes."""
        return self._plan(height, width)

    def _plan_uncached(self, height: int, width: int) -> tiling.TilePlan:
        plans = [tiling.plan_tiles(height, width, size, self.overlap, self.blend) for size in self.tile_sizes]
        return min(plans, key=lambda plan: plan.n_tiles * plan.tile_size ** 2)

    def upscale(self, images: list[np.ndarray]) -> list[Upscaled]:
        """Upscale uint8/uint16 (H, W, 1|3) images; grey goes through the model as R=G=B."""
        if self.run_batch is None:
            return [self._bicubic(image) for image in images]
        if self.whole:
            return [self._whole(image) for image in images]
        dtypes = [image.dtype if self.integer else np.dtype(np.float32) for image in images]
        plans = [self.plan(im.shape[0], im.shape[1]) for im in images]
        tiles = [tiling.extract_tiles(self._as_rgb(to_float(im)), plan) for im, plan in zip(images, plans)]
        outputs, infer_s = self._run_packed(tiles, dtypes)
        results = []
        for image, plan, out, seconds in zip(images, plans, outputs, infer_s):
            stitched = tiling.stitch_tiles(out, plan, self.scale)
            if image.shape[2] == 1:
                stitched = _grey(stitched)
            elif not self.integer:
                np.clip(stitched, 0.0, 1.0, out=stitched)
            results.append(Upscaled(stitched, plan.n_tiles, seconds, plan.tile_size))
        return results

    def _run_packed(self, tiles: list[np.ndarray], dtypes: list[np.dtype]) -> tuple[list[np.ndarray], list[float]]:
        """Run every image's tiles in batches shared with the other images of the same tile
        side (and output dtype); split outputs and time back per image."""
        outputs: list = [None] * len(tiles)
        infer_s = [0.0] * len(tiles)
        for key in dict.fromkeys((t.shape[1], d) for t, d in zip(tiles, dtypes)):
            members = [i for i, (t, d) in enumerate(zip(tiles, dtypes)) if (t.shape[1], d) == key]
            group_out, group_s = self._run_same_size([tiles[i] for i in members], *key)
            for i, out, seconds in zip(members, group_out, group_s):
                outputs[i], infer_s[i] = out, seconds
        return outputs, infer_s

    def _run_same_size(self, tiles: list[np.ndarray], size: int,
                       dtype: np.dtype) -> tuple[list[np.ndarray], list[float]]:
        counts = [t.shape[0] for t in tiles]
        packed = np.concatenate(tiles, axis=0) if len(tiles) > 1 else tiles[0]
        side, batch = size * self.scale, self.batch_for(size)
        out = np.empty((packed.shape[0], side, side, 3), dtype)
        tile_s = np.zeros(packed.shape[0], np.float64)
        for start in range(0, packed.shape[0], batch):
            stop = min(start + batch, packed.shape[0])
            began = time.perf_counter()
            tiles_in = packed[start:stop]
            out[start:stop] = self.run_batch(tiles_in, dtype) if self.integer else self.run_batch(tiles_in)
            tile_s[start:stop] = (time.perf_counter() - began) / (stop - start)
        bounds = np.cumsum([0, *counts])
        return ([out[a:b] for a, b in zip(bounds[:-1], bounds[1:])],
                [float(tile_s[a:b].sum()) for a, b in zip(bounds[:-1], bounds[1:])])

    def _whole(self, image: np.ndarray) -> Upscaled:
        """One image in one model call, mirror-padded by the overlap as every tile is, so its
        output is the reference that tiled output is held to (tiling.upscale_whole)."""
        rgb = self._as_rgb(to_float(image))
        run = (lambda batch: self.run_batch(batch, image.dtype)) if self.integer else self.run_batch
        began = time.perf_counter()
        pixels = np.ascontiguousarray(tiling.upscale_whole(run, rgb, self.scale, self.overlap))
        seconds = time.perf_counter() - began
        if image.shape[2] == 1:
            pixels = _grey(pixels)
        elif not self.integer:
            np.clip(pixels, 0.0, 1.0, out=pixels)
        return Upscaled(pixels, 1, seconds, 0)

    def _bicubic(self, image: np.ndarray) -> Upscaled:
        """The baseline on the integer pixels, exactly as the quality metrics compute it."""
        began = time.perf_counter()
        pixels = resample.upscale_bicubic(image, self.scale)
        if pixels.ndim == 2:
            pixels = pixels[..., None]
        return Upscaled(pixels if self.integer else to_float(pixels), 0, time.perf_counter() - began)

    @staticmethod
    def _as_rgb(image: np.ndarray) -> np.ndarray:
        return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def _grey(rgb: np.ndarray) -> np.ndarray:
    """The mean of R, G and B as one channel: a grey image's output (it went in as R=G=B)."""
    if rgb.dtype == np.float32:
        grey = rgb.mean(axis=2, keepdims=True, dtype=np.float32)
        return np.clip(grey, 0.0, 1.0, out=grey)
    total = rgb.sum(axis=2, keepdims=True, dtype=np.uint32)
    return ((2 * total + 3) // 6).astype(rgb.dtype)  # round((r + g + b) / 3), halves up


def quantized(run_batch: RunBatch) -> RunBatch:
    """An integer batch function from a float one, rounding on the host (ONNX, self-ensemble)."""
    return lambda tiles, dtype: to_integer(run_batch(tiles), dtype)


# The eight symmetries of the square (Lim et al. 2017's "x8" geometric self-ensemble):
# k quarter turns, each with and without a left-right flip.
SYMMETRIES = tuple((k, flip) for k in range(4) for flip in (False, True))


def _transform(tiles: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Rotate (N, T, T, C) tiles by k quarter turns, then flip left-right if asked."""
    out = np.rot90(tiles, k, axes=(1, 2))
    return out[:, :, ::-1] if flip else out


def _untransform(tiles: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """The inverse of `_transform`: unflip, then turn back."""
    out = tiles[:, :, ::-1] if flip else tiles
    return np.rot90(out, -k, axes=(1, 2))


def self_ensemble(run_batch: RunBatch) -> RunBatch:
    """Average `run_batch` over the 8 flips/rotations of each tile batch (8x the model time).

    Tiles are square, so every transformed batch has the tile shape and a traced
    function keeps its single trace. Per tile, exactly as the untransformed call:
    the tile overlap (receptive radius) is the same in every direction.
    """

    def run(batch: np.ndarray) -> np.ndarray:
        total = None
        for k, flip in SYMMETRIES:
            out = _untransform(run_batch(np.ascontiguousarray(_transform(batch, k, flip))), k, flip)
            total = out.astype(np.float32) if total is None else total + out
        return total * np.float32(1.0 / len(SYMMETRIES))

    return run


def make_tf_batch_fn(model, tile_size: int | Sequence[int] | None, integer: bool = False):
    """One tf.function per tile side T, over (None, T, T, 3) float32: one trace per side
    serves every batch of it (`tile_size` None: one over any height and width, whole images).
    `integer`: the function is `run(tiles, dtype)` and rounds and
    clips the output to uint8 or uint16 inside the traced function (one more trace per side
    for each dtype used), so 2-4x fewer bytes leave the device.

    Returns (fn, trace_counter) where trace_counter() says how often they traced in all.
    """
    import tensorflow as tf

    traces = [0]

    def forward_for(size: int | None, dtype: np.dtype | None):
        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
        def forward(tiles):
            traces[0] += 1  # runs only while tracing
            out = model(tiles, training=False)
            if dtype is None:
                return out
            top = float(np.iinfo(dtype).max)
            # The host's to_integer: x * top + 0.5, clipped, truncated (round half up).
            return tf.cast(tf.clip_by_value(out * top + 0.5, 0.0, top), tf.as_dtype(dtype))

        return forward

    sizes = sorted({tile_size} if isinstance(tile_size, int) else set(tile_size or ()))
    forwards: dict = {}

    def forward(batch: np.ndarray, dtype: np.dtype | None):
        if tile_size is None:  # whole images: one function over any height and width
            key = ("any", None if dtype is None else np.dtype(dtype))
            if key not in forwards:
                forwards[key] = forward_for(None, key[1])
            return forwards[key](tf.convert_to_tensor(batch)).numpy()
        if batch.shape[1] not in sizes:
            raise ValueError(f"no traced function for {batch.shape[1]} px tiles; have {sizes}")
        key = (batch.shape[1], None if dtype is None else np.dtype(dtype))
        if key not in forwards:
            forwards[key] = forward_for(*key)
        return forwards[key](tf.convert_to_tensor(batch)).numpy()

    if integer:
        return (lambda batch, dtype: forward(batch, dtype)), (lambda: traces[0])
    return (lambda batch: forward(batch, None)), (lambda: traces[0])
