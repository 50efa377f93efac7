"""The one I/O door: every path is an fsspec URI; retries and atomic writes live here.

Reads can be bounded in time (`timeout_s`): for http(s) it is aiohttp's connect and
per-read socket timeout, for s3 botocore's connect and read timeout. Both bound each
wait for the server, not the whole transfer (a server that trickles bytes is not cut
off), and each retry waits again. Other object stores (gcs, ...) keep their client's
defaults. Local reads are not bounded: a hung network mount blocks in the kernel; FIFOs,
sockets and devices, which would block or misbehave when opened, are refused before open.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import posixpath
import random
import re
import stat
import tempfile
import time
import unicodedata
import uuid
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable, Iterator, TypeVar

import fsspec
from fsspec.core import url_to_fs
from fsspec.utils import get_protocol

from sr_batch.errors import MissingFileError, PathEscapeError, ReadError, WriteError

if TYPE_CHECKING:
    import pyarrow as pa

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
                   "service unavailable", "connection reset", "timed out", "timeout",
                   "reduce your request rate")
# Characters that would break a one-line message or make it lie about a name: C0/C1
# controls, line and paragraph separators, and the bidirectional embeddings, overrides
# and isolates (U+202A-U+202E, U+2066-U+2069) that reorder what a terminal shows.
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_BIDI_CONTROLS = frozenset(map(chr, [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]))


def display(uri: str) -> str:
    """`uri` fit for a one-line message: control characters escaped (a newline shows as \\n)."""
    text = str(uri)
    if text.isprintable():
        return text
    return "".join(_escape(ch) for ch in text)


def _escape(ch: str) -> str:
    if ch in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[ch]
    if ch in _BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
        return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"
    return ch


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: timeouts, resets, throttling, HTTP 5xx."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    status = getattr(exc, "status", None)  # aiohttp's HTTP errors carry the status code
    if isinstance(status, int) and (status >= 500 or status == 429):
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
                        display(what), display(str(exc)), attempt + 1, retries, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def to_uri(path: str) -> str:
    """Canonical URI: local paths become absolute file:// URIs; others are kept."""
    if "://" in path:
        if path.startswith("file://"):
            return "file://" + os.path.abspath(path[len("file://"):])
        return path
    return "file://" + os.path.abspath(os.path.expanduser(path))


# A local path that os.path.abspath would change: relative, `//`, `.` or `..` parts, a final `/`.
_NOT_ABSOLUTE_NORMAL = r"^(?:[^/]|$)|//|/\.\.?(?:/|$)|/$"


def to_uris(paths: pa.Array) -> pa.Array:
    """`to_uri` of every string of an Arrow array (nulls stay null): column-wise for the
    URIs and absolute paths that are canonical already, one by one for the rest."""
    import pyarrow as pa
    import pyarrow.compute as pc

    is_file = pc.starts_with(paths, "file://")
    bare = pc.invert(pc.match_substring(paths, "://"))
    local = pc.if_else(is_file, pc.utf8_slice_codeunits(paths, len("file://")), paths)
    # (a bare `~/x` is relative here, so it too goes one by one, through expanduser)
    unusual = pc.match_substring_regex(local, _NOT_ABSOLUTE_NORMAL)
    slow = pc.fill_null(pc.and_(pc.or_(is_file, bare), unusual), False)
    uris = pc.if_else(bare, pc.binary_join_element_wise("file://", paths, ""), paths)
    if not pc.any(slow).as_py():
        return uris
    return pc.replace_with_mask(uris, slow, pa.array(
        [to_uri(p) for p in paths.filter(slow).to_pylist()], pa.string()))


