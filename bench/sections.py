"""The benchmark's sections; each takes (args, corpus path, device) and returns a JSON-able dict."""

from __future__ import annotations

import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bpttcli import recurrence
from bpttcli.engine import forward_loss
from bpttcli.memory import allocation_peak, memory_measure, memory_meter
from bpttcli.model import CharRNN

import check_grads
import gemm as gemm_rates
from baseline import BuiltinLM
from runners import TrainerLoop, baseline_loop

BATCH, TAU, VOCAB = 32, 35, 28
IMPLS = ("bptt", "baseline")


def synchronize(device: torch.device):
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


# ------------------------------------------------------------------------------------ correctness
def correctness(args, data, device) -> dict:
    """Max relative gradient error of every kernel in fp32 (and fp64) against the fp64 unrolled reference:
    the hand-written BPTT on each matmul path (xi with cuts, and xi = None), torch's fused kernel (xi = None)."""
    kernels = [("hand-written", path) for path in recurrence.available_paths(device)] + [("fused", None)]
    rows = []
    for kernel, path in kernels:
        with recurrence.use_kernel(kernel), recurrence.use_path(path):
            for cell in [*args.cells, *(["linear"] if kernel == "hand-written" else [])]:
                for layers in (1, 2):
                    errors = {
                        str(dtype).removeprefix("torch."): check_grads.max_error(
                            cell, layers, dtype, steps=TAU, batch=4, hidden=48, vocab=VOCAB, device=device,
                            cuts=kernel == "hand-written")
                        for dtype in (torch.float32, torch.float64) if dtype != torch.float64 or device.type != "mps"
                    }
                    rows.append({"kernel": kernel, "path": path or "-", "cell": cell, "layers": layers, **errors})
    return {"auto_kernel": {c: recurrence.describe(c, device) for c in args.cells}, "rows": rows}


# ------------------------------------------------------------------------------------------- GEMM
def gemm(args, data, device) -> dict:
    budget = 0.03 if args.quick else 0.25
    out = {}
    for cell in args.cells:
        for hidden in args.hidden:
            shapes = gemm_rates.gemm_shapes(cell, hidden, BATCH, TAU)
            rates = {name: gemm_rates.measure_gemm(m, k, n, device, synchronize(device), budget)
                     for name, (m, k, n, _) in shapes.items()}
            out[f"{cell}-{hidden}"] = {"shapes": shapes, "rates": rates,
                                       "reference": gemm_rates.reference_rate(rates, shapes)}
    return out


# ------------------------------------------------------------------------------------- throughput
def tokens_per_second(step, seconds: float, sync, min_steps: int = 3) -> float:
    sync()
    start, tokens, steps = time.perf_counter(), 0, 0
    while steps < min_steps or time.perf_counter() - start < seconds:
        tokens, steps = tokens + step(), steps + 1
    sync()
    return tokens / (time.perf_counter() - start)


def throughput(args, data, device) -> dict:
    """Both loops for every configuration, interleaved round by round so that load drifts hit both alike."""
    configs = [(s, c, h) for s in args.strategies for c in args.cells for h in args.hidden]
    loops = {}
    for strategy, cell, hidden in configs:
        loops["bptt", strategy, cell, hidden] = TrainerLoop(data, cell, hidden, strategy, str(device))
        loops["baseline", strategy, cell, hidden] = baseline_loop(data, cell, hidden, strategy, str(device))
    sync = synchronize(device)
    for loop in loops.values():
        for _ in range(2):
            loop.step()
    samples = {key: [] for key in loops}
    for r in range(args.rounds):
        for config in configs:
            for impl in IMPLS[:: 1 if r % 2 == 0 else -1]:
                samples[(impl, *config)].append(tokens_per_second(loops[(impl, *config)].step, args.seconds, sync))
        print(f"[round {r + 1}/{args.rounds}]", end=" ", flush=True)
    rows = []
    for strategy, cell, hidden in configs:
        trainer = loops["bptt", strategy, cell, hidden].trainer
        row = {"strategy": strategy, "cell": cell, "hidden": hidden, "kernel": kernel_of(trainer)}
        for impl in IMPLS:
            got = samples[(impl, strategy, cell, hidden)]
            peak = allocation_peak(loops[(impl, strategy, cell, hidden)].step, device)  # one more step, profiled
            row[impl] = {"best": max(got), "median": statistics.median(got), "samples": got, "peak_bytes": peak}
        rows.append(row)
    return {"rows": rows, "rounds": args.rounds, "seconds_per_sample": args.seconds}


