"""bpttcli.runtime: device choice, seeding, the allocator and the memory estimate."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bpttcli.config import Device, load_config
from bpttcli.errors import ConfigError
from bpttcli.runtime import check_memory, recurrent_parameters, resolve_device, seed_everything, tune_allocator


@pytest.fixture
def accelerators(monkeypatch):
    """Pretend which accelerators exist: accelerators(cuda=..., mps=...)."""

    def pretend(cuda: bool, mps: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return pretend


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(accelerators, cuda, mps, expected):
    accelerators(cuda, mps)
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device(Device.cpu) == torch.device("cpu")


@pytest.mark.parametrize("requested", ["cuda", "mps"])
def test_an_unavailable_accelerator_is_a_one_line_error(accelerators, requested):
    accelerators(False, False)
    with pytest.raises(ConfigError, match=f"--device {requested} requested but it is not available") as caught:
        resolve_device(requested)
    assert "\n" not in str(caught.value)


def test_seeding_repeats_weights_and_data_draws():
    draws = []
    for seed in (5, 5, 6):
        generator = seed_everything(seed)
        draws.append((torch.randn(3), torch.randint(100, (3,), generator=generator)))
    (w1, d1), (w2, d2), (w3, d3) = draws
    assert torch.equal(w1, w2) and torch.equal(d1, d2)
    assert not torch.equal(w1, w3) and not torch.equal(d1, d3)


MALLOC_PROBE = """
import ctypes, json
from bpttcli.runtime import tune_allocator

FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
Info = type("Info", (ctypes.Structure,), {"_fields_": [(f, ctypes.c_size_t) for f in FIELDS]})
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype, libc.malloc.restype, libc.free.argtypes = Info, ctypes.c_void_p, [ctypes.c_void_p]

def probe(size=64 << 20):
    # bytes of a `size` block that malloc mmaps, and the heap's growth (arena) still held once it is freed
    before = libc.mallinfo2()
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    mapped = libc.mallinfo2().hblkhd - before.hblkhd
    libc.free(block)
    return {"mapped": mapped, "kept": libc.mallinfo2().arena - before.arena}

untuned = probe()
tune_allocator()
print(json.dumps({"untuned": untuned, "tuned": probe()}))
"""


def glibc_with_mallinfo2() -> bool:
    try:
        return sys.platform.startswith("linux") and hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_tune_allocator_keeps_large_blocks_on_the_heap():
    """By default glibc mmaps a 64 MiB block and unmaps it on free (page faults on every reuse); tuned,
    the block comes from the heap (M_MMAP_THRESHOLD) and the heap keeps it once freed (M_TRIM_THRESHOLD)."""
    root = str(Path(__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", MALLOC_PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["untuned"]["mapped"] >= 64 << 20  # the baseline: a fresh process mmaps it
    # kept: the heap grew by most of the block (free space at its top served the rest) and did not shrink back
    assert seen["tuned"]["mapped"] == 0 and seen["tuned"]["kept"] >= 32 << 20, seen
    tune_allocator()  # and harmless here too
    assert torch.ones(1 << 16).sum() == 1 << 16


def test_flush_denormals_makes_cpu_arithmetic_treat_them_as_zero():
    from bpttcli.runtime import flush_denormals

    flush_denormals()
    assert float(torch.tensor([1e-39], dtype=torch.float32) * 1.0) == 0.0


@pytest.mark.parametrize("flags, says", [
    ({"model.hidden": 1_000_000}, "model.hidden=1000000 with model.layers=1 needs ~"),
    ({"model.hidden": 10**200}, "model.hidden=1000000000"),
    ({"data.batch_size": 10**8, "strategy.tau": 10**8}, "of activations (data.batch_size=100000000, strategy.tau="),
])
def test_a_model_that_cannot_fit_is_refused_in_one_short_line(flags, says):
    with pytest.raises(ConfigError, match="more than the .* here; lower") as caught:
        check_memory(load_config(None, flags), torch.device("cpu"))
    assert says in str(caught.value) and len(str(caught.value)) < 300


def test_the_memory_estimate_passes_real_models():
    for flags in ({}, {"model.cell": "lstm", "model.hidden": 1024, "model.layers": 3, "optim.optimizer": "adam"}):
        check_memory(load_config(None, flags), torch.device("cpu"))
    two_layers = load_config(None, {"model.cell": "rnn", "model.hidden": 4, "model.layers": 2})
    assert recurrent_parameters(two_layers) == 4 * (4 + 2) + 4 * (2 * 4 + 2)  # W_hh and biases; then W_ih too
