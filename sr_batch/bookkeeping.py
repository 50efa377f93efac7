"""The driver's bookkeeping of a run's rows: stats batches in, Parquet parts out (a part at
least every --stats-flush-s seconds and every FLUSH_ROWS rows), progress lines and one line per
failed image on the way; at the end, the temporary files an interrupted writer left behind.
The run record is run_record.py's.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from sr_batch import stats, storage
from sr_batch.config import JobConfig
from sr_batch.layout import OutLayout

log = logging.getLogger(__name__)

# Flush stats to a new Parquet part at least every FLUSH_ROWS rows (and every
# --stats-flush-s seconds), so a killed driver loses little bookkeeping; the
# images themselves are already written and a rerun redoes only the unrecorded.
FLUSH_ROWS = 5000

# The least the stats timer waits between looks, whatever --stats-flush-s: no busy loop.
MIN_FLUSH_WAIT_S = 0.05

# Failed images listed one line each before the rest are only counted.
MAX_FAILURE_LINES = 20


class StatsWriter:
    """Collects stats batches, flushes Parquet parts, prints progress and failures.

    Rows are flushed when a batch comes and, by a thread of their own, when they have waited
    --stats-flush-s while no batch came: a killed driver loses at most that much bookkeeping."""

    def __init__(self, layout: OutLayout, run_id: str, total: int, config: JobConfig,
                 echo: Callable[[str], None], lock=None) -> None:
        self.lock = lock
        self.layout, self.run_id, self.total = layout, run_id, total
        self.progress_s, self.flush_s = config.progress_s, config.stats_flush_s
        self.retries, self.echo = config.retries, echo
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.rows = 0
        self.seq = 0
        self.out_pixels = 0
        self.max_setup_s: float | None = None
        self.counts: dict[str, int] = {}
        self.failures: list[dict] = []
        self.began = self.last_flush = self.last_progress = time.perf_counter()
        self._mutex = threading.Lock()  # pending rows and part numbers: the run's and the timer's
        self._stopped = threading.Event()
        self._failure: Exception | None = None  # what the timer's flush raised, for the run to raise
        self._timer = threading.Thread(target=self._flush_on_time, name="stats-flush", daemon=True)
        self._timer.start()

    def _flush_on_time(self) -> None:
        while not self._stopped.wait(max(self.flush_s, MIN_FLUSH_WAIT_S)):
            with self._mutex:
                if not self.pending or time.perf_counter() - self.last_flush < self.flush_s:
                    continue
                try:
                    self.flush()
                except Exception as exc:  # noqa: BLE001 - raised by the run at its next batch
                    self._failure = exc
                    return

    def add(self, batch: pa.Table) -> None:
        if self._failure is not None:
            raise self._failure
        with self._mutex:
            self._add(batch)

    def _add(self, batch: pa.Table) -> None:
        self.pending.append(batch)
        self.pending_rows += batch.num_rows
        self.rows += batch.num_rows
        for row in batch.select(["status", "source_uri", "error_type", "error_message",
                                 "out_width", "out_height", "setup_s"]).to_pylist():
            self.counts[row["status"]] = self.counts.get(row["status"], 0) + 1
            if row["setup_s"] is not None:
                self.max_setup_s = max(self.max_setup_s or 0.0, row["setup_s"])
            if row["status"] == stats.STATUS_OK:
                self.out_pixels += (row["out_width"] or 0) * (row["out_height"] or 0)
            elif row["status"] == stats.STATUS_FAILED:
                self._report_failure(row)
        now = time.perf_counter()
        if self.pending_rows >= FLUSH_ROWS or now - self.last_flush >= self.flush_s:
            self.flush()
        if now - self.last_progress >= self.progress_s:
            self.last_progress = now
            self.echo(self.progress_line(now))
            if self.lock is not None:
                self.lock.refresh()

    def _report_failure(self, row: dict) -> None:
        """One line for each of the first MAX_FAILURE_LINES failures (kept for the result);
        the rest are counted, so a run of a million bad files holds no million rows."""
        failed = self.counts.get(stats.STATUS_FAILED, 0)
        if failed <= MAX_FAILURE_LINES:
            self.echo(f"failed: {storage.display(row['source_uri'])}: {row['error_type']}: "
                      f"{storage.display(row['error_message'] or '')}")
            self.failures.append(row)
        elif failed == MAX_FAILURE_LINES + 1:
            self.echo("further failures are only counted; query the stats for all of them")

    def progress_line(self, now: float) -> str:
        elapsed = now - self.began
        rate = self.rows / elapsed if elapsed else 0.0
        eta = (self.total - self.rows) / rate if rate else float("nan")
        return (f"progress: {self.rows}/{self.total} images ({100 * self.rows / max(1, self.total):.0f}%), "
                f"{rate:.2f} img/s, {self.out_pixels / 1e6 / elapsed:.2f} MP/s out, "
                f"{self.counts.get('failed', 0)} failed, ETA {eta:.0f} s")

    def flush(self) -> None:
        if self.pending:
            stats.write_part(self.layout, self.run_id, pa.concat_tables(self.pending), self.seq,
                             self.retries)
            self.seq += 1
        self.pending, self.pending_rows = [], 0
        self.last_flush = time.perf_counter()

    def _stop_timer(self) -> None:
        self._stopped.set()
        self._timer.join()

    def close(self) -> None:
        self._stop_timer()
        if self._failure is not None:
            raise self._failure
        self.flush()

    def close_quietly(self) -> None:
        """Flush what arrived before a run stopped; a failing flush must not hide why it stopped."""
        self._stop_timer()
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001
            log.warning("could not flush the last stats rows: %s", storage.display(str(exc)))
            log.debug("the flush failed here", exc_info=True)


def remove_orphan_temps(layout: OutLayout, listed: pa.Table, started: float,
                        echo: Callable[[str], None]) -> None:
    """Delete the hidden temporary files an interrupted run left beside this run's outputs.

    Runs once every write of this run is done; a temporary file last touched
    before this run started belongs to a writer that was killed mid-write.
    """
    uris = pc.list_flatten(listed.column("output_uris"))
    directories = pc.unique(pc.replace_substring_regex(uris, r"/[^/]*$", "")).to_pylist()
    stats_fs, stats_path = storage.get_fs(layout.stats)
    if storage.is_local(stats_fs) and os.path.isdir(stats_path):
        directories += [entry.path for entry in os.scandir(stats_path) if entry.is_dir()]
    removed = storage.remove_orphan_temps(directories, older_than=started)
    if removed:
        echo(f"removed {removed} temporary file(s) left by an interrupted run")
