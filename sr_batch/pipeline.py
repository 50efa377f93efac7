"""The run itself, top to bottom:

    plan (plan.py: model, tiling, output names, rows to do and skip, images per call)
      -> Ray Data graph: manifest blocks -> [actor pool: read, decode, upscale, encode, write,
         measure] -> stats batches
      -> bookkeeping: stats parts (Parquet, hive run_id=), OUT/runs/<run_id>.json
         (running, then finished, interrupted or failed)

The driver never imports TensorFlow; actors do.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

import sr_batch
from sr_batch import errors, provenance, stats, steps, storage
from sr_batch.actor import ModelActor, UpscaleActor
from sr_batch.config import JobConfig, default_actor_count, local_cpu_count
from sr_batch.errors import ConfigError, ImageError, ModelError, StorageError
from sr_batch.layout import OutLayout
from sr_batch.lock import holder, is_dead
from sr_batch.models.registry import ModelSpec
from sr_batch.plan import RunPlan, new_run_id, plan_run
from sr_batch.settings import ActorSettings

log = logging.getLogger(__name__)
Echo = Callable[[str], None]

# Flush stats to a new Parquet part at least every FLUSH_ROWS rows (and every
# --stats-flush-s seconds), so a killed driver loses little bookkeeping; the
# images themselves are already written and a rerun redoes only the unrecorded.
FLUSH_ROWS = 5000

# The least the stats timer waits between looks, whatever --stats-flush-s: no busy loop.
MIN_FLUSH_WAIT_S = 0.05

# Ray Data hands a block's stats rows back only when the whole block is done, so a block is
# one actor call where the run has at most ONE_CALL_BLOCKS calls: every call's rows reach the
# driver, and the stats, as soon as it ends. Ray Data's driver keeps about 80 KB per block
# (measured: 70 MB more for 875 more blocks), so a longer run takes several calls a block, up
# to BLOCK_ROWS rows: a bounded number of blocks until BLOCK_ROWS, then BLOCK_ROWS-row blocks.
ONE_CALL_BLOCKS = 256
BLOCK_ROWS = 256

# Failed images listed one line each before the rest are only counted.
MAX_FAILURE_LINES = 20

# Actor calls running at once in each actor (threads): while one call's tiles are in the
# model, another decodes, stitches, encodes and measures; the model itself is thread-safe.
CALLS_PER_ACTOR = 2



def echo_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


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
    _write_run_record(plan, "running", started_at)  # also proves OUT is writable, before any image
    try:
        stats.check_writable(layout, plan.run_id, config.retries)
    except ImageError as exc:  # WriteError: no row of this run could be recorded
        error = StorageError(f"cannot write the stats under {storage.display(layout.stats)}: {exc}")
        _write_run_record(plan, "failed", started_at, error=f"StorageError: {error}", quiet=True)
        raise error from None
    _mark_dead_runs(layout, plan.run_id, config.retries, echo)
    writer = _StatsWriter(layout, plan.run_id, plan.listed.num_rows, config, echo, lock)
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
                init_ray(config.address)
                phases.ray_start = _ray_start_s
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
        _write_run_record(plan, status, started_at, pool, writer.counts,
                          error=None if status == "interrupted" else f"{type(exc).__name__}: {exc}",
                          quiet=True, phases=phases.finished(writer, time.perf_counter() - began))
        raise
    _remove_orphan_temps(layout, plan.listed, started_at.timestamp(), echo)
    wall_s = time.perf_counter() - began
    result = RunResult(
        run_id=plan.run_id, counts=writer.counts, wall_s=wall_s,
        images_per_s=(writer.rows - plan.skipped.num_rows) / wall_s if wall_s else 0.0,
        output_megapixels_per_s=writer.out_pixels / 1e6 / wall_s if wall_s else 0.0,
        stats_uri=layout.stats_run(plan.run_id), failures=writer.failures)
    _write_run_record(plan, "finished", started_at, pool, writer.counts, result,
                      phases=phases.finished(writer, wall_s))
    return result


@dataclass
class Phases:
    """Where a run's seconds went, for the run record (`phases_s`): the driver's own phases, and
    the slowest actor's start-up from the rows (`setup_s`)."""

    plan: float | None = None  # plan_run: listing, reuse join, naming, a user model's probe
    ray_start: float | None = None  # starting (or joining) Ray; 0 if it was up (a probe's start
    # of Ray, for a user's model file, counts in `plan`)
    first_rows: float | None = None  # graph start -> the first rows back: actor start-up included
    actor_setup: float | None = None  # the slowest actor's imports and first model load
    run: float | None = None  # execute() from start to end (the run record's wall_s)

    def finished(self, writer: "_StatsWriter", run_s: float) -> dict:
        self.actor_setup, self.run = writer.max_setup_s, run_s
        return asdict(self)


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
    actor = UpscaleActor(settings)
    for block in _blocks(plan.todo, plan.images_per_call):
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


