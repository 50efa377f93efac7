"""The CPU work around the model, per output megapixel: PNG encoders and the metrics.

    python bench/bench_codecs.py                       # demo images, x2 bicubic outputs
    python bench/bench_codecs.py /data/Set14/HR        # your own images instead

Outputs are x2 bicubic upscales of the images (smooth like a model's output),
tiled to 1 MP and 16 MP. For each: seconds per output MP and file size over raw
size of

  - PNG: Pillow at level 1 (adaptive filter per row) against libpng through
    imagecodecs at level 1 with one filter, with zlib's default and run-length
    strategies (the job: Paeth and run-length at level 1), and level 6 of each
    (from level 4 the job uses Pillow: smaller files);
  - metrics: the two reference-free metrics (`psnr_y_consistency`,
    `sharpness_ratio`) by their RGB definitions against the luma-first pass the
    job makes (`quality.no_reference_metrics`), with the difference between them;
    and the float64 luma-gradient energy beside the float32 strips.

Every number is a best of --repeats after one warm-up call. One process, one thread.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import imagecodecs
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sr_batch import quality, resample  # noqa: E402
from sr_batch.encode import encode_image  # noqa: E402
from common import best_of, upscaled_outputs  # noqa: E402


def pillow_png(pixels: np.ndarray, level: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=level)
    return buffer.getvalue()


def float64_gradient_energy(image: np.ndarray) -> float:
    """The definition on whole float64 planes (the implementation before the strips)."""
    luma = quality.rgb_to_y(image)
    return float(np.mean(np.diff(luma, axis=1) ** 2) + np.mean(np.diff(luma, axis=0) ** 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", help="images to use (default: demo images made here)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for name, out in upscaled_outputs(args.folder, (1024, 4096)).items():
        mp = out.shape[0] * out.shape[1] / 1e6
        lr = resample.downscale_bicubic(out, 2)
        print(f"\n{name} output ({mp:.1f} MP), seconds per output MP:")
        for label, encode in (
                ("PNG Pillow level 1", lambda: pillow_png(out, 1)),
                ("PNG libpng level 1, Paeth", lambda: imagecodecs.png_encode(
                    out, level=1, filter=imagecodecs.PNG.FILTER.PAETH)),
                ("PNG libpng level 1, Paeth, RLE (the job)", lambda: encode_image(out, None, "png")),
                ("PNG Pillow level 6 (the job at 6)", lambda: encode_image(
                    out, None, "png", png_compress_level=6)),
                ("PNG libpng level 6, Paeth", lambda: imagecodecs.png_encode(
                    out, level=6, filter=imagecodecs.PNG.FILTER.PAETH))):
            seconds = best_of(encode, args.repeats)
            print(f"  {label:<40} {seconds / mp:.4f}   size {len(encode()) / out.nbytes:.3f} of raw")
        for label, measure in (
                ("luma gradient energy, float64 planes", lambda: float64_gradient_energy(out)),
                ("luma gradient energy, float32 strips", lambda: quality.gradient_energy_y(out)),
                ("psnr_y_consistency, RGB", lambda: quality.psnr_y_consistency(out, lr)),
                ("sharpness_ratio, RGB", lambda: quality.sharpness_ratio(out, lr)),
                ("both on luma (the job)", lambda: quality.no_reference_metrics(out, lr))):
            print(f"  {label:<40} {best_of(measure, args.repeats) / mp:.4f}")
        # The difference on an 8-bit bicubic output of the LR (the RGB path gives it exactly 1).
        bicubic = resample.upscale_bicubic(lr, 2)
        rgb = quality.psnr_y_consistency(bicubic, lr), quality.sharpness_ratio(bicubic, lr)
        luma = quality.no_reference_metrics(bicubic, lr)
        print(f"  luma - RGB on 8-bit bicubic of the LR: psnr_y_consistency {luma[0] - rgb[0]:+.3f} dB, "
              f"sharpness_ratio {luma[1] / rgb[1] - 1:+.2%}")


if __name__ == "__main__":
    main()
