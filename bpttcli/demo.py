"""Influence balancing: truncated BPTT gets the gradient's sign wrong, randomized truncation does not.

From Tallec & Ollivier, "Unbiased Online Recurrent Optimization" (2017) and "Unbiasing Truncated
Backpropagation Through Time" (2017), also used by Vicol et al., "Unbiased Gradient Estimation in
Unrolled Computation Graphs with Persistent Evolution Strategies" (PES, 2021)::

    s_t = A s_{t-1} + theta u,   A = (I + N) / 2  (N: ones on the superdiagonal),   loss_t = (s_t[0] - 1)^2 / 2

u has p entries +1, then n - p entries -1. Entry j of u reaches s[0] after about 2j steps, so theta's
influence on the loss is positive in the short run and negative in the long run (p < n/2). Truncated
BPTT sees only the short run: for small tau its gradient has the wrong sign and theta runs away.

Every run uses the training code's strategy objects and segment iteration (`engine.segments`), online
as in training: theta is updated after each segment and the state carried, detached. The task runs in
episodes from s_0 = 1 (like epochs; full BPTT spans one episode). All runs divide a segment's summed
loss by the same tau, as training divides by B * tau, so lr means the same step per time step whatever
the strategy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.table import Table

from .config import check_seed
from .engine import segments
from .errors import ConfigError
from .fsutil import atomic_write_json, ensure_dir, timestamped_dir
from .plots import Panel, Series, plot_panels
from .strategies import Schedule, Strategy, StrategyName, make_strategy
from .ui import LiveView
from .unrolled import scale_grad

DIVERGED = 1e8  # a run stops once a step's loss exceeds this
TRAJECTORY_POINTS = 1000  # theta(t) kept per run in the JSON and the plot
MAX_N = 4096  # A is n x n, and every step multiplies by it
MAX_STEPS = 10_000_000  # every strategy keeps each step's loss


@dataclass
class Task:
    n: int = 23
    p: int = 10
    theta0: float = 0.5

    def system(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A and u, in float64."""
        a = 0.5 * (torch.eye(self.n, dtype=torch.float64) + torch.diag(torch.ones(self.n - 1, dtype=torch.float64), 1))
        u = torch.cat([torch.ones(self.p, dtype=torch.float64), -torch.ones(self.n - self.p, dtype=torch.float64)])
        return a, u

    def optimal_theta(self, episode: int) -> float:
        """The exact minimiser of one episode's loss: s_t[0] = a_t + theta b_t is affine in theta."""
        a_mat, u = self.system()
        s, d, a, b = torch.ones(self.n, dtype=torch.float64), torch.zeros_like(u), [], []
        for _ in range(episode):
            s, d = a_mat @ s, a_mat @ d + u
            a.append(s[0])
            b.append(d[0])
        a, b = torch.stack(a), torch.stack(b)
        return float((b * (1 - a)).sum() / (b * b).sum())

    def stationary_theta(self) -> float:
        """The long-run optimum: the fixed point s* = theta (I - A)^-1 u has s*[0] = 2 theta (2p - n) = 1."""
        return 1 / (2 * (2 * self.p - self.n))


@dataclass
class Run:
    label: str
    theta: float
    losses: torch.Tensor  # per time step
    diverged_at: int | None = None
    trajectory: tuple[list[int], list[float]] = ([], [])  # theta after each update, at its time step (thinned)


def unroll(a: torch.Tensor, u: torch.Tensor, theta: torch.Tensor, s: torch.Tensor, length: int, xi):
    """Per-step losses of one segment and its last state; xi[k] weights the gradient along s_{k-1} -> s_k."""
    losses = []
    for k in range(length):
        s = a @ scale_grad(s, 1.0 if xi is None else float(xi[k])) + theta * u
        losses.append(0.5 * (s[0] - 1) ** 2)
    return torch.stack(losses), s


