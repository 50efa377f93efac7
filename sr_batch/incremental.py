"""Incremental runs: find the manifest rows an earlier run already finished, in one join.

An image is done when some earlier run has an `ok` row for it with the same
source fingerprint (URI, and size / mtime / ETag where the manifest knows them)
and the same reuse key (model_sha256, scale, --tile-size where given, overlap,
the requested format, self-ensemble, precision, denoise and, for images with
alpha, the alpha mode). The join runs in DuckDB over the Parquet stats, so it
costs one scan of a few columns however many runs and images there are.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from sr_batch import stats, storage
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

    @classmethod
    def of(cls, config, model_sha256: str, overlap: int | None, denoise: float | None) -> "ReuseKey":
        """The key of a run: the --tile-size the user gave (None when the job picks each image's
        tile, which cannot change the output), the resolved overlap (None: unknown, match any)."""
        return cls(model_sha256=model_sha256, scale=config.scale, tile_size=config.tile_size,
                   tile_overlap=overlap, requested_format=config.format,
                   alpha_mode=config.alpha, self_ensemble=config.self_ensemble,
                   precision=config.precision, denoise=denoise, output_size=config.output_size.key())


_DONE_SQL = """
WITH standing AS (
    -- What each output file holds: the latest run that wrote it. An earlier row with the
    -- wanted settings does not count once another run (other settings) overwrote its file.
    SELECT * FROM stats
    WHERE status = 'ok'
    QUALIFY row_number() OVER (PARTITION BY output_uri ORDER BY finished_at DESC) = 1
),
previous AS (
    SELECT image_id, source_uri, bytes_in, source_mtime, source_etag, output_uri, run_id,
           width, height, channels, bit_depth, out_width, out_height, format, model, passes, outscale
    FROM standing
    WHERE model_sha256 = $model_sha256 AND scale = $scale
      AND ($tile_size IS NULL OR tile_size = $tile_size)
      AND ($tile_overlap IS NULL OR tile_overlap = $tile_overlap)
      AND requested_format = $requested_format
      AND (alpha_mode IS NULL OR alpha_mode = $alpha_mode)
      AND coalesce(self_ensemble, false) = $self_ensemble
      AND coalesce(precision, 'float32') = $precision
      AND denoise IS NOT DISTINCT FROM $denoise
      AND output_size IS NOT DISTINCT FROM $output_size
    QUALIFY row_number() OVER (PARTITION BY image_id ORDER BY finished_at DESC) = 1
)
SELECT p.*
FROM manifest AS m JOIN previous AS p ON m.image_id = p.image_id
WHERE m.uri = p.source_uri
  AND (m.bytes IS NULL OR m.bytes = p.bytes_in)
  AND (m.mtime IS NULL OR m.mtime = p.source_mtime)
  AND (m.etag IS NULL OR m.etag = p.source_etag)
"""


def find_done(layout: OutLayout, manifest: pa.Table, key: ReuseKey) -> pa.Table:
    """Earlier `ok` rows (latest per image) that this manifest can reuse under this key."""
    import duckdb
    import pyarrow.dataset as ds

    fs, path = storage.get_fs(layout.stats)
    if not fs.exists(path) or manifest.num_rows == 0:
        return pa.table({"image_id": pa.array([], pa.string())})
    dataset = ds.dataset(path, filesystem=fs, format="parquet", schema=_stats_schema(),
                         partitioning=ds.partitioning(pa.schema([("run_id", pa.string())]),
                                                      flavor="hive"),
                         ignore_prefixes=[".", "_"])
    con = duckdb.connect()
    try:
        con.register("stats", dataset)
        con.register("manifest", manifest.select(["image_id", "uri", "bytes", "mtime", "etag"]))
        return con.sql(_DONE_SQL, params=dataclasses.asdict(key)).to_arrow_table()
    finally:
        con.close()


def _stats_schema() -> pa.Schema:
    return pa.schema([*stats.SCHEMA, pa.field("run_id", pa.string())])


def split_manifest(manifest: pa.Table, done: pa.Table,
                   key: ReuseKey) -> tuple[pa.Table, pa.Table]:
    """(rows still to process, stats rows marking the rest `skipped`)."""
    is_done = pc.is_in(manifest.column("image_id"), value_set=done.column("image_id"))
    todo = manifest.filter(pc.invert(is_done))
    return todo, skipped_rows(done, manifest.filter(is_done), key)


def skipped_rows(done: pa.Table, manifest_rows: pa.Table, key: ReuseKey) -> pa.Table:
    """One `skipped` stats row per reused image, pointing at the output that stands."""
    if done.num_rows == 0:
        return stats.make_table([])
    now = dt.datetime.now(dt.timezone.utc)
    by_id = {row["image_id"]: row for row in manifest_rows.select(
        ["image_id", "reference_uri"]).to_pylist()}
    rows = []
    for previous in done.to_pylist():
        rows.append({
            **{k: previous[k] for k in ("image_id", "source_uri", "output_uri", "width", "height",
                                        "channels", "bit_depth", "out_width", "out_height",
                                        "format", "model", "bytes_in", "source_mtime",
                                        "source_etag", "passes", "outscale")},
            "reference_uri": by_id.get(previous["image_id"], {}).get("reference_uri"),
            **dataclasses.asdict(key),
            "status": stats.STATUS_SKIPPED,
            "notes": f"unchanged since run {previous['run_id']}",
            "finished_at": now,
        })
    return stats.make_table(rows)