def kernel_of(trainer) -> str:
    """The kernel the trainer's first layer runs on a segment of its strategy (recurrence/kernels.py's rule)."""
    segment = trainer.strategy.next_segment(4 * TAU, torch.Generator().manual_seed(0))
    xi = None if segment.xi is None else segment.xi.tolist()
    return recurrence.name_for(trainer.model.cell, trainer.model.layers[0].weight_hh, xi)


# -------------------------------------------------------------------------------------- allocator
def allocator(args, data, device) -> dict:
    """The trainer's step in fresh processes with glibc's default allocator settings and with tune_allocator."""
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return {"skipped": "glibc allocator tuning applies to Linux CPU runs only"}
    argv = ["--device", "cpu", "--data", str(data), "--hidden", str(max(args.hidden)), "--seconds", str(args.seconds)]
    argv += (["--quick"] if args.quick else []) + (["--threads", str(args.threads)] if args.threads else [])
    runs = {mode: [] for mode in ("default", "tuned")}
    if args.quick:  # a smoke test of the code, not a measurement: this process is already tuned
        default = _start_self([*argv, "--allocator-probe", "default"])
        runs["tuned"].append(allocator_probe(args, data, device, tuned=True))
        runs["default"].append(_result(default))
    for _ in range(0 if args.quick else 3):  # one process after another, alternating to spread load drifts
        for mode in runs:
            runs[mode].append(_result(_start_self([*argv, "--allocator-probe", mode])))
    return {mode: {key: max((run[key] for run in got), key=lambda v: v["tokens_per_s"]) for key in got[0]}
            for mode, got in runs.items()}


