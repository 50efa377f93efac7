"""DuckDB queries over the stats, and the HTML report.

    open_stats(OUT)            a DuckDB connection with views `stats` (every run, with the hive
                               `run_id` column) and `runs` (the OUT/runs/<run_id>.json records)
    build_report(db, ...)      per-run summary, worst images, failures, a comparison; for HTML
                               also histograms, a scatter and a gallery of crops
    render_text/json/csv/html  the Report as text
    stream_sql(db, SQL)        arbitrary SQL, streamed in record batches

Every aggregate runs inside DuckDB over the Parquet in place; Python only ever
holds result rows that are small by construction (one per run, N worst, one per
error type, bins, a capped sample). Local stats are read by DuckDB's own Parquet
reader; on any other filesystem (s3://, gs://, memory://) through a pyarrow
dataset on the same fsspec filesystem, credentials and endpoint as the job,
which DuckDB scans lazily with projection and filter pushdown (no httpfs
extension to download or configure).
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import html
import io
import json
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from typing import Iterator

import duckdb
import numpy as np
import pyarrow as pa

from sr_batch import stats, storage
from sr_batch.errors import ReportError

log = logging.getLogger(__name__)

# Metrics that can rank images: every numeric stats column, plus the gains over bicubic.
DERIVED_METRICS = {
    "psnr_y_gain": "psnr_y - psnr_y_bicubic",
    "ssim_y_gain": "ssim_y - ssim_y_bicubic",
}
METRICS: dict[str, str] = {
    **{name: name for name, dtype, _ in stats.COLUMNS
       if pa.types.is_floating(dtype) or pa.types.is_integer(dtype)},
    **DERIVED_METRICS,
}
# For these, smaller is better; for every other metric (PSNR, SSIM, consistency,
# sharpness) larger is better.
LOWER_IS_BETTER = {"decode_s", "infer_s", "encode_s", "total_s", "bytes_out", "n_tiles"}

GALLERY_MAX = 24  # per end (worst, best): 3 crops of ~6 KB each keep the page under ~1 MB
CROP_PX = 96  # side of the output crop shown in the gallery
SCATTER_POINTS = 2000  # sampled points; the scatter's size does not grow with the stats
HISTOGRAM_BINS = 30
SQL_HTML_ROWS = 1000  # an HTML page of a --sql result shows at most this many rows
_RUN_ID_TIME = re.compile(r"^(\d{8}T\d{6}Z)")


# --- the connection -----------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """One run: its stats files and its run record (empty if the run has not finished)."""

    run_id: str
    files: tuple[str, ...]
    record: dict

    @property
    def started_at(self) -> dt.datetime | None:
        started = _parse_time(self.record.get("started_at"))
        if started:
            return started
        match = _RUN_ID_TIME.match(self.run_id)  # default run ids start with their UTC time
        if match:
            return dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
        return None


@dataclass
class StatsDB:
    """A DuckDB connection over OUT's stats; `runs` is ordered oldest first."""

    output: str
    con: duckdb.DuckDBPyConnection
    runs: dict[str, RunInfo]
    _fs: object = field(repr=False)
    _stats_path: str = field(repr=False)

    def register(self, name: str, run_ids: list[str]) -> None:
        """(Re)define view `name` over the stats files of `run_ids` only: runs are pruned by file.

        Local files go to DuckDB's own Parquet reader (2-5x faster, and less memory,
        than scanning a pyarrow dataset; see bench/bench_report.py); other filesystems
        go through a pyarrow dataset on the fsspec filesystem, which DuckDB scans lazily.
        Either way, columns no file has yet read as typed nulls.
        """
        files = [f for run_id in run_ids for f in self.runs[run_id].files]
        if storage.is_local(self._fs) and not any(c in f for f in files for c in "*?[{"):
            self._register_parquet(name, files)
        else:
            self._register_dataset(name, files)

    def _register_parquet(self, name: str, files: list[str]) -> None:
        scan = (f"read_parquet([{', '.join(_literal(f) for f in files)}], hive_partitioning = true, "
                f"union_by_name = true, hive_types = {{'run_id': 'VARCHAR'}})")
        present = {row[0] for row in self.con.sql(f"DESCRIBE SELECT * FROM {scan}").fetchall()}
        missing = [f"NULL::{_DUCKDB_TYPES[str(dtype)]} AS {col}"
                   for col, dtype in zip(_DATASET_SCHEMA.names, _DATASET_SCHEMA.types) if col not in present]
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS "
                         f"SELECT *{''.join(', ' + m for m in missing)} FROM {scan}")

    def _register_dataset(self, name: str, files: list[str]) -> None:
        import pyarrow.dataset as ds

        dataset = ds.dataset(
            files, filesystem=self._fs, format="parquet", schema=_DATASET_SCHEMA,
            partitioning=ds.partitioning(pa.schema([("run_id", pa.string())]), flavor="hive"),
            partition_base_dir=self._stats_path)
        self.con.register(name, dataset)

    def resolve_run(self, run: str) -> str:
        """A run id, or 'latest' / 'previous' (by start time, then run id)."""
        order = list(self.runs)
        if run in ("latest", "previous"):
            index = -1 if run == "latest" else -2
            if len(order) < -index:
                raise ReportError(f"no {run} run: {len(order)} run(s) under {self.output}/stats")
            return order[index]
        if run not in self.runs:
            known = ", ".join(order[-5:])
            raise ReportError(f"no run {run!r} under {self.output}/stats (latest: {known})")
        return run

    def select_runs(self, run: str) -> list[str]:
        """Run ids for --run RUN_ID|latest|previous|all."""
        return list(self.runs) if run == "all" else [self.resolve_run(run)]

    def rows(self, sql: str) -> list[dict]:
        """A small result as dicts; a DuckDB error becomes a ReportError."""
        try:
            return self.con.sql(sql).to_arrow_table().to_pylist()
        except duckdb.Error as exc:
            raise ReportError(_first_line(exc)) from None

    def table(self, sql: str) -> pa.Table:
        try:
            return self.con.sql(sql).to_arrow_table()
        except duckdb.Error as exc:
            raise ReportError(_first_line(exc)) from None


