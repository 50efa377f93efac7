"""What the pipeline around the model costs, fused and staged: core-seconds per output megapixel.

    python bench/bench_pipeline.py                          # 100 x 512^2 PNG, x2, bicubic and default
    python bench/bench_pipeline.py --count 200 --models bicubic --arrangements fused

For each model (`bicubic`, almost free, and the zoo default) and arrangement (fused: every step
in the model actor; staged: decode and encode/write/metrics as Ray Data CPU tasks):

  MP/s        output megapixels per second of `pipeline.run_job` (a local Ray started before
              the timing, as a running cluster would be; the run's own wall_s)
  core-s/MP   CPU time of every process on the machine (user + system, from /proc/stat) during
              the run, per output MP: the machine must be otherwise idle
  fixed       the same for a run of one image: actor start, model load, planning
  steady      (core-s of the run - core-s of the one-image run) / output MP
  non-model   steady minus the model's own forward cost per MP (bicubic: Pillow's resize)

Then each step alone in one process, CPU seconds per output MP: read + decode, the model (or
bicubic), encode PNG, write, metrics, and the Arrow hand-off the staged arrangement adds.
PNG output, metrics on (the defaults). Compare numbers from one machine only.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SCALE = 2


def machine() -> str:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GB, "
            f"Python {platform.python_version()}")


def photo_like(side: int, seed: int) -> np.ndarray:
    """A 512^2-ish RGB image that compresses like a photograph: shaded disks, soft texture, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    image = np.stack([0.5 + 0.3 * np.sin(3 * x + seed), 0.5 + 0.3 * np.cos(2 * y), 0.4 + 0.3 * x * y], 2)
    for _ in range(60):
        cy, cx = rng.uniform(0, 1, 2)
        r = 0.02 + 0.2 * rng.uniform() ** 3
        disk = (y - cy) ** 2 + (x - cx) ** 2 < r * r
        image[disk] = rng.uniform(0.05, 0.95, 3) * (0.8 + 0.2 * y[disk, None])
    image += rng.normal(0, 0.015, image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def busy_cpu_s() -> float:
    import psutil

    t = psutil.cpu_times()
    return sum(getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))


def timed_run(config) -> tuple[float, float, float]:
    """(wall s of the run, core-s of the machine during it, output MP)."""
    from sr_batch.pipeline import run_job

    cpu = busy_cpu_s()
    result = run_job(config, echo=lambda line: None)
    cpu = busy_cpu_s() - cpu
    if result.counts.get("ok", 0) == 0:
        raise SystemExit(f"the run failed: {result.counts}")
    out_mp = result.output_megapixels_per_s * result.wall_s
    return result.wall_s, cpu, out_mp


