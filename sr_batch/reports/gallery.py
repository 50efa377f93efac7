"""Crops for the HTML gallery: image files read through fsspec in Python, never by DuckDB.

The three crops of an image (bicubic, output, reference) show the same output
pixels, so they can be compared side by side; an unreadable file is a
placeholder, not an error.
"""

from __future__ import annotations

import base64
import io
import logging
import math
from dataclasses import dataclass

import numpy as np

from sr_batch import storage

log = logging.getLogger(__name__)

GALLERY_MAX = 24  # per end (worst, best): 3 crops of ~6 KB each keep the page under ~1 MB
CROP_PX = 96  # side of the output crop shown in the gallery


@dataclass
class GalleryItem:
    """One image of the gallery: its row and up to three crops (data: URIs; None if unreadable)."""

    end: str  # "worst" or "best"
    row: dict
    crops: dict[str, str | None]


def make_crops(row: dict, side: int = CROP_PX) -> dict[str, str | None]:
    """Centre crops of the output, the bicubic-upscaled input and the reference, as data: URIs.

    The three show the same output pixels. The bicubic crop is upscaled from a
    slightly larger input region so its edges are not the image border's.
    """
    from sr_batch.resample import upscale_bicubic

    scale = int(row.get("scale") or 1)
    output = read_pixels(row.get("output_uri"))
    source = read_pixels(row.get("source_uri"))
    reference = read_pixels(row.get("reference_uri"))
    crops: dict[str, str | None] = {"bicubic": None, "output": None}
    if row.get("reference_uri"):
        crops["reference"] = None
    if source is None and output is None:
        return crops
    # The crop region in input pixels: centred, and whole input pixels so all three align.
    h, w = source.shape[:2] if source is not None else (output.shape[0] // scale, output.shape[1] // scale)
    c = max(1, min(math.ceil(side / scale), h, w))
    x0, y0 = (w - c) // 2, (h - c) // 2
    box = (y0 * scale, x0 * scale, c * scale)  # top, left, side in output pixels

    def crop(pixels: np.ndarray | None) -> str | None:
        top, left, size = box
        if pixels is None or pixels.shape[0] < top + size or pixels.shape[1] < left + size:
            return None
        return encode_jpeg_uri(pixels[top:top + size, left:left + size])

    crops["output"] = crop(output)
    if "reference" in crops:
        crops["reference"] = crop(reference)
    if source is not None:
        margin = 3  # bicubic's support is 2 input px each side
        px0, py0 = max(0, x0 - margin), max(0, y0 - margin)
        px1, py1 = min(w, x0 + c + margin), min(h, y0 + c + margin)
        up = upscale_bicubic(np.ascontiguousarray(source[py0:py1, px0:px1]), scale)
        top, left = (y0 - py0) * scale, (x0 - px0) * scale
        crops["bicubic"] = encode_jpeg_uri(up[top:top + c * scale, left:left + c * scale])
    return crops


def read_pixels(uri: str | None) -> np.ndarray | None:
    """HxWxC uint8 pixels of an image, or None if it is missing or unreadable."""
    from sr_batch.decode import decode_image

    if not uri:
        return None
    try:
        decoded = decode_image(storage.read_bytes(uri, retries=1), max_pixels=1 << 31)
    except Exception as exc:  # noqa: BLE001 - a thumbnail is a convenience: show a placeholder
        # Missing files are expected (moved inputs, failed runs); credentials or network
        # errors of a filesystem surface as their own exception types, so catch them all.
        log.info("gallery: cannot read %s: %s", uri, exc)
        return None
    pixels = decoded.pixels
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    return pixels


def encode_jpeg_uri(pixels: np.ndarray) -> str:
    """HxWxC uint8 pixels as a JPEG data: URI."""
    from PIL import Image

    image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    buffer = io.BytesIO()
    # 4:4:4 at q90: fine detail (what the crops are for) survives at ~6 KB a crop.
    image.save(buffer, format="JPEG", quality=90, subsampling=0)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
