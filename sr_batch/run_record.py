"""The run record, OUT/runs/<run_id>.json: what a run was asked, planned and did.

Written as `running` before any image (which also proves OUT is writable), then as
`finished`, `interrupted` or `failed`, with the counts, the rates, where the seconds went
(`phases_s`) and the versions that made the outputs. A record left `running` by a driver that
is gone is marked `failed` by the next run.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Callable

import sr_batch
from sr_batch import storage
from sr_batch.errors import ImageError, StorageError
from sr_batch.layout import OutLayout
from sr_batch.lock import holder, is_dead
from sr_batch.plan import RunPlan

log = logging.getLogger(__name__)


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

    def finished(self, actor_setup_s: float | None, run_s: float) -> dict:
        """The phases as the record keeps them, with the rows' slowest actor set-up and the run."""
        self.actor_setup, self.run = actor_setup_s, run_s
        return asdict(self)


def mark_dead_runs(layout: OutLayout, run_id: str, retries: int,
                   echo: Callable[[str], None]) -> None:
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


def _version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


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


def write_run_record(plan: RunPlan, status: str, started_at: dt.datetime,
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
