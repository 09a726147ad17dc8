"""bpttcli.distributed: 2 ranks x B/2 streams train exactly as 1 process x B, on real gloo groups on 127.0.0.1.

The processes are started as torchrun starts them (RANK, WORLD_SIZE, MASTER_ADDR, ... in the environment),
by the tests themselves for exit codes and output per rank, and by torchrun itself for a restart. Every
case of the equivalence tests trains in one launch of 2 ranks (`two_ranks`), to keep the suite fast.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bpttcli import checkpoint
from bpttcli.distributed import SingleProcess, join
from bpttcli.errors import ConfigError
from bpttcli.rundir import hold_run_dir
from bpttcli.train import resume

import distributed_worker as worker
from test_launch import free_port, torchrun_env
from tiny_run import TINY_ARGS

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("The Time Traveller (for so it will be convenient to speak of him) was expounding a recondite matter to us. "
        "His grey eyes shone and twinkled, and his usually pale face was flushed and animated. ") * 6
TIMING = ("tokens_per_s", "elapsed")
STEPS, STOP = 6, 3  # updates of every run; where the resumed runs stop first
SCHEDULES = {
    "full": {"strategy.name": "full"},
    "truncated": {"strategy.name": "truncated"},
    "random-geometric": {"strategy.name": "random", "strategy.schedule": "geometric"},
    "random-polytail": {"strategy.name": "random", "strategy.schedule": "polytail"},
}
MAIN_JOB = {"model.cell": "gru", "model.weight_drop": 0.2, "model.locked_dropout": 0.25, "optim.optimizer": "adam",
            "optim.lr": 0.01, "optim.weight_decay": 0.1, "optim.schedule": "cosine", "optim.average": 0.9,
            "strategy.name": "random"}  # the defaults' regularisers, optimizer and averaging on a tiny model
CASES = {  # name -> (flags, dtype)
    **{f"{s}-{p}": ({**flags, "data.partition": p}, "float64") for s, flags in SCHEDULES.items()
       for p in ("sequential", "random")},
    "main-job": (MAIN_JOB, "float64"),
    "lstm-2-layers-tbptt-dropouts-embedding": (
        {"model.cell": "lstm", "model.layers": 2, "model.dropout": 0.3, "model.locked_dropout": 0.2,
         "model.embedding": 6, "model.embed_dropout": 0.1, "strategy.name": "tbptt", "strategy.k2": 8}, "float64"),
    "float32-gru-truncated-sequential": ({"model.cell": "gru"}, "float32"),
    "float32-random-polytail-random": ({**SCHEDULES["random-polytail"], "data.partition": "random"}, "float32"),
}
TOLERANCE = {"float64": 1e-10, "float32": 1e-5}
# a resumed run carries hidden state, a TBPTT context, dropout and weight-drop draws and a weight average
RESUMED = ({"model.cell": "lstm", "model.dropout": 0.3, "model.locked_dropout": 0.25, "model.weight_drop": 0.2,
            "optim.average": 0.9, "strategy.name": "tbptt", "strategy.k2": 8}, "float64")
# periodic checkpoints, with rank 1's clock running twice as fast as rank 0's: the processes must agree on
# each save, or their gathers mismatch
PERIODIC = ({"train.checkpoint_every": 0.02, "train.eval_every": 0}, "float64")


# ----------------------------------------------------------------------------------- launching
def rank_env(rank: int, world: int, port: int) -> dict:
    """The environment torchrun gives rank `rank` of `world` on one machine."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
            "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
            "BPTT_DIST_TIMEOUT": "60"}


