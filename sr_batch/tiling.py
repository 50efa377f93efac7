"""Fixed-size overlapping tiles: plan, extract, stitch. Pure numpy; no TF, no Ray.

Contract: for any model whose receptive radius (in input pixels) is at most
`overlap`, stitch_tiles(run(extract_tiles(image, plan)), plan, scale) equals
upscale_whole(run, image, scale, overlap) up to float rounding. Both sides see
the image mirrored (np.pad mode="symmetric") by `overlap` pixels on every side,
and each tile keeps only its core, whose receptive field lies inside the tile.

A model whose response never vanishes (deep GAN-trained networks: RRDB, SwinIR)
has no such radius. For it, a plan with `blend` > 0 keeps `blend` more pixels of
each tile's output on every side that meets another tile, and stitching mixes
neighbours with a raised-cosine ramp 2 x blend px wide whose weights sum to one
(the feathering of image stitching): no hard edge where one tile's truncated
context ends, and every kept pixel still has overlap - blend px of context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

# A model maps an NHWC float32 batch to NHWC float32 that is `scale` times larger.
RunModel = Callable[[np.ndarray], np.ndarray]

# Rectangles are (top, bottom, left, right), half-open, in input pixels.
Rect = tuple[int, int, int, int]

# Output differences at or below this are float noise, not the impulse's reach.
IMPULSE_TOLERANCE = 1e-7
# The widest overlap a feathered tiling takes: the large tile (256 px core) is then 384 px,
# 2.25x its core's pixels, which bounds a tile's activation memory (and the work redone).
MAX_FEATHERED_OVERLAP = 64


@dataclass(frozen=True)
class TilePlan:
    """Where every fixed-size tile comes from and where its core goes."""

    height: int
    """Image height in input pixels."""
    width: int
    """Image width in input pixels."""
    tile_size: int
    """Side of every (square) tile, padding included, in input pixels."""
    overlap: int
    """Context kept around each tile's core; must cover the model's receptive radius."""
    padding: tuple[tuple[int, int], tuple[int, int]]
    """np.pad widths ((top, bottom), (left, right)) applied before cutting tiles."""
    origins: tuple[tuple[int, int], ...]
    """(y, x) of each tile's top-left corner in the padded image, row-major."""
    sources: tuple[Rect, ...]
    """Per tile: the part of the tile whose output is kept."""
    destinations: tuple[Rect, ...]
    """Per tile: where that kept part lands in the image; these partition the image."""
    blend: int = 0
    """Feather width, input px: each tile's output is kept this much beyond its core where it
    meets a neighbour, and mixed with it by smooth weights; 0: cores abut (exact tiling)."""

    @property
    def n_tiles(self) -> int:
        """Number of tiles."""
        return len(self.origins)

    @property
    def core(self) -> int:
        """Side of the region each tile is trusted for: tile_size - 2 * overlap."""
        return self.tile_size - 2 * self.overlap


@dataclass(frozen=True)
class Tiling:
    """The tiles the model sees: fixed square sides (one traced function each) and the context
    each tile carries around its core."""

    sides: tuple[int, ...]
    """Every tile side, input px, ascending; each image takes the one that runs fewer padded pixels."""
    overlap: int
    """Context per tile side, input px (at least the model's receptive radius: no seams)."""
    blend: int = 0
    """Feather width, input px, where neighbouring tiles are mixed (tiling.feather_width): 0 for
    exact tiling; > 0 where the overlap is below the model's exact radius or it has none."""
    seam: tuple[float, float] | None = (0.0, 0.0)
    """(max, mean) |tiled - whole image| in 8-bit levels, as the probe measured it at this
    overlap; (0, 0) for exact tiling and whole images; None where not measured."""
    whole: bool = False
    """--whole-image: each image runs in one piece, mirror-padded by `overlap`; no tiles."""

    @property
    def largest(self) -> int:
        """What a streamed block is cut to fill."""
        return self.sides[-1]


def tile_core(tile_size: int, overlap: int) -> int:
    """The side of the region a tile is trusted for (tile_size - 2 * overlap); ValueError where a
    tile of this side has none. The one rule for --tile-size against --tile-overlap."""
    core = tile_size - 2 * overlap
    if core < 1:
        raise ValueError(f"tile_size {tile_size} leaves no core with overlap {overlap}: "
                         f"need tile_size >= 2 * overlap + 1 = {2 * overlap + 1}")
    return core


