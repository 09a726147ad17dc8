"""Shared fixtures: tiny corpora, the real book, the CLI runner and a scriptable local HTTP server."""

from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

BOOK = Path(__file__).resolve().parents[2] / "shared/data/timemachine.txt"
SAMPLE = "The Time Traveller (for so it will be convenient to speak of him) was expounding a recondite matter.\n"


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Run the suite on one intra-op thread: its tensors are tiny, and on a busy 2-core machine a
    second OpenMP thread makes each small op wait for a core (~70 ms per cross-entropy, not ~0.1 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def data_dir(tmp_path_factory):
    """Downloads and the prepared token cache go to one temporary directory, never ./data of the checkout."""
    path = tmp_path_factory.mktemp("data")
    saved = os.environ.get("BPTT_DATA_DIR")
    os.environ["BPTT_DATA_DIR"] = str(path)
    yield path
    if saved is None:
        del os.environ["BPTT_DATA_DIR"]
    else:
        os.environ["BPTT_DATA_DIR"] = saved


@pytest.fixture
def tiny_corpus(tmp_path):
    """Factory: write `text` (str, encoded UTF-8, optional BOM; or raw bytes) to a file and return its path."""

    def write(text: str | bytes = SAMPLE * 4, name: str = "tiny.txt", bom: bool = False) -> Path:
        path = tmp_path / name
        data = text if isinstance(text, bytes) else text.encode("utf-8")
        path.write_bytes(b"\xef\xbb\xbf" * bom + data)
        return path

    return write


@pytest.fixture(scope="session")
def book() -> Path:
    """The Time Machine from ../shared/data; tests that need it skip when it is absent."""
    if not BOOK.is_file():
        pytest.skip(f"{BOOK} not present")
    return BOOK


@pytest.fixture
def cli_runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def bptt(cli_runner, tmp_path, monkeypatch):
    """Run `bptt ARGS` in tmp_path (no stray runs/ or data/), assert the exit code, return the Result.

    An unexpected exception (which a user would see as a traceback) fails the test.
    """
    from bpttcli.cli import app  # here, so that a broken CLI fails only the tests that use it

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BPTT_DATA_DIR", str(tmp_path / "data"))

    def invoke(*args, code: int = 0) -> Result:
        result = cli_runner.invoke(app, [str(a) for a in args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        assert "Traceback" not in result.output
        assert result.exit_code == code, result.output
        return result

    return invoke


@pytest.fixture
def bptt_error(bptt):
    """Run `bptt ARGS`, expect exit `code` and one error line, the last of the output; return that line.

    With `alone`, that line must be the whole output (an error before any work started).
    """

    def invoke(*args, code: int, alone: bool = False) -> str:
        lines = bptt(*args, code=code).output.strip().splitlines()
        assert lines and [line for line in lines if line.startswith("error: ")] == lines[-1:], lines
        assert len(lines) == 1 or not alone, lines
        return lines[-1]

    return invoke


class QuietHTTPServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up (timeout tests) breaks the pipe; that is expected


class Server:
    """A local server whose responses per path are scripted as a list of (action, arg) steps.

    Actions: ("ok", body), ("status", code), ("slow", (seconds, body)) waits before the headers,
    ("drop", body) / ("stall", body) send half the body, then close or hang, ("trickle", (size, pause, body))
    sends `size` bytes every `pause` seconds. The last step repeats.
    """

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
                if action == "slow":
                    seconds, arg = arg
                    server.release.wait(seconds)
                if action == "trickle":
                    size, pause, arg = arg
                self.send_response(200)
                self.send_header("Content-Length", str(len(arg)))
                self.end_headers()
                if action == "trickle":
                    for start in range(0, len(arg), size):
                        if server.release.wait(pause):
                            return
                        try:
                            self.wfile.write(arg[start : start + size])
                            self.wfile.flush()
                        except OSError:  # the client gave up
                            return
                    return
                if action in ("drop", "stall"):
                    self.wfile.write(arg[: len(arg) // 2])
                    self.wfile.flush()
                    if action == "stall":
                        server.release.wait(5)
                    return
                self.wfile.write(arg)

        return Handler


@pytest.fixture
def http_server():
    s = Server()
    s.thread.start()
    yield s
    s.release.set()
    s.httpd.shutdown()
    s.httpd.server_close()
    s.thread.join(timeout=5)