_DATASET_SCHEMA = pa.schema([*stats.SCHEMA, ("run_id", pa.string())])
_DUCKDB_TYPES = {"string": "VARCHAR", "int32": "INTEGER", "int64": "BIGINT", "double": "DOUBLE",
                 "timestamp[us, tz=UTC]": "TIMESTAMPTZ"}
_RUNS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("seq", pa.int32()), ("started_at", pa.timestamp("us", tz="UTC")),
    ("finished_at", pa.timestamp("us", tz="UTC")), ("wall_s", pa.float64()),
    ("model", pa.string()), ("scale", pa.int32()), ("images_per_s", pa.float64()),
    ("output_megapixels_per_s", pa.float64())])


def open_stats(output: str) -> StatsDB:
    """Connect DuckDB to OUT/stats (view `stats`, all runs) and OUT/runs (view `runs`)."""
    output = storage.to_uri(output)
    fs, stats_path = storage.get_fs(storage.join(output, "stats"))
    stats_path = stats_path.rstrip("/")
    files: dict[str, list[str]] = {}
    for path in sorted(fs.glob(stats_path + "/run_id=*/*.parquet")):
        run_dir = path[len(stats_path) + 1:].split("/", 1)[0]
        files.setdefault(run_dir[len("run_id="):], []).append(path)
    if not files:
        raise ReportError(f"no stats under {storage.join(output, 'stats')} (run `sr-batch run` first)")
    records = _read_run_records(output)
    infos = [RunInfo(run_id, tuple(paths), records.get(run_id, {})) for run_id, paths in files.items()]
    oldest = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    infos.sort(key=lambda info: (info.started_at or oldest, info.run_id))

    con = duckdb.connect()
    db = StatsDB(output, con, {info.run_id: info for info in infos}, fs, stats_path)
    db.register("stats", list(db.runs))
    con.register("runs", _runs_table(infos))
    return db


def _read_run_records(output: str) -> dict[str, dict]:
    fs, runs_path = storage.get_fs(storage.join(output, "runs"))
    records = {}
    for path in fs.glob(runs_path.rstrip("/") + "/*.json"):
        try:
            record = json.loads(fs.cat_file(path))
        except (OSError, ValueError):
            continue  # a run record is a convenience; the stats are the truth
        if isinstance(record, dict):
            records[record.get("run_id") or path.rsplit("/", 1)[-1][:-len(".json")]] = record
    return records


def _runs_table(infos: list[RunInfo]) -> pa.Table:
    rows = []
    for seq, info in enumerate(infos, start=1):
        r = info.record
        model = r.get("model")
        rows.append({
            "run_id": info.run_id, "seq": seq, "started_at": _parse_time(r.get("started_at")),
            "finished_at": _parse_time(r.get("finished_at")), "wall_s": r.get("wall_s"),
            "model": model.get("name") if isinstance(model, dict) else model,
            "scale": (r.get("config") or {}).get("scale"), "images_per_s": r.get("images_per_s"),
            "output_megapixels_per_s": r.get("output_megapixels_per_s")})
    return pa.Table.from_pylist(rows, schema=_RUNS_SCHEMA)


# --- queries ------------------------------------------------------------------------------


def summarize(db: StatsDB, view: str = "sel") -> pa.Table:
    """One row per run: counts by status, throughput, quantiles, gain over bicubic.

    Quantiles are over ok images with finite values (quantile_cont: linear interpolation).
    Throughput uses the run record's wall_s, else the span of finished_at.
    """
    ok = "status = 'ok'"
    return db.table(f"""
        WITH per_run AS (
            SELECT run_id,
                string_agg(DISTINCT model, ', ') AS model,
                count(*) AS images,
                count(*) FILTER ({ok}) AS ok,
                count(*) FILTER (status = 'failed') AS failed,
                count(*) FILTER (status = 'skipped') AS skipped,
                sum(out_width::DOUBLE * out_height) FILTER ({ok}) / 1e6 AS output_mp,
                epoch(max(finished_at)) - epoch(min(finished_at)) AS finished_span_s,
                quantile_cont(total_s, [0.5, 0.9, 0.99]) FILTER ({ok} AND isfinite(total_s)) AS t,
                quantile_cont(psnr_y_consistency, [0.1, 0.5, 0.9])
                    FILTER ({ok} AND isfinite(psnr_y_consistency)) AS c,
                quantile_cont(sharpness_ratio, [0.1, 0.5, 0.9])
                    FILTER ({ok} AND isfinite(sharpness_ratio)) AS s,
                count(psnr_y - psnr_y_bicubic) FILTER ({ok}) AS with_reference,
                avg(psnr_y - psnr_y_bicubic) FILTER ({ok} AND isfinite(psnr_y - psnr_y_bicubic)) AS g_mean,
                quantile_cont(psnr_y - psnr_y_bicubic, 0.5)
                    FILTER ({ok} AND isfinite(psnr_y - psnr_y_bicubic)) AS g_p50
            FROM {view} GROUP BY run_id
        )
        SELECT p.run_id, p.model, p.images, p.ok, p.failed, p.skipped,
            coalesce(r.wall_s, nullif(p.finished_span_s, 0)) AS wall_s,
            p.images / coalesce(r.wall_s, nullif(p.finished_span_s, 0)) AS images_per_s,
            p.output_mp / coalesce(r.wall_s, nullif(p.finished_span_s, 0)) AS output_mp_per_s,
            p.t[1] AS total_s_p50, p.t[2] AS total_s_p90, p.t[3] AS total_s_p99,
            p.c[1] AS psnr_y_consistency_p10, p.c[2] AS psnr_y_consistency_p50,
            p.c[3] AS psnr_y_consistency_p90,
            p.s[1] AS sharpness_ratio_p10, p.s[2] AS sharpness_ratio_p50, p.s[3] AS sharpness_ratio_p90,
            p.with_reference, p.g_mean AS psnr_y_gain_mean, p.g_p50 AS psnr_y_gain_p50
        FROM per_run p LEFT JOIN runs r USING (run_id)
        ORDER BY r.seq""")


