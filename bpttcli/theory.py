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


def autograd_gradients(x, y, h0, w_hx, w_hh, w_qh) -> LinearRNNGrads:
    """The same gradients by autograd: the reference the hand-written recursion is checked against."""
    weights = [w.detach().requires_grad_() for w in (w_hx, w_hh, w_qh)]
    _, o = linear_rnn_forward(x, h0, *weights)
    loss = F.cross_entropy(o.reshape(-1, o.shape[-1]), y.reshape(-1), reduction="sum")
    return LinearRNNGrads(*torch.autograd.grad(loss, weights))


def gradient_check(seed: int = 0, steps: int = 12, batch: int = 3, sizes=(5, 8, 6)) -> float:
    """Largest |hand-written - autograd| over all weight gradients of a random linear RNN (float64)."""
    g = torch.Generator().manual_seed(seed)
    d, h, q = sizes
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64) / shape[-1] ** 0.5  # noqa: E731
    x, h0 = rand(steps, batch, d), rand(batch, h)
    y = torch.randint(q, (steps, batch), generator=g)
    weights = rand(h, d), rand(h, h), rand(q, h)
    mine, ref = linear_rnn_gradients(x, y, h0, *weights), autograd_gradients(x, y, h0, *weights)
    return max(float((getattr(mine, k) - getattr(ref, k)).abs().max()) for k in ("w_hx", "w_hh", "w_qh"))


# The chapter's exercises 1-2: powers of a symmetric matrix, the linear RNN's W_hh^k.


def symmetric_matrix(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random symmetric n x n matrix (float64) scaled to spectral radius 1."""
    a = torch.randn(n, n, generator=generator, dtype=torch.float64)
    m = a + a.t()
    return m / torch.linalg.eigvalsh(m).abs().max()


def power_eigenvalue_error(m: torch.Tensor, k: int) -> float:
    """Exercise 1: max |eig(M^k) - lambda_i^k| relative to max |lambda_i|^k (sorted; M symmetric)."""
    lam = torch.linalg.eigvalsh(m)
    expected = (lam**k).sort().values
    computed = torch.linalg.eigvalsh(torch.linalg.matrix_power(m, k))
    return float((computed - expected).abs().max() / expected.abs().max())


def alignment_angles(m: torch.Tensor, x: torch.Tensor, steps: int) -> torch.Tensor:
    """Exercise 2: the angle (radians) between M^k x and the top eigenvector's line, k = 0..steps."""
    lam, vectors = torch.linalg.eigh(m)
    top = vectors[:, lam.abs().argmax()]
    angles, v = [], x / x.norm()
    for _ in range(steps + 1):
        along = v @ top
        angles.append(torch.atan2((v - along * top).norm(), along.abs()))  # accurate for tiny angles too
        v = m @ v
        v = v / v.norm()  # power iteration: only the direction matters
    return torch.stack(angles)


def alignment_rate(m: torch.Tensor) -> float:
    """|lambda_2| / |lambda_1|: the factor by which tan(angle) shrinks per power of M."""
    mags = torch.linalg.eigvalsh(m).abs().sort(descending=True).values
    return float(mags[1] / mags[0])
