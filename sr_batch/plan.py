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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sr_batch import incremental, manifest, storage
from sr_batch import tiling as tiling_rules
from sr_batch.config import (CALL_SIZE_SAMPLE, DEFAULT_IMAGES_PER_CALL, DEFAULT_TILE_CORE,
                             LARGE_TILE_CORE, PIXELS_PER_CALL, SCALES, JobConfig, check_run_id)
from sr_batch.errors import (ConfigError, ImageError, ManifestError, ModelNotFoundError,
                             ModelScaleError, PathEscapeError)
from sr_batch.formats import EXTENSION_FORMAT, FORMAT_EXTENSION, output_extensions
from sr_batch.layout import OutLayout
from sr_batch.models import registry
from sr_batch.models.registry import ModelSpec
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
# Bumped when the probe measures differently: older cached probes are then measured again.
PROBE_VERSION = 1
# A probe's result as cached, in OUT/probes/<sha256>.json: the spec fields it measures.
_PROBED_FIELDS = ("scale", "channels", "params", "receptive_radius", "input_side", "tiles_exactly",
                  "seams", "response_decay", "probe_s")
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


# --- the probe cache -------------------------------------------------------------------


def read_probe(layout: OutLayout, spec: ModelSpec) -> ModelSpec | None:
    """The spec completed from OUT's cached probe of its file (spec.sha256), kept in
    OUT/probes/<sha256>.json beside the runs that use it (every node of a cluster and every
    later run into OUT sees it; a per-node cache would not); None if none is there, it is
    from another probe version, or it does not read as one."""
    import json

    try:
        cached = json.loads(storage.read_bytes(layout.probe(spec.sha256)))
    except Exception:  # noqa: BLE001 - an absent or broken cache only means probing again
        return None
    if not isinstance(cached, dict) or cached.get("probe_version") != PROBE_VERSION:
        return None
    try:
        fields = {name: cached[name] for name in _PROBED_FIELDS}
        fields["seams"] = tuple((int(o), float(m), float(a)) for o, m, a in fields["seams"])
        fields["response_decay"] = tuple(map(float, fields["response_decay"]))
        if fields["scale"] not in SCALES or not isinstance(fields["receptive_radius"], int) \
                or fields["receptive_radius"] < 0:
            return None
        return replace(spec, **fields)
    except (KeyError, TypeError, ValueError):
        return None


def write_probe(layout: OutLayout, spec: ModelSpec, retries: int) -> None:
    """Cache a probe's result in OUT; a failure to write costs the next run a probe, no more."""
    import json

    record = {"probe_version": PROBE_VERSION, "model": spec.uri, "sha256": spec.sha256,
              **{name: getattr(spec, name) for name in _PROBED_FIELDS}}
    try:
        storage.write_bytes_atomic(layout.probe(spec.sha256),
                                   json.dumps(record, indent=1).encode(), retries)
    except Exception:  # noqa: BLE001 - see the docstring
        return


# --- output names ----------------------------------------------------------------------


# Relative paths that column-wise naming leaves to OutLayout.image_path, one row at a time:
# empty or absolute paths, `//`, `\\`, `::` (fsspec's chaining), `?` and `#`, `.` or `..`
# parts, a final `/`, file names that start with a dot (where posixpath.splitext finds
# another extension than the text after the last dot), and NUL bytes (which no path holds).
_UNUSUAL_RELATIVE = r"^$|^/|//|/$|\\|::|[?#\x00]|(?:^|/)\.\.?(?:/|$)|(?:^|/)\.[^/]*$"


