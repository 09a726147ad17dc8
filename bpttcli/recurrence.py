"""The recurrence over one segment, with a hand-written backward that applies xi at every step.

Each cell is an autograd Function over a whole window: the input projections `gx` (``x W_ih^T +
b_ih`` for every step, computed outside in one go) come in, the hidden states of every step come
out. Its backward runs the BPTT recursion by hand, multiplying the gradient that flows along
h_{t-1} -> h_t by ``xi[t]`` (and the cell state's too, for the LSTM), and computes the weight
gradient with one GEMM over the window. Gate layouts follow PyTorch's nn.RNN/GRU/LSTM, so weights
are interchangeable with the built-in modules.
"""

from __future__ import annotations

import enum

import torch

_tanh_backward = torch.ops.aten.tanh_backward  # grad * (1 - y^2), one fused kernel
_sigmoid_backward = torch.ops.aten.sigmoid_backward  # grad * y * (1 - y)


class Cell(str, enum.Enum):
    rnn = "rnn"
    gru = "gru"
    lstm = "lstm"
    linear = "linear"  # the chapter's linear RNN: identity activation


GATES = {Cell.rnn: 1, Cell.gru: 3, Cell.lstm: 4, Cell.linear: 1}


def _scale(t: torch.Tensor, xi: list[float] | None, step: int) -> torch.Tensor:
    """Multiply a gradient carried into step `step - 1` by xi[step] (a no-op when xi is 1)."""
    if xi is not None and xi[step] != 1.0:
        t.mul_(xi[step])
    return t


