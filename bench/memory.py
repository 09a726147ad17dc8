"""Allocation peak of a piece of work: the most bytes tensors held at once beyond what was allocated before it.

The benchmark's recompute section uses this instead of the shared meter (bpttcli/memory.py, which the
memory section and `bptt compare` use): that meter counts the tensors autograd saves for backward,
and torch.utils.checkpoint's own saved-tensor hooks hide those inside a checkpointed segment.

CPU: torch's memory profiler (`profile_memory=True`) records every allocation and free of the
CPU allocator with a timestamp; the running sum in time order peaks at the answer. This counts
tensor storage only (not the Python heap, not allocator caching), and it counts every allocation,
including those made and freed inside one operator. CUDA: the caching allocator's own peak
statistics (bpttcli.memory.CudaPeak). Other devices: not measured (None).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from bpttcli.memory import CudaPeak


def allocation_peak(work: Callable[[], None], device: torch.device) -> int | None:
    """Peak of (bytes allocated - bytes freed) while `work()` runs, from zero at its start."""
    if device.type == "cuda":
        with CudaPeak(device) as meter:
            work()
        return meter.peak
    if device.type != "cpu":
        work()
        return None
    with _quiet(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    records = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    running = peak = 0
    for _, nbytes in records:
        running += nbytes
        peak = max(peak, running)
    return peak


@contextlib.contextmanager
def _quiet():
    """Silence the profiler's own start/stop lines, which its C++ side writes to the stderr descriptor."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(io.StringIO()):
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
