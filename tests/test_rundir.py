"""bpttcli.rundir: one process per run directory (a lock), reuse of a directory without a checkpoint, the corpus
a run records, and the config a resume continues with."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bpttcli import checkpoint
from bpttcli.config import load_config, to_dict
from bpttcli.errors import CheckpointError, ConfigError
from bpttcli.fsutil import sha1_of
from bpttcli.rundir import check_new_run_dir, check_same_corpus, corpus_record, hold_run_dir, resume_config
from bpttcli.train import resume, train

TEXT = "the time traveller was expounding a recondite matter to us his grey eyes shone and twinkled " * 6
TINY_ARGS = ("--hidden", 16, "-b", 2, "-t", 5, "--device", "cpu", "-q")


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def bptt_command(*args) -> list[str]:
    return [sys.executable, "-m", "bpttcli", *map(str, args)]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_a_second_process_is_refused_while_a_run_holds_its_directory(corpus, tmp_path):
    """Two real processes: the second fresh run into the same directory exits 2 naming the first's PID."""
    run = tmp_path / "run"
    first = subprocess.Popen(bptt_command("train", "--data", corpus, *TINY_ARGS, "--max-steps", 100_000,
                                          "--epochs", 10**6, "--eval-every", 0, "--log-every", 5, "--set",
                                          "train.checkpoint_every=0", "--run-dir", run),
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (run / "metrics.jsonl").exists():  # training, and no checkpoint yet (only at the end)
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        second = subprocess.run(bptt_command("train", "--data", corpus, *TINY_ARGS, "--max-steps", 30,
                                             "--run-dir", run), env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip().splitlines() == [
            f"error: {run} is in use by another bptt process (PID {first.pid}); wait for it to finish or stop it, "
            f"or choose another --run-dir"]
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 143, err
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # one writer: no duplicated or interleaved lines


def test_resume_is_refused_while_another_holds_the_directory(corpus, tmp_path):
    run = tmp_path / "run"
    train(load_config(None, {"data.path": str(corpus), "model.hidden": 8, "data.batch_size": 2, "strategy.tau": 5,
                             "train.max_steps": 3, "train.device": "cpu"}), run, quiet=True)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with hold_run_dir(run):  # as another process would (a second open file: flock refuses it too)
        with pytest.raises(ConfigError, match=f"{run} is in use by another bptt process \\(PID {os.getpid()}\\)"):
            resume(run, {"train.max_steps": 5}, quiet=True)
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"} == before
    assert not (run / ".lock").exists()


def test_a_directory_without_a_checkpoint_is_reused_one_with_a_checkpoint_is_not(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train"}\n')
    (tmp_path / "config.yaml").write_text("train: {}\n")
    check_new_run_dir(tmp_path)  # a run that stopped before its first checkpoint: nothing to resume
    for name in ("best.pt", "last.pt"):
        (tmp_path / name).write_bytes(b"x")
        with pytest.raises(ConfigError, match="already holds a run; continue it with --resume"):
            check_new_run_dir(tmp_path)
        (tmp_path / name).unlink()


def test_the_corpus_record_and_its_check(corpus, tmp_path):
    config = load_config(None, {"data.path": str(corpus)})
    record = corpus_record(config.data)
    assert record == {"path": str(corpus), "sha1": sha1_of(corpus)} and corpus_record(load_config().data) is None
    check_same_corpus(record, {"path": "/elsewhere/copy.txt", "sha1": record["sha1"]})  # moved: fine
    check_same_corpus(None, record)  # a checkpoint from before corpora were recorded
    with pytest.raises(CheckpointError, match="is not the text this run trained on"):
        check_same_corpus(record, {"path": str(corpus), "sha1": "0" * 40})


def test_resume_config_takes_data_at_another_path_only_with_a_recorded_corpus(corpus, tmp_path, monkeypatch):
    saved = to_dict(load_config(None, {"data.path": str(corpus)}))
    monkeypatch.chdir(tmp_path)
    moved = resume_config(saved, {"data.path": "copy.txt"}, corpus={"path": str(corpus), "sha1": "x"})
    assert moved.data.path == str(tmp_path / "copy.txt")
    with pytest.raises(CheckpointError, match="data.path is .* in the checkpoint but 'copy.txt' was asked"):
        resume_config(saved, {"data.path": "copy.txt"})


def test_an_invalid_config_in_a_checkpoint_is_reported_as_the_checkpoint(tmp_path):
    saved = to_dict(load_config())
    saved["model"]["hidden"] = -3
    with pytest.raises(CheckpointError, match=r"last.pt holds an invalid config \(model.hidden must be > 0"):
        resume_config(saved, {}, source=tmp_path / "last.pt")


def test_a_checkpoint_records_its_corpus(corpus, tmp_path):
    train(load_config(None, {"data.path": str(corpus), "model.hidden": 8, "data.batch_size": 2, "strategy.tau": 5,
                             "train.max_steps": 2, "train.device": "cpu"}), tmp_path / "run", quiet=True)
    assert checkpoint.load(tmp_path / "run" / "last.pt")["corpus"] == {"path": str(corpus), "sha1": sha1_of(corpus)}
