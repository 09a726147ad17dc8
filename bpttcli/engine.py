"""The BPTT engine: the loss of one segment, its gradient under a strategy, and evaluation."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .data import eval_windows
from .model import CharRNN, State, detach_state
from .strategies import Strategy


def _segment_loss(model: CharRNN, x, y, state: State, xi):
    logits, state = model(x, state, xi)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"), state


def forward_loss(model: CharRNN, x, y, state: State, xi: list[float] | None = None, recompute: bool = False):
    """Summed cross-entropy over a segment and the final state.

    With `recompute`, the segment runs in chunks of ~sqrt(L) steps whose activations are
    recomputed during backward (segment checkpointing): O(sqrt(L)) memory, the same gradient.
    """
    steps = x.shape[0]
    if not recompute or steps < 4:
        return _segment_loss(model, x, y, state, xi)
    chunk = math.ceil(math.sqrt(steps))
    total = 0.0
    for start in range(0, steps, chunk):
        part = slice(start, start + chunk)
        loss, state = checkpoint(
            _segment_loss, model, x[part], y[part], state, None if xi is None else xi[part], use_reentrant=False
        )
        total = total + loss
    return total, state


def segments(strategy: Strategy, length: int, generator: torch.Generator):
    """Cut `length` steps into the strategy's segments: yields (slice, xi or None) in order."""
    start = 0
    while start < length:
        segment = strategy.next_segment(length - start, generator)
        yield slice(start, start + segment.length), None if segment.xi is None else segment.xi.tolist()
        start += segment.length


def window_gradient(
    model: CharRNN, x, y, state: State, strategy: Strategy, generator: torch.Generator, norm: float
) -> torch.Tensor:
    """The gradient `strategy` yields over one window at fixed parameters: the sum over its segments."""
    model.zero_grad(set_to_none=True)
    for part, xi in segments(strategy, x.shape[0], generator):
        loss, state = forward_loss(model, x[part], y[part], state, xi)
        (loss / norm).backward()
        state = detach_state(state)
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


@torch.no_grad()
def evaluate(model: CharRNN, tokens: torch.Tensor, batch_size: int, window: int,
             progress: Callable[[int], None] | None = None) -> float:
    """Mean cross-entropy per character of `tokens`, in sequential windows that carry the state.

    The tokens stay where they are (a memory map, say); each window is read and moved to the model's device
    in turn. `progress(characters)` is called after each window.
    """
    was_training = model.training
    model.eval()
    device = model.head.weight.device
    state, total, count = None, torch.zeros((), device=device), 0
    for x, y in eval_windows(tokens, batch_size, window):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        width = x.shape[1]  # the final windows may continue only the last streams
        state = model.init_state(width) if state is None else [tuple(t[-width:] for t in layer) for layer in state]
        loss, state = _segment_loss(model, x, y, state, None)
        total, count = total + loss, count + y.numel()
        if progress:
            progress(y.numel())
    model.train(was_training)
    return float(total) / max(count, 1)
