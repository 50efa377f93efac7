"""The output lock: exclusive, stale takeover, refresh, release only by its owner; local and memory://."""

from __future__ import annotations

import datetime as dt
import json
import threading

import fsspec
import pytest

from sr_batch.lock import LockHeldError, OutputLock


@pytest.fixture(params=["local", "memory"])
def lock_uri(request, tmp_path):
    if request.param == "local":
        yield f"file://{tmp_path}/out/nightly.lock"
        return
    root = f"/lock-test-{tmp_path.name}"
    yield f"memory://{root}/out/nightly.lock"
    memory = fsspec.filesystem("memory")
    if memory.exists(root):
        memory.rm(root, recursive=True)


def read(uri):
    fs, path = fsspec.core.url_to_fs(uri)
    return json.loads(fs.cat_file(path)) if fs.exists(path) else None


def test_second_holder_is_refused_until_release(lock_uri):
    first = OutputLock(lock_uri, stale_s=60, purpose="first", settle_s=0).acquire()
    with pytest.raises(LockHeldError, match="held by first"):
        OutputLock(lock_uri, stale_s=60, purpose="second", settle_s=0).acquire()
    first.release()
    assert read(lock_uri) is None
    with OutputLock(lock_uri, stale_s=60, purpose="second", settle_s=0):
        assert read(lock_uri)["purpose"] == "second"
    assert read(lock_uri) is None


def test_stale_lock_is_taken_over(lock_uri):
    dead = OutputLock(lock_uri, stale_s=60, purpose="dead run", settle_s=0).acquire()
    record = read(lock_uri)
    record["refreshed_at"] = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=120)).isoformat()
    fs, path = fsspec.core.url_to_fs(lock_uri)
    fs.pipe_file(path, json.dumps(record).encode())
    with OutputLock(lock_uri, stale_s=60, purpose="new run", settle_s=0):
        assert read(lock_uri)["purpose"] == "new run"
        # The dead run, if it wakes up, must notice it lost the lock and not delete it.
        with pytest.raises(LockHeldError, match="lost"):
            dead.refresh()
        dead.release()
        assert read(lock_uri)["purpose"] == "new run"


def test_refresh_moves_the_timestamp(lock_uri):
    with OutputLock(lock_uri, stale_s=60, purpose="long run", settle_s=0) as lock:
        before = read(lock_uri)["refreshed_at"]
        lock.refresh()
        assert read(lock_uri)["refreshed_at"] >= before
        assert read(lock_uri)["token"] == lock.token


def test_racing_writers_only_one_wins(tmp_path):
    """Two runs write at the same moment: only the one whose token is read back holds the lock."""
    uri = f"file://{tmp_path}/nightly.lock"
    barrier = threading.Barrier(2)
    outcomes = []

    def contend(name):
        lock = OutputLock(uri, stale_s=60, purpose=name, settle_s=0.3)
        barrier.wait()
        try:
            lock.acquire()
            outcomes.append(("won", name))
        except LockHeldError:
            outcomes.append(("lost", name))

    threads = [threading.Thread(target=contend, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(o for o, _ in outcomes) == ["lost", "won"]
    winner = next(n for o, n in outcomes if o == "won")
    assert read(uri)["purpose"] == winner


def test_run_with_lock_refuses_while_another_run_holds_it(tmp_path):
    from sr_batch.config import JobConfig
    from sr_batch.pipeline import run_job

    (tmp_path / "in").mkdir()
    out = tmp_path / "out"
    with OutputLock(f"file://{out}/nightly.lock", stale_s=60, purpose="tonight's run", settle_s=0):
        with pytest.raises(LockHeldError, match="tonight's run"):
            run_job(JobConfig(sources=(str(tmp_path / "in"),), output=str(out), lock=True),
                    echo=lambda line: None)
    assert not (out / "stats").exists() and not (out / "runs").exists()


def _dead_pid() -> int:
    """The pid of a process of ours that has ended (and been reaped)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_is_dead_only_for_a_gone_process_of_this_host_and_pid_namespace():
    from sr_batch.lock import holder, is_dead

    me = holder()
    assert is_dead({**me, "pid": _dead_pid()})
    assert not is_dead(me)
    assert not is_dead({**me, "host": "another-host", "pid": _dead_pid()})
    assert not is_dead({**me, "pid_ns": "pid:[1]", "pid": _dead_pid()})  # another container's
    dead = _dead_pid()
    assert not is_dead({"host": me["host"], "pid": dead})  # who wrote it cannot be told
    assert not is_dead({**me, "pid": None}) and not is_dead({})


def test_a_lock_whose_holder_died_on_this_host_is_taken_over(lock_uri):
    """kill -9 leaves a fresh lock behind: its pid is gone, so the next run takes it at once."""
    from sr_batch.lock import holder

    fs, path = fsspec.core.url_to_fs(lock_uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, json.dumps({"token": "dead", "purpose": "sr-batch run x", **holder(),
                                   "pid": _dead_pid(),
                                   "refreshed_at": dt.datetime.now(dt.timezone.utc).isoformat()}).encode())
    with OutputLock(lock_uri, stale_s=3600, purpose="next", settle_s=0) as lock:
        assert read(lock_uri)["token"] == lock.token

