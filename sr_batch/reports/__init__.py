"""`sr-batch report`: DuckDB over the stats (Parquet under OUT/stats, records under OUT/runs).

    connection   open_stats(OUT): a locked-down DuckDB with views `stats` and `runs`
    queries      build_report(db, ...): summary, worst images, failures, comparison, plots
    gallery      crops of the worst and best images for the HTML page
    text, html   the Report as a table, JSON, CSV, or one HTML page; render: write it
    sql          --sql: the user's SQL, streamed
"""

from sr_batch.reports.connection import RunInfo, StatsDB, interrupt_on_sigint, open_stats
from sr_batch.reports.gallery import GalleryItem, make_crops
from sr_batch.reports.html import render_html
from sr_batch.reports.queries import (
    LOWER_IS_BETTER,
    METRICS,
    Comparison,
    Histogram,
    Report,
    build_report,
    check_metric,
    compare,
    default_metric,
    group_failures,
    histogram_of,
    rank_images,
    sample_points,
    summarize,
)
from sr_batch.reports.render import RENDERERS, write_report
from sr_batch.reports.sql import check_sql, stream_sql, write_sql, write_sql_result
from sr_batch.reports.text import render_csv, render_json, render_text

__all__ = [
    "LOWER_IS_BETTER", "METRICS", "RENDERERS", "Comparison", "GalleryItem", "Histogram", "Report",
    "RunInfo", "StatsDB", "build_report", "check_metric", "check_sql", "compare", "default_metric",
    "group_failures", "histogram_of", "interrupt_on_sigint", "make_crops", "open_stats",
    "rank_images", "render_csv", "render_html", "render_json", "render_text", "sample_points",
    "stream_sql", "summarize", "write_report", "write_sql", "write_sql_result",
]