def per_step(model: str, paths: list[Path], work: Path, sample: int) -> dict[str, float]:
    """CPU seconds (all threads of this process) per output MP of each step alone."""
    from sr_batch import decode, encode, handoff, steps, storage
    from sr_batch.inference import build_upscaler
    from sr_batch.settings import ActorSettings
    from sr_batch.work import Work
    from sr_batch.layout import OutLayout
    from sr_batch.models import registry
    from sr_batch.plan import resolve_tiling
    from sr_batch.config import JobConfig

    spec = registry.resolve_model(model, SCALE)
    config = JobConfig(sources=("x",), output=str(work), model=model, scale=SCALE)
    settings = ActorSettings(
        model=spec, scale=SCALE, tiling=resolve_tiling(config, spec.receptive_radius),
        layout=OutLayout.of(str(work / "steps")), batch_size=config.batch_size, format="png",
        quality=95, png_compress_level=1, max_pixels=config.max_pixels, retries=0,
        intra_op_threads=os.cpu_count() or 1)
    upscaler, _ = build_upscaler(settings)
    measure = steps.Measure(settings)
    times = dict.fromkeys(("read + decode", "model", "encode PNG", "write", "metrics",
                           "Arrow hand-off (staged)"), 0.0)
    out_mp = 0.0
    upscaler.upscale([decode.decode_image(paths[0].read_bytes(), 10**9).pixels])  # warm-up (trace)
    for i, path in enumerate(paths[:sample]):
        row = {"uri": storage.to_uri(str(path)), "bytes": None}
        began = time.process_time()
        decoded, _, _ = steps.read_and_decode(settings, row)
        times["read + decode"] += time.process_time() - began
        began = time.process_time()
        (result,) = upscaler.upscale([decoded.pixels])
        times["model"] += time.process_time() - began
        out_mp += result.pixels.shape[0] * result.pixels.shape[1] / 1e6
        began = time.process_time()
        data = encode.encode_image(result.pixels, None, "png", png_compress_level=1)
        times["encode PNG"] += time.process_time() - began
        began = time.process_time()
        storage.write_bytes_atomic(storage.to_uri(str(work / "steps" / f"{i}.png")), data)
        times["write"] += time.process_time() - began
        began = time.process_time()
        measure._no_reference(result.pixels, decoded.pixels)
        times["metrics"] += time.process_time() - began
        w = Work(row={}, stats={}, decoded=decoded, output=result.pixels)
        began = time.process_time()
        handoff.from_arrow(handoff.to_arrow([w]))
        times["Arrow hand-off (staged)"] += time.process_time() - began
    return {name: seconds / out_mp for name, seconds in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100, help="images of --side px (default 100)")
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--models", default="bicubic,default", help="comma-separated; default = the zoo's x2 default")
    parser.add_argument("--arrangements", default="fused,staged")
    parser.add_argument("--step-sample", type=int, default=20, help="images timed step by step")
    args = parser.parse_args()

    import ray
    from PIL import Image

    from sr_batch.config import JobConfig
    from sr_batch.models import registry
    from sr_batch.ray_session import init_ray

    print(f"machine: {machine()}")
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    source = work / "in"
    source.mkdir()
    paths = []
    for i in range(args.count):
        paths.append(source / f"img{i:04d}.png")
        Image.fromarray(photo_like(args.side, i)).save(paths[-1], compress_level=6)
    one = work / "one"
    one.mkdir()
    Image.fromarray(photo_like(args.side, 0)).save(one / "img.png")
    init_ray(None)
    print(f"{args.count} PNG images of {args.side}^2 -> x{SCALE} PNG, metrics on; Ray: {ray.cluster_resources().get('CPU')} CPUs")
    models = [registry.resolve_model(None, SCALE).name if m == "default" else m for m in args.models.split(",")]
    print(f"{'model':<12} {'arrangement':<11} {'MP/s':>6} {'core-s/MP':>10} {'fixed core-s':>12} "
          f"{'steady core-s/MP':>16} {'non-model':>10}")
    for model in models:
        steps = per_step(model, paths, work, args.step_sample)
        for arrangement in args.arrangements.split(","):
            base = JobConfig(sources=(str(one),), output=str(work / f"o1-{model}-{arrangement}"),
                             model=model, scale=SCALE, format="png", arrangement=arrangement, force=True)
            _, fixed_cpu, _ = timed_run(base)
            config = base.replace(sources=(str(source),), output=str(work / f"o-{model}-{arrangement}"))
            wall, cpu, out_mp = timed_run(config)
            steady = (cpu - fixed_cpu) / out_mp
            print(f"{model:<12} {arrangement:<11} {out_mp / wall:>6.2f} {cpu / out_mp:>10.3f} "
                  f"{fixed_cpu:>12.1f} {steady:>16.3f} {steady - steps['model']:>10.3f}", flush=True)
        print(f"  steps alone, s per output MP ({model}, one process, {args.step_sample} images): "
              + ", ".join(f"{name} {seconds:.4f}" for name, seconds in steps.items()), flush=True)


if __name__ == "__main__":
    main()
