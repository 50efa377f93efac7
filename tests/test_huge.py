"""Images above --max-pixels: tiled/stripped TIFF streams block by block in bounded memory."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile

from sr_batch import resample, streaming
from sr_batch.upscaler import Upscaler, make_tf_batch_fn, to_integer

from conftest import scene

# Peak RSS of the streaming child must stay under this for every image size:
# interpreter + numpy/pyarrow/Pillow/tifffile (~150 MB) plus one block's buffers.
RSS_BOUND_MB = 400


def pattern_tile(y: int, x: int, rows: int, cols: int) -> np.ndarray:
    """RGB uint8 content of the tile at (y, x) of an endless test pattern (edges and ramps)."""
    yy, xx = np.mgrid[y:y + rows, x:x + cols]
    return np.stack([(xx * 3 + yy) % 256, (yy * 5) % 256, (xx ^ yy) & 255], axis=2).astype(np.uint8)


def write_tiled_tiff(path: Path, side: int, tile: int = 256) -> None:
    """A side x side RGB tiled TIFF, written tile by tile so the generator itself is bounded."""
    def tiles():
        for y in range(0, side, tile):
            for x in range(0, side, tile):
                yield pattern_tile(y, x, tile, tile)

    with tifffile.TiffWriter(path) as writer:
        # Uncompressed: the 4096 px file (48 MB) is above the whole-read size, the 1024 px one
        # below it, so both ways into streaming are measured.
        writer.write(tiles(), shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile),
                     photometric="rgb", metadata=None)


def read_region(path: Path, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """A rectangle of a tiled TIFF without reading the rest."""
    with open(path, "rb") as handle:
        layout = streaming.read_layout(handle)
        with tifffile.TiffFile(handle) as tif:
            return streaming._RegionReader(tif.pages.first, tif.filehandle, layout).read(y0, y1, x0, x1)


CHILD = textwrap.dedent("""
    import json, resource, sys
    import pyarrow as pa
    from sr_batch.actor import UpscaleActor
    from sr_batch.settings import ActorSettings
    from sr_batch.layout import OutLayout
    from sr_batch.models.registry import bicubic_spec
    from sr_batch.tiling import Tiling

    source, out = sys.argv[1], sys.argv[2]
    layout = OutLayout.of(out)
    settings = ActorSettings(model=bicubic_spec(2), scale=2, tiling=Tiling((128,), 2), layout=layout,
                             batch_size=16, format="keep", quality=95, png_compress_level=1,
                             max_pixels=100_000, retries=0, intra_op_threads=1)
    row = {"image_id": "huge", "uri": source, "output_exts": ["tif"],
           "output_uris": [layout.images + "/huge.tif"]}
    stats = UpscaleActor(settings)(pa.Table.from_pylist([row])).to_pylist()[0]
    # VmHWM: the peak RSS of this process image alone. ru_maxrss would also count the
    # parent's RSS at fork (Linux keeps it across exec), e.g. a pytest that loaded TF.
    try:
        with open("/proc/self/status") as status:
            peak_mb = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"peak_mb": peak_mb, **{k: v for k, v in stats.items() if k != "finished_at"}}))
