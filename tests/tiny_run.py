"""The tiny training run that the train tests share: its text, settings, config and a signalled subprocess."""

from __future__ import annotations

import os
import subprocess
import time

from bpttcli.config import load_config

TEXT = (
    "The Time Traveller (for so it will be convenient to speak of him) was expounding a recondite matter to us. "
    "His grey eyes shone and twinkled, and his usually pale face was flushed and animated.\n"
) * 2
TIMING = ("tokens_per_s", "elapsed")  # metrics that differ from run to run
# The tests' plain run: a tanh RNN, truncated BPTT, SGD at a constant rate, no regularisers and no time limit,
# not the main job that the config's defaults are (whose settings the tests vary one at a time).
PLAIN = {"model.cell": "rnn", "model.weight_drop": 0.0, "model.locked_dropout": 0.0, "strategy.name": "truncated",
         "optim.optimizer": "sgd", "optim.lr": 1.0, "optim.weight_decay": 0.0, "optim.schedule": "constant",
         "optim.average": 0.0, "train.epochs": 10, "train.max_time": 0.0}
TINY = {**PLAIN, "model.hidden": 16, "data.batch_size": 2, "strategy.tau": 5, "train.log_every": 4,
        "train.eval_every": 6, "train.device": "cpu"}
TINY_ARGS = ("--hidden", 16, "-b", 2, "-t", 5, "--device", "cpu", "--model", "rnn", "--weight-drop", 0, "--locked-dropout", 0,
             "--strategy", "truncated", "--optimizer", "sgd", "--lr", 1, "--weight-decay", 0, "--lr-schedule", "constant",
             "--average", 0, "--epochs", 10, "--max-time", 0)  # PLAIN as options: a test's own options after them win


def write_corpus(directory) -> "os.PathLike":
    path = directory / "tiny.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def config(corpus, **flags):
    """A tiny run's config; `flags` use '__' for '.', e.g. train__max_steps=20."""
    return load_config(None, {**TINY, "data.path": str(corpus), **{k.replace("__", "."): v for k, v in flags.items()}})


def signalled(command: list[str], run, signum: int, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `command` (a `bptt train` into `run`), send it `signum` once its metrics.jsonl exists, wait for it."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + timeout
    while not (run / "metrics.jsonl").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


class SilentView:
    """A progress view that shows nothing and acts once `tokens` characters are trained."""

    def __init__(self, tokens: int):
        self.left = tokens

    def advance(self, amount: float = 1, **fields) -> None:
        self.left -= amount
        if self.left <= 0 < self.left + amount:
            self.act()

    def act(self) -> None:
        raise NotImplementedError

    def stats(self, text: str) -> None:
        pass

    def print(self, message: str) -> None:
        pass


class Signals(SilentView):
    """Sends this process `signum`, as a user or a scheduler would."""

    def __init__(self, tokens: int, signum: int):
        super().__init__(tokens)
        self.signum = signum

    def act(self) -> None:
        os.kill(os.getpid(), self.signum)
