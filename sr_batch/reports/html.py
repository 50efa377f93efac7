"""The Report as one self-contained HTML page: inline CSS and SVG plots, crops as data: URIs."""

from __future__ import annotations

from html import escape

import pyarrow as pa

from sr_batch.reports.gallery import GalleryItem
from sr_batch.reports.queries import Histogram, Report
from sr_batch.reports.text import format_value, section_titles, title

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
    titles = section_titles(report)
    parts = [f'<p>Runs: {escape(", ".join(report.run_ids))}. Metric: '
             f'<code>{escape(report.metric)}</code>.</p>']
    summary = report.tables["summary"]
    parts.append(f'<section id="summary"><h2>{escape(titles["summary"])}</h2>'
                 f'{_html_transposed(summary) if summary.num_rows <= 6 else html_table(summary.column_names, summary.to_pylist())}'
                 f'</section>')
    plots = "".join(_svg_histogram(h) for h in report.histograms) or "<p>No finite values.</p>"
    parts.append(f'<section id="histograms"><h2>Metric histograms (ok images)</h2>'
                 f'<div class="plots">{plots}</div></section>')
    x_name, y_name = report.scatter_axes
    parts.append(f'<section id="scatter"><h2>{escape(y_name)} against {escape(x_name)}</h2>'
                 f'{_svg_scatter(report.scatter, x_name, y_name)}</section>')
    parts.append(f'<section id="gallery"><h2>Worst and best images by {escape(report.metric)}</h2>'
                 f'{_html_gallery(report.gallery)}</section>')
    worst = report.tables["worst"]
    parts.append(f'<section id="worst"><h2>{escape(titles["worst"])}</h2>'
                 f'{html_table(worst.column_names, worst.to_pylist())}</section>')
    failures = report.tables["failures"]
    parts.append(f'<section id="failures"><h2>{escape(titles["failures"])}</h2>'
                 f'{html_table(failures.column_names, failures.to_pylist()) if failures.num_rows else "<p>No failures.</p>"}'
                 f'</section>')
    models = report.tables["models"]
    parts.append(f'<section id="models"><h2>{escape(titles["models"])}</h2>'
                 f'{html_table(models.column_names, models.to_pylist()) if models.num_rows else "<p>None.</p>"}'
                 f'</section>')
    if report.comparison:
        c = report.comparison
        hist = _svg_histogram(c.histogram) if c.histogram else ""
        worse = report.tables["compare_worse"]
        parts.append(f'<section id="compare"><h2>{escape(titles["compare"])}</h2>'
                     f'{_html_transposed(report.tables["compare"])}<div class="plots">{hist}</div>'
                     f'<h3>{escape(titles["compare_worse"])}</h3>'
                     f'{html_table(worse.column_names, worse.to_pylist()) if worse.num_rows else "<p>None.</p>"}'
                     f'</section>')
    return html_page(title(report), "".join(parts))


def html_page(heading: str, body: str) -> str:
    """A whole page: no scripts, and a Content-Security-Policy that fetches nothing."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
            f'img-src data:; style-src \'unsafe-inline\'">'
            f'<title>{escape(heading)}</title><style>{_CSS}</style></head>'
            f'<body><h1>{escape(heading)}</h1>{body}</body></html>\n')


def _html_cell(value) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    text = escape(format_value(value))
    return f'<td class="n">{text}</td>' if numeric else f"<td>{text}</td>"


def html_table(names: list[str], rows: list[dict]) -> str:
    """A table with a header row; numbers right-aligned."""
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    body = "".join("<tr>" + "".join(_html_cell(r[n]) for n in names) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_transposed(table: pa.Table) -> str:
    rows = "".join(f"<tr><th>{escape(col)}</th>" +
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
        facts = "<br>".join(f"{escape(k)}: {escape(format_value(row[k]))}" for k in metric_cols)
        cells = "".join(
            f'<td><div>{escape(label)}</div>'
            + (f'<img class="crop" alt="{escape(label)} crop" src="{uri}">' if uri
               else '<div class="na">not readable</div>') + "</td>"
            for label, uri in item.crops.items())
        rows.append(f'<tr class="{item.end}"><td><b>{item.end} #{row["rank"]}</b><br>'
                    f'{escape(str(row["image_id"]))}<br>{facts}'
                    f'<div class="uri">{escape(str(row["output_uri"] or ""))}</div></td>{cells}</tr>')
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
            f'{escape(hist.title)} (n = {hist.n:,})</text>{bars}'
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
    labels = (f'<text x="{_PAD}" y="{h - _PAD + 14}" font-size="11">{format_value(x0)}</text>'
              f'<text x="{w - _PAD}" y="{h - _PAD + 14}" font-size="11" text-anchor="end">{format_value(x1)}</text>'
              f'<text x="{_PAD - 4}" y="{h - _PAD}" font-size="11" text-anchor="end">{format_value(y0)}</text>'
              f'<text x="{_PAD - 4}" y="{_PAD + 8}" font-size="11" text-anchor="end">{format_value(y1)}</text>'
              f'<text x="4" y="{_PAD - 8}" font-size="11">{escape(y_label)}</text>')
    if x_label:
        labels += f'<text x="{w / 2}" y="{h - 8}" font-size="11" text-anchor="middle">{escape(x_label)}</text>'
    return lines + labels