def start_ranks(argv: list[str], cwds: list[Path]) -> list[subprocess.Popen]:
    port = free_port()
    return [subprocess.Popen(argv, cwd=cwd, env=rank_env(rank, len(cwds), port), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for rank, cwd in enumerate(cwds)]


def finish(procs: list[subprocess.Popen], timeout: float = 150) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of every process; all are killed if one outlives `timeout`."""
    deadline, results = time.monotonic() + timeout, []
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(deadline - time.monotonic(), 1))
            results.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return results


def wait_for(path: Path, procs, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), f"{path} never appeared"
        time.sleep(0.005)


# ---------------------------------------------------------------------------------- comparing
def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def assert_same_run(got: Path, want: Path, rel: float) -> None:
    """Metrics lines (every loss, grad norm, validation) and final weights (trained and averaged) equal to
    `rel`, the rest exactly."""
    a, b = records(got), records(want)
    assert [(r["kind"], r["step"], r["tokens"]) for r in a] == [(r["kind"], r["step"], r["tokens"]) for r in b]
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(y[key], float) and math.isfinite(y[key]):
                assert x[key] == pytest.approx(y[key], rel=rel, abs=0), (x["kind"], x["step"], key)
            else:
                assert x[key] == y[key], key
    pa, pb = (checkpoint.load(d / "last.pt") for d in (got, want))
    for entry in ("model", "train_model"):
        assert (entry in pa) == (entry in pb)
        for name in pb.get(entry, {}):
            assert (pa[entry][name] - pb[entry][name]).abs().max() <= rel * pb[entry][name].abs().max(), name


def job(name: str, do: str, run_dir: Path, corpus: Path, flags: dict, dtype: str, report: Path | None = None,
        fails: bool = False, skew: bool = False):
    return {"name": name, "do": do, "run_dir": str(run_dir), "corpus": str(corpus), "flags": flags, "dtype": dtype,
            "report": str(report) if report else None, "fails": fails, "skew": skew}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def two_ranks(corpus, tmp_path_factory):
    """Every case trained by 2 ranks in one launch, runs stopped and resumed at 2, 1->2 and 2->1 ranks, and
    runs that fail on rank 0's run directory."""
    top = tmp_path_factory.mktemp("two-ranks")
    flags, dtype = RESUMED
    one_then_two = top / "resume-1-to-2"
    worker.run(job("", "train", one_then_two, corpus, {**flags, "train.max_steps": STOP}, dtype))
    jobs = [job(name, "train", top / name, corpus, {**f, "train.max_steps": STEPS}, d, report=top / name)
            for name, (f, d) in CASES.items()]
    jobs += [
        job("", "train", top / "periodic", corpus, {**PERIODIC[0], "train.max_steps": 5 * STEPS}, PERIODIC[1],
            skew=True),
        job("", "train", top / "resume-2", corpus, {**flags, "train.max_steps": STOP}, dtype),
        job("", "resume", top / "resume-2", corpus, {"train.max_steps": STEPS}, dtype),
        job("", "resume", one_then_two, corpus, {"train.max_steps": STEPS}, dtype),
        job("", "train", top / "resume-2-to-1", corpus, {**flags, "train.max_steps": STOP}, dtype),
        # rank 0 alone touches the run directory; the others raise its errors
        job("unwritable", "train", top / "a-file" / "run", corpus, {}, dtype, report=top / "unwritable", fails=True),
        job("no-checkpoint", "resume", top / "nothing", corpus, {}, dtype, report=top / "no-checkpoint", fails=True),
        job("in-use", "train", top / "busy", corpus, {}, dtype, report=top / "in-use", fails=True),
    ]
    (top / "a-file").write_text("")
    (top / "busy").mkdir()
    (top / "jobs.json").write_text(json.dumps(jobs))
    with hold_run_dir(top / "busy"):  # another bptt process's run
        procs = start_ranks([sys.executable, str(ROOT / "tests/distributed_worker.py"), str(top / "jobs.json")],
                            [top, top])
        for rank, (code, out, err) in enumerate(finish(procs)):
            assert code == 0, f"rank {rank}: {err[-3000:]}"
    worker.run(job("", "resume", top / "resume-2-to-1", corpus, {"train.max_steps": STEPS}, dtype))
    return top


@pytest.fixture(scope="module")
def one_process(corpus, tmp_path_factory):
    """The single-process reference run of a case (computed once)."""
    cache = {}

    def get(name: str) -> Path:
        if name not in cache:
            (flags, dtype), steps = {"resumed": (RESUMED, STEPS), "periodic": (PERIODIC, 5 * STEPS)}.get(
                name, (CASES.get(name), STEPS))
            cache[name] = tmp_path_factory.mktemp("one") / name
            worker.run(job(name, "train", cache[name], corpus, {**flags, "train.max_steps": steps}, dtype))
        return cache[name]

    return get


# ------------------------------------------------------------------------ N ranks = one process
@pytest.mark.parametrize("name", CASES)
def test_two_ranks_train_exactly_as_one_process(two_ranks, one_process, name):
    assert_same_run(two_ranks / name, one_process(name), TOLERANCE[CASES[name][1]])
    assert len([r for r in records(two_ranks / name) if r["kind"] == "train"]) == STEPS  # one line per update


def test_ranks_keep_identical_weights_and_random_states(two_ranks):
    for name in CASES:
        ranks = [torch.load(two_ranks / f"{name}.rank{r}.pt", weights_only=True) for r in (0, 1)]
        assert all(torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]) for k in ranks[0]["weights"]), name
        for state in ("rng", "generator"):
            assert torch.equal(ranks[0][state], ranks[1][state]), (name, state)