def _start_self(argv: list[str]) -> subprocess.Popen:
    script = Path(__file__).with_name("benchmark.py")
    return subprocess.Popen([sys.executable, str(script), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(process: subprocess.Popen) -> dict:
    """The JSON line a probe process prints last."""
    out, err = process.communicate()
    if process.returncode:
        raise RuntimeError(f"allocator probe failed ({process.returncode}): {err.strip()[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def allocator_probe(args, data, device, tuned: bool) -> dict:
    """In this process: tokens/s and minor page faults per step of a few trainer configurations."""
    if not tuned:
        import bpttcli.builders
        bpttcli.builders.tune_allocator = lambda: None  # the trainer would tune it
    hidden, out = max(args.hidden), {}
    configs = [("rnn", "truncated")] if args.quick else [("rnn", "truncated"), ("lstm", "truncated"), ("rnn", "full")]
    for cell, strategy in configs:
        loop = TrainerLoop(data, cell, hidden, strategy, "cpu")
        for _ in range(3):
            loop.step()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        steps = [0]

        def counted():
            steps[0] += 1
            return loop.step()

        rate = max(tokens_per_second(counted, args.seconds, lambda: None) for _ in range(2))
        per_step = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps[0]
        out[f"{cell}-{hidden} {strategy}"] = {"tokens_per_s": rate, "minor_faults_per_step": per_step}
    return out


# ----------------------------------------------------------------------------------------- memory
def _bptt_step(cell: str, hidden: int, length: int, device, recompute: bool = False):
    """One full-BPTT training step over a window of `length`, as the trainer's (model, loss, backward, clip, SGD)."""
    torch.manual_seed(0)
    model = CharRNN(VOCAB, cell, hidden).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    x, y = torch.randint(0, VOCAB, (2, length, BATCH), device=device)

    def step():
        loss, _ = forward_loss(model, x, y, model.init_state(BATCH), None, recompute)
        (loss / (BATCH * length)).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _builtin_step(cell: str, hidden: int, length: int, device):
    torch.manual_seed(0)
    net = BuiltinLM(cell, VOCAB, hidden).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    x, y = torch.randint(0, VOCAB, (2, length, BATCH), device=device)

    def step():
        logits, _ = net(x, net.begin_state(BATCH))
        F.cross_entropy(logits, y.reshape(-1)).backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


@contextlib.contextmanager
def flush_denormals():
    """Long windows drive the backward's gradients into denormal floats, which x86 handles ~100x slower
    (a full-BPTT step over L=1000 takes 24 s instead of 0.2 s); flushing them changes no byte counts."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)  # torch's default; it has no getter to restore from


PROFILED_LENGTH = 1000  # CPU: every allocation is counted up to this L (the profiler keeps every event: GBs beyond)


def memory(args, data, device) -> dict:
    """Peak bytes of one full-BPTT step against L, over the bytes of the L hidden states (L * B * H * 4), on
    two measures: every allocation (`allocation_peak`, on the CPU up to PROFILED_LENGTH) and the activations
    autograd saves (`bptt compare`'s meter)."""
    with flush_denormals():
        return _memory(args, device)


def _memory(args, device) -> dict:
    hidden, rows = args.memory_hidden, []
    makers = {"bptt": _bptt_step, "baseline": _builtin_step}
    for cell in args.cells:
        for impl, make in makers.items():
            make(cell, hidden, 8, device)()  # warm up lazily created state
            for length in args.lengths:
                started, step, meter = time.perf_counter(), make(cell, hidden, length, device), memory_meter(device)

                def metered():
                    with meter:
                        step()

                if length <= PROFILED_LENGTH or device.type != "cpu":  # both measures in one step: the meter
                    allocated = allocation_peak(metered, device)  # allocates no tensors
                else:
                    allocated = None
                    metered()
                states = length * BATCH * hidden * 4
                rows.append({"cell": cell, "impl": impl, "length": length, "peak_bytes": meter.peak,
                             "state_bytes": states, "ratio": meter.peak / states, "alloc_bytes": allocated,
                             "alloc_ratio": None if allocated is None else allocated / states,
                             "seconds": time.perf_counter() - started})
    return {"hidden": hidden, "batch": BATCH, "measure": memory_measure(device), "rows": rows}


# -------------------------------------------------------------------------------------- recompute
def recompute(args, data, device) -> dict:
    """Full BPTT over one long window with and without segment checkpointing: peak memory and gradient."""
    with flush_denormals():
        return _recompute(args, device)


def _recompute(args, device) -> dict:
    length, hidden, out = args.recompute_length, args.memory_hidden, {}
    for cell in ("rnn",):
        runs = {}
        for flag in (False, True):
            runs[flag] = _gradient_and_peak(cell, hidden, length, device, flag)
        g0, g1 = runs[False]["grad"], runs[True]["grad"]
        states = length * BATCH * hidden * 4
        out[cell] = {
            "length": length, "hidden": hidden, "state_bytes": states,
            "peak_bytes": runs[False]["peak"], "peak_bytes_recompute": runs[True]["peak"],
            "seconds": runs[False]["seconds"], "seconds_recompute": runs[True]["seconds"],
            "max_abs_diff": float((g0 - g1).abs().max()),
            "max_rel_diff": float((g0 - g1).abs().max() / g0.abs().max()),
        }
    return out


def _gradient_and_peak(cell: str, hidden: int, length: int, device, recompute_flag: bool) -> dict:
    torch.manual_seed(0)
    model = CharRNN(VOCAB, cell, hidden).to(device)
    x, y = torch.randint(0, VOCAB, (2, length, BATCH), device=device)

    def work():
        loss, _ = forward_loss(model, x, y, model.init_state(BATCH), None, recompute_flag)
        (loss / (BATCH * length)).backward()

    started = time.perf_counter()
    peak = allocation_peak(work, device)
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double().cpu()
    return {"peak": peak, "grad": grad, "seconds": time.perf_counter() - started}


SECTIONS = {
    "correctness": correctness, "gemm": gemm, "throughput": throughput, "allocator": allocator,
    "memory": memory, "recompute": recompute,
}
NAMES = list(SECTIONS)
