"""bpttcli.train end to end: run directory, metrics, checkpoints, exact resume, Ctrl-C, divergence, limits, bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from bpttcli import checkpoint
from bpttcli.config import load_config, read_yaml, to_dict
from bpttcli.builders import load_dataset, load_trained
from bpttcli.choices import Cell
from bpttcli.engine import evaluate
from bpttcli.errors import Interrupted
from bpttcli.recurrence.kernels import describe
from bpttcli.train import resume, train
from tiny_run import TEXT, TIMING, TINY_ARGS, Signals, config, signalled, write_corpus

TINY_ARGS = (*TINY_ARGS, "-q")
N = 20  # steps of the uninterrupted reference runs
VARIANTS = {
    "sequential-truncated": {},
    "random-strategy": {"strategy.name": "random"},
    "dropout": {"model.dropout": 0.3, "model.layers": 2},
    "random-partition": {"data.partition": "random"},
    "tbptt": {"strategy.name": "tbptt", "strategy.k2": 8},
    "awd": {"model.cell": "lstm", "model.embedding": 8, "model.weight_drop": 0.3, "model.locked_dropout": 0.2,
            "model.embed_dropout": 0.1, "optim.average": 0.9, "optim.optimizer": "adam", "optim.lr": 0.01},
    "random-floor": {"strategy.name": "random", "strategy.floor": 2, "strategy.schedule": "polytail"},
    # AdamW carries per-parameter state (moments, step count) that SGD lacks: resume must restore it.
    # Weight decay and a cosine rate over a 400-character budget (half spent by step N), as configs/default.yaml.
    "adam": {"optim.optimizer": "adam", "optim.lr": 0.01, "optim.weight_decay": 0.1, "optim.schedule": "cosine",
             "train.max_tokens": 400},
    "adam-gru-random-dropout": {"optim.optimizer": "adam", "optim.lr": 0.01, "optim.weight_decay": 0.1,
                                "optim.schedule": "cosine", "train.max_tokens": 400, "model.cell": "gru",
                                "model.dropout": 0.3, "model.layers": 2, "strategy.name": "random"},
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def metrics(run_dir, timing: bool = False) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if timing or k not in TIMING} for line in lines]


def variant(name: str, **flags) -> dict:
    return {**{k.replace(".", "__"): v for k, v in VARIANTS[name].items()}, **flags}


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """Metrics of the uninterrupted N-step run of each variant, computed once."""
    cache = {}

    def get(name: str) -> list[dict]:
        if name not in cache:
            run_dir = tmp_path_factory.mktemp(name) / "run"
            train(config(corpus, **variant(name, train__max_steps=N)), run_dir, quiet=True)
            cache[name] = metrics(run_dir)
        return cache[name]

    return get


# ------------------------------------------------------------------ a run's directory
def test_run_dir_holds_config_metrics_and_checkpoints(corpus, tmp_path):
    summary = train(config(corpus, train__max_steps=14), tmp_path / "run", quiet=True)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {"config.yaml", "metrics.jsonl", "last.pt", "best.pt"}
    saved = read_yaml(run / "config.yaml")
    assert saved == to_dict(config(corpus, train__max_steps=14, train__run_dir=str(run)))
    records = metrics(run, timing=True)
    train_lines = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train_lines] == [4, 8, 12, 14]  # every log_every, then the partial interval
    assert [r["step"] for r in evals] == [6, 12, 14]  # every eval_every, then at the end
    for r in train_lines:
        assert set(r) >= {"epoch", "tokens", "loss", "ppl", "grad_norm_mean", "grad_norm_max", "clip_rate", "lr",
                          "tokens_per_s", "segment_mean", "segment_max", "max_weight", "elapsed"}
        assert r["ppl"] == pytest.approx(math.exp(r["loss"]))
        assert 0 < r["grad_norm_mean"] <= r["grad_norm_max"] and 0 <= r["clip_rate"] <= 1
        assert r["segment_mean"] == r["segment_max"] == 5 and r["tokens"] == 10 * r["step"]
    assert evals[-1]["best_val_ppl"] == min(e["val_ppl"] for e in evals) == summary["best_val_ppl"]
    assert summary["final_val_ppl"] == evals[-1]["val_ppl"] and summary["step"] == 14


def test_checkpoints_hold_what_resume_and_reports_need(corpus, tmp_path):
    train(config(corpus, train__max_steps=14), tmp_path / "run", quiet=True)
    last, best = (checkpoint.load(tmp_path / "run" / name) for name in ("last.pt", "best.pt"))
    assert set(last) >= {"model", "optimizer", "vocab", "config", "step", "epoch", "rng", "batcher", "hidden",
                         "interval", "summary", "norm_history"}
    assert last["step"] == 14 and last["config"]["train"]["max_steps"] == 14
    s = last["summary"]
    assert len(s["grad_norms"]) == 14 and torch.isfinite(s["grad_norms"]).all()
    assert s["grad_norm_max"] == float(s["grad_norms"].max()) and [h["step"] for h in s["history"]] == [4, 8, 12, 14]
    assert s["best_val_ppl"] <= s["final_val_ppl"] and s["step"] == 14
    assert best["summary"]["best_val_ppl"] == s["best_val_ppl"]
    tensors = [v for v in last["model"].values()] + last["hidden"][0]
    assert all(t.device.type == "cpu" and not t.requires_grad for t in tensors)


def test_same_seed_same_numbers_other_seed_other_numbers(corpus, tmp_path):
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train(config(corpus, train__max_steps=8, train__seed=seed, strategy__name="random"), tmp_path / name, quiet=True)
        runs[name] = metrics(tmp_path / name)
    assert runs["a"] == runs["b"] != runs["c"]


# ------------------------------------------------------------------ exact resume
@pytest.mark.parametrize("k", [7, 6], ids=["mid-interval", "eval-boundary"])
@pytest.mark.parametrize("name", VARIANTS)
def test_stop_and_resume_gives_the_same_metrics(corpus, tmp_path, reference, name, k):
    run = tmp_path / "run"
    train(config(corpus, **variant(name, train__max_steps=k)), run, quiet=True)
    assert [r["step"] for r in metrics(run)][-1] == k  # the stopped run logged and validated at its end
    resume(run, {"train.max_steps": N}, quiet=True)
    assert metrics(run) == reference(name)


def test_resume_with_more_epochs_continues_into_the_next_epoch(corpus, tmp_path):
    train(config(corpus, train__epochs=2, train__eval_every=0), tmp_path / "two", quiet=True)
    train(config(corpus, train__epochs=1, train__eval_every=0), tmp_path / "one", quiet=True)
    resume(tmp_path / "one", {"train.epochs": 2}, quiet=True)
    two = metrics(tmp_path / "two")
    assert two[-1]["epoch"] == 1 and metrics(tmp_path / "one") == two


def test_sigint_saves_a_checkpoint_that_resumes_exactly(corpus, tmp_path, reference):
    run = tmp_path / "run"
    with pytest.raises(Interrupted, match=f"at step 7; .*bptt train --resume {run}"):
        train(config(corpus, train__max_steps=N), run, view=Signals(70, signal.SIGINT))
    assert checkpoint.load(run / "last.pt")["step"] == 7
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    resume(run, quiet=True)
    assert metrics(run) == reference("sequential-truncated")


def test_ctrl_c_on_the_cli_then_resume_matches_an_uninterrupted_run(corpus, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-c", "from bpttcli.cli import main; main()", "train", "--data", str(corpus),
               *map(str, TINY_ARGS), "--max-steps", "100000", "--log-every", "5", "--eval-every", "6", "--run-dir", str(run)]
    done = signalled(command, run, signal.SIGINT)
    err = done.stderr
    assert done.returncode == 130, err
    assert f"checkpoint saved; resume with: bptt train --resume {run}" in err and "Traceback" not in err
    stopped = checkpoint.load(run / "last.pt")["step"]
    resume(run, {"train.max_steps": stopped + 7, "train.log_every": 5}, quiet=True)
    train(config(corpus, train__max_steps=stopped + 7, train__log_every=5), tmp_path / "ref", quiet=True)
    assert metrics(run) == metrics(tmp_path / "ref")


def test_resume_allows_optim_and_train_changes(corpus, tmp_path):
    run = tmp_path / "run"
    train(config(corpus, train__max_steps=6), run, quiet=True)
    summary = resume(run, {"optim.lr": 0.25, "train.max_steps": 10}, quiet=True)
    assert summary["step"] == 10
    assert read_yaml(run / "config.yaml")["optim"]["lr"] == 0.25
    assert [r["lr"] for r in metrics(run) if r["kind"] == "train"] == [1.0, 0.25, 0.25]


# ------------------------------------------------------------------ resume refusals
def snapshot(run) -> dict:
    return {p.name: p.read_bytes() for p in run.iterdir()}


@pytest.fixture
def stopped_run(bptt, corpus, tmp_path):
    run = tmp_path / "run"
    bptt("train", "--data", corpus, *TINY_ARGS, "--max-steps", 6, "--run-dir", run)
    return run


@pytest.mark.parametrize("args, says", [
    (("--hidden", 32), "model.hidden is 16 in the checkpoint but 32"),
    (("--model", "gru"), "model.cell is 'rnn' in the checkpoint but 'gru'"),
    (("--strategy", "random"), "strategy.name"),
])
def test_resume_refuses_another_model_or_strategy(bptt_error, stopped_run, args, says):
    before = snapshot(stopped_run)
    assert says in bptt_error("train", "--resume", stopped_run, *args, code=5)
    assert snapshot(stopped_run) == before


def test_resume_refuses_a_changed_text_before_preparing_it(bptt_error, stopped_run, corpus, tmp_path):
    before = snapshot(stopped_run)
    original = corpus.read_bytes()
    corpus.write_text(TEXT.replace("e", "q"), encoding="utf-8")
    try:
        assert "is not the text this run trained on" in bptt_error("train", "--resume", stopped_run, code=5)
    finally:
        corpus.write_bytes(original)
    assert snapshot(stopped_run) == before


@pytest.mark.parametrize("damage, says", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "corrupted or truncated"),
    (lambda p: p.write_bytes(b"garbage, not a checkpoint"), "corrupted or truncated"),
    (lambda p: torch.save({"format": 1}, p), "holds no run config"),
    (lambda p: p.unlink(), "has no last.pt"),
], ids=["truncated", "garbage", "foreign", "missing"])
def test_resume_refuses_a_damaged_checkpoint(bptt_error, stopped_run, damage, says):
    damage(stopped_run / "last.pt")
    before = snapshot(stopped_run)
    assert says in bptt_error("train", "--resume", stopped_run, code=5)
    assert snapshot(stopped_run) == before


# ------------------------------------------------------------------ divergence
def test_non_finite_loss_stops_with_exit_6_and_keeps_the_last_good_checkpoint(bptt, bptt_error, corpus, tmp_path):
    run = tmp_path / "run"
    bptt("train", "--data", corpus, *TINY_ARGS, "--model", "linear", "--lr", 0.1, "--max-steps", 6, "--run-dir", run)
    line = bptt_error("train", "--resume", run, "--lr", 1e4, "--clip", 0, "--max-steps", 60, "-q", code=6)
    assert "non-finite loss or gradient at step" in line and f"last good checkpoint: {run / 'last.pt'}" in line
    kept = checkpoint.load(run / "last.pt")
    assert kept["step"] == 6 and all(torch.isfinite(t).all() for t in kept["model"].values())


def test_divergence_before_any_checkpoint_says_so(bptt_error, corpus, tmp_path):
    line = bptt_error("train", "--data", corpus, *TINY_ARGS, "--model", "linear", "--lr", 1e4, "--clip", 0,
                      "--run-dir", tmp_path / "run", code=6)
    assert "no checkpoint was written" in line and not (tmp_path / "run" / "last.pt").exists()


# ------------------------------------------------------------------ limits and schedule
def test_limits_stop_the_run(corpus, tmp_path):
    by_tokens = train(config(corpus, train__max_tokens=95), tmp_path / "tokens", quiet=True)
    assert (by_tokens["step"], by_tokens["tokens"]) == (10, 100)
    one_epoch = train(config(corpus, train__epochs=1, train__eval_every=0), tmp_path / "epoch", quiet=True)
    records = metrics(tmp_path / "epoch")
    assert one_epoch["epoch"] == 0 and one_epoch["tokens"] == records[-1]["tokens"] > 0
    assert [r["kind"] for r in records].count("eval") == 1  # --eval-every 0: only at the end
    started = time.monotonic()
    by_time = train(config(corpus, train__max_time=0.5, train__epochs=10**6), tmp_path / "time", quiet=True)
    assert by_time["elapsed"] >= 0.5 and time.monotonic() - started < 30


def test_full_bptt_stops_near_the_token_budget_not_at_the_epoch_end(corpus, tmp_path):
    c = config(corpus, strategy__name="full", train__max_tokens=95)
    summary = train(c, tmp_path / "run", quiet=True)
    window = c.data.batch_size * c.strategy.tau
    assert 95 <= summary["tokens"] < 95 + window < c.data.batch_size * steps_per_epoch(c)


def steps_per_epoch(c) -> int:
    """Steps of one epoch of the tiny corpus (random offset 0)."""
    return (len(load_dataset(c).train) - 1) // c.data.batch_size


def test_final_evaluation_is_not_repeated_at_an_eval_boundary(corpus, tmp_path):
    train(config(corpus, train__max_steps=12), tmp_path / "run", quiet=True)
    assert [(r["kind"], r["step"]) for r in metrics(tmp_path / "run")][-3:] == [
        ("train", 8), ("train", 12), ("eval", 12)]


def test_full_bptt_prints_its_memory_estimate_and_help_calls_it_infeasible(bptt, corpus):
    out = bptt("train", "--data", corpus, "--hidden", 16, "-b", 2, "-t", 5, "--device", "cpu", "--strategy", "full",
               "--epochs", 1, "--run-dir", "run").output
    assert "full BPTT over the whole epoch: one update per epoch, ~" in out and "MiB of activations" in out
    assert "done · 1 step · " in out  # singular (it said "1 steps")
    help_text = "".join(bptt("train", "--help").output.replace("│", "").split())
    assert "computationallyinfeasible" in help_text and "Rundirectory[default:runs/" in help_text


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("args, code, says", [
    (("-t", 0), 2, "strategy.tau must be > 0"),
    (("--clip", -1), 2, "optim.clip must be >= 0"),
    (("-b", 400), 3, "batch size 400"),
    (("--device", "cuda"), 2, "--device cuda requested but it is not available"),
    (("--device", "mps"), 2, "--device mps requested but it is not available"),
])
def test_bad_options_fail_in_one_line_and_write_nothing(bptt_error, corpus, tmp_path, args, code, says):
    if "--device" in args and (torch.cuda.is_available() or torch.backends.mps.is_available()):
        pytest.skip("an accelerator is available here")
    assert says in bptt_error("train", "--data", corpus, *TINY_ARGS, *args, "--run-dir", tmp_path / "run", code=code)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option, value", [("--strategy", "bogus"), ("--model", "bogus")])
def test_unknown_strategy_or_model_is_a_usage_error(bptt, corpus, tmp_path, option, value):
    out = bptt("train", "--data", corpus, option, value, "--run-dir", tmp_path / "run", code=2).output
    assert f"Invalid value for '{option}'" in out and not (tmp_path / "run").exists()


def test_unwritable_run_dir_and_existing_run_are_refused(bptt, bptt_error, corpus, tmp_path):
    (tmp_path / "file").write_text("x")
    line = bptt_error("train", "--data", corpus, *TINY_ARGS, "--run-dir", tmp_path / "file" / "run", code=2)
    assert "cannot write to directory" in line
    run = tmp_path / "run"
    bptt("train", "--data", corpus, *TINY_ARGS, "--max-steps", 2, "--run-dir", run)
    before = snapshot(run)
    line = bptt_error("train", "--data", corpus, *TINY_ARGS, "--max-steps", 2, "--run-dir", run, code=2)
    assert f"already holds a run; continue it with --resume {run}" in line and snapshot(run) == before
    line = bptt_error("train", "--resume", run, "--run-dir", tmp_path / "other", code=2)
    assert "drop --config/--run-dir" in line


def test_resume_from_a_directory_without_checkpoint(bptt_error, tmp_path):
    assert "has no last.pt to resume from" in bptt_error("train", "--resume", tmp_path, code=5)


def test_averaged_weights_are_what_checkpoints_serve(corpus, tmp_path):
    """With optim.average, best.pt/last.pt's "model" is the average (sample/eval/analyze load it), and
    "train_model" the trained weights that a resume continues from."""
    train(config(corpus, train__max_steps=12, optim__average=0.9), tmp_path / "run", quiet=True)
    payload = checkpoint.load(tmp_path / "run" / "last.pt")
    assert set(payload["model"]) == set(payload["train_model"])
    assert any(not torch.equal(payload["model"][k], payload["train_model"][k]) for k in payload["model"])
    assert payload["average"]["updates"] == 12


# ------------------------------------------------------------------ what a log shows, and why a run stopped
def test_a_piped_run_prints_its_settings_periodic_progress_lines_and_why_it_stopped(corpus, tmp_path):
    """stderr to a file, as under nohup or Slurm: the progress lines arrive while the run goes on."""
    run, log = tmp_path / "run", tmp_path / "stderr.log"
    command = [sys.executable, "-m", "bpttcli", "train", "--data", str(corpus), *map(str, TINY_ARGS[:-1]),
               "--max-time", "8", "--epochs", "1000000", "--log-every", "2", "--set", "train.progress_every=0.5",
               "--run-dir", str(run)]
    with open(log, "w") as err, open(tmp_path / "stdout.log", "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=err, env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline, during = time.monotonic() + 60, []
        while proc.poll() is None and time.monotonic() < deadline and len(during) < 2:
            during = [line for line in log.read_text().splitlines() if line.startswith("train ")]
            time.sleep(0.1)
        running = proc.poll() is None
        assert proc.wait(timeout=60) == 0
    assert running and len(during) >= 2, log.read_text()  # two progress lines while the run was still going
    lines = log.read_text().splitlines()
    if lines[0].startswith("prepared tiny.txt in "):  # a first start fills the token cache and says so
        lines = lines[1:]
    assert "truncated BPTT, tau 5 · RNN-16x1, " in lines[0] and " params · sgd lr 1 constant, clip 1 · cpu" in lines[0]
    assert lines[0].endswith(f" · cpu · kernel: {describe(Cell.rnn, torch.device('cpu'))}")  # recurrence/kernels.py
    assert lines[2].startswith("budget: 1000000 epochs or 8 s · run: ")
    progress = [line for line in lines if line.startswith("train ")]
    assert len(progress) >= 4 and all(" chars · step " in line and " · eta " in line for line in progress)
    assert any(" · loss " in line and " chars/s" in line for line in progress)
    assert (tmp_path / "stdout.log").read_text().rstrip().endswith("· --max-time reached")


@pytest.mark.parametrize("flags, reason", [
    ({"train__max_steps": 3}, "max_steps"), ({"train__max_tokens": 25}, "max_tokens"),
    ({"train__epochs": 1, "train__eval_every": 0}, "epochs"), ({"train__max_time": 0.2, "train__epochs": 10**6}, "max_time"),
])
def test_the_summary_and_the_last_checkpoint_say_why_the_run_stopped(corpus, tmp_path, flags, reason):
    summary = train(config(corpus, **flags), tmp_path / "run", quiet=True)
    assert summary["stop_reason"] == reason
    assert checkpoint.load(tmp_path / "run" / "last.pt")["summary"]["stop_reason"] == reason


def test_max_time_on_resume_is_this_invocations_budget(corpus, tmp_path):
    run = tmp_path / "run"
    first = train(config(corpus, train__max_time=0.5, train__epochs=10**6), run, quiet=True)
    again = resume(run, {"train.max_time": 0.5}, quiet=True)  # the whole run has had 0.5 s already: still 0.5 s more
    assert again["step"] > first["step"] and again["stop_reason"] == "max_time"
    assert again["elapsed"] >= 0.5 + 0.5  # `elapsed` stays the whole run's time: both invocations


def test_sigterm_saves_a_checkpoint_and_says_so(corpus, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "bpttcli", "train", "--data", str(corpus), *map(str, TINY_ARGS),
               "--max-steps", "100000", "--eval-every", "6", "--run-dir", str(run)]
    done = signalled(command, run, signal.SIGTERM)
    err = done.stderr
    assert done.returncode == 143 and "interrupted (SIGTERM) at step" in err and "Traceback" not in err, err
    assert checkpoint.load(run / "last.pt")["summary"]["stop_reason"] == "interrupted"


def test_a_diverged_run_ends_its_metrics_with_a_stop_line_that_resume_drops(bptt, bptt_error, corpus, tmp_path):
    run = tmp_path / "run"
    bptt("train", "--data", corpus, *TINY_ARGS, "--model", "linear", "--lr", 0.1, "--max-steps", 6, "--run-dir", run)
    bptt_error("train", "--resume", run, "--lr", 1e4, "--clip", 0, "--max-steps", 60, "-q", code=6)
    last = metrics(run)[-1]
    assert last["kind"] == "stop" and last["reason"].startswith("diverged: non-finite loss or gradient at step")
    bptt("train", "--resume", run, "--max-steps", 8, "-q")
    assert "stop" not in [r["kind"] for r in metrics(run)]


def test_validation_covers_the_same_first_eval_tokens_characters_each_time(corpus, tmp_path):
    def evals(name, **flags):
        train(config(corpus, train__max_steps=12, **flags), tmp_path / name, quiet=True)
        return [r for r in metrics(tmp_path / name) if r["kind"] == "eval"]

    val = load_dataset(config(corpus)).val
    whole = evals("all", train__eval_tokens=0)
    assert [r["val_chars"] for r in whole] == [len(val) - 1] * 2  # 0: the whole split
    assert evals("default") == whole  # the default bound (100k) covers a small split: nothing changes
    bounded = evals("nine", train__eval_tokens=9)
    assert [r["val_chars"] for r in bounded] == [9, 9]
    _, model, _, _ = load_trained(tmp_path / "nine", "last")
    assert bounded[-1]["val_loss"] == evaluate(model, val[:10], 2, 5) != whole[-1]["val_loss"]


def test_max_chars_trains_on_the_first_characters_only(corpus, tmp_path):
    """data.max_chars keeps the first N preprocessed characters, as the book's max_tokens does (its vocabulary
    still the whole text's)."""
    from bpttcli.builders import load_dataset

    whole = load_dataset(config(corpus))
    first = load_dataset(config(corpus, data__max_chars=120, data__val_fraction=0.0))
    assert len(first.train) == 120 and torch.equal(first.train, torch.cat([whole.train, whole.val])[:120])
    assert first.vocab == whole.vocab


@pytest.mark.parametrize("name, partition", [("d2l.yaml", "sequential"), ("d2l-random.yaml", "random")])
def test_the_books_configs_are_the_books_setup(name, partition):
    from pathlib import Path

    c = load_config(Path(__file__).resolve().parents[1] / "configs" / name)
    assert (c.data.preprocess.value, c.data.max_chars, c.data.val_fraction, c.data.partition.value) == (
        "lines", 10000, 0.0, partition)
    assert (c.model.cell.value, c.model.hidden, c.data.batch_size, c.strategy.tau, c.optim.lr, c.train.epochs) == (
        "rnn", 512, 32, 35, 1.0, 500)
