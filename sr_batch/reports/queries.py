"""The report's questions, each one DuckDB query over a view of the stats: the Report data.

    summarize, rank_images, group_failures, compare    the sections
    histogram_of, sample_points                        the HTML plots
    build_report(db, ...)                              all of them for the chosen runs

Every aggregate runs inside DuckDB over the Parquet in place; Python only ever
holds result rows that are small by construction (one per run, N worst, one per
error type, bins, a capped sample).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from sr_batch import stats
from sr_batch.errors import ReportError
from sr_batch.reports.connection import StatsDB, first_line, sql_literal
from sr_batch.reports.gallery import GALLERY_MAX, GalleryItem, make_crops

# Metrics that can rank images: every numeric stats column, plus the gains over bicubic.
DERIVED_METRICS = {
    "psnr_y_gain": "psnr_y - psnr_y_bicubic",
    "ssim_y_gain": "ssim_y - ssim_y_bicubic",
    "niqe_gain": "niqe_bicubic - niqe",
}
METRICS: dict[str, str] = {
    **{name: name for name, dtype, _ in stats.COLUMNS
       if pa.types.is_floating(dtype) or pa.types.is_integer(dtype)},
    **DERIVED_METRICS,
}
# For these, smaller is better; for every other metric (PSNR, SSIM, consistency,
# sharpness) larger is better.
LOWER_IS_BETTER = {"decode_s", "infer_s", "encode_s", "total_s", "bytes_out", "n_tiles", "niqe",
                   "niqe_bicubic", "noise_sigma_est"}

SCATTER_POINTS = 2000  # sampled points; the scatter's size does not grow with the stats
HISTOGRAM_BINS = 30


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


def group_models(db: StatsDB, view: str = "sel") -> pa.Table:
    """Ok images by model, denoise and route kind (under --model auto: why an image got its
    model; the first word of `route`), with the mean of each quality column."""
    return db.table(f"""
        SELECT model, denoise, coalesce(split_part(route, ' ', 1), '-') AS route, count(*) AS images,
               avg(psnr_y - psnr_y_bicubic) AS psnr_y_gain, avg(niqe) AS niqe,
               avg(niqe_bicubic) AS niqe_bicubic, avg(psnr_y_consistency) AS psnr_y_consistency,
               avg(sharpness_ratio) AS sharpness_ratio, avg(jpeg_quality_est) AS jpeg_quality_est,
               avg(noise_sigma_est) AS noise_sigma_est
        FROM {view} WHERE status = 'ok'
        GROUP BY ALL ORDER BY images DESC, model, denoise, route""")


def default_metric(db: StatsDB, view: str = "sel") -> str:
    """psnr_y where any ok image has a reference, else niqe where the run measured it (an
    archive has no references: the least natural outputs first), else psnr_y_consistency."""
    row = db.rows(f"SELECT count(psnr_y) AS refs, count(niqe) AS niqe FROM {view} WHERE status = 'ok'")[0]
    return "psnr_y" if row["refs"] else "niqe" if row["niqe"] else "psnr_y_consistency"


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
    histogram: Histogram | None = None


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
        side_a, side_b = (f"run_id = {sql_literal(r)}" for r in runs)
        labels = (f"run {runs[0]}", f"run {runs[1]}")
    elif models:
        db.register("cmp", run_ids or list(db.runs))
        side_a, side_b = (f"model = {sql_literal(m)}" for m in models)
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
        raise ReportError(first_line(exc)) from None
    worse_if = "delta > 0" if metric in LOWER_IS_BETTER else "delta < 0"
    better_if = "delta < 0" if metric in LOWER_IS_BETTER else "delta > 0"
    summary = db.table(f"""
        SELECT {sql_literal(labels[0])} AS a, {sql_literal(labels[1])} AS b, {sql_literal(metric)} AS metric,
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
              AND image_id IN ({', '.join(sql_literal(r['image_id']) for r in worse) or 'NULL'})
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
        "models": group_models(db),
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
