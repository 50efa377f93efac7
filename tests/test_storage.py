"""The I/O door: path containment, atomic writes, and retries of transient errors only."""

from __future__ import annotations

import contextlib
import errno
import http.server
import os
import socket
import threading
import time
import uuid

import fsspec
import pytest

from sr_batch import storage
from sr_batch.errors import MissingFileError, PathEscapeError, ReadError, WriteError

from conftest import bounded, silent_server


@pytest.fixture
def memory_root():
    """A fresh folder on fsspec's process-wide memory filesystem, removed afterwards."""
    root = f"memory://storage-test-{uuid.uuid4().hex[:8]}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


class Flaky:
    """A callable that raises the given errors in turn, then returns 'done'."""

    def __init__(self, *errors: BaseException):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


# --- resolve_inside / check_inside -----------------------------------------------------


def test_resolve_inside_joins_a_plain_relative_path():
    assert storage.resolve_inside("s3://bucket/out", "a/b.png") == "s3://bucket/out/a/b.png"
    assert storage.resolve_inside("file:///out/", "a/./b.png") == "file:///out/a/b.png"


@pytest.mark.parametrize("relative", ["../x", "a/../../x", "a/..", "/abs", "a\\b", "..\\x",
                                      "s3://x", ""])
def test_resolve_inside_rejects_escapes(relative):
    with pytest.raises(PathEscapeError) as info:
        storage.resolve_inside("file:///out", relative)
    assert info.value.error_type == "path_escape"


def test_check_inside_accepts_a_file_under_the_root(tmp_path):
    root = tmp_path / "out"
    uri = f"file://{root}/images/a.png"

    assert storage.check_inside(str(root), uri) == uri
    assert storage.check_inside(f"file://{root}/", uri) == uri


@pytest.mark.parametrize("uri", [
    "/elsewhere/a.png",         # outside
    "/out2/x",                  # sibling whose name starts with the root's
    "/out",                     # the root itself is not a file under it
    "/out/../etc/passwd",       # climbs out
    "memory:///out/x.png",      # another filesystem
])
def test_check_inside_rejects(uri):
    with pytest.raises(PathEscapeError):
        storage.check_inside("/out", uri)


def test_check_inside_on_object_store_paths():
    assert storage.check_inside("memory://out", "memory://out/a/b.png") == "memory://out/a/b.png"
    with pytest.raises(PathEscapeError):
        storage.check_inside("memory://out", "memory://outside/b.png")
    with pytest.raises(PathEscapeError):
        storage.check_inside("memory://out", "file:///out/b.png")


# --- write_bytes_atomic ----------------------------------------------------------------


def test_write_bytes_atomic_writes_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "deep" / "er" / "a.bin"

    storage.write_bytes_atomic(str(target), b"payload")
    storage.write_bytes_atomic(str(target), b"second")  # overwrite in place

    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["a.bin"]


def test_remove_orphan_temps_deletes_only_our_temporary_names(tmp_path, memory_root):
    names = [".a.png.tmp-0123abcd", ".deep name.tiff.tmp-ffffffff", "a.png", ".a.png", ".a.png.tmp-xyz",
             "a.png.tmp-0123abcd", ".a.png.tmp-0123abcd.bak"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".d.png.tmp-00000000").mkdir()  # a directory is never removed
    storage.write_bytes_atomic(f"{memory_root}/.a.png.tmp-0123abcd", b"x")  # object stores: untouched
    sweep_start = time.time()
    for name in names:
        os.utime(tmp_path / name, (sweep_start - 60, sweep_start - 60))
    (tmp_path / ".busy.png.tmp-0000abcd").write_bytes(b"x")  # a writer beside the sweep: newer

    removed = storage.remove_orphan_temps([str(tmp_path), str(tmp_path / "absent"), memory_root],
                                          older_than=sweep_start)

    assert removed == 2
    assert sorted(os.listdir(tmp_path)) == sorted(names[2:] + [".d.png.tmp-00000000", ".busy.png.tmp-0000abcd"])
    assert storage.read_bytes(f"{memory_root}/.a.png.tmp-0123abcd") == b"x"


def test_failed_write_leaves_nothing_at_the_final_name(tmp_path, monkeypatch):
    target = tmp_path / "a.bin"
    calls = []

    def failing_replace(src, dst):
        calls.append((src, dst))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)

    with pytest.raises(WriteError, match="No space left"):
        storage.write_bytes_atomic(str(target), b"payload")

    assert len(calls) == 1  # ENOSPC is not transient: no retry
    assert calls[0][1] == str(target)
    assert os.path.basename(calls[0][0]).startswith(".a.bin.tmp-")
    assert os.listdir(tmp_path) == []


