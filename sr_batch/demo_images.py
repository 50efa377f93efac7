"""Pictures drawn on the spot: the demo's originals, and plain photo-like PNGs for the benches.

    render_original(height, width, seed, scale)   one high-resolution demo picture (an array):
                                                  six panels of what super-resolution shows
    make_images(folder, count, size)              plain photo-like PNGs (the benches' inputs)

Nothing is downloaded: text comes from Pillow's built-in font, everything else is drawn.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PANELS = ("text", "caption", "leaves", "zone_plate", "bars", "shapes")
"""One panel of each kind per picture, in an order drawn from the picture's seed."""

WORDS = ("super-resolution", "sr-batch demo", "The quick brown fox", "jumps over the lazy dog",
         "0123456789 +-=%", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz",
         "edges, text and texture", "Ray Data + Keras 3", "sharper than bicubic?")

# Text heights in input pixels: from barely legible in the input (4-6 px, where a model has the
# most to add over bicubic) to plainly readable.
TEXT_PX = (4, 5, 6, 8, 10, 13)
CAPTION_PX = (7, 10, 14)

# Dead leaves: opaque disks with radius density ~ r^-3 (scale invariant, like natural images),
# dropped until they would cover the panel this many times over.
LEAVES_COVER = 3.0
MAX_LEAVES = 20_000

# Zone plate: local frequency (cycles per input pixel) on the inscribed circle; the input's
# Nyquist limit is 0.5, so the rings inside can be restored and those in the corners cannot.
ZONE_EDGE_CYCLES = 0.45

# Bar periods in input pixels: 2 is the Nyquist limit, so the finest set is nearly lost in
# the input and the coarsest survives bicubic.
BAR_PERIODS = (4.0, 3.0, 2.5)

NOISE_SIGMA = 1.5  # 8-bit levels on the original: a little sensor-like grain


def render_original(height: int, width: int, seed: int = 0, scale: int = 2) -> np.ndarray:
    """An HxWx3 uint8 picture: six panels (text, a caption, dead leaves, a zone plate, bars,
    hard-edged shapes) over a smooth gradient, with a little noise.

    Sizes are set in pixels of the input it will be shrunk to (`scale` times smaller), so
    the same features sit near the input's limits at every scale.
    """
    if height < 8 * scale or width < 8 * scale:
        raise ValueError(f"a demo original needs at least {8 * scale}x{8 * scale} px, "
                         f"got {width}x{height}")
    rng = np.random.default_rng(seed)
    canvas = Image.fromarray(_gradient(height, width, rng))
    kinds = list(PANELS)
    rng.shuffle(kinds)
    for kind, box in zip(kinds, _panel_boxes(height, width, scale)):
        panel = _PAINTERS[kind](canvas.crop(box), rng, scale)
        canvas.paste(panel, box[:2])
    pixels = np.asarray(canvas, dtype=np.float32)
    pixels += NOISE_SIGMA * rng.standard_normal(pixels.shape, dtype=np.float32) + 0.5
    return np.clip(pixels, 0, 255).astype(np.uint8)


# --- panels ----------------------------------------------------------------------------


