"""The zoo's forward pass on an accelerator, on any Keras 3 backend.

    KERAS_BACKEND=jax python bench/bench_gpu.py --results gpu.jsonl      # a GPU machine
    python bench/bench_gpu.py --quick                                    # smoke run on this CPU

The job's actors run TensorFlow; GPU machines without TensorFlow can still
time the same Keras models on JAX or torch. For each model (the zoo default
x2, `quality`, `quality_lite`), precision (float32 as the backend runs it,
and Keras' mixed_bfloat16 policy) and batch size, it times
`predict_on_batch` (compiled with `jit_compile=True`; on TensorFlow without
XLA, which has no kernel for the bicubic skip's ResizeBicubic) over batches of the
job's large tile (a 256 px core plus the model's receptive radius on each
side), with the input coming from host memory and the output going back to
it, as in the job. Output megapixels per second count tile cores only (the
pixels the job keeps).

The fraction of peak: the model's conv FLOPs per output pixel (its card's
`flops_per_pixel`, counted from the kernels) times the pixels the model
actually computes (whole padded tiles), per second, against a dense matrix
product of the same dtype timed on the same device (8192^3, `keras.ops.matmul`).
Numbers depend on the machine: the header records it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402 - after the path setup
import numpy as np  # noqa: E402

import sr_batch.models.layers  # noqa: E402,F401 - registers DepthToSpace
from sr_batch.config import LARGE_TILE_CORE  # noqa: E402
from sr_batch.errors import ModelNotFoundError  # noqa: E402
from sr_batch.models import registry  # noqa: E402
from sr_batch.models.architectures import build_model, conv_macs_per_output_pixel, receptive_radius  # noqa: E402
from sr_batch.runtime import device_name  # noqa: E402

SCALE = 2
PRECISIONS = ("float32", "mixed_bfloat16")


def _sync(value) -> float:
    """Force the computation behind `value` to finish (one scalar back to the host)."""
    return float(keras.ops.convert_to_numpy(keras.ops.cast(keras.ops.sum(value), "float32")))


def matmul_tflops(dtype: str, n: int, repeats: int) -> float:
    """Dense n x n x n matrix product rate on the backend's default device."""
    a = keras.random.normal((n, n), dtype=dtype, seed=1)
    b = keras.random.normal((n, n), dtype=dtype, seed=2)
    _sync(keras.ops.matmul(a, b))  # compile and warm
    began = time.perf_counter()
    for _ in range(repeats):
        c = keras.ops.matmul(a, b)
    _sync(c)
    return 2 * n ** 3 * repeats / (time.perf_counter() - began) / 1e12


def zoo_model(name: str, precision: str) -> tuple[keras.Model, dict]:
    """The zoo model `name` at x2 under `precision`; untrained weights if the zoo has no file yet."""
    keras.mixed_precision.set_global_policy(precision)
    try:
        spec = registry.resolve_model(None if name == "default" else name, SCALE)
    except ModelNotFoundError:  # an architecture the zoo has no x2 file for yet: time it untrained
        spec = None
    arch = next(e["arch"] for e in registry.read_index()["models"]
                if e["name"] == spec.name and int(e["scale"]) == SCALE) if spec else name
    model = build_model(arch, SCALE)
    if spec:
        model.set_weights(registry.load_keras_model(spec).get_weights())
    keras.mixed_precision.set_global_policy("float32")
    info = {"model": spec.name if spec else name, "arch": arch, "trained_weights": spec is not None,
            "params": int(model.count_params()), "radius": receptive_radius(arch, SCALE),
            "flops_per_pixel": 2 * conv_macs_per_output_pixel(model)}
    # XLA everywhere but TensorFlow, whose XLA has no ResizeBicubic (the bicubic skip) kernel.
    model.compile(jit_compile=keras.backend.backend() != "tensorflow")
    return model, info


def time_forward(model: keras.Model, info: dict, batch: int, core: int, min_s: float, max_calls: int) -> dict:
    side = core + 2 * info["radius"]
    tiles = np.random.default_rng(0).random((batch, side, side, 3), dtype=np.float32)
    began = time.perf_counter()
    model.predict_on_batch(tiles)  # trace + compile
    compile_s = time.perf_counter() - began
    calls, began = 0, time.perf_counter()
    while calls < max_calls and (calls < 3 or time.perf_counter() - began < min_s):
        out = model.predict_on_batch(tiles)  # numpy back on the host: synchronous
        calls += 1
    seconds = (time.perf_counter() - began) / calls
    assert out.shape == (batch, side * SCALE, side * SCALE, 3), out.shape
    core_mp = batch * (core * SCALE) ** 2 / 1e6
    computed_px = batch * (side * SCALE) ** 2
    return {"batch": batch, "tile": side, "core": core, "compile_s": round(compile_s, 2),
            "call_ms": round(seconds * 1e3, 2), "calls": calls,
            "mp_per_s": round(core_mp / seconds, 1),
            "tflops": round(info["flops_per_pixel"] * computed_px / seconds / 1e12, 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="default,quality,quality_lite")
    parser.add_argument("--batches", default="16,64", help="tiles per call, comma-separated")
    parser.add_argument("--core", type=int, default=LARGE_TILE_CORE, help="tile core, input px")
    parser.add_argument("--min-s", type=float, default=2.0, help="time each setting at least this long")
    parser.add_argument("--max-calls", type=int, default=200)
    parser.add_argument("--matmul-n", type=int, default=8192)
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: one small batch, small matmul")
    parser.add_argument("--results", help="append JSON lines here")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.core, args.min_s, args.max_calls, args.matmul_n = "2", 32, 0.0, 3, 512

    header = {"backend": keras.backend.backend(), "keras": keras.__version__, "device": device_name(),
              "host": platform.node(), "cpus": os.cpu_count()}
    peaks = {}
    for precision, dtype in (("float32", "float32"), ("mixed_bfloat16", "bfloat16")):
        peaks[precision] = round(matmul_tflops(dtype, args.matmul_n, 3 if args.quick else 20), 3)
    header["matmul_tflops"] = peaks
    print(json.dumps(header), flush=True)
    rows = [header]
    print(f"{'model':<14} {'precision':<15} {'batch':>5} {'tile':>5} {'ms/call':>9} {'MP/s':>8} "
          f"{'TFLOP/s':>8} {'of matmul':>9}", flush=True)
    for name in args.models.split(","):
        for precision in PRECISIONS:
            model, info = zoo_model(name, precision)
            for batch in (int(b) for b in args.batches.split(",")):
                result = {**info, "precision": precision,
                          **time_forward(model, info, batch, args.core, args.min_s, args.max_calls)}
                result["of_matmul_peak"] = round(result["tflops"] / peaks[precision], 3)
                rows.append(result)
                print(f"{result['model']:<14} {precision:<15} {batch:>5} {result['tile']:>5} "
                      f"{result['call_ms']:>9.2f} {result['mp_per_s']:>8.1f} {result['tflops']:>8.2f} "
                      f"{result['of_matmul_peak']:>9.1%}", flush=True)
    if args.results:
        with open(args.results, "a") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
