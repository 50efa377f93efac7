"""A lock on an output root, with a stale timeout, that works on local disks and object stores.

Object stores have no atomic create-if-absent that every fsspec backend
exposes, so the lock is write-then-verify: write a file holding a random
token, wait for the store to settle, read it back. Of two racing writers the
last write wins, and only its owner reads back its own token; the other backs
off. A lock older than `stale_s` (its holder died without releasing it) is
taken over, and so is one whose holder ran on this machine and is gone (its pid
no longer lives: kill -9). The holder refreshes it while it works, so a long run
is never taken for a dead one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
import uuid

from sr_batch import storage
from sr_batch.errors import SrBatchError

# Object stores answer reads-after-writes consistently (S3 since 2020, GCS
# always); this pause only lets a racing writer's PUT land before we look.
SETTLE_S = 0.5
# A run that has not refreshed its lock for 6 hours is taken for dead.
DEFAULT_STALE_S = 6 * 3600.0


def holder() -> dict:
    """Who this process is, as a lock or a run record names it: host, pid and, on Linux, the
    pid namespace (containers that share a host name each number their own processes)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_ns": _pid_namespace()}


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def is_dead(record: dict) -> bool:
    """True only where the `holder()` named in `record` ran in this machine's process space
    and its pid no longer lives: it died without cleaning up (kill -9, a crash). A process of
    another host or pid namespace, or one of another user's, is never taken for dead."""
    pid = record.get("pid")
    if (record.get("host") != socket.gethostname() or "pid_ns" not in record
            or record["pid_ns"] != _pid_namespace() or not isinstance(pid, int) or pid <= 0):
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class LockHeldError(SrBatchError):
    error_type = "lock_held"


class OutputLock:
    """Context manager holding `uri` for one process; `refresh()` keeps it fresh."""

    def __init__(self, uri: str, stale_s: float, purpose: str, settle_s: float = SETTLE_S) -> None:
        self.uri, self.stale_s, self.purpose, self.settle_s = uri, stale_s, purpose, settle_s
        self.token = uuid.uuid4().hex
        self.held = False

    def _record(self) -> bytes:
        return json.dumps({
            "token": self.token, "purpose": self.purpose, **holder(),
            "refreshed_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        }).encode()

    def _read(self) -> dict | None:
        fs, path = storage.get_fs(self.uri)
        try:
            return json.loads(fs.cat_file(path))
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            return {"token": None, "refreshed_at": "1970-01-01T00:00:00+00:00"}  # junk: stale

    def acquire(self) -> "OutputLock":
        current = self._read()
        if current is not None:
            age = (dt.datetime.now(dt.timezone.utc)
                   - dt.datetime.fromisoformat(current["refreshed_at"])).total_seconds()
            if age < self.stale_s and not is_dead(current):
                raise LockHeldError(
                    f"{self.uri} is held by {current.get('purpose')} on {current.get('host')} "
                    f"(pid {current.get('pid')}, refreshed {age:.0f} s ago); it goes stale after "
                    f"{self.stale_s:.0f} s, or delete the file if that run is dead")
        storage.write_bytes_atomic(self.uri, self._record())
        try:
            time.sleep(self.settle_s)
            mine = (self._read() or {}).get("token") == self.token
        except BaseException:  # interrupted while settling: leave no lock behind
            if (self._read() or {}).get("token") == self.token:
                fs, path = storage.get_fs(self.uri)
                fs.rm_file(path)
            raise
        if not mine:
            raise LockHeldError(f"{self.uri} was taken by another run at the same moment")
        self.held = True
        return self

    def refresh(self) -> None:
        """Rewrite the timestamp; call more often than stale_s while the work goes on."""
        if self.held:
            if (self._read() or {}).get("token") != self.token:
                raise LockHeldError(f"lost {self.uri} to another run (it thought ours was stale)")
            storage.write_bytes_atomic(self.uri, self._record())

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if (self._read() or {}).get("token") == self.token:
            fs, path = storage.get_fs(self.uri)
            fs.rm_file(path)

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
