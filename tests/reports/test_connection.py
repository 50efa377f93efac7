"""The DuckDB connection: runs in order, local and fsspec stats, the locked-down settings."""

from __future__ import annotations

import uuid

import duckdb
import pytest

from sr_batch import reports

from reports.known_stats import RUN_A, RUN_B, make_stats


def test_runs_latest_previous_all(db):
    assert list(db.runs) == [RUN_A, RUN_B]
    assert reports.build_report(db).run_ids == [RUN_B]  # default: latest
    assert db.select_runs("previous") == [RUN_A]
    summary = reports.build_report(db, run="all").tables["summary"].to_pylist()
    assert [r["run_id"] for r in summary] == [RUN_A, RUN_B]
    run_b = summary[1]
    assert (run_b["images"], run_b["ok"], run_b["failed"]) == (11, 10, 1)
    # No run record: the wall time is the span of finished_at (0..9 s).
    assert run_b["wall_s"] == pytest.approx(9.0)
    assert run_b["images_per_s"] == pytest.approx(11 / 9.0)


def test_same_answers_through_memory_filesystem(tmp_path):
    output = f"memory://report-test-{uuid.uuid4().hex[:8]}"
    make_stats(output)
    made = reports.build_report(reports.open_stats(output), run="all", metric="psnr_y_consistency")
    assert [r["images"] for r in made.tables["summary"].to_pylist()] == [12, 11]


@pytest.mark.parametrize("where", ["local", "memory"])
@pytest.mark.parametrize("user_sql", [False, True], ids=["report", "user_sql"])
def test_every_connection_is_locked_down(tmp_path, where, user_sql):
    output = str(tmp_path / "out") if where == "local" else f"memory://report-lock-{uuid.uuid4().hex[:8]}"
    make_stats(output)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the report\n")
    db = reports.open_stats(output, user_sql=user_sql)
    settings = db.rows("SELECT current_setting('enable_external_access') AS external, "
                       "current_setting('autoinstall_known_extensions') AS autoinstall, "
                       "current_setting('lock_configuration') AS locked")
    assert settings == [{"external": False, "autoinstall": False, "locked": True}]
    with pytest.raises(duckdb.PermissionException):
        db.con.sql(f"SELECT * FROM read_text('{secret}')").fetchall()
    with pytest.raises(duckdb.InvalidInputException, match="locked"):
        db.con.execute("SET enable_external_access = true")
    # Views made after the lock (the report's `sel`, `cmp`) still read the stats.
    made = reports.build_report(db, run="all", metric="psnr_y_consistency",
                                compare_models=("residual", "subpixel"))
    assert [r["images"] for r in made.tables["summary"].to_pylist()] == [12, 11]
    assert made.tables["compare"].column("common").to_pylist() == [10]
