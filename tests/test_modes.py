"""Every kind of image a real archive holds, through one real job: mode, bit depth, size, alpha,
ICC and EXIF, orientation, animation and streaming of an image above --max-pixels."""

from __future__ import annotations

import functools
import io
import itertools
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms

from sr_batch import stats
from sr_batch.config import JobConfig
from sr_batch.decode import decode_image

from conftest import scene

pytestmark = pytest.mark.slow

H, W = 20, 28  # every ordinary test image; 560 px is far under MAX_PIXELS
MAX_PIXELS = 2000
ORIENTATION, MAKE = 0x0112, 0x010F


# --- building the archive ----------------------------------------------------------------


def alpha_ramp(height: int, width: int, top: int = 255) -> np.ndarray:
    """Fully transparent on the left, opaque on the right."""
    return np.tile(np.linspace(0, top, width), (height, 1)).astype(np.uint8 if top == 255 else np.uint16)


def deep(rgb: np.ndarray, seed: int = 0) -> np.ndarray:
    """16-bit planes whose low byte carries information (never x * 257)."""
    noise = np.random.default_rng(seed).integers(1, 200, rgb.shape)
    return (rgb.astype(np.uint32) * 256 + noise).astype(np.uint16)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png16(array: np.ndarray, icc: bytes | None = None, exif: bytes | None = None) -> bytes:
    """A 16-bit PNG from imagecodecs, with iCCP/eXIf chunks added after IHDR."""
    import imagecodecs

    data = imagecodecs.png_encode(array)
    extra = b""
    if icc:
        extra += png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(icc))
    if exif:
        extra += png_chunk(b"eXIf", exif.removeprefix(b"Exif\x00\x00"))
    return data[:33] + extra + data[33:]