def test_periodic_checkpoints_are_agreed_by_every_rank(two_ranks, one_process):
    assert_same_run(two_ranks / "periodic", one_process("periodic"), TOLERANCE["float64"])


@pytest.mark.parametrize("name, code, says", [
    ("unwritable", 2, "cannot write to directory"), ("no-checkpoint", 5, "has no last.pt to resume from"),
    ("in-use", 2, "is in use by another bptt process")])
def test_every_rank_fails_with_rank_0s_error_about_the_run_directory(two_ranks, name, code, says):
    errors = [json.loads((two_ranks / f"{name}.rank{r}.json").read_text()) for r in (0, 1)]
    assert errors[0] == errors[1] and errors[0]["code"] == code and says in errors[0]["error"]


@pytest.mark.parametrize("run", ["resume-2", "resume-1-to-2", "resume-2-to-1"])
def test_resume_at_any_world_size_continues_the_same_run(two_ranks, one_process, run):
    assert_same_run(two_ranks / run, one_process("resumed"), TOLERANCE[RESUMED[1]])
    assert checkpoint.load(two_ranks / run / "last.pt")["replay"] is not None  # a TBPTT context was carried


# ---------------------------------------------------------------------- the command, signals
ARGS = (*TINY_ARGS, "-b", 4, "--lr", 0.1)  # a slow learning rate, so that float32 rounding stays small


def command(corpus: Path, *args) -> list[str]:
    """`python -m bpttcli train` of the tests' plain run on 4 streams."""
    return [sys.executable, "-m", "bpttcli", "train", "--data", str(corpus), *map(str, ARGS), *map(str, args)]


@pytest.fixture
def reference(bptt, corpus, tmp_path):
    """Factory: the uninterrupted single-process run of `command(corpus, *args)`."""

    def run(*args) -> Path:
        bptt("train", "--data", corpus, *ARGS, *args, "--run-dir", tmp_path / "reference", "-q")
        return tmp_path / "reference"

    return run


def test_sigterm_on_one_rank_stops_both_after_one_save_by_rank_0(corpus, tmp_path, reference):
    cwds = [tmp_path / "rank0", tmp_path / "rank1"]  # one run directory per machine: rank 1's must stay empty
    for cwd in cwds:
        cwd.mkdir()
    args = ("--max-steps", 100000, "--epochs", 10**6, "--log-every", 5, "--eval-every", 0,
            "--set", "train.checkpoint_every=0", "--run-dir", "run")  # the only checkpoint: the one at the stop
    procs = start_ranks(command(corpus, *args), cwds)
    run = cwds[0] / "run"
    wait_for(run / "metrics.jsonl", procs)
    procs[1].send_signal(signal.SIGTERM)
    (code0, out0, err0), (code1, out1, err1) = finish(procs, timeout=90)
    assert (code0, code1) == (143, 143), err0[-2000:] + err1[-2000:]
    stopped = checkpoint.load(run / "last.pt")["step"]
    line = f"error: interrupted (SIGTERM) at step {stopped}; checkpoint saved; resume with: bptt train --resume run"
    assert err0.count(line) == 1 and "Traceback" not in err0
    assert (out1, err1.strip()) == ("", line)  # rank 1 prints nothing but its error
    assert not (cwds[1] / "run").exists()
    assert {p.name for p in run.iterdir()} == {"config.yaml", "last.pt", "metrics.jsonl"}
    # the checkpoint of 2 ranks resumes in 1 process as the uninterrupted run
    resume(run, {"train.max_steps": stopped + 3}, quiet=True)
    want = reference("--max-steps", stopped + 3, "--epochs", 10**6, "--log-every", 5, "--eval-every", 0)
    assert_same_run(run, want, TOLERANCE["float32"])


