"""bpttcli.train in the real world: SIGTERM and SIGHUP, kill -9, a full disk, a run that died before its first
checkpoint, a corpus or run directory that moved, a damaged metrics file. Real processes where it matters."""

from __future__ import annotations

import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from bpttcli import checkpoint
from bpttcli.config import read_yaml
from bpttcli.errors import Interrupted
from bpttcli.train import resume, train
from tiny_run import TEXT, TIMING, TINY_ARGS, Signals, SilentView, config, write_corpus

ENDLESS = ("--max-steps", 100_000, "--epochs", 10**6)  # a run that only a signal or a fault ends


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def metrics(run_dir) -> list[dict]:
    """metrics.jsonl without its timings, parsed strictly (NaN or Infinity fail the test)."""
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line, parse_constant=pytest.fail) for line in lines]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def snapshot(run) -> dict:
    return {p.name: p.read_bytes() for p in run.iterdir()}


def bptt_process(*args, **popen) -> subprocess.Popen:
    """`bptt ARGS` in a real process, as the installed script runs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **popen.pop("env", {})}
    return subprocess.Popen([sys.executable, "-m", "bpttcli", *map(str, args)], env=env, **popen)


def wait_for(condition, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, "the process ended early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class CrashAt(SilentView):
    """The process 'dies' (an exception, no checkpoint of its own)."""

    def act(self) -> None:
        raise RuntimeError("crash")


# ------------------------------------------------------------------ signals
def drain(fd: int, into: bytearray) -> None:
    while True:
        try:
            data = os.read(fd, 1 << 16)
        except OSError:  # EIO: the process and its terminal are gone
            return
        if not data:
            return
        into += data


def test_sigterm_saves_prints_the_resume_command_restores_the_cursor_and_exits_143(corpus, tmp_path):
    """On a terminal (a pty), as `docker stop` or a scheduler would stop it."""
    run = tmp_path / "run"
    terminal, child_side = pty.openpty()
    proc = bptt_process("train", "--data", corpus, *TINY_ARGS, *ENDLESS, "--log-every", 5, "--eval-every", 0,
                        "--run-dir", run, stdin=child_side, stdout=child_side, stderr=child_side,
                        env={"TERM": "xterm", "COLUMNS": "300"})
    os.close(child_side)
    screen = bytearray()
    reader = threading.Thread(target=drain, args=(terminal, screen), daemon=True)
    reader.start()
    try:
        wait_for(lambda: (run / "metrics.jsonl").exists(), proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        proc.kill()
        os.close(terminal)
    text = screen.decode("utf-8", "replace")
    assert proc.returncode == 143, text
    step = checkpoint.load(run / "last.pt")["step"]
    assert f"interrupted (SIGTERM) at step {step}; checkpoint saved; resume with: bptt train --resume {run}" in text
    assert "Traceback" not in text
    assert b"\x1b[?25l" in screen and screen.rindex(b"\x1b[?25h") > screen.rindex(b"\x1b[?25l")  # cursor shown again
    resume(run, {"train.max_steps": step + 2}, quiet=True)
    assert metrics(run)[-1]["step"] == step + 2


def test_sighup_stops_like_ctrl_c_with_exit_code_129_and_resumes_exactly(corpus, tmp_path):
    seen = []
    before = signal.signal(signal.SIGHUP, lambda signum, frame: seen.append(signum))  # were it unhandled: no kill
    try:
        with pytest.raises(Interrupted, match=r"interrupted \(SIGHUP\) at step 7; .*bptt train --resume") as caught:
            train(config(corpus, train__max_steps=20), tmp_path / "run", view=Signals(70, signal.SIGHUP))
        assert caught.value.exit_code == 129 and seen == []
        assert signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL  # the test's handler is back
    finally:
        signal.signal(signal.SIGHUP, before)
    assert checkpoint.load(tmp_path / "run" / "last.pt")["step"] == 7
    resume(tmp_path / "run", quiet=True)
    train(config(corpus, train__max_steps=20), tmp_path / "reference", quiet=True)
    assert metrics(tmp_path / "run") == metrics(tmp_path / "reference")


# ------------------------------------------------------------------ kill -9 and periodic checkpoints
def test_a_periodic_checkpoint_resumes_exactly(corpus, tmp_path):
    """A checkpoint after every update (a tiny period), then a crash without any checkpoint of its own."""
    run, flags = tmp_path / "run", {"train__eval_every": 0, "train__max_steps": 20}
    with pytest.raises(RuntimeError, match="crash"):
        train(config(corpus, train__checkpoint_every=1e-9, **flags), run, view=CrashAt(95))
    assert checkpoint.load(run / "last.pt")["step"] == 9  # the crash came during update 10
    resume(run, quiet=True)
    train(config(corpus, **flags), tmp_path / "reference", quiet=True)
    assert metrics(run) == metrics(tmp_path / "reference")


def test_kill_9_loses_at_most_the_checkpoint_period_and_resume_is_exact(corpus, tmp_path):
    run = tmp_path / "run"
    proc = bptt_process("train", "--data", corpus, *TINY_ARGS, *ENDLESS, "--log-every", 5, "--eval-every", 0,
                        "--set", "train.checkpoint_every=0.2", "--run-dir", run, "-q",
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    steps = set()
    try:
        def two_checkpoints() -> bool:  # the period, not an evaluation, wrote them (--eval-every 0)
            if (run / "last.pt").exists():
                steps.add(checkpoint.load(run / "last.pt")["step"])
            return len(steps) >= 2

        wait_for(two_checkpoints, proc)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    stopped = checkpoint.load(run / "last.pt")["step"]
    resume(run, {"train.max_steps": stopped + 7}, quiet=True)
    assert not list(run.glob(".*.tmp")) and not (run / ".lock").exists()
    flags = {"train__log_every": 5, "train__eval_every": 0, "train__epochs": 10**6}
    train(config(corpus, train__max_steps=stopped + 7, **flags), tmp_path / "reference", quiet=True)
    assert metrics(run) == metrics(tmp_path / "reference")


# ------------------------------------------------------------------ a full disk
DISK_LIMIT = 4000  # bytes any one file may grow to: config.yaml fits, metrics.jsonl fills after ~10 lines
LIMITED = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, ({DISK_LIMIT}, {DISK_LIMIT}))
from bpttcli.__main__ import main
main()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
def test_a_full_disk_is_one_line_exit_5_and_leaves_whole_json_lines(bptt, corpus, tmp_path):
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", LIMITED, "train", "--data", str(corpus), *map(str, TINY_ARGS), *map(str, ENDLESS),
         "--log-every", "1", "--eval-every", "0", "--set", "train.checkpoint_every=0", "--run-dir", str(run), "-q"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert done.returncode == 5, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: cannot write {run / 'metrics.jsonl'}: File too large (EFBIG); free some space or fix permissions; "
        f"then start again with --run-dir {run}"]
    lines = metrics(run)  # every line whole and strict
    assert len(lines) >= 5 and [r["step"] for r in lines] == list(range(1, len(lines) + 1))
    assert (run / "metrics.jsonl").stat().st_size <= DISK_LIMIT
    # the directory is not a dead end: a fresh start reuses it
    bptt("train", "--data", corpus, *TINY_ARGS, "--max-steps", 3, "--run-dir", run, "-q")
    assert [r["step"] for r in metrics(run) if r["kind"] == "train"] == [3]


# ------------------------------------------------------------------ directories that used to be dead ends
def test_a_run_that_died_before_its_first_checkpoint_can_be_started_again(bptt, bptt_error, corpus, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="crash"):
        train(config(corpus, train__max_steps=20, train__eval_every=0), run, view=CrashAt(95))
    assert {p.name for p in run.iterdir()} == {"config.yaml", "metrics.jsonl"} and metrics(run)
    assert "has no last.pt to resume from" in bptt_error("train", "--resume", run, code=5)
    bptt("train", "--data", corpus, *TINY_ARGS, "--max-steps", 6, "--log-every", 4, "--eval-every", 6,
         "--run-dir", run, "-q")
    train(config(corpus, train__max_steps=6), tmp_path / "reference", quiet=True)
    assert metrics(run) == metrics(tmp_path / "reference")  # nothing left of the crashed run


# ------------------------------------------------------------------ a run or corpus that moved
def test_resume_from_another_directory_and_after_moving_the_run_and_its_corpus(bptt, bptt_error, tmp_path,
                                                                                  monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "tiny.txt").write_text(TEXT, encoding="utf-8")
    monkeypatch.chdir(project)
    bptt("train", "--data", "tiny.txt", *TINY_ARGS, "--max-steps", 6, "--run-dir", "runs/r", "-q")
    assert read_yaml(project / "runs/r/config.yaml")["data"]["path"] == str(project / "tiny.txt")

    monkeypatch.chdir(tmp_path)
    bptt("train", "--resume", "project/runs/r", "--max-steps", 8, "-q")
    assert metrics(project / "runs/r")[-1]["step"] == 8

    moved = tmp_path / "elsewhere"
    shutil.move(project, moved)
    run = moved / "runs" / "r"
    assert "--data" in bptt_error("train", "--resume", run, "--max-steps", 10, "-q", code=3)
    bptt("train", "--resume", run, "--data", moved / "tiny.txt", "--max-steps", 10, "-q")
    assert metrics(run)[-1]["step"] == 10
    assert read_yaml(run / "config.yaml")["data"]["path"] == str(moved / "tiny.txt")

    other = tmp_path / "other.txt"
    other.write_text(TEXT[::-1], encoding="utf-8")  # the same characters (the same vocabulary), another text
    before = snapshot(run)
    line = bptt_error("train", "--resume", run, "--data", other, "--max-steps", 12, "-q", code=5)
    assert f"resume: {other} is not the text this run trained on (SHA-1" in line and "--data" in line
    assert snapshot(run) == before


# ------------------------------------------------------------------ damaged side files
def test_resume_refuses_a_damaged_metrics_file_before_writing_anything(bptt, bptt_error, corpus, tmp_path):
    run = tmp_path / "run"
    bptt("train", "--data", corpus, *TINY_ARGS, "--max-steps", 6, "--log-every", 2, "--eval-every", 3,
         "--run-dir", run, "-q")
    (run / "metrics.jsonl").write_bytes((run / "metrics.jsonl").read_bytes().replace(b"train", b"tr\xffin", 1))
    before = snapshot(run)
    line = bptt_error("train", "--resume", run, "--max-steps", 9, "-q", code=5)
    assert "metrics.jsonl line 1 is damaged (UnicodeDecodeError)" in line
    assert snapshot(run) == before  # config.yaml not rewritten


def test_the_lock_holder_removes_temp_files_a_killed_writer_left(corpus, tmp_path):
    run = tmp_path / "run"
    train(config(corpus, train__max_steps=6), run, quiet=True)
    (run / ".last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    (run / ".metrics.jsonl.x.tmp").write_bytes(b"{")
    resume(run, {"train.max_steps": 7}, quiet=True)
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl"]