def default_metric(db: StatsDB, view: str = "sel") -> str:
    """psnr_y where any ok image has a reference, else psnr_y_consistency."""
    row = db.rows(f"SELECT count(psnr_y) AS n FROM {view} WHERE status = 'ok'")[0]
    return "psnr_y" if row["n"] else "psnr_y_consistency"


def check_metric(metric: str) -> str:
    """The metric's SQL expression; ReportError for an unknown name (names only: no SQL here)."""
    if metric not in METRICS:
        raise ReportError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    return METRICS[metric]


def rank_images(db: StatsDB, metric: str, n: int, best: bool = False, view: str = "sel") -> pa.Table:
    """The n worst (or best) ok images by `metric`, ties broken by image_id and run_id."""
    expr = check_metric(metric)
    ascending = (metric in LOWER_IS_BETTER) == best
    direction = "ASC" if ascending else "DESC"
    extra = [c for c in ("psnr_y_consistency", "sharpness_ratio", "psnr_y") if c != metric]
    return db.table(f"""
        SELECT row_number() OVER (ORDER BY m {direction}, image_id, run_id) AS rank, *
        FROM (SELECT run_id, image_id, {expr} AS m, {', '.join(extra)}, output_uri, source_uri,
                     reference_uri, scale
              FROM {view} WHERE status = 'ok' AND isfinite({expr})
              ORDER BY m {direction}, image_id, run_id LIMIT {int(n)})
        ORDER BY rank""").rename_columns(
        ["rank", "run_id", "image_id", metric, *extra, "output_uri", "source_uri", "reference_uri",
         "scale"])


def group_failures(db: StatsDB, view: str = "sel") -> pa.Table:
    """Failed images by error_type, most frequent first, with one example each."""
    return db.table(f"""
        SELECT error_type, count(*) AS images, count(DISTINCT run_id) AS runs,
            arg_min(error_message, source_uri) AS example_message,
            min(source_uri) AS example_source_uri
        FROM {view} WHERE status = 'failed'
        GROUP BY error_type ORDER BY images DESC, error_type""")


@dataclass
class Comparison:
    """B against A on the images both measured: delta = B - A."""

    label_a: str
    label_b: str
    metric: str
    summary: pa.Table
    """One row: counts, mean/std/quantiles of the delta, better/worse/same."""
    worse: pa.Table
    """The images that got worse, most first."""
    histogram: "Histogram | None" = None


