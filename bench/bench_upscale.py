"""End-to-end throughput of `sr-batch run` beside the naive loop and the model alone.

    python bench/bench_upscale.py                      # 48 images of 256x256, default model
    python bench/bench_upscale.py --count 200 --size 512 --model subpixel

Prints, for the same generated images and the same model:
  e2e       sr-batch's run_job on a local Ray (decode, tile, infer, stitch, encode, stats)
  naive     one process: load the model, then per image predict on the whole image and save
  forward   the model's forward pass alone over the tiles the job runs (same batch size)
as output megapixels per second, and the ratios. Numbers depend on the machine:
the header records it, and only numbers from one machine should be compared.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from sr_batch.demo import make_images  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def bench_e2e(src: Path, out: Path, args) -> tuple[float, float]:
    from sr_batch.config import JobConfig
    from sr_batch.pipeline import init_ray, run_job

    init_ray(None)  # a cluster is already up in real use: Ray's start is not timed

    config = JobConfig(sources=(str(src),), output=str(out), model=args.model, scale=args.scale,
                       tile_size=args.tile_size, batch_size=args.batch_size, format="png")
    result = run_job(config, echo=lambda line: None)
    assert result.counts.get("ok") == args.count, result.counts
    return result.wall_s, result.output_megapixels_per_s


def bench_naive(src: Path, out: Path, spec) -> float:
    """What a newcomer writes: whole-image predict per image, then save."""
    import keras

    from sr_batch.models.registry import load_keras_model

    began = time.perf_counter()
    model = load_keras_model(spec)
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.glob("*.png")):
        pixels = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0
        result = model.predict(pixels[None], verbose=0)[0]
        Image.fromarray((np.clip(result, 0, 1) * 255 + 0.5).astype(np.uint8)).save(out / path.name)
    keras.backend.clear_session()
    return time.perf_counter() - began


def bench_forward(src: Path, spec, args, overlap: int) -> float:
    """Forward pass alone over exactly the tiles the job runs; decode not timed."""
    from sr_batch import tiling
    from sr_batch.models.registry import load_keras_model
    from sr_batch.upscaler import make_tf_batch_fn, to_float

    model = load_keras_model(spec)
    run, _ = make_tf_batch_fn(model, args.tile_size)
    tiles = np.concatenate([
        tiling.extract_tiles(to_float(np.asarray(Image.open(p).convert("RGB"))),
                             tiling.plan_tiles(args.size, args.size, args.tile_size, overlap))
        for p in sorted(src.glob("*.png"))])
    run(tiles[: args.batch_size])  # trace once, outside the timing
    began = time.perf_counter()
    for start in range(0, len(tiles), args.batch_size):
        run(tiles[start:start + args.batch_size])
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--model", default=None, help="zoo name (default: the zoo default)")
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--tile-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from sr_batch.models import registry

    spec = registry.resolve_model(args.model, args.scale)
    overlap = spec.receptive_radius
    out_mp = args.count * (args.size * args.scale) ** 2 / 1e6
    work = Path(tempfile.mkdtemp(prefix="sr-bench-"))
    try:
        make_images(work / "in", args.count, args.size)
        print(f"machine: {machine()}")
        print(f"workload: {args.count} images of {args.size}x{args.size}, model {spec.name} "
              f"x{args.scale}, tile {args.tile_size} overlap {overlap}, batch {args.batch_size}; "
              f"{out_mp:.1f} output MP")
        e2e_s, _ = bench_e2e(work / "in", work / "out", args)
        naive_s = bench_naive(work / "in", work / "naive", spec)
        forward_s = bench_forward(work / "in", spec, args, overlap)
        rows = [("e2e (sr-batch run)", e2e_s), ("naive loop", naive_s), ("forward only", forward_s)]
        print(f"{'path':<20} {'seconds':>8} {'MP/s out':>9}")
        for name, seconds in rows:
            print(f"{name:<20} {seconds:>8.2f} {out_mp / seconds:>9.3f}")
        print(f"e2e / forward = {forward_s / e2e_s:.2f}   e2e / naive = {naive_s / e2e_s:.2f}   "
              f"naive / forward = {forward_s / naive_s:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
