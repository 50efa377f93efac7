"""The stats schema: its Markdown table (the one in docs/stats.md) has every column and the partition."""

from __future__ import annotations

import re

from sr_batch import stats


def test_schema_markdown_has_every_column_and_the_partition():
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \|", stats.schema_markdown(), flags=re.M)
    assert [name for name, _ in rows] == ["run_id", *(name for name, _, _ in stats.COLUMNS)]
    assert dict(rows)["finished_at"] == "timestamp[us, tz=UTC]"
