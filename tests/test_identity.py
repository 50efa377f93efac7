"""Pinned outputs: the per-image steps write the same bytes, fused and staged, as when the hashes
below were taken. Any change to decode, routing, tiling, the model call, resize or encode that
moves one output byte (or one stats value) shows here. No Ray: the actors are called directly."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from conftest import png_bytes, scene
from sr_batch import stats
from sr_batch.config import JobConfig

# Stats values compared beside the bytes (timings, worker and paths vary by run).
PINNED_COLUMNS = ("status", "error_type", "format", "bytes_out", "width", "height", "out_width",
                  "out_height", "outscale", "passes", "model", "denoise", "route", "tile_size",
                  "tile_overlap", "n_tiles", "jpeg_quality_est", "noise_sigma_est",
                  "psnr_y_consistency", "sharpness_ratio", "alpha_mode", "notes")


def _sources(folder) -> None:
    """Five small images: RGB PNG, JPEG q40, 16-bit grey PNG, RGBA PNG, and one broken file."""
    folder.mkdir()
    (folder / "a_rgb.png").write_bytes(png_bytes(scene(40, 52, seed=1)))
    buffer = io.BytesIO()
    Image.fromarray(scene(48, 64, seed=2)).save(buffer, format="JPEG", quality=40)
    (folder / "b_q40.jpg").write_bytes(buffer.getvalue())
    grey16 = (scene(36, 44, seed=3)[..., 0].astype(np.uint16) * 257 + 7)
    buffer = io.BytesIO()
    Image.fromarray(grey16).save(buffer, format="PNG")
    (folder / "c_grey16.png").write_bytes(buffer.getvalue())
    rgba = np.dstack([scene(30, 34, seed=4), np.linspace(0, 255, 30 * 34).reshape(30, 34).astype(np.uint8)])
    (folder / "d_rgba.png").write_bytes(png_bytes(rgba, "RGBA"))
    (folder / "e_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")


def _run(tmp_path, model: str, scale: int, staged: bool, **options) -> dict[str, tuple]:
    """{source name: (output SHA-256, pinned stats)} of one arrangement, run without Ray."""
    from sr_batch.pipeline import actor_settings
    from sr_batch.plan import plan_run

    source = tmp_path / "in"
    if not source.exists():
        _sources(source)
    out = tmp_path / f"out-{model}-{scale}-{staged}"
    config = JobConfig(sources=(str(source),), output=str(out), model=model, scale=scale,
                       provenance="none", images_per_call=8, **options)
    plan = plan_run(config, run_id="pinned")
    settings = actor_settings(plan, (1, 1))
    batch = plan.todo.select(["image_id", "uri", "relative_path", "bytes", "mtime", "output_uris",
                              "output_exts"] + [c for c in ("plan_error_type", "plan_error_message")
                                                if c in plan.todo.column_names])
    if staged:
        from sr_batch.actor import ModelActor
        from sr_batch.steps import cpu_stage

        table = cpu_stage(ModelActor(settings)(cpu_stage(batch, settings, 0)), settings, 2)
    else:
        from sr_batch.actor import UpscaleActor

        table = UpscaleActor(settings)(batch)
    result = {}
    for row in table.to_pylist():
        name = row["source_uri"].rsplit("/", 1)[-1]
        data = open(row["output_uri"].removeprefix("file://"), "rb").read() if row["output_uri"] else b""
        pinned = tuple(round(v, 6) if isinstance(v, float) else v for v in (row[c] for c in PINNED_COLUMNS))
        result[name] = (hashlib.sha256(data).hexdigest()[:16], pinned)
    return result


# Taken from the per-image path as it stood before the steps were rewritten as one list.
PINNED = {
    'bicubic x2': {
        'a_rgb.png': ('357f953f294b213a',
            ('ok', None, 'png', 1498, 52, 40, 104, 80, 2.0, 1, 'bicubic', None, None, 260, 2, 0, None, None, 53.322876, 1.00889, None, None)),
        'b_q40.jpg': ('fc39a1bfc4815028',
            ('ok', None, 'jpeg', 2741, 64, 48, 128, 96, 2.0, 1, 'bicubic', None, None, 260, 2, 0, None, None, 58.094255, 1.053802, None, None)),
        'c_grey16.png': ('7ab92596e8077b46',
            ('ok', None, 'png', 370, 44, 36, 88, 72, 2.0, 1, 'bicubic', None, None, 260, 2, 0, None, None, 67.840758, 1.000005, None, None)),
        'd_rgba.png': ('637d17eb37167fbc',
            ('ok', None, 'png', 1814, 34, 30, 68, 60, 2.0, 1, 'bicubic', None, None, 260, 2, 0, None, None, 51.666146, 1.008613, 'model', None)),
        'e_broken.png': ('e3b0c44298fc1c14',
            ('failed', 'corrupt_image', None, None, None, None, None, None, None, 0, 'bicubic', None, None, 260, 2, None, None, None, None, None, None, None)),
    },
    'residual x2': {
        'a_rgb.png': ('02d280a511175e10',
            ('ok', None, 'png', 5325, 52, 40, 104, 80, 2.0, 1, 'residual', None, None, 136, 4, 1, None, None, 51.034396, 7.207939, None, None)),
        'b_q40.jpg': ('74988be46c6b4b34',
            ('ok', None, 'jpeg', 2839, 64, 48, 128, 96, 2.0, 1, 'residual', None, None, 136, 4, 1, None, None, 65.314522, 1.421739, None, None)),
        'c_grey16.png': ('1510d83a3d3887ad',
            ('ok', None, 'png', 5656, 44, 36, 88, 72, 2.0, 1, 'residual', None, None, 136, 4, 1, None, None, 71.460978, 1.007392, None, None)),
        'd_rgba.png': ('524b1c44ccf9e033',
            ('ok', None, 'png', 4417, 34, 30, 68, 60, 2.0, 1, 'residual', None, None, 136, 4, 2, None, None, 49.164388, 6.600431, 'model', None)),
        'e_broken.png': ('e3b0c44298fc1c14',
            ('failed', 'corrupt_image', None, None, None, None, None, None, None, 0, 'residual', None, None, 264, 4, None, None, None, None, None, None, None)),
    },
    'auto x4': {
        'a_rgb.png': ('f57b10b076d66790',
            ('ok', None, 'png', 23422, 52, 40, 208, 160, 4.0, 1, 'quality_lite', None, 'clean (noise 0.1)', 158, 15, 1, None, 0.143931, 60.899787, 7.332448, None, None)),
        # Routing rules v3: a q40 JPEG takes real at denoise 0.75 (was 0.5), leaving less grid.
        'b_q40.jpg': ('903afbfb368ffa64',
            ('ok', None, 'jpeg', 6958, 64, 48, 256, 192, 4.0, 1, 'real', 0.75, 'jpeg q40', 158, 15, 1, 40.0, 0.461719, 49.144998, 2.142572, None, None)),
        'c_grey16.png': ('8528f85fe8dcf04c',
            ('ok', None, 'png', 24562, 44, 36, 176, 144, 4.0, 1, 'quality_lite', None, 'clean (noise 0.0)', 158, 15, 1, None, 0.0, 71.438785, 1.00948, None, None)),
        'd_rgba.png': ('13bcd3140229b291',
            ('ok', None, 'png', 16094, 34, 30, 136, 120, 4.0, 1, 'quality_lite', None, 'clean (noise 0.9)', 158, 15, 2, None, 0.885277, 59.84617, 5.069105, 'model', None)),
        'e_broken.png': ('e3b0c44298fc1c14',
            ('failed', 'corrupt_image', None, None, None, None, None, None, None, 0, 'quality_lite', None, None, 286, 15, None, None, None, None, None, None, None)),
    },
}


@pytest.mark.parametrize("model,scale", [("bicubic", 2), ("residual", 2), ("auto", 4)])
def test_outputs_are_the_pinned_bytes_fused_and_staged(tmp_path, model, scale):
    fused = _run(tmp_path, model, scale, staged=False)
    staged = _run(tmp_path, model, scale, staged=True)
    assert fused == staged
    assert fused == PINNED[f"{model} x{scale}"]
    assert sum(1 for sha, row in fused.values() if row[0] == stats.STATUS_OK) == 4
