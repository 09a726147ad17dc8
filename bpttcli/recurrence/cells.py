"""The cells over one window, with a hand-written backward that applies xi at every step.

Each cell is an autograd Function over a whole window: the input projections `gx` (``x W_ih^T +
b_ih`` for every step, computed outside in one go) come in, the hidden states of every step come
out. Its backward runs the BPTT recursion by hand, multiplying the gradient that flows along
h_{t-1} -> h_t by ``xi[t]`` (and the cell state's too, for the LSTM), and computes the weight
gradient with one GEMM over the window. Gate layouts follow PyTorch's nn.RNN/GRU/LSTM, so weights
are interchangeable with the built-in modules.

The step loops call only in-place or ``out=`` operators (or a matmul path's product) on buffers
allocated once per window, on per-step views made in one `unbind` call each (no slicing or host
sync per step). What does not depend on the carried gradient (the gates' derivatives, xi times the
forget gate) is computed for the whole window before the backward's loop, which is then a few
calls per step: the GRU's e.g. one broadcast multiply for three gates, one for the fourth, the
carry. All three products (forward step, backward carry, weight gradient) go through the path
`matmul.path_for` picks. The backward's first buffer is the incoming output gradient itself when
`buffers` says it may be.
"""

from __future__ import annotations

import torch

from ..choices import Cell
from . import buffers
from .matmul import path_for

_tanh_backward = torch.ops.aten.tanh_backward.grad_input  # grad * (1 - y^2), one fused kernel
_sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input  # grad * y * (1 - y)

# ----------------------------------------------------------------------------------- helpers
def _weights(xi: list[float] | None, steps: int) -> list[float]:
    return [1.0] * steps if xi is None else [float(v) for v in xi]


def _steps(t: torch.Tensor, block: int | slice, size: int) -> tuple[torch.Tensor, ...]:
    """Per-step views of gate block(s) `block` (of width `size`) of t [T, B, k * size], made in one call."""
    lo, hi = (block.start, block.stop) if isinstance(block, slice) else (block, block + 1)
    return t[..., lo * size : hi * size].unbind(0)


def _gates(t: torch.Tensor, blocks: tuple[int, ...], size: int) -> list[tuple[torch.Tensor, ...]]:
    return [_steps(t, k, size) for k in blocks]


def _weight_grad(path, d: torch.Tensor, hs: torch.Tensor) -> torch.Tensor:
    """sum_t d_t^T h_{t-1} as one GEMM over the window: d [T, B, G], hs [T+1, B, H] -> [G, H]."""
    return path.weight_grad(d.reshape(-1, d.shape[-1]), hs[:-1].reshape(-1, hs.shape[-1]))


# ------------------------------------------------------------------------------------- kernels
class ElmanRNN(torch.autograd.Function):
    """h_t = tanh(gx_t + h_{t-1} W^T + b), or without the tanh when `linear`."""

    @staticmethod
    def forward(ctx, gx, h0, weight, bias, xi, linear=False):
        buffers.calibrate()
        path = path_for(weight)
        w = path.prepare(weight, bias, h0.shape[0])
        hs = gx.new_empty((gx.shape[0] + 1,) + h0.shape)
        hs[0] = h0
        path.prefill(hs[1:], gx, bias)  # pre-activations, turned into h_t step by step
        h = hs.unbind(0)
        if linear:
            for prev, cur, x in zip(h, h[1:], gx.unbind(0)):
                pre = path.step(cur, prev, x, w)
                if pre is not cur:
                    cur.copy_(pre)
        else:  # the hot loop, two calls per step
            for prev, cur, x in zip(h, h[1:], gx.unbind(0)):
                torch.tanh(path.step(cur, prev, x, w), out=cur)
        ctx.save_for_backward(hs, weight)
        ctx.xi, ctx.linear, ctx.path = xi, linear, path
        return hs[1:], h[-1].clone()

    @staticmethod
    def backward(ctx, dout, dlast):
        hs, weight = ctx.saved_tensors
        steps, xi = hs.shape[0] - 1, _weights(ctx.xi, hs.shape[0] - 1)
        da = buffers.grad_buffer(dout, hs[1:])  # dL/dh_t, overwritten in place by dL/da_t (the pre-activation)
        if dlast is not None:
            da[-1] += dlast
        h, d, tanh_backward = hs.unbind(0), da.unbind(0), None if ctx.linear else _tanh_backward
        carry, wc = ctx.path.carry, ctx.path.prepare_carry(weight, hs.shape[1])
        for t in range(steps - 1, -1, -1):
            if t + 1 < steps and xi[t + 1] != 0.0:  # + xi_{t+1} dL/da_{t+1} W
                carry(d[t], d[t + 1], wc, xi[t + 1])
            if tanh_backward:
                tanh_backward(d[t], h[t + 1], grad_input=d[t])
        dh0 = torch.mm(d[0], weight).mul_(xi[0]) if ctx.needs_input_grad[1] else None
        return da, dh0, _weight_grad(ctx.path, da, hs), da.sum((0, 1)), None, None


