"""What a run prints as it starts: what trains, on which data, until when, where."""

from __future__ import annotations

from pathlib import Path

import torch

from .config import Config
from .data import Dataset
from .recurrence import describe
from .runtime import activation_bytes
from .ui import compact, plural


def budget(config: Config) -> str:
    """What stops the run, e.g. '20 epochs or 300 s': epochs and whichever limits are set."""
    t = config.train
    limits = [plural(t.epochs, "epoch")]
    limits += [f"{plural(t.max_steps, 'step')}"] if t.max_steps else []
    limits += [f"{compact(t.max_tokens)} chars"] if t.max_tokens else []
    limits += [f"{t.max_time:g} s"] if t.max_time else []
    return " or ".join(limits)


def header(c: Config, params: int, device: torch.device, data: Dataset, steps_per_epoch: int, run_dir: Path,
           updates: int, whole_epoch: bool) -> str:
    """Three lines (four for full BPTT over whole epochs): model, optimiser, device and the recurrence's kernel
    (recurrence/kernels.py), data, budget and run directory."""
    o = c.optim
    text = (
        f"[bold]{c.strategy.name.value}[/] BPTT, tau {c.strategy.tau} · {c.model.cell.value.upper()}-"
        f"{c.model.hidden}x{c.model.layers}, {compact(params)} params · {o.optimizer.value} lr {o.lr:g} "
        f"{o.schedule.value}, clip {o.clip:g} · {device.type} · kernel: {describe(c.model.cell, device)}\n"
        f"data: {compact(len(data.train))} train / {compact(len(data.val))} val chars · vocab "
        f"{len(data.vocab)} · {c.data.batch_size} {c.data.partition.value} streams of {compact(steps_per_epoch)}\n"
        f"budget: {budget(c)} · run: {run_dir}" + (f" · resuming at step {updates}" if updates else "")
    )
    if whole_epoch:
        mib = activation_bytes(c, steps_per_epoch) / 2**20
        text += (f"\nfull BPTT over the whole epoch: one update per epoch, ~{mib:,.1f} MiB of activations"
                 + (" (--recompute: ~sqrt of that)" if c.train.recompute else ""))
    return text