def test_failed_overwrite_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old and whole")

    def failing_replace(src, dst):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", failing_replace)

    with pytest.raises(WriteError):
        storage.write_bytes_atomic(str(target), b"new")

    assert target.read_bytes() == b"old and whole"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_transient_write_failure_is_retried_without_leftovers(tmp_path, monkeypatch):
    target = tmp_path / "a.bin"
    real_replace = os.replace
    failures = [OSError(errno.EIO, "Input/output error")]

    def flaky_replace(src, dst):
        if failures:
            raise failures.pop()
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)

    storage.write_bytes_atomic(str(target), b"payload", retries=1)

    assert not failures
    assert target.read_bytes() == b"payload"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_write_bytes_atomic_to_memory(memory_root):
    uri = f"{memory_root}/a/b.bin"

    storage.write_bytes_atomic(uri, b"in memory")

    fs = fsspec.filesystem("memory")
    assert fs.cat_file(uri) == b"in memory"
    assert [path.rsplit("/", 1)[-1] for path in fs.find(memory_root)] == ["b.bin"]


# --- read_bytes ------------------------------------------------------------------------


def test_read_bytes(tmp_path, memory_root):
    (tmp_path / "a.bin").write_bytes(b"local")
    with fsspec.open(f"{memory_root}/b.bin", "wb") as handle:
        handle.write(b"remote")

    assert storage.read_bytes(storage.to_uri(str(tmp_path / "a.bin"))) == b"local"
    assert storage.read_bytes(f"{memory_root}/b.bin") == b"remote"


def test_read_bytes_missing_file(tmp_path, memory_root):
    with pytest.raises(MissingFileError, match="no such file"):
        storage.read_bytes(storage.to_uri(str(tmp_path / "absent.png")))
    with pytest.raises(MissingFileError):
        storage.read_bytes(f"{memory_root}/absent.png")


def test_a_directory_is_a_read_error_not_a_missing_file(tmp_path):
    """A folder exists: it cannot be read as an image (read_error), whether read or sized."""
    for call in (storage.read_bytes, storage.file_size):
        with pytest.raises(ReadError, match="is a directory, not a file"):
            call(storage.to_uri(str(tmp_path)))


def test_a_uri_with_a_nul_byte_is_a_read_error_and_no_output_path(tmp_path):
    """A NUL byte names no file: reads fail as read_error (not a bare ValueError), and an output
    name or output_uri holding one is path_escape."""
    for uri in (f"file://{tmp_path}/o\x00k.png", f"file://{tmp_path}/nul\x00dir/x.png"):
        with pytest.raises(ReadError, match="NUL byte"):
            storage.read_bytes(uri)
        with pytest.raises(ReadError, match="NUL byte"):
            storage.file_size(uri)
    with pytest.raises(PathEscapeError, match="not a plain relative path"):
        storage.resolve_inside(f"file://{tmp_path}", "nuldir\x00/x.png")
    with pytest.raises(PathEscapeError, match="NUL byte"):
        storage.check_inside(f"file://{tmp_path}", f"file://{tmp_path}/o\x00k.png")


def test_the_temporary_name_of_a_255_byte_name_fits_in_255_bytes(tmp_path):
    """Names of 242 to 255 bytes (ASCII or multi-byte) are written: the hidden temporary name is
    cut to 255 bytes at a whole character and is still swept as an orphan."""
    names = ("a" * 242 + ".png", "b" * 251 + ".png", "\u00e9" * 125 + "x.png")
    assert [len(name.encode()) for name in names] == [246, 255, 255]
    for name in names:
        temp = os.path.basename(storage.temp_name(str(tmp_path), name))
        assert len(temp.encode()) <= 255 and storage._TEMP_NAME.match(temp), temp
        storage.write_bytes_atomic(storage.to_uri(str(tmp_path / name)), b"pixels")
        assert (tmp_path / name).read_bytes() == b"pixels"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


# --- retry / is_transient --------------------------------------------------------------


def test_retry_succeeds_after_transient_errors():
    call = Flaky(ConnectionError("reset"), ConnectionError("reset"))

    assert storage.retry(call, retries=3, what="x", base_delay_s=0) == "done"
    assert call.calls == 3


def test_retry_does_not_retry_permanent_errors():
    call = Flaky(PermissionError("denied"))

    with pytest.raises(PermissionError):
        storage.retry(call, retries=3, what="x", base_delay_s=0)
    assert call.calls == 1


def test_retry_gives_up_after_its_retries():
    call = Flaky(*[TimeoutError(f"attempt {i}") for i in range(5)])

    with pytest.raises(TimeoutError, match="attempt 2"):
        storage.retry(call, retries=2, what="x", base_delay_s=0)
    assert call.calls == 3


def test_retry_with_zero_retries_calls_once():
    call = Flaky(ConnectionError("reset"))

    with pytest.raises(ConnectionError):
        storage.retry(call, retries=0, what="x", base_delay_s=0)
    assert call.calls == 1


@pytest.mark.parametrize("exc", [
    OSError("An error occurred (SlowDown) when calling the PutObject operation: Please reduce your request rate."),
    OSError("503 Service Unavailable"),
    OSError(errno.ECONNRESET, "Connection reset by peer"),
    OSError(errno.ETIMEDOUT, "whatever"),
    ConnectionError("boom"),
    TimeoutError(),
])
def test_transient(exc):
    assert storage.is_transient(exc)


