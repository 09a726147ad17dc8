"""The choices of the command line and the config, as Enums: torch-free, so `bptt --help` starts fast.

The modules that use them re-export them where they always were (`strategies.StrategyName`,
`sample.Unknown`, ...).
"""

from __future__ import annotations

import enum


class Cell(str, enum.Enum):
    rnn = "rnn"
    gru = "gru"
    lstm = "lstm"
    linear = "linear"  # the chapter's linear RNN: identity activation


GATES = {Cell.rnn: 1, Cell.gru: 3, Cell.lstm: 4, Cell.linear: 1}  # blocks of W_hh per cell


class StrategyName(str, enum.Enum):
    full = "full"
    truncated = "truncated"
    random = "random"
    tbptt = "tbptt"


class Schedule(str, enum.Enum):
    geometric = "geometric"  # c = 1/tau
    polytail = "polytail"  # c_k = (alpha-1) / ((alpha-2) tau + k), heavy-tailed lengths


class Unknown(str, enum.Enum):
    """What `bptt sample` does with prefix characters outside the vocabulary."""

    error = "error"  # refuse the prefix
    skip = "skip"  # drop them
    unk = "unk"  # feed <unk>


class XAxis(str, enum.Enum):
    """The horizontal axis of `bptt plot`."""

    chars = "chars"  # training characters
    time = "time"  # wall seconds
    step = "step"  # updates
