"""NIQE's cost per output megapixel, whole and by stage.

    python bench/bench_niqe.py                       # demo images, x2 bicubic outputs
    python bench/bench_niqe.py /data/Set14/HR        # your own images instead

Outputs are x2 bicubic upscales of the images (smooth like a model's output), tiled
to 0.25, 1 and 4 MP. For each: seconds per MP of `niqe.niqe` (the float32 scoring
path, shipped model), then of its stages: luma, the full-scale patch sums (MSCN
filter, products, per-patch sums), the half-size downscale, the half-scale sums, and
the vectorised GGD/AGGD fits with the distance. Every number is a best of --repeats
after one warm-up call, in one process; the whole call is also timed in CPU
seconds of the process (all its threads), which other processes inflate less than
wall time. On a shared machine both are upper bounds: the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sr_batch import niqe, resample  # noqa: E402
from common import best_of, upscaled_outputs  # noqa: E402

SIDES = (512, 1024, 2048)


def stages(image: np.ndarray, params: niqe.NiqeParams) -> dict:
    """The scoring path cut into its stages, each a callable on the previous stage's result."""
    patch = niqe.PATCH
    rows, cols = image.shape[0] // patch, image.shape[1] // patch
    cropped = image[: rows * patch, : cols * patch]
    luma = niqe.centred_luma(cropped)
    half = resample.resize_bicubic(luma, (luma.shape[1] // 2, luma.shape[0] // 2))
    sums = [niqe._patch_sums(luma, patch), niqe._patch_sums(half, patch // 2)]

    def fit_and_distance():
        features = np.concatenate([niqe._features_from_sums(sums[0], patch),
                                   niqe._features_from_sums(sums[1], patch // 2)], axis=1)
        return niqe.distance(params, features[~np.isnan(features).any(axis=1)])

    return {
        "luma (BT.601, float32)": lambda: niqe.centred_luma(cropped),
        "full scale: MSCN, products, sums": lambda: niqe._patch_sums(luma, patch),
        "half-size bicubic downscale": lambda: resample.resize_bicubic(luma, (luma.shape[1] // 2,
                                                                             luma.shape[0] // 2)),
        "half scale: MSCN, products, sums": lambda: niqe._patch_sums(half, patch // 2),
        "GGD/AGGD fits, MVG, distance": fit_and_distance,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", help="images to use (default: demo images made here)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    params = niqe.load_params()
    print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    for name, out in upscaled_outputs(args.folder, SIDES).items():
        mp = out.shape[0] * out.shape[1] / 1e6
        score = lambda: niqe.niqe(out, params)  # noqa: B023, E731 - called at once
        seconds = best_of(score, args.repeats)
        cpu_seconds = best_of(score, args.repeats, time.process_time)
        print(f"\n{name} output ({mp:.2f} MP): niqe {seconds / mp:.4f} s/MP wall, "
              f"{cpu_seconds / mp:.4f} s/MP CPU ({seconds:.3f} s, score {score():.2f})")
        for label, stage in stages(out, params).items():
            print(f"  {label:<36} {best_of(stage, args.repeats) / mp:.4f} s/MP")
    print(f"\nload average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
