"""--sql: the user's SQL over the views `stats` and `runs`, its result streamed in record batches.

The connection (`open_stats(..., user_sql=True)`) is what keeps a query to the
stats: DuckDB has no file path to read, file access off unless --allow-writes,
settings locked. Here, statements that would install or load an extension are
refused before DuckDB sees them, since with --allow-writes INSTALL could reach
the network.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from collections.abc import Iterator

import duckdb
import pyarrow as pa

from sr_batch import storage
from sr_batch.errors import ReportError
from sr_batch.reports.connection import StatsDB, first_line
from sr_batch.reports.html import html_page, html_table
from sr_batch.reports.text import csv_value, format_value, json_value

log = logging.getLogger(__name__)

SQL_HTML_ROWS = 1000  # an HTML page of a --sql result shows at most this many rows
# The kinds of statement --sql runs: all but LOAD (INSTALL, FORCE INSTALL, LOAD) and
# EXTENSION (parsed by an extension). Named one by one, so that a kind a later DuckDB
# adds is refused until someone looks at it.
_ALLOWED = {kind for name, kind in duckdb.StatementType.__members__.items() if name in (
    "SELECT", "EXPLAIN", "CREATE", "CREATE_FUNC", "INSERT", "UPDATE", "DELETE", "MERGE_INTO", "DROP",
    "ALTER", "ANALYZE", "VACUUM", "TRANSACTION", "PREPARE", "EXECUTE", "SET", "VARIABLE_SET",
    "PRAGMA", "CALL", "COPY", "COPY_DATABASE", "EXPORT", "ATTACH", "DETACH", "MULTI")}


def check_sql(db: StatsDB, sql: str) -> None:
    """ReportError for SQL that does not parse or that would install or load a DuckDB extension."""
    try:
        kinds = [statement.type for statement in db.con.extract_statements(sql)]
    except duckdb.Error as exc:
        raise ReportError(f"bad SQL: {first_line(exc)}") from None
    except ValueError:  # a kind of statement this duckdb module cannot name (UPDATE EXTENSIONS)
        raise ReportError("not allowed: a kind of statement sr-batch does not run") from None
    for kind in kinds:
        if kind == duckdb.StatementType.LOAD:
            raise ReportError("not allowed: INSTALL or LOAD of a DuckDB extension (the stats need none)")
        if kind not in _ALLOWED:
            raise ReportError(f"not allowed: a {kind.name} statement")


def stream_sql(db: StatsDB, sql: str, batch_rows: int = 10_000) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """Run SQL over the views `stats` and `runs`; the result streams in record batches.

    Any DuckDB error, at planning or while streaming, becomes a ReportError with
    DuckDB's first message line; a refused file access says it needs --allow-writes.
    """
    check_sql(db, sql)
    log.debug("--sql: running %s", sql)
    try:
        relation = db.con.sql(sql)
        if relation is None:  # a statement without a result (CREATE, SET, COPY, ...)
            return pa.schema([]), iter(())
        reader = relation.to_arrow_reader(batch_rows)
    except duckdb.Error as exc:
        raise _sql_error(db, exc) from None

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from reader
        except duckdb.Error as exc:
            raise _sql_error(db, exc) from None

    return reader.schema, batches()


def _sql_error(db: StatsDB, exc: duckdb.Error) -> ReportError:
    if isinstance(exc, duckdb.PermissionException) and not db.allow_writes:
        return ReportError(f"this SQL opens files, which needs --allow-writes: {first_line(exc)}")
    return ReportError(f"bad SQL: {first_line(exc)}")


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
                writer.writerow([csv_value(v) for v in row.values()])
            n += batch.num_rows
    elif fmt == "json":
        handle.write("[")
        for batch in batches:
            for row in batch.to_pylist():
                handle.write(("\n" if n == 0 else ",\n") +
                             json.dumps({k: json_value(v) for k, v in row.items()}, allow_nan=False))
                n += 1
        handle.write("\n]\n" if n else "]\n")
    elif fmt == "table":
        widths = None
        for batch in batches:
            rows = [[format_value(v)[:80] for v in row.values()] for row in batch.to_pylist()]
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
                f'{html_table(names, rows)}</section>')
        handle.write(html_page("sr-batch query", body))
    else:
        raise ReportError(f"unknown format {fmt!r}")
    return n


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