class GRU(torch.autograd.Function):
    """PyTorch's GRU: r, z = sigma(.), n = tanh(gx_n + r * (h W_n^T + b_n)), h' = (1-z) n + z h."""

    @staticmethod
    def forward(ctx, gx, h0, weight, bias, xi):
        buffers.calibrate()
        path, hidden = path_for(weight), h0.shape[-1]
        w = path.prepare(weight, bias, h0.shape[0])
        hs = gx.new_empty((gx.shape[0] + 1,) + h0.shape)
        hs[0] = h0
        gates = torch.empty_like(gx)  # r, z after the sigmoid, and h W_n^T + b_n
        path.prefill(gates[..., : 2 * hidden], gx[..., : 2 * hidden], bias[: 2 * hidden])
        path.prefill(gates[..., 2 * hidden :], None, bias[2 * hidden :])
        ns = gx.new_empty(hs[1:].shape)
        h, n, g = hs.unbind(0), ns.unbind(0), gates.unbind(0)
        x_rz, xn = _steps(gx, slice(0, 2), hidden), _steps(gx, 2, hidden)
        rz, r, z, hn = _steps(gates, slice(0, 2), hidden), *_gates(gates, (0, 1, 2), hidden)
        for t in range(len(n)):
            if path.packed:
                a = path.project(h[t], w)
                torch.add(a[:, : 2 * hidden], x_rz[t], out=rz[t])
                hn[t].copy_(a[:, 2 * hidden :])
            else:
                g[t].addmm_(h[t], w)
            rz[t].sigmoid_()
            torch.addcmul(xn[t], r[t], hn[t], out=n[t]).tanh_()
            torch.lerp(n[t], h[t], z[t], out=h[t + 1])  # n + z (h - n)
        ctx.save_for_backward(hs, gates, ns, weight)
        ctx.xi, ctx.path = xi, path
        return hs[1:], h[-1].clone()

    @staticmethod
    def backward(ctx, dout, dlast):
        hs, gates, ns, weight = ctx.saved_tensors
        steps, hidden, xi = ns.shape[0], hs.shape[-1], _weights(ctx.xi, ns.shape[0])
        dhs = buffers.grad_buffer(dout, hs[1:])  # dL/dh_t from above; the carry from step t+1 is added in place
        if dlast is not None:
            dhs[-1] += dlast
        # e = [dL/dr, dL/dz, dL/d(h W_n^T + b_n)] = dL/dh_t [k_r, k_z, k_hn] and dn = dL/dh_t k_n, their factors
        # taken for the whole window at once. e multiplies the weight in the carry (each step's rows
        # contiguous, as oneDNN wants them); [dL/dr, dL/dz, dn] is the input gradient.
        r, z, hn = (gates[..., j * hidden : (j + 1) * hidden] for j in range(3))
        k = torch.empty_like(gates)
        k_n = torch.empty_like(ns)
        k_r, k_z, k_hn = (k[..., j * hidden : (j + 1) * hidden] for j in range(3))
        tmp = torch.rsub(z, 1)
        _tanh_backward(tmp, ns, grad_input=k_n)  # dn/dh = (1 - z)(1 - n^2)
        _sigmoid_backward(torch.sub(hs[:-1], ns, out=tmp), z, grad_input=k_z)  # (h - n) z (1 - z)
        _sigmoid_backward(hn, r, grad_input=k_r).mul_(k_n)  # dn hn r (1 - r)
        torch.mul(k_n, r, out=k_hn)  # dn r
        zxi = z if ctx.xi is None else z * z.new_tensor(xi).view(-1, 1, 1)
        e, dn = torch.empty_like(k), torch.empty_like(ns)
        carry, wc = ctx.path.carry, ctx.path.prepare_carry(weight, hs.shape[1])
        dhs_t, e_t, dn_t, k_n, zxi = dhs.unbind(0), e.unbind(0), dn.unbind(0), k_n.unbind(0), zxi.unbind(0)
        k3, e3 = k.unflatten(-1, (3, hidden)).unbind(0), e.unflatten(-1, (3, hidden)).unbind(0)
        dh0 = torch.zeros_like(hs[0]) if ctx.needs_input_grad[1] else None
        for t in range(steps - 1, -1, -1):
            dh = dhs_t[t]
            torch.mul(k3[t], dh.unsqueeze(1), out=e3[t])
            torch.mul(dh, k_n[t], out=dn_t[t])
            acc = dhs_t[t - 1] if t > 0 else dh0
            if acc is not None and xi[t] != 0.0:  # + xi_t (dh z + e W)
                carry(acc.addcmul_(dh, zxi[t]), e_t[t], wc, xi[t])
        dweight = ctx.path.weight_grad(e.view(-1, 3 * hidden), hs[:-1].reshape(-1, hidden))
        return torch.cat([e[..., : 2 * hidden], dn], -1), dh0, dweight, e.sum((0, 1)), None


