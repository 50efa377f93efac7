"""config -> RunPlan: everything a run decides before any image is touched.

    plan_run(config) resolves, once:
      the model (zoo entry, bicubic, or a user's file probed for its scale and radius),
      the tiling (tile sides and overlap),
      the OUT layout and every row's output name (collisions and escapes fail their row),
      the reuse key, and the rows to do and to skip (one DuckDB join, incremental.py),
      the images per actor call (from a sample of the images' headers).

`sr-batch run` executes a plan (pipeline.py); `sr-batch nightly` writes its rows to
do as a manifest and submits them (nightly.py); `--dry-run` prints it.
"""

from __future__ import annotations

import datetime as dt
import os
import posixpath
import stat
import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from sr_batch import incremental, manifest, stats, storage
from sr_batch.config import (CALL_SIZE_SAMPLE, DEFAULT_IMAGES_PER_CALL, DEFAULT_TILE_CORE,
                             LARGE_TILE_CORE, PIXELS_PER_CALL, SCALES, JobConfig)
from sr_batch.errors import ConfigError, ImageError, ModelNotFoundError, PathEscapeError
from sr_batch.layout import OutLayout
from sr_batch.models import registry
from sr_batch.models.registry import ModelSpec

# How long the driver waits for the sampled headers in all: a slow or hung source (a
# network stall) costs the sizing its sample, never the run.
HEADER_SAMPLE_TIMEOUT_S = 20.0

# The extension each input extension keeps under --format keep; anything else becomes PNG.
_KEEP_EXTENSION = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp",
                   ".tif": "tif", ".tiff": "tif"}
FORMAT_EXTENSION = {"png": "png", "jpeg": "jpg", "webp": "webp", "tiff": "tif"}
EXTENSION_FORMAT = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "webp": "webp", "tif": "tiff",
                    "tiff": "tiff"}

Probe = Callable[[ModelSpec, int], ModelSpec]
# `--model auto`: each image gets the clean default or `real` at a denoise strength (routing.py).
AUTO = "auto"


