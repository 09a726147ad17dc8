"""The character-level language model: one-hot (or embedded) input, stacked recurrent layers, a linear head."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .recurrence import GATES, Cell, recur

State = list[tuple[torch.Tensor, ...]]  # per layer: (h,) or (h, c), each [B, H]


class RecurrentLayer(nn.Module):
    """One recurrent layer with PyTorch's parameter layout (weight_ih, weight_hh, bias_ih, bias_hh)."""

    def __init__(self, cell: Cell, input_size: int, hidden: int, one_hot: bool):
        super().__init__()
        self.cell, self.hidden, self.one_hot = Cell(cell), hidden, one_hot
        gates = GATES[self.cell] * hidden
        self.weight_ih = nn.Parameter(torch.empty(gates, input_size))
        self.weight_hh = nn.Parameter(torch.empty(gates, hidden))
        self.bias_ih = nn.Parameter(torch.empty(gates))
        self.bias_hh = nn.Parameter(torch.empty(gates))
        bound = 1 / math.sqrt(hidden)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def project(self, inputs: torch.Tensor) -> torch.Tensor:
        """Input projections for the whole window at once: token ids [T, B] or features [T, B, I]."""
        if self.one_hot:
            return F.embedding(inputs, self.weight_ih.t() + self.bias_ih)  # gather from a contiguous [V, G] table
        return F.linear(inputs, self.weight_ih, self.bias_ih)

    def forward(self, inputs, state, xi):
        return recur(self.cell, self.project(inputs), state, self.weight_hh, self.bias_hh, xi)


class CharRNN(nn.Module):
    def __init__(
        self, vocab_size: int, cell: Cell = Cell.rnn, hidden: int = 512, layers: int = 1,
        dropout: float = 0.0, embedding: int = 0,
    ):
        super().__init__()
        self.cell, self.hidden = Cell(cell), hidden
        self.embed = nn.Embedding(vocab_size, embedding) if embedding else None
        sizes = [embedding or vocab_size] + [hidden] * (layers - 1)
        self.layers = nn.ModuleList(
            RecurrentLayer(cell, size, hidden, one_hot=(i == 0 and not embedding)) for i, size in enumerate(sizes)
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab_size)

    def init_state(self, batch_size: int) -> State:
        zeros = lambda: self.head.weight.new_zeros(batch_size, self.hidden)  # noqa: E731
        return [(zeros(), zeros()) if self.cell is Cell.lstm else (zeros(),) for _ in self.layers]

    def forward(self, x: torch.Tensor, state: State, xi: list[float] | None = None):
        """Logits [T, B, V] for token ids x [T, B]; `xi` weights each step's h_{t-1} -> h_t gradient."""
        inputs = self.embed(x) if self.embed is not None else x
        new_state = []
        for layer, layer_state in zip(self.layers, state):
            inputs, layer_state = layer(inputs, layer_state, xi)
            inputs = self.drop(inputs)
            new_state.append(layer_state)
        return self.head(inputs), new_state


def detach_state(state: State) -> State:
    return [tuple(t.detach() for t in layer) for layer in state]
