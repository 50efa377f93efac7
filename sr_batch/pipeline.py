"""The Ray Data graph, top to bottom:

    manifest -> plan outputs -> [actor pool: read, decode, upscale, encode, write, measure]
             -> stats parts (Parquet, hive run_id=) -> runs/<run_id>.json

The driver never imports TensorFlow; actors do.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import posixpath
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from typing import Callable

import pyarrow as pa

import sr_batch
from sr_batch import incremental, manifest, stats, storage
from sr_batch.actor import ActorSettings, UpscaleActor
from sr_batch.config import (CALL_SIZE_SAMPLE, DEFAULT_IMAGES_PER_BATCH, DEFAULT_TILE_CORE,
                             LARGE_TILE_CORE, PIXELS_PER_CALL, JobConfig, default_actor_count,
                             local_cpu_count)
from sr_batch.errors import ConfigError, ImageError, StorageError
from sr_batch.models import registry
from sr_batch.models.registry import ModelSpec

log = logging.getLogger(__name__)
Echo = Callable[[str], None]

# Flush stats to a new Parquet part at least every FLUSH_ROWS rows (and every
# --stats-flush-s seconds), so a killed driver loses little bookkeeping; the
# images themselves are already written and a rerun redoes only the unrecorded.
FLUSH_ROWS = 5000
# Failed images listed one line each before the rest are only counted.
MAX_FAILURE_LINES = 20
# Actor calls running at once in each actor (threads): while one call's tiles are in the
# model, another decodes, stitches, encodes and measures; the model itself is thread-safe.
CALLS_PER_ACTOR = 2


def echo_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def new_run_id() -> str:
    """Sortable, unique, never all digits (so hive partitioning reads it as a string)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


@dataclass
class RunResult:
    """What a run did; also written to OUT/runs/<run_id>.json."""

    run_id: str
    counts: dict[str, int]
    wall_s: float
    images_per_s: float
    output_megapixels_per_s: float
    stats_uri: str
    failures: list[dict] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary_line(self) -> str:
        c = self.counts
        return (f"run {self.run_id}: {c.get('ok', 0)} ok, {c.get('failed', 0)} failed, "
                f"{c.get('skipped', 0)} skipped of {self.total} in {self.wall_s:.1f} s "
                f"({self.images_per_s:.2f} img/s, {self.output_megapixels_per_s:.2f} MP/s out); "
                f"stats: {self.stats_uri}")


# --- planning --------------------------------------------------------------------------


def plan_outputs(table: pa.Table, config: JobConfig) -> pa.Table:
    """Add output_stem / output_uri and plan_error_* columns; escapes fail their row only."""
    images_root = storage.join(storage.to_uri(config.output), "images")
    fixed_ext = None if config.format == "keep" else config.format
    stems, uris, error_types, error_messages = [], [], [], []
    seen: set[str] = set()
    for relative, override in zip(table.column("relative_path").to_pylist(),
                                  table.column("output_uri").to_pylist()):
        stem = uri = error_type = message = None
        try:
            if override:
                uri = storage.check_inside(storage.to_uri(config.output), storage.to_uri(override))
                key = uri
            else:
                stem = storage.resolve_inside(images_root, posixpath.splitext(relative)[0])
                key = f"{stem}|{fixed_ext or posixpath.splitext(relative)[1].lower()}"
            if key in seen:
                raise _Collision(f"two manifest rows write the same output ({uri or stem})")
            seen.add(key)
        except ImageError as exc:
            error_type, message = exc.error_type, str(exc)
        except _Collision as exc:
            error_type, message = "output_collision", str(exc)
        stems.append(stem)
        uris.append(uri)
        error_types.append(error_type)
        error_messages.append(message)
    table = table.set_column(table.schema.get_field_index("output_uri"), "output_uri",
                             pa.array(uris, pa.string()))
    return (table.append_column("output_stem", pa.array(stems, pa.string()))
                 .append_column("plan_error_type", pa.array(error_types, pa.string()))
                 .append_column("plan_error_message", pa.array(error_messages, pa.string())))


