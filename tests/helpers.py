"""Tiny models and batches shared by the gradient tests (float64 unless asked otherwise)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bpttcli.model import CharRNN
from bpttcli.recurrence import Cell

RECURRENT = [Cell.rnn, Cell.gru, Cell.lstm]
ALL_CELLS = RECURRENT + [Cell.linear]


def make_model(cell, vocab=7, hidden=5, layers=1, embedding=0, seed=0, dtype=torch.float64) -> CharRNN:
    torch.manual_seed(seed)
    return CharRNN(vocab, cell, hidden, layers, embedding=embedding).to(dtype)


def make_batch(vocab=7, steps=9, batch=3, seed=0):
    """Token ids x, y [steps, batch], y being x shifted by one."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(vocab, (steps + 1, batch), generator=g)
    return tokens[:-1], tokens[1:]


def random_state(model: CharRNN, batch: int, seed=1, scale=0.5):
    """A non-zero initial state (leaves with requires_grad) in the model's dtype."""
    g = torch.Generator().manual_seed(seed)

    def leaf(zeros):
        return (scale * torch.randn(zeros.shape, generator=g, dtype=torch.float64)).to(zeros.dtype).requires_grad_()

    return [tuple(leaf(t) for t in layer) for layer in model.init_state(batch)]


def summed_ce(logits, y):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")


def grad_of(loss, leaves) -> torch.Tensor:
    """d loss / d leaves, flattened into one vector."""
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, leaves)])


def leaves_of(model: CharRNN, state) -> list[torch.Tensor]:
    """The parameters, then every initial-state tensor."""
    return list(model.parameters()) + [s for layer in state for s in layer]


def final_state_loss(state) -> torch.Tensor:
    """A fixed linear function of the final state, so that its gradient flows back too."""
    return sum((s * torch.linspace(-1, 1, s.numel(), dtype=s.dtype).view_as(s)).sum() for layer in state for s in layer)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())
