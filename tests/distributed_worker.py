"""One process of the data-parallel tests: `python distributed_worker.py JOBS.json`.

test_distributed.py starts it once per rank with torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...),
or calls `run` in its own process as the single-process reference. Each job trains or resumes a run through
bpttcli.train exactly as `bptt train` does, then saves this rank's weights and random states for the test.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import types
from pathlib import Path

import torch

import bpttcli.train as lib
from bpttcli.config import load_config
from bpttcli.distributed import join
from bpttcli.errors import BpttError
from bpttcli.launch import run_and_exit
from tiny_run import PLAIN

# the tests' plain run with 4 streams (2 per rank), every step logged, a validation every 4 updates; cases add
# the features they check
TINY = {**PLAIN, "model.hidden": 8, "data.batch_size": 4, "strategy.tau": 5, "optim.lr": 0.5, "train.log_every": 1,
        "train.eval_every": 4, "train.device": "cpu"}


@contextlib.contextmanager
def default_dtype(name: str):
    before = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, name))
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def run(job: dict) -> None:
    """Train (`do: train`, with `flags` over TINY) or resume (`do: resume`, with `flags` as changes) `run_dir`.

    A job that `fails` reports its error (message and exit code) instead of raising it.
    """
    if job.get("fails"):
        try:
            train_or_resume(job)
        except BpttError as exc:
            report = {"error": str(exc), "code": exc.exit_code}
            Path(f"{job['report']}.rank{join().rank}.json").write_text(json.dumps(report))
            return
        raise AssertionError(f"job {job['name']} did not fail")
    train_or_resume(job)


def skewed_clock(rank: int) -> types.SimpleNamespace:
    """The training loop's `time`, with rank r's clock running r + 1 times as fast as the real one."""
    start = time.monotonic()
    return types.SimpleNamespace(monotonic=lambda: start + (rank + 1) * (time.monotonic() - start))


def train_or_resume(job: dict) -> None:
    """With `skew`, every rank's training loop sees its own clock (they disagree on when a period is over)."""
    trainers = []
    original = lib._start
    lib._start = lambda trainer: trainers.append(trainer) or original(trainer)
    lib.time = skewed_clock(join().rank) if job.get("skew") else time
    try:
        with default_dtype(job.get("dtype", "float64")):
            if job["do"] == "train":
                flags = {**TINY, "data.path": job["corpus"], **job["flags"]}
                lib.train(load_config(None, flags), Path(job["run_dir"]), quiet=True)
            else:
                lib.resume(Path(job["run_dir"]), job["flags"], quiet=True)
    finally:
        lib._start, lib.time = original, time
    trainer = trainers[0]
    if job.get("report"):
        torch.save({"weights": trainer.model.state_dict(), "rng": torch.get_rng_state(),
                    "generator": trainer.generator.get_state()}, f"{job['report']}.rank{trainer.group.rank}.pt")


def main(path: str) -> None:
    for job in json.loads(Path(path).read_text()):
        run(job)
    join().barrier()
    print(f"rank {join().rank}: every job done", file=sys.stderr, flush=True)  # a failure after this is at exit


if __name__ == "__main__":
    run_and_exit(lambda: main(sys.argv[1]))
