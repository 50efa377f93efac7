"""Write a Report in the chosen format to a file (atomically) or to stdout."""

from __future__ import annotations

import sys

from sr_batch import storage
from sr_batch.reports.html import render_html
from sr_batch.reports.queries import Report
from sr_batch.reports.text import render_csv, render_json, render_text

RENDERERS = {"table": render_text, "json": render_json, "csv": render_csv, "html": render_html}


def write_report(report: Report, fmt: str, target: str | None = None) -> None:
    """Render the report; write it atomically to `target` (a path or URI), else to stdout."""
    text = RENDERERS[fmt](report)
    if target is None:
        sys.stdout.write(text)
    else:
        storage.write_bytes_atomic(storage.to_uri(target), text.encode("utf-8"))
