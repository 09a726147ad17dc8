"""Reference forward pass: the model unrolled step by step with PyTorch's own cells and autograd.

Slow but independent of the hand-written backward in `recurrence/`: the gradient tests use it
as the exact reference, and `bptt analyze` uses it to read the gradient at every hidden state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import CharRNN, State
from .recurrence import Cell


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by xi (0 cuts the chain)."""

    @staticmethod
    def forward(ctx, x, xi):
        ctx.xi = xi
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.xi, None


def scale_grad(x: torch.Tensor, xi: float) -> torch.Tensor:
    return x if xi == 1.0 else _ScaleGrad.apply(x, xi)


def _linear_cell(x, h, w_ih, w_hh, b_ih, b_hh):
    return x @ w_ih.t() + b_ih + h @ w_hh.t() + b_hh


_CELLS = {Cell.rnn: torch.rnn_tanh_cell, Cell.gru: torch.gru_cell, Cell.lstm: torch.lstm_cell, Cell.linear: _linear_cell}


def unrolled_forward(model: CharRNN, x: torch.Tensor, state: State, xi: list[float] | None = None):
    """Same contract as `model(x, state, xi)`, plus the list of each layer's hidden states per step.

    Returns (logits [T, B, V], new state, hiddens) where hiddens[t][l] is layer l's h_t, a graph
    node whose `.grad` is kept (`retain_grad`) so callers can read dL/dh_t after backward.
    """
    steps = x.shape[0]
    first = 1 if model.embed is not None else 0
    inputs = model.locked(0, model.embedded(x)) if first else F.one_hot(x, model.head.out_features).to(
        model.head.weight.dtype
    )
    state = [tuple(s) for s in state]
    outputs, hiddens = [], []
    for t in range(steps):
        below, step_hiddens = inputs[t], []
        for i, layer in enumerate(model.layers):
            weight = 1.0 if xi is None else float(xi[t])
            prev = tuple(scale_grad(s, weight) for s in state[i])
            args = (below, prev if layer.cell is Cell.lstm else prev[0])
            new = _CELLS[layer.cell](*args, layer.weight_ih, layer.recurrent_weight(), layer.bias_ih, layer.bias_hh)
            state[i] = tuple(new) if layer.cell is Cell.lstm else (new,)
            h = state[i][0]
            h.retain_grad()
            step_hiddens.append(h)
            below = model.drop(model.locked(first + i, h[None])[0])
        hiddens.append(step_hiddens)
        outputs.append(below)
    return model.head(torch.stack(outputs)), state, hiddens
