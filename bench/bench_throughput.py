"""End-to-end throughput of `sr-batch run` beside the model alone and the naive loop.

    python bench/bench_throughput.py --workload all              # the full bench (~30 min on 2 cores)
    python bench/bench_throughput.py --quick                     # smoke run: 1/10 of the counts
    python bench/bench_throughput.py --workload medium --models default --sections main,levers

For each model (the zoo default x2 and `quality`) and workload (small: 2000
of 128x128, medium: 200 of 512x512, large: 4 of 4096x4096), as output
megapixels per second:

  e2e            pipeline.run_job on a local Ray started before the timing (as a
                 running cluster would be): list, decode, tile, infer, stitch,
                 encode PNG, write, metrics, stats; wall_s of the run
  forward-tiles  the model's forward pass alone (one traced function per tile
                 side) over exactly the fixed-shape tiles the job runs, each image
                 in the tile side the job picks for it, batch_size tiles a call;
                 output pixels counted once (tile cores), tiling not timed
  forward-whole  the model on whole images (a batch of same-size images, about
                 as many pixels as a tile batch; no tiles, no padding)
  naive          one process: whole-image model.predict per image, Pillow save
                 with default PNG settings (model load not timed)

forward-* and naive run in a child process each (an out-of-memory kill is a
result, not a crash) and are rates over the first images, at least
--sample-s seconds of work (per-image cost is the same for same-size images).
Also: 1 -> 2 actors, peak RSS of driver + every Ray process (sampled every
0.2 s), the time breakdown from the run's stats and per stage in one process,
and the levers (PNG level, TF threads, batch sizes). Results stream to
--results as JSON lines. Numbers depend on the machine: the header records it;
compare only numbers from one machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from sr_batch.demo_images import make_images  # noqa: E402
from sr_batch.config import DEFAULT_TILE_CORE, LARGE_TILE_CORE  # noqa: E402

SCALE = 2
# (count, side): small, medium and large workloads.
WORKLOADS = {"small": (2000, 128), "medium": (200, 512), "large": (4, 4096)}
QUICK_DIVISOR = 10
# Stage timings past the decode use at most this input side of a large image.
STAGE_CROP = 1024
# A child that grows past this share of the memory available at its start stops itself
# (a whole 4096^2 image through the model needs more than this machine has).
CHILD_MEMORY_SHARE = 0.8
QUICK_LARGE_SIDE = 2048
SECTIONS = ("main", "scaling", "memory", "levers")


@dataclass(frozen=True)
class Workload:
    name: str
    count: int
    side: int

    @property
    def out_mp(self) -> float:
        return self.count * (self.side * SCALE) ** 2 / 1e6

    def label(self) -> str:
        return f"{self.name} ({self.count} x {self.side}^2)"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    import psutil

    memory_gb = psutil.virtual_memory().total / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {memory_gb:.0f} GB RAM, no GPU, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


@dataclass(frozen=True)
class ModelChoice:
    name: str
    """As asked for: default, quality, or a zoo name."""
    model: str | None
    """JobConfig.model."""
    label: str
    overlap: int | None = None
    """JobConfig.tile_overlap; None: the model's receptive radius."""
    precision: str = "float32"
    """JobConfig.precision, and the model of the forward and naive paths."""


def resolve_model_name(name: str, work: Path, precision: str = "float32") -> ModelChoice:
    """The model, with its label marked for --precision bfloat16 (every path runs in it)."""
    choice = _resolve_model_name(name, work)
    if precision == "float32":
        return choice
    return dataclasses.replace(choice, label=f"{choice.label} bf16", precision=precision)


def _resolve_model_name(name: str, work: Path) -> ModelChoice:
    """`default` is the zoo default; `quality`, if not in the zoo yet, is the quality
    architecture untrained (the same cost), saved to a file, with its declared radius
    (a probe of random weights sees less)."""
    from sr_batch.errors import ModelNotFoundError
    from sr_batch.models import registry

    if name == "default":
        return ModelChoice(name, None, registry.resolve_model(None, SCALE).name)
    try:
        return ModelChoice(name, registry.resolve_model(name, SCALE).name, name)
    except ModelNotFoundError:
        if name != "quality":
            raise
    # Random (not zero) last-conv weights, so the radius probe sees the whole receptive field.
    path = work / "quality_untrained_x2.keras"
    subprocess.run([sys.executable, "-c",
                    "import sys, keras; from sr_batch.models.architectures import build_model; "
                    f"keras.utils.set_random_seed(0); m = build_model('quality', {SCALE}); "
                    "k = m.get_layer('to_subpixels').kernel; "
                    "k.assign(keras.random.normal(k.shape, stddev=0.01)); m.save(sys.argv[1])",
                    str(path)], check=True, cwd=Path(__file__).resolve().parents[1])
    from sr_batch.models.architectures import receptive_radius

    return ModelChoice(name, str(path), "quality (architecture untrained: not in the zoo yet)",
                       receptive_radius("quality", SCALE))


