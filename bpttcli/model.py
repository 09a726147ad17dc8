"""The character-level language model: one-hot (or embedded) input, stacked recurrent layers, a linear head.

Regularisation of the recurrence (AWD-LSTM, Merity et al. 2017), each with one mask per segment,
drawn by `draw_masks` before the segment's forward pass and used by training forward passes only:
- weight drop: DropConnect on W_hh; the hand-written backward receives the masked W_hh, so the
  gradient through h_{t-1} -> h_t uses the same mask as the forward pass;
- locked (variational) dropout: one mask per stream, the same at every step, on each layer's output
  and, with an embedding, on its output (Gal & Ghahramani 2016);
- embedding dropout: whole rows of the embedding (characters) dropped.

A process that trains only some `columns` of a global batch (data-parallel training, distributed.py)
draws every mask for the whole batch and keeps its columns (`train_columns`), so each stream's masks
are the same however many processes share the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .recurrence import GATES, Cell, run_layer

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
        self.weight_mask: torch.Tensor | None = None  # weight drop's mask on W_hh, scaled by 1/(1-p)

    def recurrent_weight(self) -> torch.Tensor:
        """W_hh, times weight drop's mask while training."""
        return self.weight_hh if self.weight_mask is None or not self.training else self.weight_hh * self.weight_mask

    def project(self, inputs: torch.Tensor) -> torch.Tensor:
        """Input projections for the whole window at once: token ids [T, B] or features [T, B, I]."""
        if self.one_hot:
            return F.embedding(inputs, self.weight_ih.t() + self.bias_ih)  # gather from a contiguous [V, G] table
        return F.linear(inputs, self.weight_ih, self.bias_ih)

    def forward(self, inputs, state, xi):
        return run_layer(self, inputs, state, xi)  # torch's fused kernel or the hand-written BPTT (recurrence/kernels.py)


class StreamDropout(nn.Dropout):
    """nn.Dropout for `columns` of a global batch of `streams`: the mask is drawn for every stream and cut
    to these columns. On the whole batch it is nn.Dropout itself (the same draws, on every device)."""

    streams: int | None = None  # width of the global batch (None: the input's own width)
    columns = slice(None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.streams in (None, x.shape[1]):
            return super().forward(x)
        noise = x.new_empty(x.shape[0], self.streams, *x.shape[2:])  # what nn.Dropout draws on the CPU, widened
        return x * noise.bernoulli_(1 - self.p).div_(1 - self.p)[:, self.columns]


class CharRNN(nn.Module):
    def __init__(
        self, vocab_size: int, cell: Cell = Cell.rnn, hidden: int = 512, layers: int = 1,
        dropout: float = 0.0, embedding: int = 0, weight_drop: float = 0.0, locked_dropout: float = 0.0,
        embed_dropout: float = 0.0,
    ):
        super().__init__()
        self.cell, self.hidden = Cell(cell), hidden
        self.weight_drop, self.locked_dropout, self.embed_dropout = weight_drop, locked_dropout, embed_dropout
        self.locked_masks: list[torch.Tensor | None] = []  # [B, size] per dropped tensor: input (embedded), layers
        self.embed_mask: torch.Tensor | None = None
        self.streams, self.columns = None, slice(None)  # the global batch's width and this process's streams
        self.embed = nn.Embedding(vocab_size, embedding) if embedding else None
        sizes = [embedding or vocab_size] + [hidden] * (layers - 1)
        self.layers = nn.ModuleList(
            RecurrentLayer(cell, size, hidden, one_hot=(i == 0 and not embedding)) for i, size in enumerate(sizes)
        )
        self.drop = StreamDropout(dropout)
        self.head = nn.Linear(hidden, vocab_size)

    def train_columns(self, streams: int, columns: slice) -> None:
        """Train on `columns` of a global batch of `streams`: masks are drawn for all of them, these kept."""
        self.streams, self.columns = streams, columns
        self.drop.streams, self.drop.columns = streams, columns

    def init_state(self, batch_size: int) -> State:
        zeros = lambda: self.head.weight.new_zeros(batch_size, self.hidden)  # noqa: E731
        return [(zeros(), zeros()) if self.cell is Cell.lstm else (zeros(),) for _ in self.layers]

    def draw_masks(self, batch_size: int) -> None:
        """New regularisation masks for the next segment (none when evaluating or when every rate is 0);
        `batch_size` is the width of the batch unless `train_columns` gave the global one."""
        def keep(shape, p):
            return torch.bernoulli(self.head.weight.new_full(shape, 1 - p)) / (1 - p) if self.training and p else None

        for layer in self.layers:
            layer.weight_mask = keep(layer.weight_hh.shape, self.weight_drop)
        sizes = ([self.embed.embedding_dim] if self.embed is not None else []) + [self.hidden] * len(self.layers)
        masks = [keep((self.streams or batch_size, size), self.locked_dropout) for size in sizes]
        self.locked_masks = [None if mask is None else mask[self.columns] for mask in masks]
        self.embed_mask = keep((self.embed.num_embeddings, 1), self.embed_dropout) if self.embed is not None else None

    def embedded(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding of token ids x, with embedding dropout's rows zeroed while training."""
        weight = self.embed.weight
        if self.training and self.embed_mask is not None:
            weight = weight * self.embed_mask
        return F.embedding(x, weight)

    def locked(self, index: int, inputs: torch.Tensor) -> torch.Tensor:
        """`inputs` [T, B, size] times locked mask `index` (the same at every step) while training."""
        masks = self.locked_masks if self.training else []
        return inputs * masks[index] if index < len(masks) and masks[index] is not None else inputs

    def forward(self, x: torch.Tensor, state: State, xi: list[float] | None = None):
        """Logits [T, B, V] for token ids x [T, B]; `xi` weights each step's h_{t-1} -> h_t gradient."""
        inputs, first = (self.locked(0, self.embedded(x)), 1) if self.embed is not None else (x, 0)
        new_state = []
        for i, (layer, layer_state) in enumerate(zip(self.layers, state)):
            inputs, layer_state = layer(inputs, layer_state, xi)
            inputs = self.drop(self.locked(first + i, inputs))
            new_state.append(layer_state)
        return self.head(inputs), new_state


def detach_state(state: State) -> State:
    return [tuple(t.detach() for t in layer) for layer in state]
