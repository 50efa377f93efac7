"""config -> RunPlan: everything a run decides before any image is touched.

    plan_run(config) resolves, once:
      the model (zoo entry, bicubic, or a user's file probed for its scale and radius),
      the tiling (tile sides and overlap),
      the OUT layout and every row's output name (naming.py: collisions and escapes fail their row),
      the reuse key, and the rows to do and to skip (one DuckDB join, incremental.py),
      the images per actor call (from a sample of the images' headers).

`sr-batch run` executes a plan (pipeline.py); `sr-batch nightly` writes its rows to
do as a manifest and submits them (nightly.py); `--dry-run` prints it.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from sr_batch import incremental, manifest, storage
from sr_batch import tiling as tiling_rules
from sr_batch.config import (CALL_SIZE_SAMPLE, DEFAULT_IMAGES_PER_CALL, DEFAULT_TILE_CORE,
                             LARGE_TILE_CORE, PIXELS_PER_CALL, SCALES, JobConfig, check_run_id)
from sr_batch.errors import ConfigError, ModelNotFoundError, ModelScaleError
from sr_batch.layout import OutLayout
from sr_batch.model_probe import read_probe, write_probe
from sr_batch.models import registry
from sr_batch.models.registry import ModelSpec
from sr_batch.naming import keep_planned_outputs, plan_outputs
from sr_batch.settings import Route
from sr_batch.sizing import check_reachable
from sr_batch.tiling import Tiling, tile_core

# How long the driver waits for the sampled headers in all: a slow or hung source (a
# network stall) costs the sizing its sample, never the run.
HEADER_SAMPLE_TIMEOUT_S = 20.0

Probe = Callable[[ModelSpec, "int | None", "int | None"], ModelSpec]
"""(spec of a user's file, --scale or None, --tile-overlap or None) -> the spec completed."""
# The zoo's scale when none is asked and no model file says it.
DEFAULT_SCALE = 2
# `--model auto`: each image gets the clean default or `real` at a denoise strength (routing.py).
AUTO = "auto"


def new_run_id() -> str:
    """Sortable, unique, never all digits (so hive partitioning reads it as a string)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


# --- tiling ---------------------------------------------------------------------------


def resolve_tiling(config: JobConfig, radius: int, fixed_side: int | None = None,
                   spec: ModelSpec | None = None) -> Tiling:
    """--tile-size/--tile-overlap as given, else two tiles (128 and 256 px cores) around the
    model's receptive radius; a model with a fixed input side (some ONNX exports) takes
    tiles of that side only. Tiles are feathered (tiling.feather_width) where the overlap is
    below the model's exact radius or the model has none (`spec.tiles_exactly` False)."""
    overlap = radius if config.tile_overlap is None else config.tile_overlap
    exact = spec is None or spec.tiles_exactly
    blend = tiling_rules.feather_width(overlap, radius if exact else None)
    seam = (0.0, 0.0) if blend == 0 else (spec.seam_at(overlap) if spec is not None else None)
    if config.whole_image:
        if fixed_side is not None:
            raise ConfigError(f"this model takes fixed {fixed_side} px tiles; drop --whole-image")
        return Tiling((DEFAULT_TILE_CORE + 2 * overlap,), overlap, 0, (0.0, 0.0), whole=True)
    if fixed_side is not None:
        if config.tile_size not in (None, fixed_side):
            raise ConfigError(f"this model takes fixed {fixed_side} px tiles; drop --tile-size {config.tile_size}")
        config = config.replace(tile_size=fixed_side)
    if config.tile_size is None:
        return Tiling((DEFAULT_TILE_CORE + 2 * overlap, LARGE_TILE_CORE + 2 * overlap), overlap,
                      blend, seam)
    try:
        tile_core(config.tile_size, overlap)
    except ValueError:
        raise ConfigError(
            f"--tile-size {config.tile_size} is too small for a tile overlap of {overlap} px "
            f"(the model's receptive-field radius); use --tile-size > {2 * overlap}") from None
    return Tiling((config.tile_size,), overlap, min(blend, (config.tile_size - 2 * overlap) // 2), seam)


def overlap_warning(config: JobConfig, spec: ModelSpec, tiling: Tiling) -> str | None:
    """One line where --tile-overlap is below what the model needs (its exact radius, or the
    overlap its decay asks for), with the seam the probe measured there; else None."""
    if config.tile_overlap is None or spec.receptive_radius is None:
        return None
    if config.tile_overlap >= spec.receptive_radius:
        return None
    seam = ("tiles differ from the whole image along their borders (not measured for zoo models)"
            if tiling.seam is None else
            f"tiles differ from the whole image by up to {tiling.seam[0]:.1f} 8-bit levels "
            f"(mean {tiling.seam[1]:.2f}) on the probe image")
    return (f"warning: --tile-overlap {config.tile_overlap} is below the {spec.receptive_radius} px "
            f"{spec.name} needs: {seam}; feathered over {tiling.blend} px. Drop --tile-overlap "
            f"for the model's own, or use --whole-image")


# --- header sampling -------------------------------------------------------------------


def sample_pixels(todo: pa.Table, retries: int, timeout_s: float = HEADER_SAMPLE_TIMEOUT_S,
                  read_timeout_s: float | None = None) -> list[int]:
    """Pixel counts from the headers of up to CALL_SIZE_SAMPLE images spread evenly over the
    rows to do; rows whose header cannot be read in time, or at all, are left out (the job
    itself reports those images). Local files that are not regular files (a FIFO, a device)
    are never opened."""
    from sr_batch import streaming

    planned = todo.filter(pc.is_null(todo.column("plan_error_type")))
    if planned.num_rows == 0:
        return []
    step = max(1, planned.num_rows // CALL_SIZE_SAMPLE)
    picks = pa.array(range(0, planned.num_rows, step)[:CALL_SIZE_SAMPLE], pa.int64())
    uris = planned.column("uri").take(picks).to_pylist()
    found: list[int] = []

    def read(uri: str) -> None:
        try:
            if uri.startswith("file://") and not stat.S_ISREG(os.stat(uri[len("file://"):]).st_mode):
                return
            with storage.open_input(uri, retries, storage.HEADER_BLOCK_SIZE, read_timeout_s) as handle:
                pixels = streaming.count_pixels(handle)
            if pixels:
                found.append(pixels)
        except Exception:  # noqa: BLE001 - any failure only drops this image from the sample
            return

    # Daemon threads: one stuck on a stalled read must not keep the driver alive.
    threads = [threading.Thread(target=read, args=(uri,), daemon=True) for uri in uris]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return list(found)


def images_per_call(config: JobConfig, todo: pa.Table) -> int:
    """--images-per-call as given, else about PIXELS_PER_CALL input pixels a call for the median
    of a sample of the images' headers, 1 to DEFAULT_IMAGES_PER_CALL images."""
    if config.images_per_call is not None:
        return config.images_per_call
    return calls_for_sample(config, sample_pixels(todo, config.retries, read_timeout_s=config.read_timeout_s))


def calls_for_sample(config: JobConfig, pixels: list[int] | tuple[int, ...]) -> int:
    """Images per call for the input pixels of a header sample (see images_per_call)."""
    if config.images_per_call is not None:
        return config.images_per_call
    pixels = sorted(pixels)
    if not pixels:
        return DEFAULT_IMAGES_PER_CALL
    median = pixels[len(pixels) // 2]
    return max(1, min(DEFAULT_IMAGES_PER_CALL, PIXELS_PER_CALL // median))


# --- the plan --------------------------------------------------------------------------


@dataclass(frozen=True)
class RunPlan:
    """A run, decided: what the actors get and which rows they get."""

    run_id: str
    config: JobConfig
    """What the user asked for, with the scale resolved (a model file's own where none was asked)."""
    layout: OutLayout
    model: ModelSpec
    """Resolved: scale and receptive radius known (None radius only for an unprobed user file)."""
    tiling: Tiling | None
    """None only where the model's radius is unknown (nightly with a user file)."""
    denoise: float | None
    """--denoise for models shipped as a mild/strong pair; None for the others."""
    pass_models: tuple[tuple[ModelSpec, Tiling], ...]
    """Models of the same name at other scales, with their tiling, for images whose asked
    output size needs a second pass (x8 = x4 then x2); empty when no output size is asked."""
    routes: tuple[Route, ...]
    """`--model auto`: the Route of every model an image may be given; else empty."""
    identity: str | None
    """`--model auto`: the model_sha256 its rows record (the rules and every model); else None."""
    reuse_key: incremental.ReuseKey
    listed: pa.Table
    """Every manifest row with its planned output names."""
    todo: pa.Table
    """Rows to run."""
    reasons: pa.Array
    """Why each row of `todo` is to be done, aligned with it: one of incremental.REASONS (new,
    changed_source, changed_settings, failed_before, forced). A row that fails in planning has
    its plan_error_type besides."""
    skipped: pa.Table
    """`skipped` stats rows for the images an earlier run already finished."""
    images_per_call: int
    sample_pixels: tuple[int, ...] = ()
    """Input pixels of each header read from a sample of `todo` (up to CALL_SIZE_SAMPLE); empty
    where none was read or none was asked for (--images-per-call given, nightly)."""
    warning: str | None = None
    """One line for the user before the run: --tile-overlap below what the model needs."""


def resolve_model(config: JobConfig, probe: Probe | None, layout: OutLayout | None = None) -> ModelSpec:
    """The spec of --model at --scale (under auto, the clean default's). A user's file is hashed,
    then completed from OUT's probe cache (`layout`) or probed (scale, radius or decay, seam
    bound) when a probe is given, and the probe cached; else left unprobed (radius None)."""
    spec = registry.resolve_model(None if config.model == AUTO else config.model,
                                  config.scale or DEFAULT_SCALE)
    if spec.arch == "onnx" and config.precision != "float32":
        raise ConfigError(f"--precision {config.precision} applies to Keras models; {spec.name} is "
                          f"ONNX and runs in the precision it was exported in (use float32)")
    if spec.receptive_radius is not None:
        return spec
    spec = replace(spec, sha256=registry.sha256_of(storage.read_bytes(spec.uri)))
    cached = read_probe(layout, spec) if layout is not None else None
    wanted = config.tile_overlap
    if cached is not None and (wanted is None or cached.seam_at(wanted) is not None):
        if config.scale is not None and cached.scale != config.scale:
            raise ModelScaleError(f"model {spec.name!r} upscales by x{cached.scale}, but --scale "
                                  f"{config.scale} was given; drop --scale to use the model's own")
        return cached
    if probe is None:
        return spec
    spec = probe(spec, config.scale, wanted)
    if layout is not None:
        write_probe(layout, spec, config.retries)
    return spec


def resolve_pass_models(config: JobConfig, spec: ModelSpec) -> tuple[tuple[ModelSpec, Tiling], ...]:
    """The models a second pass may use, each with its tiling: the zoo's other scales of the
    same name (bicubic at every scale; a user's file, its own scale only)."""
    if not config.output_size.asked or spec.arch in ("keras", "onnx"):
        return ()
    if spec.is_bicubic:
        others = [registry.bicubic_spec(s) for s in SCALES if s != config.scale]
    else:
        others = [m for m in registry.list_models() if m.name == spec.name and m.scale != config.scale]
    return tuple((m, resolve_tiling(config.replace(tile_overlap=None), m.receptive_radius)) for m in others)


def resolve_routes(config: JobConfig, clean: ModelSpec) -> tuple[tuple, str | None]:
    """`--model auto`: (a Route for the clean default and one for `real` at every denoise level
    the rules use; the identity its rows record). Other models: ((), None)."""
    from sr_batch.routing import DENOISE_LEVELS, RULES_VERSION

    if config.model != AUTO:
        return (), None
    if clean.has_denoise:
        raise ConfigError(f"the x{config.scale} default {clean.name} cannot be auto's clean model")
    routes = [Route("clean", clean, resolve_tiling(config, clean.receptive_radius), None,
                    resolve_pass_models(config, clean))]
    try:
        real = registry.resolve_model("real", config.scale)
    except ModelNotFoundError:
        real = None  # no `real` at this scale: every image takes the clean model
    if real is not None:
        tiling, passes = resolve_tiling(config, real.receptive_radius), resolve_pass_models(config, real)
        routes += [Route(f"real dn{level:g}", real, tiling, level, passes) for level in DENOISE_LEVELS]
    parts = [f"rules v{RULES_VERSION}", *(f"{r.key}={r.model.identity}" for r in routes)]
    return tuple(routes), registry.sha256_of("|".join(parts).encode())


def resolve_denoise(config: JobConfig, spec: ModelSpec) -> float | None:
    if config.model == AUTO:
        if config.denoise is not None:
            raise ConfigError("--model auto chooses --denoise for each image; drop --denoise")
        return None
    if spec.has_denoise:
        return registry.DEFAULT_DENOISE if config.denoise is None else config.denoise
    if config.denoise is not None:
        raise ConfigError(f"--denoise needs a model shipped with a denoise pair (real); "
                          f"{spec.name} has none")
    return None


def plan_run(config: JobConfig, *, run_id: str | None = None, probe: Probe | None = None,
             size_calls: bool = True) -> RunPlan:
    """Decide the run. `probe` learns a user file's scale and radius (a Ray task in `run`;
    nightly and dry runs plan without one and match earlier runs of any overlap).
    `size_calls` reads a sample of headers to size the actor calls (a dry run reads it
    whatever is asked, to tell the pixels)."""
    check_run_id(run_id)
    run_id = run_id or config.run_id or new_run_id()
    layout = OutLayout.of(config.output)
    layout.check_folders(run_id)
    table = manifest.load_sources(config.sources)
    spec = resolve_model(config, probe, layout)
    # From here on the scale is the model's (a file's own, where --scale was not given).
    config = config.replace(scale=spec.scale or config.scale or DEFAULT_SCALE)
    tiling = (resolve_tiling(config, spec.receptive_radius, spec.input_side, spec)
              if spec.receptive_radius is not None else None)
    warning = overlap_warning(config, spec, tiling) if tiling is not None else None
    denoise = resolve_denoise(config, spec)
    pass_models = resolve_pass_models(config, spec)
    check_reachable(config.output_size, config.scale, (config.scale, *(m.scale for m, _ in pass_models)))
    routes, auto_identity = resolve_routes(config, spec)
    identity = spec.identity
    if routes:  # auto: its own identity; each route's overlap covers its model's radius
        key = replace(incremental.ReuseKey.of(config, auto_identity, None, None), denoise_per_image=True)
    else:
        key = incremental.ReuseKey.of(config, identity, tiling and tiling.overlap, denoise)
    listed = plan_outputs(table, layout, config.format)
    if table.column("planned_outputs").null_count < table.num_rows:
        listed = keep_planned_outputs(listed, layout)
    split = (incremental.force_all(listed) if config.force else
             incremental.split_manifest(listed, incremental.find_earlier(layout, listed, key), key))
    # A dry run always reads the sample: it tells how many pixels would run.
    wants_sample = config.dry_run or (size_calls and config.images_per_call is None)
    pixels = (tuple(sample_pixels(split.todo, config.retries, read_timeout_s=config.read_timeout_s))
              if wants_sample and split.todo.num_rows else ())
    calls = calls_for_sample(config, pixels) if size_calls else (
        config.images_per_call or DEFAULT_IMAGES_PER_CALL)
    return RunPlan(run_id=run_id, config=config, layout=layout,
                   model=spec, tiling=tiling, denoise=denoise, pass_models=pass_models,
                   routes=routes, identity=auto_identity, reuse_key=key, listed=listed,
                   todo=split.todo, reasons=split.reasons, skipped=split.skipped,
                   images_per_call=calls, sample_pixels=pixels, warning=warning)


def with_run_id(plan: RunPlan, run_id: str) -> RunPlan:
    return replace(plan, run_id=run_id)
