"""GEMM rates at the model's own shapes, and the FLOPs of one training step.

A training step's matmul FLOPs per token (one layer, G gates, hidden H, vocabulary V):
recurrent forward h W^T, backward carry d W and weight gradient d^T h, each 2 G H^2;
the head's forward, input gradient and weight gradient, each 2 H V. The one-hot input
projection is a lookup (no FLOPs) in the trainer and is not counted for either side.
"""

from __future__ import annotations

import time

import torch

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def step_flops_per_token(cell: str, hidden: int, vocab: int) -> float:
    return 6 * GATES[cell] * hidden * hidden + 6 * hidden * vocab


def _onednn_linear():
    """x @ W^T through oneDNN with a prepacked weight, or None where this torch has no such op."""
    try:
        ops = torch.ops.mkldnn
        reorder, linear = ops._reorder_linear_weight, ops._linear_pointwise
    except (AttributeError, RuntimeError):
        return None
    if not torch.backends.mkldnn.is_available():
        return None

    def make(weight: torch.Tensor, batch: int):
        packed = reorder(weight, batch)
        return lambda x: linear(x, packed, None, "none", [], "")

    return make


def _time(fn, sync, budget: float = 0.15) -> float:
    """Best seconds per call over repeated short runs (robust to a busy machine)."""
    for _ in range(3):
        fn()
    sync()
    best, spent = float("inf"), 0.0
    while spent < budget:
        start = time.perf_counter()
        for _ in range(10):
            fn()
        sync()
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed / 10), spent + elapsed
    return best


def gemm_shapes(cell: str, hidden: int, batch: int, steps: int) -> dict[str, tuple[int, int, int, int]]:
    """(M, K, N, calls per window) of the recurrent matmuls: forward, backward carry, weight gradient."""
    g = GATES[cell] * hidden
    return {
        "forward": (batch, hidden, g, steps), "carry": (batch, g, hidden, steps),
        "weight": (g, batch * steps, hidden, 1),
    }


def measure_gemm(m: int, k: int, n: int, device: torch.device, sync, budget: float) -> dict[str, float]:
    """GFLOP/s of [m x k] @ [k x n] for each available implementation."""
    a = torch.randn(m, k, device=device)
    b = torch.randn(k, n, device=device) / k**0.5
    out = torch.empty(m, n, device=device)
    flops = 2 * m * k * n
    rates = {"torch.mm": flops / _time(lambda: torch.mm(a, b, out=out), sync, budget) / 1e9}
    make = _onednn_linear() if device.type == "cpu" else None
    if make is not None:
        try:
            linear = make(b.t().contiguous(), m)
            rates["oneDNN"] = flops / _time(lambda: linear(a), sync, budget) / 1e9
        except RuntimeError:
            pass
    return rates


def reference_rate(rates: dict[str, dict[str, float]], shapes: dict[str, tuple[int, int, int, int]]) -> float:
    """The window's recurrent GEMMs at the best measured rate of each shape: total FLOPs / total time."""
    flops = {name: 2 * m * k * n * calls for name, (m, k, n, calls) in shapes.items()}
    seconds = sum(flops[name] / max(rates[name].values()) for name in shapes)
    return sum(flops.values()) / seconds
