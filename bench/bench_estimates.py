"""Cost and accuracy of the routing estimates (`sr_batch.estimates.estimate`) on natural-like images.

    python bench/bench_estimates.py               # ms per image at 0.25, 1 and 12 MP
    python bench/bench_estimates.py --accuracy    # also: true vs estimated JPEG quality and noise sigma

Images are the tests' dead-leaves pictures (`tests/test_estimates.natural_image`); the
12 MP one is the 1 MP one tiled, which costs the estimates the same as any 12 MP picture
(above 1 MP they read 16 tiles of 256^2, whatever the content). Each image is given as
JPEG bytes (quality 80) and its decoded pixels, as the job would have them; the time is
`estimate(data, pixels)` alone, best of --repeats after one warm-up call, one process,
and excludes the decode. Parts: the header, the tiles and their luma, blockiness, noise.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from sr_batch import estimates  # noqa: E402
from common import best_of  # noqa: E402
from test_estimates import add_noise, natural_image  # noqa: E402


def jpeg(array: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def print_cost(base: np.ndarray, repeats: int) -> None:
    print(f"{'image':>14} {'estimate ms':>12} {'header':>7} {'tiles+luma':>11} {'blockiness':>11} {'noise':>6}")
    sizes = {"0.25 MP 512^2": base[:512, :512], "1 MP 1024^2": base,
             "12 MP 4000x3000": np.tile(base, (3, 4, 1))[:3000, :4000]}
    for label, image in sizes.items():
        data = jpeg(image, 80)
        pixels = decode(data)
        tiles = estimates.sample_tiles(pixels)
        luma = estimates._tiles_luma(tiles)
        parts = [
            1000 * best_of(lambda: estimates.jpeg_quality_of(data), repeats),
            1000 * best_of(lambda: estimates._tiles_luma(estimates.sample_tiles(pixels)), repeats),
            1000 * best_of(lambda: estimates._tiles_blockiness(luma), repeats),
            1000 * best_of(lambda: estimates._tiles_noise_sigma(tiles, luma), repeats),
        ]
        total = 1000 * best_of(lambda: estimates.estimate(data, pixels), repeats)
        print(f"{label:>14} {total:12.1f} " + " ".join(f"{p:{w}.1f}" for p, w in zip(parts, (7, 11, 11, 6))))


def print_accuracy(base: np.ndarray) -> None:
    photo = base[:512, :768]
    print("\nJPEG quality (Pillow, 4:2:0): written -> estimated, standard tables; blockiness of the decode")
    print(f"  clean: blockiness {estimates.blockiness(estimates._tiles_luma(photo[None])[0]):.3f}")
    for quality in (10, 20, 30, 50, 75, 90, 95):
        data = jpeg(photo, quality)
        found = estimates.estimate(data, decode(data))
        print(f"  q{quality:<3d} -> {found.jpeg_quality:5.1f} {found.jpeg_standard_tables!s:>5}"
              f"   blockiness {found.blockiness:.3f}")
    print("\nnoise sigma (8-bit levels): added -> estimated (colour noise on RGB, grey noise on RGB, grey image)")
    grey = np.asarray(Image.fromarray(photo).convert("L"))
    for sigma in (0, 1, 2, 5, 10, 20):
        found = [estimates.noise_sigma(add_noise(photo, sigma, seed=sigma)),
                 estimates.noise_sigma(add_noise(photo, sigma, seed=sigma, grey=True)),
                 estimates.noise_sigma(add_noise(grey, sigma, seed=sigma))]
        print(f"  {sigma:3d} -> " + " ".join(f"{f:6.2f}" for f in found))
    print("\nnoise sigma read on JPEG decodes of the clean image (JPEG artefacts, no added noise)")
    for quality in (30, 50, 75, 90):
        print(f"  q{quality:<3d} -> {estimates.noise_sigma(decode(jpeg(photo, quality))):5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--accuracy", action="store_true", help="also print true vs estimated tables")
    args = parser.parse_args()
    base = natural_image(1024, 1024, seed=1)
    print_cost(base, args.repeats)
    if args.accuracy:
        print_accuracy(base)


if __name__ == "__main__":
    main()