def worker_pids(parent: int) -> list[int]:
    path = Path(f"/proc/{parent}/task/{parent}/children")
    return [int(pid) for pid in path.read_text().split()] if path.exists() else []


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds torchrun's workers in /proc")
def test_torchrun_restarts_a_killed_group_from_last_pt(corpus, tmp_path, reference):
    run, args = tmp_path / "run", ("--max-steps", 150, "--log-every", 10, "--eval-every", 10)
    env = {k: v for k, v in rank_env(0, 1, 0).items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    torchrun = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--max-restarts", "1",
         "--monitor-interval", "0.1", *command(corpus, *args, "--run-dir", run)[1:]],
        cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(run / "last.pt", [torchrun])
        killed = worker_pids(torchrun.pid)
        assert killed, "torchrun's workers not found"
        os.kill(killed[-1], signal.SIGKILL)
    finally:
        [(code, out, err)] = finish([torchrun], timeout=150)
    assert code == 0, err[-3000:]
    assert "Restarting" in err or "restart" in err.lower()
    assert checkpoint.load(run / "last.pt")["step"] == 150
    assert out.count("done · ") == 1 and "done · 150 steps" in out  # rank 0's line; rank 1 prints nothing
    assert_same_run(run, reference(*args), TOLERANCE["float32"])


# ------------------------------------------------------------------------------- bad launches
def test_a_batch_that_does_not_split_over_the_ranks_fails_before_joining(bptt_error, monkeypatch, corpus, tmp_path):
    torchrun_env(monkeypatch, MASTER_PORT="1", BPTT_DIST_TIMEOUT="2")  # nothing listens: joining would fail
    line = bptt_error("train", "--data", corpus, "-b", 3, "--run-dir", tmp_path / "run", code=2, alone=True)
    assert "data.batch_size 3 does not split over 2 processes; use a multiple of 2" in line
    assert not (tmp_path / "run").exists()


def test_without_a_launcher_there_is_one_process_holding_the_whole_batch():
    group = join(8)
    assert type(group) is SingleProcess and group.world_size == 1 and group.is_main
    assert group.columns(8) == slice(0, 8) and group.local_batch(8) == 8
    assert group.vote(None, 0, 5.0) == (None, False, True) and group.vote(15) == (15,)


def test_only_a_restart_of_the_same_launch_resumes_its_run(monkeypatch, tmp_path):
    group, run = SingleProcess(), tmp_path / "run"
    run.mkdir()
    default = lambda: tmp_path / "default"  # noqa: E731
    assert group.open_run_dir(run, default) == (run, False)  # a first start: a new run (checked under the lock)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "this-launch")
    assert group.open_run_dir(run, default) == (run, False)  # restarted before its first checkpoint: start over
    checkpoint.save({"launch": "another-launch"}, run / "last.pt")
    assert group.open_run_dir(run, default) == (run, False)  # not ours: refused later as any existing run
    checkpoint.save({"launch": "this-launch"}, run / "last.pt")
    assert group.open_run_dir(run, default) == (run, True)
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    with pytest.raises(ConfigError, match="--max-restarts needs --run-dir"):
        group.open_run_dir(None, default)


def test_python_dash_m_bpttcli_is_the_bptt_command():
    done = subprocess.run([sys.executable, "-m", "bpttcli", "--version"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stdout.startswith("bptt "), done.stderr