def compare(db: StatsDB, metric: str, n: int, *, runs: tuple[str, str] | None = None,
            models: tuple[str, str] | None = None, run_ids: list[str] | None = None,
            histogram: bool = False) -> Comparison:
    """Compare two runs, or two models (over `run_ids`), joined on image_id.

    Each side keeps its latest ok row per image_id with a finite metric; images on
    one side only are counted, not compared. One scan, one hash aggregate by
    image_id; only (image_id, value A, value B) is kept, inside DuckDB.
    """
    expr = check_metric(metric)
    if runs:
        db.register("cmp", list(runs))
        side_a, side_b = (f"run_id = {_literal(r)}" for r in runs)
        labels = (f"run {runs[0]}", f"run {runs[1]}")
    elif models:
        db.register("cmp", run_ids or list(db.runs))
        side_a, side_b = (f"model = {_literal(m)}" for m in models)
        labels = (f"model {models[0]}", f"model {models[1]}")
    else:
        raise ValueError("compare needs runs or models")
    ok = f"status = 'ok' AND isfinite({expr})"
    # The latest row wins; a plain BIGINT key keeps the hash aggregate small (a (time,
    # run_id) struct key costs ~100 MiB more per million rows).
    latest = "coalesce(epoch_us(finished_at), -1)"
    try:
        db.con.execute(f"""
            CREATE OR REPLACE TEMP TABLE pairs AS
            SELECT image_id, m_a, m_b, m_b - m_a AS delta FROM (
                SELECT image_id, arg_max({expr}, {latest}) FILTER ({side_a}) AS m_a,
                                 arg_max({expr}, {latest}) FILTER ({side_b}) AS m_b
                FROM cmp WHERE {ok} AND (({side_a}) OR ({side_b})) GROUP BY image_id)""")
    except duckdb.Error as exc:
        raise ReportError(_first_line(exc)) from None
    worse_if = "delta > 0" if metric in LOWER_IS_BETTER else "delta < 0"
    better_if = "delta < 0" if metric in LOWER_IS_BETTER else "delta > 0"
    summary = db.table(f"""
        SELECT {_literal(labels[0])} AS a, {_literal(labels[1])} AS b, {_literal(metric)} AS metric,
            count(m_a) AS images_a, count(m_b) AS images_b, count(delta) AS common,
            avg(m_a) FILTER (delta IS NOT NULL) AS mean_a, avg(m_b) FILTER (delta IS NOT NULL) AS mean_b,
            avg(delta) AS delta_mean, stddev_samp(delta) AS delta_std,
            quantile_cont(delta, [0.05, 0.25, 0.5, 0.75, 0.95]) AS q,
            count(*) FILTER ({better_if}) AS better, count(*) FILTER ({worse_if}) AS worse,
            count(*) FILTER (delta = 0) AS same
        FROM pairs""")
    q = summary.column("q")[0].as_py() or [None] * 5
    summary = summary.drop_columns(["q"])
    for name, value in zip(("delta_p05", "delta_p25", "delta_p50", "delta_p75", "delta_p95"), q):
        summary = summary.append_column(name, pa.array([value], pa.float64()))
    order = "DESC" if metric in LOWER_IS_BETTER else "ASC"
    worse = db.rows(f"""SELECT image_id, m_a AS {metric}_a, m_b AS {metric}_b, delta FROM pairs
                        WHERE {worse_if} ORDER BY delta {order}, image_id LIMIT {int(n)}""")
    # The paths of those few images only, from side B's chosen rows.
    uris = {r["image_id"]: r for r in db.rows(f"""
        SELECT image_id, arg_max(output_uri, {latest}) AS output_uri,
               arg_max(source_uri, {latest}) AS source_uri
        FROM cmp WHERE {ok} AND ({side_b})
              AND image_id IN ({', '.join(_literal(r['image_id']) for r in worse) or 'NULL'})
        GROUP BY image_id""")}
    for row in worse:
        row.update({k: uris.get(row["image_id"], {}).get(k) for k in ("output_uri", "source_uri")})
    names = ["image_id", f"{metric}_a", f"{metric}_b", "delta", "output_uri", "source_uri"]
    worse_table = pa.Table.from_pylist(worse) if worse else pa.table(
        {k: pa.array([], pa.string() if k in ("image_id", "output_uri", "source_uri") else pa.float64())
         for k in names})
    result = Comparison(labels[0], labels[1], metric, summary, worse_table.select(names))
    if histogram:
        result.histogram = histogram_of(db, "delta", f"{metric} delta (B - A)", view="pairs",
                                        where="TRUE")
    return result


# --- plots --------------------------------------------------------------------------------


@dataclass
class Histogram:
    """Counts in equal bins over [lo, hi]; values outside fall in the edge bins."""

    title: str
    lo: float
    hi: float
    counts: list[int]
    n: int


def histogram_of(db: StatsDB, expr: str, title: str, view: str = "sel", where: str = "status = 'ok'",
                 bins: int = HISTOGRAM_BINS) -> Histogram | None:
    """Histogram of a trusted SQL expression over its 0.5-99.5 % range, binned in DuckDB."""
    base = f"FROM {view} WHERE {where} AND isfinite({expr})"
    bounds = db.rows(f"SELECT count(*) AS n, quantile_cont({expr}, [0.005, 0.995]) AS q {base}")[0]
    if not bounds["n"]:
        return None
    lo, hi = bounds["q"]
    width = (hi - lo) / bins if hi > lo else 1.0
    counts = [0] * bins
    for row in db.rows(f"""SELECT least(greatest(floor(({expr} - {lo!r}) / {width!r}), 0), {bins - 1})::INT AS b,
                                  count(*) AS n {base} GROUP BY b"""):
        counts[row["b"]] = row["n"]
    return Histogram(title, lo, hi if hi > lo else lo + 1.0, counts, bounds["n"])


def sample_points(db: StatsDB, x: str, y: str, limit: int = SCATTER_POINTS,
                  view: str = "sel") -> list[tuple[float, float]]:
    """At most `limit` (x, y) points of ok images, a seeded reservoir sample taken in DuckDB."""
    rows = db.rows(f"""
        SELECT x, y FROM (SELECT {x} AS x, {y} AS y FROM {view}
                          WHERE status = 'ok' AND isfinite({x}) AND isfinite({y}))
        USING SAMPLE reservoir({int(limit)} ROWS) REPEATABLE (0)""")
    return [(r["x"], r["y"]) for r in rows]


# --- the report ---------------------------------------------------------------------------


@dataclass
class GalleryItem:
    """One image of the gallery: its row and up to three crops (data: URIs; None if unreadable)."""

    end: str  # "worst" or "best"
    row: dict
    crops: dict[str, str | None]


@dataclass
class Report:
    """Everything a report shows; every table is small."""

    output: str
    run_ids: list[str]
    metric: str
    tables: dict[str, pa.Table]
    comparison: Comparison | None = None
    histograms: list[Histogram] = field(default_factory=list)
    scatter: list[tuple[float, float]] = field(default_factory=list)
    scatter_axes: tuple[str, str] = ("psnr_y_consistency", "sharpness_ratio")
    gallery: list[GalleryItem] = field(default_factory=list)