# --- Ray -------------------------------------------------------------------------------


def probe_on_ray(address: str | None):
    """A plan's probe of a user's model file: loaded once in a Ray task (never in the driver,
    which may have no TensorFlow) to learn its scale, receptive radius and SHA-256."""
    def probe(spec: ModelSpec, scale: int | None, overlap: int | None = None) -> ModelSpec:
        import ray

        init_ray(address)
        try:
            outcome = ray.get(_probe_task().remote(replace(spec, scale=scale), overlap))
        except ray.exceptions.RayError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            raise ModelError(f"cannot load model {storage.display(spec.uri)}: {first}") from None
        if isinstance(outcome, tuple):  # (error class name, one-line message)
            error = getattr(errors, outcome[0], None)
            is_model_error = isinstance(error, type) and issubclass(error, ModelError)
            raise (error if is_model_error else ModelError)(outcome[1])
        return outcome

    return probe


def _probe_task():
    import ray

    @ray.remote(num_cpus=1, max_retries=0)
    def probe(spec: ModelSpec, overlap: int | None):
        """The spec completed, or (error class, one-line message naming the user's file)."""
        try:
            if spec.arch == "onnx":  # ONNX Runtime only: no TensorFlow in this task
                from sr_batch.models.onnx import probe_onnx

                return probe_onnx(spec, spec.scale, overlap)
            from sr_batch import tiling
            from sr_batch.models.registry import load_keras_model, measure_scale, sha256_of
            from sr_batch.runtime import configure_tensorflow

            configure_tensorflow(1)
            began = time.perf_counter()
            # Pin the bytes measured: the actors verify the same SHA-256 when they load.
            spec = replace(spec, sha256=sha256_of(storage.read_bytes(spec.uri)))
            model = load_keras_model(spec, spec.scale)
            scale = measure_scale(model)
            radius = tiling.receptive_radius_from_impulse(
                lambda x: model(x, training=False).numpy(), scale)
            return replace(spec, scale=scale, receptive_radius=radius, params=int(model.count_params()),
                           probe_s=round(time.perf_counter() - began, 3))
        except Exception as exc:  # noqa: BLE001 - any failure is the model's, told in one line
            message = " ".join(str(exc).split()) or type(exc).__name__
            if storage.display(spec.uri) not in message:
                message = f"cannot load model {storage.display(spec.uri)}: {message}"
            return type(exc).__name__, message

    return probe