def train_online(task: Task, strategy: Strategy, steps: int, episode: int, lr: float, norm: float,
                 generator: torch.Generator, view: LiveView) -> tuple[float, torch.Tensor, int | None, tuple]:
    """SGD on theta, one update per segment; returns final theta, per-step losses, the step it diverged at
    (or None) and theta's trajectory (time steps, values) from t = 0, one point per update."""
    a, u = task.system()
    theta = torch.tensor(task.theta0, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([theta], lr=lr)
    losses, times, thetas = [], [0], [task.theta0]
    for start in range(0, steps, episode):
        s = torch.ones(task.n, dtype=torch.float64)
        for part, segment in segments(strategy, min(episode, steps - start), generator):
            loss, s = unroll(a, u, theta, s, part.stop - part.start, segment.xi)
            (loss.sum() / norm).backward()
            optimizer.step()
            optimizer.zero_grad()
            s = s.detach()
            losses.append(loss.detach())
            times.append(start + part.stop)
            thetas.append(float(theta.detach()))
            view.advance(len(loss))
            if not bool(loss.max() < DIVERGED):
                return thetas[-1], torch.cat(losses), start + part.stop, (times, thetas)
    return thetas[-1], torch.cat(losses), None, (times, thetas)


def thin(times: list[int], values: list[float], points: int = TRAJECTORY_POINTS) -> tuple[list[int], list[float]]:
    """At most about `points` evenly spaced points of a trajectory, its first and last included."""
    stride = max(1, -(-len(times) // points))
    keep = list(range(0, len(times), stride)) + ([len(times) - 1] if (len(times) - 1) % stride else [])
    return [times[i] for i in keep], [values[i] for i in keep]


def lineup(truncations: list[int], tau: int, episode: int) -> list[tuple[str, Strategy]]:
    """The strategies compared, built exactly as training builds them (state carried)."""
    runs = [(f"truncated τ={t}", make_strategy(StrategyName.truncated, t, True)) for t in truncations]
    runs += [(f"random {s.value} τ={tau}", make_strategy(StrategyName.random, tau, True, s)) for s in Schedule]
    return runs + [(f"full (episode {episode})", make_strategy(StrategyName.full, episode, True))]


def check_options(task: Task, steps: int, episode: int, lr: float, tau: int, truncations: list[int], seed: int) -> None:
    if not 2 <= task.n <= MAX_N:
        raise ConfigError(f"--n must be in 2..{MAX_N} (got {task.n})")
    if not 0 < task.p < task.n or 2 * task.p == task.n:
        raise ConfigError(f"--p must be in 1..n-1 and differ from n/2 (got n={task.n}, p={task.p})")
    if min(steps, episode, tau, *truncations) < 1 or not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"--steps, --episode, --tau and --truncation must be >= 1 and --lr a finite number > 0 "
                          f"(got --lr {lr:g})")
    if not episode <= steps <= MAX_STEPS:
        raise ConfigError(f"--steps must be in --episode..{MAX_STEPS:,} (got --steps {steps}, --episode {episode})")
    check_seed(seed, "--seed")


def influence_balancing(task: Task, steps: int, episode: int, lr: float, tau: int, truncations: list[int],
                        seed: int, quiet: bool = False) -> list[Run]:
    """Train theta online with every strategy of `lineup`, each from the same seed."""
    check_options(task, steps, episode, lr, tau, truncations, seed)
    strategies = lineup(truncations, tau, episode)
    runs = []
    with LiveView("influence balancing", steps * len(strategies), quiet) as view:
        for label, strategy in strategies:
            view.describe(label)
            theta, losses, diverged, trajectory = train_online(task, strategy, steps, episode, lr, tau,
                                                               torch.Generator().manual_seed(seed), view)
            view.advance(steps - len(losses))
            runs.append(Run(label, theta, losses, diverged, thin(*trajectory)))
    return runs


def final_loss(run: Run, episode: int) -> float:
    """Mean loss per step over the last `episode` steps (those before divergence, for a run that diverged)."""
    return float(run.losses[-episode:].mean())


def table(runs: list[Run], task: Task, episode: int) -> Table:
    """Final theta and loss of every run against the episode's exact optimum theta*."""
    best = task.optimal_theta(episode)
    t = Table(title=f"Influence balancing, n={task.n}, p={task.p}: θ* = {best:.4f} (episode of {episode} steps), "
                    f"{task.stationary_theta():.4f} (long run)", title_justify="left")
    for column in ("strategy", "final θ", "|θ - θ*|", "loss, last episode", "diverged at step"):
        t.add_column(column, justify="left" if column == "strategy" else "right", no_wrap=column == "strategy")
    for r in runs:
        t.add_row(r.label, f"{r.theta:.4g}", f"{abs(r.theta - best):.3g}", f"{final_loss(r, episode):.3g}",
                  str(r.diverged_at or "-"))
    return t


def episode_means(losses: torch.Tensor, episode: int) -> tuple[list[int], list[float]]:
    """Mean loss per step of each episode (the last one possibly cut short), at its last step."""
    chunks = losses.split(episode)
    return [i * episode + len(c) for i, c in enumerate(chunks)], [float(c.mean()) for c in chunks]


def save(runs: list[Run], task: Task, episode: int, out: Path) -> tuple[Path, Path]:
    """influence-balancing.json (strict JSON) and .png in `out`."""
    ensure_dir(out, ConfigError)
    summary = {
        "task": vars(task), "episode": episode, "optimal_theta": task.optimal_theta(episode),
        "stationary_theta": task.stationary_theta(),
        "runs": [{"strategy": r.label, "theta": r.theta, "loss": final_loss(r, episode), "diverged_at": r.diverged_at,
                  "trajectory": {"step": r.trajectory[0], "theta": r.trajectory[1]}} for r in runs],
    }
    atomic_write_json(out / "influence-balancing.json", summary)  # strict: a diverged run's inf loss is null
    return out / "influence-balancing.json", plot(runs, task, episode, out / "influence-balancing.png")


def plot(runs: list[Run], task: Task, episode: int, path: Path) -> Path:
    """θ(t) of every strategy against θ* (runs that run away leave the frame), and the loss per episode."""
    best, steps = task.optimal_theta(episode), max(r.trajectory[0][-1] for r in runs)
    span = 3 * max(abs(task.theta0 - best), abs(task.stationary_theta() - best))
    thetas = [Series(r.label, *r.trajectory) for r in runs]
    thetas.append(Series(f"θ* = {best:.4f} (episode optimum)", [0, steps], [best, best], style="k--"))
    losses = [Series(r.label, *episode_means(r.losses, episode)) for r in runs]
    return plot_panels(path, [
        Panel(thetas, "time step", "θ", "θ(t) against θ*", ylim=(best - span, best + span)),
        Panel(losses, "time step", "mean loss per step over each episode", "loss", logy=True),
    ], title=f"Influence balancing, n = {task.n}, p = {task.p}: online SGD on θ, {steps:,} steps")


def default_out() -> Path:
    """analysis/<time>-influence-balancing, beside `bptt analyze`'s outputs."""
    return timestamped_dir("analysis", "influence-balancing")
