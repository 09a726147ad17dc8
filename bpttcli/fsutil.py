"""Files that stay whole: atomic writes, whole-line appends, strict JSON, exclusive locks; a file's SHA-1.

Writes go to a temp file beside the target (`.<name>.<random>.tmp`), fsync, then rename; a failed
write raises `WriteError` naming the file and the errno, and leaves the old file as it was.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import stat
import tempfile
from datetime import datetime
from pathlib import Path
from typing import IO, Callable, Iterator

from .errors import BpttError, WriteError

try:
    import fcntl
except ImportError:  # not POSIX (Windows): no locks
    fcntl = None

_UMASK = os.umask(0)
os.umask(_UMASK)


def _file_mode(path: Path) -> int:
    """An existing file's permissions, else what open() would give a new one (0o666 minus the umask)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_UMASK


def sha1_of(path: Path, advance: Callable[[int], None] | None = None) -> str:
    """The hex SHA-1 of a file's bytes, read in 1 MiB blocks; `advance(bytes)` after each block."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            if advance:
                advance(len(block))
    return h.hexdigest()


def timestamped_dir(parent: str, suffix: str = "") -> Path:
    """`parent/<YYYYmmdd-HHMMSS>[-suffix]`: the default output directory of every command that writes one."""
    return Path(parent) / (f"{datetime.now():%Y%m%d-%H%M%S}" + (f"-{suffix}" if suffix else ""))


def ensure_dir(path: Path, error: type[BpttError] = BpttError) -> Path:
    """Create `path` (and parents) or raise `error` saying it is not writable."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as exc:
        raise error(f"cannot write to directory {path}: {exc.strerror or exc}; choose a writable directory") from None
    return path


def write_error(path: Path, exc: OSError, what: str = "") -> WriteError:
    """'cannot write [what ]PATH: No space left on device (ENOSPC); ...': the file and the errno, on one line."""
    code = f" ({errno.errorcode[exc.errno]})" if exc.errno in errno.errorcode else ""
    return WriteError(f"cannot write {what}{path}: {exc.strerror or exc}{code}; free some space or fix permissions")


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file beside `path`; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode(path))  # mkstemp creates 0o600
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    try:
        with atomic_open(path, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        raise write_error(path, exc) from None


def append_line(path: Path, line: str) -> None:
    """Append one line whole or not at all: a failed write (disk full, file too large) is cut back off."""
    data = memoryview((line.rstrip("\n") + "\n").encode("utf-8"))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        size = os.fstat(fd).st_size
        while data:
            data = data[os.write(fd, data):]
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise write_error(path, exc) from None
    finally:
        os.close(fd)


# ------------------------------------------------------------------ strict JSON
def finite(value):
    """JSON-safe: NaN and infinities become None (null), recursively through dicts, lists and tuples."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def to_json(value, **options) -> str:
    """Strict JSON (never NaN or Infinity: those are written as null)."""
    return json.dumps(finite(value), allow_nan=False, **options)


def atomic_write_json(path: Path, value) -> None:
    atomic_write_text(path, to_json(value, indent=1) + "\n")


# ------------------------------------------------------------------ locks
class Locked(Exception):
    """Another process holds the lock; `holder` is the PID it wrote in the lock file ('' if unknown)."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


@contextlib.contextmanager
def exclusive_lock(path: Path, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created, holding this process's PID) inside the block.

    Another process holding it raises `Locked`, or with `wait` is waited for. The kernel releases the
    lock when its holder dies (kill -9 included); the file is removed on the way out.
    """
    if fcntl is None:
        yield
        return
    fd = _acquire(Path(path), wait)
    try:
        with contextlib.suppress(OSError):  # the PID is for messages only: a full disk must not stop the lock
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # before the unlock: a process that opened this file sees it is gone and retries
        os.close(fd)


def _acquire(path: Path, wait: bool) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            raise Locked(holder) from None
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return fd
        os.close(fd)  # the holder removed the file between our open and our lock: lock the new one


def remove_stale_temps(directory: Path, pattern: str = ".*.tmp") -> None:
    """Delete temp files that a killed writer left (call while holding the directory's lock)."""
    for tmp in Path(directory).glob(pattern):
        with contextlib.suppress(OSError):
            tmp.unlink()