# --- the child: model-only paths in a process of their own -------------------------------


def child_main(task: dict) -> None:
    """Run forward/naive/stage timings for one model and workload; print JSON lines."""
    from sr_batch import tiling
    from sr_batch.runtime import configure_tensorflow
    from sr_batch.config import JobConfig
    from sr_batch.plan import resolve_tiling

    configure_tensorflow(os.cpu_count() or 1)
    from sr_batch.models import registry

    spec = registry.resolve_model(task["model"], SCALE)
    model = registry.with_precision(registry.load_keras_model(spec), task.get("precision", "float32"))
    radius = task["overlap"] or spec.receptive_radius
    if radius is None:
        radius = tiling.receptive_radius_from_impulse(lambda x: model(x, training=False).numpy(), SCALE)
    defaults = JobConfig(sources=("-",), output="-")
    tiles = resolve_tiling(defaults, radius)
    # What the timed paths need of the job's settings: its tile sides, overlap and batch.
    config = SimpleNamespace(tile_sizes=tiles.sides, tile_overlap=tiles.overlap, batch_size=defaults.batch_size)
    paths = sorted(Path(task["folder"]).glob("*.png"))

    def emit(kind: str, **fields) -> None:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"kind": kind, "peak_rss_mb": round(peak_mb), **fields}), flush=True)

    current = {"kind": None}
    _watch_memory(current, emit)
    for path_kind in task["paths"]:
        current["kind"] = path_kind
        try:
            _run_path(path_kind, model, config, paths, task, emit)
        except Exception as exc:  # noqa: BLE001 - one failed path is a result; the others still run
            emit(path_kind, failed=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")


def _watch_memory(current: dict, emit) -> None:
    """Stop this process, reporting why, before it takes the machine's memory."""
    import psutil

    limit = CHILD_MEMORY_SHARE * psutil.virtual_memory().available
    me = psutil.Process()

    def watch() -> None:
        while True:
            rss = me.memory_info().rss
            if rss > limit:
                emit(current["kind"], failed=f"stopped at {rss / 2**30:.1f} GB RSS (limit "
                     f"{limit / 2**30:.1f} GB, {CHILD_MEMORY_SHARE:.0%} of available memory)")
                os._exit(3)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


def _run_path(path_kind, model, config, paths, task, emit) -> None:
    from sr_batch.upscaler import make_tf_batch_fn

    sample_s = task["sample_s"]
    if path_kind == "stages":
        emit("stages", **_time_stages(model, config, paths, sample_s))
    elif path_kind == "forward_tiles":
        run, traces = make_tf_batch_fn(model, config.tile_sizes)
        seconds, pixels, images = _time_forward_tiles(run, config, paths, sample_s)
        emit("forward_tiles", seconds=seconds, out_mp=pixels / 1e6, images=images,
             traces=traces(), tile_sizes=config.tile_sizes, overlap=config.tile_overlap)
    elif path_kind == "forward_whole":
        seconds, pixels, images = _time_forward_whole(model, config, paths, sample_s)
        emit("forward_whole", seconds=seconds, out_mp=pixels / 1e6, images=images)
    elif path_kind == "naive":
        seconds, pixels, images = _time_naive(model, paths, Path(task["naive_out"]), sample_s)
        emit("naive", seconds=seconds, out_mp=pixels / 1e6, images=images)


def _rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _time_forward_tiles(run, config, paths, sample_s) -> tuple[float, int, int]:
    """Timed: only the traced calls over the job's tiles (each image in the tile side the
    job picks for it), batch_size tiles each, packed across images as the actor packs them.
    Each tile counts its core's output pixels (the cores partition the image), so the rate
    may stop inside a large image."""
    from sr_batch import tiling
    from sr_batch.upscaler import Upscaler, to_float

    chooser = Upscaler(run, SCALE, config.tile_sizes, config.tile_overlap, config.batch_size)
    pending = {}  # tile side -> (tiles waiting for a batch, output pixels each stands for)
    for tile in config.tile_sizes:
        # Trace once per side, outside the timing.
        run(np.zeros((chooser.batch_for(tile), tile, tile, 3), np.float32))
        pending[tile] = (np.empty((0, tile, tile, 3), np.float32), np.empty(0, np.int64))
    seconds, pixels, images = 0.0, 0, 0
    for index, path in enumerate(paths):
        image = to_float(_rgb(path))
        plan = chooser.plan(image.shape[0], image.shape[1])
        tiles, cores = pending[plan.tile_size]
        pending[plan.tile_size] = (
            np.concatenate([tiles, tiling.extract_tiles(image, plan)]),
            np.concatenate([cores, [(b - t) * (r - l) * SCALE ** 2 for t, b, l, r in plan.destinations]]))
        images += 1
        last = index == len(paths) - 1
        for tile, (tiles, cores) in pending.items():
            batch = chooser.batch_for(tile)
            while len(tiles) >= batch or (last and len(tiles)):
                began = time.perf_counter()
                run(tiles[:batch])
                seconds += time.perf_counter() - began
                pixels += int(cores[:batch].sum())
                tiles, cores = tiles[batch:], cores[batch:]
                pending[tile] = (tiles, cores)
                if seconds >= sample_s:
                    return seconds, pixels, images
    return seconds, pixels, images


def _time_forward_whole(model, config, paths, sample_s) -> tuple[float, int, int]:
    """Timed: the model on batches of whole same-size images (about a tile batch of pixels)."""
    import tensorflow as tf

    from sr_batch.upscaler import to_float

    first = _rgb(paths[0])
    # The workload's images share one size: one trace (bicubic UpSampling2D needs known sides).
    forward = tf.function(lambda x: model(x, training=False),
                          input_signature=[tf.TensorSpec([None, *first.shape], tf.float32)])
    per_batch = max(1, config.batch_size * min(config.tile_sizes) ** 2 // (first.shape[0] * first.shape[1]))
    forward(to_float(first)[None])  # trace outside the timing
    seconds, pixels, images = 0.0, 0, 0
    for start in range(0, len(paths), per_batch):
        batch = np.stack([to_float(_rgb(p)) for p in paths[start:start + per_batch]])
        began = time.perf_counter()
        forward(batch).numpy()
        seconds += time.perf_counter() - began
        images += len(batch)
        pixels += batch.shape[0] * batch.shape[1] * batch.shape[2] * SCALE ** 2
        if seconds >= sample_s:
            break
    return seconds, pixels, images


def _time_naive(model, paths, out: Path, sample_s) -> tuple[float, int, int]:
    """What a newcomer writes: per image, decode, whole-image predict, save (Pillow defaults)."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    pixels, images = 0, 0
    for path in paths:
        rgb = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0
        result = model.predict(rgb[None], verbose=0)[0]
        Image.fromarray((np.clip(result, 0, 1) * 255 + 0.5).astype(np.uint8)).save(out / path.name)
        images += 1
        pixels += result.shape[0] * result.shape[1]
        if time.perf_counter() - began >= sample_s:
            break
    return time.perf_counter() - began, pixels, images


def _time_stages(model, config, paths, sample_s) -> dict:
    """Per stage, in one process, as the actor runs them; seconds per output megapixel."""
    from sr_batch import quality
    from sr_batch.decode import decode_image
    from sr_batch.encode import encode_image
    from sr_batch.upscaler import Upscaler, make_tf_batch_fn, to_integer

    run, _ = make_tf_batch_fn(model, config.tile_sizes)
    upscaler = Upscaler(run, SCALE, config.tile_sizes, config.tile_overlap, config.batch_size)
    upscaler.upscale([np.zeros((8, 8, 3), np.uint8)])  # trace outside the timing
    totals = dict.fromkeys(("decode", "infer", "tile_stitch", "to_uint8", "encode_png1",
                            "metrics"), 0.0)
    pixels = 0
    began = time.perf_counter()
    for path in paths:
        data = path.read_bytes()
        t0 = time.perf_counter()
        decoded = decode_image(data, 1 << 40)
        t1 = time.perf_counter()
        # Past the decode, a large image is timed on a crop: each stage's cost is per pixel.
        lr = np.ascontiguousarray(decoded.pixels[:STAGE_CROP, :STAGE_CROP])
        decode_share = lr.size / decoded.pixels.size
        (result,) = upscaler.upscale([lr])
        t2 = time.perf_counter()
        out = to_integer(result.pixels, np.uint8)
        t3 = time.perf_counter()
        encode_image(out, None, "png", png_compress_level=1)
        t4 = time.perf_counter()
        quality.no_reference_metrics(out, lr)  # the job's two reference-free metrics
        t5 = time.perf_counter()
        totals["decode"] += (t1 - t0) * decode_share
        totals["infer"] += result.infer_s
        totals["tile_stitch"] += (t2 - t1) - result.infer_s
        totals["to_uint8"] += t3 - t2
        totals["encode_png1"] += t4 - t3
        totals["metrics"] += t5 - t4
        pixels += out.shape[0] * out.shape[1]
        if time.perf_counter() - began >= sample_s:
            break
    return {"s_per_out_mp": {k: v / (pixels / 1e6) for k, v in totals.items()},
            "out_mp": pixels / 1e6}


# --- the parent: e2e runs on a local Ray, children for the rest -------------------------


class PeakRss:
    """Max over time of the summed RSS of this process and all its descendants (Ray's too)."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s, self.peak = interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval_s)


class Bench:
    def __init__(self, args, work: Path) -> None:
        self.args, self.work = args, work
        self.results = open(args.results, "a")
        self.folders: dict[tuple[int, int], Path] = {}

    def record(self, **fields) -> dict:
        self.results.write(json.dumps(fields) + "\n")
        self.results.flush()
        return fields

    def images(self, workload: Workload) -> Path:
        key = (workload.count, workload.side)
        if key not in self.folders:
            # A bigger set of the same side already holds these images (make_images is seeded).
            bigger = next((f for (c, s), f in self.folders.items() if s == workload.side and c >= workload.count), None)
            folder = self.work / f"in-{workload.count}x{workload.side}"
            if bigger is not None:
                folder.mkdir()
                for path in sorted(bigger.glob("*.png"))[: workload.count]:
                    os.link(path, folder / path.name)
            else:
                make_images(folder, workload.count, workload.side)
            self.folders[key] = folder
        return self.folders[key]

    def e2e(self, choice: ModelChoice, workload: Workload, **changes) -> dict:
        from sr_batch import pipeline, stats
        from sr_batch.config import JobConfig

        out = self.work / "out"
        # Not a JobConfig field: the lever is the pipeline's constant, set for this run only.
        calls_per_actor = changes.pop("calls_per_actor", pipeline.CALLS_PER_ACTOR)
        config = JobConfig(sources=(str(self.images(workload)),), output=str(out), model=choice.model,
                           precision=choice.precision, tile_overlap=choice.overlap, scale=SCALE, format="png", progress_s=1e9, **changes)
        default_calls, pipeline.CALLS_PER_ACTOR = pipeline.CALLS_PER_ACTOR, calls_per_actor
        try:
            with PeakRss() as rss:
                result = pipeline.run_job(config, echo=lambda line: None)
        finally:
            pipeline.CALLS_PER_ACTOR = default_calls
        assert result.counts.get("ok") == workload.count, result.counts
        table = stats.read_stats(str(out), result.run_id)
        sums = {c: float(np.nansum(table.column(c).to_numpy(zero_copy_only=False)))
                for c in ("decode_s", "infer_s", "encode_s", "total_s")}
        record = json.loads((out / "runs" / f"{result.run_id}.json").read_text())
        shutil.rmtree(out)
        time.sleep(2)  # let the run's actors exit before the next run's memory is sampled
        return {"wall_s": result.wall_s, "mp_s": result.output_megapixels_per_s,
                "peak_rss_mb": round(rss.peak / 2**20), "sums": sums,
                "actors": record["config"]["actors"], "tile_sizes": record["plan"]["tile_sides"],
                "calls_per_actor": calls_per_actor}

    def child(self, choice: ModelChoice, workload: Workload, paths: list[str]) -> dict:
        task = {"model": choice.model, "precision": choice.precision, "overlap": choice.overlap, "folder": str(self.images(workload)), "paths": paths,
                "sample_s": self.args.sample_s, "naive_out": str(self.work / "naive")}
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(task)],
                              capture_output=True, text=True)
        shutil.rmtree(self.work / "naive", ignore_errors=True)
        results = {}
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                item = json.loads(line)
                results[item.pop("kind")] = item
        if proc.returncode:
            reason = ("killed (out of memory?)" if proc.returncode < 0
                      else proc.stderr.strip().splitlines()[-1:])
            for kind in paths:
                results.setdefault(kind, {"failed": f"exit {proc.returncode}: {reason}"})
        return results


def workloads(args) -> list[Workload]:
    names = list(WORKLOADS) if args.workload == "all" else args.workload.split(",")
    out = []
    for name in names:
        count, side = WORKLOADS[name]
        if args.quick:
            count = max(1, count // QUICK_DIVISOR)
            side = QUICK_LARGE_SIDE if name == "large" else side
        out.append(Workload(name, count, side))
    return out


def halve(workload: Workload) -> Workload:
    return Workload(workload.name, max(1, workload.count // 2), workload.side)


def mp_s(item: dict) -> float | None:
    return item["out_mp"] / item["seconds"] if "seconds" in item else None


def fmt(value: float | None, digits: int = 2) -> str:
    return "failed" if value is None else f"{value:.{digits}f}"


def run_main(bench: Bench, choice: ModelChoice, rows: list) -> None:
    for workload in workloads(bench.args):
        print(f"\n[{choice.label}] {workload.label()}: {workload.out_mp:.0f} output MP", flush=True)
        e2e = bench.e2e(choice, workload)
        child = bench.child(choice, workload, ["stages", "forward_tiles", "forward_whole", "naive"])
        row = bench.record(section="main", model=choice.label, workload=workload.label(), e2e=e2e, **child)
        rows.append(row)
        s = e2e["sums"]
        print(f"  e2e {e2e['mp_s']:.2f} MP/s ({e2e['wall_s']:.1f} s, tiles {e2e['tile_sizes']}, "
              f"{e2e['actors'][1]} actor x {e2e['calls_per_actor']} calls), "
              f"peak RSS {e2e['peak_rss_mb']} MB")
        print(f"  stats (s, summed over images): decode {s['decode_s']:.1f}, infer {s['infer_s']:.1f}, "
              f"encode+write {s['encode_s']:.1f}, total {s['total_s']:.1f} = "
              f"{s['total_s'] / e2e['wall_s']:.2f} x wall (overlapping calls count twice; tiling, "
              f"stitching, metrics and Ray are outside total_s)")
        for kind in ("forward_tiles", "forward_whole", "naive"):
            item = child.get(kind, {})
            extra = f", {item['traces']} trace" if "traces" in item else ""
            print(f"  {kind:<14} {fmt(mp_s(item))} MP/s over {item.get('images', 0)} images"
                  f"{extra}, peak RSS {item.get('peak_rss_mb', '?')} MB {item.get('failed', '')}")
        if "stages" in child and "s_per_out_mp" in child["stages"]:
            per = child["stages"]["s_per_out_mp"]
            print("  stages, s per output MP: " + ", ".join(f"{k} {v:.3f}" for k, v in per.items()))


def print_table(rows: list) -> None:
    print("\n| model | workload | e2e MP/s | forward-tiles MP/s | forward-whole MP/s | naive MP/s "
          "| e2e / forward-tiles | e2e / naive |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        e2e, tiles, whole, naive = (row["e2e"]["mp_s"], mp_s(row.get("forward_tiles", {})),
                                    mp_s(row.get("forward_whole", {})), mp_s(row.get("naive", {})))
        print(f"| {row['model']} | {row['workload']} | {e2e:.2f} | {fmt(tiles)} | {fmt(whole)} "
              f"| {fmt(naive)} | {fmt(tiles and e2e / tiles)} | {fmt(naive and e2e / naive, 1)} |")


def run_e2e_variants(bench: Bench, choice: ModelChoice, section: str, workload: Workload,
                     variants: list[tuple[str, dict]]) -> None:
    for name, changes in variants:
        result = bench.e2e(choice, workload, **changes)
        bench.record(section=section, variant=name, workload=workload.label(), e2e=result)
        print(f"  {name:<34} {result['mp_s']:.2f} MP/s ({result['wall_s']:.1f} s), "
              f"peak RSS {result['peak_rss_mb']} MB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="all", help="all, or a comma list of small,medium,large")
    parser.add_argument("--models", default="default,quality", help="comma list: default, quality, zoo names")
    parser.add_argument("--precision", default="float32", choices=("float32", "bfloat16"),
                        help="model arithmetic of every path (e2e, forward, naive)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help=f"1/{QUICK_DIVISOR} of the counts, large at {QUICK_LARGE_SIDE}^2")
    parser.add_argument("--sample-s", type=float, default=8.0,
                        help="seconds of work the forward/naive rates are taken over (at least)")
    parser.add_argument("--results", default=os.path.join(tempfile.gettempdir(), "bench-throughput.jsonl"),
                        help="JSON lines, appended (default: %(default)s)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(json.loads(args.child))

    from sr_batch.ray_session import init_ray

    sections = args.sections.split(",")
    work = Path(tempfile.mkdtemp(prefix="sr-bench-"))
    bench = Bench(args, work)
    try:
        print(f"machine: {machine()}")
        print(f"bench: {' '.join(sys.argv)}", flush=True)
        bench.record(section="machine", machine=machine(), argv=sys.argv,
                     started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        init_ray(None)  # a cluster is already up in real use: Ray's start is not timed
        time.sleep(2)
        with PeakRss() as idle:
            time.sleep(1)
        bench.idle_rss_mb = round(idle.peak / 2**20)
        bench.record(section="idle", peak_rss_mb=bench.idle_rss_mb)
        # One untimed image first: Ray's worker pool and the page cache warm, as on a running cluster.
        models = [resolve_model_name(name, work, args.precision) for name in args.models.split(",")]
        bench.e2e(models[0], Workload("warm-up", 1, 128))
        default = models[0]
        rows: list = []
        if "main" in sections:
            for choice in models:
                run_main(bench, choice, rows)
            print_table(rows)
        chosen = [w for w in workloads(args)]
        # Scaling and levers run on half the medium and small workloads, each beside a run
        # with the default settings at the same count (a run's fixed start-up cost, ~5 s,
        # weighs the same on both sides).
        medium = next((halve(w) for w in chosen if w.name == "medium"), None)
        small = next((w for w in chosen if w.name == "small"), None)
        if "scaling" in sections and medium:
            print(f"\n[{default.label}] scaling, {medium.label()}, 0.5 CPU per actor, "
                  "TF threads as the pipeline decides (cores // actors):", flush=True)
            run_e2e_variants(bench, default, "scaling", medium, [
                ("1 actor (the default pool here)", {"actors": (1, 1), "cpus_per_actor": 0.5}),
                ("2 actors", {"actors": (2, 2), "cpus_per_actor": 0.5})])
        if "memory" in sections and small:
            print(f"\n[{default.label}] peak memory vs image count (RSS of driver + every Ray "
                  f"process; idle Ray before any run: {bench.idle_rss_mb} MB):", flush=True)
            full = next((r for r in rows if r["model"] == default.label
                         and r["workload"] == small.label()), None)
            if full is None:
                run_e2e_variants(bench, default, "memory", small, [("default settings", {})])
            else:
                print(f"  {small.label()}: peak RSS {full['e2e']['peak_rss_mb']} MB (main run above)")
            fewer = Workload("small", max(1, small.count // 10), small.side)
            run_e2e_variants(bench, default, "memory", fewer, [(f"{fewer.label()}", {})])
        if "levers" in sections:
            print(f"\n[{default.label}] levers:", flush=True)
            if medium:
                print(f" {medium.label()} (baseline: the scaling section's 1-actor run):")
                run_e2e_variants(bench, default, "levers", medium, [
                    ("calls_per_actor 1 (default 2)", {"calls_per_actor": 1}),
                    ("png_compress_level 6 (default 1)", {"png_compress_level": 6}),
                    ("batch_size 32 (default 16)", {"batch_size": 32})])
                for choice in models:
                    radius = choice.overlap
                    if radius is None:
                        from sr_batch.models import registry

                        radius = registry.resolve_model(choice.model, SCALE).receptive_radius
                    one = DEFAULT_TILE_CORE + 2 * radius
                    print(f" [{choice.label}] {medium.label()}, tiles: the default pair "
                          f"({one}/{LARGE_TILE_CORE + 2 * radius} px) against one {one} px tile:")
                    run_e2e_variants(bench, choice, "levers", medium, [
                        ("default tiles", {}), (f"tile_size {one} only", {"tile_size": one})])
            if small:
                print(f" {halve(small).label()}:")
                run_e2e_variants(bench, default, "levers", halve(small), [
                    ("default settings", {}),
                    ("calls_per_actor 1 (default 2)", {"calls_per_actor": 1}),
                    ("images_per_call 32 (default 8)", {"images_per_call": 32})])
    finally:
        bench.results.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
