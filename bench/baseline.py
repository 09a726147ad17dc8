"""The plain-PyTorch baseline: the d2l book's concise RNN language model and its training loop, written well.

As in the book (8.6 "Concise Implementation of RNNs"): one-hot input, a built-in nn.RNN/GRU/LSTM, a
linear head over every step, mean cross-entropy, gradient clipping, SGD, and the state detached
between windows (or fresh for random partitioning). "Written well": time-major batches with no
transposes, `clip_grad_norm_` instead of a Python loop over parameters, `zero_grad(set_to_none=True)`,
and no per-step `.item()`. The segment lengths come from the same strategy objects as the trainer's;
the built-in modules cannot apply `xi`, so the baseline's `random` only reproduces its lengths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bpttcli.data import make_batcher
from bpttcli.strategies import StrategyName, make_strategy

MODULES = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


class BuiltinLM(nn.Module):
    """d2l's RNNModel: one-hot input -> built-in recurrent layer -> linear head on every step."""

    def __init__(self, cell: str, vocab_size: int, hidden: int):
        super().__init__()
        self.cell, self.vocab_size = cell, vocab_size
        self.rnn = MODULES[cell](vocab_size, hidden)
        self.head = nn.Linear(hidden, vocab_size)

    def begin_state(self, batch_size: int):
        h = self.head.weight.new_zeros(1, batch_size, self.rnn.hidden_size)
        return (h, h.clone()) if self.cell == "lstm" else h

    def forward(self, x: torch.Tensor, state):
        """Logits [T * B, V] for token ids x [T, B]."""
        y, state = self.rnn(F.one_hot(x, self.vocab_size).to(self.head.weight.dtype), state)
        return self.head(y.reshape(-1, y.shape[-1])), state


def detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


class BaselineLoop:
    """One SGD update per `step()` on the next window, as the book's `train_epoch_ch8` does."""

    def __init__(
        self, cell: str, hidden: int, strategy: str, tokens: torch.Tensor, vocab_size: int,
        device: torch.device, batch_size: int = 32, tau: int = 35, lr: float = 1.0, seed: int = 0,
    ):
        torch.manual_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.device = device
        self.net = BuiltinLM(cell, vocab_size, hidden).to(device)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=lr)
        sequential = StrategyName(strategy) is not StrategyName.full
        self.batcher = make_batcher(tokens, batch_size, tau, self.generator, sequential)
        self.strategy = make_strategy(StrategyName(strategy), tau, self.batcher.carries_state)
        self.batch_size = batch_size
        self.batcher.start_epoch()
        self.state = self.net.begin_state(batch_size)

    def step(self) -> int:
        if self.batcher.remaining == 0:
            self.batcher.start_epoch()
            self.state = self.net.begin_state(self.batch_size)
        segment = self.strategy.next_segment(self.batcher.remaining, self.generator)
        x, y = (t.to(self.device, non_blocking=True) for t in self.batcher.next(segment.length))
        state = self.net.begin_state(x.shape[1]) if not self.batcher.carries_state else detach(self.state)
        logits, self.state = self.net(x, state)
        loss = F.cross_entropy(logits, y.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.optimizer.step()
        return y.numel()