def plan_outputs(table: pa.Table, layout: OutLayout, requested: str, *,
                 one_by_one: bool = False) -> pa.Table:
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

    Names are made column by column (a million rows in seconds); the rows that could
    contend for a name, and those with an output_uri or an unusual path, go through the
    rules above one row at a time (`_RowNames`), which decides for them exactly as if
    every row had gone through it. `one_by_one` sends every row there (the reference the
    tests hold the column-wise names to).
    """
    n = table.num_rows
    relatives = _string_column(table, "relative_path")
    overrides = _string_column(table, "output_uri")
    has_override = pc.fill_null(pc.not_equal(overrides, ""), False)
    source_exts = pc.fill_null(pc.struct_field(
        pc.extract_regex(relatives, r"(?P<ext>\.[^./]*)$"), [0]), "")
    stem_uris = pc.binary_join_element_wise(
        layout.images, pc.replace_substring_regex(relatives, r"\.[^./]*$", "", max_replacements=1), "/")
    ranks = _extension_ranks(source_exts, requested)
    planned = [pc.binary_join_element_wise(stem_uris, ext, ".") for ext in ranks]

    column_wise = np.zeros(n, bool) if one_by_one else _column_wise_rows(relatives, has_override, layout)
    exact = _RowNames(layout, requested, relatives, overrides, has_override)
    exact.add(np.flatnonzero(~column_wise))
    exact.add(_contended_rows(planned, column_wise, exact.candidates()))
    while True:  # a contended row may fall back to its `a.gif.png` name: who else has that?
        alternatives = exact.new_alternatives()
        if not alternatives:
            break
        taken = pa.array(alternatives, pa.string())
        exact.add(np.unique(np.concatenate([
            np.flatnonzero(column_wise & pc.fill_null(pc.is_in(names, value_set=taken), False)
                           .to_numpy(zero_copy_only=False)) for names in planned])))
    names, errors = exact.decide()
    return _with_names(table, ranks, planned, names, errors)


def planned_outputs_column(listed: pa.Table) -> pa.Array:
    """Each row's planned names as the manifest's `planned_outputs` (JSON {ext: uri})."""
    import json

    return pa.array([None if uris is None else json.dumps(dict(zip(exts, uris)))
                     for exts, uris in zip(listed.column("output_exts").to_pylist(),
                                           listed.column("output_uris").to_pylist())], pa.string())


def keep_planned_outputs(listed: pa.Table, layout: OutLayout) -> pa.Table:
    """A manifest that carries the names a full plan gave its rows (nightly, --plan-manifest):
    those names stand, checked again to lie under OUT/images, instead of names made from these
    rows alone, which could hand a skipped row's output name (`a.png`) to another (`a.gif`)."""
    import json

    planned = listed.column("planned_outputs").to_pylist()
    if any(p is None for p in planned):
        raise ManifestError("a manifest with planned_outputs needs them on every row")
    exts, uris = [], []
    types = listed.column("plan_error_type").to_pylist()
    messages = listed.column("plan_error_message").to_pylist()
    for i, text in enumerate(planned):
        try:
            names = json.loads(text)
            if not isinstance(names, dict) or not names or any(e not in EXTENSION_FORMAT for e in names):
                raise ValueError("not an {extension: URI} map")
            for uri in names.values():
                layout.check_output(uri)
        except ImageError as exc:
            exts.append(None), uris.append(None)
            types[i], messages[i] = exc.error_type, str(exc)
            continue
        except ValueError as exc:
            raise ManifestError(f"planned_outputs of row {i} is not valid: {exc}") from None
        exts.append(list(names)), uris.append(list(names.values()))
        types[i] = messages[i] = None
    columns = {"output_exts": pa.array(exts, pa.list_(pa.string())),
               "output_uris": pa.array(uris, pa.list_(pa.string())),
               "plan_error_type": pa.array(types, pa.string()),
               "plan_error_message": pa.array(messages, pa.string())}
    for name, column in columns.items():
        listed = listed.set_column(listed.schema.get_field_index(name), name, column)
    return listed


def _string_column(table: pa.Table, name: str) -> pa.Array:
    column = table.column(name).combine_chunks()
    return column if pa.types.is_string(column.type) else column.cast(pa.string())


def _extension_ranks(source_exts: pa.Array, requested: str) -> list[pa.Array]:
    """The output extensions of every row, one array per rank (planned, then fallbacks;
    null beyond a row's last): output_extensions of each distinct source extension."""
    lower = pc.utf8_lower(source_exts)
    distinct = pc.unique(lower)
    choices = [output_extensions(requested, "x" + ext) for ext in distinct.to_pylist()]
    where = pc.index_in(lower, value_set=distinct)
    return [pa.array([c[rank] if rank < len(c) else None for c in choices], pa.string()).take(where)
            for rank in range(max(map(len, choices), default=1))]


def _column_wise_rows(relatives: pa.Array, has_override: pa.Array, layout: OutLayout) -> np.ndarray:
    """Rows whose default names hold as made column-wise: no output_uri, a usual path, and
    (local OUT) a folder that no link leads out of OUT/images."""
    usual = pc.and_(pc.invert(has_override),
                    pc.invert(pc.match_substring_regex(relatives, _UNUSUAL_RELATIVE)))
    rows = pc.fill_null(usual, False).to_numpy(zero_copy_only=False)
    fs, images = storage.get_fs(layout.images)
    if storage.is_local(fs) and rows.any():
        folders = pc.replace_substring_regex(relatives, r"/?[^/]*$", "", max_replacements=1)
        distinct = pc.unique(folders.filter(pa.array(rows)))
        leaving = [folder for folder in distinct.to_pylist()
                   if layout.real_outside(f"{images}/{folder}" if folder else images) is not None]
        if leaving:
            rows &= ~pc.fill_null(pc.is_in(folders, value_set=pa.array(leaving, pa.string())),
                                  False).to_numpy(zero_copy_only=False)
    return rows


