"""The run itself, top to bottom:

    plan (plan.py: model, tiling, output names, rows to do and skip, images per call; a user's
          model file probed in a Ray task, model_probe.py)
      -> Ray Data graph: manifest blocks -> [actor pool: read, decode, upscale, encode, write,
         measure] -> stats batches (Ray started or joined by ray_session.py)
      -> bookkeeping: stats parts (Parquet, hive run_id=) by bookkeeping.py, OUT/runs/<run_id>.json
         (running, then finished, interrupted or failed) by run_record.py

The driver never imports TensorFlow; actors do.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from typing import Callable

import pyarrow as pa

from sr_batch import provenance, stats, steps, storage
from sr_batch.actor import ModelActor, UpscaleActor
from sr_batch.bookkeeping import StatsWriter, remove_orphan_temps
from sr_batch.config import JobConfig, default_actor_count, local_cpu_count
from sr_batch.errors import ConfigError, ImageError, StorageError
from sr_batch.layout import OutLayout
from sr_batch.model_probe import probe_on_ray
from sr_batch.plan import RunPlan, new_run_id, plan_run
from sr_batch.ray_session import init_ray
from sr_batch.run_record import Phases, RunResult, mark_dead_runs, write_run_record
from sr_batch.settings import ActorSettings

Echo = Callable[[str], None]

# Ray Data hands a block's stats rows back only when the whole block is done, so a block is
# one actor call where the run has at most ONE_CALL_BLOCKS calls: every call's rows reach the
# driver, and the stats, as soon as it ends. Ray Data's driver keeps about 80 KB per block
# (measured: 70 MB more for 875 more blocks), so a longer run takes several calls a block, up
# to BLOCK_ROWS rows: a bounded number of blocks until BLOCK_ROWS, then BLOCK_ROWS-row blocks.
ONE_CALL_BLOCKS = 256
BLOCK_ROWS = 256

# Actor calls running at once in each actor (threads): while one call's tiles are in the
# model, another decodes, stitches, encodes and measures; the model itself is thread-safe.
CALLS_PER_ACTOR = 2


def echo_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- the run ---------------------------------------------------------------------------


def run_job(config: JobConfig, echo: Echo = echo_stderr) -> RunResult:
    """Plan the run, then execute it; return counts. Raises only job-level errors."""
    if config.dry_run:  # a plan-only config must never run, whoever calls
        raise ConfigError("a dry run only plans: call sr_batch.preview.dry_run(config)")
    if not config.lock:
        began = time.perf_counter()
        plan = plan_run(config, probe=probe_on_ray(config.address))
        return execute(plan, echo, plan_s=time.perf_counter() - began)
    from sr_batch.lock import DEFAULT_STALE_S, OutputLock

    layout = OutLayout.of(config.output)
    run_id = config.run_id or new_run_id()
    with OutputLock(layout.lock, DEFAULT_STALE_S, purpose=f"sr-batch run {run_id}") as lock:
        began = time.perf_counter()
        plan = plan_run(config, run_id=run_id, probe=probe_on_ray(config.address))
        return execute(plan, echo, lock, plan_s=time.perf_counter() - began)


@contextlib.contextmanager
def _interrupt_latch():
    """SIGINT raises KeyboardInterrupt as usual and also sets the event yielded, so the
    run stops at the next batch even where code between (Ray's iteration) caught the
    exception. Outside the main thread, where signals cannot be handled, the event stays unset."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def handler(signum, frame):
        interrupted.set()
        signal.default_int_handler(signum, frame)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield interrupted
    finally:
        if previous is not None:  # None: a handler not set from Python, which cannot be restored
            signal.signal(signal.SIGINT, previous)


def execute(plan: RunPlan, echo: Echo = echo_stderr, lock=None, plan_s: float | None = None) -> RunResult:
    """Run a plan's rows through the actor pool and record every row; see the module docstring.
    `plan_s`: how long planning took, for the run record's phases."""
    started_at = dt.datetime.now(dt.timezone.utc)
    began = time.perf_counter()
    phases = Phases(plan=plan_s)
    config, layout = plan.config, plan.layout
    write_run_record(plan, "running", started_at)  # also proves OUT is writable, before any image
    try:
        stats.check_writable(layout, plan.run_id, config.retries)
    except ImageError as exc:  # WriteError: no row of this run could be recorded
        error = StorageError(f"cannot write the stats under {storage.display(layout.stats)}: {exc}")
        write_run_record(plan, "failed", started_at, error=f"StorageError: {error}", quiet=True)
        raise error from None
    mark_dead_runs(layout, plan.run_id, config.retries, echo)
    writer = StatsWriter(layout, plan.run_id, plan.listed.num_rows, config, echo, lock)
    pool = None
    try:
        if plan.skipped.num_rows:
            writer.add(plan.skipped)
        if plan.todo.num_rows:
            here = runs_here(plan)
            plan = replace(plan, config=config.replace(executor="local" if here else "ray"))
            if here:
                settings = actor_settings(plan, None)
                batches = _upscale_here(plan, settings)
            else:
                phases.ray_start = init_ray(config.address)
                pool = actor_pool_size(config)
                settings = actor_settings(plan, pool)
                batches = _upscale(plan, settings, pool)
            echo(_header(plan, pool))
            if plan.warning:
                echo(plan.warning)
            graph_began = time.perf_counter()
            with _interrupt_latch() as interrupted:
                for batch in batches:
                    if phases.first_rows is None:
                        phases.first_rows = time.perf_counter() - graph_began
                    writer.add(batch)
                    if interrupted.is_set():  # a library swallowed the KeyboardInterrupt
                        raise KeyboardInterrupt
        else:
            echo(f"run {plan.run_id}: {plan.listed.num_rows} images, all unchanged since earlier runs: "
                 f"nothing to upscale")
        writer.close()
    except BaseException as exc:
        writer.close_quietly()
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        write_run_record(plan, status, started_at, pool, writer.counts,
                         error=None if status == "interrupted" else f"{type(exc).__name__}: {exc}",
                         quiet=True, phases=phases.finished(writer.max_setup_s, time.perf_counter() - began))
        raise
    remove_orphan_temps(layout, plan.listed, started_at.timestamp(), echo)
    wall_s = time.perf_counter() - began
    result = RunResult(
        run_id=plan.run_id, counts=writer.counts, wall_s=wall_s,
        images_per_s=(writer.rows - plan.skipped.num_rows) / wall_s if wall_s else 0.0,
        output_megapixels_per_s=writer.out_pixels / 1e6 / wall_s if wall_s else 0.0,
        stats_uri=layout.stats_run(plan.run_id), failures=writer.failures)
    write_run_record(plan, "finished", started_at, pool, writer.counts, result,
                     phases=phases.finished(writer.max_setup_s, wall_s))
    return result


def runs_here(plan: RunPlan) -> bool:
    """Whether the run's images go through the step list in this process rather than an actor
    pool: --executor local, or under auto a local run (no --address, no Ray up in this process)
    whose images fit one actor call and whose arrangement is fused. One call runs in one
    actor anyway; Ray's start and an actor's would cost more than the work."""
    config = plan.config
    if config.executor != "auto":
        return config.executor == "local"
    if config.address is not None or os.environ.get("RAY_ADDRESS") or config.staged:
        return False
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return False
    return plan.todo.num_rows <= plan.images_per_call


def _upscale_here(plan: RunPlan, settings: ActorSettings):
    """--executor local: the fused actor's work in this process (TensorFlow imported here), one
    actor call's images at a time."""
    from sr_batch.runtime import native_log_filtered

    blocks = _blocks(plan.todo, plan.images_per_call)
    # TensorFlow's load-time and first-run notes, which Ray's worker-line filter keeps off the
    # console for actors (ray_session.QUIET_WORKER_LINES), are kept off it here the same way.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_log_filtered(after_import=True):
        actor = UpscaleActor(settings)
        first = actor(blocks[0])
    yield first
    for block in blocks[1:]:
        yield actor(block)


def _header(plan: RunPlan, pool: tuple[int, int] | None) -> str:
    config, tiling = plan.config, plan.tiling
    denoise = f", denoise {plan.denoise:g}" if plan.denoise is not None else ""
    model = plan.model.name
    if plan.routes:
        model = "auto: " + " / ".join(dict.fromkeys(r.model.name for r in plan.routes)) + " per image"
    if tiling.whole:
        tiles = f"whole images, padded {tiling.overlap} px"
    else:
        tiles = f"tiles {'/'.join(map(str, tiling.sides))} px, overlap {tiling.overlap}"
        if tiling.blend:
            tiles += f" feathered {tiling.blend}"
    return (f"run {plan.run_id}: {plan.listed.num_rows} images ({plan.skipped.num_rows} unchanged, skipped), "
            f"model {model} x{config.scale}{denoise} ({tiles}, {_seam_text(tiling)}), {_where(plan, pool)}")


def _where(plan: RunPlan, pool: tuple[int, int] | None) -> str:
    """Where the steps run, as the first line tells it."""
    config = plan.config
    if pool is None:
        return f"every step in this process (no Ray: {plan.todo.num_rows} images, one actor call)"
    return (f"{pool[0]}-{pool[1]} actors x {config.cpus_per_actor:g} CPU / {config.gpus_per_actor:g} GPU, "
            f"{plan.images_per_call} images a call, "
            f"{'decode and encode as CPU stages' if config.staged else 'all steps in the actors'}")


def _seam_text(tiling) -> str:
    """The seam bound as the first line tells it."""
    if tiling.seam is None:
        return "seam bound not measured"
    if tiling.seam == (0.0, 0.0) and not tiling.blend:
        return "seam bound 0 (exact)"
    return f"seam bound max {tiling.seam[0]:.2f} / mean {tiling.seam[1]:.3f} levels"


def _upscale(plan: RunPlan, settings: ActorSettings, pool: tuple[int, int]):
    """The Ray Data graph, streamed back as stats batches:

        fused:   manifest blocks -> [model actors: every step of steps.STEPS]
        staged:  manifest blocks -> decode, route, size (CPU tasks) -> [model actors: upscale,
                 stream] -> resize, measure, write, record (CPU tasks)
    """
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    DataContext.get_current().enable_progress_bars = False
    # Ray Data logs every dataset start/finish at INFO (set up when ray.data is first
    # imported, so only now can it be lowered); our progress lines say the same.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    config, per_call = plan.config, plan.images_per_call
    model_actors = ActorPoolStrategy(min_size=pool[0], max_size=pool[1],
                                     max_concurrent_calls_per_actor=CALLS_PER_ACTOR,
                                     enable_true_multi_threading=CALLS_PER_ACTOR > 1,
                                     # no queue beyond the running calls: blocks spread
                                     # over every actor as soon as it is up
                                     max_tasks_in_flight_per_actor=CALLS_PER_ACTOR)
    resources = {"num_cpus": config.cpus_per_actor, "num_gpus": config.gpus_per_actor or None}
    ds = ray.data.from_arrow(_blocks(plan.todo, per_call))
    if not config.staged:
        ds = ds.map_batches(UpscaleActor, fn_constructor_kwargs={"settings": settings},
                            batch_size=per_call, batch_format="pyarrow", compute=model_actors,
                            udf_modifying_row_count=False, **resources)
    else:  # the step list cut at the model: CPU tasks, model actors, CPU tasks
        for index, part in enumerate(steps.segments()):
            if part[0].on_model:
                ds = ds.map_batches(ModelActor, fn_constructor_kwargs={"settings": settings},
                                    batch_size=per_call, batch_format="pyarrow", compute=model_actors,
                                    udf_modifying_row_count=False, **resources)
            else:
                ds = ds.map_batches(steps.cpu_stage, fn_kwargs={"settings": settings, "segment": index},
                                    batch_size=per_call, batch_format="pyarrow", num_cpus=1,
                                    udf_modifying_row_count=False)
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")


def actor_settings(plan: RunPlan, pool: tuple[int, int] | None) -> ActorSettings:
    """What every actor of this run gets: built once, from the plan."""
    config = plan.config
    return ActorSettings(
        model=plan.model, scale=config.scale, tiling=plan.tiling, layout=plan.layout,
        batch_size=config.batch_size, format=config.format, quality=config.quality,
        png_compress_level=config.png_compress_level, max_pixels=config.max_pixels,
        max_output_pixels=config.max_output_pixels,
        retries=config.retries, read_timeout_s=config.read_timeout_s,
        intra_op_threads=_tf_threads(config, pool), alpha=config.alpha,
        self_ensemble=config.self_ensemble, precision=config.precision, denoise=plan.denoise,
        output_size=config.output_size, pass_models=plan.pass_models, routes=plan.routes,
        identity=plan.identity, metrics=config.metrics, run_id=plan.run_id,
        provenance=config.provenance, provenance_source=config.provenance_source,
        c2pa_signing=config.c2pa_sign and provenance.load_signing(config.c2pa_sign, config.retries))


def _tf_threads(config: JobConfig, pool: tuple[int, int] | None) -> int:
    """TensorFlow threads per actor.

    On a local Ray the actors share this machine's cores: the pool reserves one
    CPU for Ray Data's I/O tasks, but those mostly wait, so the model may use
    every core (split between actors). On a cluster, the actor's CPU share.
    """
    if config.tf_threads:
        return config.tf_threads
    if config.address is None:
        return max(1, local_cpu_count() // (pool[1] if pool else 1))
    return config.intra_op_threads


def actor_pool_size(config: JobConfig) -> tuple[int, int]:
    import ray

    if config.actors is not None:
        return config.actors
    resources = ray.cluster_resources()
    n = default_actor_count(resources.get("CPU", 1), resources.get("GPU", 0),
                            config.cpus_per_actor, config.gpus_per_actor)
    return (n, n)


def _blocks(table: pa.Table, images_per_call: int) -> list[pa.Table]:
    """Cut the manifest into blocks of one actor call each, of several calls (at most
    BLOCK_ROWS rows) above ONE_CALL_BLOCKS calls."""
    calls = math.ceil(table.num_rows / images_per_call)
    calls_per_block = min(math.ceil(calls / ONE_CALL_BLOCKS), max(1, BLOCK_ROWS // images_per_call))
    rows = images_per_call * max(1, calls_per_block)
    return [table.slice(i, rows) for i in range(0, table.num_rows, rows)]
