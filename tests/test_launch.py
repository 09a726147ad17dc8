"""bpttcli.launch: what torchrun gives a process, and the one-line failures of joining its group."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env(monkeypatch, rank: int = 0, port: int | None = None, **extra) -> None:
    """This process as rank `rank` of 2, as torchrun would start it."""
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port or free_port()), "RANK": str(rank),
           "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", **extra}
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def test_a_rank_that_cannot_reach_the_group_fails_in_one_line_after_the_timeout(bptt_error, monkeypatch, tiny_corpus,
                                                                                 tmp_path):
    port = free_port()
    torchrun_env(monkeypatch, rank=1, port=port, BPTT_DIST_TIMEOUT="1")
    started = time.monotonic()
    line = bptt_error("train", "--data", tiny_corpus(), "-b", 4, "--run-dir", tmp_path / "run", code=7, alone=True)
    assert f"rank 1 could not join the process group at 127.0.0.1:{port} within 1 s" in line
    assert "raise BPTT_DIST_TIMEOUT" in line and time.monotonic() - started < 30


def test_a_bad_timeout_is_a_usage_error(bptt_error, monkeypatch, tiny_corpus, tmp_path):
    torchrun_env(monkeypatch, BPTT_DIST_TIMEOUT="soon")
    line = bptt_error("train", "--data", tiny_corpus(), "-b", 4, "--run-dir", tmp_path / "run", code=2, alone=True)
    assert "BPTT_DIST_TIMEOUT='soon' is not a number of seconds > 0" in line


def test_restarts_across_machines_need_torchruns_store_per_round(bptt_error, monkeypatch, tiny_corpus, tmp_path):
    torchrun_env(monkeypatch, LOCAL_WORLD_SIZE="1", TORCHELASTIC_USE_AGENT_STORE="True", TORCHELASTIC_MAX_RESTARTS="2")
    line = bptt_error("train", "--data", tiny_corpus(), "-b", 4, "--run-dir", tmp_path / "run", code=2, alone=True)
    assert "needs TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in line


ENDS = """
import atexit, sys
from bpttcli.launch import run_and_exit
atexit.register(lambda: print("interpreter shutdown ran"))
run_and_exit(lambda: (print("trained", end=""), sys.stderr.write("warned"), sys.exit({code!r})))
"""


@pytest.mark.parametrize("code, returncode, stderr", [(None, 0, "warned"), (143, 143, "warned"),
                                                      ("error: bad", 1, "warnederror: bad\n")])
def test_a_launched_process_ends_with_its_exit_code_and_output_but_no_interpreter_shutdown(code, returncode, stderr):
    """After a launched command, the process exits at once (gloo's threads could abort the interpreter's
    shutdown, and torchrun would report a finished run as failed), its output flushed and its code kept."""
    done = subprocess.run([sys.executable, "-c", ENDS.format(code=code)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (returncode, "trained", stderr)