@functools.cache
def srgb_icc() -> bytes:
    """One sRGB profile for the whole module (a new one carries a new creation time)."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_bytes(orientation: int | None = None) -> bytes:
    exif = Image.Exif()
    exif[MAKE] = "TestCam"
    if orientation:
        exif[ORIENTATION] = orientation
    return exif.tobytes()


def cmyk_icc() -> bytes:
    """A minimal ICC v2 CMYK printer profile (lut8 A2B0, Lab PCS) that prints every ink as grey.

    Pure cyan comes out neutral dark through this profile, but (0, 255, 255) through the
    naive formula, so a test can tell which conversion ran.
    """
    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    desc = b"test CMYK\x00"
    tags = [
        (b"desc", b"desc" + bytes(4) + struct.pack(">I", len(desc)) + desc + bytes(8 + 3 + 67)),
        (b"wtpt", b"XYZ " + bytes(4) + s15(0.9642) + s15(1.0) + s15(0.8249)),
        (b"cprt", b"text" + bytes(4) + b"none\x00"),
    ]
    clut = bytearray()
    for c, m, y, k in itertools.product((0, 1), repeat=4):  # the first channel varies slowest
        clut += bytes([round(255 * (1 - c) * (1 - m) * (1 - y) * (1 - k)), 128, 128])  # L*, a*=b*=0
    ramp = bytes(range(256))
    identity = b"".join(s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    tags.append((b"A2B0", b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + identity + ramp * 4
                 + bytes(clut) + ramp * 3))
    offset = 128 + 4 + 12 * len(tags)
    table, body = struct.pack(">I", len(tags)), b""
    for signature, data in tags:
        body += bytes(-(offset + len(body)) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = (struct.pack(">I", offset + len(body)) + bytes(4) + bytes([2, 0x10, 0, 0]) + b"prtr"
              + b"CMYK" + b"Lab " + bytes(12) + b"acsp" + bytes(28)
              + s15(0.9642) + s15(1.0) + s15(0.8249) + bytes(48))
    return header + table + body


def build_archive(root: Path) -> None:
    """One file per row of the input-modes table (docs/formats.md), plus metadata, orientation, animation and huge."""
    root.mkdir(parents=True)
    rgb, alpha = scene(H, W, seed=1), alpha_ramp(H, W)
    grey = rgb[..., 1]
    Image.fromarray(rgb).save(root / "rgb.png")
    Image.fromarray(np.dstack([rgb, alpha])).save(root / "rgba.png")
    Image.fromarray(np.dstack([grey, alpha]), "LA").save(root / "la.png")
    Image.fromarray(grey).save(root / "grey.png")
    indices = (np.arange(H * W).reshape(H, W) // 7 % 4).astype(np.uint8)
    palette = Image.fromarray(indices, "P")
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 250, 250, 250])
    palette.save(root / "palette_alpha.png", transparency=2)
    palette.save(root / "palette.gif")
    Image.fromarray(np.indices((H, W)).sum(axis=0) % 3 == 0).save(root / "bilevel.png")
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    cmyk = np.zeros((H, W, 4), np.uint8)
    cmyk[:, W // 2:, 0] = 255  # right half pure cyan, left half bare paper
    Image.fromarray(cmyk, "CMYK").save(root / "cmyk_icc.tif", icc_profile=cmyk_icc())

    rgb16, alpha16 = deep(rgb), alpha_ramp(H, W, top=65535)
    (root / "rgb16.png").write_bytes(png16(rgb16, icc=srgb_icc(), exif=exif_bytes()))
    (root / "rgba16.png").write_bytes(png16(np.dstack([rgb16, alpha16])))
    (root / "la16.png").write_bytes(png16(np.dstack([rgb16[..., 1], alpha16])))
    Image.frombytes("I;16", (W, H), np.ascontiguousarray(rgb16[..., 0], "<u2").tobytes()).save(
        root / "grey16.tif")
    tifffile.imwrite(root / "rgb16.tif", rgb16, photometric="rgb", iccprofile=srgb_icc(), metadata=None)
    tifffile.imwrite(root / "rgba16.tif", np.dstack([rgb16, alpha16]), photometric="rgb",
                     extrasamples=["unassalpha"], metadata=None)
    tifffile.imwrite(root / "la16.tif", np.dstack([rgb16[..., 1], alpha16]), photometric="minisblack",
                     planarconfig="contig", extrasamples=["unassalpha"], metadata=None)

    # Stored 20 wide x 10 high, left half white; orientation 6 shows it rotated clockwise.
    stored = np.zeros((10, 20, 3), np.uint8)
    stored[:, :10] = 255
    Image.fromarray(stored).save(root / "oriented.jpg", quality=95, exif=exif_bytes(orientation=6))
    (root / "oriented16.png").write_bytes(png16(deep(stored), exif=exif_bytes(orientation=6)))
    Image.fromarray(rgb).save(root / "icc_exif.png", icc_profile=srgb_icc(), exif=exif_bytes())

    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].convert("P").save(root / "anim.gif", save_all=True,
                                append_images=[f.convert("P") for f in frames[1:]], duration=100)
    frames[0].save(root / "anim.webp", save_all=True, append_images=frames[1:], lossless=True, duration=100)
    frames[0].save(root / "anim.png", save_all=True, append_images=frames[1:], duration=100)

    huge = np.dstack([scene(64, 96, seed=7), alpha_ramp(64, 96)])  # 6144 px > MAX_PIXELS
    tifffile.imwrite(root / "huge.tif", huge, photometric="rgb", extrasamples=["unassalpha"],
                     tile=(32, 32), compression="zlib", metadata=None)
    Image.fromarray(scene(50, 50)).save(root / "huge.png")  # 2500 px > MAX_PIXELS, cannot stream


@pytest.fixture(scope="module")
def archive(ray_local, tmp_path_factory):
    """The whole archive through one run_job: the zoo model, tiles of 32 px, alpha by the model."""
    from sr_batch.pipeline import run_job

    base = tmp_path_factory.mktemp("modes")
    build_archive(base / "in")
    result = run_job(JobConfig(sources=(str(base / "in"),), output=str(base / "out"),
                               model="residual", tile_size=32, max_pixels=MAX_PIXELS,
                               run_id="modes"), echo=lambda line: None)
    rows = {Path(r["source_uri"]).name: r for r in stats.read_stats(str(base / "out")).to_pylist()}
    return SimpleNamespace(root=base / "in", rows=rows, result=result)


def output_of(row: dict) -> tuple[bytes, object]:
    data = Path(row["output_uri"].removeprefix("file://")).read_bytes()
    return data, decode_image(data, 10**8)


# --- one row per mode --------------------------------------------------------------------

MODES = [
    # file, output format, colour channels, has alpha, bits per channel, note
    ("rgb.png", "png", 3, False, 8, None),
    ("rgba.png", "png", 3, True, 8, None),
    ("la.png", "png", 1, True, 8, None),
    ("grey.png", "png", 1, False, 8, None),
    ("palette_alpha.png", "png", 3, True, 8, "palette expanded to RGBA"),
    ("palette.gif", "png", 3, False, 8, "palette expanded to RGB"),
    ("bilevel.png", "png", 1, False, 8, None),
    ("cmyk.jpg", "jpeg", 3, False, 8, "CMYK converted to RGB"),
    ("cmyk_icc.tif", "tiff", 3, False, 8, "CMYK converted to sRGB through its ICC profile"),
    ("rgb16.png", "png", 3, False, 16, None),
    ("rgba16.png", "png", 3, True, 16, None),
    ("la16.png", "png", 1, True, 16, None),
    ("grey16.tif", "tiff", 1, False, 16, None),
    ("rgb16.tif", "tiff", 3, False, 16, None),
    ("rgba16.tif", "tiff", 3, True, 16, None),
    ("la16.tif", "tiff", 1, True, 16, None),
]


@pytest.mark.parametrize("name, fmt, colour, has_alpha, bits, note", MODES)
def test_mode(archive, name, fmt, colour, has_alpha, bits, note):
    row = archive.rows[name]
    assert row["status"] == "ok", (row["error_type"], row["error_message"])
    assert (row["bit_depth"], row["channels"]) == (bits, colour + has_alpha)
    assert row["format"] == fmt
    data, out = output_of(row)
    assert (out.width, out.height) == (2 * W, 2 * H) == (row["out_width"], row["out_height"])
    assert out.pixels.shape[2] == colour
    assert out.bit_depth == bits
    assert (out.alpha is not None) == has_alpha
    if has_alpha:
        top = np.iinfo(out.alpha.dtype).max
        assert out.alpha.min() < 0.2 * top and out.alpha.max() > 0.8 * top  # not simply opaque
        if not name.startswith("palette"):
            # The ramp survives: transparent on the left, opaque on the right.
            assert out.alpha[:, :4].max() < 0.2 * top and out.alpha[:, -4:].min() > 0.8 * top
    if bits == 16:
        assert (out.pixels % 257 != 0).any(), "16-bit output holds only 8 bits of information"
    if note:
        assert note in row["notes"]


def test_alpha_goes_through_the_model(archive):
    # With --alpha model (the default) the alpha plane is a second (grey) image in the batches.
    assert archive.rows["rgba.png"]["n_tiles"] == 2 * archive.rows["rgb.png"]["n_tiles"]
    _, out = output_of(archive.rows["rgba.png"])
    from sr_batch import resample

    bicubic = resample.upscale_bicubic(alpha_ramp(H, W), 2).astype(int)
    assert np.abs(out.alpha.astype(int) - bicubic).mean() < 8  # a ramp stays a ramp


def test_palette_transparency_becomes_alpha(archive):
    _, out = output_of(archive.rows["palette_alpha.png"])
    indices = (np.arange(H * W).reshape(H, W) // 7 % 4)
    transparent = np.kron(indices == 2, np.ones((2, 2), bool))
    # Away from the edges of transparent runs, alpha is 0 where index 2 was.
    assert np.median(out.alpha[transparent]) < 30 and np.median(out.alpha[~transparent]) > 225


def test_cmyk_goes_through_its_icc_profile(archive):
    _, out = output_of(archive.rows["cmyk_icc.tif"])
    cyan = out.pixels[:, W + 4:].astype(int)  # right half, away from the seam
    assert np.abs(cyan[..., 0] - cyan[..., 2]).max() < 12  # neutral, as the profile says
    assert cyan.max() < 60  # ... and dark, where the naive formula gives (0, 255, 255)
    assert out.pixels[:, :W - 4].min() > 240  # bare paper stays white
    assert out.icc_profile is None  # the CMYK profile does not describe the RGB output


# --- metadata -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["icc_exif.png", "rgb16.png"])
def test_icc_and_exif_round_trip_png(archive, name):
    data, _ = output_of(archive.rows[name])
    with Image.open(io.BytesIO(data)) as image:
        assert image.info.get("icc_profile") == srgb_icc()
        assert image.getexif().get(MAKE) == "TestCam"


def test_icc_round_trip_sixteen_bit_tiff(archive):
    path = archive.rows["rgb16.tif"]["output_uri"].removeprefix("file://")
    with tifffile.TiffFile(path) as tif:
        assert tif.pages.first.iccprofile == srgb_icc()
        assert tif.pages.first.dtype == np.uint16


@pytest.mark.parametrize("name", ["oriented.jpg", "oriented16.png"])
def test_orientation_is_applied(archive, name):
    row = archive.rows[name]
    data, out = output_of(row)
    assert (row["width"], row["height"]) == (10, 20)  # upright: stored 20x10, rotated
    assert (out.width, out.height) == (20, 40)
    top = np.iinfo(out.pixels.dtype).max
    assert out.pixels[:14].min() > 0.8 * top  # the stored left half is now on top
    assert out.pixels[26:].max() < 0.2 * top
    assert "EXIF orientation 6 applied" in row["notes"]
    with Image.open(io.BytesIO(data)) as image:
        exif = image.getexif()
        assert exif.get(MAKE) == "TestCam"  # other EXIF carried
        assert exif.get(ORIENTATION, 1) == 1  # viewers must not rotate it again


# --- animation ------------------------------------------------------------------------------


@pytest.mark.parametrize("name, fmt", [("anim.gif", "png"), ("anim.webp", "webp"), ("anim.png", "png")])
def test_animated_first_frame_with_a_note(archive, name, fmt):
    row = archive.rows[name]
    assert row["status"] == "ok" and row["format"] == fmt
    assert "animated (3 frames): first frame only" in row["notes"]
    _, out = output_of(row)
    assert (out.width, out.height) == (32, 32)
    red, green, blue = out.pixels[8:24, 8:24].reshape(-1, 3).mean(axis=0)
    assert red > 200 and green < 50 and blue < 50  # the first frame is the red one


# --- above --max-pixels ---------------------------------------------------------------------


def test_oversize_tiff_is_streamed(archive):
    row = archive.rows["huge.tif"]
    assert row["status"] == "ok", row["error_message"]
    assert "streamed" in row["notes"] and row["format"] == "tiff"
    assert row["psnr_y_consistency"] is None and row["n_tiles"] > 0
    path = row["output_uri"].removeprefix("file://")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff and tif.pages.first.is_tiled
        out = tif.asarray()
    assert out.shape == (128, 192, 4) and out.dtype == np.uint8
    assert out[..., 3][:, :8].max() < 50 and out[..., 3][:, -8:].min() > 200


def test_oversize_png_fails_cleanly(archive):
    row = archive.rows["huge.png"]
    assert row["status"] == "failed" and row["error_type"] == "too_many_pixels"
    assert "PNG cannot be streamed" in row["error_message"]
    assert "2500 pixels exceeds the limit of 2000" in row["error_message"]


def test_the_rest_of_the_archive_is_ok(archive):
    assert archive.result.counts == {"ok": len(archive.rows) - 1, "failed": 1}


# --- --alpha bicubic -------------------------------------------------------------------------


def test_alpha_bicubic_keeps_the_model_off_the_alpha(tmp_path):
    """The actor itself (no Ray): --alpha bicubic upscales alpha exactly as Pillow bicubic."""
    import pyarrow as pa

    from sr_batch import resample
    from sr_batch.actor import UpscaleActor
    from sr_batch.settings import ActorSettings
    from sr_batch.layout import OutLayout
    from sr_batch.models import registry
    from sr_batch.tiling import Tiling

    rgb, alpha = scene(H, W, seed=2), alpha_ramp(H, W)
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "a.png")
    spec = registry.resolve_model("residual", 2)
    layout = OutLayout.of(str(tmp_path / "out"))
    rows = {}
    for mode in ("bicubic", "model"):
        settings = ActorSettings(model=spec, scale=2, tiling=Tiling((32,), spec.receptive_radius),
                                 layout=layout, batch_size=8, format="keep", quality=95,
                                 png_compress_level=1, max_pixels=MAX_PIXELS, retries=0,
                                 intra_op_threads=1, alpha=mode)
        row = {"image_id": mode, "uri": f"file://{tmp_path}/a.png", "output_exts": ["png"],
               "output_uris": [f"{layout.images}/out-{mode}.png"]}
        rows[mode] = UpscaleActor(settings)(pa.Table.from_pylist([row])).to_pylist()[0]
        assert rows[mode]["status"] == "ok", rows[mode]["error_message"]
    _, bicubic = output_of(rows["bicubic"])
    _, model = output_of(rows["model"])
    np.testing.assert_array_equal(bicubic.alpha, resample.upscale_bicubic(alpha, 2))
    assert not np.array_equal(model.alpha, bicubic.alpha)
    assert rows["model"]["n_tiles"] == 2 * rows["bicubic"]["n_tiles"]
