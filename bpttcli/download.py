"""Fetch the Time Machine corpus over HTTP: stream, verify SHA-1, cache atomically."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import requests
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn
from urllib3.exceptions import ReadTimeoutError

from .config import DEFAULT_SHA1, DEFAULT_URL  # the book: the config's default corpus
from .errors import DownloadError
from .fsutil import atomic_open, ensure_dir

LOCAL_HINT = "train on a local copy with --data PATH"
WRITABLE_HINT = "choose a writable directory with --data-dir or $BPTT_DATA_DIR"
CHUNK = 1 << 16

Timeout = float | tuple[float, float]


def default_data_dir() -> Path:
    """The cache directory: $BPTT_DATA_DIR if set, else ./data."""
    return Path(os.environ.get("BPTT_DATA_DIR") or "data").expanduser()


def sha1_of(path: Path) -> str:
    """The hex SHA-1 of a file's bytes."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(
    url: str = DEFAULT_URL,
    sha1: str | None = DEFAULT_SHA1,
    data_dir: Path | str | None = None,
    *,
    timeout: Timeout = (5.0, 30.0),
    retries: int = 3,
    backoff: float = 0.5,
    show_progress: bool = True,
    console: Console | None = None,
) -> Path:
    """Return the cached corpus at `url`, downloading and verifying it first if needed."""
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    path = data_dir / (PurePosixPath(urlparse(url).path).name or "corpus.txt")
    sha1 = (sha1 or "").strip().lower() or None
    if path.is_file() and (sha1 is None or sha1_of(path) == sha1):
        return path
    try:
        ensure_dir(data_dir, DownloadError)
    except DownloadError as exc:
        raise DownloadError(f"{exc} with --data-dir or $BPTT_DATA_DIR") from None
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=console, disable=not show_progress) as progress:
        task = progress.add_task(f"downloading {path.name}", total=None)
        attempt = 1
        while True:
            try:
                _download(url, sha1, path, timeout, progress, task)
                return path
            except requests.RequestException as exc:
                if not _retryable(exc) or attempt > retries:
                    raise DownloadError(_message(exc, url, timeout, attempt)) from exc
            except OSError as exc:  # after RequestException, which subclasses OSError
                raise DownloadError(f"cannot write {path}: {exc.strerror or exc}; {WRITABLE_HINT}") from exc
            time.sleep(backoff * 2 ** (attempt - 1))
            attempt += 1


def _download(url: str, sha1: str | None, path: Path, timeout: Timeout, progress: Progress, task: TaskID) -> None:
    """One streaming attempt: write `url` to `path` atomically, checking the hash before the rename."""
    with requests.get(url, stream=True, timeout=timeout) as r:
        r.raise_for_status()
        total = int(r.headers["Content-Length"]) if r.headers.get("Content-Length", "").isdigit() else None
        progress.reset(task, total=total, completed=0)
        h = hashlib.sha1()
        with atomic_open(path, "wb") as f:
            for chunk in r.iter_content(CHUNK):
                f.write(chunk)
                h.update(chunk)
                progress.advance(task, len(chunk))
            if sha1 is not None and h.hexdigest() != sha1:
                raise DownloadError(
                    f"checksum mismatch for {url}: expected sha1 {sha1}, got {h.hexdigest()}; "
                    f"check the URL and checksum or {LOCAL_HINT}"
                )


def _retryable(exc: requests.RequestException) -> bool:
    """Connection failures, timeouts, dropped bodies and HTTP 5xx are worth another try."""
    if isinstance(exc, requests.HTTPError):
        return exc.response is not None and exc.response.status_code >= 500
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError))


def _timed_out(exc: requests.RequestException) -> bool:
    """True for timeouts, including a read timeout raised mid-body (wrapped in ConnectionError)."""
    return isinstance(exc, requests.Timeout) or bool(exc.args and isinstance(exc.args[0], ReadTimeoutError))


def _message(exc: requests.RequestException, url: str, timeout: Timeout, attempts: int) -> str:
    """A one-line message naming the problem and the fix."""
    after = f" after {attempts} attempts" if attempts > 1 else ""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        r = exc.response
        fix = "retry later" if r.status_code >= 500 else "check the URL"
        return f"HTTP {r.status_code} {r.reason} from {url}{after}; {fix} or {LOCAL_HINT}"
    if _timed_out(exc):
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        seconds = connect if isinstance(exc, requests.ConnectTimeout) else read
        return f"download of {url} timed out after {seconds:g} s{after}; check your network or {LOCAL_HINT}"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return f"connection dropped mid-download of {url}{after}; retry later or {LOCAL_HINT}"
    if isinstance(exc, requests.ConnectionError):
        return f"cannot connect to {url} ({_reason(exc)}){after}; check your network or {LOCAL_HINT}"
    return f"cannot download {url} ({_reason(exc)}); check the URL or {LOCAL_HINT}"


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests/urllib3 error, on one line."""
    while exc.args and isinstance(exc.args[0], BaseException):
        exc = exc.args[0]
    inner = getattr(exc, "reason", None)
    if isinstance(inner, BaseException):
        exc = inner
    text = str(exc).rsplit(": ", 1)[-1] if ": " in str(exc) else str(exc) or type(exc).__name__
    return " ".join(text.split())
