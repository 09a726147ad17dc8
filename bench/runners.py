"""The two training loops the benchmark times: the trainer's own step, and the plain PyTorch baseline."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from bpttcli.config import load_config
from bpttcli.builders import load_dataset
from bpttcli.train import Trainer

from baseline import BaselineLoop

# full BPTT "exact over each window of tau": random partitioning, a fresh state per window
PARTITION = {"full": "random", "truncated": "sequential", "random": "sequential"}


def trainer_config(data: Path, cell: str, hidden: int, strategy: str, device: str, steps: int = 35, batch: int = 32):
    return load_config(None, {
        "data.path": str(data), "data.partition": PARTITION[strategy], "data.batch_size": batch,
        "model.cell": cell, "model.hidden": hidden, "strategy.name": strategy, "strategy.tau": steps,
        "optim.optimizer": "sgd", "optim.lr": 1.0, "optim.clip": 1.0, "train.epochs": 10**9,
        "optim.weight_decay": 0.0, "optim.schedule": "constant", "optim.average": 0.0, "train.max_time": 0.0,
        "model.weight_drop": 0.0, "model.locked_dropout": 0.0,
        "train.device": device, "train.eval_every": 0,
    })


class TrainerLoop:
    """`Trainer.step` itself: strategy segment, batch, forward_loss, backward, clip, SGD step, log line when due."""

    def __init__(self, data: Path, cell: str, hidden: int, strategy: str, device: str):
        self._dir = tempfile.TemporaryDirectory(prefix="bptt-bench-")
        self.trainer = Trainer(trainer_config(data, cell, hidden, strategy, device), Path(self._dir.name), quiet=True)

    def step(self) -> int:
        before = self.trainer.tokens
        if not self.trainer.step():
            raise RuntimeError("the benchmark's trainer ran out of epochs")
        return self.trainer.tokens - before


def baseline_loop(data: Path, cell: str, hidden: int, strategy: str, device: str) -> BaselineLoop:
    config = trainer_config(data, cell, hidden, strategy, device)
    dataset = load_dataset(config, quiet=True)
    return BaselineLoop(cell, hidden, strategy, dataset.train, len(dataset.vocab), torch.device(device))
