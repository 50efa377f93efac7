"""How long `sr-batch report` takes over a million stats rows, and the memory it needs.

    python bench/bench_report.py                   # 1,000,000 rows in 3 runs, in a temp dir
    python bench/bench_report.py --rows 200000 --keep /tmp/stats-bench

Generates stats with numpy -> pyarrow (runs 1 and 2 share image ids, so they
can be compared; 2 % of rows failed), in a child process so that the peak RSS
printed is the report's alone. Then times, in one process over one DuckDB
connection: opening the stats, the per-run summary, the worst N, failures,
a run comparison, a model comparison, a --sql query (on the report's connection,
and on the locked-down one --sql opens), and the whole HTML report
(its gallery points at images that do not exist, so crops show "not readable").
Prints seconds per step; never fails on time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sr_batch import reports, stats, storage  # noqa: E402

RUNS = [("20260101T000000Z-aaaaaa", "residual"), ("20260102T000000Z-bbbbbb", "subpixel"),
        ("20260103T000000Z-cccccc", "residual")]
PARTS_PER_RUN = 4
ERROR_TYPES = np.array(["corrupt_image", "missing_file", "too_many_pixels", "read_error"])


def generate_run(output: str, run_id: str, model: str, first_id: int, n: int, seed: int) -> None:
    """n rows of one run, vectorised, written as PARTS_PER_RUN Parquet parts plus a run record."""
    rng = np.random.default_rng(seed)
    ids = np.arange(first_id, first_id + n)
    failed = rng.random(n) < 0.02
    ok = ~failed
    image_id = np.char.mod("img%08d", ids)
    width = rng.integers(256, 2048, n).astype(np.int32)
    height = rng.integers(256, 2048, n).astype(np.int32)
    has_ref = ok & (rng.random(n) < 0.3)
    psnr_bicubic = rng.normal(28, 3, n)
    started = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(days=seed)
    finished_us = (started.timestamp() * 1e6 + np.sort(rng.uniform(0, 3600e6, n))).astype(np.int64)

    def masked(values, mask):
        return pa.array(values, mask=~mask)

    columns = {
        "image_id": pa.array(image_id),
        # Local paths that do not exist: the gallery shows placeholders without network calls.
        "source_uri": pa.array(np.char.add(f"{output}/in/", np.char.add(image_id, ".jpg"))),
        "output_uri": masked(np.char.add(f"{output}/images/", np.char.add(image_id, ".png")), ok),
        "reference_uri": masked(np.char.add(f"{output}/ref/", np.char.add(image_id, ".png")), has_ref),
        "status": pa.array(np.where(ok, "ok", "failed")),
        "error_type": masked(ERROR_TYPES[rng.integers(0, len(ERROR_TYPES), n)], failed),
        "error_message": masked(np.char.add("generated failure of ", image_id), failed),
        "width": pa.array(width), "height": pa.array(height),
        "out_width": masked(width * 2, ok), "out_height": masked(height * 2, ok),
        "scale": pa.array(np.full(n, 2, np.int32)), "model": pa.array(np.full(n, model)),
        "total_s": pa.array(rng.lognormal(-1, 0.7, n)),
        "finished_at": pa.array(finished_us, pa.timestamp("us", tz="UTC")),
        "psnr_y_consistency": masked(rng.normal(38 + seed, 2.5, n), ok),
        "sharpness_ratio": masked(rng.lognormal(0.1, 0.2, n), ok),
        "psnr_y": masked(psnr_bicubic + rng.normal(1.0 + 0.2 * seed, 0.5, n), has_ref),
        "psnr_y_bicubic": masked(psnr_bicubic, has_ref),
    }
    table = pa.table(columns)
    table = pa.table({name: table.column(name) if name in columns else pa.nulls(n, dtype)
                      for name, dtype in zip(stats.SCHEMA.names, stats.SCHEMA.types)}, schema=stats.SCHEMA)
    step = -(-n // PARTS_PER_RUN)
    for seq in range(PARTS_PER_RUN):
        stats.write_part(output, run_id, table.slice(seq * step, step), seq)
    record = {"run_id": run_id, "started_at": started.isoformat(), "wall_s": 3600.0,
              "model": {"name": model}, "config": {"scale": 2}}
    storage.write_bytes_atomic(storage.join(output, "runs", f"{run_id}.json"), json.dumps(record).encode())


def generate(output: str, rows: int) -> None:
    per_run = rows // len(RUNS)
    for i, (run_id, model) in enumerate(RUNS):
        n = per_run + (rows - per_run * len(RUNS) if i == len(RUNS) - 1 else 0)
        # Runs 1 and 2 cover the same images; run 3 is half old images, half new.
        first = 0 if i < 2 else per_run // 2
        generate_run(output, run_id, model, first, n, seed=i)


def timed(label: str, call):
    began = time.perf_counter()
    result = call()
    print(f"{label:<34} {time.perf_counter() - began:8.3f} s", flush=True)
    return result


def bench(output: str) -> None:
    import duckdb  # noqa: F401 - imported now so the baseline RSS includes it

    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"RSS after imports: {baseline_mb:.0f} MiB")
    db = timed("open (list files, views)", lambda: reports.open_stats(output))
    latest = db.select_runs("latest")
    timed("register latest run", lambda: db.register("sel", latest))
    summary = timed("summary, latest run", lambda: reports.summarize(db))
    db.register("sel", list(db.runs))
    timed("summary, all runs", lambda: reports.summarize(db))
    timed("worst 10 by psnr_y_consistency", lambda: reports.rank_images(db, "psnr_y_consistency", 10))
    timed("failures by error_type", lambda: reports.group_failures(db))
    timed("compare run 1 with run 2", lambda: reports.compare(
        db, "psnr_y_consistency", 10, runs=(RUNS[0][0], RUNS[1][0])))
    timed("compare models (all runs)", lambda: reports.compare(
        db, "psnr_y_consistency", 10, models=("residual", "subpixel")))

    def sql(on: reports.StatsDB):
        schema, batches = reports.stream_sql(
            on, "SELECT run_id, model, count(*) AS n, avg(psnr_y - psnr_y_bicubic) AS gain "
                "FROM stats GROUP BY ALL ORDER BY run_id")
        return [b for b in batches]

    timed("--sql group by run_id, model", lambda: sql(db))
    # What --sql really opens: the stats as pyarrow datasets, DuckDB's file access off.
    sandbox = timed("open for --sql (pyarrow datasets)", lambda: reports.open_stats(output, user_sql=True))
    timed("--sql group by, pyarrow datasets", lambda: sql(sandbox))
    made = timed("html, 2 runs compared (build)", lambda: reports.build_report(
        db, plots=True, compare_runs=(RUNS[0][0], RUNS[1][0])))
    page = timed("html report (render)", lambda: reports.render_html(made))

    print(f"peak RSS so far: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    # The route remote stats take (s3://, gs://, memory://): a pyarrow dataset on fsspec.
    db._register_dataset("sel_pyarrow", [f for run in db.runs.values() for f in run.files])
    timed("summary, all runs, pyarrow route", lambda: reports.summarize(db, view="sel_pyarrow"))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"html size {len(page) / 1e3:.0f} kB; latest run: {summary.column('images')[0]} rows")
    print(f"peak RSS of the report process: {peak_mb:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", default=None, help="directory to generate into and keep (reused if present)")
    parser.add_argument("--generate-only", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate_only:
        generate(args.generate_only, args.rows)
        return

    import duckdb

    print(f"# {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, python "
          f"{platform.python_version()}, duckdb {duckdb.__version__}, pyarrow {pa.__version__}")
    root = args.keep or tempfile.mkdtemp(prefix="bench-report-")
    output = storage.to_uri(root)
    try:
        if not Path(root, "stats").exists():
            began = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--generate-only", output],
                           check=True)
            size = sum(p.stat().st_size for p in Path(root, "stats").rglob("*.parquet"))
            print(f"generated {args.rows:,} rows in {len(RUNS)} runs x {PARTS_PER_RUN} parts "
                  f"({size / 1e6:.0f} MB) in {time.perf_counter() - began:.1f} s")
        bench(output)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