""")


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_image(tmp_path):
    peaks = {}
    for side in (1024, 4096):  # 16x the pixels
        source = tmp_path / f"in{side}.tif"
        write_tiled_tiff(source, side)
        proc = subprocess.run([sys.executable, "-c", CHILD, str(source), str(tmp_path / "out" / str(side))],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        assert row["status"] == "ok", row
        assert "streamed" in row["notes"] and row["format"] == "tiff"
        assert row["psnr_y_consistency"] is None and row["sharpness_ratio"] is None
        assert (row["out_width"], row["out_height"]) == (2 * side, 2 * side)
        out = Path(row["output_uri"].removeprefix("file://"))
        with tifffile.TiffFile(out) as tif:
            page = tif.pages.first
            assert tif.is_bigtiff and page.is_tiled
            assert page.shape == (2 * side, 2 * side, 3) and page.dtype == np.uint8
        # A few places, block seams included, against in-memory bicubic of a crop around them.
        block = streaming.choose_block_size(128, 2)
        for y, x in [(0, 0), (block - 40, block - 40), (side - 80, side - 80), (side - 80, 0)]:
            crop = read_region(source, max(0, y - 8), min(side, y + 88), max(0, x - 8), min(side, x + 88))
            expected = resample.upscale_bicubic(crop, 2)
            top, left = 2 * (y - max(0, y - 8)), 2 * (x - max(0, x - 8))
            got = read_region(out, 2 * y, 2 * y + 160, 2 * x, 2 * x + 160)
            np.testing.assert_array_equal(got, expected[top:top + 160, left:left + 160])
        peaks[side] = row["peak_mb"]
        out.unlink()
    print(f"peak RSS: {peaks[1024]:.0f} MB at 1024 px, {peaks[4096]:.0f} MB at 4096 px")
    assert max(peaks.values()) < RSS_BOUND_MB, peaks
    assert peaks[4096] < 1.25 * peaks[1024] + 50, peaks


@pytest.fixture(scope="module")
def tiny_model():
    import keras

    from sr_batch.models.architectures import build_model, receptive_radius

    keras.utils.set_random_seed(3)
    return build_model("residual", 2), receptive_radius("residual", 2)


@pytest.mark.parametrize("layout", [{"tile": (32, 48)}, {"rowsperstrip": 5}])
def test_streamed_blocks_equal_in_memory_upscale(tiny_model, layout, tmp_path):
    """Several blocks (block 32 px) of an RGBA image, tiled and stripped, through a Keras model."""
    net, radius = tiny_model
    tile_size = 2 * radius + 16
    run, _ = make_tf_batch_fn(net, tile_size)
    upscaler = Upscaler(run, 2, tile_size, radius, batch_size=8)
    rgb = scene(70, 90, seed=4)
    alpha = np.tile(np.linspace(0, 255, 90).astype(np.uint8), (70, 1))
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.dstack([rgb, alpha]), photometric="rgb", extrasamples=["unassalpha"],
                     compression="zlib", metadata=None, **layout)
    buffer.seek(0)

    result = streaming.upscale_tiff(buffer, str(tmp_path / "out.tif"), upscaler, alpha_mode="model",
                                    block=32)

    assert result.blocks == 3 * 3 and result.n_tiles > 0
    out = tifffile.imread(tmp_path / "out.tif")
    assert out.shape == (140, 180, 4)
    colour, alpha_out = upscaler.upscale([rgb, alpha[..., None]])
    # Same tiles' model, other tile positions: equal up to float rounding, i.e. one level.
    assert np.abs(out[..., :3].astype(int) - to_integer(colour.pixels, np.uint8)).max() <= 1
    assert np.abs(out[..., 3].astype(int) - to_integer(alpha_out.pixels, np.uint8)[..., 0]).max() <= 1
    assert out[..., 3].min() < 40 and out[..., 3].max() > 215


def test_sixteen_bit_grey_streams_with_bicubic_alpha(tmp_path):
    grey = (scene(40, 50)[..., 0].astype(np.uint16) * 257 + 7)
    alpha = np.tile(np.linspace(0, 65535, 50).astype(np.uint16), (40, 1))
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.dstack([grey, alpha]), photometric="minisblack", planarconfig="contig",
                     extrasamples=["unassalpha"], tile=(16, 16), metadata=None)
    buffer.seek(0)

    streaming.upscale_tiff(buffer, str(tmp_path / "out.tif"), Upscaler(None, 3, 16, 2, 4),
                           alpha_mode="bicubic", block=16)

    out = tifffile.imread(tmp_path / "out.tif")
    assert out.shape == (120, 150, 2) and out.dtype == np.uint16
    np.testing.assert_array_equal(out[..., 1], resample.upscale_bicubic(alpha, 3))
    assert np.abs(out[..., 0].astype(int) - resample.upscale_bicubic(grey, 3)).max() <= 1


def test_formats_that_cannot_stream_say_so(monkeypatch):
    from PIL import Image

    from sr_batch.errors import TooManyPixelsError

    png, one_strip, palette = io.BytesIO(), io.BytesIO(), io.BytesIO()
    Image.fromarray(scene(8, 8)).save(png, format="PNG")
    tifffile.imwrite(one_strip, np.zeros((1000, 1000, 3), np.uint8), photometric="rgb",
                     rowsperstrip=1000, metadata=None)
    tifffile.imwrite(palette, np.zeros((64, 64), np.uint8), photometric="palette",
                     colormap=np.zeros((3, 256), np.uint16), tile=(16, 16), metadata=None)
    monkeypatch.setattr(streaming, "MAX_SEGMENT_BYTES", 1 << 20)  # the whole image is one 2.9 MB strip
    too_big = TooManyPixelsError("1000000 pixels exceeds the limit of 100 (--max-pixels)")

    for source, reason in [(png, "PNG cannot be streamed"), (one_strip, "2 MB strips"),
                           (palette, "photometric PALETTE")]:
        with pytest.raises(TooManyPixelsError, match=reason) as info:
            streaming.check_streamable(source, too_big)
        assert "exceeds the limit" in str(info.value) and "tiled TIFF" in str(info.value)


def test_block_size_fills_whole_tiles_and_aligns_to_16():
    for tile_size, overlap in [(128, 8), (128, 2), (512, 8), (40, 12), (16, 2)]:
        block = streaming.choose_block_size(tile_size, overlap)
        core = tile_size - 2 * overlap
        assert block % 16 == 0 and block >= 16
        region = block + 2 * overlap
        assert region <= max(1, -(-(streaming.BLOCK_TARGET + 2 * overlap) // core)) * core
