"""bpttcli.download against a real HTTP server on 127.0.0.1 (no mocking of requests)."""

from __future__ import annotations

import hashlib
import io
import socket
import time
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress

from bpttcli.download import DEFAULT_SHA1, default_data_dir, fetch
from bpttcli.fsutil import sha1_of
from bpttcli.errors import ConfigError, DownloadError

BODY = bytes(range(256)) * 400  # 100 KiB, several chunks
BODY_SHA1 = hashlib.sha1(BODY).hexdigest()
FAST = dict(retries=2, backoff=0.01, timeout=(1.0, 2.0), show_progress=False)


def fails(*args, **kwargs) -> str:
    """Run fetch, expect a DownloadError, and return its message (always one line)."""
    with pytest.raises(DownloadError) as info:
        fetch(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_success_stores_file_and_leaves_no_temp(http_server, tmp_path):
    http_server.routes["/x.txt"] = [("ok", BODY)]
    path = fetch(http_server.url("/x.txt"), BODY_SHA1, tmp_path, **FAST)
    assert path == tmp_path / "x.txt"
    assert path.read_bytes() == BODY
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_real_book(http_server, tmp_path, book):
    http_server.routes["/timemachine.txt"] = [("ok", book.read_bytes())]
    path = fetch(http_server.url("/timemachine.txt"), DEFAULT_SHA1, tmp_path, **FAST)
    assert sha1_of(path) == DEFAULT_SHA1


def test_progress_bar_renders(http_server, tmp_path):
    http_server.routes["/x.txt"] = [("ok", BODY)]
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    fetch(http_server.url("/x.txt"), BODY_SHA1, tmp_path, **{**FAST, "show_progress": True}, console=console)
    assert "x.txt" in out.getvalue()


def test_cache_hit_makes_no_request(http_server, tmp_path):
    http_server.routes["/x.txt"] = [("ok", BODY)]
    first = fetch(http_server.url("/x.txt"), BODY_SHA1, tmp_path, **FAST)
    second = fetch(http_server.url("/x.txt"), BODY_SHA1, tmp_path, **FAST)
    assert first == second and len(http_server.hits) == 1


def test_corrupt_cache_is_redownloaded(http_server, tmp_path):
    http_server.routes["/x.txt"] = [("ok", BODY)]
    (tmp_path / "x.txt").write_bytes(b"stale")
    assert fetch(http_server.url("/x.txt"), BODY_SHA1, tmp_path, **FAST).read_bytes() == BODY
    assert len(http_server.hits) == 1


def test_no_sha1_skips_verification(http_server, tmp_path):
    http_server.routes["/"] = [("ok", b"anything")]
    path = fetch(http_server.url("/"), None, tmp_path, **FAST)
    assert path.name == "corpus.txt" and path.read_bytes() == b"anything"


@pytest.mark.parametrize("expected", [BODY_SHA1.upper(), f"  {BODY_SHA1}\n", f"\t{BODY_SHA1.upper()} "],
                         ids=["upper-case", "whitespace", "both"])
def test_sha1_is_case_insensitive_and_whitespace_stripped(http_server, tmp_path, expected):
    http_server.routes["/x.txt"] = [("ok", BODY)]
    assert fetch(http_server.url("/x.txt"), expected, tmp_path, **FAST).read_bytes() == BODY
    assert fetch(http_server.url("/x.txt"), expected, tmp_path, **FAST) == tmp_path / "x.txt"  # a cache hit
    assert len(http_server.hits) == 1 and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


@pytest.mark.parametrize("expected", ["", "  "], ids=["empty", "blank"])
def test_empty_sha1_skips_verification(http_server, tmp_path, expected):
    http_server.routes["/x.txt"] = [("ok", b"anything")]
    assert fetch(http_server.url("/x.txt"), expected, tmp_path, **FAST).read_bytes() == b"anything"


def test_checksum_mismatch(http_server, tmp_path):
    http_server.routes["/x.txt"] = [("ok", BODY)]
    message = fails(http_server.url("/x.txt"), "0" * 40, tmp_path, **FAST)
    assert "0" * 40 in message and BODY_SHA1 in message
    assert list(tmp_path.iterdir()) == []


def test_404_is_not_retried(http_server, tmp_path):
    message = fails(http_server.url("/missing.txt"), None, tmp_path, **FAST)
    assert "404" in message and http_server.url("/missing.txt") in message
    assert len(http_server.hits) == 1
    assert list(tmp_path.iterdir()) == []


def test_500_then_success(http_server, tmp_path):
    http_server.routes["/x.txt"] = [("status", 500), ("ok", BODY)]
    assert fetch(http_server.url("/x.txt"), BODY_SHA1, tmp_path, **FAST).read_bytes() == BODY
    assert len(http_server.hits) == 2


def test_500_always_fails_after_retries(http_server, tmp_path):
    http_server.routes["/x.txt"] = [("status", 503)]
    message = fails(http_server.url("/x.txt"), BODY_SHA1, tmp_path, **FAST)
    assert "503" in message and http_server.url("/x.txt") in message and "3 attempts" in message
    assert len(http_server.hits) == FAST["retries"] + 1
    assert list(tmp_path.iterdir()) == []


def test_dropped_connection_fails_after_retries(http_server, tmp_path):
    http_server.routes["/x.txt"] = [("drop", BODY)]
    message = fails(http_server.url("/x.txt"), BODY_SHA1, tmp_path, **FAST)
    assert "dropped" in message and "--data" in message
    assert len(http_server.hits) == FAST["retries"] + 1
    assert list(tmp_path.iterdir()) == []


def test_dropped_once_then_success(http_server, tmp_path):
    http_server.routes["/x.txt"] = [("drop", BODY), ("ok", BODY)]
    assert fetch(http_server.url("/x.txt"), BODY_SHA1, tmp_path, **FAST).read_bytes() == BODY
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_slow_server_times_out(http_server, tmp_path):
    http_server.routes["/x.txt"] = [("slow", (5.0, BODY))]
    message = fails(http_server.url("/x.txt"), BODY_SHA1, tmp_path, **{**FAST, "retries": 1, "timeout": (1.0, 0.3)})
    assert "timed out after 0.3 s" in message
    assert len(http_server.hits) == 2
    assert list(tmp_path.iterdir()) == []


def test_stall_mid_body_times_out(http_server, tmp_path):
    http_server.routes["/x.txt"] = [("stall", BODY)]
    message = fails(http_server.url("/x.txt"), BODY_SHA1, tmp_path, **{**FAST, "retries": 0, "timeout": (1.0, 0.3)})
    assert "timed out after 0.3 s" in message
    assert list(tmp_path.iterdir()) == []


def test_connection_refused_suggests_local_copy(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/x.txt"
    message = fails(url, BODY_SHA1, tmp_path, **FAST)
    assert "--data PATH" in message and "refused" in message.lower()
    assert list(tmp_path.iterdir()) == []


def test_unwritable_data_dir(http_server, tmp_path):
    http_server.routes["/x.txt"] = [("ok", BODY)]
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    message = fails(http_server.url("/x.txt"), BODY_SHA1, blocker / "cache", **FAST)
    assert str(blocker / "cache") in message and "--data-dir" in message and "$BPTT_DATA_DIR" in message
    assert http_server.hits == []


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("BPTT_DATA_DIR", raising=False)
    assert default_data_dir() == Path("data")
    monkeypatch.setenv("BPTT_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path


# ------------------------------------------------------------------ slow servers, bad checksums, stale files
def test_a_trickle_stops_at_the_deadline_without_retrying(http_server, tmp_path):
    http_server.routes["/x.txt"] = [("trickle", (100, 0.05, BODY))]  # 2 kB/s: 50 s for the body
    started = time.monotonic()
    message = fails(http_server.url("/x.txt"), BODY_SHA1, tmp_path, **{**FAST, "deadline": 1.0, "min_rate": 0})
    assert "took longer than 1 s" in message and "--data" in message
    assert time.monotonic() - started < 5 and len(http_server.hits) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_trickle_under_the_minimum_rate_stops(http_server, tmp_path):
    http_server.routes["/x.txt"] = [("trickle", (100, 0.05, BODY))]
    message = fails(http_server.url("/x.txt"), BODY_SHA1, tmp_path,
                    **{**FAST, "min_rate": 10_000, "rate_window": 0.5})
    assert "is too slow" in message and "under 10,000 B/s" in message
    assert list(tmp_path.iterdir()) == []


def test_progress_advances_at_least_every_second_on_a_slow_server(http_server, tmp_path, monkeypatch):
    body = BODY[:3000]
    http_server.routes["/x.txt"] = [("trickle", (100, 0.05, body))]  # 1.5 s, less than one 64 KiB read
    advances = []
    real = Progress.advance
    monkeypatch.setattr(Progress, "advance",
                        lambda self, task, n: advances.append(time.monotonic()) or real(self, task, n))
    started = time.monotonic()
    fetch(http_server.url("/x.txt"), hashlib.sha1(body).hexdigest(), tmp_path, **FAST)
    gaps = [b - a for a, b in zip([started] + advances, advances)]
    assert len(advances) >= 3 and max(gaps) < 1.0, gaps


@pytest.mark.parametrize("sha1", ["xyz", BODY_SHA1[:-1], BODY_SHA1 + "0", "g" * 40])
def test_a_malformed_sha1_is_refused_before_any_request(http_server, tmp_path, sha1):
    http_server.routes["/x.txt"] = [("ok", BODY)]
    with pytest.raises(ConfigError, match="must be 40 hexadecimal digits"):
        fetch(http_server.url("/x.txt"), sha1, tmp_path / "cache", **FAST)
    assert http_server.hits == [] and not (tmp_path / "cache").exists()


def test_temp_files_of_a_killed_download_are_removed_by_the_next(http_server, tmp_path):
    (tmp_path / ".x.txt.k1ll3d.tmp").write_bytes(BODY[:1000])
    (tmp_path / ".other.txt.abc.tmp").write_bytes(b"another file's download")
    http_server.routes["/x.txt"] = [("ok", BODY)]
    fetch(http_server.url("/x.txt"), BODY_SHA1, tmp_path, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.txt.abc.tmp", "x.txt"]
