"""Nightly runs on a real `ray start --head` (127.0.0.1, token auth on) and a driver killed with -9."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from sr_batch import stats

from conftest import png_bytes, scene, silent_server, stop_process


def sr_batch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "sr_batch.cli", *args]


def run_cli(args, env, timeout=300):
    return subprocess.run(sr_batch_cmd(*args), env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=Path(__file__).resolve().parents[1])


def make_folder(root: Path, count: int, start: int = 0, size: int = 24) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        (root / f"img{i:03d}.png").write_bytes(png_bytes(scene(size, size + i % 5, seed=i)))


def ok_rows_by_image(out: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in stats.read_stats(str(out)).to_pylist():
        if row["status"] == "ok":
            counts[row["source_uri"]] = counts.get(row["source_uri"], 0) + 1
    return counts


@pytest.mark.slow
def test_nightly_twice_then_one_new_image(ray_head, tmp_path):
    _, url, env = ray_head
    src, out = tmp_path / "in", tmp_path / "out"
    make_folder(src, 3)
    args = ["nightly", str(src), "--output", str(out), "--address", url, "--model", "bicubic"]

    first = run_cli(args, env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "3 new or changed" in first.stderr and "job SUCCEEDED" in first.stderr
    assert "  | run " in first.stderr  # the job's own log lines were streamed
    run_ids = {r["run_id"] for r in stats.read_stats(str(out)).to_pylist()}
    assert len(run_ids) == 1
    assert ok_rows_by_image(out) == {f"file://{src}/img{i:03d}.png": 1 for i in range(3)}

    second = run_cli(args, env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "0 new or changed" in second.stderr and "no job submitted" in second.stderr
    assert {r["run_id"] for r in stats.read_stats(str(out)).to_pylist()} == run_ids

    make_folder(src, 1, start=3)
    third = run_cli(args, env)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "1 new or changed" in third.stderr
    rows = stats.read_stats(str(out)).to_pylist()
    new_run = {r["run_id"] for r in rows} - run_ids
    assert len(new_run) == 1
    new_rows = [r for r in rows if r["run_id"] in new_run]
    assert [(Path(r["source_uri"]).name, r["status"]) for r in new_rows] == [("img003.png", "ok")]
    assert set(ok_rows_by_image(out).values()) == {1} and len(ok_rows_by_image(out)) == 4
    assert not (out / "nightly.lock").exists()  # released


@pytest.mark.slow
def test_nightly_without_the_token_fails_in_one_line(ray_head, tmp_path):
    _, url, env = ray_head
    make_folder(tmp_path / "in", 1)
    bad_env = {**env, "HOME": str(tmp_path), "RAY_AUTH_TOKEN": "not-the-cluster-token"}
    proc = run_cli(["nightly", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                    "--address", url, "--model", "bicubic"], bad_env, timeout=120)
    assert proc.returncode == 3
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("sr-batch: error:") and "token" in last.lower()
    assert "Traceback" not in proc.stderr
    assert "not-the-cluster-token" not in proc.stderr  # a token is never echoed
    assert not (tmp_path / "out" / "nightly.lock").exists()


@pytest.mark.slow
def test_overlapping_nightly_is_refused_by_the_lock(ray_head, tmp_path):
    from sr_batch.lock import OutputLock

    _, url, env = ray_head
    make_folder(tmp_path / "in", 1)
    out = tmp_path / "out"
    with OutputLock(f"file://{out}/nightly.lock", stale_s=3600, purpose="another nightly"):
        proc = run_cli(["nightly", str(tmp_path / "in"), "--output", str(out), "--address", url,
                        "--model", "bicubic"], env, timeout=120)
    assert proc.returncode == 3
    assert "held by another nightly" in proc.stderr.strip().splitlines()[-1]
    assert not (out / "stats").exists()


@pytest.mark.slow
def test_driver_killed_with_sigkill_then_rerun(ray_head, tmp_path):
    """kill -9 of the driver mid-run, then the same command: exactly one ok row per image."""
    gcs, _, env = ray_head
    src, out = tmp_path / "in", tmp_path / "out"
    make_folder(src, 40, size=48)
    args = ["run", str(src), "--output", str(out), "--address", gcs, "--images-per-call", "1",
            "--stats-flush-s", "0.001", "--tile-size", "32"]
    env = {**env, "RAY_AUTH_MODE": "token"}
    proc = subprocess.Popen(sr_batch_cmd(*args), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("stats/*/part-*.parquet")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no stats were flushed in time"
            time.sleep(0.1)
    finally:
        stop_process(proc, signal.SIGKILL, timeout_s=10)
    done_before = sum(ok_rows_by_image(out).values())
    assert 0 < done_before < 40, done_before  # killed mid-run

    rerun = run_cli(args, env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    counts = ok_rows_by_image(out)
    assert len(counts) == 40 and set(counts.values()) == {1}
    assert not [p for p in out.rglob("*") if p.name.startswith(".") and p.is_file()]
    for path in (out / "images").rglob("*.png"):
        with Image.open(path) as image:
            image.load()
    skipped = [r for r in stats.read_stats(str(out)).to_pylist() if r["status"] == "skipped"]
    assert len(skipped) == done_before


# --- a Jobs API that never answers ---------------------------------------------------




def plain_env(home: Path) -> dict[str, str]:
    """This environment without Ray's settings, and a HOME with no cluster token."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "HOME": str(home)}