def _contended_rows(planned: list[pa.Array], column_wise: np.ndarray,
                    others: tuple[list[int], list[str]]) -> np.ndarray:
    """Rows with a name that another row also has: column-wise rows' planned names, and the
    names (default, fallback and `a.gif.png`, or output_uri) of the rows named one by one."""
    keep = pa.array(column_wise)
    rows = [np.flatnonzero(column_wise & pc.is_valid(names).to_numpy(zero_copy_only=False))
            for names in planned]
    names = [pc.drop_null(names.filter(keep)) for names in planned]
    everything = pa.concat_arrays([*names, pa.array(others[1], pa.string())])
    counts = pc.value_counts(everything)
    shared = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
    if len(shared) == 0:
        return np.zeros(0, np.int64)
    owners = np.concatenate([*rows, np.asarray(others[0], np.int64)])
    return np.unique(owners[pc.is_in(everything, value_set=shared).to_numpy(zero_copy_only=False)])


class _RowNames:
    """The naming rules one row at a time, for the rows that need them (see plan_outputs)."""

    def __init__(self, layout: OutLayout, requested: str, relatives: pa.Array, overrides: pa.Array,
                 has_override: pa.Array) -> None:
        self.layout, self.requested = layout, requested
        self.columns = (relatives, overrides, has_override)
        self.rows: dict[int, dict] = {}  # row -> relative, override, stem, exts, error
        self.unseen: list[int] = []      # rows added whose fallback names are not yet asked about

    def add(self, rows: np.ndarray) -> None:
        new = np.setdiff1d(np.asarray(rows, np.int64), np.fromiter(self.rows, np.int64, len(self.rows)))
        if len(new) == 0:
            return
        relatives, overrides, has_override = self.columns
        picks = pa.array(new)
        columns = zip(relatives.take(picks).to_pylist(), overrides.take(picks).to_pylist(),
                      has_override.take(picks).to_pylist())
        for i, (relative, override, is_override) in zip(new.tolist(), columns):
            row = self.rows[i] = {"relative": relative, "override": override if is_override else None,
                                  "stem": None, "exts": (), "error": None}
            try:
                if is_override:
                    row["override"] = _check_override(self.layout, override)
                else:
                    row["stem"] = self.layout.image_path(posixpath.splitext(relative)[0])
                    row["exts"] = output_extensions(self.requested, relative)
            except ImageError as exc:
                row["error"] = (exc.error_type, str(exc))
        self.unseen.extend(new.tolist())

    def _names(self, row: dict, fallbacks: bool) -> list[str]:
        if row["error"]:
            return []
        if row["override"]:
            return [row["override"][0]]
        names = [f"{row['stem']}.{ext}" for ext in row["exts"]]
        source_ext = posixpath.splitext(row["relative"])[1]
        if fallbacks and source_ext:
            names += [f"{row['stem']}{source_ext}.{ext}" for ext in row["exts"]]
        return names

    def candidates(self) -> tuple[list[int], list[str]]:
        """Every name these rows may take, with its row."""
        rows, names = [], []
        for i, row in self.rows.items():
            for name in dict.fromkeys(self._names(row, fallbacks=True)):
                rows.append(i)
                names.append(name)
        self.unseen.clear()
        return rows, names

    def new_alternatives(self) -> list[str]:
        """The `a.gif.png` names of the rows added since last asked."""
        names = [name for i in self.unseen
                 for name in self._names(self.rows[i], fallbacks=True)[len(self.rows[i]["exts"]):]]
        self.unseen.clear()
        return names

    def decide(self) -> tuple[dict[int, dict[str, str]], dict[int, tuple[str, str]]]:
        """(row -> {ext: uri}, the planned one first; row -> (error_type, message))."""
        order = sorted(self.rows)
        rows = self.rows
        names: dict[int, dict[str, str]] = {i: {} for i in order}
        errors = {i: rows[i]["error"] for i in order if rows[i]["error"]}
        owner: dict[str, int] = {}

        def collide(i: int, uri: str) -> None:
            errors[i] = ("output_collision", f"two manifest rows write the same output ({storage.display(uri)})")
            for name in names[i].values():
                owner.pop(name, None)
            names[i] = {}

        # 1. output_uri overrides, as given; the later of two equal ones fails.
        for i in order:
            if rows[i]["override"] is None or i in errors:
                continue
            uri, ext = rows[i]["override"]
            if uri in owner:
                collide(i, uri)
                continue
            owner[uri] = i
            names[i] = {ext: uri}

        # 2. default names, planned extension before fallbacks, and at each step the rows whose
        #    name it is (a.png for `a.png`) before the rows that map onto it (`a.gif`).
        defaults = [i for i in order if rows[i]["override"] is None and i not in errors]
        own_name_first = sorted(defaults, key=lambda i: not rows[i]["relative"].lower().endswith(
            "." + rows[i]["exts"][0]))
        for rank in range(max((len(rows[i]["exts"]) for i in defaults), default=0)):
            for i in own_name_first:
                if i in errors or rank >= len(rows[i]["exts"]):
                    continue
                ext = rows[i]["exts"][rank]
                plain = f"{rows[i]['stem']}.{ext}"
                holder = owner.get(plain)
                if rank == 0 and holder is not None and rows[holder]["override"] is not None:
                    # An output_uri names this row's own output: the later row of the two fails.
                    if holder < i:
                        collide(i, plain)
                        continue
                    collide(holder, plain)
                    holder = None
                if holder is None:
                    uri = plain
                else:
                    source_ext = posixpath.splitext(rows[i]["relative"])[1]
                    uri = f"{rows[i]['stem']}{source_ext}.{ext}"
                    if not source_ext or uri in owner:
                        collide(i, uri)
                        continue
                owner[uri] = i
                names[i][ext] = uri
        return names, errors