def build_report(db: StatsDB, run: str | None = None, metric: str | None = None, worst: int = 10,
                 compare_runs: tuple[str, str] | None = None,
                 compare_models: tuple[str, str] | None = None,
                 plots: bool = False, gallery: int = 8) -> Report:
    """Query the report's sections; `plots` adds histograms, the scatter and the gallery (HTML)."""
    if worst < 1:
        raise ReportError(f"--worst must be at least 1, got {worst}")
    if compare_runs and compare_models:
        raise ReportError("give --compare or --compare-models, not both")
    if compare_runs and run:
        raise ReportError("--compare names its two runs; drop --run")
    if compare_runs:
        pair = tuple(db.resolve_run(r) for r in compare_runs)
        if pair[0] == pair[1]:
            raise ReportError(f"--compare needs two different runs, got {pair[0]} twice")
        run_ids = list(dict.fromkeys(pair))
    else:
        # Two models are usually in two runs, so comparing them looks at every run by default.
        run_ids = db.select_runs(run or ("all" if compare_models else "latest"))
    db.register("sel", run_ids)
    if metric is None:
        metric = default_metric(db)
    check_metric(metric)

    tables = {
        "summary": summarize(db),
        "worst": rank_images(db, metric, worst).drop_columns(["reference_uri", "scale"]),
        "failures": group_failures(db),
    }
    report = Report(db.output, run_ids, metric, tables)
    if compare_runs or compare_models:
        report.comparison = compare(db, metric, worst, runs=pair if compare_runs else None,
                                    models=compare_models, run_ids=run_ids, histogram=plots)
        tables["compare"] = report.comparison.summary
        tables["compare_worse"] = report.comparison.worse
    if plots:
        for name in dict.fromkeys([metric, "psnr_y_consistency", "sharpness_ratio", "total_s", "psnr_y_gain"]):
            hist = histogram_of(db, METRICS[name], name)
            if hist:
                report.histograms.append(hist)
        report.scatter = sample_points(db, *report.scatter_axes)
        report.gallery = make_gallery(db, metric, min(max(gallery, 0), GALLERY_MAX))
    return report


def make_gallery(db: StatsDB, metric: str, n: int) -> list[GalleryItem]:
    """The n worst and n best images with their crops (an image may appear in both if n is large)."""
    if n == 0:
        return []
    items = []
    for end, best in (("worst", False), ("best", True)):
        for row in rank_images(db, metric, n, best=best).to_pylist():
            items.append(GalleryItem(end, row, make_crops(row)))
    return items