def plan_tiles(height: int, width: int, tile_size: int, overlap: int, blend: int = 0) -> TilePlan:
    """Cover an image with tile_size x tile_size tiles whose cores partition it; `blend` > 0
    feathers neighbouring tiles over 2 x blend px (see the module docstring)."""
    if height < 1 or width < 1:
        raise ValueError(f"image must be at least 1x1, got {width}x{height}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    core = tile_core(tile_size, overlap)
    if not 0 <= blend <= min(overlap, core // 2):
        raise ValueError(f"blend must be in 0..min(overlap, core // 2) = {min(overlap, core // 2)}, "
                         f"got {blend}")
    pad_y, tiles_y = _plan_axis(height, tile_size, overlap)
    pad_x, tiles_x = _plan_axis(width, tile_size, overlap)

    origins, sources, destinations = [], [], []
    for origin_y, (src_y0, src_y1), (dst_y0, dst_y1) in tiles_y:
        for origin_x, (src_x0, src_x1), (dst_x0, dst_x1) in tiles_x:
            origins.append((origin_y, origin_x))
            sources.append((src_y0, src_y1, src_x0, src_x1))
            destinations.append((dst_y0, dst_y1, dst_x0, dst_x1))
    return TilePlan(
        height=height,
        width=width,
        tile_size=tile_size,
        overlap=overlap,
        padding=(pad_y, pad_x),
        origins=tuple(origins),
        sources=tuple(sources),
        destinations=tuple(destinations),
        blend=blend,
    )


def extract_tiles(image: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Cut an HxWxC image into one contiguous (N, T, T, C) array of the same dtype."""
    if image.ndim != 3 or image.shape[:2] != (plan.height, plan.width):
        raise ValueError(f"expected an array of shape ({plan.height}, {plan.width}, C), got {image.shape}")
    size = plan.tile_size
    tiles = np.empty((plan.n_tiles, size, size, image.shape[2]), dtype=image.dtype)
    # Gather tiles through index maps of the padded image instead of
    # materialising it: one copy of each pixel into `tiles`, none into a padded frame.
    rows = _padded_indices(plan.height, plan.padding[0])
    cols = _padded_indices(plan.width, plan.padding[1])
    for index, (origin_y, origin_x) in enumerate(plan.origins):
        tile_rows = _as_slice_if_contiguous(rows[origin_y : origin_y + size])
        tile_cols = _as_slice_if_contiguous(cols[origin_x : origin_x + size])
        if isinstance(tile_rows, np.ndarray) and isinstance(tile_cols, np.ndarray):
            tiles[index] = image[tile_rows[:, None], tile_cols[None, :]]
        else:
            tiles[index] = image[tile_rows, tile_cols]
    return tiles


def stitch_tiles(outputs: np.ndarray, plan: TilePlan, scale: int) -> np.ndarray:
    """Assemble per-tile model outputs (N, T*s, T*s, C) into the (H*s, W*s, C) image, in the
    outputs' dtype (float32, or the job's uint8/uint16)."""
    out_size = plan.tile_size * scale
    if outputs.ndim != 4 or outputs.shape[:3] != (plan.n_tiles, out_size, out_size):
        raise ValueError(
            f"expected outputs of shape ({plan.n_tiles}, {out_size}, {out_size}, C), got {outputs.shape}"
        )
    if plan.blend:
        return _stitch_feathered(outputs, plan, scale)
    # np.empty is safe: the destinations partition the image, so every pixel is written.
    image = np.empty((plan.height * scale, plan.width * scale, outputs.shape[3]), dtype=outputs.dtype)
    for index, (source, destination) in enumerate(zip(plan.sources, plan.destinations)):
        src_y0, src_y1, src_x0, src_x1 = (v * scale for v in source)
        dst_y0, dst_y1, dst_x0, dst_x1 = (v * scale for v in destination)
        image[dst_y0:dst_y1, dst_x0:dst_x1] = outputs[index, src_y0:src_y1, src_x0:src_x1]
    return image


def feather_width(overlap: int, radius: int | None) -> int:
    """The blend a tiling with this overlap takes: 0 where the overlap covers the model's exact
    receptive radius (cores abut, output exact), else a quarter of the overlap (at least 1)."""
    if radius is not None and overlap >= radius:
        return 0
    return max(1, overlap // 4) if overlap else 0


def _stitch_feathered(outputs: np.ndarray, plan: TilePlan, scale: int) -> np.ndarray:
    """Stitch with each tile's kept part grown by `blend` px towards its neighbours, mixed by
    raised-cosine weights that sum to one; integer outputs are mixed in float32 and rounded."""
    height, width = plan.height * scale, plan.width * scale
    total = np.zeros((height, width, outputs.shape[3]), np.float32)
    for index, (source, destination) in enumerate(zip(plan.sources, plan.destinations)):
        rows = _feather_axis(source[0], destination[0], destination[1], plan.height, plan.blend, scale)
        cols = _feather_axis(source[2], destination[2], destination[3], plan.width, plan.blend, scale)
        (src_y0, dst_y0, dst_y1, weight_y), (src_x0, dst_x0, dst_x1, weight_x) = rows, cols
        tile = outputs[index, src_y0:src_y0 + dst_y1 - dst_y0, src_x0:src_x0 + dst_x1 - dst_x0]
        weight = weight_y[:, None, None] * weight_x[None, :, None]
        total[dst_y0:dst_y1, dst_x0:dst_x1] += tile.astype(np.float32) * weight
    if np.issubdtype(outputs.dtype, np.integer):
        top = np.float32(np.iinfo(outputs.dtype).max)
        total += np.float32(0.5)
        np.clip(total, 0, top, out=total)
        return total.astype(outputs.dtype)
    return total


def _feather_axis(src0: int, dst0: int, dst1: int, length: int, blend: int, scale: int):
    """One axis of a feathered tile, in output px: (source start, destination start and end,
    weights). The kept span grows by `blend` input px on each side that meets a neighbour;
    a ramp rises over [dst0 - blend, dst0 + blend) and falls over [dst1 - blend, dst1 + blend)."""
    lo = dst0 - blend if dst0 > 0 else dst0
    hi = min(dst1 + blend, length) if dst1 < length else dst1
    positions = np.arange(lo * scale, hi * scale, dtype=np.float64) + 0.5
    weight = np.ones(len(positions))
    width = 2 * blend * scale
    if dst0 > 0:
        weight *= _ramp((positions - (dst0 - blend) * scale) / width)
    if dst1 < length:
        weight *= 1.0 - _ramp((positions - (dst1 - blend) * scale) / width)
    return (src0 - dst0 + lo) * scale, lo * scale, hi * scale, weight.astype(np.float32)


def _ramp(t: np.ndarray) -> np.ndarray:
    """0 -> 1 as t goes 0 -> 1, raised cosine; ramp(t) + ramp(1 - t) = 1, so neighbours sum to one."""
    return 0.5 - 0.5 * np.cos(np.pi * np.clip(t, 0.0, 1.0))


def upscale_whole(run_model: RunModel, image: np.ndarray, scale: int, overlap: int) -> np.ndarray:
    """Run the model once on the mirrored-padded image and crop: the reference tiling must match.
    Float outputs come back as float32; integer outputs (a model that rounds) keep their dtype."""
    if image.ndim != 3:
        raise ValueError(f"expected an HxWxC array, got shape {image.shape}")
    height, width = image.shape[:2]
    padded = np.pad(image, ((overlap, overlap), (overlap, overlap), (0, 0)), mode="symmetric")
    batch = padded.astype(np.float32, copy=False)[None]
    output = np.asarray(run_model(batch))
    if output.dtype.kind == "f":
        output = output.astype(np.float32, copy=False)
    expected = (1, (height + 2 * overlap) * scale, (width + 2 * overlap) * scale)
    if output.shape[:3] != expected:
        raise ValueError(f"model returned shape {output.shape}, expected {expected + (output.shape[-1],)}")
    border = overlap * scale
    return output[0, border : border + height * scale, border : border + width * scale]


def receptive_radius_from_impulse(run_model: RunModel, scale: int, channels: int = 3, size: int = 64) -> int:
    """Measure how far (in input pixels) a one-pixel change reaches in the output.

    Runs the model on a constant 0.5 image with and without a +0.5 impulse at the
    centre. This is a lower bound for nonlinear models (an impulse can vanish in
    a dead ReLU), so prefer a declared radius and use this to check it.
    """
    centre = size // 2
    flat = np.full((1, size, size, channels), 0.5, dtype=np.float32)
    poked = flat.copy()
    poked[0, centre, centre, :] += 0.5
    changed = np.abs(np.asarray(run_model(poked)) - np.asarray(run_model(flat))) > IMPULSE_TOLERANCE
    rows, cols = np.nonzero(changed[0].any(axis=-1))
    if rows.size == 0:
        return 0
    # Output pixel o belongs to input pixel o // scale; the distance that matters
    # for tiling is how many input pixels away from the centre that is.
    radius = int(max(np.abs(rows // scale - centre).max(), np.abs(cols // scale - centre).max()))
    if radius >= min(centre, size - 1 - centre):
        raise ValueError(f"impulse reaches the edge of a {size}x{size} probe; pass a larger size")
    return radius


def _plan_axis(length: int, tile_size: int, overlap: int):
    """Plan one axis: padding (before, after) and per tile (origin, source span, destination span)."""
    core = tile_size - 2 * overlap
    # Mirror further on the far side only when the image is smaller than one tile,
    # so the single tile still has the fixed shape.
    extra = max(0, tile_size - (length + 2 * overlap))
    padded_length = length + 2 * overlap + extra
    n_tiles = math.ceil(length / core)
    # Regular steps of one core, then the last tile flush with the padded edge:
    # less wasted work than padding the image up to a multiple of the core.
    origins = [step * core for step in range(n_tiles - 1)] + [padded_length - tile_size]
    tiles = []
    for step, origin in enumerate(origins):
        dst = (step * core, min((step + 1) * core, length))
        # Image pixel d sits at padded pixel d + overlap, i.e. tile pixel d + overlap - origin.
        src = (dst[0] + overlap - origin, dst[1] + overlap - origin)
        tiles.append((origin, src, dst))
    return (overlap, overlap + extra), tiles


def _padded_indices(length: int, pad: tuple[int, int]) -> np.ndarray:
    """Source index of every pixel of the padded axis, using np.pad's own symmetric rule."""
    return np.pad(np.arange(length), pad, mode="symmetric")


def _as_slice_if_contiguous(indices: np.ndarray) -> slice | np.ndarray:
    """Turn a run of consecutive indices into a slice so numpy copies a view, not a gather."""
    if indices[-1] - indices[0] == len(indices) - 1 and np.all(np.diff(indices) == 1):
        return slice(int(indices[0]), int(indices[-1]) + 1)
    return indices
