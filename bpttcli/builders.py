"""What every command builds from a config: the process set-up, the dataset, the model, the optimizer.

`train`, `sample`, `analyze`, `compare` and the benchmark share these, so none of them needs the
training loop to load a corpus or a trained model.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from . import checkpoint, tokencache
from .config import Config, LrSchedule, OptimConfig, OptimizerName, from_dict, saved_config
from .data import Dataset, split_dataset
from .download import fetch
from .errors import CheckpointError, ConfigError, reason
from .model import CharRNN
from .runtime import check_memory, flush_denormals, resolve_device, seed_everything, tune_allocator
from .ui import console
from .vocab import Vocab


def prepare_process(config: Config) -> tuple[torch.device, torch.Generator]:
    """Pick the device, refuse a model that cannot fit it, tune the CPU (allocator, denormals) and seed; returns
    the device and the data generator."""
    device = resolve_device(config.train.device)
    check_memory(config, device)
    if device.type == "cpu":
        tune_allocator()
        flush_denormals()
    return device, seed_everything(config.train.seed)


def corpus_path(config: Config, quiet: bool = False) -> Path:
    """The corpus file: data.path, or the book (downloaded and verified if not cached yet)."""
    d = config.data
    return Path(d.path) if d.path else fetch(d.url, d.sha1, d.data_dir, show_progress=not quiet, console=console)


def load_prepared(config: Config, vocab: Vocab | None = None, quiet: bool = False) -> tuple[Path, tokencache.Prepared]:
    """The corpus file and its token ids from the token cache (prepared on first use), in `vocab` if given."""
    path = corpus_path(config, quiet)
    return path, tokencache.load(path, config.data.preprocess, config.data.data_dir, vocab, quiet)


def load_dataset(config: Config, vocab: Vocab | None = None, quiet: bool = False) -> Dataset:
    """The corpus, prepared once into the token cache and memory-mapped, split into training and validation.

    With `vocab`, the ids are in that vocabulary (characters outside it become <unk>), else in the corpus's own.
    """
    _, prepared = load_prepared(config, vocab, quiet)
    tokens = torch.from_numpy(prepared.tokens)[: config.data.max_chars or None]
    return split_dataset(prepared.vocab, tokens, config.data.batch_size, config.strategy.tau, config.data.val_fraction)


def build_model(config: Config, vocab_size: int) -> CharRNN:
    m = config.model
    return CharRNN(vocab_size, m.cell, m.hidden, m.layers, m.dropout, m.embedding, m.weight_drop, m.locked_dropout,
                   m.embed_dropout)


def build_optimizer(config: Config, model: CharRNN) -> torch.optim.Optimizer:
    o = config.optim
    if o.optimizer is OptimizerName.adam:
        return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def scheduled_lr(o: OptimConfig, done: float) -> float:
    """The learning rate once `done` of the token budget is trained: the base rate, or its cosine annealing."""
    if o.schedule is LrSchedule.constant:
        return o.lr
    return o.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


def load_trained(target: Path, which: str = "best") -> tuple[Config, CharRNN, Vocab, Path]:
    """The config, model (on the CPU) and vocabulary of a run directory's `<which>.pt` or a checkpoint file."""
    path = checkpoint.resolve(target, which)
    payload = checkpoint.load(path)
    try:
        config, vocab = from_dict(saved_config(payload["config"])), Vocab.from_list(payload["vocab"])
        model = build_model(config, len(vocab))
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, RuntimeError, ConfigError) as exc:
        raise CheckpointError(f"{path} does not hold a bptt model ({reason(exc)}); use a checkpoint from bptt train") from None
    return config, model, vocab, path