def _check_override(layout: OutLayout, override: str) -> tuple[str, str]:
    """(uri, extension) of an output_uri, checked: under OUT/images, with an image extension.
    A relative path is relative to OUT (`images/a/b.png`), not to where the command runs."""
    if "://" not in override and not posixpath.isabs(override):
        override = storage.join(layout.root, override)
    uri = layout.check_output(override)
    ext = posixpath.splitext(uri)[1].lower().lstrip(".")
    if ext not in EXTENSION_FORMAT:
        raise PathEscapeError(f"output_uri {storage.display(uri)} must end in "
                              f".png, .jpg, .jpeg, .webp, .tif or .tiff")
    return uri, ext


def _with_names(table: pa.Table, ranks: list[pa.Array], planned: list[pa.Array],
                names: dict[int, dict[str, str]], errors: dict[int, tuple[str, str]]) -> pa.Table:
    """`table` with the four planned columns: column-wise names, those of `names` put in."""
    n = table.num_rows
    exact = np.zeros(n, bool)
    exact[list(names)] = True
    order = sorted(names)
    counts = np.zeros(n, np.int64)
    for rank, ext in enumerate(ranks):
        counts += pc.is_valid(ext).to_numpy(zero_copy_only=False)
    counts[order] = [len(names[i]) for i in order]
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    mask = pa.array(exact)
    exts, uris, positions = [], [], []
    for rank in range(max([len(ranks), *(len(v) for v in names.values())])):
        ext = ranks[rank] if rank < len(ranks) else pa.nulls(n, pa.string())
        uri = planned[rank] if rank < len(planned) else pa.nulls(n, pa.string())
        if order:
            chosen = [list(names[i].items())[rank] if rank < len(names[i]) else (None, None)
                      for i in order]
            ext = pc.replace_with_mask(ext, mask, pa.array([c[0] for c in chosen], pa.string()))
            uri = pc.replace_with_mask(uri, mask, pa.array([c[1] for c in chosen], pa.string()))
        rows = np.flatnonzero(counts > rank)
        picks = pa.array(rows)
        exts.append(ext.take(picks))
        uris.append(uri.take(picks))
        positions.append(offsets[rows] + rank)
    position = np.concatenate(positions) if positions else np.zeros(0, np.int64)
    flat_order = np.empty_like(position)
    flat_order[position] = np.arange(len(position))
    failed = np.zeros(n, bool)
    failed[list(errors)] = True
    list_offsets = pa.array(offsets.astype(np.int32))

    def lists(parts: list[pa.Array]) -> pa.Array:
        flat = pa.concat_arrays(parts).take(pa.array(flat_order)) if parts else pa.array([], pa.string())
        return pa.ListArray.from_arrays(list_offsets, flat, mask=pa.array(failed))

    error_types = [None] * n
    error_messages = [None] * n
    for i, (error_type, message) in errors.items():
        error_types[i], error_messages[i] = error_type, message
    return (table.append_column("output_exts", lists(exts))
                 .append_column("output_uris", lists(uris))
                 .append_column("plan_error_type", pa.array(error_types, pa.string()))
                 .append_column("plan_error_message", pa.array(error_messages, pa.string())))


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
