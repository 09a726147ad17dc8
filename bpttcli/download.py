"""Fetch the Time Machine corpus over HTTP: stream, verify SHA-1, cache atomically.

A download that outlasts `deadline` seconds (all attempts together) or averages under `min_rate`
bytes/s over `rate_window` seconds stops with a one-line error; one process at a time writes a cache
file (a lock beside it), and removes the temp files a killed download left.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path, PurePosixPath
from typing import Iterator
from urllib.parse import urlparse

import requests
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn
from urllib3.exceptions import DecodeError, ProtocolError, ReadTimeoutError

from .config import DEFAULT_SHA1, DEFAULT_URL, check_sha1  # the book: the config's default corpus
from .errors import DownloadError
from .fsutil import atomic_open, ensure_dir, exclusive_lock, remove_stale_temps, sha1_of

LOCAL_HINT = "train on a local copy with --data PATH"
WRITABLE_HINT = "choose a writable directory with --data-dir or $BPTT_DATA_DIR"
CHUNK = 1 << 16

Timeout = float | tuple[float, float]


def default_data_dir() -> Path:
    """The cache directory: $BPTT_DATA_DIR if set, else ./data."""
    return Path(os.environ.get("BPTT_DATA_DIR") or "data").expanduser()


def fetch(
    url: str = DEFAULT_URL,
    sha1: str | None = DEFAULT_SHA1,
    data_dir: Path | str | None = None,
    *,
    timeout: Timeout = (5.0, 30.0),
    retries: int = 3,
    backoff: float = 0.5,
    deadline: float = 600.0,
    min_rate: float = 1000.0,
    rate_window: float = 30.0,
    show_progress: bool = True,
    console: Console | None = None,
) -> Path:
    """Return the cached corpus at `url`, downloading and verifying it first if needed."""
    check_sha1(sha1)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    path = data_dir / (PurePosixPath(urlparse(url).path).name or "corpus.txt")
    sha1 = (sha1 or "").strip().lower() or None
    if _cached(path, sha1):
        return path
    try:
        ensure_dir(data_dir, DownloadError)
    except DownloadError as exc:
        raise DownloadError(f"{exc} with --data-dir or $BPTT_DATA_DIR") from None
    with exclusive_lock(data_dir / f".{path.name}.lock", wait=True):
        if _cached(path, sha1):  # another process fetched it while this one waited
            return path
        pace = Pace(url, deadline, min_rate, rate_window)
        remove_stale_temps(data_dir, f".{path.name}.*.tmp")
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=console, disable=not show_progress) as progress:
            task = progress.add_task(f"downloading {path.name}", total=None)
            attempt = 1
            while True:
                try:
                    _download(url, sha1, path, timeout, progress, task, pace)
                    return path
                except requests.RequestException as exc:
                    if not _retryable(exc) or attempt > retries:
                        raise DownloadError(_message(exc, url, timeout, attempt)) from exc
                except OSError as exc:  # after RequestException, which subclasses OSError
                    raise DownloadError(f"cannot write {path}: {exc.strerror or exc}; {WRITABLE_HINT}") from exc
                pace.sleep(backoff * 2 ** (attempt - 1))
                attempt += 1


def _cached(path: Path, sha1: str | None) -> bool:
    return path.is_file() and (sha1 is None or sha1_of(path) == sha1)


class Pace:
    """The limits of one fetch: a deadline for all attempts together, and a minimum average rate."""

    def __init__(self, url: str, deadline: float, min_rate: float, window: float):
        self.url, self.deadline, self.min_rate, self.window = url, deadline, min_rate, window
        self.ends = time.monotonic() + deadline
        self.start_window(0)

    def start_window(self, received: int) -> None:
        self.window_start, self.window_bytes = time.monotonic(), received

    def check(self, received: int) -> None:
        """Stop a download past the deadline or slower than the minimum rate over the last window."""
        now = time.monotonic()
        if now > self.ends:
            raise DownloadError(f"download of {self.url} took longer than {self.deadline:g} s; retry later or "
                                f"{LOCAL_HINT}")
        if now - self.window_start >= self.window:
            rate = (received - self.window_bytes) / (now - self.window_start)
            if rate < self.min_rate:
                raise DownloadError(f"download of {self.url} is too slow ({rate:,.0f} B/s over {self.window:g} s, "
                                    f"under {self.min_rate:,.0f} B/s); retry later or {LOCAL_HINT}")
            self.start_window(received)

    def sleep(self, seconds: float) -> None:
        """Back off before a retry, within the deadline."""
        if time.monotonic() + seconds > self.ends:
            raise DownloadError(f"download of {self.url} did not finish within {self.deadline:g} s; retry later or "
                                f"{LOCAL_HINT}")
        time.sleep(seconds)


def _download(url: str, sha1: str | None, path: Path, timeout: Timeout, progress: Progress, task: TaskID,
              pace: Pace) -> None:
    """One streaming attempt: write `url` to `path` atomically, checking the hash before the rename."""
    with requests.get(url, stream=True, timeout=timeout) as r:
        r.raise_for_status()
        total = int(r.headers["Content-Length"]) if r.headers.get("Content-Length", "").isdigit() else None
        progress.reset(task, total=total, completed=0)
        h, received = hashlib.sha1(), 0
        pace.start_window(0)
        with atomic_open(path, "wb") as f:
            for chunk in _arriving(r):
                f.write(chunk)
                h.update(chunk)
                received += len(chunk)
                progress.advance(task, len(chunk))
                pace.check(received)
            if sha1 is not None and h.hexdigest() != sha1:
                raise DownloadError(
                    f"checksum mismatch for {url}: expected sha1 {sha1}, got {h.hexdigest()}; "
                    f"check the URL and checksum or {LOCAL_HINT}"
                )


def _arriving(r: requests.Response) -> Iterator[bytes]:
    """The body as it arrives: one read of the socket at a time (at most CHUNK bytes), so that a slow server
    still advances the progress bar and meets the deadline checks; urllib3's errors as requests raises them."""
    if not hasattr(r.raw, "read1"):  # urllib3 < 2
        yield from r.iter_content(CHUNK)
        return
    try:
        while chunk := r.raw.read1(CHUNK, decode_content=True):
            yield chunk
    except ProtocolError as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from exc
    except ReadTimeoutError as exc:
        raise requests.exceptions.ConnectionError(exc) from exc
    except DecodeError as exc:
        raise requests.exceptions.ContentDecodingError(exc) from exc


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
