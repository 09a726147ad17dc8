"""The recurrence over one window: RNN, GRU, LSTM and linear cells whose backward is a hand-written
BPTT that multiplies the gradient along h_{t-1} -> h_t by xi[t].

    cells.py    the autograd Functions and `recur`: the BPTT recursion, readable on its own
    matmul.py   the forward's per-step product by path: `portable` (addmm, public ops) or `mkl`
                (MKL's packed sgemm, a private op, behind a one-time self-check)
    buffers.py  the backward reuses the output gradient's buffer when autograd hands over its only
                reference, read from `_use_count` and `sys.getrefcount`

matmul.py and buffers.py lean on torch internals (a private op, reference counts), so they are what
a torch upgrade is most likely to break: matmul.py checks the op once and falls back to addmm,
buffers.py counts references once and copies where it cannot read them. Their tests are
tests/test_recurrence_matmul.py and tests/test_recurrence_buffers.py.
"""

from ..choices import GATES, Cell
from .cells import recur
from .matmul import available_paths, path_for, use_path

__all__ = ["Cell", "GATES", "recur", "available_paths", "path_for", "use_path"]
