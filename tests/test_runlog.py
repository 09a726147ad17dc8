"""bpttcli.runlog without training: lines, summaries, best validation, divergence, checkpoint state, rewind."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bpttcli.errors import CheckpointError
from bpttcli.runlog import RunLog, clip_rate, perplexity


def position(step, epoch=0, tokens=None):
    return {"step": step, "epoch": epoch, "tokens": 10 * step if tokens is None else tokens}


def lines(log: RunLog) -> list[dict]:
    return [json.loads(line) for line in log.path.read_text(encoding="utf-8").splitlines()]


def record(log: RunLog, losses, norms, lengths=None, weight=1.0):
    for k, (loss, norm) in enumerate(zip(losses, norms)):
        length = lengths[k] if lengths else 5
        log.record_step(torch.tensor(loss), 10, torch.tensor(norm), length, weight)


def test_flush_writes_one_train_line_with_the_interval_statistics(tmp_path):
    log = RunLog(tmp_path / "metrics.jsonl", clip=1.0)
    record(log, [20.0, 30.0], [0.5, 3.0], lengths=[4, 6], weight=2.5)
    assert log.first_nonfinite(2) is None
    out = log.flush(position(2), lr=0.1, elapsed=1.5)
    assert lines(log) == [out]
    assert out["kind"] == "train" and out["step"] == 2 and out["lr"] == 0.1 and out["elapsed"] == 1.5
    assert math.isclose(out["loss"], 50.0 / 20) and math.isclose(out["ppl"], math.exp(2.5))
    assert (out["grad_norm_mean"], out["grad_norm_max"], out["clip_rate"]) == (1.75, 3.0, 0.5)
    assert (out["segment_mean"], out["segment_max"], out["max_weight"]) == (5.0, 6, 2.5)
    assert log.interval.tokens == 0 and log.metrics_lines == 1
    assert "ppl 12.18 train" in log.stats_line()


def test_record_eval_says_whether_it_improved_and_tracks_the_best(tmp_path):
    log = RunLog(tmp_path / "metrics.jsonl", clip=0.0)
    assert log.record_eval(position(5), 2.0, 1.0) is True
    assert log.record_eval(position(10), 2.5, 2.0) is False
    assert log.record_eval(position(15), 1.5, 3.0) is True
    evals = lines(log)
    assert [e["best_val_ppl"] for e in evals] == [math.exp(2.0), math.exp(2.0), math.exp(1.5)]
    assert log.summary()["final_val_ppl"] == math.exp(1.5) and log.summary()["best_val_ppl"] == math.exp(1.5)


def test_first_nonfinite_names_the_update_that_diverged(tmp_path):
    log = RunLog(tmp_path / "metrics.jsonl", clip=1.0)
    record(log, [1.0, 1.0, 1.0], [0.5, math.inf, 0.2])
    assert log.first_nonfinite(12).startswith("step 11 ")
    assert not log.path.exists()


def test_summary_covers_every_flushed_interval(tmp_path):
    log = RunLog(tmp_path / "metrics.jsonl", clip=1.0)
    record(log, [1.0, 1.0], [0.5, 2.0], lengths=[3, 9])
    log.flush(position(2), 0.1, 1.0)
    record(log, [1.0], [4.0], lengths=[6], weight=7.0)
    log.flush(position(3), 0.1, 2.0)
    s = log.summary()
    assert (s["grad_norm_median"], s["grad_norm_max"]) == (2.0, 4.0)
    assert math.isclose(s["clip_rate"], 2 / 3, rel_tol=1e-6) and s["segment_mean"] == 6.0 and s["segment_max"] == 9
    assert s["max_weight"] == 7.0 and [h["step"] for h in s["history"]] == [2, 3]


def test_state_dict_round_trip_continues_the_same_lines(tmp_path):
    """A log restored from its state (mid-interval) writes what the original would have written."""
    original = RunLog(tmp_path / "a.jsonl", clip=1.0)
    record(original, [1.0, 2.0], [0.5, 2.0])
    original.flush(position(2), 0.1, 1.0)
    original.record_eval(position(2), 1.2, 1.0)
    record(original, [3.0], [0.7])
    restored = RunLog(tmp_path / "a.jsonl", clip=1.0)
    restored.load_state_dict(original.state_dict())
    for log in (original, restored):
        record(log, [4.0], [1.5])
    a, b = original.flush(position(4), 0.1, 2.0), restored.flush(position(4), 0.1, 2.0)
    drop = ("tokens_per_s",)
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
    assert original.summary() == restored.summary()


def test_rewind_drops_lines_written_after_the_checkpoint(tmp_path):
    log = RunLog(tmp_path / "metrics.jsonl", clip=1.0)
    log.record_eval(position(1), 1.0, 0.1)
    state = log.state_dict()
    log.record_eval(position(2), 0.9, 0.2)
    later = RunLog(log.path, clip=1.0)
    later.load_state_dict(state)
    later.rewind()
    assert [e["step"] for e in lines(later)] == [1]


def test_perplexity_and_clip_rate():
    assert perplexity(1000.0) == math.inf and math.isclose(perplexity(1.0), math.e)
    norms = torch.tensor([0.5, 1.5, 2.0, 0.1])
    assert clip_rate(norms, 1.0) == 0.5 and clip_rate(norms, 0.0) == 0.0


def strict(text: str) -> list[dict]:
    """Parse JSON lines, failing on NaN or Infinity (which no JSON parser but Python's accepts)."""
    return [json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in {line}"))
            for line in text.splitlines()]


def test_an_overflowing_perplexity_is_written_as_null(tmp_path):
    log = RunLog(tmp_path / "metrics.jsonl", clip=1.0)
    record(log, [8000.0], [0.5])  # loss 800 per character: a finite loss, an infinite perplexity
    log.flush(position(1), 0.1, 1.0)
    log.record_eval(position(1), 800.0, 1.0)
    train_line, eval_line = strict(log.path.read_text())
    assert train_line["loss"] == 800.0 and train_line["ppl"] is None
    assert eval_line["val_ppl"] is None and eval_line["best_val_ppl"] is None


def test_rewind_refuses_a_damaged_line_before_rewriting_anything(tmp_path):
    log = RunLog(tmp_path / "metrics.jsonl", clip=1.0)
    log.record_eval(position(1), 1.0, 0.1)
    log.record_eval(position(2), 1.0, 0.2)
    damaged = log.path.read_bytes().replace(b'"eval"', b'"ev\xffl"', 1)  # an invalid UTF-8 byte in line 1
    log.path.write_bytes(damaged)
    with pytest.raises(CheckpointError, match="metrics.jsonl line 1 is damaged"):
        log.rewind()
    assert log.path.read_bytes() == damaged


def test_rewind_ignores_a_torn_line_after_the_checkpoint(tmp_path):
    log = RunLog(tmp_path / "metrics.jsonl", clip=1.0)
    log.record_eval(position(1), 1.0, 0.1)
    with open(log.path, "ab") as f:
        f.write(b'{"kind": "ev')  # what a kill -9 in the middle of a line would leave
    log.rewind()
    assert [e["step"] for e in lines(log)] == [1]


def test_a_log_that_does_not_write_keeps_the_same_accounts(tmp_path):
    """The processes other than rank 0: the same lines counted (a checkpoint's metrics_lines), no file touched."""
    quiet, writer = RunLog(tmp_path / "quiet.jsonl", 1.0, write=False), RunLog(tmp_path / "metrics.jsonl", 1.0)
    for log in (quiet, writer):
        record(log, [20.0, 30.0], [0.5, 3.0])
        log.flush(position(2), lr=0.1, elapsed=1.0)
        log.record_eval(position(2), 2.0, 1.0)
        log.rewind()
    assert not (tmp_path / "quiet.jsonl").exists() and quiet.metrics_lines == writer.metrics_lines == 2
    assert quiet.history == writer.history and quiet.best_val == writer.best_val
