"""A DuckDB connection over OUT's stats: views `stats` and `runs`, locked down before any query.

Local stats are read by DuckDB's own Parquet reader; on any other filesystem
(s3://, gs://, memory://) through a pyarrow dataset on the same fsspec
filesystem, credentials and endpoint as the job, which DuckDB scans lazily with
projection and filter pushdown (no httpfs extension to download or configure).

Every connection is opened with extensions off (no auto-install, no auto-load,
no community extensions), then `enable_external_access = false` and
`lock_configuration = true`, so no statement can open a file, reach the network
or undo the settings; it has no temp directory (DuckDB's `.tmp` would stay open to
every query), so a query larger than memory fails rather than spill. The report's own queries may still read the stats files
(DuckDB's `allowed_paths`); a connection for the user's SQL (`user_sql`) gets
no path at all: it sees the stats as pyarrow datasets, because `allowed_paths`
would also let `COPY ... TO` overwrite those files. `allow_writes` leaves file
access on for users who want `COPY ... TO`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from sr_batch import stats, storage
from sr_batch.errors import ReportError

_RUN_ID_TIME = re.compile(r"^(\d{8}T\d{6}Z)")

# Set when the connection opens; a query cannot change them (lock_configuration),
# except the resource knobs a user may need on a shared machine (allowed_configs).
_SETTINGS = {"autoinstall_known_extensions": False, "autoload_known_extensions": False,
             "allow_community_extensions": False}
_USER_SETTINGS = ["threads", "memory_limit"]


@dataclass(frozen=True)
class RunInfo:
    """One run: its stats files and its run record (empty if the run has not finished)."""

    run_id: str
    files: tuple[str, ...]
    record: dict

    @property
    def started_at(self) -> dt.datetime | None:
        started = parse_time(self.record.get("started_at"))
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
    _native: bool = field(default=True, repr=False)
    """Whether views may use DuckDB's Parquet reader on the stats paths (local files only)."""
    allow_writes: bool = False
    """Whether DuckDB's own file access is on (`COPY ... TO`)."""

    def register(self, name: str, run_ids: list[str]) -> None:
        """(Re)define view `name` over the stats files of `run_ids` only: runs are pruned by file.

        Local files go to DuckDB's own Parquet reader (2-5x faster, and less memory,
        than scanning a pyarrow dataset; see bench/bench_report.py); other filesystems,
        and any connection that runs the user's SQL, go through a pyarrow dataset on
        the fsspec filesystem, which DuckDB scans lazily. Either way, columns no file
        has yet read as typed nulls.
        """
        files = [f for run_id in run_ids for f in self.runs[run_id].files]
        if self._native:
            self._register_parquet(name, files)
        else:
            self._register_dataset(name, files)

    def _register_parquet(self, name: str, files: list[str]) -> None:
        scan = (f"read_parquet([{', '.join(sql_literal(f) for f in files)}], hive_partitioning = true, "
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
            raise ReportError(first_line(exc)) from None

    def table(self, sql: str) -> pa.Table:
        try:
            return self.con.sql(sql).to_arrow_table()
        except duckdb.Error as exc:
            raise ReportError(first_line(exc)) from None


_DATASET_SCHEMA = pa.schema([*stats.SCHEMA, ("run_id", pa.string())])
_DUCKDB_TYPES = {"string": "VARCHAR", "int32": "INTEGER", "int64": "BIGINT", "double": "DOUBLE",
                 "timestamp[us, tz=UTC]": "TIMESTAMPTZ"}
_RUNS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("seq", pa.int32()), ("started_at", pa.timestamp("us", tz="UTC")),
    ("finished_at", pa.timestamp("us", tz="UTC")), ("wall_s", pa.float64()),
    ("model", pa.string()), ("scale", pa.int32()), ("images_per_s", pa.float64()),
    ("output_megapixels_per_s", pa.float64())])


