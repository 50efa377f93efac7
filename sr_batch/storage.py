"""The one I/O door: every path is an fsspec URI; retries and atomic writes live here."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import random
import re
import tempfile
import time
import uuid
from typing import BinaryIO, Callable, Iterable, Iterator, TypeVar

import fsspec
from fsspec.core import url_to_fs

from sr_batch.errors import MissingFileError, PathEscapeError, ReadError, WriteError

log = logging.getLogger(__name__)
T = TypeVar("T")

# errno values that mean "try again", as raised by local disks, NFS and the
# HTTP stacks under s3fs/gcsfs.
_TRANSIENT_ERRNOS = {
    errno.EAGAIN, errno.EBUSY, errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED,
    errno.ETIMEDOUT, errno.EPIPE, errno.EIO,
}
# Fragments of messages object stores put on throttling and 5xx errors.
_TRANSIENT_TEXT = ("slowdown", "slow down", "throttl", "503", "500 ", "internal error",
                   "service unavailable", "connection reset", "timed out", "reduce your request rate")


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: timeouts, resets, throttling, HTTP 5xx."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    text = str(exc).lower()
    return any(fragment in text for fragment in _TRANSIENT_TEXT)


def retry(call: Callable[[], T], retries: int, what: str, base_delay_s: float = 0.2) -> T:
    """Run `call`, retrying transient errors with jittered exponential backoff."""
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - filtered by is_transient below
            if attempt == retries or not is_transient(exc):
                raise
            delay = base_delay_s * (2 ** attempt) * (0.5 + random.random())
            log.warning("transient error on %s (%s); retry %d/%d in %.2fs",
                        what, exc, attempt + 1, retries, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def to_uri(path: str) -> str:
    """Canonical URI: local paths become absolute file:// URIs; others are kept."""
    if "://" in path:
        if path.startswith("file://"):
            return "file://" + os.path.abspath(path[len("file://"):])
        return path
    return "file://" + os.path.abspath(os.path.expanduser(path))


def get_fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and protocol-less path for a URI."""
    return url_to_fs(uri)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


# Control characters (a newline in a file name) would break a one-line message.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def display(uri: str) -> str:
    """A URI or path for a one-line message: control characters escaped (\\n, \\t, \\x1b)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(uri))


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _call_reading(uri: str, call: Callable[[], T], retries: int) -> T:
    """Run a read of `uri` with retries; missing files and permanent errors become ImageErrors."""
    try:
        return retry(call, retries, uri)
    except FileNotFoundError:
        raise MissingFileError(f"no such file: {uri}") from None
    except IsADirectoryError:
        raise MissingFileError(f"is a directory, not a file: {uri}") from None
    except OSError as exc:
        raise ReadError(f"cannot read {uri}: {exc}") from None


def read_bytes(uri: str, retries: int = 3) -> bytes:
    """Whole file as bytes."""
    fs, path = get_fs(uri)
    return _call_reading(uri, lambda: fs.cat_file(path), retries)


def file_size(uri: str, retries: int = 3) -> int:
    """Size in bytes (one stat, or one HEAD on object stores)."""
    fs, path = get_fs(uri)
    info = _call_reading(uri, lambda: fs.info(path), retries)
    if info.get("type") == "directory":
        raise MissingFileError(f"is a directory, not a file: {uri}")
    return int(info.get("size") or 0)


# Read granularity for header-only reads: TIFF, PNG and JPEG headers fit, where s3fs's
# default block (50 MB) would fetch a large image whole just to learn its size.
HEADER_BLOCK_SIZE = 256 << 10


@contextlib.contextmanager
def open_input(uri: str, retries: int = 3, block_size: int | None = None) -> Iterator[BinaryIO]:
    """A seekable read handle, for files read in ranges rather than whole.

    `block_size` is the object-store read granularity (s3fs reads 50 MB by default);
    pass HEADER_BLOCK_SIZE where only the header is wanted."""
    fs, path = get_fs(uri)
    options = {} if block_size is None else {"block_size": block_size}
    handle = _call_reading(uri, lambda: fs.open(path, "rb", **options), retries)
    try:
        yield handle
    finally:
        handle.close()


