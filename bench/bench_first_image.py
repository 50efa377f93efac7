"""A run's fixed cost: one small image end to end, as a user trying the tool waits for it.

    python bench/bench_first_image.py                 # 120x80 PNG, default model and bicubic, 3 runs each
    python bench/bench_first_image.py --repeats 5 --side 120x80

Each run is a fresh `sr-batch run` process (interpreter start, imports, planning, the
executor's start, model load, the image, the bookkeeping), timed from outside, with each
executor: `local` (what `auto` picks for a local run of one actor call: every step in the
process, no Ray) and `ray` (a local Ray started by the run, an actor pool). Printed: wall
seconds (median, min, max) and the run record's phases (median). The machine should be
otherwise idle; compare numbers from one machine only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

PHASES = ("plan", "ray_start", "actor_setup", "first_rows", "run")


def one_run(source: Path, out: Path, model: str, executor: str) -> tuple[float, dict]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "sr_batch.cli", "run", str(source), "--output", str(out),
                           "--model", model, "--executor", executor, "--run-id", "first"],
                          capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"sr-batch run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    record = json.loads((out / "runs" / "first.json").read_text())
    return wall, record["phases_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--side", default="120x80", help="WIDTHxHEIGHT of the image (default 120x80)")
    parser.add_argument("--models", default="auto,bicubic", help="comma-separated (default auto,bicubic)")
    parser.add_argument("--executors", default="local,ray")
    args = parser.parse_args()
    width, height = map(int, args.side.split("x"))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"one {width}x{height} PNG, {args.repeats} runs each, a fresh process per run")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in"
        source.mkdir()
        y, x = np.mgrid[0:height, 0:width]
        picture = np.stack([x * 255 // width, y * 255 // height, (x + y) % 64 * 4], axis=2)
        picture = np.clip(picture + rng.normal(0, 2, picture.shape), 0, 255).astype(np.uint8)
        Image.fromarray(picture).save(source / "photo.png")
        print(f"{'model':<10} {'executor':<9} {'wall s (median, min-max)':>26}  "
              + "  ".join(f"{p:>11}" for p in PHASES))
        for model in args.models.split(","):
            for executor in args.executors.split(","):
                walls, phases = [], []
                for i in range(args.repeats):
                    wall, phase = one_run(source, Path(tmp) / f"out-{model}-{executor}-{i}", model, executor)
                    walls.append(wall)
                    phases.append(phase)
                cells = []
                for name in PHASES:
                    values = [p[name] for p in phases if p.get(name) is not None]
                    cells.append(f"{statistics.median(values):>11.2f}" if values else f"{'-':>11}")
                print(f"{model:<10} {executor:<9} {statistics.median(walls):>10.2f} "
                      f"({min(walls):.2f}-{max(walls):.2f})      " + "  ".join(cells))


if __name__ == "__main__":
    main()
