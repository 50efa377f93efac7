"""--sql: the user's SQL over `stats` and `runs`, and what it may not do."""

from __future__ import annotations

import csv
import glob
import io
import json
import queue
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from sr_batch import cli

from conftest import stop_process
from reports.known_stats import RUN_A, RUN_B, make_stats


def test_sql_over_all_runs_with_run_id(out, capsys):
    code = cli.main(["report", out, "--format", "csv", "--sql",
                     "SELECT run_id, count(*) AS n FROM stats GROUP BY run_id ORDER BY run_id"])
    assert code == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows == [["run_id", "n"], [RUN_A, "12"], [RUN_B, "11"]]


def test_bad_sql_is_one_clear_line(out, capsys):
    code = cli.main(["report", out, "--sql", "SELEC image_id FROM stats"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert err.count("\n") == 1 and err.startswith("sr-batch: error: bad SQL: Parser Error")
    code = cli.main(["report", out, "--sql", "SELECT no_such_column FROM stats"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and err.count("\n") == 1 and "no_such_column" in err


# --- what a query may not do ----------------------------------------------------------------


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sr-batch: error: "), err
    return err


@pytest.mark.parametrize("statement", [
    "SELECT * FROM read_text('{secret}')",
    "SELECT * FROM read_csv('/etc/passwd', sep = ':')",
    "SELECT * FROM read_parquet('{part}')",
    "COPY (SELECT 1 AS x) TO '{tmp}/copy.csv'",
    # DuckDB's allowed_paths would let this overwrite a stats part: --sql gets no path at all.
    "COPY (SELECT 1 AS x) TO '{part}' (FORMAT csv, USE_TMP_FILE false)",
    "ATTACH '{tmp}/attached.duckdb' AS other",
])
def test_sql_opens_no_file_without_allow_writes(out, tmp_path, capsys, statement):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the report\n")
    (part,) = glob.glob(f"{out}/stats/run_id={RUN_B}/*.parquet")
    before = open(part, "rb").read()
    sql = statement.format(secret=secret, part=part, tmp=tmp_path)
    assert cli.main(["report", out, "--sql", sql]) == cli.EXIT_USAGE
    err = _one_error_line(capsys)
    assert "needs --allow-writes" in err and "not for the report" not in err
    assert capsys.readouterr().out == ""
    assert not (tmp_path / "copy.csv").exists() and not (tmp_path / "attached.duckdb").exists()
    assert open(part, "rb").read() == before


@pytest.mark.parametrize("statement", [
    "COPY (SELECT 1 AS x) TO '.tmp/x.csv'",
    "SELECT * FROM read_csv('.tmp/planted.csv')",
    "SELECT * FROM glob('.tmp/*')",
])
def test_sql_cannot_reach_duckdbs_temp_directory(out, tmp_path, capsys, monkeypatch, statement):
    """DuckDB's default temp directory, `.tmp` where the command runs (here a link to another
    folder), is no door to files without --allow-writes: nothing is written or read there."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "planted.csv").write_text("secret\nnot for the report\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / ".tmp").symlink_to(elsewhere)
    monkeypatch.chdir(cwd)

    assert cli.main(["report", out, "--sql", statement]) == cli.EXIT_USAGE
    err = _one_error_line(capsys)
    assert "needs --allow-writes" in err and "not for the report" not in err, err
    assert capsys.readouterr().out == ""
    assert sorted(p.name for p in elsewhere.iterdir()) == ["planted.csv"]


def test_sql_table_output_escapes_control_characters(out, capsys):
    """ESC and CR in a value (a file name) print escaped in the table, as a run's lines print
    them; JSON escapes them by its own rules."""
    sql = "SELECT 'a' || chr(27) || '[31mred' || chr(13) || 'b' || chr(10) || 'c' AS name"
    assert cli.main(["report", out, "--sql", sql]) == 0
    printed = capsys.readouterr().out
    assert printed == "name\n" + "a\\x1b[31mred\\rb\\nc\n", repr(printed)
    assert cli.main(["report", out, "--format", "json", "--sql", sql]) == 0
    assert json.loads(capsys.readouterr().out) == [{"name": "a\x1b[31mred\rb\nc"}]


def test_allow_writes_lets_copy_write_a_file(out, tmp_path, capsys):
    target = tmp_path / "counts.csv"
    code = cli.main(["report", out, "--allow-writes", "--sql",
                     "COPY (SELECT run_id, count(*) AS n FROM stats GROUP BY run_id ORDER BY run_id) "
                     f"TO '{target}' (HEADER)"])
    assert code == 0, capsys.readouterr().err
    assert list(csv.reader(target.open())) == [["run_id", "n"], [RUN_A, "12"], [RUN_B, "11"]]


@pytest.mark.parametrize("allow_writes", [False, True])
@pytest.mark.parametrize("statement", ["INSTALL httpfs", "LOAD httpfs", "FORCE INSTALL spatial",
                                       "UPDATE EXTENSIONS", "SELECT 1; INSTALL httpfs"])
def test_sql_cannot_install_or_load_extensions(out, capsys, statement, allow_writes):
    args = ["report", out, "--sql", statement] + (["--allow-writes"] if allow_writes else [])
    assert cli.main(args) == cli.EXIT_USAGE
    assert "not allowed" in _one_error_line(capsys)


@pytest.mark.parametrize("allow_writes", [False, True])
def test_settings_are_locked_but_threads(out, capsys, allow_writes):
    extra = ["--allow-writes"] if allow_writes else []
    assert cli.main(["report", out, "--format", "json", *extra, "--sql",
                     "SELECT current_setting('enable_external_access') AS external, "
                     "current_setting('autoinstall_known_extensions') AS autoinstall, "
                     "current_setting('autoload_known_extensions') AS autoload, "
                     "current_setting('lock_configuration') AS locked"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row == {"external": allow_writes, "autoinstall": False, "autoload": False, "locked": True}
    for setting in ("enable_external_access = true", "autoinstall_known_extensions = true",
                    "lock_configuration = false"):
        assert cli.main(["report", out, *extra, "--sql", f"SET {setting}"]) == cli.EXIT_USAGE
        assert "locked" in _one_error_line(capsys)
    # A resource knob stays the user's (allowed_configs).
    assert cli.main(["report", out, "--sql", "SET threads = 1; SELECT count(*) AS n FROM stats"]) == 0
    assert capsys.readouterr().out.split() == ["n", "23"]


def test_sql_over_memory_filesystem_is_locked_too(capsys, tmp_path):
    output = f"memory://report-sql-{uuid.uuid4().hex[:8]}"
    make_stats(output)
    assert cli.main(["report", output, "--format", "csv", "--sql",
                     "SELECT count(*) AS n, count(DISTINCT r.run_id) AS runs FROM stats s "
                     "JOIN runs r USING (run_id)"]) == 0
    assert list(csv.reader(io.StringIO(capsys.readouterr().out))) == [["n", "runs"], ["23", "2"]]
    assert cli.main(["report", output, "--sql", "SELECT * FROM read_csv('/etc/passwd')"]) == cli.EXIT_USAGE
    assert "needs --allow-writes" in _one_error_line(capsys)


def test_allow_writes_is_for_sql_only(out, capsys):
    assert cli.main(["report", out, "--allow-writes"]) == cli.EXIT_USAGE
    assert "--allow-writes" in _one_error_line(capsys)


# --- the process: Ctrl-C and a closed pipe ------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
# Minutes of work for DuckDB: 10^13 pairs, nothing to push down.
LONG_QUERY = ("SELECT count(*) AS n FROM range(100000000) a, range(100000) b "
              "WHERE (a.range + b.range) % 7 = 3")


def _sr_batch(*args: str, **popen) -> subprocess.Popen:
    # Its own session, so that stop_process can end its process group and nothing else.
    return subprocess.Popen([sys.executable, "-m", "sr_batch.cli", *args], cwd=REPO,
                            start_new_session=True, **popen)


def test_ctrl_c_interrupts_a_long_query(out):
    # -v logs "--sql: running" once the query is about to start, with the Ctrl-C handler in place.
    proc = _sr_batch("-v", "report", out, "--sql", LONG_QUERY, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def read_stderr():
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read_stderr, daemon=True).start()
    try:
        stderr = []
        while not any("--sql: running" in line for line in stderr):
            line = lines.get(timeout=60)
            assert line is not None, f"exited {proc.wait()} before the query ran: {''.join(stderr)}"
            stderr.append(line)
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)  # the query alone runs for minutes
        except subprocess.TimeoutExpired:
            pytest.fail("sr-batch report --sql was still running 30 s after SIGINT")
        while (line := lines.get(timeout=10)) is not None:
            stderr.append(line)
        assert "Traceback" not in "".join(stderr)
        assert stderr[-1] == "sr-batch: interrupted\n"
        assert code == 130, "".join(stderr)  # 128 + SIGINT
    finally:
        stop_process(proc, signal.SIGKILL, timeout_s=10)


def test_closed_pipe_ends_quietly(out):
    # 2 M rows (~20 MB) cannot fit in a pipe's buffer: writes go on after `head -1` has exited.
    proc = _sr_batch("report", out, "--sql", "SELECT range AS i FROM range(2000000)",
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-1"], stdin=proc.stdout, stdout=subprocess.PIPE)
    proc.stdout.close()  # head holds the only reading end
    try:
        first, _ = head.communicate(timeout=120)
        code = proc.wait(timeout=120)
        stderr = proc.stderr.read().decode()
    finally:
        stop_process(proc, signal.SIGKILL, timeout_s=10)
        stop_process(head, signal.SIGKILL, timeout_s=10)
    assert first == b"i\n"
    assert stderr == ""
    assert code == 141  # 128 + SIGPIPE, as `yes | head -1` leaves in $PIPESTATUS
