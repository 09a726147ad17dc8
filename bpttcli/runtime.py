"""Process-level setup: device choice, seeding, the CPU allocator, and whether a model fits in memory."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import random
import sys

import torch

from .config import Config, Device, OptimizerName
from .errors import ConfigError, shown
from .recurrence import GATES

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def resolve_device(requested: Device | str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an unavailable explicit choice is an error."""
    requested = Device(requested)
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if requested is Device.auto:
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (requested is Device.cuda and not cuda) or (requested is Device.mps and not mps):
        raise ConfigError(f"--device {requested.value} requested but it is not available here; use --device auto or cpu")
    return torch.device(requested.value)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG (initial weights, dropout) and return the data/strategy generator."""
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def tune_allocator() -> None:
    """Keep glibc from returning large temporaries to the OS after every op (page faults otherwise)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def flush_denormals() -> None:
    """Treat denormal floats as zero on the CPU: long backward passes drive gradients into them, and
    x86 computes on them ~100x slower (one full-BPTT step over 1000 steps: 24 s instead of 0.2 s)."""
    torch.set_flush_denormal(True)


def activation_bytes(config: Config, steps: int) -> int:
    """Rough bytes the backward pass keeps for `steps` steps (hidden states, gates, gradients)."""
    m = config.model
    per_step = config.data.batch_size * m.hidden * (2 * GATES[m.cell] + 2) * m.layers
    return 4 * per_step * steps


def recurrent_parameters(config: Config) -> int:
    """Parameters of the recurrent layers; the vocabulary's (one-hot input or embedding, and head) are not counted."""
    m = config.model
    gates = GATES[m.cell] * m.hidden
    return gates * (m.embedding + m.hidden + 2) + (m.layers - 1) * gates * (2 * m.hidden + 2)


def memory_bytes(device: torch.device) -> int | None:
    """The device's memory: the GPU's for cuda, the machine's RAM otherwise (None if unknown)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def byte_size(n: int) -> str:
    """Bytes in binary units: 1536 -> '1.5 KiB'; absurd sizes in scientific notation."""
    n = float(min(n, 1 << 1000))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.1f} {unit}" if n < 1e6 else f"{n:.3g} {unit}"
        n /= 1024


def check_memory(config: Config, device: torch.device) -> None:
    """Refuse, before any work, a model and batch that cannot fit in the device's memory: the recurrent weights
    with their gradients and optimizer state, plus one segment of tau steps of activations (a lower bound)."""
    have = memory_bytes(device)
    states = 4 if config.optim.optimizer is OptimizerName.adam else 2  # weights, gradients (+ AdamW's moments)
    model = 4 * states * recurrent_parameters(config)
    activations = activation_bytes(config, config.strategy.tau)
    if have is None or model + activations <= have:
        return
    m, where = config.model, f"{byte_size(have)} of {'GPU' if device.type == 'cuda' else 'memory'} here"
    if model >= activations:
        raise ConfigError(f"model.hidden={shown(m.hidden)} with model.layers={shown(m.layers)} needs "
                          f"~{byte_size(model)} for weights, gradients and optimizer state, more than the {where}; "
                          f"lower model.hidden or model.layers")
    raise ConfigError(
        f"one update needs ~{byte_size(activations)} of activations (data.batch_size={shown(config.data.batch_size)}, "
        f"strategy.tau={shown(config.strategy.tau)}, model.hidden={shown(m.hidden)}, model.layers={shown(m.layers)}), "
        f"more than the {where}; lower data.batch_size, strategy.tau or model.layers"
    )