def _zeros_if_none(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


class ElmanRNN(torch.autograd.Function):
    """h_t = tanh(gx_t + h_{t-1} W^T + b), or without the tanh when `linear`."""

    @staticmethod
    def forward(ctx, gx, h0, weight, bias, xi, linear=False):
        steps = gx.shape[0]
        hs = gx.new_empty((steps + 1,) + h0.shape)
        hs[0] = h0
        pre = gx + bias
        wt = weight.t()
        h, p = hs.unbind(0), pre.unbind(0)
        for t in range(steps):
            p[t].addmm_(h[t], wt)
            if linear:
                h[t + 1].copy_(p[t])
            else:
                torch.tanh(p[t], out=h[t + 1])
        ctx.save_for_backward(hs, weight)
        ctx.xi, ctx.linear = xi, linear
        return hs[1:], hs[steps].clone()

    @staticmethod
    def backward(ctx, dout, dlast):
        hs, weight = ctx.saved_tensors
        xi, steps = ctx.xi, hs.shape[0] - 1
        dout = _zeros_if_none(dout, hs[1:])
        carry = _zeros_if_none(dlast, hs[0]).clone()
        da = torch.empty_like(dout)
        h, d, g = hs.unbind(0), da.unbind(0), dout.unbind(0)
        for t in reversed(range(steps)):
            carry.add_(g[t])
            if ctx.linear:
                d[t].copy_(carry)
            else:
                _tanh_backward.grad_input(carry, h[t + 1], grad_input=d[t])
            carry = _scale(torch.mm(d[t], weight), xi, t)
        flat = da.reshape(-1, da.shape[-1])
        dweight = flat.t() @ hs[:-1].reshape(flat.shape[0], -1)
        return da, carry, dweight, flat.sum(0), None, None


class GRU(torch.autograd.Function):
    """PyTorch's GRU: r, z = sigma(.), n = tanh(gx_n + r * (h W_n^T + b_n)), h' = (1-z) n + z h."""

    @staticmethod
    def forward(ctx, gx, h0, weight, bias, xi):
        steps, hidden = gx.shape[0], h0.shape[-1]
        hs = gx.new_empty((steps + 1,) + h0.shape)
        hs[0] = h0
        gates = torch.empty_like(gx)  # r, z, n after their nonlinearities
        ghn = gx.new_empty((steps,) + h0.shape)  # h W_n^T + b_n, needed for dr
        gh = gx.new_empty(gx.shape[1:])
        wt = weight.t()
        h, x, a, hn = hs.unbind(0), gx.unbind(0), gates.unbind(0), ghn.unbind(0)
        for t in range(steps):
            torch.addmm(bias, h[t], wt, out=gh)
            rz, n = a[t][:, : 2 * hidden], a[t][:, 2 * hidden :]
            torch.add(x[t][:, : 2 * hidden], gh[:, : 2 * hidden], out=rz).sigmoid_()
            hn[t].copy_(gh[:, 2 * hidden :])
            torch.addcmul(x[t][:, 2 * hidden :], rz[:, :hidden], hn[t], out=n).tanh_()
            torch.addcmul(n, rz[:, hidden:], h[t] - n, out=h[t + 1])
        ctx.save_for_backward(hs, gates, ghn, weight)
        ctx.xi = xi
        return hs[1:], hs[steps].clone()

    @staticmethod
    def backward(ctx, dout, dlast):
        hs, gates, ghn, weight = ctx.saved_tensors
        xi, steps, hidden = ctx.xi, hs.shape[0] - 1, hs.shape[-1]
        dout = _zeros_if_none(dout, hs[1:])
        carry = _zeros_if_none(dlast, hs[0]).clone()
        dgh = torch.empty_like(gates)  # gradient of h W^T + b
        dn_pre = torch.empty_like(ghn)  # gradient of the n gate's input projection
        h, a, hn, g = hs.unbind(0), gates.unbind(0), ghn.unbind(0), dout.unbind(0)
        for t in reversed(range(steps)):
            carry.add_(g[t])
            r, z, n = a[t][:, :hidden], a[t][:, hidden : 2 * hidden], a[t][:, 2 * hidden :]
            dr, dz, dnh = dgh[t][:, :hidden], dgh[t][:, hidden : 2 * hidden], dgh[t][:, 2 * hidden :]
            _tanh_backward.grad_input(carry - carry * z, n, grad_input=dn_pre[t])
            _sigmoid_backward.grad_input(dn_pre[t] * hn[t], r, grad_input=dr)
            _sigmoid_backward.grad_input(carry * (h[t] - n), z, grad_input=dz)
            torch.mul(dn_pre[t], r, out=dnh)
            carry = _scale(torch.addmm(carry * z, dgh[t], weight), xi, t)
        dgx = torch.cat([dgh[..., : 2 * hidden], dn_pre], dim=-1)
        flat = dgh.reshape(-1, dgh.shape[-1])
        dweight = flat.t() @ hs[:-1].reshape(flat.shape[0], -1)
        return dgx, carry, dweight, flat.sum(0), None


class LSTM(torch.autograd.Function):
    """PyTorch's LSTM: i, f, g, o gates; c' = f c + i g, h' = o tanh(c')."""

    @staticmethod
    def forward(ctx, gx, h0, c0, weight, bias, xi):
        steps, hidden = gx.shape[0], h0.shape[-1]
        hs = gx.new_empty((steps + 1,) + h0.shape)
        cs = torch.empty_like(hs)
        hs[0], cs[0] = h0, c0
        gates = gx + bias  # becomes i, f, g, o after their nonlinearities
        wt = weight.t()
        h, c, a = hs.unbind(0), cs.unbind(0), gates.unbind(0)
        for t in range(steps):
            a[t].addmm_(h[t], wt)
            a[t][:, : 2 * hidden].sigmoid_()
            a[t][:, 2 * hidden : 3 * hidden].tanh_()
            a[t][:, 3 * hidden :].sigmoid_()
            i, f, gg, o = a[t].split(hidden, dim=1)
            torch.addcmul(f * c[t], i, gg, out=c[t + 1])
            torch.mul(o, torch.tanh(c[t + 1]), out=h[t + 1])
        ctx.save_for_backward(hs, cs, gates, weight)
        ctx.xi = xi
        return hs[1:], hs[steps].clone(), cs[steps].clone()

    @staticmethod
    def backward(ctx, dout, dlast_h, dlast_c):
        hs, cs, gates, weight = ctx.saved_tensors
        xi, steps, hidden = ctx.xi, hs.shape[0] - 1, hs.shape[-1]
        dout = _zeros_if_none(dout, hs[1:])
        carry = _zeros_if_none(dlast_h, hs[0]).clone()
        carry_c = _zeros_if_none(dlast_c, cs[0]).clone()
        dgates = torch.empty_like(gates)
        c, a, g = cs.unbind(0), gates.unbind(0), dout.unbind(0)
        for t in reversed(range(steps)):
            carry.add_(g[t])
            i, f, gg, o = a[t].split(hidden, dim=1)
            di, df, dg, do = dgates[t].split(hidden, dim=1)
            tc = torch.tanh(c[t + 1])
            dc = carry_c.add_(_tanh_backward(carry * o, tc))
            _sigmoid_backward.grad_input(carry * tc, o, grad_input=do)
            _sigmoid_backward.grad_input(dc * gg, i, grad_input=di)
            _sigmoid_backward.grad_input(dc * c[t], f, grad_input=df)
            _tanh_backward.grad_input(dc * i, gg, grad_input=dg)
            carry_c = _scale(dc * f, xi, t)
            carry = _scale(torch.mm(dgates[t], weight), xi, t)
        flat = dgates.reshape(-1, dgates.shape[-1])
        dweight = flat.t() @ hs[:-1].reshape(flat.shape[0], -1)
        return dgates, carry, carry_c, dweight, flat.sum(0), None


def recur(cell: Cell, gx, state: tuple, weight, bias, xi: list[float] | None):
    """Run `cell` over the window `gx` [T, B, G] from `state`; returns (outputs [T, B, H], new state)."""
    if cell is Cell.lstm:
        out, h, c = LSTM.apply(gx, state[0], state[1], weight, bias, xi)
        return out, (h, c)
    if cell is Cell.gru:
        out, h = GRU.apply(gx, state[0], weight, bias, xi)
    else:
        out, h = ElmanRNN.apply(gx, state[0], weight, bias, xi, cell is Cell.linear)
    return out, (h,)