def open_stats(output: str, *, user_sql: bool = False, allow_writes: bool = False) -> StatsDB:
    """Connect DuckDB to OUT/stats (view `stats`, all runs) and OUT/runs (view `runs`).

    user_sql: the connection will run SQL from the user, so DuckDB is given no
    file path (the stats are pyarrow datasets) and can read nothing else.
    allow_writes: leave DuckDB's own file access on (`COPY ... TO`, `read_csv`, `ATTACH`).
    """
    output = storage.to_uri(output)
    fs, stats_path, parts = stats.part_files(output)
    files: dict[str, list[str]] = {}
    for path in parts:
        run_dir = path[len(stats_path) + 1:].split("/", 1)[0]
        files.setdefault(run_dir[len("run_id="):], []).append(path)
    if not files:
        raise ReportError(f"no stats under {storage.join(output, 'stats')} (run `sr-batch run` first)")
    records = _read_run_records(output)
    infos = [RunInfo(run_id, tuple(paths), records.get(run_id, {})) for run_id, paths in files.items()]
    oldest = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    infos.sort(key=lambda info: (info.started_at or oldest, info.run_id))

    all_files = [f for info in infos for f in info.files]
    # DuckDB's reader takes plain paths only: a glob character would widen what it opens.
    native = (storage.is_local(fs) and (allow_writes or not user_sql)
              and not any(c in f for f in all_files for c in "*?[{"))
    con = _connect(allowed_paths=all_files if native and not allow_writes else [],
                   allow_writes=allow_writes)
    db = StatsDB(output, con, {info.run_id: info for info in infos}, fs, stats_path, native,
                 allow_writes)
    db.register("stats", list(db.runs))
    con.register("runs", _runs_table(infos))
    return db


def _connect(allowed_paths: list[str], allow_writes: bool) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB without extensions, whose file access and settings are then locked."""
    con = duckdb.connect(config=dict(_SETTINGS))
    if allowed_paths:
        con.execute("SET allowed_paths = ?", [allowed_paths])
    if not allow_writes:
        # DuckDB lets every query reach its temp directory (`.tmp` under the working directory,
        # which a link could send anywhere), even with external access off: no temp directory,
        # so the query spills nothing and can read or write no file there.
        con.execute("SET temp_directory = ''")
        con.execute("SET enable_external_access = false")
    con.execute("SET allowed_configs = ?", [_USER_SETTINGS])
    con.execute("SET lock_configuration = true")
    return con


@contextlib.contextmanager
def interrupt_on_sigint(db: StatsDB) -> Iterator[None]:
    """Inside, Ctrl-C interrupts the running DuckDB query at once and raises KeyboardInterrupt.

    Python's own handler lets DuckDB run the query to its end first (minutes on a
    big scan); this one calls `interrupt()`. The previous handler is restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    interrupted = False

    def on_sigint(signum, frame):
        nonlocal interrupted
        interrupted = True
        db.con.interrupt()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    except BaseException:
        # DuckDB reports the interruption as its own error (or a RuntimeError), which
        # the callers may have wrapped in a ReportError: it was the user's Ctrl-C.
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)


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
            "run_id": info.run_id, "seq": seq, "started_at": parse_time(r.get("started_at")),
            "finished_at": parse_time(r.get("finished_at")), "wall_s": r.get("wall_s"),
            "model": model.get("name") if isinstance(model, dict) else model,
            "scale": (r.get("config") or {}).get("scale"), "images_per_s": r.get("images_per_s"),
            "output_megapixels_per_s": r.get("output_megapixels_per_s")})
    return pa.Table.from_pylist(rows, schema=_RUNS_SCHEMA)


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (DuckDB's carry a multi-line context)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def sql_literal(value: str) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def parse_time(value) -> dt.datetime | None:
    """An ISO time from a run record, in UTC (naive means UTC); None if absent or malformed."""
    try:
        parsed = dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return parsed.replace(tzinfo=dt.timezone.utc) if parsed.tzinfo is None else parsed.astimezone(dt.timezone.utc)
