"""The chapter's linear RNN with its gradients written out by hand from the BPTT recursion.

    h_t = W_hx x_t + W_hh h_{t-1},   o_t = W_qh h_t,   L = sum_t l(o_t, y_t)

    dL/dh_t  = W_hh^T dL/dh_{t+1} + W_qh^T dL/do_t          (backwards from t = T)
    dL/dW_hh = sum_t dL/dh_t h_{t-1}^T,   dL/dW_hx = sum_t dL/dh_t x_t^T,   dL/dW_qh = sum_t dL/do_t h_t^T

This is the independent reference that the strategy tests check `full` against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LinearRNNGrads:
    w_hx: torch.Tensor
    w_hh: torch.Tensor
    w_qh: torch.Tensor


def linear_rnn_forward(x, h0, w_hx, w_hh, w_qh):
    """Hidden states h_1..h_T [T, B, H] and outputs o_t [T, B, Q] for inputs x [T, B, D]."""
    hs, h = [], h0
    for x_t in x:
        h = x_t @ w_hx.t() + h @ w_hh.t()
        hs.append(h)
    hs = torch.stack(hs)
    return hs, hs @ w_qh.t()


def linear_rnn_gradients(x, y, h0, w_hx, w_hh, w_qh) -> LinearRNNGrads:
    """Gradients of the summed cross-entropy sum_t l(o_t, y_t), by the recursion above (no autograd)."""
    hs, o = linear_rnn_forward(x, h0, w_hx, w_hh, w_qh)
    d_o = torch.softmax(o, -1) - F.one_hot(y, o.shape[-1]).to(o.dtype)  # dl/do_t for cross-entropy
    prev = torch.cat([h0[None], hs[:-1]])
    d_h = torch.zeros_like(h0)
    g_hx, g_hh = torch.zeros_like(w_hx), torch.zeros_like(w_hh)
    for t in reversed(range(len(x))):
        d_h = d_h @ w_hh + d_o[t] @ w_qh  # W_hh^T dL/dh_{t+1} + W_qh^T dL/do_t (row-vector form)
        g_hh += d_h.t() @ prev[t]
        g_hx += d_h.t() @ x[t]
    g_qh = torch.einsum("tbq,tbh->qh", d_o, hs)
    return LinearRNNGrads(g_hx, g_hh, g_qh)
