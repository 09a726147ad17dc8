"""bpttcli.download against a real HTTP server on 127.0.0.1 (no mocking of requests)."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rich.console import Console

from bpttcli.download import DEFAULT_SHA1, default_data_dir, fetch, sha1_of
from bpttcli.errors import DownloadError

BOOK = Path(__file__).resolve().parents[2] / "shared/data/timemachine.txt"
BODY = bytes(range(256)) * 400  # 100 KiB, several chunks
BODY_SHA1 = hashlib.sha1(BODY).hexdigest()
FAST = dict(retries=2, backoff=0.01, timeout=(1.0, 2.0), show_progress=False)


class QuietHTTPServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up (timeout tests) breaks the pipe; that is expected


class Server:
    """A local server whose responses per path are scripted as a list of (action, arg) steps."""

    def __init__(self) -> None:
        self.routes: dict[str, list[tuple[str, object]]] = {}
        self.hits: list[str] = []
        self.release = threading.Event()
        self.httpd = QuietHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server.hits.append(self.path)
                steps = server.routes.get(self.path, [("status", 404)])
                action, arg = steps.pop(0) if len(steps) > 1 else steps[0]
                if action == "status":
                    return self.send_error(arg)
                if action == "slow":  # wait before sending headers
                    server.release.wait(arg)
                    arg = BODY
                self.send_response(200)
                self.send_header("Content-Length", str(len(arg)))
                self.end_headers()
                if action in ("drop", "stall"):  # half the promised body, then close or hang
                    self.wfile.write(arg[: len(arg) // 2])
                    self.wfile.flush()
                    if action == "stall":
                        server.release.wait(5)
                    return
                self.wfile.write(arg)

        return Handler


@pytest.fixture
def server():
    s = Server()
    s.thread.start()
    yield s
    s.release.set()
    s.httpd.shutdown()
    s.httpd.server_close()
    s.thread.join(timeout=5)


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


def test_success_stores_file_and_leaves_no_temp(server, tmp_path):
    server.routes["/x.txt"] = [("ok", BODY)]
    path = fetch(server.url("/x.txt"), BODY_SHA1, tmp_path, **FAST)
    assert path == tmp_path / "x.txt"
    assert path.read_bytes() == BODY
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_real_book(server, tmp_path):
    if not BOOK.is_file():
        pytest.skip(f"{BOOK} not present")
    server.routes["/timemachine.txt"] = [("ok", BOOK.read_bytes())]
    path = fetch(server.url("/timemachine.txt"), DEFAULT_SHA1, tmp_path, **FAST)
    assert sha1_of(path) == DEFAULT_SHA1


def test_progress_bar_renders(server, tmp_path):
    server.routes["/x.txt"] = [("ok", BODY)]
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    fetch(server.url("/x.txt"), BODY_SHA1, tmp_path, **{**FAST, "show_progress": True}, console=console)
    assert "x.txt" in out.getvalue()


def test_cache_hit_makes_no_request(server, tmp_path):
    server.routes["/x.txt"] = [("ok", BODY)]
    first = fetch(server.url("/x.txt"), BODY_SHA1, tmp_path, **FAST)
    second = fetch(server.url("/x.txt"), BODY_SHA1, tmp_path, **FAST)
    assert first == second and len(server.hits) == 1


def test_corrupt_cache_is_redownloaded(server, tmp_path):
    server.routes["/x.txt"] = [("ok", BODY)]
    (tmp_path / "x.txt").write_bytes(b"stale")
    assert fetch(server.url("/x.txt"), BODY_SHA1, tmp_path, **FAST).read_bytes() == BODY
    assert len(server.hits) == 1


def test_no_sha1_skips_verification(server, tmp_path):
    server.routes["/"] = [("ok", b"anything")]
    path = fetch(server.url("/"), None, tmp_path, **FAST)
    assert path.name == "corpus.txt" and path.read_bytes() == b"anything"


def test_checksum_mismatch(server, tmp_path):
    server.routes["/x.txt"] = [("ok", BODY)]
    message = fails(server.url("/x.txt"), "0" * 40, tmp_path, **FAST)
    assert "0" * 40 in message and BODY_SHA1 in message
    assert list(tmp_path.iterdir()) == []


def test_404_is_not_retried(server, tmp_path):
    message = fails(server.url("/missing.txt"), None, tmp_path, **FAST)
    assert "404" in message and server.url("/missing.txt") in message
    assert len(server.hits) == 1
    assert list(tmp_path.iterdir()) == []


def test_500_then_success(server, tmp_path):
    server.routes["/x.txt"] = [("status", 500), ("ok", BODY)]
    assert fetch(server.url("/x.txt"), BODY_SHA1, tmp_path, **FAST).read_bytes() == BODY
    assert len(server.hits) == 2


def test_500_always_fails_after_retries(server, tmp_path):
    server.routes["/x.txt"] = [("status", 503)]
    message = fails(server.url("/x.txt"), BODY_SHA1, tmp_path, **FAST)
    assert "503" in message and server.url("/x.txt") in message and "3 attempts" in message
    assert len(server.hits) == FAST["retries"] + 1
    assert list(tmp_path.iterdir()) == []


def test_dropped_connection_fails_after_retries(server, tmp_path):
    server.routes["/x.txt"] = [("drop", BODY)]
    message = fails(server.url("/x.txt"), BODY_SHA1, tmp_path, **FAST)
    assert "dropped" in message and "--data" in message
    assert len(server.hits) == FAST["retries"] + 1
    assert list(tmp_path.iterdir()) == []


def test_dropped_once_then_success(server, tmp_path):
    server.routes["/x.txt"] = [("drop", BODY), ("ok", BODY)]
    assert fetch(server.url("/x.txt"), BODY_SHA1, tmp_path, **FAST).read_bytes() == BODY
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_slow_server_times_out(server, tmp_path):
    server.routes["/x.txt"] = [("slow", 5.0)]
    message = fails(server.url("/x.txt"), BODY_SHA1, tmp_path, **{**FAST, "retries": 1, "timeout": (1.0, 0.3)})
    assert "timed out after 0.3 s" in message
    assert len(server.hits) == 2
    assert list(tmp_path.iterdir()) == []


def test_stall_mid_body_times_out(server, tmp_path):
    server.routes["/x.txt"] = [("stall", BODY)]
    message = fails(server.url("/x.txt"), BODY_SHA1, tmp_path, **{**FAST, "retries": 0, "timeout": (1.0, 0.3)})
    assert "timed out after 0.3 s" in message
    assert list(tmp_path.iterdir()) == []


def test_connection_refused_suggests_local_copy(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/x.txt"
    message = fails(url, BODY_SHA1, tmp_path, **FAST)
    assert "--data PATH" in message and "refused" in message.lower()
    assert list(tmp_path.iterdir()) == []


def test_unwritable_data_dir(server, tmp_path):
    server.routes["/x.txt"] = [("ok", BODY)]
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    message = fails(server.url("/x.txt"), BODY_SHA1, blocker / "cache", **FAST)
    assert str(blocker / "cache") in message and "--data-dir" in message and "$BPTT_DATA_DIR" in message
    assert server.hits == []


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("BPTT_DATA_DIR", raising=False)
    assert default_data_dir() == Path("data")
    monkeypatch.setenv("BPTT_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