class _Collision(Exception):
    pass


def resolve_model(config: JobConfig) -> tuple[ModelSpec, JobConfig]:
    """Model spec with scale and radius known, and the config with its tiling resolved.

    The overlap defaults to the model's receptive-field radius (the least that
    keeps tiled output equal to whole-image output); the tiles to a 128 px and a
    256 px core plus that overlap on each side.
    """
    spec = registry.resolve_model(config.model, config.scale)
    if spec.receptive_radius is None:
        spec = _probe_model(spec, config.scale)
    return spec, resolve_tiling(config, spec.receptive_radius)


def resolve_tiling(config: JobConfig, radius: int) -> JobConfig:
    if config.tile_sizes:  # already resolved
        return config
    overlap = radius if config.tile_overlap is None else config.tile_overlap
    if config.tile_size is None:
        sizes = (DEFAULT_TILE_CORE + 2 * overlap, LARGE_TILE_CORE + 2 * overlap)
    else:
        sizes = (config.tile_size,)
    tile = max(sizes)
    if config.tile_size is not None and tile - 2 * overlap < 1:
        raise ConfigError(
            f"--tile-size {tile} is too small for a tile overlap of {overlap} px "
            f"(the model's receptive-field radius); use --tile-size > {2 * overlap}")
    return config.replace(tile_size=tile, tile_overlap=overlap, tile_sizes=sizes)


def _probe_model(spec: ModelSpec, scale: int) -> ModelSpec:
    """Load a user model once in a Ray task (never in the driver) to learn its radius."""
    import ray

    @ray.remote(num_cpus=1, max_retries=0)
    def probe(spec: ModelSpec) -> ModelSpec:
        from sr_batch.runtime import configure_tensorflow

        configure_tensorflow(1)
        from sr_batch import tiling
        from sr_batch.models.registry import load_keras_model, sha256_of

        # Pin the bytes we measured: the actors verify the same SHA-256 when they load.
        spec = replace(spec, sha256=sha256_of(storage.read_bytes(spec.uri)))
        model = load_keras_model(spec)
        radius = tiling.receptive_radius_from_impulse(
            lambda x: model(x, training=False).numpy(), spec.scale or scale)
        return replace(spec, scale=scale, receptive_radius=radius,
                       params=int(model.count_params()))

    return ray.get(probe.remote(replace(spec, scale=scale)))


# --- running ---------------------------------------------------------------------------


def init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
    # No address: a fresh local Ray ("local"), never a guess at whatever cluster
    # `ray start` last recorded on this machine (which may be stale and hang).
    # Inside a Ray job, RAY_ADDRESS names the job's cluster and wins.
    if address is None and not os.environ.get("RAY_ADDRESS"):
        address = "local"
    if address == "local":
        # A one-machine Ray needs no network: Ray's single-node mode puts the node
        # (GCS, raylet, dashboard) on 127.0.0.1 instead of every interface.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True,
             runtime_env={"env_vars": env}, configure_logging=True)


