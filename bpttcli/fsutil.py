"""Atomic file writes: a temp file in the same directory, fsync, then rename."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from datetime import datetime
from pathlib import Path
from typing import IO, Iterator

from .errors import BpttError

_UMASK = os.umask(0)
os.umask(_UMASK)


def _file_mode(path: Path) -> int:
    """An existing file's permissions, else what open() would give a new one (0o666 minus the umask)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_UMASK


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
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)
