"""`bptt train --tensorboard`: the scalars of metrics.jsonl, read back from the event files, resume included."""

from __future__ import annotations

import importlib.util
import json

import pytest

from bpttcli.config import load_config
from bpttcli.train import resume, train

TEXT = ("The Time Traveller (for so it will be convenient to speak of him) was expounding a recondite matter to us. "
        "His grey eyes shone and twinkled, and his usually pale face was flushed and animated.\n") * 2
TINY = {"model.hidden": 16, "data.batch_size": 2, "strategy.tau": 5, "train.log_every": 4, "train.eval_every": 6,
        "train.device": "cpu", "train.tensorboard": True}
needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="the tensorboard extra is not installed: pip install 'bptt[tensorboard]'")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def board(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard shows for the run: tag -> [(step, value)] (events purged on resume left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def expected(run_dir) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl's numbers the same way, in float32 as TensorBoard stores them."""
    import numpy as np

    scalars = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key not in ("kind", "step"):
                scalars.setdefault(f"{record['kind']}/{key}", []).append((record["step"], float(np.float32(value))))
    return scalars


@needs_tensorboard
def test_the_event_files_hold_the_scalars_of_metrics_jsonl(corpus, tmp_path):
    run = tmp_path / "run"
    train(load_config(None, {**TINY, "data.path": str(corpus), "train.max_steps": 14}), run, quiet=True)
    shown = board(run)
    assert {"train/loss", "train/ppl", "train/grad_norm_mean", "train/clip_rate", "train/lr", "eval/val_ppl"} <= set(shown)
    assert shown == expected(run)
    assert [step for step, _ in shown["eval/val_ppl"]] == [6, 12, 14]


@needs_tensorboard
def test_a_resumed_run_shows_what_metrics_jsonl_holds(corpus, tmp_path):
    run = tmp_path / "run"
    train(load_config(None, {**TINY, "data.path": str(corpus), "train.max_steps": 7}), run, quiet=True)
    resume(run, {"train.max_steps": 20}, quiet=True)  # rewinds the partial-interval line and eval at step 7
    assert board(run) == expected(run)
    assert [step for step, _ in board(run)["train/loss"]] == [4, 8, 12, 16, 20]


@needs_tensorboard
def test_turned_on_at_resume_the_board_gets_the_whole_run(corpus, tmp_path):
    run = tmp_path / "run"
    train(load_config(None, {**TINY, "data.path": str(corpus), "train.max_steps": 9,
                             "train.tensorboard": False}), run, quiet=True)
    resume(run, {"train.max_steps": 14, "train.tensorboard": True}, quiet=True)
    assert board(run) == expected(run) and [s for s, _ in board(run)["eval/val_ppl"]] == [6, 12, 14]


def test_without_the_extra_the_flag_is_a_one_line_error_before_any_work(bptt_error, corpus, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    line = bptt_error("train", "--data", corpus, "--tensorboard", "--run-dir", tmp_path / "run", "-q", code=2,
                      alone=True)
    assert "pip install 'bptt[tensorboard]'" in line
    assert not (tmp_path / "run").exists()