@pytest.mark.parametrize("exc", [
    FileNotFoundError(errno.ENOENT, "No such file"),
    FileNotFoundError("503 in the name does not make a missing file transient"),
    PermissionError(errno.EACCES, "Permission denied"),
    IsADirectoryError(errno.EISDIR, "Is a directory"),
    OSError(errno.ENOSPC, "No space left on device"),
    ValueError("bad value"),
])
def test_not_transient(exc):
    assert not storage.is_transient(exc)


# --- inputs that must fail as read errors, never crash or hang ---------------------------




def open_and_read(uri: str, **options) -> bytes:
    with storage.open_input(uri, **options) as handle:
        return handle.read()


READERS = {
    "read_bytes": storage.read_bytes,
    "file_size": storage.file_size,
    "open_input": open_and_read,
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_unknown_protocol_is_a_read_error(reader):
    with pytest.raises(ReadError, match="unknown protocol 'foo' in foo://bar/x.png") as info:
        READERS[reader]("foo://bar/x.png")
    assert info.value.error_type == "read_error"


def test_unknown_protocol_output_is_a_write_error_or_an_escape(tmp_path):
    with pytest.raises(WriteError, match="unknown protocol 'foo'"):
        storage.write_bytes_atomic("foo://bar/x.png", b"data")
    with pytest.raises(PathEscapeError, match="unknown protocol 'foo'"):
        storage.check_inside(storage.to_uri(str(tmp_path)), "foo://bar/x.png")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("reader", sorted(READERS))
def test_refused_connection_is_a_read_error_not_a_missing_file(reader):
    uri = f"http://127.0.0.1:{closed_port()}/x.png"

    with pytest.raises(ReadError, match="cannot read http://127.0.0.1:.*Cannot connect"):
        bounded(lambda: READERS[reader](uri, retries=0))




@pytest.mark.parametrize("reader", sorted(READERS))
def test_timeout_bounds_a_read_from_a_server_that_never_answers(reader):
    with silent_server() as port:
        with pytest.raises(ReadError, match="timed out after 0.5 s"):
            bounded(lambda: READERS[reader](f"http://127.0.0.1:{port}/x.png", retries=0, timeout_s=0.5))


@pytest.fixture
def http_root(tmp_path):
    """A real HTTP server over tmp_path; `boom.png` answers 500. Yields (base URL, hit counts)."""
    hits: dict[str, int] = {}

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args):
            pass

        def send_head(self):
            hits[self.path] = hits.get(self.path, 0) + 1
            if self.path == "/boom.png":
                self.send_error(500)
                return None
            return super().send_head()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


def test_http_file_missing_or_failing(http_root, tmp_path):
    base, hits = http_root
    (tmp_path / "a.png").write_bytes(b"12345")

    assert storage.file_size(f"{base}/a.png", timeout_s=10) == 5
    assert storage.read_bytes(f"{base}/a.png", timeout_s=10) == b"12345"
    with pytest.raises(MissingFileError, match="no such file"):
        storage.file_size(f"{base}/absent.png", retries=0)
    with pytest.raises(MissingFileError, match="no such file"):
        storage.read_bytes(f"{base}/absent.png", retries=0)
    # A 500 is a read error, retried as transient (two attempts with retries=1).
    with pytest.raises(ReadError, match="500"):
        storage.read_bytes(f"{base}/boom.png", retries=1)
    assert hits["/boom.png"] == 2


@contextlib.contextmanager
def fifo_at(path):
    """A FIFO at `path`; afterwards, a reader stuck in open() is released and the FIFO removed."""
    os.mkfifo(path)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):  # ENXIO: no reader waiting, as it should be
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        os.unlink(path)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_fifo_is_refused_without_being_opened(tmp_path, reader):
    with fifo_at(tmp_path / "fifo.png") as fifo:
        with pytest.raises(ReadError, match=r"not a regular file \(a FIFO\): file://.*fifo.png"):
            bounded(lambda: READERS[reader](storage.to_uri(str(fifo))), limit_s=20)


def test_device_is_refused():
    with pytest.raises(ReadError, match=r"not a regular file \(a character device\)"):
        storage.read_bytes("file:///dev/null")  # not /dev/zero: read whole, it never ends


# --- display -----------------------------------------------------------------------------


@pytest.mark.parametrize("name, shown", [
    ("file:///a/plain name é 😀.png", "file:///a/plain name é 😀.png"),
    ("file:///a/two\nlines.png", "file:///a/two\\nlines.png"),
    ("cr\rtab\t.png", "cr\\rtab\\t.png"),
    ("esc\x1b[31mred.png", "esc\\x1b[31mred.png"),
    ("nel\x85.png", "nel\\x85.png"),
    ("line\u2028sep.png", "line\\u2028sep.png"),
    ("gnp.\u202eexe", "gnp.\\u202eexe"),
])
def test_display_escapes_control_characters(name, shown):
    assert storage.display(name) == shown
    assert storage.display(name).isprintable() or "😀" in name


def test_messages_about_a_name_with_a_newline_stay_on_one_line(tmp_path):
    uri = storage.to_uri(str(tmp_path / "two\nlines.png"))

    with pytest.raises(MissingFileError) as info:
        storage.read_bytes(uri)
    assert "\n" not in str(info.value) and "two\\nlines.png" in str(info.value)