def get_fs(uri: str, timeout_s: float | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and protocol-less path for a URI.

    Raises ReadError for a protocol fsspec does not know (`foo://...`) or whose package is
    not installed; `timeout_s` bounds reads where the backend allows (module docstring).
    """
    if "\x00" in uri:  # no filesystem takes one; os.stat would raise a bare ValueError
        raise ReadError(f"a URI with a NUL byte names no file: {display(uri)}")
    protocol = get_protocol(uri)
    try:
        return url_to_fs(uri, **_timeout_options(protocol, timeout_s))
    except ValueError as exc:
        if "protocol not known" not in str(exc).lower():
            raise
        raise ReadError(f"unknown protocol {protocol!r} in {display(uri)}") from None
    except ImportError as exc:
        raise ReadError(f"cannot open {display(uri)}: the {protocol!r} protocol needs a package "
                        f"that is not installed ({' '.join(str(exc).split())})") from None


def _timeout_options(protocol: str, timeout_s: float | None) -> dict:
    """fsspec storage options that bound each wait for the server, where the backend has them."""
    if timeout_s is None:
        return {}
    if protocol in ("http", "https"):
        import aiohttp

        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(
            total=None, sock_connect=timeout_s, sock_read=timeout_s)}}
    if protocol in ("s3", "s3a"):
        return {"config_kwargs": {"connect_timeout": timeout_s, "read_timeout": timeout_s}}
    return {}


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


@functools.cache
def _read_failures() -> tuple[type[BaseException], ...]:
    """Exception types a backend raises for a read that did not work (not a bug of ours)."""
    failures: list[type[BaseException]] = [OSError]
    with contextlib.suppress(ImportError):
        import aiohttp  # fsspec's http: HTTP errors are not OSErrors

        failures.append(aiohttp.ClientError)
    with contextlib.suppress(ImportError):
        import botocore.exceptions  # s3fs passes timeouts and connection errors through

        failures.append(botocore.exceptions.BotoCoreError)
    return tuple(failures)


def _unmask_not_found(call: Callable[[], T]) -> Callable[[], T]:
    """`call`, raising the real cause where fsspec reported any failure as FileNotFoundError.

    fsspec's HTTP info() (file_size) turns a refused connection, a timeout or an HTTP 500
    into FileNotFoundError; only an actual 404/410 means the file is missing.
    """
    def unmasked() -> T:
        try:
            return call()
        except FileNotFoundError as exc:
            cause = exc.__cause__
            if (not isinstance(cause, _read_failures()) or isinstance(cause, FileNotFoundError)
                    or getattr(cause, "status", None) in (404, 410)):
                raise
            raise cause from None
    return unmasked


def _reason(exc: BaseException, timeout_s: float | None) -> str:
    if isinstance(exc, TimeoutError) and timeout_s is not None:
        return f"timed out after {timeout_s:g} s"
    return " ".join(str(exc).split()) or type(exc).__name__


def _call_reading(uri: str, call: Callable[[], T], retries: int, timeout_s: float | None = None) -> T:
    """Run a read of `uri` with retries; missing files and permanent errors become ImageErrors."""
    try:
        return retry(_unmask_not_found(call), retries, uri)
    except FileNotFoundError:
        raise MissingFileError(f"no such file: {display(uri)}") from None
    except IsADirectoryError:
        raise ReadError(f"is a directory, not a file: {display(uri)}") from None
    except _read_failures() as exc:
        raise ReadError(f"cannot read {display(uri)}: {_reason(exc, timeout_s)}") from None


# What a local path that is neither a regular file nor a directory is, for the message.
_SPECIAL_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def special_file_kind(mode: int) -> str | None:
    """'a FIFO', 'a socket', ... for a stat mode that is no regular file or directory, else None."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return next((kind for test, kind in _SPECIAL_KINDS if test(mode)), "not a regular file")


def _refuse_special(fs: fsspec.AbstractFileSystem, path: str, uri: str) -> None:
    """ReadError for a local FIFO, socket or device, checked without opening it (a FIFO's
    open blocks until a writer comes; a device's open can have effects)."""
    if not is_local(fs):
        return
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing or unreadable: the read itself reports it
    kind = special_file_kind(mode)
    if kind is not None:
        raise ReadError(f"not a regular file ({kind}): {display(uri)}")


def read_bytes(uri: str, retries: int = 3, timeout_s: float | None = None) -> bytes:
    """Whole file as bytes."""
    fs, path = get_fs(uri, timeout_s)
    _refuse_special(fs, path, uri)
    return _call_reading(uri, lambda: fs.cat_file(path), retries, timeout_s)


def file_size(uri: str, retries: int = 3, timeout_s: float | None = None) -> int:
    """Size in bytes (one stat, or one HEAD on object stores)."""
    fs, path = get_fs(uri, timeout_s)
    _refuse_special(fs, path, uri)
    info = _call_reading(uri, lambda: fs.info(path), retries, timeout_s)
    if info.get("type") == "directory":
        raise ReadError(f"is a directory, not a file: {display(uri)}")
    return int(info.get("size") or 0)


# Read granularity for header-only reads: TIFF, PNG and JPEG headers fit, where s3fs's
# default block (50 MB) would fetch a large image whole just to learn its size.
HEADER_BLOCK_SIZE = 256 << 10


@contextlib.contextmanager
def open_input(uri: str, retries: int = 3, block_size: int | None = None,
               timeout_s: float | None = None) -> Iterator[BinaryIO]:
    """A seekable read handle, for files read in ranges rather than whole.

    `block_size` is the object-store read granularity (s3fs reads 50 MB by default);
    pass HEADER_BLOCK_SIZE where only the header is wanted. `timeout_s` bounds the
    opening and each ranged read the handle makes, where the backend allows. Errors
    of the later reads are the backend's own (not retried, not turned into ReadError)."""
    fs, path = get_fs(uri, timeout_s)
    _refuse_special(fs, path, uri)
    options = {} if block_size is None else {"block_size": block_size}
    handle = _call_reading(uri, lambda: fs.open(path, "rb", **options), retries, timeout_s)
    try:
        yield handle
    finally:
        handle.close()


# The hidden name a local atomic write uses before its rename (see `temp_name`).
_TEMP_NAME = re.compile(r"^\..+\.tmp-[0-9a-f]{8}$")


# The longest file name most filesystems take (ext4, XFS, APFS, NTFS: 255 bytes).
NAME_MAX = 255


def temp_name(directory: str, name: str) -> str:
    """Hidden sibling path that a local atomic write fills before renaming it onto `name`.

    It adds 14 bytes (`.` and `.tmp-` + 8 hex digits) to the name, so a name within 14 bytes
    of NAME_MAX is cut short here (at a whole character): any name the filesystem takes can
    be written."""
    suffix = f".tmp-{uuid.uuid4().hex[:8]}"
    room = NAME_MAX - len(suffix) - 1
    stem = name.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return os.path.join(directory, f".{stem}{suffix}")


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


def _output_fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        return get_fs(uri)
    except ReadError as exc:
        raise WriteError(f"cannot write: {exc}") from None


def write_file_atomic(uri: str, write: Callable[[str], None], retries: int = 3) -> int:
    """Let `write(local_path)` fill a temporary file, then move it into place; return its size.

    For outputs too big to hold as bytes. Local disks: a hidden temporary file
    in the same directory, then a rename. Object stores: a local temporary
    file, then one upload (retried), so a reader never sees a partial object.
    """
    fs, path = _output_fs(uri)
    local = is_local(fs)
    if local:
        directory, name = os.path.split(path)
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise WriteError(f"cannot write {display(uri)}: {exc}") from None
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
        raise WriteError(f"cannot write {display(uri)}: {exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(uri: str, data: bytes, retries: int = 3) -> None:
    """Write so that a half-written file never stands at the final name.

    Local disks: write a hidden temporary file in the same directory, then
    rename (atomic on POSIX). Object stores: a single PUT is already atomic, a
    reader sees the old object or the whole new one.
    """
    fs, path = _output_fs(uri)

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
        raise WriteError(f"cannot write {display(uri)}: {exc}") from None


def resolve_inside(root: str, relative: str) -> str:
    """URI of `relative` under `root`; raise PathEscapeError if it could leave root."""
    if (not relative or "\\" in relative or "\x00" in relative or relative.startswith("/")
            or "://" in relative):
        raise PathEscapeError(f"output path {relative!r} is not a plain relative path")
    if ".." in relative.split("/"):
        raise PathEscapeError(f"output path {relative!r} contains '..'")
    return join(root, posixpath.normpath(relative))


def check_inside(root: str, uri: str) -> str:
    """Return `uri` if it lies under `root` (same protocol), else raise PathEscapeError."""
    if "\x00" in uri:
        raise PathEscapeError(f"output_uri {display(uri)} contains a NUL byte")
    root_fs, root_path = get_fs(root)
    try:
        fs, path = get_fs(uri)
    except ReadError as exc:
        raise PathEscapeError(f"output_uri is not on the output filesystem {display(root)}: {exc}") from None
    if type(fs) is not type(root_fs):
        raise PathEscapeError(f"output_uri {display(uri)} is not on the output filesystem {display(root)}")
    if ".." in path.split("/"):
        raise PathEscapeError(f"output_uri {display(uri)} contains '..'")
    root_path = root_path.rstrip("/")
    if not path.startswith(root_path + "/"):
        raise PathEscapeError(f"output_uri {display(uri)} is outside the output root {display(root)}")
    return uri
