"""Incremental runs: find the manifest rows an earlier run already finished, in one join.

An image is done when some earlier run has an `ok` row for it with the same
source fingerprint (URI, and size / mtime / ETag where the manifest knows them)
and the same reuse key (model_sha256, scale, --tile-size where given, overlap,
the requested format, self-ensemble, precision, denoise and, for images with
alpha, the alpha mode). Every other row gets the reason it is to be done (new,
failed before, changed source, changed settings). The join runs in DuckDB over
the Parquet stats, so it costs one scan of a few columns however many runs and
images there are, and the rows it yields are turned into `skipped` stats rows
column by column (no Python object per row).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sr_batch import stats
from sr_batch.layout import OutLayout


@dataclass(frozen=True)
class ReuseKey:
    """The settings under which an earlier output can stand for this run's."""

    model_sha256: str
    scale: int
    tile_size: int | None
    """None matches any: the job chose each image's tile, and tiled output is the same for any
    tile whose overlap covers the model's radius."""
    tile_overlap: int | None
    """None matches any (a user model whose radius the client cannot know without TF)."""
    requested_format: str
    alpha_mode: str
    self_ensemble: bool
    precision: str = "float32"
    denoise: float | None = None
    """--denoise of a model pair; None for every other model."""
    output_size: str | None = None
    """--outscale/--width/--height/--fit (sizing.OutputSize.key); None: the model's scale."""
    denoise_per_image: bool = False
    """--model auto: each image's denoise is what the rules chose for it (the rules and every
    candidate are in `model_sha256`), so `denoise` is not compared."""

    @classmethod
    def of(cls, config, model_sha256: str, overlap: int | None, denoise: float | None) -> "ReuseKey":
        """The key of a run: the --tile-size the user gave (None when the job picks each image's
        tile, which cannot change the output), the resolved overlap (None: unknown, match any)."""
        return cls(model_sha256=model_sha256, scale=config.scale, tile_size=config.tile_size,
                   tile_overlap=overlap, requested_format=config.format,
                   alpha_mode=config.alpha, self_ensemble=config.self_ensemble,
                   precision=config.precision, denoise=denoise, output_size=config.output_size.key())


# Why a row is to be done (RunPlan.reasons); a row an earlier run finished is skipped instead.
REASON_NEW = "new"
"""No earlier row for its image_id."""
REASON_FAILED_BEFORE = "failed_before"
"""Its latest earlier row that ran (ok or failed, whatever the settings) failed."""
REASON_CHANGED_SOURCE = "changed_source"
"""An earlier ok row with these settings stands, for another fingerprint (URI, size, mtime, ETag)."""
REASON_CHANGED_SETTINGS = "changed_settings"
"""Earlier ok rows only under other settings (model, scale, format, precision, denoise, ...),
or the output of one with these settings was overwritten by a run with others."""
REASON_FORCED = "forced"
"""--force: every row runs."""
REASONS = (REASON_NEW, REASON_CHANGED_SOURCE, REASON_CHANGED_SETTINGS, REASON_FAILED_BEFORE,
           REASON_FORCED)

# Columns of an earlier row that a `skipped` row repeats.
# (denoise, route and the estimates: what the image got, which under --model auto is its own;
# the hashes and provenance: what the standing file holds, so a found file matches either row.)
_PREVIOUS = ("image_id", "source_uri", "output_uri", "width", "height", "channels", "bit_depth",
             "out_width", "out_height", "format", "model", "denoise", "route", "jpeg_quality_est",
             "noise_sigma_est", "bytes_in", "source_mtime", "source_etag", "source_sha256",
             "output_sha256", "provenance")

_COMPARE_SQL = f"""
WITH standing AS (
    -- What each output file holds: the latest run that wrote it. An earlier row with the
    -- wanted settings does not count once another run (other settings) overwrote its file.
    -- (Narrow: the windows hold a million rows; the rest of a row is fetched for the done.)
    SELECT image_id, run_id, finished_at, source_uri, bytes_in, source_mtime, source_etag,
           (model_sha256 = $model_sha256 AND scale = $scale
            AND ($tile_size IS NULL OR tile_size = $tile_size)
            AND ($tile_overlap IS NULL OR tile_overlap = $tile_overlap)
            AND requested_format = $requested_format
            AND (alpha_mode IS NULL OR alpha_mode = $alpha_mode)
            AND coalesce(self_ensemble, false) = $self_ensemble
            AND coalesce(precision, 'float32') = $precision
            AND ($denoise_per_image OR denoise IS NOT DISTINCT FROM $denoise)
            AND output_size IS NOT DISTINCT FROM $output_size) AS wanted
    FROM stats
    WHERE status = 'ok'
    QUALIFY row_number() OVER (PARTITION BY output_uri ORDER BY finished_at DESC) = 1
),
previous AS (
    SELECT * EXCLUDE (wanted) FROM standing
    WHERE wanted
    QUALIFY row_number() OVER (PARTITION BY image_id ORDER BY finished_at DESC) = 1
),
latest AS (
    -- The last time each image ran, under any settings (a skipped row only points at one).
    SELECT image_id, arg_max(status, finished_at) AS status
    FROM stats
    WHERE status IN ('ok', 'failed')
    GROUP BY image_id
),
compared AS (
    SELECT m.row_index, p.run_id, p.finished_at,
           CASE WHEN p.image_id IS NOT NULL AND m.uri = p.source_uri
                     AND (m.bytes IS NULL OR m.bytes = p.bytes_in)
                     AND (m.mtime IS NULL OR m.mtime = p.source_mtime)
                     AND (m.etag IS NULL OR m.etag = p.source_etag) THEN NULL
                WHEN l.status IS NULL THEN '{REASON_NEW}'
                WHEN l.status = 'failed' THEN '{REASON_FAILED_BEFORE}'
                WHEN p.image_id IS NOT NULL THEN '{REASON_CHANGED_SOURCE}'
                ELSE '{REASON_CHANGED_SETTINGS}'
           END AS reason
    FROM manifest AS m
    LEFT JOIN previous AS p ON m.image_id = p.image_id
    LEFT JOIN latest AS l ON m.image_id = l.image_id
)
SELECT row_index, reason,
       CASE WHEN reason IS NULL THEN run_id END AS run_id,
       CASE WHEN reason IS NULL THEN finished_at END AS finished_at
FROM compared
"""

