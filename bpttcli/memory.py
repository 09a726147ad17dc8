"""Peak memory of a piece of work: the meter `bptt compare` and the benchmark share, and all allocations.

On a GPU it is CUDA's allocator peak above what was allocated when the work started. Elsewhere it is
the peak of the activations autograd keeps for backward (tensors saved by the forward pass; views of
one buffer counted once; parameters excluded): what a truncation strategy decides, without the
process's fixed baseline, and cheap enough to run through a whole training run. It does not see
inside torch.utils.checkpoint regions (--recompute), whose own saved-tensor hooks take precedence,
nor buffers the backward allocates (the output layer's gradient dL/dh): `allocation_peak` does.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import weakref
from collections.abc import Callable

import torch


class SavedActivations:
    """Peak bytes of the tensors autograd saves for backward: parameters excluded, views of one storage
    counted once (as the largest of them), a slice of a bigger buffer (a batch of the token matrix) as itself."""

    def __init__(self):
        self.held: dict[int, list[int]] = {}  # storage address -> [saved views alive, bytes counted]
        self.current = self.peak = 0
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def __enter__(self) -> "SavedActivations":
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.__exit__(*exc)

    def _pack(self, tensor: torch.Tensor):
        if tensor.is_leaf and tensor.requires_grad:
            return tensor  # a parameter: not an activation
        key = tensor.untyped_storage().data_ptr()
        entry = self.held.setdefault(key, [0, 0])
        size = tensor.numel() * tensor.element_size()
        entry[0] += 1
        if size > entry[1]:
            self.current += size - entry[1]
            self.peak = max(self.peak, self.current)
            entry[1] = size
        box = _Box(tensor)
        weakref.finalize(box, self._release, key)  # autograd drops the box once backward has used it
        return box

    @staticmethod
    def _unpack(packed):
        return packed.tensor if isinstance(packed, _Box) else packed

    def _release(self, key: int) -> None:
        entry = self.held[key]
        entry[0] -= 1
        if not entry[0]:
            self.current -= entry[1]
            del self.held[key]


class _Box:
    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


class CudaPeak:
    """CUDA's allocator peak (torch.cuda.max_memory_allocated) over the block, above what was allocated at its start."""

    def __init__(self, device: torch.device):
        self.device, self.start, self.peak = device, 0, 0

    def __enter__(self) -> "CudaPeak":
        torch.cuda.synchronize(self.device)
        self.start = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        torch.cuda.synchronize(self.device)
        self.peak = torch.cuda.max_memory_allocated(self.device) - self.start


def memory_meter(device: torch.device) -> CudaPeak | SavedActivations:
    """The meter for work on `device`: a context manager whose `peak` is in bytes once the block has run."""
    return CudaPeak(device) if device.type == "cuda" else SavedActivations()


def memory_measure(device: torch.device) -> str:
    """What memory_meter(device) measures, in words."""
    if device.type == "cuda":
        return "CUDA allocator peak (torch.cuda.max_memory_allocated), less what was allocated at the start"
    return "largest set of activations autograd held for backward (parameters excluded)"


def allocation_peak(work: Callable[[], None], device: torch.device) -> int | None:
    """Peak of (bytes allocated - bytes freed) while `work()` runs, from zero at its start: every tensor.

    CPU: torch's memory profiler (`profile_memory=True`) records every allocation and free of the CPU
    allocator with a timestamp; the running sum in time order peaks at the answer. It counts tensor
    storage only (not the Python heap, not allocator caching), including what is made and freed inside
    one operator. CUDA: the caching allocator's peak (CudaPeak). Other devices: not measured (None).
    """
    if device.type == "cuda":
        with CudaPeak(device) as meter:
            work()
        return meter.peak
    if device.type != "cpu":
        work()
        return None
    from torch.profiler import ProfilerActivity, profile

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
