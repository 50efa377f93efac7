"""The stats schema: its Markdown table (the one in docs/stats.md) has every column and the partition."""

from __future__ import annotations

import re

from sr_batch import stats


def test_schema_markdown_has_every_column_and_the_partition():
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \|", stats.schema_markdown(), flags=re.M)
    assert [name for name, _ in rows] == ["run_id", *(name for name, _, _ in stats.COLUMNS)]
    assert dict(rows)["finished_at"] == "timestamp[us, tz=UTC]"


def test_rows_waiting_past_the_flush_interval_are_flushed_while_no_batch_comes(tmp_path):
    """A batch arrives, then nothing (the next images are still in the model): its rows reach
    OUT/stats within --stats-flush-s all the same, by the writer's own timer, not at the
    next batch or at the end of the run."""
    import time

    from sr_batch.config import JobConfig
    from sr_batch.layout import OutLayout
    from sr_batch.bookkeeping import StatsWriter

    out = tmp_path / "out"
    config = JobConfig(sources=("x",), output=str(out), stats_flush_s=2.0, progress_s=3600)
    batch = stats.make_table([{"image_id": "a", "source_uri": "file:///a.png", "status": "ok"}])
    writer = StatsWriter(OutLayout.of(str(out)), "r1", 3, config, echo=lambda line: None)
    try:
        writer.add(batch)  # within 2 s of the start: it waits, as rows do between flushes
        assert not list(out.glob("stats/run_id=r1/part-*.parquet"))
        deadline = time.monotonic() + 30  # a guard against a hang, not a timing
        while not list(out.glob("stats/run_id=r1/part-*.parquet")):
            assert time.monotonic() < deadline, "the waiting row was never flushed"
            time.sleep(0.05)
        assert len(stats.read_stats(str(out), "r1")) == 1
    finally:
        writer.close()
    assert len(stats.read_stats(str(out), "r1")) == 1  # closing added nothing twice
