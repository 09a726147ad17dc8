"""Delayed recall: where does each strategy stop learning a dependency G steps long?

Each sequence is a run of episodes ``s . . . . ? s``: a symbol s (one of `symbols`), G filler
characters, a cue, and s again. Only the character after the cue needs memory: predicting it is
possible only if the gradient of its loss reaches back G + 1 steps to where s was read. Recall
accuracy is the share of cues after which the model's most likely next character is the symbol
(chance: 1 / symbols).

Every strategy trains the same GRU from the same initial weights on the same sequences with the
training code's strategy objects, segment iteration and replay (`engine`), one update per segment
and the state carried detached, its loss divided by B * tau as in training, for the same backward
work: training stops once it has backpropagated `sequences` sequences' worth of steps. Truncated,
random and full backpropagate every step once; TBPTT(k1, k2) replays up to k2 - k1 steps per
segment, so it sees fewer sequences.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.table import Table

from .engine import Replay, segments
from .errors import ConfigError
from .fsutil import atomic_write_text, ensure_dir, timestamped_dir
from .model import CharRNN, detach_state
from .plots import Series, plot_lines
from .recurrence import Cell
from .strategies import TBPTT, Full, RandomTruncation, Schedule, Strategy, Truncated
from .ui import LiveView

FILLER, CUE = 0, 1  # token ids; the symbols follow


@dataclass
class Settings:
    gaps: tuple[int, ...] = (5, 10, 20, 40)
    tau: int = 10
    symbols: int = 4
    episodes: int = 1  # per sequence
    sequences: int = 32000  # backward work per strategy, in sequences' worth of steps
    batch: int = 32
    hidden: int = 32
    lr: float = 0.03
    seed: int = 0

    def check(self) -> None:
        if min(self.gaps, default=0) < 1 or self.tau < 2 or self.symbols < 2 or self.hidden < 1:
            raise ConfigError("--gap values must be >= 1, --tau >= 2, --symbols >= 2 and --hidden >= 1")
        if min(self.episodes, self.sequences, self.batch) < 1 or not (0 < self.lr < math.inf):
            raise ConfigError("--episodes, --sequences and --batch must be >= 1 and --lr finite and > 0")


def lineup(tau: int) -> list[tuple[str, Strategy]]:
    """The strategies compared: truncated and three random schedules of mean tau, TBPTT(tau, 4 tau), full."""
    return [
        (f"truncated τ={tau}", Truncated(tau)),
        (f"random geometric τ={tau}", RandomTruncation(tau, Schedule.geometric)),
        (f"random polytail τ={tau}", RandomTruncation(tau, Schedule.polytail)),
        (f"random polytail τ={tau}, floor {tau // 2}", RandomTruncation(tau, Schedule.polytail, floor=tau // 2)),
        (f"tbptt k1={tau}, k2={4 * tau}", TBPTT(tau, 4 * tau)),
        ("full (whole sequence)", Full(tau)),
    ]


def batch(gap: int, symbols: int, episodes: int, size: int, generator: torch.Generator):
    """Inputs and targets [T, size] of `size` sequences, and the mask of the targets that need recall."""
    symbol = torch.randint(symbols, (episodes, size), generator=generator) + 2
    filler = torch.full((gap, episodes, size), FILLER)
    cue = torch.full((1, episodes, size), CUE)
    tokens = torch.cat([symbol[None], filler, cue, symbol[None]]).transpose(0, 1).reshape(-1, size)
    recall = torch.zeros_like(tokens, dtype=torch.bool)
    recall[gap + 2 :: gap + 3] = True  # the symbol after each cue
    return tokens[:-1], tokens[1:], recall[1:]


def train_one(strategy: Strategy, gap: int, s: Settings, model: CharRNN, view: LiveView) -> CharRNN:
    """Train `model` with `strategy` until it has backpropagated `s.sequences` sequences' worth of steps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
    generator = torch.Generator().manual_seed(s.seed)
    length = s.episodes * (gap + 3) - 1
    budget, spent = s.sequences * length, 0
    while spent < budget:
        x, y, _ = batch(gap, s.symbols, s.episodes, s.batch, generator)
        state, replay = model.init_state(s.batch), Replay()
        for part, segment in segments(strategy, len(x), generator):
            spent += s.batch * (segment.length + min(segment.context, part.start))
            loss, state = replay.forward(model, x[part], y[part], state, segment)
            (loss / (s.batch * s.tau)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state = detach_state(state)
        view.advance(min(s.batch * length, budget))
    return model


@torch.no_grad()
def accuracy(model: CharRNN, gap: int, s: Settings) -> float:
    """Recall accuracy on 512 fresh sequences."""
    x, y, recall = batch(gap, s.symbols, s.episodes, 512, torch.Generator().manual_seed(s.seed + 1))
    logits, _ = model(x, model.init_state(x.shape[1]))
    return float((logits.argmax(-1) == y)[recall].double().mean())


def sweep(s: Settings, quiet: bool = False) -> dict:
    """Recall accuracy of every strategy of `lineup` at every gap: {"settings", "gaps", "runs": {label: [acc]}}."""
    s.check()
    strategies = lineup(s.tau)
    total = len(strategies) * sum(s.sequences * (s.episodes * (gap + 3) - 1) for gap in s.gaps)
    runs = {label: [] for label, _ in strategies}
    with LiveView("recall", total, quiet, unit="steps") as view:
        for gap in s.gaps:
            for label, strategy in strategies:
                view.describe(f"G={gap} {label}")
                torch.manual_seed(s.seed)
                model = CharRNN(s.symbols + 2, Cell.gru, s.hidden)
                runs[label].append(accuracy(train_one(strategy, gap, s, model, view), gap, s))
    return {"settings": asdict(s), "chance": 1 / s.symbols, "runs": runs}


def table(result: dict) -> Table:
    gaps = result["settings"]["gaps"]
    t = Table(title=f"Delayed recall: accuracy after the cue (chance {result['chance']:.2f}), "
                    f"equal backward work", title_justify="left")
    t.add_column("strategy", no_wrap=True)
    for gap in gaps:
        t.add_column(f"G={gap}", justify="right")
    for label, accuracies in result["runs"].items():
        t.add_row(label, *(f"{a:.2f}" for a in accuracies))
    return t


def save(result: dict, out: Path) -> tuple[Path, Path]:
    """recall.json and recall.png in `out`."""
    ensure_dir(out, ConfigError)
    atomic_write_text(out / "recall.json", json.dumps(result, indent=1, allow_nan=False) + "\n")
    gaps = result["settings"]["gaps"]
    series = [Series(label, gaps, accuracies) for label, accuracies in result["runs"].items()]
    series.append(Series("chance", gaps, [result["chance"]] * len(gaps)))
    tau = result["settings"]["tau"]
    png = plot_lines(out / "recall.png", series, "gap G (steps between the symbol and its recall)",
                     "recall accuracy", f"Delayed recall: which strategy learns a dependency of G + 1 steps (τ = {tau})",
                     logx=True)
    return out / "recall.json", png


def default_out() -> Path:
    return timestamped_dir("analysis", "recall")
