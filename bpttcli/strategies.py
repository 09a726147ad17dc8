"""Truncation strategies: where the chain h_{t-1} -> h_t is cut, and how surviving steps are weighted.

A strategy hands the training loop one *segment* at a time. In the notation of the d2l.ai
chapter, ``xi[k]`` multiplies the gradient that flows along h_{k-1} -> h_k inside the segment;
``xi[0] = 0`` is the cut at its start (the carried state is detached) and a parameter update
follows the segment.

- full:      no cut: one segment per window (or per epoch with sequential partitioning).
- truncated: a cut every tau steps, xi = 1 elsewhere.
- random:    a cut after step k with probability c_k; a surviving step is weighted 1/(1 - c_k),
             so E[xi] = 1 and the gradient is unbiased (Tallec & Ollivier 2017).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .choices import Schedule, StrategyName


@dataclass
class Segment:
    length: int
    xi: torch.Tensor | None = None  # [length] multipliers; None means 1 on every inner step

    @property
    def max_weight(self) -> float:
        """The largest compensation factor: the product of xi over the whole segment."""
        return 1.0 if self.xi is None else float(self.xi[1:].prod())


class Strategy:
    """Base class. `tau` is the nominal segment length and the loss normaliser: each token weighs 1/(B * tau)."""

    tau: int
    whole_epoch = False  # True when one segment spans each stream's whole epoch

    def next_segment(self, available: int, generator: torch.Generator) -> Segment:
        raise NotImplementedError


class Full(Strategy):
    """Exact gradient over the whole window; `window=None` means everything still available."""

    def __init__(self, tau: int, window: int | None = None):
        self.tau, self.window = tau, window
        self.whole_epoch = window is None

    def next_segment(self, available: int, generator: torch.Generator) -> Segment:
        return Segment(available if self.window is None else min(self.window, available))


class Truncated(Strategy):
    """Regular truncation: a cut every `tau` steps."""

    def __init__(self, tau: int):
        self.tau = tau

    def next_segment(self, available: int, generator: torch.Generator) -> Segment:
        return Segment(min(self.tau, available))


class RandomTruncation(Strategy):
    """Randomized truncation with a cut probability schedule of mean segment length `tau`."""

    def __init__(self, tau: int, schedule: Schedule = Schedule.geometric, alpha: float = 4.0):
        if Schedule(schedule) is Schedule.polytail and alpha <= 2:
            raise ValueError("polytail needs alpha > 2 for a finite mean segment length")
        self.tau, self.schedule, self.alpha = tau, Schedule(schedule), alpha
        self._survival = torch.ones(1, dtype=torch.float64)  # S[k] = P(length > k)

    def cut_probability(self, k: torch.Tensor) -> torch.Tensor:
        """c_k: the probability of a cut right after the k-th step of a segment (k >= 1)."""
        tau = float(self.tau)
        if self.schedule is Schedule.geometric:
            return torch.full_like(k, 1.0 / tau, dtype=torch.float64)
        return ((self.alpha - 1) / ((self.alpha - 2) * tau + k.double())).clamp(max=1.0)

    def survival(self, upto: int) -> torch.Tensor:
        """S[0..upto]: S[k] = prod_{j<=k} (1 - c_j), the probability that a segment outlives k steps."""
        while len(self._survival) <= upto:
            n = len(self._survival)
            steps = torch.arange(n, 2 * n, dtype=torch.float64)
            tail = self._survival[-1] * torch.cumprod(1 - self.cut_probability(steps), 0)
            self._survival = torch.cat([self._survival, tail])
        return self._survival[: upto + 1]

    def next_segment(self, available: int, generator: torch.Generator) -> Segment:
        # Inverse-CDF sampling: one uniform draw per segment, length = first k with S[k] <= u.
        u = max(float(torch.rand((), generator=generator, dtype=torch.float64)), 1e-12)
        length = self._first_below(u, available)
        survival = self.survival(length)
        xi = torch.zeros(length, dtype=torch.float64)
        xi[1:] = survival[:-2] / survival[1:-1]  # 1 / (1 - c_k) for each step that survived
        return Segment(length, xi)

    def _first_below(self, u: float, available: int) -> int:
        upto = min(available, 64)
        while True:
            s = self.survival(upto)
            below = torch.nonzero(s[1:] <= u)
            if len(below):
                return min(int(below[0]) + 1, available)
            if upto >= available:
                return available
            upto = min(2 * upto, available)


def make_strategy(
    name: StrategyName, tau: int, carries_state: bool, schedule: Schedule = Schedule.geometric,
    alpha: float = 4.0,
) -> Strategy:
    """Build a strategy; `full` spans the epoch when the state carries over, else one window."""
    name = StrategyName(name)
    if name is StrategyName.full:
        return Full(tau, window=None if carries_state else tau)
    if name is StrategyName.truncated:
        return Truncated(tau)
    return RandomTruncation(tau, schedule, alpha)

