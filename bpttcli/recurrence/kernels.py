"""Which kernel runs a layer over one segment: torch's fused recurrence or the hand-written BPTT.

`fused` runs PyTorch's own kernel for the whole window (the function behind nn.LSTM/GRU/RNN,
autograd through it): cuDNN on CUDA, oneDNN's LSTM on the CPU (torch 2.x has no fused CPU
kernel for GRU or tanh RNN: those run a generic per-step loop). It cannot weight the gradient
along h_{t-1} -> h_t, so it runs only where xi = 1 inside the segment (`xi is None`: full,
truncated, tbptt). `hand-written` is `cells.recur` with its matmul path (`matmul.path_for`),
which applies xi; it is the only kernel of the linear cell.

The rule (deterministic, so every rank of a distributed run picks the same): `fused` where xi = 1
on CUDA, and on the CPU for float32 LSTMs (oneDNN's cell runs ~2x the hand-written one at hidden
256 on the 2-core VM, about even at 512, while the hand-written GRU and RNN outrun torch's
generic loop 1.5-2x); `hand-written` everywhere else. `use_kernel` forces one (tests, benchmarks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..choices import Cell
from .cells import recur
from .forcing import Forcing
from .matmul import path_for

KERNELS = ("fused", "hand-written")
_FUSED = {Cell.rnn: torch._VF.rnn_tanh, Cell.gru: torch._VF.gru, Cell.lstm: torch._VF.lstm}
_forcing = Forcing("kernel", KERNELS)
# force kernel `name` in this thread where it can run (fused: xi = 1, not the linear cell); None: the rule
use_kernel = _forcing.use


def fused_by_rule(cell: Cell, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the rule runs `cell` through torch's fused kernel where xi = 1."""
    return device.type == "cuda" or (device.type == "cpu" and dtype == torch.float32 and cell is Cell.lstm)


def kernel_for(cell: Cell, weight: torch.Tensor, xi: list[float] | None) -> str:
    """The kernel that runs a segment of `cell` with recurrent weight `weight` and step weights `xi`."""
    if xi is not None or cell not in _FUSED:
        return "hand-written"
    forced = _forcing.name
    if forced is not None:
        return forced
    return "fused" if fused_by_rule(cell, weight.device, weight.dtype) else "hand-written"


def name_for(cell: Cell, weight: torch.Tensor, xi: list[float] | None) -> str:
    """What `kernel_for` picks, with its library or matmul path: 'fused oneDNN', 'hand-written onednn', ..."""
    if kernel_for(Cell(cell), weight, xi) == "fused":
        return "fused " + {"cuda": "cuDNN", "cpu": "oneDNN" if Cell(cell) is Cell.lstm else "torch"}.get(
            weight.device.type, weight.device.type)
    return f"hand-written {path_for(weight).name}"


def describe(cell: Cell, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """The kernels a `cell` model runs on `device`, in words (for the run's header)."""
    weight = torch.empty(0, device=device, dtype=dtype)
    fused, hand = name_for(cell, weight, None), name_for(cell, weight, [0.0])
    return hand if fused == hand else f"{fused} where xi = 1, else {hand}"


def run(layer, inputs: torch.Tensor, state: tuple, xi: list[float] | None):
    """`layer` (a model.RecurrentLayer) over `inputs` from `state`: (outputs [T, B, H], new state)."""
    weight = layer.recurrent_weight()
    if kernel_for(layer.cell, weight, xi) == "hand-written":
        return recur(layer.cell, layer.project(inputs), state, weight, layer.bias_hh, xi)
    if layer.one_hot:
        inputs = F.one_hot(inputs, layer.weight_ih.shape[1]).to(weight.dtype)
    params = [layer.weight_ih, weight, layer.bias_ih, layer.bias_hh]
    hx = tuple(s.unsqueeze(0) for s in state)
    out = _FUSED[layer.cell](inputs, hx if layer.cell is Cell.lstm else hx[0], params, True, 1, 0.0, layer.training,
                             False, False)
    return out[0], tuple(s.squeeze(0) for s in out[1:])