class LSTM(torch.autograd.Function):
    """PyTorch's LSTM: i, f, g, o gates; c' = f c + i g, h' = o tanh(c')."""

    @staticmethod
    def forward(ctx, gx, h0, c0, weight, bias, xi):
        buffers.calibrate()
        path, hidden = path_for(weight), h0.shape[-1]
        w = path.prepare(weight, bias, h0.shape[0])
        hs = gx.new_empty((gx.shape[0] + 1,) + h0.shape)
        cs = torch.empty_like(hs)
        hs[0], cs[0] = h0, c0
        tcs = torch.empty_like(hs[1:])  # tanh(c_t)
        gates = torch.empty_like(gx)  # i, f, g, o after their nonlinearities
        path.prefill(gates, gx, bias)
        h, c, tc, a, x = hs.unbind(0), cs.unbind(0), tcs.unbind(0), gates.unbind(0), gx.unbind(0)
        i_f, i, f, g, o = _steps(gates, slice(0, 2), hidden), *_gates(gates, (0, 1, 2, 3), hidden)
        for t in range(len(tc)):
            pre = path.step(a[t], h[t], x[t], w)
            torch.sigmoid(pre[:, : 2 * hidden], out=i_f[t])
            torch.tanh(pre[:, 2 * hidden : 3 * hidden], out=g[t])
            torch.sigmoid(pre[:, 3 * hidden :], out=o[t])
            torch.mul(f[t], c[t], out=c[t + 1]).addcmul_(i[t], g[t])
            torch.tanh(c[t + 1], out=tc[t])
            torch.mul(o[t], tc[t], out=h[t + 1])
        ctx.save_for_backward(hs, cs, tcs, gates, weight)
        ctx.xi, ctx.path = xi, path
        return hs[1:], h[-1].clone(), c[-1].clone()

    @staticmethod
    def backward(ctx, dout, dlast_h, dlast_c):
        hs, cs, tcs, gates, weight = ctx.saved_tensors
        steps, hidden, xi = tcs.shape[0], hs.shape[-1], _weights(ctx.xi, tcs.shape[0])
        dhs = buffers.grad_buffer(dout, hs[1:])
        if dlast_h is not None:
            dhs[-1] += dlast_h
        # The step loop's factors, for the whole window at once: dL/dc_t = dh_t psi_t + dL/dc_{t+1} fxi_t,
        # [di, df, dg]_t = dL/dc_t [k_i, k_f, k_g]_t and do_t = dh_t k_o_t.
        i, f, g, o = (gates[..., k * hidden : (k + 1) * hidden] for k in range(4))
        psi = torch.ops.aten.tanh_backward(o, tcs)  # o (1 - tanh^2 c)
        k = torch.empty_like(gates)
        _sigmoid_backward(g, i, grad_input=k[..., :hidden])
        _sigmoid_backward(cs[:-1], f, grad_input=k[..., hidden : 2 * hidden])
        _tanh_backward(i, g, grad_input=k[..., 2 * hidden : 3 * hidden])
        _sigmoid_backward(tcs, o, grad_input=k[..., 3 * hidden :])
        fxi = f[1:] if ctx.xi is None else f[1:] * f.new_tensor(xi[1:]).view(-1, 1, 1)
        dgates = torch.empty_like(gates)
        carry, wc = ctx.path.carry, ctx.path.prepare_carry(weight, hs.shape[1])
        dhs_t, d, psi, fxi = dhs.unbind(0), dgates.unbind(0), psi.unbind(0), fxi.unbind(0)
        k_ifg, d_ifg = (t[..., : 3 * hidden].unflatten(-1, (3, hidden)).unbind(0) for t in (k, dgates))
        k_o, d_o = _steps(k, 3, hidden), _steps(dgates, 3, hidden)
        dc, dc_next = torch.empty_like(hs[0]), torch.empty_like(hs[0])
        for t in range(steps - 1, -1, -1):
            dh = dhs_t[t]
            torch.mul(dh, psi[t], out=dc)  # dL/dc_t: through h_t, plus the carry from c_{t+1}
            if t + 1 < steps:
                dc.addcmul_(dc_next, fxi[t])
            elif dlast_c is not None:
                dc.add_(dlast_c)
            torch.mul(k_ifg[t], dc.unsqueeze(1), out=d_ifg[t])
            torch.mul(dh, k_o[t], out=d_o[t])
            if t > 0 and xi[t] != 0.0:
                carry(dhs_t[t - 1], d[t], wc, xi[t])
            dc, dc_next = dc_next, dc
        dh0 = dc0 = None
        if ctx.needs_input_grad[1]:
            dh0 = torch.mm(d[0], weight).mul_(xi[0])
        if ctx.needs_input_grad[2]:
            dc0 = torch.mul(dc_next, f[0]).mul_(xi[0])
        return dgates, dh0, dc0, _weight_grad(ctx.path, dgates, hs), dgates.sum((0, 1)), None


def recur(cell: Cell, gx, state: tuple, weight, bias, xi: list[float] | None):
    """Run `cell` over the window `gx` [T, B, G] from `state`; returns (outputs [T, B, H], new state)."""
    cell = Cell(cell)
    if cell is Cell.lstm:
        out, h, c = LSTM.apply(gx, state[0], state[1], weight, bias, xi)
        return out, (h, c)
    if cell is Cell.gru:
        out, h = GRU.apply(gx, state[0], weight, bias, xi)
    else:
        out, h = ElmanRNN.apply(gx, state[0], weight, bias, xi, cell is Cell.linear)
    return out, (h,)
