"""`bptt runs`: one row per run made here, each ended a different way: finished, interrupted, diverged, running, killed."""

from __future__ import annotations

import fcntl
import json
import os
import signal

import pytest

from bpttcli import runs
from bpttcli.config import load_config
from tiny_run import PLAIN
from bpttcli.errors import Interrupted, TrainingDiverged
from bpttcli.train import train

TEXT = ("The Time Traveller (for so it will be convenient to speak of him) was expounding a recondite matter to us. "
        "His grey eyes shone and twinkled, and his usually pale face was flushed and animated.\n") * 2
TINY = {**PLAIN, "model.hidden": 16, "data.batch_size": 2, "strategy.tau": 5, "train.log_every": 4, "train.eval_every": 6,
        "train.device": "cpu"}


class SignalAt:
    """A silent view that sends SIGINT (or raises, as a crash would) once `tokens` characters are trained."""

    def __init__(self, tokens: int, crash: bool = False):
        self.left, self.crash = tokens, crash

    def advance(self, amount: float = 1, **fields) -> None:
        self.left -= amount
        if self.left <= 0 < self.left + amount:
            if self.crash:
                raise MemoryError("killed")
            os.kill(os.getpid(), signal.SIGINT)

    def stats(self, text: str) -> None:
        pass

    def print(self, message: str) -> None:
        pass


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """runs/ with one run per ending; `running` is a finished run whose lock a process holds (see `held`)."""
    base = tmp_path_factory.mktemp("runs")
    corpus = base / "tiny.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    root = base / "runs"

    def config(**flags):
        return load_config(None, {**TINY, "data.path": str(corpus), **flags})

    train(config(**{"train.max_steps": 10}), root / "a-finished", quiet=True)
    with pytest.raises(Interrupted):
        train(config(**{"train.max_steps": 100}), root / "b-interrupted", view=SignalAt(70))
    train(config(**{"model.cell": "linear", "optim.lr": 0.1, "train.max_steps": 6}), root / "c-diverged", quiet=True)
    with pytest.raises(TrainingDiverged):
        from bpttcli.train import resume

        resume(root / "c-diverged", {"optim.lr": 1e4, "optim.clip": 0, "train.max_steps": 60}, quiet=True)
    with pytest.raises(MemoryError):  # dies after its first checkpoint (step 6), as under the OOM killer
        train(config(**{"train.max_steps": 100}), root / "d-killed", view=SignalAt(90, crash=True))
    train(config(**{"train.max_steps": 4}), root / "nested" / "e-running", quiet=True)
    return root


@pytest.fixture
def held(root):
    """A process (this one) holds e-running's lock, as the trainer does while it trains."""
    with open(root / "nested" / "e-running" / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
        fcntl.flock(handle, fcntl.LOCK_UN)


def test_one_row_per_run_with_how_it_ended(root, held):
    rows = {r["run"]: r for r in runs.collect(root)}
    assert {name: r["status"] for name, r in rows.items()} == {
        "a-finished": "finished", "b-interrupted": "interrupted", "c-diverged": "diverged", "d-killed": "killed",
        "nested/e-running": "running"}
    a = rows["a-finished"]
    records = [json.loads(line) for line in (root / "a-finished" / "metrics.jsonl").read_text().splitlines()]
    assert (a["model"], a["strategy"], a["steps"], a["chars"]) == ("RNN-16x1", "truncated", 10, 100)
    assert a["best_val_ppl"] == min(r["val_ppl"] for r in records if r["kind"] == "eval")
    assert a["wall_s"] >= records[-1]["elapsed"] > 0
    assert rows["b-interrupted"]["steps"] == 7  # its checkpoint's step, after its last metrics line
    assert rows["d-killed"]["steps"] == 8  # its last metrics line, after its last checkpoint (step 6)


def test_a_free_lock_is_not_running(root):
    (root / "a-finished" / ".lock").touch()  # left by a trainer that has exited: flock went with it
    assert runs.describe(root / "a-finished", root)["status"] == "finished"


def test_cli_table_and_json(bptt, cli_runner, root, held):
    from bpttcli.cli import app

    wide = cli_runner.invoke(app, ["runs", str(root)], env={"COLUMNS": "120"}).output
    for text in ("a-finished", "RNN-16x1", "truncated", "finished", "interrupted", "diverged", "killed", "running",
                 "nested/e-running"):
        assert text in wide
    narrow = cli_runner.invoke(app, ["runs", str(root)], env={"COLUMNS": "80"}).output
    assert all(len(line) <= 80 for line in narrow.splitlines()) and "…" not in narrow  # long names fold
    rows = json.loads(bptt("runs", root, "--json").output)
    assert [r["run"] for r in rows] == ["a-finished", "b-interrupted", "c-diverged", "d-killed", "nested/e-running"]


def test_no_runs_and_no_directory(bptt, bptt_error, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no runs under" in bptt("runs", tmp_path / "empty").output
    assert "is not a directory" in bptt_error("runs", tmp_path / "missing", code=2)


def test_a_line_being_written_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 1}\n{"kind": "tra', encoding="utf-8")
    assert runs.read_metrics(path) == [{"kind": "train", "step": 1}]
