"""The BPTT engine: the loss of one segment, its gradient under a strategy, and evaluation."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .data import eval_windows
from .model import CharRNN, State, detach_state
from .strategies import Segment, Strategy


def _segment_loss(model: CharRNN, x, y, state: State, xi, skip: int = 0):
    logits, state = model(x, state, xi)
    logits, y = logits[skip:], y[skip:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"), state


# A segment longer than CHUNKED_FROM steps runs in at least 10 chunks of at most HEAD_CHUNK steps: the steps whose
# output layer runs (and whose dL/dh is materialised) at once. Truncated and random segments of tau = 35 stay whole.
CHUNKED_FROM, HEAD_CHUNK = 128, 64


def forward_loss(
    model: CharRNN, x, y, state: State, xi: list[float] | None = None, recompute: bool = False, skip: int = 0
):
    """Summed cross-entropy over a segment (its first `skip` targets left out) and the final state.

    A segment longer than CHUNKED_FROM steps runs in chunks (recurrence, head, loss), the state carried
    from chunk to chunk without a cut: the same gradient, but autograd, which runs the most recently
    created ready node first, materialises each chunk's output-layer gradient dL/dh only just before
    that chunk's recurrence backward, so that full BPTT holds the stored states and a chunk's worth of
    gradient buffers, not a second [L, B, H] tensor. With `recompute`, the chunks are ~sqrt(L) steps whose
    activations are recomputed during backward (segment checkpointing): O(sqrt(L)) memory, the same gradient.
    """
    steps = x.shape[0]
    if recompute and steps >= 4:
        chunk, run = math.ceil(math.sqrt(steps)), _checkpointed
    elif steps > CHUNKED_FROM:
        chunk, run = min(HEAD_CHUNK, math.ceil(steps / 10)), _segment_loss
    else:
        return _segment_loss(model, x, y, state, xi, skip)
    total = 0.0
    for start in range(0, steps, chunk):
        part = slice(start, start + chunk)
        loss, state = run(model, x[part], y[part], state, None if xi is None else xi[part], max(0, skip - start))
        total = total + loss
    return total, state


def _checkpointed(*args):
    return checkpoint(_segment_loss, *args, use_reentrant=False)


class Replay:
    """The steps a segment's context runs again: TBPTT(k1, k2)'s last k2 - k1 steps and the state before them.

    `forward` prepends them to the segment's new steps (their losses are not counted twice), so the
    gradient of the new steps' losses flows back through k2 steps; the chain is cut where the replayed
    steps begin. A segment without context runs as it is and keeps nothing.
    """

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.x = self.y = self.state = None

    def forward(self, model: CharRNN, x, y, state: State, segment: Segment, recompute: bool = False):
        """Summed loss of the new steps' targets and the final state, as `forward_loss`."""
        xi, skip = None if segment.xi is None else segment.xi.tolist(), 0
        if segment.context and self.x is not None:
            x, y, state, skip = torch.cat([self.x, x]), torch.cat([self.y, y]), self.state, len(self.x)
        carry = max(0, len(x) - segment.context)  # where the next segment's context begins
        if carry == len(x):
            return forward_loss(model, x, y, state, xi, recompute, skip)
        # a segment with context has no cuts inside (xi is None): the chain is cut only where x begins
        loss, mid = forward_loss(model, x[:carry], y[:carry], state, None, recompute, skip) if carry else (0.0, state)
        self.x, self.y, self.state = x[carry:], y[carry:], detach_state(mid)
        rest, state = forward_loss(model, x[carry:], y[carry:], mid, None, recompute, max(0, skip - carry))
        return loss + rest, state

    def state_dict(self) -> dict | None:
        return None if self.x is None else {"x": self.x, "y": self.y, "state": [list(layer) for layer in self.state]}

    def load_state_dict(self, saved: dict | None, device: torch.device) -> None:
        self.clear()
        if saved:
            self.x, self.y = saved["x"].to(device), saved["y"].to(device)
            self.state = [tuple(t.to(device) for t in layer) for layer in saved["state"]]


def segments(strategy: Strategy, length: int, generator: torch.Generator):
    """Cut `length` steps into the strategy's segments: yields (slice of the new steps, segment) in order."""
    start = 0
    while start < length:
        segment = strategy.next_segment(length - start, generator)
        yield slice(start, start + segment.length), segment
        start += segment.length


def window_gradient(
    model: CharRNN, x, y, state: State, strategy: Strategy, generator: torch.Generator, norm: float
) -> torch.Tensor:
    """The gradient `strategy` yields over one window at fixed parameters: the sum over its segments."""
    model.zero_grad(set_to_none=True)
    replay = Replay()
    for part, segment in segments(strategy, x.shape[0], generator):
        loss, state = replay.forward(model, x[part], y[part], state, segment)
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
