"""What a run would do, without doing it: `sr-batch run|nightly ... --dry-run`.

    sr-batch run photos/ --output out/ --dry-run --plan-manifest todo.parquet

Plans the run as it would run (plan.py: the listing, every output name, the one join
against earlier stats, a sample of headers) and tells, in a few lines on stderr:
how many images would run and why (new, changed source, changed settings, failed
before), how many would fail in planning (path_escape, output_collision) and how
many would be skipped; about how many megapixels in and out, extrapolated from the
header sample; and about how long, at the output rate recorded in OUT/runs by the
finished run of the same model and scale that wrote the most megapixels (a rate that
includes that run's start, so it errs long for a run much larger than it). Writes nothing (no stats, run record,
lock or nightly manifest) but the --plan-manifest asked for, submits nothing and
starts no Ray: a user's model file is not loaded (so not probed), and is compared
with earlier runs of any tile overlap, as nightly does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from sr_batch import incremental, manifest, storage
from sr_batch.config import CALL_SIZE_SAMPLE, JobConfig
from sr_batch.layout import OutLayout
from sr_batch.naming import planned_outputs_column
from sr_batch.pipeline import Echo, echo_stderr
from sr_batch.plan import RunPlan, plan_run


@dataclass(frozen=True)
class RecordedRate:
    """An earlier run's output rate, from its record OUT/runs/<run_id>.json."""

    run_id: str
    output_megapixels_per_s: float
    wall_s: float
    """The run's wall time: its rate includes its start (Ray, actors, model), so a small run
    tells a low rate."""

    @property
    def output_megapixels(self) -> float:
        return self.output_megapixels_per_s * self.wall_s


@dataclass(frozen=True)
class Preview:
    """What a dry run found; `lines()` is what it tells."""

    command: str
    """`run` or `nightly`."""
    plan: RunPlan
    to_run: dict[str, int]
    """Rows that would run, by reason (incremental.REASONS), planning failures left out."""
    failing: dict[str, int]
    """Rows that would fail in planning, by error type (path_escape, output_collision)."""
    sampled: int
    """Headers asked for."""
    input_megapixels: float | None
    """About how many input megapixels would run (None: no header could be read)."""
    rate: RecordedRate | None
    plan_manifest: str | None
    """Where the rows to run were written (None: not asked)."""

    @property
    def output_megapixels(self) -> float | None:
        scale = self.plan.config.scale
        return None if self.input_megapixels is None else self.input_megapixels * scale * scale

    @property
    def estimate_s(self) -> float | None:
        """Seconds at the recorded rate; None without pixels or a rate."""
        if self.output_megapixels is None or self.rate is None:
            return None
        return self.output_megapixels / self.rate.output_megapixels_per_s

    def lines(self) -> list[str]:
        plan, config = self.plan, self.plan.config
        model = f"{plan.model.name} x{config.scale}"
        running = sum(self.to_run.values())
        lines = [f"dry run of sr-batch {self.command}: {plan.listed.num_rows} images listed; "
                 f"nothing {'submitted or ' if self.command == 'nightly' else ''}written"
                 + (" but the plan manifest" if self.plan_manifest else "")]
        lines.append(f"  would run {running}" + (f": {_counts(self.to_run)}" if running else ""))
        if self.failing:
            lines.append(f"  would fail in planning {sum(self.failing.values())}: {_counts(self.failing, words=False)}")
        lines.append(f"  would skip {plan.skipped.num_rows}"
                     + (": unchanged since earlier runs with these settings" if plan.skipped.num_rows else ""))
        if running and self.input_megapixels is None:
            lines.append(f"  pixels unknown: none of the {self.sampled} sampled headers could be read; "
                         "no time estimate")
        elif running:
            read = len(plan.sample_pixels)
            sample = f"{read} headers" if read == self.sampled else f"{read} of {self.sampled} sampled headers"
            lines.append(f"  about {_mp(self.input_megapixels)} MP in, {_mp(self.output_megapixels)} MP out "
                         f"(x{config.scale}), from {sample}")
            if self.rate is None:
                lines.append(f"  no time estimate: no finished run of {model} in "
                             f"{storage.display(plan.layout.runs)} recorded a rate")
            else:
                lines.append(f"  about {_duration(self.estimate_s)} at "
                             f"{self.rate.output_megapixels_per_s:.2f} MP/s out, the rate of run "
                             f"{self.rate.run_id} ({model}: {_mp(self.rate.output_megapixels)} MP "
                             f"out in {self.rate.wall_s:.1f} s)")
        lines.append(f"  model {model}{_model_detail(plan, self.command)}")
        if self.plan_manifest is not None:
            lines.append(f"  wrote the {plan.todo.num_rows} rows to run to {storage.display(self.plan_manifest)}")
        return lines


