"""Images above --max-pixels, in bounded memory: tiled or stripped TIFF in, tiled BigTIFF out.

The image is never held whole. It is cut into square blocks of `block` input
pixels. Each block is read with `overlap` pixels of real context on every side
(clipped at the image's edges, where the Upscaler mirrors exactly as it does
for a whole image), upscaled through the same fixed-tile Upscaler, cropped to
its core and handed to the TIFF writer as one output tile, written at once.
With overlap >= the model's receptive radius the core equals what the
in-memory path computes, so blocks leave no seams.

Only the input strips or tiles around the current block are decoded and kept,
so peak memory follows the block, tile and batch sizes, plus, for a stripped
input, one band of full-width strips; not the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

import numpy as np

from sr_batch import resample
from sr_batch.decode import TIFF_MAGICS
from sr_batch.errors import CorruptImageError, ModelRunError, ReadError, TooManyPixelsError
from sr_batch.upscaler import Upscaler, to_integer

# Input px per block side to aim for: the output tile is block * scale px
# (1 MP per tile at x2), big enough that the 2 * overlap context re-computed
# around each block costs a few % of the tiles, small enough that one block's
# float tiles stay in the tens of MB.
BLOCK_TARGET = 512
# A strip or tile bigger than this holds too much of the image to stream it
# (e.g. a whole image stored as one strip).
MAX_SEGMENT_BYTES = 64 << 20
# TIFF tile sides must be multiples of 16.
_TIFF_TILE_ALIGN = 16
_ORIENTATION_TAG = 274


class NotStreamableError(Exception):
    """Why an oversize image cannot be streamed (becomes part of a too_many_pixels error)."""


@dataclass(frozen=True)
class TiffLayout:
    """What streaming needs to know about the first page of a TIFF."""

    width: int
    height: int
    colour: int
    """Colour samples: 1 (grey) or 3 (RGB)."""
    has_alpha: bool
    dtype: np.dtype
    """uint8 or uint16."""
    samples: int
    """Samples per pixel as stored, extra samples included."""
    orientation: int
    """TIFF Orientation tag (1 = upright)."""
    icc_profile: bytes | None
    pages: int

    @property
    def channels(self) -> int:
        return self.colour + int(self.has_alpha)

    @property
    def bit_depth(self) -> int:
        return 8 * np.dtype(self.dtype).itemsize


@dataclass
class StreamResult:
    """What streaming one image did."""

    out_width: int
    out_height: int
    blocks: int = 0
    n_tiles: int = 0
    infer_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def count_pixels(handle: BinaryIO) -> int | None:
    """Pixels of the (first) image, from the header alone; None when the header is unreadable."""
    from PIL import Image

    handle.seek(0)
    try:
        if handle.read(4) in TIFF_MAGICS:
            layout = read_layout(handle, check=False)
            return layout.width * layout.height
        handle.seek(0)
        with Image.open(handle) as image:
            return image.size[0] * image.size[1]
    except Exception:  # noqa: BLE001 - the full decode reports what is wrong with the file
        return None
    finally:
        handle.seek(0)


def check_streamable(handle: BinaryIO, too_big: TooManyPixelsError) -> TiffLayout:
    """The layout of an oversize image that can be streamed, else too_big with the reason."""
    try:
        return read_layout(handle)
    except NotStreamableError as exc:
        raise TooManyPixelsError(
            f"{too_big}; {exc}: only tiled or stripped TIFF is processed in bounded memory "
            "(convert it to a tiled TIFF)") from None


def read_layout(handle: BinaryIO, check: bool = True) -> TiffLayout:
    """Parse the TIFF header (no pixels); with `check`, raise NotStreamableError saying why not."""
    import tifffile

    handle.seek(0)
    if handle.read(4) not in TIFF_MAGICS:
        raise NotStreamableError(f"{_format_name(handle)} cannot be streamed")
    handle.seek(0)
    try:
        with tifffile.TiffFile(handle) as tif:
            page = tif.pages.first
            layout, reason = _layout_of(page, len(tif.pages))
    except Exception as exc:  # noqa: BLE001 - tifffile raises assorted errors on broken headers
        raise CorruptImageError(f"cannot parse TIFF header: {type(exc).__name__}: {exc}") from None
    finally:
        handle.seek(0)
    if check and reason:
        raise NotStreamableError(reason)
    return layout


def choose_block_size(tile_size: int, overlap: int, target: int = BLOCK_TARGET) -> int:
    """Input px per block side: a multiple of 16 whose region (block + 2 * overlap) fills whole tiles."""
    core = tile_size - 2 * overlap
    tiles = max(1, math.ceil((target + 2 * overlap) / core))
    return max(_TIFF_TILE_ALIGN, (tiles * core - 2 * overlap) // _TIFF_TILE_ALIGN * _TIFF_TILE_ALIGN)


def upscale_tiff(handle: BinaryIO, out_path: str, upscaler: Upscaler, *, alpha_mode: str = "model",
                 zlib_level: int = 1, block: int | None = None,
                 xmp: bytes | None = None) -> StreamResult:
    """Upscale the TIFF behind `handle` block by block into a tiled BigTIFF at `out_path`
    (with `xmp` as its XMP packet, tag 700)."""
    import tifffile

    layout = read_layout(handle)
    scale = upscaler.scale
    block = block or choose_block_size(upscaler.largest_tile, upscaler.overlap)
    if block % _TIFF_TILE_ALIGN:
        raise ValueError(f"block must be a multiple of {_TIFF_TILE_ALIGN}, got {block}")
    result = StreamResult(out_width=layout.width * scale, out_height=layout.height * scale)
    if layout.samples > layout.channels:
        result.notes.append(f"{layout.samples - layout.channels} extra sample(s) dropped")
    if layout.pages > 1:
        result.notes.append(f"multi-page ({layout.pages} pages): first page only")
    if layout.orientation != 1:
        result.notes.append(f"TIFF orientation {layout.orientation} kept as a tag, not applied (streamed)")
    handle.seek(0)
    with tifffile.TiffFile(handle) as tif:
        reader = _RegionReader(tif.pages.first, tif.filehandle, layout)
        tiles = _upscaled_blocks(reader, layout, upscaler, block, alpha_mode, result)
        shape = (result.out_height, result.out_width) + ((layout.channels,) if layout.channels > 1 else ())
        extratags = ([(_ORIENTATION_TAG, "H", 1, layout.orientation, True)]
                     if layout.orientation != 1 else [])
        if xmp:
            extratags.append((700, "B", len(xmp), xmp, True))
        with tifffile.TiffWriter(out_path, bigtiff=True) as writer:
            # maxworkers=1: tifffile otherwise buffers up to 512 MB of tiles to compress in threads.
            writer.write(tiles, shape=shape, dtype=layout.dtype, tile=(block * scale, block * scale),
                         photometric="rgb" if layout.colour == 3 else "minisblack",
                         planarconfig="contig" if layout.channels > 1 else None,
                         extrasamples=["unassalpha"] if layout.has_alpha else None,
                         compression="zlib", compressionargs={"level": max(1, zlib_level)},
                         iccprofile=layout.icc_profile, extratags=extratags, metadata=None,
                         maxworkers=1)
    return result


# --- internals -------------------------------------------------------------------------


def _format_name(handle: BinaryIO) -> str:
    from PIL import Image

    handle.seek(0)
    try:
        with Image.open(handle) as image:
            return image.format or "this format"
    except Exception:  # noqa: BLE001
        return "this format"


def _layout_of(page, pages: int) -> tuple[TiffLayout, str | None]:
    """Layout of a tifffile page and, when it cannot be streamed, why."""
    import tifffile

    photometric = page.photometric
    samples = page.samplesperpixel
    colour = 3 if photometric == tifffile.PHOTOMETRIC.RGB else 1
    extras = tuple(page.extrasamples or ())
    alpha_kinds = (tifffile.EXTRASAMPLE.ASSOCALPHA, tifffile.EXTRASAMPLE.UNASSALPHA)
    has_alpha = samples > colour and bool(extras) and extras[0] in alpha_kinds
    stored = np.dtype(page.dtype) if page.dtype is not None else np.dtype(np.float64)
    # Native byte order: segments of big-endian files are converted as they are copied.
    dtype = np.dtype(f"{stored.kind}{stored.itemsize}")
    layout = TiffLayout(width=int(page.imagewidth), height=int(page.imagelength), colour=colour,
                        has_alpha=has_alpha, dtype=dtype, samples=samples,
                        orientation=int(page.tags.valueof(_ORIENTATION_TAG, 1) or 1),
                        icc_profile=page.iccprofile, pages=pages)
    reason = None
    if photometric not in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB):
        reason = f"TIFF with photometric {getattr(photometric, 'name', photometric)} cannot be streamed"
    elif stored.kind != "u" or stored.itemsize not in (1, 2) or page.bitspersample not in (8, 16):
        reason = f"TIFF with {page.bitspersample}-bit {dtype} samples cannot be streamed"
    elif page.imagedepth > 1:
        reason = "volumetric TIFF cannot be streamed"
    else:
        segment_rows = page.tilelength if page.is_tiled else (page.rowsperstrip or page.imagelength)
        segment_cols = page.tilewidth if page.is_tiled else page.imagewidth
        per_plane = 1 if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE else samples
        segment = min(segment_rows, page.imagelength) * segment_cols * per_plane * dtype.itemsize
        if segment > MAX_SEGMENT_BYTES:
            reason = (f"TIFF stored in {segment >> 20} MB {'tiles' if page.is_tiled else 'strips'} "
                      "cannot be streamed")
    return layout, reason


class _RegionReader:
    """Reads rectangles of a TIFF page, decoding only the strips/tiles they touch."""

    def __init__(self, page, filehandle, layout: TiffLayout) -> None:
        import tifffile

        self.page, self.fh, self.layout = page, filehandle, layout
        if page.is_tiled:
            self.seg_h, self.seg_w = page.tilelength, page.tilewidth
        else:
            self.seg_h, self.seg_w = (page.rowsperstrip or layout.height), layout.width
        self.grid_cols = math.ceil(layout.width / self.seg_w)
        self.per_plane = math.ceil(layout.height / self.seg_h) * self.grid_cols
        self.separate = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and layout.samples > 1
        self.cache: dict[int, np.ndarray] = {}

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels [y0:y1, x0:x1] as (h, w, channels); forget segments this region does not touch."""
        channels = self.layout.channels
        out = np.empty((y1 - y0, x1 - x0, channels), self.layout.dtype)
        wanted = set()
        for row in range(y0 // self.seg_h, (y1 - 1) // self.seg_h + 1):
            for col in range(x0 // self.seg_w, (x1 - 1) // self.seg_w + 1):
                top, left = row * self.seg_h, col * self.seg_w
                for plane in range(channels if self.separate else 1):
                    index = plane * self.per_plane + row * self.grid_cols + col
                    wanted.add(index)
                    segment = self._segment(index)
                    a, b = max(y0, top), min(y1, top + segment.shape[0])
                    c, d = max(x0, left), min(x1, left + segment.shape[1])
                    part = segment[a - top:b - top, c - left:d - left]
                    if self.separate:
                        out[a - y0:b - y0, c - x0:d - x0, plane] = part[..., 0]
                    else:
                        out[a - y0:b - y0, c - x0:d - x0] = part[..., :channels]
        for index in [i for i in self.cache if i not in wanted]:
            del self.cache[index]
        return out

    def _segment(self, index: int) -> np.ndarray:
        """One decoded strip or tile as (rows, cols, samples)."""
        if index in self.cache:
            return self.cache[index]
        page = self.page
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
        try:
            if offset and count:
                self.fh.seek(offset)
                data = self.fh.read(count)
            else:
                data = None  # a sparse (never written) segment
        except OSError as exc:
            raise ReadError(f"cannot read TIFF segment {index}: {exc}") from None
        try:
            segment, _, shape = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as exc:  # noqa: BLE001 - codecs raise assorted errors on broken data
            raise CorruptImageError(f"cannot decode TIFF segment {index}: {type(exc).__name__}: {exc}") from None
        _, rows, cols, samples = shape
        if segment is None:
            segment = np.zeros((rows, cols, samples), self.layout.dtype)
        self.cache[index] = segment = np.asarray(segment).reshape(rows, cols, samples)
        return segment


def _upscaled_blocks(reader: _RegionReader, layout: TiffLayout, upscaler: Upscaler, block: int,
                     alpha_mode: str, result: StreamResult) -> Iterator[np.ndarray]:
    """Output tiles in row-major order, one per block; `result` counts tiles and model time."""
    scale, overlap = upscaler.scale, upscaler.overlap
    height, width = layout.height, layout.width
    for y0 in range(0, height, block):
        y1 = min(height, y0 + block)
        ry0, ry1 = max(0, y0 - overlap), min(height, y1 + overlap)
        for x0 in range(0, width, block):
            x1 = min(width, x0 + block)
            rx0, rx1 = max(0, x0 - overlap), min(width, x1 + overlap)
            region = reader.read(ry0, ry1, rx0, rx1)
            out = _upscale_region(upscaler, region, layout, alpha_mode, result)
            top, left = (y0 - ry0) * scale, (x0 - rx0) * scale
            tile = out[top:top + (y1 - y0) * scale, left:left + (x1 - x0) * scale]
            result.blocks += 1
            yield tile if layout.channels > 1 else tile[..., 0]


def _upscale_region(upscaler: Upscaler, region: np.ndarray, layout: TiffLayout, alpha_mode: str,
                    result: StreamResult) -> np.ndarray:
    """Colour (and alpha) of one region through the Upscaler, as integers of the input dtype."""
    colour = np.ascontiguousarray(region[..., :layout.colour])
    images = [colour]
    alpha = region[..., layout.colour] if layout.has_alpha else None
    if alpha is not None and alpha_mode == "model":
        images.append(np.ascontiguousarray(alpha)[..., None])
    try:
        upscaled = upscaler.upscale(images)
    except Exception as exc:  # noqa: BLE001 - one image's model failure is that image's row
        raise ModelRunError(f"{type(exc).__name__}: {exc}") from exc
    result.infer_s += sum(u.infer_s for u in upscaled)
    result.n_tiles += sum(u.n_tiles for u in upscaled)
    planes = [to_integer(upscaled[0].pixels, layout.dtype)]
    if alpha is not None:
        if alpha_mode == "model":
            planes.append(to_integer(upscaled[1].pixels, layout.dtype))
        else:
            planes.append(resample.upscale_bicubic(alpha, upscaler.scale)[..., None])
    return planes[0] if len(planes) == 1 else np.concatenate(planes, axis=2)
