"""A user's heavy model in the job: end-to-end rate beside ONNX Runtime's forward-only rate
over the same tiles, and what the probe costs the first time and from its cache.

    python bench/bench_byom.py                          # an RRDB x4plus-size model (needs [torch])
    python bench/bench_byom.py --model my_x4.onnx --images 4 --size 96x112

Without --model it builds ESRGAN's RRDBNet at Real-ESRGAN x4plus's size (64 filters, 23
blocks: 16.7 M parameters) with seeded random weights, saves it as .pth and converts it
with `sr-batch convert` (models/convert.py): the same graph as the released x4plus, other
weights. Then, on a local Ray:

- the probe, timed twice: measured, then read from OUT/probes (plan.resolve_model);
- the job (`run_job`, default pool and threads) on --images and on 1 + 8 x --images images
  of --size, the probe cached; the marginal rate between the two runs (extra output pixels
  over extra seconds) is the steady-state rate, free of Ray's and the actors' start-up;
- ONNX Runtime alone on the large run's tiles: the tiles the job's Upscaler cuts for those
  images, in batches of the job's batch size, on a session with the actor's thread count.

Each is measured --rounds times, interleaved, and the fastest counts.

Rates are output megapixels per second of kept pixels (tile cores). Numbers depend on the
machine and its load; compare only numbers from one run.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from sr_batch.config import DEFAULT_BATCH_SIZE, JobConfig, local_cpu_count  # noqa: E402
from sr_batch.demo_images import render_original  # noqa: E402
from sr_batch.models import onnx as onnx_models  # noqa: E402
from sr_batch.model_probe import probe_on_ray  # noqa: E402
from sr_batch.pipeline import run_job  # noqa: E402
from sr_batch.plan import plan_run  # noqa: E402
from sr_batch.tiling import extract_tiles  # noqa: E402
from sr_batch.upscaler import Upscaler, to_float  # noqa: E402


def rrdb_x4plus(folder: Path) -> Path:
    """RRDBNet at x4plus's size, random weights, through `sr-batch convert`."""
    import torch
    from spandrel.architectures.ESRGAN import ESRGAN

    from sr_batch.models.convert import convert_model

    torch.manual_seed(0)
    module = ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=4).eval()
    torch.save(module.state_dict(), folder / "rrdb_x4plus.pth")
    began = time.perf_counter()
    result = convert_model(str(folder / "rrdb_x4plus.pth"), str(folder / "rrdb_x4plus.onnx"))
    print(f"convert: {time.perf_counter() - began:.1f} s; " + " | ".join(result.lines()[:1] + result.lines()[2:3]))
    return folder / "rrdb_x4plus.onnx"


def write_images(folder: Path, count: int, height: int, width: int) -> list[np.ndarray]:
    folder.mkdir(parents=True)
    images = []
    for i in range(count):
        image = render_original(height, width, seed=i)
        Image.fromarray(image).save(folder / f"img{i:03d}.png")
        images.append(image)
    return images


