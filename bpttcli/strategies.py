"""Truncation strategies: where the chain h_{t-1} -> h_t is cut, and how surviving steps are weighted.

A strategy hands the training loop one *segment* at a time. In the notation of the d2l.ai
chapter, ``xi[k]`` multiplies the gradient that flows along h_{k-1} -> h_k inside the segment;
``xi[0] = 0`` is the cut at its start (the carried state is detached) and a parameter update
follows the segment.

- full:      no cut: one segment per window (or per epoch with sequential partitioning).
- truncated: a cut every tau steps, xi = 1 elsewhere.
- random:    a cut after step k with probability c_k; a surviving step is weighted 1/(1 - c_k),
             so E[xi] = 1 and the gradient is unbiased (Tallec & Ollivier 2017). With a floor m,
             c_k = 0 for k <= m: no cut (and no variance) in the first m steps of a segment.
- tbptt:     TBPTT(k1, k2) (Williams & Peng 1990): every k1 = tau steps, the losses of those k1 steps
             backpropagate through the last k2 >= k1 steps; the k2 - k1 steps before the segment are
             its *context*, run again without counting their losses twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .choices import Schedule, StrategyName


@dataclass
class Segment:
    length: int
    xi: torch.Tensor | None = None  # [length] multipliers; None means 1 on every inner step
    context: int = 0  # steps before the segment run again with it (their losses not counted twice)

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


class TBPTT(Strategy):
    """TBPTT(k1, k2): segments of k1 = `tau` new steps whose losses reach back through `k2` steps."""

    def __init__(self, tau: int, k2: int):
        if k2 < tau:
            raise ValueError("tbptt needs k2 >= tau (k1)")
        self.tau, self.k2 = tau, k2

    def next_segment(self, available: int, generator: torch.Generator) -> Segment:
        return Segment(min(self.tau, available), context=self.k2 - self.tau)


class RandomTruncation(Strategy):
    """Randomized truncation with a cut probability schedule of mean segment length `tau`.

    With `floor` m, no cut falls in a segment's first m steps and the schedule applies to the steps
    after them with mean m + (tau - m) = tau.
    """

    def __init__(self, tau: int, schedule: Schedule = Schedule.geometric, alpha: float = 4.0, floor: int = 0):
        if Schedule(schedule) is Schedule.polytail and alpha <= 2:
            raise ValueError("polytail needs alpha > 2 for a finite mean segment length")
        if not 0 <= floor < tau:
            raise ValueError("the floor must be in [0, tau)")
        self.tau, self.schedule, self.alpha, self.floor = tau, Schedule(schedule), alpha, floor
        self._survival = torch.ones(1, dtype=torch.float64)  # S[k] = P(length > k)

    def cut_probability(self, k: torch.Tensor) -> torch.Tensor:
        """c_k: the probability of a cut right after the k-th step of a segment (k >= 1)."""
        tail, tau = k.double() - self.floor, float(self.tau - self.floor)
        if self.schedule is Schedule.geometric:
            c = torch.full_like(tail, 1.0 / tau)
        else:
            c = ((self.alpha - 1) / ((self.alpha - 2) * tau + tail)).clamp(max=1.0)
        return torch.where(tail > 0, c, torch.zeros_like(c))

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
    alpha: float = 4.0, floor: int = 0, k2: int = 0,
) -> Strategy:
    """Build a strategy; `full` spans the epoch when the state carries over, else one window.

    `floor` applies to `random`, `k2` to `tbptt` (0: twice tau)."""
    name = StrategyName(name)
    if name is StrategyName.full:
        return Full(tau, window=None if carries_state else tau)
    if name is StrategyName.truncated:
        return Truncated(tau)
    if name is StrategyName.tbptt:
        return TBPTT(tau, k2 or 2 * tau)
    return RandomTruncation(tau, schedule, alpha, floor)



# The variants `bptt compare` runs side by side: a name for each (strategy, schedule), and `random` for both schedules.
@dataclass(frozen=True)
class Variant:
    """A strategy with its settings, as `bptt compare` runs it; floor and k2 are given relative to tau."""

    name: StrategyName
    schedule: Schedule = Schedule.geometric
    floor_share: float = 0.0  # floor = floor_share * tau
    k2_factor: int = 0  # k2 = k2_factor * tau (0: the default, 2 tau)
    carries_state: bool = True  # False: independent windows from a fresh state (random partitioning)

    def floor(self, tau: int) -> int:
        return int(self.floor_share * tau)

    def k2(self, tau: int) -> int:
        return self.k2_factor * tau


VARIANTS = {
    "full": Variant(StrategyName.full),  # with the state carried: the whole epoch
    "full-window": Variant(StrategyName.full, carries_state=False),  # exact over independent windows of tau
    "truncated": Variant(StrategyName.truncated),
    "random-geometric": Variant(StrategyName.random, Schedule.geometric),
    "random-polytail": Variant(StrategyName.random, Schedule.polytail),
    "random-floor": Variant(StrategyName.random, Schedule.polytail, floor_share=0.5),
    "tbptt": Variant(StrategyName.tbptt, k2_factor=2),
}
GROUPS = {"random": ["random-geometric", "random-polytail"]}


def make_variant(variant: str, tau: int, alpha: float = 4.0) -> Strategy:
    """The strategy a VARIANTS name stands for (with the state carried, `full` spans everything available)."""
    v = VARIANTS[variant]
    return make_strategy(v.name, tau, v.carries_state, v.schedule, alpha, v.floor(tau), v.k2(tau))
