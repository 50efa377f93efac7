"""Fixtures of the report tests: OUT with the known stats, and a connection to it."""

from __future__ import annotations

import pytest

from sr_batch import reports

from reports.known_stats import make_stats


@pytest.fixture
def out(tmp_path) -> str:
    root = str(tmp_path / "out")
    make_stats(root)
    return root


@pytest.fixture
def db(out):
    return reports.open_stats(out)
