"""A generated stats dataset whose answers are known, shared by the report tests.

Import with `from reports.known_stats import ...` (tests/ is on the path).
"""

from __future__ import annotations

import datetime as dt
import json
import os

import numpy as np
from PIL import Image

from sr_batch import stats, storage
from sr_batch.resample import upscale_bicubic

from conftest import scene

RUN_A, RUN_B = "20260101T000000Z-aaaaaa", "20260102T000000Z-bbbbbb"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
IMAGES = [f"img{i:02d}" for i in range(10)]
DELTAS = [i - 4 for i in range(10)]  # run B's psnr_y_consistency minus run A's, per image


def _rows(output: str, run: str, model: str, consistency: list[float], images_root: str) -> list[dict]:
    rows = []
    for i, (image_id, value) in enumerate(zip(IMAGES, consistency)):
        with_reference = i < 5
        rows.append({
            "image_id": image_id, "status": "ok", "model": model, "scale": 2,
            "source_uri": f"{images_root}/in/{image_id}.png",
            "output_uri": f"{output}/images/{image_id}.png",
            "reference_uri": f"{images_root}/ref/{image_id}.png" if with_reference else None,
            "width": 32, "height": 32, "out_width": 64, "out_height": 64,
            "total_s": float(i + 1), "psnr_y_consistency": value,
            "sharpness_ratio": 1.0 + i / 10,
            "psnr_y": 25.0 + i if with_reference else None,
            "psnr_y_bicubic": 24.0 + i if with_reference else None,
            "finished_at": T0 + dt.timedelta(seconds=i),
        })
    return rows


def make_stats(output: str, images_root: str | None = None) -> None:
    """Run A: 10 ok (psnr_y_consistency 30..39), 2 failed; run B: the same 10 ok with DELTAS, 1 failed."""
    images_root = images_root or output
    consistency_a = [30.0 + i for i in range(10)]
    rows_a = _rows(output, RUN_A, "residual", consistency_a, images_root) + [
        {"image_id": "img10", "status": "failed", "model": "residual", "error_type": "corrupt_image",
         "error_message": "cannot decode image data: broken data stream", "source_uri": "x/img10.png",
         "finished_at": T0},
        {"image_id": "img11", "status": "failed", "model": "residual", "error_type": "missing_file",
         "error_message": "no such file: x/img11.png", "source_uri": "x/img11.png", "finished_at": T0},
    ]
    # Two parts, to read like a real run.
    stats.write_part(output, RUN_A, stats.make_table(rows_a[:6]), 0)
    stats.write_part(output, RUN_A, stats.make_table(rows_a[6:]), 1)
    storage.write_bytes_atomic(storage.join(output, "runs", f"{RUN_A}.json"), json.dumps(
        {"run_id": RUN_A, "started_at": "2026-01-01T00:00:00+00:00", "wall_s": 2.0,
         "model": {"name": "residual"}, "config": {"scale": 2}}).encode())

    consistency_b = [a + d for a, d in zip(consistency_a, DELTAS)]
    rows_b = _rows(output, RUN_B, "subpixel", consistency_b, images_root)
    for row in rows_b:
        row["finished_at"] += dt.timedelta(days=1)
    rows_b.append({"image_id": "img10", "status": "failed", "model": "subpixel",
                   "error_type": "corrupt_image", "error_message": "cannot decode image data: x",
                   "source_uri": "x/img10.png"})
    stats.write_part(output, RUN_B, stats.make_table(rows_b), 0)  # no run record: still running


def write_images(out: str, images_root: str) -> None:
    """Inputs, outputs (a sharpened bicubic) and references for the first 6 images; the rest missing."""
    for i, image_id in enumerate(IMAGES[:6]):
        lr = scene(32, 32, seed=i)
        up = upscale_bicubic(lr, 2)
        for folder, pixels in (("in", lr), ("ref", up), ("images", np.clip(up.astype(int) * 1.1, 0, 255))):
            root = out if folder == "images" else images_root
            os.makedirs(f"{root}/{folder}", exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(f"{root}/{folder}/{image_id}.png")