# Worker lines the driver does not echo (Ray's RAY_DEDUP_LOGS_SKIP_REGEX, read when `ray` is
# first imported); they stay in the workers' log files. TensorFlow 2.16+ writes absl's preamble
# and its oneDNN notice to stderr when an actor imports it, before TF_CPP_MIN_LOG_LEVEL can
# apply; on a CPU without AVX-512 FP16, oneDNN also says that half precision (which no
# sr-batch model uses) falls back to Eigen. And an idle Ray worker that Ray stops can trace
# absl mutex calls ("RAW: Lock blocking", "Unlock") as it exits: Ray's, seen without
# sr-batch's code too. A failed absl check ("RAW: Check ... failed") still shows.
QUIET_WORKER_LINES = "|".join([
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"\bport\.cc:\d+\] oneDNN custom operations are on\.",
    r"\butil\.cc:\d+\] oneDNN supports DT_HALF only on platforms with AVX-512\.",
    r"^\[mutex\.cc : \d+\] RAW: (?!Check)",
])

# Ray Data warns, once a process, that progress bars are off; the run turns them off on
# purpose (its own progress lines replace them), so the warning only alarms.
_PROGRESS_BARS_OFF = "Progress bars disabled."


# Seconds the last init_ray() spent starting (or joining) Ray; 0.0 where Ray was already up.
_ray_start_s = 0.0


def init_ray(address: str | None) -> None:
    """Start (or join) Ray once a process. Ray's console is kept to real errors unless -v
    (a DEBUG root logger) asks for everything; Ray's own log files keep every line."""
    quiet = not logging.getLogger().isEnabledFor(logging.DEBUG)
    # No address: a fresh local Ray ("local"), never a guess at whatever cluster
    # `ray start` last recorded on this machine (which may be stale and hang).
    # Inside a Ray job, RAY_ADDRESS names the job's cluster and wins.
    if address is None and not os.environ.get("RAY_ADDRESS"):
        address = "local"
    if "ray" not in sys.modules:  # Ray reads these when it is imported
        if quiet:
            _skip_worker_lines(QUIET_WORKER_LINES)
        # Lines Ray forwards from workers carry ANSI colour codes even into a log file or pipe.
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        if address == "local":
            # Token authentication on, named rather than left to Ray's default (which warns
            # that it chose it): even on 127.0.0.1, another user of this machine could otherwise
            # submit code to our Ray (dashboard, Jobs API) and read our images. The token is
            # ~/.ray/auth_token, made on first use; RAY_AUTH_MODE=disabled still opts out.
            os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    global _ray_start_s
    if ray.is_initialized():
        _ray_start_s = 0.0
        return
    began = time.perf_counter()
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
    if address == "local":
        # A one-machine Ray needs no network: Ray's single-node mode puts the node
        # (GCS, raylet, dashboard) on 127.0.0.1 instead of every interface.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # Ray turns token authentication on for every new local cluster and says so in a
        # warning line on each run (ahead of a one-line error too); it stays on, unsaid.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        # Idle workers are kept, not stopped: a worker Ray stops for idling can crash as it
        # exits (absl "Mutex corrupt", SIGABRT: Ray 2.60's, seen without sr-batch's code too;
        # 3 of 9 demo runs on a busy 2-core machine) and its crash report reaches the console.
        # A local Ray ends with the run, and so do the few workers it keeps.
        os.environ.setdefault("RAY_kill_idle_workers_interval_ms", "0")
    # A local Ray lives as long as the run and its progress lines say what the dashboard would:
    # no dashboard (a second sooner, and no HTTP server). A cluster keeps its own.
    local_only = {"include_dashboard": False} if address == "local" else {}
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True,
             runtime_env={"env_vars": env}, configure_logging=True, **local_only)
    if quiet:
        _spend_actor_restart_notice()
        _drop_log_message("ray.data._internal.progress", _PROGRESS_BARS_OFF)
    _ray_start_s = time.perf_counter() - began


def _skip_worker_lines(pattern: str) -> None:
    """Add `pattern` to the worker lines Ray's driver skips (before `ray` is imported)."""
    own = os.environ.get("RAY_DEDUP_LOGS_SKIP_REGEX")
    if own is None or pattern not in own:
        os.environ["RAY_DEDUP_LOGS_SKIP_REGEX"] = f"{own}|{pattern}" if own else pattern


