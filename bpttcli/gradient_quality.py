"""Gradient quality: how close a strategy's gradient comes to the exact BPTT gradient over the same window.

Over a window from a fresh state, full BPTT gives the exact gradient g. A strategy gives g' (a random
one, one draw per call), scored against g by `score`: bias ||E[g'] - g|| / ||g|| (the mean over the
draws), the bias floor (what an unbiased estimator shows from that many draws: rel sd / sqrt(draws)),
rel sd, cosine; reach, the share of (target, earlier step) pairs the gradient connects; and memory,
the longest segment over the window. Every strategy backpropagates each step once, so the backward
cost is the same for all. `bptt compare` probes windows of WINDOW_FACTOR * tau steps at the initial
and the trained weights.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoint
from .builders import build_model
from .config import Config
from .data import Dataset, RandomWindows
from .engine import segments, window_gradient
from .runtime import resolve_device, seed_everything
from .strategies import Full, RandomTruncation, Strategy

WINDOWS, DRAWS, WINDOW_FACTOR = 4, 8, 5  # K windows of 5 tau steps, M draws of a random strategy


Span = tuple[int, int]  # a segment's new steps and the context steps it ran again (TBPTT)


def draw_gradient(model, x, y, strategy: Strategy, generator: torch.Generator) -> tuple[torch.Tensor, list[Span]]:
    """One gradient of `strategy` over the window from a fresh state, and the segments it drew."""
    same_draws = torch.Generator().set_state(generator.get_state())
    spans = [(s.length, min(s.context, part.start)) for part, s in segments(strategy, len(x), same_draws)]
    return window_gradient(model, x, y, model.init_state(x.shape[1]), strategy, generator, y.numel()), spans


def score(grads: torch.Tensor, exact: torch.Tensor, spans: list[list[Span]]) -> dict:
    """Bias, relative sd and cosine of gradient draws [M, P] against the exact gradient; reach, memory, backward."""
    scale, mean, window = exact.norm(), grads.mean(0), sum(n for n, _ in spans[0])
    spread = ((grads - mean).norm(dim=1).pow(2).sum() / max(len(grads) - 1, 1)).sqrt() / scale
    pairs = statistics.mean(sum(n * c + n * (n + 1) / 2 for n, c in draw) for draw in spans)
    return {
        "bias": float((mean - exact).norm() / scale), "rel_sd": float(spread),
        "bias_floor": float(spread) / math.sqrt(len(grads)),
        "cosine": float(F.cosine_similarity(grads, exact[None]).mean()),
        "reach": pairs / (window * (window + 1) / 2),
        "memory": statistics.mean(max(n + c for n, c in draw) for draw in spans) / window,
        "backward": statistics.mean(sum(n + c for n, c in draw) for draw in spans) / window,
    }


def probe(model, windows, strategies: dict[str, Strategy], draws: int, generator: torch.Generator) -> dict[str, dict]:
    """For each strategy: its gradient quality on every window at the current weights, averaged."""
    results = {name: [] for name in strategies}
    for x, y in windows:
        exact, _ = draw_gradient(model, x, y, Full(len(x)), generator)
        for name, strategy in strategies.items():
            n = draws if isinstance(strategy, RandomTruncation) else 1
            grads, spans = zip(*(draw_gradient(model, x, y, strategy, generator) for _ in range(n)))
            results[name].append(score(torch.stack(grads), exact, list(spans)))
    return {name: {k: statistics.mean(r[k] for r in rows) for k in rows[0]} for name, rows in results.items()}


def gradient_quality(config: Config, strategies: dict[str, Strategy], trained: dict[str, Path], seed: int,
                     data: Dataset, windows: int = WINDOWS, draws: int = DRAWS) -> dict:
    """Each strategy's gradient against exact BPTT on fixed windows of the training text, at the initial
    weights of `seed` and at its trained weights (`trained[name]`, a checkpoint)."""
    device = resolve_device(config.train.device)
    length = min(WINDOW_FACTOR * config.strategy.tau, len(data.train) - 1)
    seed_everything(seed)
    model = build_model(config, len(data.vocab)).to(device).eval()  # the runs' initial weights; no dropout
    batcher = RandomWindows(data.train, config.data.batch_size, torch.Generator().manual_seed(seed))
    fixed = [tuple(t.to(device) for t in batcher.next(length)) for _ in range(windows)]
    generator = torch.Generator().manual_seed(seed)
    initial = probe(model, fixed, strategies, draws, generator)
    rows = []
    for name, path in trained.items():
        model.load_state_dict(checkpoint.load(path)["model"])
        after = probe(model, fixed, {name: strategies[name]}, draws, generator)[name]
        rows += [{"strategy": name, "at": "initial", **initial[name]}, {"strategy": name, "at": "trained", **after}]
    return {"windows": windows, "length": length, "draws": draws, "seed": seed, "rows": rows}
