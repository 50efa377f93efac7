"""The forward pass in ONNX Runtime beside TensorFlow, on the job's tiles.

    python bench/bench_onnx.py                                   # residual x2, quality_lite x2/x4
    python bench/bench_onnx.py --models quality:2 --repeats 5

For each zoo model: the .keras file run by `upscaler.make_tf_batch_fn` (one
traced function for the tile side, TensorFlow's default threads), and the same
model exported by `models.onnx_export.convert_keras` run by `make_onnx_batch_fn` on
ONNX Runtime's CPU provider with its default threads and with 2 intra-op threads.
Every call is one batch of --batch tiles of the job's small tile (a 128 px core
plus the model's receptive radius on each side). Output megapixels per second
count tile cores only (the pixels the job keeps); the median of --repeats calls
after one warm-up call. Also the largest 8-bit difference between the two
runtimes on the timed batch. Numbers depend on the machine and on its load (the
header records both); compare only numbers from one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

from sr_batch.config import DEFAULT_BATCH_SIZE, DEFAULT_TILE_CORE  # noqa: E402
from sr_batch.models import onnx as onnx_models  # noqa: E402
from sr_batch.models import onnx_export  # noqa: E402
from sr_batch.models import registry  # noqa: E402
from sr_batch.upscaler import make_tf_batch_fn, to_integer  # noqa: E402

DEFAULT_MODELS = "residual:2,quality_lite:2,quality_lite:4"
# ONNX Runtime's intra-op threads besides its default (0: one per physical core).
FIXED_THREADS = 2


def time_calls(run, batch: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    """Median seconds of `repeats` calls after a warm-up call, and the last output."""
    out = run(batch)
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        out = run(batch)
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds), out


def bench_model(name: str, scale: int, batch_size: int, repeats: int) -> list[tuple[str, float, int]]:
    """(runtime, output MP/s, 8-bit levels from TensorFlow's output) for one zoo model."""
    spec = registry.resolve_model(name, scale)
    model = registry.load_keras_model(spec)
    tile = DEFAULT_TILE_CORE + 2 * spec.receptive_radius
    batch = np.random.default_rng(0).random((batch_size, tile, tile, 3), dtype=np.float32)
    core_mp = batch_size * (DEFAULT_TILE_CORE * scale) ** 2 / 1e6
    data = onnx_export.convert_keras(model, name=spec.name)

    tf_run, _ = make_tf_batch_fn(model, tile)
    tf_s, reference = time_calls(tf_run, batch, repeats)
    rows = [("tensorflow", core_mp / tf_s, 0)]
    for label, threads in (("onnxruntime default threads", 0),
                           (f"onnxruntime {FIXED_THREADS} threads", FIXED_THREADS)):
        session = onnx_models.open_session(data, spec.name, threads)
        run, _ = onnx_models.make_onnx_batch_fn(session, tile, spec.name)
        seconds, out = time_calls(run, batch, repeats)
        levels = int(np.abs(to_integer(out, np.uint8).astype(np.int16)
                            - to_integer(reference, np.uint8)).max())
        rows.append((label, core_mp / seconds, levels))
    print(f"\n{name} x{scale}: {batch_size} tiles of {tile} px ({DEFAULT_TILE_CORE} px core + "
          f"2 x {spec.receptive_radius}), {core_mp:.2f} output MP (cores) per call", flush=True)
    for label, rate, levels in rows:
        print(f"  {label:<30} {rate:7.3f} MP/s out   ({levels} 8-bit levels from TensorFlow)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help="name:scale, comma-separated")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH_SIZE, help="tiles per call")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per runtime")
    args = parser.parse_args(argv)

    import onnxruntime
    import tensorflow as tf

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {load} (on a loaded machine times are upper bounds, rates lower bounds)")
    print(f"tensorflow {tf.__version__}, onnxruntime {onnxruntime.__version__} "
          f"({', '.join(onnx_models.session_providers())})")
    for item in args.models.split(","):
        name, scale = item.split(":")
        bench_model(name, int(scale), args.batch, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