def _gradient(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth two-colour ramp in a random direction, with a soft radial light."""
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    angle = rng.uniform(0, 2 * math.pi)
    t = (x * math.cos(angle) + y * math.sin(angle)) / max(height, width)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    start, end = rng.uniform(40, 215, 3).astype(np.float32), rng.uniform(40, 215, 3).astype(np.float32)
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    spread = 2 * (0.4 * max(height, width)) ** 2
    light = np.exp(-(y - cy) ** 2 / spread) * np.exp(-(x - cx) ** 2 / spread)  # separable
    ramp = start + t[..., None] * (end - start) + 30 * light[..., None]
    return np.clip(ramp, 0, 255).astype(np.uint8)


def _panel_boxes(height: int, width: int, scale: int) -> list[tuple[int, int, int, int]]:
    """Six (left, top, right, bottom) boxes on a 3x2 grid (2x3 if portrait), a gap apart."""
    rows, cols = (2, 3) if width >= height else (3, 2)
    gap = max(scale, round(min(height, width) / 80))
    boxes = []
    for r in range(rows):
        for c in range(cols):
            left, right = round(c * width / cols) + gap, round((c + 1) * width / cols) - gap
            top, bottom = round(r * height / rows) + gap, round((r + 1) * height / rows) - gap
            boxes.append((left, top, right, bottom))
    return boxes


@functools.lru_cache(maxsize=64)
def _font(px: int) -> ImageFont.ImageFont:
    """Pillow's built-in font at `px` (FreeType); the fixed bitmap font where FreeType is missing."""
    try:
        return ImageFont.load_default(size=px)
    except (ImportError, OSError, TypeError):
        return ImageFont.load_default()


def _draw_lines(panel: Image.Image, sizes: list[int], ink: tuple[int, ...],
                rng: np.random.Generator) -> None:
    """Lines of WORDS at the given pixel heights, top to bottom while they fit."""
    draw = ImageDraw.Draw(panel)
    pad = max(2, sizes[0] // 2)
    y = pad
    for px in sizes:
        if y + px > panel.height:
            break
        font = _font(px)
        fitting = [w for w in WORDS if draw.textlength(w, font=font) <= panel.width - 2 * pad]
        words = fitting or [min(WORDS, key=len)]
        draw.text((pad, y), str(words[int(rng.integers(len(words)))]), font=font, fill=ink)
        y += round(px * 1.3)


def _fitted_sizes(heights_in_px: tuple[int, ...], scale: int, panel_height: int) -> list[int]:
    """Text heights on the original (input px times scale), shrunk together to fit the panel."""
    sizes = [h * scale for h in heights_in_px]
    needed = sum(round(s * 1.3) for s in sizes) + sizes[0]
    shrink = min(1.0, panel_height / needed)
    return [max(6, round(s * shrink)) for s in sizes]


def _text_panel(base: Image.Image, rng: np.random.Generator, scale: int) -> Image.Image:
    """Dark text in six sizes on a light card."""
    panel = Image.new("RGB", base.size, tuple(int(v) for v in rng.integers(225, 251, 3)))
    ink = tuple(int(v) for v in rng.integers(0, 70, 3))
    _draw_lines(panel, _fitted_sizes(TEXT_PX, scale, panel.height), ink, rng)
    return panel


def _caption_panel(base: Image.Image, rng: np.random.Generator, scale: int) -> Image.Image:
    """Larger text straight on the gradient, black or white, whichever stands out."""
    panel = base.copy()
    luma = float(np.asarray(panel.convert("L"), dtype=np.float32).mean())
    ink = (10, 10, 10) if luma > 128 else (245, 245, 245)
    _draw_lines(panel, _fitted_sizes(CAPTION_PX, scale, panel.height), ink, rng)
    return panel


def _leaves_panel(base: Image.Image, rng: np.random.Generator, scale: int) -> Image.Image:
    """Dead leaves: opaque disks of random colour, radius density ~ r^-3, later ones on top."""
    width, height = base.size
    panel = Image.new("RGB", base.size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(panel)
    r_min, r_max = 0.75 * scale, max(2.0 * scale, min(width, height) / 3)
    a, b = r_min ** -2, r_max ** -2
    covered, target, drawn = 0.0, LEAVES_COVER * width * height, 0
    while covered < target and drawn < MAX_LEAVES:
        n = 256
        radii = (a - rng.random(n) * (a - b)) ** -0.5  # inverse CDF of the r^-3 density
        xs, ys = rng.uniform(-radii, width + radii), rng.uniform(-radii, height + radii)
        greys = rng.uniform(15, 240, (n, 1))
        colours = np.clip(greys + rng.normal(0, 20, (n, 3)), 0, 255).astype(int).tolist()
        for r, cx, cy, colour in zip(radii.tolist(), xs.tolist(), ys.tolist(), colours):
            if covered >= target or drawn >= MAX_LEAVES:
                break
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(colour))
            covered += math.pi * r * r
            drawn += 1
    return panel


def _zone_plate_panel(base: Image.Image, rng: np.random.Generator, scale: int) -> Image.Image:
    """Concentric rings whose frequency grows with the radius, in two colours."""
    width, height = base.size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r2 = (x + 0.5 - width / 2) ** 2 + (y + 0.5 - height / 2) ** 2
    edge = min(width, height) / 2
    # phase k r^2 has local frequency k r / pi cycles per px: ZONE_EDGE_CYCLES / scale at the edge
    k = math.pi * (ZONE_EDGE_CYCLES / scale) / edge
    wave = 0.5 + 0.5 * np.cos(k * r2)
    dark, light = rng.uniform(0, 70, 3), rng.uniform(185, 255, 3)
    return Image.fromarray((dark + wave[..., None] * (light - dark)).astype(np.uint8))


def _bars_panel(base: Image.Image, rng: np.random.Generator, scale: int) -> Image.Image:
    """A resolution chart: vertical bars at BAR_PERIODS side by side on top, horizontal bars
    and slanted stripes below; hard edges."""
    width, height = base.size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    on = np.zeros((height, width), bool)
    top = y < height / 2
    thirds = np.minimum((x * len(BAR_PERIODS) / width).astype(int), len(BAR_PERIODS) - 1)
    for i, period in enumerate(BAR_PERIODS):
        cell = top & (thirds == i)
        on[cell] = ((x[cell] / (period * scale)) % 1.0) < 0.5
    bottom_left, bottom_right = ~top & (x < width / 2), ~top & (x >= width / 2)
    on[bottom_left] = ((y[bottom_left] / (BAR_PERIODS[1] * scale)) % 1.0) < 0.5
    angle = math.radians(rng.uniform(10, 35))
    along = x * math.cos(angle) + y * math.sin(angle)
    on[bottom_right] = ((along[bottom_right] / (3.5 * scale)) % 1.0) < 0.5
    ink, paper = rng.uniform(0, 60, 3), rng.uniform(200, 255, 3)
    return Image.fromarray(np.where(on[..., None], ink, paper).astype(np.uint8))


def _shapes_panel(base: Image.Image, rng: np.random.Generator, scale: int) -> Image.Image:
    """Hard-edged polygons, disks and thin lines in strong colours over the gradient, and a
    small checkerboard of 2-input-pixel squares."""
    panel = base.copy()
    draw = ImageDraw.Draw(panel)
    width, height = panel.size
    side = min(width, height)
    for _ in range(int(rng.integers(6, 10))):
        colour = tuple(int(v) for v in rng.permutation([rng.integers(0, 60), rng.integers(90, 170),
                                                        rng.integers(200, 256)]))
        cx, cy, size = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.12, 0.4) * side
        kind = rng.integers(0, 4)
        if kind == 0:  # a rotated square: slanted edges show a model's anti-aliasing
            turn = rng.uniform(0, math.pi / 2)
            corners = [(cx + size / 2 * math.cos(turn + q * math.pi / 2),
                        cy + size / 2 * math.sin(turn + q * math.pi / 2)) for q in range(4)]
            draw.polygon(corners, fill=colour)
        elif kind == 1:
            corners = [(cx + rng.uniform(-size, size) / 2, cy + rng.uniform(-size, size) / 2)
                       for _ in range(3)]
            draw.polygon(corners, fill=colour)
        elif kind == 2:
            draw.ellipse((cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2), fill=colour)
        else:
            end = (cx + rng.uniform(-side, side) / 2, cy + rng.uniform(-side, side) / 2)
            draw.line((cx, cy, *end), fill=colour, width=int(rng.integers(1, scale + 1)))
    cell = 2 * scale
    board = max(2, min(6, side // (4 * cell)))
    x0 = int(rng.integers(0, max(1, width - board * cell)))
    y0 = int(rng.integers(0, max(1, height - board * cell)))
    for i in range(board):
        for j in range(board):
            shade = (20, 20, 20) if (i + j) % 2 else (235, 235, 235)
            draw.rectangle((x0 + i * cell, y0 + j * cell, x0 + (i + 1) * cell - 1, y0 + (j + 1) * cell - 1),
                           fill=shade)
    return panel


_PAINTERS = {"text": _text_panel, "caption": _caption_panel, "leaves": _leaves_panel,
             "zone_plate": _zone_plate_panel, "bars": _bars_panel, "shapes": _shapes_panel}


# --- plain pictures for the benches ------------------------------------------------------


def make_images(folder: Path | str, count: int, size: int | tuple[int, int], seed: int = 0) -> list[Path]:
    """Write `count` photo-like PNGs: smooth gradients, a dark disk, stripes and mild noise.

    They compress like photographs (not like noise) and have edges for the model to sharpen.
    The benches time the job on these; the demo uses render_original.
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
