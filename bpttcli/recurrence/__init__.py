"""The recurrence over one window: RNN, GRU, LSTM and linear cells whose backward is a hand-written
BPTT that multiplies the gradient along h_{t-1} -> h_t by xi[t].

    cells.py    the autograd Functions and `recur`: the BPTT recursion, readable on its own
    matmul.py   the per-step products by path: `portable` (addmm, public ops), `mkl` (MKL's packed
                sgemm) or `onednn` (oneDNN's matmul); private ops behind a one-time self-check
    kernels.py  which kernel runs a segment: torch's fused recurrence (cuDNN, oneDNN's LSTM) where
                xi = 1 and a rule picks it, else the hand-written BPTT of cells.py
    buffers.py  the backward reuses the output gradient's buffer when autograd hands over its only
                reference, read from `_use_count` and `sys.getrefcount`
    forcing.py  `use_path` / `use_kernel`: a thread forces a path or a kernel (tests, benchmarks)

matmul.py and buffers.py lean on torch internals (a private op, reference counts), so they are what
a torch upgrade is most likely to break: matmul.py checks the op once and falls back to addmm,
buffers.py counts references once and copies where it cannot read them. Their tests are
tests/test_recurrence_matmul.py and tests/test_recurrence_buffers.py.
"""

from ..choices import GATES, Cell
from .cells import recur
from .kernels import describe, kernel_for, name_for, use_kernel
from .kernels import run as run_layer
from .matmul import available_paths, path_for, use_path

__all__ = ["Cell", "GATES", "recur", "run_layer", "describe", "kernel_for", "name_for", "use_kernel", "available_paths",
           "path_for", "use_path"]
