"""`bptt demo`: synthetic tasks that show what truncation does to the gradient."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli_base import Command, Group, friendly
from .ui import stdout

demo_app = typer.Typer(
    cls=Group,
    help="Synthetic tasks that show what truncation does to the gradient.\n\n"
    "Example: [bold]bptt demo influence-balancing --steps 20000[/]",
    no_args_is_help=True,
)


@demo_app.command("influence-balancing", cls=Command)
@friendly
def influence_balancing(
    n: Annotated[int, typer.Option(help="State size.")] = 23,
    p: Annotated[int, typer.Option(help="Entries of u that are +1 (the rest are -1); p < n/2: long-run influence is negative.")] = 10,
    steps: Annotated[int, typer.Option(help="Time steps per strategy.")] = 20000,
    episode: Annotated[int, typer.Option(help="Steps per episode, each from s_0 = 1; full BPTT spans one.")] = 1000,
    lr: Annotated[float, typer.Option(help="SGD step size on theta.")] = 1e-3,
    tau: Annotated[int, typer.Option(help="Mean segment length of the random runs; every run's loss is divided by it.")] = 30,
    truncation: Annotated[Optional[list[int]], typer.Option(metavar="<int>", help="tau of a truncated run (repeatable) \\[default: 1, 10, 100].")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random truncation points.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Output directory \\[default: analysis/<time>-influence-balancing].")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Influence balancing: truncated BPTT runs away where randomized truncation and full BPTT converge.

    s <- A s + theta u, loss (s[0] - 1)^2 / 2, online SGD on theta with the training code's strategies.

    Sources: Tallec & Ollivier 2017, "Unbiased Online Recurrent Optimization" (UORO) and "Unbiasing Truncated Backpropagation Through Time" (ARTBP); Vicol et al. 2021, "Unbiased Gradient Estimation in Unrolled Computation Graphs with Persistent Evolution Strategies" (PES).

    Example: [bold]bptt demo influence-balancing --steps 20000 --lr 0.001 --truncation 1 --truncation 10[/]
    """
    from . import demo as lib

    task = lib.Task(n, p)
    runs = lib.influence_balancing(task, steps, episode, lr, tau, truncation or [1, 10, 100], seed, quiet)
    json_path, png = lib.save(runs, task, episode, out or lib.default_out())
    stdout.print(lib.table(runs, task, episode))
    stdout.print(f"wrote {json_path} and {png}")


@demo_app.command("recall", cls=Command)
@friendly
def recall(
    gap: Annotated[Optional[list[int]], typer.Option(metavar="<int>", help="G, filler steps between a symbol and its recall (repeatable) \\[default: 5, 10, 20, 40].")] = None,
    tau: Annotated[int, typer.Option(help="tau of truncated and TBPTT's k1, and the mean segment length of random.")] = 10,
    symbols: Annotated[int, typer.Option(help="Symbols to remember (chance accuracy is 1/symbols).")] = 4,
    sequences: Annotated[int, typer.Option(help="Backward work per strategy, in training sequences' worth of steps.")] = 32000,
    hidden: Annotated[int, typer.Option(help="GRU hidden units.")] = 32,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 0.03,
    seed: Annotated[int, typer.Option(help="Seed of the weights, the sequences and the cuts.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Output directory \\[default: analysis/<time>-recall].")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Delayed recall: which strategy learns a dependency longer than tau? Accuracy against the gap G, per strategy.

    Each sequence is a symbol, G fillers, a cue and the symbol again; every strategy trains the same GRU for the same backward work.

    Example: [bold]bptt demo recall --gap 5 --gap 20 --tau 10[/]
    """
    from . import recall as lib

    settings = lib.Settings(gaps=tuple(gap or (5, 10, 20, 40)), tau=tau, symbols=symbols, sequences=sequences,
                            hidden=hidden, lr=lr, seed=seed)
    result = lib.sweep(settings, quiet)
    json_path, png = lib.save(result, out or lib.default_out())
    stdout.print(lib.table(result))
    stdout.print(f"wrote {json_path} and {png}")