# The hidden name a local atomic write uses before its rename (see `temp_name`).
_TEMP_NAME = re.compile(r"^\..+\.tmp-[0-9a-f]{8}$")


def temp_name(directory: str, name: str) -> str:
    """Hidden sibling path that a local atomic write fills before renaming it onto `name`."""
    return os.path.join(directory, f".{name}.tmp-{uuid.uuid4().hex[:8]}")


def remove_orphan_temps(directories: Iterable[str], older_than: float) -> int:
    """Delete the temporary files that killed writers left in local `directories`; return how many.

    A writer killed between filling its temporary file and renaming it (a
    SIGKILL, a lost node) leaves the hidden file behind. Only files last
    modified before `older_than` (a POSIX time: the start of the run that
    sweeps) go, so a writer still busy beside this run keeps its file.
    Object-store outputs have none to remove (their temporary files are local
    to the worker and the upload is one PUT).
    """
    removed = 0
    for uri in directories:
        fs, path = get_fs(uri)
        if not is_local(fs):
            continue
        try:
            entries = list(os.scandir(path))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if not _TEMP_NAME.match(entry.name):
                continue
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < older_than:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                pass
    return removed


def write_file_atomic(uri: str, write: Callable[[str], None], retries: int = 3) -> int:
    """Let `write(local_path)` fill a temporary file, then move it into place; return its size.

    For outputs too big to hold as bytes. Local disks: a hidden temporary file
    in the same directory, then a rename. Object stores: a local temporary
    file, then one upload (retried), so a reader never sees a partial object.
    """
    fs, path = get_fs(uri)
    local = is_local(fs)
    if local:
        directory, name = os.path.split(path)
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise WriteError(f"cannot write {uri}: {exc}") from None
        tmp = temp_name(directory, name)
    else:
        handle, tmp = tempfile.mkstemp(prefix="sr-batch-", suffix=posixpath.splitext(path)[1])
        os.close(handle)
    try:
        write(tmp)
        size = os.path.getsize(tmp)
        if local:
            os.replace(tmp, path)
        else:
            retry(lambda: fs.put_file(tmp, path), retries, uri)
        return size
    except OSError as exc:
        raise WriteError(f"cannot write {uri}: {exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(uri: str, data: bytes, retries: int = 3) -> None:
    """Write so that a half-written file never stands at the final name.

    Local disks: write a hidden temporary file in the same directory, then
    rename (atomic on POSIX). Object stores: a single PUT is already atomic, a
    reader sees the old object or the whole new one.
    """
    fs, path = get_fs(uri)

    def write() -> None:
        if is_local(fs):
            directory, name = os.path.split(path)
            os.makedirs(directory, exist_ok=True)
            tmp = temp_name(directory, name)
            try:
                with open(tmp, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        else:
            fs.pipe_file(path, data)

    try:
        retry(write, retries, uri)
    except OSError as exc:
        raise WriteError(f"cannot write {uri}: {exc}") from None


def resolve_inside(root: str, relative: str) -> str:
    """URI of `relative` under `root`; raise PathEscapeError if it could leave root."""
    if not relative or "\\" in relative or relative.startswith("/") or "://" in relative:
        raise PathEscapeError(f"output path {relative!r} is not a plain relative path")
    if ".." in relative.split("/"):
        raise PathEscapeError(f"output path {relative!r} contains '..'")
    return join(root, posixpath.normpath(relative))


def check_inside(root: str, uri: str) -> str:
    """Return `uri` if it lies under `root` (same protocol), else raise PathEscapeError."""
    root_fs, root_path = get_fs(root)
    fs, path = get_fs(uri)
    if type(fs) is not type(root_fs):
        raise PathEscapeError(f"output_uri {uri} is not on the output filesystem {root}")
    if ".." in path.split("/"):
        raise PathEscapeError(f"output_uri {uri} contains '..'")
    root_path = root_path.rstrip("/")
    if not path.startswith(root_path + "/"):
        raise PathEscapeError(f"output_uri {uri} is outside the output root {root}")
    return uri