def forward_only(model: Path, plan, images: list[np.ndarray], threads: int) -> tuple[float, float]:
    """(seconds, kept output MP) of ONNX Runtime on the tiles the job cuts for these images."""
    session = onnx_models.open_session(model.read_bytes(), str(model), threads)
    run, _ = onnx_models.make_onnx_batch_fn(session, plan.tiling.sides)
    tiles = plan.tiling
    upscaler = Upscaler(run, plan.model.scale, tiles.sides, tiles.overlap, DEFAULT_BATCH_SIZE, blend=tiles.blend)
    by_side: dict[int, list[np.ndarray]] = {}
    for image in images:
        layout = upscaler.plan(*image.shape[:2])
        by_side.setdefault(layout.tile_size, []).append(extract_tiles(to_float(image), layout))
    run(np.concatenate(next(iter(by_side.values())))[:1])  # warm-up: ONNX Runtime's first call
    seconds = 0.0
    for side, groups in by_side.items():
        packed = np.concatenate(groups)
        step = upscaler.batch_for(side)
        for start in range(0, len(packed), step):
            began = time.perf_counter()
            run(packed[start:start + step])
            seconds += time.perf_counter() - began
    kept = sum(i.shape[0] * i.shape[1] for i in images) * plan.model.scale ** 2 / 1e6
    return seconds, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="an ONNX file (default: an RRDB x4plus-size model)")
    parser.add_argument("--images", type=int, default=1, help="images in the small run (the large: 1 + 8x)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of measurements; the fastest counts")
    parser.add_argument("--size", default="96x112", help="HxW of each input image")
    args = parser.parse_args()
    height, width = map(int, args.size.split("x"))
    folder = Path(tempfile.mkdtemp(prefix="sr-bench-byom-"))
    try:
        model = Path(args.model) if args.model else rrdb_x4plus(folder)
        print(f"machine: {platform.processor() or platform.machine()}, {local_cpu_count()} CPUs, "
              f"load {os.getloadavg()[0]:.1f}; model {model.name} ({model.stat().st_size / 1e6:.1f} MB)")
        small = write_images(folder / "small", args.images, height, width)
        large = write_images(folder / "large", 1 + 8 * args.images, height, width)
        out = folder / "out"
        config = JobConfig(sources=(str(folder / "small"),), output=str(out), model=str(model))
        timings = []
        for attempt in ("measured", "cached"):
            began = time.perf_counter()
            plan = plan_run(config, probe=probe_on_ray(None), size_calls=False)
            timings.append(time.perf_counter() - began)
        seam = plan.tiling.seam
        print(f"probe: {timings[0]:.1f} s measured (of which the probe task {plan.model.probe_s:.1f} s), "
              f"{timings[1]:.2f} s from OUT/probes; x{plan.model.scale}, exact tiling "
              f"{plan.model.tiles_exactly}, overlap {plan.tiling.overlap} px, feather {plan.tiling.blend} px, "
              f"seam bound max {seam[0]:.3f} / mean {seam[1]:.4f} levels")
        threads = local_cpu_count()  # a local run's one actor takes every core (pipeline._tf_threads)
        # Rounds of (ONNX Runtime alone, the small run, the large run), fastest of each kept:
        # on a machine others share, load that comes and goes then shows in no number.
        forward_s, walls = [], {"small": [], "large": []}
        for _ in range(args.rounds):
            forward_s.append(forward_only(model, plan, large, threads)[0])
            for images, source in ((small, "small"), (large, "large")):
                began = time.perf_counter()
                result = run_job(config.replace(sources=(str(folder / source),), force=True),
                                 echo=lambda line: None)
                walls[source].append(time.perf_counter() - began)
                assert result.counts.get("ok") == len(images), result.counts
        mp_s, mp_l = (sum(i.shape[0] * i.shape[1] for i in images) * plan.model.scale ** 2 / 1e6
                      for images in (small, large))
        wall_s, wall_l = min(walls["small"]), min(walls["large"])
        steady = (mp_l - mp_s) / (wall_l - wall_s)
        forward = mp_l / min(forward_s)
        print(f"e2e: {mp_s:.3f} MP out in {wall_s:.1f} s and {mp_l:.3f} MP in {wall_l:.1f} s "
              f"(fastest of {args.rounds}; with Ray and actor start-up {mp_l / wall_l:.4f} MP/s); "
              f"steady state {steady:.4f} MP/s")
        print(f"forward only (ONNX Runtime, {threads} threads, the large run's tiles, sides "
              f"{'/'.join(map(str, plan.tiling.sides))} px): {forward:.4f} MP/s (fastest of "
              f"{args.rounds}: {', '.join(f'{mp_l / t:.4f}' for t in forward_s)})")
        print(f"e2e steady / forward: {steady / forward:.1%}; load now {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
