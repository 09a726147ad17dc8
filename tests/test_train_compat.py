"""Checkpoints written by an older bptt resume exactly: the old code, taken from git history, trains and stops;
this code resumes; the metrics equal an uninterrupted run of this code."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bpttcli.train import resume, train
from bpttcli.config import load_config
from bpttcli.recurrence import use_path

REPO = Path(__file__).resolve().parents[1]
OLD = "fbccce0"  # the last commit before the restructure (config key strategy.num_steps, Trainer with its own metrics)
TEXT = "the time traveller was expounding a recondite matter to us his grey eyes shone and twinkled " * 6
SETTINGS = {"model.cell": "rnn", "optim.schedule": "constant", "train.epochs": 10, "train.max_time": 0,
            "model.hidden": 16, "data.batch_size": 2, "train.log_every": 4, "train.eval_every": 6,
            "train.device": "cpu", "optim.optimizer": "adam", "optim.lr": 0.01, "optim.weight_decay": 0.1, "strategy.name": "random"}
TIMING = ("tokens_per_s", "elapsed")
ADDED = ("val_chars",)  # keys the old code's lines lack: eval lines now say how many characters they covered


def old_package(tmp_path: Path) -> Path:
    """The bpttcli package as of commit OLD, extracted into tmp_path (skips where git history is absent)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", OLD, "bpttcli"], capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"commit {OLD} is not in this clone's history")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tmp_path / "old", filter="data")
    return tmp_path / "old"


def metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING + ADDED} for line in lines]


def test_checkpoint_from_before_the_restructure_resumes_exactly(tmp_path):
    old = old_package(tmp_path)
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    flags = {**SETTINGS, "data.path": str(corpus)}
    script = (
        "import sys, json, torch; torch.set_num_threads(1); from pathlib import Path; from bpttcli.config import load_config; from bpttcli.train import train;"
        "flags = json.loads(sys.argv[1]); train(load_config(None, flags), Path(sys.argv[2]), quiet=True)"
    )
    old_flags = {**flags, "strategy.num_steps": 5, "train.max_steps": 9}
    env = {**os.environ, "PYTHONPATH": str(old)}
    done = subprocess.run([sys.executable, "-c", script, json.dumps(old_flags), str(tmp_path / "run")],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "num_steps" in (tmp_path / "run" / "config.yaml").read_text()  # really the old format

    today = {"model.weight_drop": 0.0, "model.locked_dropout": 0.0, "optim.average": 0.0}  # keys the old code lacked
    with use_path("portable"):  # the old code's float32 products (addmm), bit for bit; oneDNN's sum in another order
        resume(tmp_path / "run", {"train.max_steps": 20}, quiet=True)
        train(load_config(None, {**flags, **today, "strategy.tau": 5, "train.max_steps": 20}), tmp_path / "reference",
              quiet=True)
    assert metrics(tmp_path / "run") == metrics(tmp_path / "reference")
