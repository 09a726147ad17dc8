"""Windows and models shared by the tests of bpttcli.recurrence's modules (cells, matmul, buffers)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bpttcli.model import CharRNN
from bpttcli.recurrence import GATES

CUTS = [0.0, 1.7, 1.0, 0.0, 0.4, 2.5, 1.0, 0.0, 1.3]  # xi per step; zeros cut the chain mid-window
XI = [0.0, 1.3, 1.0, 0.0, 0.7, 2.0, 1.0, 1.1, 0.5, 1.0, 0.0, 1.4]


def kernel_inputs(cell, steps=4, batch=2, hidden=3):
    """Random float64 leaves for `recur`: gx [T, B, G], weight, bias and the initial state."""
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return (0.5 * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()

    gates = GATES[cell] * hidden
    state = tuple(randn(batch, hidden) for _ in range(2 if cell == "lstm" else 1))
    return randn(steps, batch, gates), randn(gates, hidden), randn(gates), state


def models(cell) -> tuple[CharRNN, CharRNN]:
    """A 2-layer float32 model of hidden size 40 and its float64 twin."""
    torch.manual_seed(0)
    model = CharRNN(11, cell, 40, layers=2)
    reference = CharRNN(11, cell, 40, layers=2).double()
    reference.load_state_dict(model.state_dict())
    return model, reference


def gradients(model: CharRNN, forward, xi) -> torch.Tensor:
    """Gradient of CE + a function of the final state wrt parameters and initial state, flattened (float64)."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 11, (2, len(XI), 3), generator=g)
    state = [tuple((0.5 * torch.randn(3, 40, generator=g)).to(model.head.weight.dtype).requires_grad_()
                   for _ in layer) for layer in model.init_state(3)]
    logits, final = forward(x, state, xi)[:2]
    loss = F.cross_entropy(logits.reshape(-1, 11), y.reshape(-1), reduction="sum")
    loss = loss + sum((s * s.new_tensor(0.3)).sum() for layer in final for s in layer)
    leaves = list(model.parameters()) + [s for layer in state for s in layer]
    return torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, leaves)]).double()