def new_run_id() -> str:
    """Sortable, unique, never all digits (so hive partitioning reads it as a string)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


# --- tiling ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Tiling:
    """The tiles the model sees: fixed square sides (one traced function each) and the context
    each tile carries around its core."""

    sides: tuple[int, ...]
    """Every tile side, input px, ascending; each image takes the one that runs fewer padded pixels."""
    overlap: int
    """Context per tile side, input px (at least the model's receptive radius: no seams)."""

    @property
    def largest(self) -> int:
        """What a streamed block is cut to fill."""
        return self.sides[-1]


def resolve_tiling(config: JobConfig, radius: int, fixed_side: int | None = None) -> Tiling:
    """--tile-size/--tile-overlap as given, else two tiles (128 and 256 px cores) around the
    model's receptive radius; a model with a fixed input side (some ONNX exports) takes
    tiles of that side only."""
    overlap = radius if config.tile_overlap is None else config.tile_overlap
    if fixed_side is not None:
        if config.tile_size not in (None, fixed_side):
            raise ConfigError(f"this model takes fixed {fixed_side} px tiles; drop --tile-size {config.tile_size}")
        config = config.replace(tile_size=fixed_side)
    if config.tile_size is None:
        return Tiling((DEFAULT_TILE_CORE + 2 * overlap, LARGE_TILE_CORE + 2 * overlap), overlap)
    if config.tile_size - 2 * overlap < 1:
        raise ConfigError(
            f"--tile-size {config.tile_size} is too small for a tile overlap of {overlap} px "
            f"(the model's receptive-field radius); use --tile-size > {2 * overlap}")
    return Tiling((config.tile_size,), overlap)


# --- output names ----------------------------------------------------------------------


def output_extensions(requested: str, source_name: str) -> tuple[str, ...]:
    """The extensions a row may be written with, the planned one first.

    The others are where the writer must go when the planned format cannot hold
    the image: PNG for alpha in JPEG and for 16 bits in JPEG or WebP, TIFF for a
    TIFF input streamed above --max-pixels.
    """
    source_ext = posixpath.splitext(source_name)[1].lower()
    primary = (_KEEP_EXTENSION.get(source_ext, "png") if requested == "keep"
               else FORMAT_EXTENSION[requested])
    others = []
    if primary in ("jpg", "webp"):
        others.append("png")
    if source_ext in (".tif", ".tiff") and primary != "tif":
        others.append("tif")
    return (primary, *others)


def plan_outputs(table: pa.Table, layout: OutLayout, requested: str) -> pa.Table:
    """Every row's output names: add `output_exts` and `output_uris` (aligned lists, the
    planned one first) and `plan_error_type` / `plan_error_message`.

    Names are decided here, before any image runs, so no two rows can write the same
    file. Two rows that name the same file (two equal `output_uri`s, or an `output_uri`
    equal to another row's default name) are a collision: the later row fails with
    output_collision. Two sources whose default names meet (`a.gif` and `a.png` both
    become `a.png`) are not: the one whose name it is keeps it and the other keeps its
    source's extension (`a.gif.png`); so do the fallback names (PNG for alpha in JPEG,
    TIFF for a streamed image). Outputs lie under OUT/images, never on the run's own
    files; a path that leaves it (`..`, a foreign output_uri, a link in OUT) fails that
    row with path_escape.
    """
    n = table.num_rows
    relatives = table.column("relative_path").to_pylist()
    overrides = table.column("output_uri").to_pylist()
    names: list[dict[str, str]] = [{} for _ in range(n)]  # ext -> uri, the planned one first
    errors: list[tuple[str, str] | None] = [None] * n
    owner: dict[str, int] = {}

    def collide(i: int, uri: str) -> None:
        errors[i] = ("output_collision", f"two manifest rows write the same output ({storage.display(uri)})")
        for name in names[i].values():
            owner.pop(name, None)
        names[i] = {}

    # 1. output_uri overrides, as given; the later of two equal ones fails.
    for i in range(n):
        if not overrides[i]:
            continue
        try:
            uri = layout.check_output(overrides[i])
            ext = posixpath.splitext(uri)[1].lower().lstrip(".")
            if ext not in EXTENSION_FORMAT:
                raise PathEscapeError(f"output_uri {storage.display(uri)} must end in "
                                      f".png, .jpg, .jpeg, .webp, .tif or .tiff")
        except ImageError as exc:
            errors[i] = (exc.error_type, str(exc))
            continue
        if uri in owner:
            collide(i, uri)
            continue
        owner[uri] = i
        names[i] = {ext: uri}

    # 2. default names, planned extension before fallbacks, and at each step the rows whose
    #    name it is (a.png for `a.png`) before the rows that map onto it (`a.gif`).
    stems, exts = {}, {}
    for i in range(n):
        if overrides[i]:
            continue
        try:
            stems[i] = layout.image_path(posixpath.splitext(relatives[i])[0])
            exts[i] = output_extensions(requested, relatives[i])
        except ImageError as exc:
            errors[i] = (exc.error_type, str(exc))
    own_name_first = sorted(stems, key=lambda i: not relatives[i].lower().endswith("." + exts[i][0]))
    for rank in range(max((len(e) for e in exts.values()), default=0)):
        for i in own_name_first:
            if errors[i] is not None or rank >= len(exts[i]):
                continue
            ext = exts[i][rank]
            plain = f"{stems[i]}.{ext}"
            holder = owner.get(plain)
            if rank == 0 and holder is not None and overrides[holder]:
                # An output_uri names this row's own output: the later row of the two fails.
                if holder < i:
                    collide(i, plain)
                    continue
                collide(holder, plain)
                holder = None
            if holder is None:
                uri = plain
            else:
                source_ext = posixpath.splitext(relatives[i])[1]
                uri = f"{stems[i]}{source_ext}.{ext}"
                if not source_ext or uri in owner:
                    collide(i, uri)
                    continue
            owner[uri] = i
            names[i][ext] = uri

    ok = [errors[i] is None for i in range(n)]
    return (table.append_column("output_exts", pa.array(
                [list(names[i]) if ok[i] else None for i in range(n)], pa.list_(pa.string())))
                 .append_column("output_uris", pa.array(
                [list(names[i].values()) if ok[i] else None for i in range(n)], pa.list_(pa.string())))
                 .append_column("plan_error_type", pa.array([e and e[0] for e in errors], pa.string()))
                 .append_column("plan_error_message", pa.array([e and e[1] for e in errors], pa.string())))


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
    pixels = sorted(sample_pixels(todo, config.retries, read_timeout_s=config.read_timeout_s))
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
    """What the user asked for (unchanged)."""
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
    routes: tuple
    """`--model auto`: the stages.Route of every model an image may be given; else empty."""
    identity: str | None
    """`--model auto`: the model_sha256 its rows record (the rules and every model); else None."""
    reuse_key: incremental.ReuseKey
    listed: pa.Table
    """Every manifest row with its planned output names."""
    todo: pa.Table
    """Rows to run."""
    skipped: pa.Table
    """`skipped` stats rows for the images an earlier run already finished."""
    images_per_call: int


def resolve_model(config: JobConfig, probe: Probe | None) -> ModelSpec:
    """The spec of --model at --scale (under auto, the clean default's); a user's file is probed
    (scale, radius, SHA-256) when a probe is given."""
    spec = registry.resolve_model(None if config.model == AUTO else config.model, config.scale)
    if spec.arch == "onnx" and config.precision != "float32":
        raise ConfigError(f"--precision {config.precision} applies to Keras models; {spec.name} is "
                          f"ONNX and runs in the precision it was exported in (use float32)")
    if spec.receptive_radius is None and probe is not None:
        spec = probe(spec, config.scale)
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
    from sr_batch.stages import Route

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
    nightly plans without one and matches earlier runs of any overlap). `size_calls` reads a
    sample of headers to size the actor calls."""
    layout = OutLayout.of(config.output)
    table = manifest.load_sources(config.sources)
    spec = resolve_model(config, probe)
    tiling = (resolve_tiling(config, spec.receptive_radius, spec.input_side)
              if spec.receptive_radius is not None else None)
    denoise = resolve_denoise(config, spec)
    pass_models = resolve_pass_models(config, spec)
    routes, auto_identity = resolve_routes(config, spec)
    identity = spec.identity
    if spec.uri is not None and spec.sha256 is None:  # an unprobed user file: hash its bytes
        identity = registry.sha256_of(storage.read_bytes(spec.uri))
    if routes:  # auto: its own identity; each route's overlap covers its model's radius
        key = incremental.ReuseKey.of(config, auto_identity, None, None)
    else:
        key = incremental.ReuseKey.of(config, identity, tiling and tiling.overlap, denoise)
    listed = plan_outputs(table, layout, config.format)
    if config.force:
        todo, skipped = listed, stats.make_table([])
    else:
        todo, skipped = incremental.split_manifest(listed, incremental.find_done(layout, listed, key), key)
    calls = images_per_call(config, todo) if size_calls and todo.num_rows else (
        config.images_per_call or DEFAULT_IMAGES_PER_CALL)
    return RunPlan(run_id=run_id or config.run_id or new_run_id(), config=config, layout=layout,
                   model=spec, tiling=tiling, denoise=denoise, pass_models=pass_models,
                   routes=routes, identity=auto_identity, reuse_key=key, listed=listed,
                   todo=todo, skipped=skipped, images_per_call=calls)


def with_run_id(plan: RunPlan, run_id: str) -> RunPlan:
    return replace(plan, run_id=run_id)