# Ray Data starts every actor pool with its transformer and DataContext as object-ref arguments
# and restarts allowed; Ray's core worker answers the first such actor of a process with an
# ERROR line on stderr (ray-project/ray#57733). Harmless here: the refs live as long as the run.
_ACTOR_RESTART_NOTICE = "has constructor arguments in the object store and max_restarts > 0"


def _spend_actor_restart_notice() -> None:
    """Let Ray print its once-a-process actor-restart notice now, on a throwaway actor, with
    stderr pointed at a temporary file, so the actor pool does not print it on the console.

    Only that line is dropped (it stays in Ray's python-core-driver log): anything else written
    to stderr in the meantime is passed on. The actor does nothing and is killed at once.
    """
    import ray

    @ray.remote(num_cpus=0, max_restarts=1)
    class Throwaway:
        def __init__(self, _arg) -> None:
            pass

    arg = ray.put(None)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            actor = Throwaway.remote(arg)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        ray.kill(actor, no_restart=True)
        captured.seek(0)
        other = [line for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True)
                 if _ACTOR_RESTART_NOTICE not in line]
    sys.stderr.write("".join(other))


class _DropMessage(logging.Filter):
    """Drops the records whose message starts with `prefix`."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def _drop_log_message(logger_name: str, prefix: str) -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, _DropMessage) and f.prefix == prefix for f in logger.filters):
        logger.addFilter(_DropMessage(prefix))


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



# --- bookkeeping -----------------------------------------------------------------------


def _remove_orphan_temps(layout: OutLayout, listed: pa.Table, started: float, echo: Echo) -> None:
    """Delete the hidden temporary files an interrupted run left beside this run's outputs.

    Runs once every write of this run is done; a temporary file last touched
    before this run started belongs to a writer that was killed mid-write.
    """
    uris = pc.list_flatten(listed.column("output_uris"))
    directories = pc.unique(pc.replace_substring_regex(uris, r"/[^/]*$", "")).to_pylist()
    stats_fs, stats_path = storage.get_fs(layout.stats)
    if storage.is_local(stats_fs) and os.path.isdir(stats_path):
        directories += [entry.path for entry in os.scandir(stats_path) if entry.is_dir()]
    removed = storage.remove_orphan_temps(directories, older_than=started)
    if removed:
        echo(f"removed {removed} temporary file(s) left by an interrupted run")


def _blocks(table: pa.Table, images_per_call: int) -> list[pa.Table]:
    """Cut the manifest into blocks of one actor call each, of several calls (at most
    BLOCK_ROWS rows) above ONE_CALL_BLOCKS calls."""
    calls = math.ceil(table.num_rows / images_per_call)
    calls_per_block = min(math.ceil(calls / ONE_CALL_BLOCKS), max(1, BLOCK_ROWS // images_per_call))
    rows = images_per_call * max(1, calls_per_block)
    return [table.slice(i, rows) for i in range(0, table.num_rows, rows)]


class _StatsWriter:
    """Collects stats batches, flushes Parquet parts, prints progress and failures.

    Rows are flushed when a batch comes and, by a thread of their own, when they have waited
    --stats-flush-s while no batch came: a killed driver loses at most that much bookkeeping."""

    def __init__(self, layout: OutLayout, run_id: str, total: int, config: JobConfig,
                 echo: Echo, lock=None) -> None:
        self.lock = lock
        self.layout, self.run_id, self.total = layout, run_id, total
        self.progress_s, self.flush_s = config.progress_s, config.stats_flush_s
        self.retries, self.echo = config.retries, echo
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.rows = 0
        self.seq = 0
        self.out_pixels = 0
        self.max_setup_s: float | None = None
        self.counts: dict[str, int] = {}
        self.failures: list[dict] = []
        self.began = self.last_flush = self.last_progress = time.perf_counter()
        self._mutex = threading.Lock()  # pending rows and part numbers: the run's and the timer's
        self._stopped = threading.Event()
        self._failure: Exception | None = None  # what the timer's flush raised, for the run to raise
        self._timer = threading.Thread(target=self._flush_on_time, name="stats-flush", daemon=True)
        self._timer.start()

    def _flush_on_time(self) -> None:
        while not self._stopped.wait(max(self.flush_s, MIN_FLUSH_WAIT_S)):
            with self._mutex:
                if not self.pending or time.perf_counter() - self.last_flush < self.flush_s:
                    continue
                try:
                    self.flush()
                except Exception as exc:  # noqa: BLE001 - raised by the run at its next batch
                    self._failure = exc
                    return

    def add(self, batch: pa.Table) -> None:
        if self._failure is not None:
            raise self._failure
        with self._mutex:
            self._add(batch)

    def _add(self, batch: pa.Table) -> None:
        self.pending.append(batch)
        self.pending_rows += batch.num_rows
        self.rows += batch.num_rows
        for row in batch.select(["status", "source_uri", "error_type", "error_message",
                                 "out_width", "out_height", "setup_s"]).to_pylist():
            self.counts[row["status"]] = self.counts.get(row["status"], 0) + 1
            if row["setup_s"] is not None:
                self.max_setup_s = max(self.max_setup_s or 0.0, row["setup_s"])
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
        """One line for each of the first MAX_FAILURE_LINES failures (kept for the result);
        the rest are counted, so a run of a million bad files holds no million rows."""
        failed = self.counts.get(stats.STATUS_FAILED, 0)
        if failed <= MAX_FAILURE_LINES:
            self.echo(f"failed: {storage.display(row['source_uri'])}: {row['error_type']}: "
                      f"{storage.display(row['error_message'] or '')}")
            self.failures.append(row)
        elif failed == MAX_FAILURE_LINES + 1:
            self.echo("further failures are only counted; query the stats for all of them")

    def progress_line(self, now: float) -> str:
        elapsed = now - self.began
        rate = self.rows / elapsed if elapsed else 0.0
        eta = (self.total - self.rows) / rate if rate else float("nan")
        return (f"progress: {self.rows}/{self.total} images ({100 * self.rows / max(1, self.total):.0f}%), "
                f"{rate:.2f} img/s, {self.out_pixels / 1e6 / elapsed:.2f} MP/s out, "
                f"{self.counts.get('failed', 0)} failed, ETA {eta:.0f} s")

    def flush(self) -> None:
        if self.pending:
            stats.write_part(self.layout, self.run_id, pa.concat_tables(self.pending), self.seq,
                             self.retries)
            self.seq += 1
        self.pending, self.pending_rows = [], 0
        self.last_flush = time.perf_counter()

    def _stop_timer(self) -> None:
        self._stopped.set()
        self._timer.join()

    def close(self) -> None:
        self._stop_timer()
        if self._failure is not None:
            raise self._failure
        self.flush()

    def close_quietly(self) -> None:
        """Flush what arrived before a run stopped; a failing flush must not hide why it stopped."""
        self._stop_timer()
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001
            log.warning("could not flush the last stats rows: %s", storage.display(str(exc)))
            log.debug("the flush failed here", exc_info=True)


def _version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _mark_dead_runs(layout: OutLayout, run_id: str, retries: int, echo: Echo) -> None:
    """Rewrite as `failed` the records still `running` whose driver ran on this machine and is
    gone (lock.is_dead: kill -9, a crash), so that no run stays `running` for ever."""
    fs, runs = storage.get_fs(layout.runs)
    paths = fs.glob(runs.rstrip("/") + "/*.json")
    # One call for all: object stores fetch them concurrently. Unreadable ones are left out.
    contents = fs.cat(paths, on_error="omit") if paths else {}
    for path, data in sorted(contents.items()):
        try:
            record = json.loads(data)
        except ValueError:
            continue  # a record is a convenience; an unreadable one is left alone
        if (not isinstance(record, dict) or record.get("status") != "running"
                or record.get("run_id") == run_id or not is_dead(record)):
            continue
        record.update(status="failed", error=(f"its driver (pid {record['pid']} on {record['host']}) "
                                              f"ended without recording how the run ended"))
        try:
            storage.write_bytes_atomic("file://" + path if storage.is_local(fs) else fs.unstrip_protocol(path),
                                       json.dumps(record, indent=2, default=str).encode(), retries)
        except ImageError as exc:  # WriteError: the record stays as it was; the run goes on
            log.warning("could not record run %s as failed: %s", record.get("run_id"), exc)
            continue
        echo(f"run {storage.display(str(record.get('run_id')))}: recorded as failed (its driver, pid "
             f"{record['pid']}, is gone)")


def _onnx_runtime(plan: RunPlan) -> dict:
    """For an ONNX model: ONNX Runtime's version and the execution provider the actors take
    (CUDA where they have GPUs and this build has it, else the CPU), as the driver's ONNX
    Runtime sees them; {} for other models."""
    if plan.model.arch != "onnx":
        return {}
    try:
        from sr_batch.models.onnx import session_providers

        providers = session_providers()
    except Exception:  # noqa: BLE001 - no ONNX Runtime on the driver: the version says so
        providers = []
    gpu = plan.config.gpus_per_actor > 0 and "CUDAExecutionProvider" in providers
    return {"onnxruntime": _version("onnxruntime", "onnxruntime-gpu"),
            "onnxruntime_provider": "CUDAExecutionProvider" if gpu else "CPUExecutionProvider",
            "onnxruntime_providers_available": providers}


def _write_run_record(plan: RunPlan, status: str, started_at: dt.datetime,
                      pool: tuple[int, int] | None = None, counts: dict | None = None,
                      result: RunResult | None = None, error: str | None = None,
                      quiet: bool = False, phases: dict | None = None) -> None:
    """OUT/runs/<run_id>.json: written first as `running` (which also proves OUT is writable
    before any image is touched), then as finished, interrupted or failed."""
    config, tiling = plan.config, plan.tiling
    record = {
        "run_id": plan.run_id,
        "status": status,
        "config": {**config.to_dict(), "actors": pool and list(pool)},
        "plan": {"tile_sides": tiling and list(tiling.sides), "tile_overlap": tiling and tiling.overlap,
                 "tile_blend": tiling and tiling.blend, "whole_image": tiling and tiling.whole,
                 "seam_max_levels": tiling and tiling.seam and tiling.seam[0],
                 "seam_mean_levels": tiling and tiling.seam and tiling.seam[1],
                 "images_per_call": plan.images_per_call, "denoise": plan.denoise,
                 "listed": plan.listed.num_rows, "todo": plan.todo.num_rows,
                 "skipped": plan.skipped.num_rows},
        "model": asdict(plan.model),
        "counts": counts,
        "error": error,
        **holder(),
        "started_at": started_at.isoformat(),
        "finished_at": status != "running" and dt.datetime.now(dt.timezone.utc).isoformat() or None,
        "wall_s": result and result.wall_s,
        "images_per_s": result and result.images_per_s,
        "output_megapixels_per_s": result and result.output_megapixels_per_s,
        "phases_s": phases,
        "versions": {"sr_batch": sr_batch.__version__, "ray": _version("ray"),
                     "tensorflow": _version("tensorflow", "tensorflow-cpu"),
                     "keras": _version("keras"), "python": sys.version.split()[0],
                     **_onnx_runtime(plan)},
    }
    try:
        storage.write_bytes_atomic(plan.layout.run_record(plan.run_id),
                                   json.dumps(record, indent=2, default=str).encode(), config.retries)
    except ImageError as exc:  # WriteError: nothing of this run could be recorded
        if quiet:
            log.warning("could not record the run as %s: %s", status, exc)
            return
        raise StorageError(f"cannot write to the output {storage.display(plan.layout.root)}: {exc}") from None
