"""Planning at scale: wall seconds and peak RSS of `plan_run` on a large manifest.

    python bench/bench_plan.py                      # 1,000,000 rows, earlier stats of 1,000,000
    python bench/bench_plan.py --rows 200000 --keep --work /tmp/plan-bench

Builds, under --work (a temporary folder unless given):
  manifest.parquet   --rows synthetic rows (file:// URIs under src/, with bytes and mtime);
  src/               real 640x480 images only where the header sample looks (16 files): any
                     other file does not exist, and a header read of it fails at once;
  out/stats/         one earlier run of --rows stats rows, written with stats.write_part in
                     parts of bookkeeping.FLUSH_ROWS rows (as a real run flushes them): half the
                     manifest unchanged under this run's settings (skipped), a fifth with a
                     changed size (changed source), 15% failed, and 15% for images no longer
                     in the manifest (so 15% of the manifest is new).

Then, each in a fresh process (so each peak RSS is its own):
  stages   the plan's stages one after the other (load manifest, plan outputs, join and
           split, sample headers): wall seconds of each, and the peak RSS after each;
  plan     plan_run(config) whole;
  dry-run  `sr-batch run MANIFEST --output OUT --model bicubic --dry-run` (when the CLI has it).

The machine is shared with trainings: times are upper bounds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

IMAGES_PER_FOLDER = 1000
SAMPLE_SIDE = (640, 480)  # the real files the header sample finds


def peak_rss_mb() -> float:
    """Peak resident set of this process so far, MB: VmHWM, which (unlike ru_maxrss) starts
    afresh at exec, so a child does not report the parent's size at the fork."""
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def cpu_s() -> float:
    """CPU seconds of this process (all threads): less at the mercy of a busy machine than wall."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


# --- data ------------------------------------------------------------------------------


def relative_paths(start: int, stop: int) -> pa.Array:
    index = pa.array(range(start, stop), pa.int64())
    folder = pc.cast(pc.divide(index, IMAGES_PER_FOLDER), pa.string())
    number = pc.utf8_lpad(pc.cast(index, pa.string()), 7, "0")
    return pc.binary_join_element_wise("d", folder, "/img", number, ".png", "")


def build_manifest(rows: int, path: Path, source_root: Path) -> None:
    relative = relative_paths(0, rows)
    uris = pc.binary_join_element_wise(f"file://{source_root}/", relative, "")
    mtime = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    pq.write_table(pa.table({
        "uri": uris,
        "bytes": pa.array(range(10_000, 10_000 + rows), pa.int64()),
        "mtime": pa.array([mtime] * rows, pa.timestamp("us", tz="UTC")),
    }), path)


def build_sample_files(rows: int, source_root: Path) -> None:
    """Real (flat) images where the header sample will look: the rows the plan samples from
    its rows to do (every (to do // CALL_SIZE_SAMPLE)th, the rows from rows // 2 on here);
    every other file does not exist, and its header read fails at once."""
    from PIL import Image

    from sr_batch.config import CALL_SIZE_SAMPLE

    first, todo = rows // 2, rows - rows // 2
    for index in range(first, rows, max(1, todo // CALL_SIZE_SAMPLE)):
        path = source_root / relative_paths(index, index + 1)[0].as_py()
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", SAMPLE_SIDE).save(path)


def build_stats(rows: int, out: Path, source_root: Path) -> None:
    """One earlier run of `rows` stats rows against the manifest (module docstring)."""
    from sr_batch import stats
    from sr_batch.layout import OutLayout
    from sr_batch.bookkeeping import FLUSH_ROWS
    from sr_batch.plan import resolve_tiling
    from sr_batch.models.registry import resolve_model

    config = bench_config(out, out)
    spec = resolve_model("bicubic", config.scale)
    overlap = resolve_tiling(config, spec.receptive_radius).overlap
    from sr_batch import manifest as manifest_module

    n_same, n_changed, n_failed = rows // 2, rows // 5, rows * 15 // 100
    n_gone = rows - n_same - n_changed - n_failed
    in_manifest = n_same + n_changed + n_failed
    relative = pa.concat_arrays([relative_paths(0, in_manifest).cast(pa.string()),
                                 relative_paths(10_000_000, 10_000_000 + n_gone).cast(pa.string())])
    uris = pc.binary_join_element_wise(f"file://{source_root}/", relative, "")
    image_ids = pa.array([manifest_module.image_id_for(u) for u in uris.to_pylist()], pa.string())
    stems = pc.replace_substring_regex(relative, r"\.png$", "")
    outputs = pc.binary_join_element_wise(f"file://{out}/images/", stems, ".png", "")
    status = pa.array(["ok"] * (n_same + n_changed) + ["failed"] * n_failed + ["ok"] * n_gone)
    failed = pc.equal(status, "failed")
    size = pa.array(list(range(10_000, 10_000 + in_manifest)) + [1] * n_gone, pa.int64())
    size = pc.if_else(pa.array([False] * n_same + [True] * n_changed + [False] * (rows - n_same - n_changed)),
                      pc.add(size, 1), size)
    finished = dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc)
    table = pa.table({
        "image_id": image_ids, "source_uri": uris,
        "output_uri": pc.if_else(failed, pa.nulls(rows, pa.string()), outputs),
        "status": status,
        "error_type": pc.if_else(failed, "corrupt_image", pa.nulls(rows, pa.string())),
        "width": pa.array([640] * rows, pa.int32()), "height": pa.array([480] * rows, pa.int32()),
        "channels": pa.array([3] * rows, pa.int32()), "bit_depth": pa.array([8] * rows, pa.int32()),
        "out_width": pa.array([1280] * rows, pa.int32()), "out_height": pa.array([960] * rows, pa.int32()),
        "scale": pa.array([config.scale] * rows, pa.int32()), "format": pa.array(["png"] * rows),
        "requested_format": pa.array([config.format] * rows), "self_ensemble": pa.array([False] * rows),
        "precision": pa.array(["float32"] * rows), "model": pa.array(["bicubic"] * rows),
        "model_sha256": pa.array([spec.identity] * rows),
        "tile_size": pa.array([136] * rows, pa.int32()), "tile_overlap": pa.array([overlap] * rows, pa.int32()),
        "bytes_in": size,
        "source_mtime": pa.array([dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)] * rows,
                                 pa.timestamp("us", tz="UTC")),
        "finished_at": pa.array([finished] * rows, pa.timestamp("us", tz="UTC")),
    })
    full = pa.Table.from_arrays(
        [table.column(f.name) if f.name in table.column_names else pa.nulls(rows, f.type)
         for f in stats.SCHEMA], schema=stats.SCHEMA)
    layout = OutLayout.of(str(out))
    for seq, start in enumerate(range(0, rows, FLUSH_ROWS)):
        stats.write_part(layout, "20260201T000000Z-bench0", full.slice(start, FLUSH_ROWS), seq)
    write_run_record(out, config.scale)


def write_run_record(out: Path, scale: int) -> None:
    """The earlier run's record, with the rate the dry run's estimate takes."""
    record = {"run_id": "20260201T000000Z-bench0", "status": "finished",
              "config": {"scale": scale}, "model": {"name": "bicubic", "scale": scale},
              "finished_at": "2026-02-01T01:00:00+00:00", "wall_s": 3600.0,
              "output_megapixels_per_s": 42.0}
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "runs" / "20260201T000000Z-bench0.json").write_text(json.dumps(record))


def bench_config(manifest_path: Path, out: Path):
    from sr_batch.config import JobConfig

    return JobConfig(sources=(str(manifest_path),), output=str(out), model="bicubic", scale=2)


# --- children --------------------------------------------------------------------------


def child_stages(manifest_path: Path, out: Path) -> None:
    """The plan's stages in order, as plan_run runs them; one line each."""
    from sr_batch import incremental, manifest, naming, plan
    from sr_batch.layout import OutLayout

    config = bench_config(manifest_path, out)
    layout = OutLayout.of(config.output)

    def stage(name, call):
        began, cpu = time.perf_counter(), cpu_s()
        result = call()
        print(f"  {name:<16} {time.perf_counter() - began:7.2f} s wall {cpu_s() - cpu:7.2f} s CPU   "
              f"peak RSS {peak_rss_mb():6.0f} MB (now {current_rss_mb():6.0f} MB)", flush=True)
        return result

    print(f"  {'start':<16} {'':>25}   peak RSS {peak_rss_mb():6.0f} MB", flush=True)
    table = stage("load manifest", lambda: manifest.load_sources(config.sources))
    spec = plan.resolve_model(config, None)
    tiling = plan.resolve_tiling(config, spec.receptive_radius)
    key = incremental.ReuseKey.of(config, spec.identity, tiling.overlap, None)
    listed = stage("plan outputs", lambda: naming.plan_outputs(table, layout, config.format))
    earlier = stage("join", lambda: incremental.find_earlier(layout, listed, key))
    split = stage("split", lambda: incremental.split_manifest(listed, earlier, key))
    pixels = stage("sample headers", lambda: plan.sample_pixels(split.todo, config.retries))
    print(f"  -> {listed.num_rows} listed, {split.todo.num_rows} to do, {split.skipped.num_rows} "
          f"skipped, {len(pixels)} headers read", flush=True)


def child_plan(manifest_path: Path, out: Path) -> None:
    from sr_batch.plan import plan_run

    began, cpu = time.perf_counter(), cpu_s()
    plan = plan_run(bench_config(manifest_path, out))
    print(f"  plan_run         {time.perf_counter() - began:7.2f} s wall {cpu_s() - cpu:7.2f} s CPU   "
          f"peak RSS {peak_rss_mb():6.0f} MB -> {plan.todo.num_rows} to do, "
          f"{plan.skipped.num_rows} skipped", flush=True)


def run_child(kind: str, manifest_path: Path, out: Path) -> None:
    proc = subprocess.run([sys.executable, __file__, "--child", kind, "--manifest", str(manifest_path),
                           "--out", str(out)], cwd=ROOT)
    if proc.returncode:
        print(f"  ({kind} exited {proc.returncode})")


def child_dry_run(manifest_path: Path, out: Path) -> None:
    """`sr-batch run MANIFEST --output OUT --model bicubic --dry-run`, in this process."""
    from sr_batch.cli import main

    listing = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    began, cpu = time.perf_counter(), cpu_s()
    code = main(["run", str(manifest_path), "--output", str(out), "--model", "bicubic", "--dry-run"])
    print(f"  sr-batch --dry-run {time.perf_counter() - began:5.2f} s wall {cpu_s() - cpu:7.2f} s CPU   "
          f"peak RSS {peak_rss_mb():6.0f} MB, exit {code}", flush=True)
    unchanged = listing == sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    print(f"  OUT unchanged by the dry run: {unchanged}", flush=True)


def has_dry_run() -> bool:
    proc = subprocess.run([sys.executable, "-m", "sr_batch.cli", "run", "--help"], cwd=ROOT,
                          capture_output=True, text=True)
    return "--dry-run" in proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--work", default=None, help="folder for the data (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the data; reuse it if there")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--manifest", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        {"stages": child_stages, "plan": child_plan, "dry-run": child_dry_run}[args.child](Path(args.manifest), Path(args.out))
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="sr-batch-bench-plan-"))
    work.mkdir(parents=True, exist_ok=True)
    manifest_path, out = work / "manifest.parquet", work / "out"
    if not (args.keep and manifest_path.exists() and (out / "stats").exists()):
        began = time.perf_counter()
        build_manifest(args.rows, manifest_path, work / "src")
        build_sample_files(args.rows, work / "src")
        build_stats(args.rows, out, work / "src")
        print(f"built {args.rows} manifest rows and {args.rows} earlier stats rows in "
              f"{time.perf_counter() - began:.1f} s under {work}")
    write_run_record(out, 2)
    print("stages (one process):")
    run_child("stages", manifest_path, out)
    print("plan_run (one process):")
    run_child("plan", manifest_path, out)
    print("dry run (CLI, one process):")
    if has_dry_run():
        run_child("dry-run", manifest_path, out)
    else:
        print("  (sr-batch run has no --dry-run here)")
    if not args.keep and not args.work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