def _tf_threads(config: JobConfig, pool: tuple[int, int]) -> int:
    """TensorFlow threads per actor.

    On a local Ray the actors share this machine's cores: the pool reserves one
    CPU for Ray Data's I/O tasks, but those mostly wait, so the model may use
    every core (split between actors). On a cluster, the actor's CPU share.
    """
    if config.tf_threads:
        return config.tf_threads
    if config.address is None:
        return max(1, local_cpu_count() // pool[1])
    return config.intra_op_threads


def actor_pool_size(config: JobConfig) -> tuple[int, int]:
    import ray

    if config.actors is not None:
        return config.actors
    resources = ray.cluster_resources()
    n = default_actor_count(resources.get("CPU", 1), resources.get("GPU", 0),
                            config.cpus_per_actor, config.gpus_per_actor)
    return (n, n)


def run_job(config: JobConfig, echo: Echo = echo_stderr) -> RunResult:
    """Upscale every image of the sources; return counts. Raises only job-level errors."""
    if not config.lock:
        return _run_job(config, echo, None)
    from sr_batch.lock import DEFAULT_STALE_S, OutputLock

    run_id = config.run_id or new_run_id()
    uri = storage.join(storage.to_uri(config.output), "nightly.lock")
    with OutputLock(uri, DEFAULT_STALE_S, purpose=f"sr-batch run {run_id}") as lock:
        return _run_job(config.replace(run_id=run_id), echo, lock)


def _run_job(config: JobConfig, echo: Echo, lock) -> RunResult:
    import ray

    run_id = config.run_id or new_run_id()
    chosen_tile = config.tile_size
    started_at = dt.datetime.now(dt.timezone.utc)
    began = time.perf_counter()
    output = storage.to_uri(config.output)
    table = manifest.load_sources(config.sources)
    init_ray(config.address)
    spec, config = resolve_model(config)
    overlap = config.tile_overlap
    _write_run_record(output, run_id, config, spec, overlap, None, None, started_at)  # preflight
    planned = plan_outputs(table, config)
    settings_key = incremental.Settings.of_run(config, spec.identity, chosen_tile)
    if config.force:
        todo, skipped = planned, stats.make_table([])
    else:
        todo, skipped = incremental.split_manifest(
            planned, incremental.find_done(output, planned, settings_key), settings_key)
    config = resolve_images_per_batch(config, todo)
    pool = actor_pool_size(config)
    settings = ActorSettings(
        model=spec, scale=config.scale, tile_size=config.tile_size, tile_sizes=config.tile_sizes,
        tile_overlap=overlap,
        batch_size=config.batch_size, format=config.format, quality=config.quality,
        png_compress_level=config.png_compress_level, max_pixels=config.max_pixels,
        retries=config.retries, intra_op_threads=_tf_threads(config, pool), alpha=config.alpha,
        self_ensemble=config.self_ensemble, precision=config.precision)
    echo(f"run {run_id}: {planned.num_rows} images ({skipped.num_rows} unchanged, skipped), "
         f"model {spec.name} x{config.scale} (tiles {'/'.join(map(str, config.tile_sizes))} px, overlap {overlap}), "
         f"{pool[0]}-{pool[1]} actors x {config.cpus_per_actor:g} CPU / "
         f"{config.gpus_per_actor:g} GPU, {config.images_per_batch} images a call")

    from ray.data import ActorPoolStrategy, DataContext

    DataContext.get_current().enable_progress_bars = False
    # Ray Data logs every dataset start/finish at INFO (set up when ray.data is first
    # imported, so only now can it be lowered); our progress lines say the same.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    writer = _StatsWriter(output, run_id, planned.num_rows, config, echo, lock)
    if skipped.num_rows:
        writer.add(skipped)
    if todo.num_rows:
        ds = ray.data.from_arrow(_blocks(todo, config.images_per_batch, pool[1]))
        ds = ds.map_batches(
            UpscaleActor, fn_constructor_kwargs={"settings": settings},
            batch_size=config.images_per_batch, batch_format="pyarrow",
            compute=ActorPoolStrategy(min_size=pool[0], max_size=pool[1],
                                      max_concurrent_calls_per_actor=CALLS_PER_ACTOR,
                                      enable_true_multi_threading=CALLS_PER_ACTOR > 1,
                                      # no queue beyond the running calls: blocks spread
                                      # over every actor as soon as it is up
                                      max_tasks_in_flight_per_actor=CALLS_PER_ACTOR),
            num_cpus=config.cpus_per_actor, num_gpus=config.gpus_per_actor or None,
            udf_modifying_row_count=False)
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            writer.add(batch)
    writer.close()
    _remove_orphan_temps(output, planned, started_at.timestamp(), echo)
    wall_s = time.perf_counter() - began
    result = RunResult(
        run_id=run_id, counts=writer.counts, wall_s=wall_s,
        images_per_s=(writer.rows - skipped.num_rows) / wall_s if wall_s else 0.0,
        output_megapixels_per_s=writer.out_pixels / 1e6 / wall_s if wall_s else 0.0,
        stats_uri=stats.run_dir(output, run_id), failures=writer.failures)
    _write_run_record(output, run_id, config, spec, overlap, pool, result, started_at)
    return result


def _remove_orphan_temps(output: str, planned: pa.Table, started: float, echo: Echo) -> None:
    """Delete the hidden temporary files an interrupted run left beside this run's outputs.

    Runs once every write of this run is done; a temporary file last touched
    before this run started belongs to a writer that was killed mid-write.
    """
    import pyarrow.compute as pc

    # An output is output_uri where the manifest names one, else output_stem + the format's suffix.
    uris = pc.drop_null(pc.coalesce(planned.column("output_uri"), planned.column("output_stem")))
    directories = pc.unique(pc.replace_substring_regex(uris, r"/[^/]*$", "")).to_pylist()
    stats_fs, stats_path = storage.get_fs(storage.join(output, "stats"))
    if storage.is_local(stats_fs) and os.path.isdir(stats_path):
        directories += [entry.path for entry in os.scandir(stats_path) if entry.is_dir()]
    removed = storage.remove_orphan_temps(directories, older_than=started)
    if removed:
        echo(f"removed {removed} temporary file(s) left by an interrupted run")


def resolve_images_per_batch(config: JobConfig, todo: pa.Table) -> JobConfig:
    """The config with --images-per-batch set: as given, else about PIXELS_PER_CALL input
    pixels a call for the median of up to CALL_SIZE_SAMPLE images spread over the manifest
    (headers only), 1 to DEFAULT_IMAGES_PER_BATCH images."""
    if config.images_per_batch is not None:
        return config
    pixels = sorted(p for p in sample_pixels(todo, config.retries) if p)
    if not pixels:
        return config.replace(images_per_batch=DEFAULT_IMAGES_PER_BATCH)
    median = pixels[len(pixels) // 2]
    return config.replace(images_per_batch=max(1, min(DEFAULT_IMAGES_PER_BATCH, PIXELS_PER_CALL // median)))


def sample_pixels(todo: pa.Table, retries: int) -> list[int | None]:
    """Pixel counts from the headers of up to CALL_SIZE_SAMPLE images spread evenly over the
    manifest; None where a header is unreadable (the job itself reports that image)."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.compute as pc

    from sr_batch import streaming

    planned = todo.filter(pc.is_null(todo.column("plan_error_type")))
    if planned.num_rows == 0:
        return []
    step = max(1, planned.num_rows // CALL_SIZE_SAMPLE)
    picks = pa.array(range(0, planned.num_rows, step)[:CALL_SIZE_SAMPLE], pa.int64())
    uris = planned.column("uri").take(picks).to_pylist()

    def pixels_of(uri: str) -> int | None:
        try:
            with storage.open_input(uri, retries, storage.HEADER_BLOCK_SIZE) as handle:
                return streaming.count_pixels(handle)
        except (ImageError, StorageError, OSError):
            return None

    with ThreadPoolExecutor(min(8, len(uris))) as pool:
        return list(pool.map(pixels_of, uris))


def _blocks(table: pa.Table, images_per_batch: int, max_actors: int) -> list[pa.Table]:
    """Cut the manifest into blocks: enough for every actor, big enough to pack tiles."""
    rows = max(images_per_batch, min(256, math.ceil(table.num_rows / (4 * max_actors))))
    rows = math.ceil(rows / images_per_batch) * images_per_batch
    return [table.slice(i, rows) for i in range(0, table.num_rows, rows)]


class _StatsWriter:
    """Collects stats batches, flushes Parquet parts, prints progress and failures."""

    def __init__(self, output: str, run_id: str, total: int, config: JobConfig,
                 echo: Echo, lock=None) -> None:
        self.lock = lock
        self.output, self.run_id, self.total = output, run_id, total
        self.progress_s, self.flush_s = config.progress_s, config.stats_flush_s
        self.retries, self.echo = config.retries, echo
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.rows = 0
        self.seq = 0
        self.out_pixels = 0
        self.counts: dict[str, int] = {}
        self.failures: list[dict] = []
        self.began = self.last_flush = self.last_progress = time.perf_counter()

    def add(self, batch: pa.Table) -> None:
        self.pending.append(batch)
        self.pending_rows += batch.num_rows
        self.rows += batch.num_rows
        for row in batch.select(["status", "source_uri", "error_type", "error_message",
                                 "out_width", "out_height"]).to_pylist():
            self.counts[row["status"]] = self.counts.get(row["status"], 0) + 1
            if row["status"] == stats.STATUS_OK:
                self.out_pixels += (row["out_width"] or 0) * (row["out_height"] or 0)
            elif row["status"] == stats.STATUS_FAILED:
                self._report_failure(row)
        now = time.perf_counter()
        if self.pending_rows >= FLUSH_ROWS or now - self.last_flush >= self.flush_s:
            self.flush()
        if now - self.last_progress >= self.progress_s:
            self.last_progress = now
            self.echo(self.progress_line(now))
            if self.lock is not None:
                self.lock.refresh()

    def _report_failure(self, row: dict) -> None:
        if len(self.failures) < MAX_FAILURE_LINES:
            self.echo(f"failed: {row['source_uri']}: {row['error_type']}: {row['error_message']}")
        elif len(self.failures) == MAX_FAILURE_LINES:
            self.echo("further failures are only counted; query the stats for all of them")
        self.failures.append(row)

    def progress_line(self, now: float) -> str:
        elapsed = now - self.began
        rate = self.rows / elapsed if elapsed else 0.0
        eta = (self.total - self.rows) / rate if rate else float("nan")
        return (f"progress: {self.rows}/{self.total} images ({100 * self.rows / max(1, self.total):.0f}%), "
                f"{rate:.2f} img/s, {self.out_pixels / 1e6 / elapsed:.2f} MP/s out, "
                f"{self.counts.get('failed', 0)} failed, ETA {eta:.0f} s")

    def flush(self) -> None:
        if self.pending:
            stats.write_part(self.output, self.run_id, pa.concat_tables(self.pending), self.seq,
                             self.retries)
            self.seq += 1
        self.pending, self.pending_rows = [], 0
        self.last_flush = time.perf_counter()

    def close(self) -> None:
        self.flush()


def _version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _write_run_record(output: str, run_id: str, config: JobConfig, spec: ModelSpec, overlap: int,
                      pool: tuple[int, int] | None, result: RunResult | None,
                      started_at: dt.datetime) -> None:
    """OUT/runs/<run_id>.json: written first as `running` (which also proves OUT is
    writable before any image is touched), then again with the results."""
    record = {
        "run_id": run_id,
        "status": "finished" if result else "running",
        "config": {**config.to_dict(), "tile_overlap": overlap, "actors": pool and list(pool)},
        "model": asdict(spec),
        "counts": result and result.counts,
        "started_at": started_at.isoformat(),
        "finished_at": result and dt.datetime.now(dt.timezone.utc).isoformat(),
        "wall_s": result and result.wall_s,
        "images_per_s": result and result.images_per_s,
        "output_megapixels_per_s": result and result.output_megapixels_per_s,
        "versions": {"sr_batch": sr_batch.__version__, "ray": _version("ray"),
                     "tensorflow": _version("tensorflow", "tensorflow-cpu"),
                     "keras": _version("keras"), "python": sys.version.split()[0]},
    }
    uri = storage.join(output, "runs", f"{run_id}.json")
    try:
        storage.write_bytes_atomic(uri, json.dumps(record, indent=2, default=str).encode(),
                                   config.retries)
    except ImageError as exc:  # WriteError: nothing of this run could be recorded
        raise StorageError(f"cannot write to the output {output}: {exc}") from None