# The whole earlier row of each image to skip, found by the identity the comparison chose.
_DONE_SQL = f"""
SELECT d.row_index, {", ".join("s." + c for c in _PREVIOUS)}, s.run_id
FROM done AS d JOIN stats AS s
  ON s.image_id = d.image_id AND s.run_id = d.run_id AND s.finished_at = d.finished_at
 AND s.status = 'ok'
"""


def find_earlier(layout: OutLayout, manifest: pa.Table,
                 key: ReuseKey) -> tuple[pa.Array, pa.Table] | None:
    """Each manifest row against the earlier runs' stats, in DuckDB: (the reason of each row,
    in manifest order, null where an earlier `ok` row can be reused under this key; those
    earlier rows, one for each null reason, in the same order). None: no earlier runs."""
    import duckdb

    dataset = stats.dataset(layout) if manifest.num_rows else None
    if dataset is None:
        return None
    n = manifest.num_rows
    rows = manifest.select(["image_id", "uri", "bytes", "mtime", "etag"]).append_column(
        "row_index", pa.array(np.arange(n, dtype=np.int64)))
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")  # timestamps come back in UTC, as the stats hold them
        con.register("stats", dataset)
        con.register("manifest", rows)
        compared = con.sql(_COMPARE_SQL, params=dataclasses.asdict(key)).to_arrow_table()
        order = np.empty(n, np.int64)  # row_index is a permutation of the manifest's rows
        order[compared.column("row_index").to_numpy()] = np.arange(n)
        compared = compared.take(pa.array(order))
        reasons = compared.column("reason").combine_chunks()
        is_done = pc.is_null(reasons)
        con.register("done", pa.table({
            "row_index": pa.array(np.flatnonzero(is_done.to_numpy(zero_copy_only=False))),
            "image_id": manifest.column("image_id").filter(is_done),
            "run_id": compared.column("run_id").filter(is_done),
            "finished_at": compared.column("finished_at").filter(is_done)}))
        del compared
        done = con.sql(_DONE_SQL).to_arrow_table()
    finally:
        con.close()
    # One row each, in manifest order (were two earlier rows ever identical, either will do).
    _, first = np.unique(done.column("row_index").to_numpy(), return_index=True)
    done = done.take(pa.array(first))
    if done.num_rows != is_done.true_count:
        raise RuntimeError(f"found {done.num_rows} of the {is_done.true_count} earlier rows to reuse")
    return reasons, done


@dataclass(frozen=True)
class Split:
    """A manifest split by what earlier runs did."""

    todo: pa.Table
    """Rows still to process."""
    reasons: pa.Array
    """Why each row of `todo` is to be done (aligned with it): one of REASONS."""
    skipped: pa.Table
    """`skipped` stats rows for the rest, pointing at the earlier outputs that stand."""


def split_manifest(manifest: pa.Table, earlier: tuple[pa.Array, pa.Table] | None,
                   key: ReuseKey) -> Split:
    """Split a manifest by `find_earlier`'s answer (None: every row is new)."""
    if earlier is None:
        return Split(manifest, _repeat(REASON_NEW, manifest.num_rows), stats.make_table([]))
    reasons, done = earlier
    is_todo = pc.is_valid(reasons)
    return Split(manifest.filter(is_todo), reasons.filter(is_todo),
                 skipped_rows(done, manifest.filter(pc.invert(is_todo)), key))


def force_all(manifest: pa.Table) -> Split:
    """--force: every row to do."""
    return Split(manifest, _repeat(REASON_FORCED, manifest.num_rows), stats.make_table([]))


def _repeat(value, n: int, type_: pa.DataType | None = None) -> pa.Array:
    return pa.repeat(pa.scalar(value, type_ or pa.string()), n)


def skipped_rows(done: pa.Table, manifest_rows: pa.Table, key: ReuseKey) -> pa.Table:
    """One `skipped` stats row per reused image (`done[i]` stands for `manifest_rows[i]`),
    pointing at the output that stands."""
    n = done.num_rows
    if n == 0:
        return stats.make_table([])
    now = dt.datetime.now(dt.timezone.utc)
    columns = {name: done.column(name) for name in _PREVIOUS}
    columns["reference_uri"] = manifest_rows.column("reference_uri")
    columns.update({name: _repeat(value, n, stats.SCHEMA.field(name).type)
                    for name, value in dataclasses.asdict(key).items()
                    if name not in ("denoise", "denoise_per_image")})
    columns["status"] = _repeat(stats.STATUS_SKIPPED, n)
    columns["notes"] = pc.binary_join_element_wise("unchanged since run ", done.column("run_id"), "")
    columns["finished_at"] = _repeat(now, n, stats.SCHEMA.field("finished_at").type)
    return pa.table([columns[f.name].cast(f.type) if f.name in columns else pa.nulls(n, f.type)
                     for f in stats.SCHEMA], schema=stats.SCHEMA)