@pytest.mark.slow
def test_silent_jobs_api_ends_in_one_line_with_the_lock_released(tmp_path):
    from sr_batch import nightly

    make_folder(tmp_path / "in", 1)
    out = tmp_path / "out"
    with silent_server() as port:
        proc = run_cli(["nightly", str(tmp_path / "in"), "--output", str(out), "--address",
                        f"http://127.0.0.1:{port}", "--model", "bicubic"], plain_env(tmp_path),
                       timeout=180)

    assert proc.returncode == 3, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"sr-batch: error: cannot reach the Ray Jobs API at http://127.0.0.1:{port}: "
        f"timed out after {nightly.JOBS_API_READ_S:g} s (connected, no answer)")
    assert "Traceback" not in proc.stderr
    assert not (out / "nightly.lock").exists()


@pytest.mark.slow
def test_sigterm_releases_the_lock(tmp_path):
    """cron's `timeout` sends SIGTERM to a nightly stuck on a silent API: the lock must go."""
    make_folder(tmp_path / "in", 1)
    out, log = tmp_path / "out", tmp_path / "stderr.txt"
    with silent_server() as port, open(log, "wb") as stderr_file:
        proc = subprocess.Popen(
            sr_batch_cmd("nightly", str(tmp_path / "in"), "--output", str(out), "--address",
                         f"http://127.0.0.1:{port}", "--model", "bicubic"),
            env=plain_env(tmp_path), stdout=subprocess.DEVNULL, stderr=stderr_file,
            start_new_session=True, cwd=Path(__file__).resolve().parents[1])
        try:
            deadline = time.monotonic() + 120
            # The listing line comes once the lock is held, before the Jobs API is asked.
            while "new or changed" not in log.read_text():
                assert proc.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, "the nightly never got to listing"
                time.sleep(0.05)
            assert (out / "nightly.lock").exists()
            proc.send_signal(signal.SIGTERM)
            returncode = proc.wait(timeout=60)
        finally:
            stop_process(proc, signal.SIGKILL, timeout_s=10)
    stderr = log.read_text()
    assert returncode == 130, stderr[-2000:]
    assert "sr-batch: interrupted; rerun the same command to finish" in stderr.splitlines(), stderr[-2000:]
    assert not (out / "nightly.lock").exists(), stderr[-2000:]


class DropsASigterm:
    """Raises SIGTERM inside __del__, where Python prints the handler's exception and drops
    it, as it does inside a compiled module's import callback."""

    def __del__(self):
        signal.raise_signal(signal.SIGTERM)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_sigterm_that_python_dropped_still_interrupts():
    from sr_batch import nightly

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with nightly._SigtermAsInterrupt() as sigterm:
            DropsASigterm()
            assert sigterm.received
            sigterm.check()
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_error_after_a_dropped_sigterm_is_reported_as_the_interrupt():
    from sr_batch import nightly

    with pytest.raises(KeyboardInterrupt) as caught:
        with nightly._SigtermAsInterrupt():
            DropsASigterm()
            raise nightly.JobSubmitError("cannot reach the Ray Jobs API: timed out")
    assert isinstance(caught.value.__cause__, nightly.JobSubmitError)


def test_an_error_without_a_sigterm_stays_itself():
    from sr_batch import nightly

    with pytest.raises(nightly.JobSubmitError):
        with nightly._SigtermAsInterrupt() as sigterm:
            sigterm.check()
            raise nightly.JobSubmitError("cannot reach the Ray Jobs API: timed out")


class SilentClient:
    """The part of JobSubmissionClient the follow-up uses, from a head that stopped answering:
    the log stream never yields, and every status request fails as a timeout would."""

    def __init__(self, status=None):
        self.status, self.status_calls = status, 0

    async def tail_job_logs(self, submission_id):
        await asyncio.Event().wait()  # never set
        yield ""

    def get_job_status(self, submission_id):
        self.status_calls += 1
        if self.status is None:
            raise TimeoutError("timed out")
        return self.status


def test_log_stream_that_hangs_ends_when_the_job_has(tmp_path, monkeypatch):
    from sr_batch import nightly
    from sr_batch.lock import OutputLock

    monkeypatch.setattr(nightly, "LOG_SILENCE_S", 0.05)
    client = SilentClient(status="SUCCEEDED")
    with OutputLock(f"file://{tmp_path}/nightly.lock", 3600, "test", settle_s=0) as lock:
        asyncio.run(asyncio.wait_for(nightly._stream_logs(client, "job", lock, print), 60))
        assert nightly._wait(client, "job", lock) == "SUCCEEDED"


def test_silent_api_while_following_gives_up_in_one_line(tmp_path, monkeypatch):
    from sr_batch import nightly
    from sr_batch.lock import OutputLock

    monkeypatch.setattr(nightly, "LOG_SILENCE_S", 0.05)
    monkeypatch.setattr(nightly, "FOLLOW_PATIENCE_S", 0.0)
    client = SilentClient()
    with OutputLock(f"file://{tmp_path}/nightly.lock", 3600, "test", settle_s=0) as lock:
        with pytest.raises(TimeoutError):  # _submit_and_follow then falls back to _wait
            asyncio.run(asyncio.wait_for(nightly._stream_logs(client, "job", lock, print), 60))
        with pytest.raises(nightly.JobSubmitError, match=(
                "lost the Ray Jobs API at http://h:8265 while following job: timed out after "
                r"20 s \(connected, no answer\); the job may still be running")):
            nightly._wait(client, "job", lock, "http://h:8265")
