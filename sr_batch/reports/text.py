"""The Report as text: aligned tables, JSON, CSV; and how values print in every format."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math

from sr_batch import storage
from sr_batch.reports.queries import Report


def title(report: Report) -> str:
    """The report's heading: OUT and its run, or how many runs."""
    runs = report.run_ids[0] if len(report.run_ids) == 1 else f"{len(report.run_ids)} runs"
    return f"sr-batch report: {report.output} ({runs})"


def section_titles(report: Report) -> dict[str, str]:
    """Each table's name -> its heading, in the order the sections are shown."""
    titles = {"summary": "Summary per run",
              "worst": f"Worst {report.tables['worst'].num_rows} images by {report.metric}",
              "failures": "Failures by error_type",
              "models": "Ok images by model and route"}
    if report.comparison:
        c = report.comparison
        titles["compare"] = f"Comparison: {c.label_b} against {c.label_a} ({c.metric}, delta = B - A)"
        titles["compare_worse"] = f"Images worse in {c.label_b} than in {c.label_a}"
    return titles


def render_text(report: Report) -> str:
    """Aligned plain-text tables; the summary is transposed (one column per run) when it fits."""
    out = [title(report), ""]
    for name, heading in section_titles(report).items():
        table = report.tables[name]
        out.append(f"== {heading} ==")
        if table.num_rows == 0:
            out.append("(none)")
        elif name in ("summary", "compare") and table.num_rows <= 6:
            out.extend(_align([[col, *(format_value(v) for v in table.column(col).to_pylist())]
                               for col in table.column_names]))
        else:
            out.extend(_text_rows(table.schema.names, table.to_pylist()))
        out.append("")
    return "\n".join(out)


def _text_rows(names: list[str], rows: list[dict], max_width: int = 80) -> list[str]:
    cells = [list(names)] + [[format_value(r[n]) for n in names] for r in rows]
    return _align([[c if len(c) <= max_width else c[:max_width - 1] + "…" for c in row] for row in cells])


def _align(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]


def format_value(value) -> str:
    """A cell for people: 3 decimals or 4 significant digits, ISO times, blank for null, control
    characters escaped."""
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.1f}" if abs(value) >= 1000 else f"{value:.4g}" if abs(value) < 0.01 else f"{value:.3f}"
    if isinstance(value, dt.datetime):
        return value.isoformat()
    # Control characters (ESC, CR, a newline) from file names would drive the terminal or
    # break the row: shown escaped, as the run's own lines show them.
    return storage.display(str(value))


def render_json(report: Report) -> str:
    """One JSON document: the output, runs and metric, then each section as a list of rows."""
    doc = {"output": report.output, "runs": report.run_ids, "metric": report.metric}
    for name in section_titles(report):
        doc[name] = [{k: json_value(v) for k, v in row.items()} for row in report.tables[name].to_pylist()]
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def json_value(value):
    """A value JSON can hold: non-finite floats as null, times as ISO strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, list):
        return [json_value(v) for v in value]
    return value


def render_csv(report: Report) -> str:
    """One CSV block per section, each after a `# section` line and separated by a blank line."""
    out = io.StringIO()
    for i, name in enumerate(section_titles(report)):
        table = report.tables[name]
        out.write(("\n" if i else "") + f"# {name}\n")
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(table.column_names)
        for row in table.to_pylist():
            writer.writerow([csv_value(v) for v in row.values()])
    return out.getvalue()


def csv_value(value):
    """A CSV cell: lists as JSON, null as empty."""
    value = json_value(value)
    if isinstance(value, list):
        return json.dumps(value)
    return "" if value is None else value
