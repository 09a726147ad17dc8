"""bpttcli.theory: the chapter's linear RNN and its hand-written gradient recursion against autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bpttcli.theory import linear_rnn_forward, linear_rnn_gradients
from helpers import rel_err  # noqa: F401

D, H, Q = 4, 3, 5  # input, hidden and output sizes


def problem(steps, batch, seed=0):
    """Real-valued inputs x [T, B, D], targets, a non-zero h0 and weights (W_hh of spectral radius ~1)."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    x, y = randn(steps, batch, D), torch.randint(Q, (steps, batch), generator=g)
    return x, y, randn(batch, H), randn(H, D), randn(H, H) / H**0.5, randn(Q, H)


def test_forward_is_the_closed_form():
    """h_t = W_hh^t h_0 + sum_{s<=t} W_hh^(t-s) W_hx x_s."""
    x, _, h0, w_hx, w_hh, w_qh = problem(6, 2)
    hs, o = linear_rnn_forward(x, h0, w_hx, w_hh, w_qh)
    power = torch.linalg.matrix_power
    for t in range(6):
        expected = h0 @ power(w_hh, t + 1).t() + sum(x[s] @ w_hx.t() @ power(w_hh, t - s).t() for s in range(t + 1))
        assert rel_err(hs[t], expected) < 1e-12
    assert rel_err(o, hs @ w_qh.t()) < 1e-14


@pytest.mark.parametrize("steps, batch", [(1, 1), (7, 3), (30, 2)])
def test_gradients_match_autograd(steps, batch):
    x, y, h0, *weights = problem(steps, batch)
    weights = [w.requires_grad_() for w in weights]
    _, o = linear_rnn_forward(x, h0, *weights)
    loss = F.cross_entropy(o.reshape(-1, Q), y.reshape(-1), reduction="sum")
    expected = torch.autograd.grad(loss, weights)
    grads = linear_rnn_gradients(x, y, h0, *(w.detach() for w in weights))
    for got, want in zip((grads.w_hx, grads.w_hh, grads.w_qh), expected):
        assert rel_err(got, want) < 1e-10
