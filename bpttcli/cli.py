"""The `bptt` command: parse options, build a config, call the library."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .config import Device, LrSchedule, OptimizerName, Partition, load_config
from .corpus import Preprocess
from .errors import BpttError
from .recurrence import Cell
from .strategies import Schedule, StrategyName
from .ui import console, stdout

app = typer.Typer(
    help="Train character-level RNNs with full, truncated and randomized backpropagation through time.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="rich",
)


def friendly(command):
    """Print expected errors as one line and exit with their code; let anything else raise."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except BpttError as exc:
            console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        stdout.print(f"bptt {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    """Backpropagation through time, first-class."""


@app.command()
@friendly
def download(
    url: Annotated[Optional[str], typer.Option(help="Where to fetch the corpus from.")] = None,
    sha1: Annotated[Optional[str], typer.Option(help="Expected SHA-1; empty string skips the check.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Cache directory [default: $BPTT_DATA_DIR or ./data].")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Fetch The Time Machine (the d2l.ai copy), verify its SHA-1 and cache it.

    Example: [bold]bptt download --data-dir ~/.cache/bptt[/]
    """
    from .download import DEFAULT_SHA1, DEFAULT_URL, fetch

    path = fetch(url or DEFAULT_URL, DEFAULT_SHA1 if sha1 is None else sha1, data_dir, show_progress=not quiet,
                 console=console)
    stdout.print(f"{path} ({path.stat().st_size:,} bytes, verified)" if sha1 != "" else str(path))


ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config, e.g. configs/default.yaml.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override any key: --set optim.lr=0.5 (repeatable).")]
DataOpt = Annotated[Optional[Path], typer.Option("--data", help="Train on this UTF-8 text file instead of the book.")]


@app.command()
@friendly
def train(
    config: ConfigOpt = None,
    strategy: Annotated[Optional[StrategyName], typer.Option(help=(
        "full: exact gradient; with sequential partitioning one segment per epoch (the chapter's "
        "'computationally infeasible' case, memory grows with the text) · truncated: cut every "
        "--num-steps · random: randomized truncation, unbiased."))] = None,
    num_steps: Annotated[Optional[int], typer.Option("--num-steps", "-t", help="tau: window / mean segment length.")] = None,
    schedule: Annotated[Optional[Schedule], typer.Option(help="Cut schedule of the random strategy.")] = None,
    model: Annotated[Optional[Cell], typer.Option(help="Recurrent cell.")] = None,
    hidden: Annotated[Optional[int], typer.Option(help="Hidden units per layer.")] = None,
    layers: Annotated[Optional[int], typer.Option(help="Recurrent layers.")] = None,
    dropout: Annotated[Optional[float], typer.Option(help="Dropout on each layer's output.")] = None,
    embedding: Annotated[Optional[int], typer.Option(help="Learned embedding size; 0 = one-hot input.")] = None,
    optimizer: Annotated[Optional[OptimizerName], typer.Option(help="sgd or adam (AdamW).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate.")] = None,
    clip: Annotated[Optional[float], typer.Option(help="Clip the global gradient L2 norm to this; 0 disables.")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="Weight decay.")] = None,
    lr_schedule: Annotated[Optional[LrSchedule], typer.Option(help="constant, or cosine over the epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Parallel streams B.")] = None,
    partition: Annotated[Optional[Partition], typer.Option(help="sequential (state carried) or random windows.")] = None,
    data: DataOpt = None,
    preprocess: Annotated[Optional[Preprocess], typer.Option(help="letters (the book's) or raw.")] = None,
    val_fraction: Annotated[Optional[float], typer.Option(help="Last fraction of the text held out.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Passes over the training text.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many updates (0: no limit).")] = None,
    max_time: Annotated[Optional[float], typer.Option(help="Stop after this many seconds (0: no limit).")] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="Validate and checkpoint every N updates (0: at the end).")] = None,
    log_every: Annotated[Optional[int], typer.Option(help="Write a metrics line every N updates.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed: same seed, same numbers.")] = None,
    device: Annotated[Optional[Device], typer.Option(help="auto picks cuda, then mps, then cpu.")] = None,
    recompute: Annotated[Optional[bool], typer.Option("--recompute/--no-recompute", help="Segment checkpointing: O(sqrt L) memory.")] = None,
    run_dir: Annotated[Optional[Path], typer.Option(help="Run directory [default: runs/<time>-<strategy>].")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this directory from its last.pt.")] = None,
    set_: SetOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live view (for scripts).")] = False,
) -> None:
    """Train a character-level RNN with full, truncated or randomized-truncation BPTT.

    Example: [bold]bptt train --strategy random --schedule polytail --model gru --hidden 256 --epochs 5[/]
    """
    from .train import resume as resume_run
    from .train import train as train_run

    flags = {
        "strategy.name": strategy, "strategy.num_steps": num_steps, "strategy.schedule": schedule,
        "model.cell": model, "model.hidden": hidden, "model.layers": layers, "model.dropout": dropout,
        "model.embedding": embedding, "optim.optimizer": optimizer, "optim.lr": lr, "optim.clip": clip,
        "optim.weight_decay": weight_decay, "optim.schedule": lr_schedule, "data.batch_size": batch_size,
        "data.partition": partition, "data.path": str(data) if data else None, "data.preprocess": preprocess,
        "data.val_fraction": val_fraction, "train.epochs": epochs, "train.max_steps": max_steps,
        "train.max_time": max_time, "train.eval_every": eval_every, "train.log_every": log_every,
        "train.seed": seed, "train.device": device, "train.recompute": recompute,
    }
    if resume is not None:
        summary = resume_run(resume, flags, set_ or [], quiet=quiet)
    else:
        summary = train_run(load_config(config, flags, set_ or []), run_dir, quiet=quiet)
    if not quiet:
        stdout.print(
            f"done: {summary['step']} updates, {summary['tokens']:,} tokens in {summary['elapsed']:.0f}s · "
            f"train ppl {summary['train_ppl']:.2f} · val ppl {summary['final_val_ppl']:.2f} "
            f"(best {summary['best_val_ppl']:.2f})"
        )


def main() -> None:
    app()