def dry_run(config: JobConfig, echo: Echo = echo_stderr, *, command: str = "run") -> Preview:
    """Plan `config` as `sr-batch COMMAND` would, tell what it would do (module docstring),
    and write the rows to run to --plan-manifest when asked; nothing else is written."""
    plan = plan_run(config, probe=None, size_calls=command == "run")
    preview = summarize(plan, command)
    if config.plan_manifest is not None:
        write_plan_manifest(plan, config.plan_manifest)
    for line in preview.lines():
        echo(line)
    return preview


def summarize(plan: RunPlan, command: str = "run") -> Preview:
    """Counts by reason, megapixels from the header sample, and the recorded rate."""
    failed = pc.is_valid(plan.todo.column("plan_error_type"))
    to_run = _value_counts(plan.reasons.filter(pc.invert(failed)), incremental.REASONS)
    failing = _value_counts(plan.todo.column("plan_error_type").filter(failed))
    planned = sum(to_run.values())
    pixels = plan.sample_pixels
    megapixels = sum(pixels) / len(pixels) * planned / 1e6 if pixels else None
    return Preview(command=command, plan=plan, to_run=to_run, failing=failing,
                   sampled=min(planned, CALL_SIZE_SAMPLE), input_megapixels=megapixels,
                   rate=find_rate(plan.layout, plan.model.name, plan.config.scale),
                   plan_manifest=plan.config.plan_manifest and storage.to_uri(plan.config.plan_manifest))


def find_rate(layout: OutLayout, model: str, scale: int) -> RecordedRate | None:
    """The output rate of the finished run of `model` at `scale` in OUT/runs that wrote the
    most output megapixels (the latest of equals): the one its start weighs on least."""
    fs, path = storage.get_fs(layout.runs)
    try:
        records = fs.cat(fs.glob(path.rstrip("/") + "/*.json"), on_error="omit")
    except OSError:
        return None
    best = None
    for name, data in records.items():
        try:
            record = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            continue  # not a run record: ignored
        if not isinstance(record, dict) or record.get("status") != "finished":
            continue
        rate, wall_s = record.get("output_megapixels_per_s"), record.get("wall_s")
        spec = record.get("model") or {}
        run_scale = (record.get("config") or {}).get("scale", spec.get("scale"))
        if (spec.get("name") != model or run_scale != scale or not isinstance(rate, (int, float))
                or not isinstance(wall_s, (int, float)) or not (rate > 0 and wall_s > 0)):
            continue
        found = RecordedRate(str(record.get("run_id") or name), float(rate), float(wall_s))
        rank = (found.output_megapixels, str(record.get("finished_at") or ""))
        if best is None or rank > best[0]:
            best = (rank, found)
    return best and best[1]


def write_plan_manifest(plan: RunPlan, uri: str) -> None:
    """The rows to run as a manifest (`sr-batch run FILE` runs them), with their `reason`."""
    todo = plan.todo.set_column(plan.todo.schema.get_field_index("planned_outputs"), "planned_outputs",
                                planned_outputs_column(plan.todo))
    rows = todo.select(manifest.MANIFEST_SCHEMA.names).append_column("reason", plan.reasons)
    manifest.write_manifest(rows, uri)


def _value_counts(values: pa.Array | pa.ChunkedArray, order: tuple[str, ...] = ()) -> dict[str, int]:
    """Counts of each value: those named in `order` first, in that order, then by name."""
    counts = {c["values"]: c["counts"] for c in pc.value_counts(values).to_pylist()}
    rank = {name: i for i, name in enumerate(order)}
    return {name: counts[name] for name in sorted(counts, key=lambda v: (rank.get(v, len(rank)), v))}


def _counts(counts: dict[str, int], words: bool = True) -> str:
    """`150 new, 20 changed source`: reasons in words; error types (`words=False`) as named."""
    return ", ".join(f"{n} {name.replace('_', ' ') if words else name}" for name, n in counts.items())


def _mp(megapixels: float) -> str:
    return f"{megapixels:,.0f}" if megapixels >= 100 else f"{megapixels:.3g}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{math.ceil(seconds)} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _model_detail(plan: RunPlan, command: str) -> str:
    if plan.tiling is None:
        return " (a model file: not loaded in a dry run; its scale and tiles are checked when it runs)"
    # nightly leaves the call size to the job, which reads its own sample
    calls = f", {plan.images_per_call} images a call" if command == "run" else ""
    return f", tiles {'/'.join(map(str, plan.tiling.sides))} px (overlap {plan.tiling.overlap}){calls}"