def make_crops(row: dict, side: int = CROP_PX) -> dict[str, str | None]:
    """Centre crops of the output, the bicubic-upscaled input and the reference, as data: URIs.

    The three show the same output pixels. The bicubic crop is upscaled from a
    slightly larger input region so its edges are not the image border's.
    """
    from sr_batch.resample import upscale_bicubic

    scale = int(row.get("scale") or 1)
    output = _read_pixels(row.get("output_uri"))
    source = _read_pixels(row.get("source_uri"))
    reference = _read_pixels(row.get("reference_uri"))
    crops: dict[str, str | None] = {"bicubic": None, "output": None}
    if row.get("reference_uri"):
        crops["reference"] = None
    if source is None and output is None:
        return crops
    # The crop region in input pixels: centred, and whole input pixels so all three align.
    h, w = source.shape[:2] if source is not None else (output.shape[0] // scale, output.shape[1] // scale)
    c = max(1, min(math.ceil(side / scale), h, w))
    x0, y0 = (w - c) // 2, (h - c) // 2
    box = (y0 * scale, x0 * scale, c * scale)  # top, left, side in output pixels

    def crop(pixels: np.ndarray | None) -> str | None:
        top, left, size = box
        if pixels is None or pixels.shape[0] < top + size or pixels.shape[1] < left + size:
            return None
        return _data_uri(pixels[top:top + size, left:left + size])

    crops["output"] = crop(output)
    if "reference" in crops:
        crops["reference"] = crop(reference)
    if source is not None:
        margin = 3  # bicubic's support is 2 input px each side
        px0, py0 = max(0, x0 - margin), max(0, y0 - margin)
        px1, py1 = min(w, x0 + c + margin), min(h, y0 + c + margin)
        up = upscale_bicubic(np.ascontiguousarray(source[py0:py1, px0:px1]), scale)
        top, left = (y0 - py0) * scale, (x0 - px0) * scale
        crops["bicubic"] = _data_uri(up[top:top + c * scale, left:left + c * scale])
    return crops


def _read_pixels(uri: str | None) -> np.ndarray | None:
    """HxWxC uint8 pixels of an image, or None if it is missing or unreadable."""
    from sr_batch.images import decode_image

    if not uri:
        return None
    try:
        decoded = decode_image(storage.read_bytes(uri, retries=1), max_pixels=1 << 31)
    except Exception as exc:  # noqa: BLE001 - a thumbnail is a convenience: show a placeholder
        # Missing files are expected (moved inputs, failed runs); credentials or network
        # errors of a filesystem surface as their own exception types, so catch them all.
        log.info("gallery: cannot read %s: %s", uri, exc)
        return None
    pixels = decoded.pixels
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    return pixels


def _data_uri(pixels: np.ndarray) -> str:
    from PIL import Image

    image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    buffer = io.BytesIO()
    # 4:4:4 at q90: fine detail (what the crops are for) survives at ~6 KB a crop.
    image.save(buffer, format="JPEG", quality=90, subsampling=0)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --- --sql --------------------------------------------------------------------------------


def stream_sql(db: StatsDB, sql: str, batch_rows: int = 10_000) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """Run SQL over the views `stats` and `runs`; the result streams in record batches.

    Any DuckDB error, at planning or while streaming, becomes a ReportError with
    DuckDB's first message line.
    """
    try:
        relation = db.con.sql(sql)
        if relation is None:  # a statement without a result (CREATE, SET, ...)
            return pa.schema([]), iter(())
        reader = relation.to_arrow_reader(batch_rows)
    except duckdb.Error as exc:
        raise ReportError(f"bad SQL: {_first_line(exc)}") from None

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from reader
        except duckdb.Error as exc:
            raise ReportError(f"bad SQL: {_first_line(exc)}") from None

    return reader.schema, batches()


# --- rendering ----------------------------------------------------------------------------


def _title(report: Report) -> str:
    runs = report.run_ids[0] if len(report.run_ids) == 1 else f"{len(report.run_ids)} runs"
    return f"sr-batch report: {report.output} ({runs})"


def _section_titles(report: Report) -> dict[str, str]:
    titles = {"summary": "Summary per run",
              "worst": f"Worst {report.tables['worst'].num_rows} images by {report.metric}",
              "failures": "Failures by error_type"}
    if report.comparison:
        c = report.comparison
        titles["compare"] = f"Comparison: {c.label_b} against {c.label_a} ({c.metric}, delta = B - A)"
        titles["compare_worse"] = f"Images worse in {c.label_b} than in {c.label_a}"
    return titles


def render_text(report: Report) -> str:
    """Aligned plain-text tables; the summary is transposed (one column per run) when it fits."""
    out = [_title(report), ""]
    for name, title in _section_titles(report).items():
        table = report.tables[name]
        out.append(f"== {title} ==")
        if table.num_rows == 0:
            out.append("(none)")
        elif name in ("summary", "compare") and table.num_rows <= 6:
            out.extend(_align([[col, *(_fmt(v) for v in table.column(col).to_pylist())]
                               for col in table.column_names]))
        else:
            out.extend(_text_rows(table.schema.names, table.to_pylist()))
        out.append("")
    return "\n".join(out)


def _text_rows(names: list[str], rows: list[dict], max_width: int = 80) -> list[str]:
    cells = [list(names)] + [[_fmt(r[n]) for n in names] for r in rows]
    return _align([[c if len(c) <= max_width else c[:max_width - 1] + "…" for c in row] for row in cells])


def _align(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.1f}" if abs(value) >= 1000 else f"{value:.4g}" if abs(value) < 0.01 else f"{value:.3f}"
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


def render_json(report: Report) -> str:
    doc = {"output": report.output, "runs": report.run_ids, "metric": report.metric}
    for name in _section_titles(report):
        doc[name] = [{k: _json_value(v) for k, v in row.items()} for row in report.tables[name].to_pylist()]
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


def render_csv(report: Report) -> str:
    """One CSV block per section, each after a `# section` line and separated by a blank line."""
    out = io.StringIO()
    for i, name in enumerate(_section_titles(report)):
        table = report.tables[name]
        out.write(("\n" if i else "") + f"# {name}\n")
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(table.column_names)
        for row in table.to_pylist():
            writer.writerow([_csv_value(v) for v in row.values()])
    return out.getvalue()


def _csv_value(value):
    value = _json_value(value)
    if isinstance(value, list):
        return json.dumps(value)
    return "" if value is None else value


def write_sql_result(schema: pa.Schema, batches: Iterator[pa.RecordBatch], fmt: str, handle) -> int:
    """Write a streamed --sql result to a text handle; return the row count."""
    names = schema.names
    n = 0
    if fmt == "csv" and not any(pa.types.is_nested(t) for t in schema.types):
        from pyarrow import csv as pa_csv

        # Arrow's C++ writer: ~20x faster than Python rows on a full export.
        for i, batch in enumerate(batches):
            buffer = io.BytesIO()
            pa_csv.write_csv(batch, buffer, pa_csv.WriteOptions(include_header=i == 0,
                                                                quoting_style="needed"))
            handle.write(buffer.getvalue().decode("utf-8"))
            n += batch.num_rows
        if n == 0:
            handle.write(",".join(names) + "\n")
    elif fmt == "csv":  # lists (e.g. quantile_cont(x, [...])) as JSON in a cell
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(names)
        for batch in batches:
            for row in batch.to_pylist():
                writer.writerow([_csv_value(v) for v in row.values()])
            n += batch.num_rows
    elif fmt == "json":
        handle.write("[")
        for batch in batches:
            for row in batch.to_pylist():
                handle.write(("\n" if n == 0 else ",\n") +
                             json.dumps({k: _json_value(v) for k, v in row.items()}, allow_nan=False))
                n += 1
        handle.write("\n]\n" if n else "]\n")
    elif fmt == "table":
        widths = None
        for batch in batches:
            rows = [[_fmt(v)[:80] for v in row.values()] for row in batch.to_pylist()]
            if widths is None:  # the first batch sets the widths; later, longer cells overflow
                widths = [max([len(name), *(len(r[i]) for r in rows)]) for i, name in enumerate(names)]
                handle.write("  ".join(x.ljust(w) for x, w in zip(names, widths)).rstrip() + "\n")
            for row in rows:
                handle.write("  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() + "\n")
            n += len(rows)
        if widths is None:
            handle.write("  ".join(names) + "\n")
    elif fmt == "html":
        rows = []
        for batch in batches:
            rows.extend(batch.to_pylist()[:SQL_HTML_ROWS - len(rows)])
            n += batch.num_rows
            if len(rows) >= SQL_HTML_ROWS:
                break
        note = f"the first {len(rows)} rows" if len(rows) >= SQL_HTML_ROWS else f"{n} rows"
        body = (f'<section id="sql"><h2>Query</h2><p>{note}</p>'
                f'{_html_table(names, rows)}</section>')
        handle.write(_html_page("sr-batch query", body))
    else:
        raise ReportError(f"unknown format {fmt!r}")
    return n


# --- HTML ---------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:20px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 7px;text-align:left}
th{background:#f2f4f7}td.n{text-align:right;font-variant-numeric:tabular-nums}
.plots{display:flex;flex-wrap:wrap;gap:16px}.plots figure{margin:0}
.gallery td{vertical-align:top}.crop{width:192px;height:192px;image-rendering:pixelated;display:block}
.na{width:192px;height:192px;display:flex;align-items:center;justify-content:center;background:#eee;color:#777}
.uri{font-size:12px;color:#555;word-break:break-all;max-width:320px}
"""


def render_html(report: Report) -> str:
    """One self-contained page: inline CSS and SVG, thumbnails as data: URIs, no scripts."""
    titles = _section_titles(report)
    parts = [f'<p>Runs: {html.escape(", ".join(report.run_ids))}. Metric: '
             f'<code>{html.escape(report.metric)}</code>.</p>']
    summary = report.tables["summary"]
    parts.append(f'<section id="summary"><h2>{html.escape(titles["summary"])}</h2>'
                 f'{_html_transposed(summary) if summary.num_rows <= 6 else _html_table(summary.column_names, summary.to_pylist())}'
                 f'</section>')
    plots = "".join(_svg_histogram(h) for h in report.histograms) or "<p>No finite values.</p>"
    parts.append(f'<section id="histograms"><h2>Metric histograms (ok images)</h2>'
                 f'<div class="plots">{plots}</div></section>')
    x_name, y_name = report.scatter_axes
    parts.append(f'<section id="scatter"><h2>{html.escape(y_name)} against {html.escape(x_name)}</h2>'
                 f'{_svg_scatter(report.scatter, x_name, y_name)}</section>')
    parts.append(f'<section id="gallery"><h2>Worst and best images by {html.escape(report.metric)}</h2>'
                 f'{_html_gallery(report.gallery)}</section>')
    worst = report.tables["worst"]
    parts.append(f'<section id="worst"><h2>{html.escape(titles["worst"])}</h2>'
                 f'{_html_table(worst.column_names, worst.to_pylist())}</section>')
    failures = report.tables["failures"]
    parts.append(f'<section id="failures"><h2>{html.escape(titles["failures"])}</h2>'
                 f'{_html_table(failures.column_names, failures.to_pylist()) if failures.num_rows else "<p>No failures.</p>"}'
                 f'</section>')
    if report.comparison:
        c = report.comparison
        hist = _svg_histogram(c.histogram) if c.histogram else ""
        worse = report.tables["compare_worse"]
        parts.append(f'<section id="compare"><h2>{html.escape(titles["compare"])}</h2>'
                     f'{_html_transposed(report.tables["compare"])}<div class="plots">{hist}</div>'
                     f'<h3>{html.escape(titles["compare_worse"])}</h3>'
                     f'{_html_table(worse.column_names, worse.to_pylist()) if worse.num_rows else "<p>None.</p>"}'
                     f'</section>')
    return _html_page(_title(report), "".join(parts))


def _html_page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
            f'img-src data:; style-src \'unsafe-inline\'">'
            f'<title>{html.escape(title)}</title><style>{_CSS}</style></head>'
            f'<body><h1>{html.escape(title)}</h1>{body}</body></html>\n')


def _html_cell(value) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    text = html.escape(_fmt(value))
    return f'<td class="n">{text}</td>' if numeric else f"<td>{text}</td>"


def _html_table(names: list[str], rows: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = "".join("<tr>" + "".join(_html_cell(r[n]) for n in names) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_transposed(table: pa.Table) -> str:
    rows = "".join(f"<tr><th>{html.escape(col)}</th>" +
                   "".join(_html_cell(v) for v in table.column(col).to_pylist()) + "</tr>"
                   for col in table.column_names)
    return f"<table><tbody>{rows}</tbody></table>"


def _html_gallery(items: list[GalleryItem]) -> str:
    if not items:
        return "<p>No ok images with this metric.</p>"
    rows = []
    for item in items:
        row = item.row
        metric_cols = [k for k in row if k not in ("rank", "run_id", "image_id", "output_uri", "source_uri",
                                                   "reference_uri", "scale")]
        facts = "<br>".join(f"{html.escape(k)}: {html.escape(_fmt(row[k]))}" for k in metric_cols)
        cells = "".join(
            f'<td><div>{html.escape(label)}</div>'
            + (f'<img class="crop" alt="{html.escape(label)} crop" src="{uri}">' if uri
               else '<div class="na">not readable</div>') + "</td>"
            for label, uri in item.crops.items())
        rows.append(f'<tr class="{item.end}"><td><b>{item.end} #{row["rank"]}</b><br>'
                    f'{html.escape(str(row["image_id"]))}<br>{facts}'
                    f'<div class="uri">{html.escape(str(row["output_uri"] or ""))}</div></td>{cells}</tr>')
    return f'<table class="gallery"><tbody>{"".join(rows)}</tbody></table>'


_W, _H, _PAD = 360, 220, 40  # plot size and the margin for axis labels, px


def _svg_histogram(hist: Histogram) -> str:
    peak = max(hist.counts) or 1
    bins = len(hist.counts)
    bar_w = (_W - 2 * _PAD) / bins
    bars = "".join(
        f'<rect x="{_PAD + i * bar_w:.1f}" y="{_H - _PAD - (_H - 2 * _PAD) * n / peak:.1f}" '
        f'width="{max(bar_w - 1, 1):.1f}" height="{(_H - 2 * _PAD) * n / peak:.1f}" fill="#4a78b5">'
        f'<title>{n}</title></rect>'
        for i, n in enumerate(hist.counts) if n)
    return (f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" role="img">'
            f'<text x="{_W / 2}" y="16" text-anchor="middle" font-size="13">'
            f'{html.escape(hist.title)} (n = {hist.n:,})</text>{bars}'
            f'{_axes(hist.lo, hist.hi, 0, peak, "count")}</svg></figure>')


def _svg_scatter(points: list[tuple[float, float]], x_name: str, y_name: str) -> str:
    if not points:
        return "<p>No ok images with both values.</p>"
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    w, h = _W * 1.5, _H * 1.5

    def px(x, y):
        return (_PAD + (x - x0) / (x1 - x0) * (w - 2 * _PAD), h - _PAD - (y - y0) / (y1 - y0) * (h - 2 * _PAD))

    dots = "".join('<circle cx="%.1f" cy="%.1f" r="2.5"/>' % px(x, y) for x, y in points)
    return (f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{w:.0f}" height="{h:.0f}" role="img">'
            f'<g fill="#b5524a" fill-opacity="0.6">{dots}</g>'
            f'{_axes(x0, x1, y0, y1, y_name, w, h, x_name)}</svg>'
            f'<figcaption>{len(points):,} sampled ok images</figcaption></figure>')


def _axes(x0: float, x1: float, y0: float, y1: float, y_label: str, w: float = _W, h: float = _H,
          x_label: str = "") -> str:
    ink = 'stroke="#333" stroke-width="1"'
    lines = (f'<line x1="{_PAD}" y1="{h - _PAD}" x2="{w - _PAD}" y2="{h - _PAD}" {ink}/>'
             f'<line x1="{_PAD}" y1="{_PAD}" x2="{_PAD}" y2="{h - _PAD}" {ink}/>')
    labels = (f'<text x="{_PAD}" y="{h - _PAD + 14}" font-size="11">{_fmt(x0)}</text>'
              f'<text x="{w - _PAD}" y="{h - _PAD + 14}" font-size="11" text-anchor="end">{_fmt(x1)}</text>'
              f'<text x="{_PAD - 4}" y="{h - _PAD}" font-size="11" text-anchor="end">{_fmt(y0)}</text>'
              f'<text x="{_PAD - 4}" y="{_PAD + 8}" font-size="11" text-anchor="end">{_fmt(y1)}</text>'
              f'<text x="4" y="{_PAD - 8}" font-size="11">{html.escape(y_label)}</text>')
    if x_label:
        labels += f'<text x="{w / 2}" y="{h - 8}" font-size="11" text-anchor="middle">{html.escape(x_label)}</text>'
    return lines + labels


# --- helpers ------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _literal(value: str) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def _parse_time(value) -> dt.datetime | None:
    """An ISO time from a run record, in UTC (naive means UTC); None if absent or malformed."""
    try:
        parsed = dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return parsed.replace(tzinfo=dt.timezone.utc) if parsed.tzinfo is None else parsed.astimezone(dt.timezone.utc)


# --- output -------------------------------------------------------------------------------

RENDERERS = {"table": render_text, "json": render_json, "csv": render_csv, "html": render_html}


def write_report(report: Report, fmt: str, target: str | None = None) -> None:
    """Render the report; write it atomically to `target` (a path or URI), else to stdout."""
    text = RENDERERS[fmt](report)
    if target is None:
        sys.stdout.write(text)
    else:
        storage.write_bytes_atomic(storage.to_uri(target), text.encode("utf-8"))


def write_sql(db: StatsDB, sql: str, fmt: str, target: str | None = None) -> int:
    """Stream a --sql result to `target` (a path or URI; written under a temporary name) or stdout."""
    schema, batches = stream_sql(db, sql)
    if target is None:
        return write_sql_result(schema, batches, fmt, sys.stdout)
    uri = storage.to_uri(target)
    fs, path = storage.get_fs(uri)
    directory, name = path.rsplit("/", 1)
    fs.makedirs(directory, exist_ok=True)
    tmp = storage.temp_name(directory, name)
    try:
        with fs.open(tmp, "w", encoding="utf-8") as handle:
            n = write_sql_result(schema, batches, fmt, handle)
        fs.mv(tmp, path)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)
    return n
