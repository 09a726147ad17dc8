"""The `bptt` command: parse options, build a config, call the library."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from . import __version__
from .config import Device, LrSchedule, OptimizerName, Partition, load_config
from .corpus import Preprocess
from .errors import BpttError, exit_code
from .recurrence import Cell
from .sample import Unknown
from .signals import signal_number, unwind_on_signals
from .strategies import Schedule, StrategyName
from .ui import console, stdout

class OneLineUsageErrors(TyperGroup):
    """Report usage errors (an unknown option, a bad choice) on one line, like every other error."""

    def main(self, *args, **kwargs):
        if not kwargs.get("standalone_mode", True):
            return super().main(*args, **kwargs)
        try:
            result = super().main(*args, **{**kwargs, "standalone_mode": False})
        except typer.Abort:
            console.print("aborted")
            sys.exit(1)
        except Exception as exc:
            if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
                raise  # not a usage error: a bug, show the traceback
            if type(exc).__name__ == "NoArgsIsHelpError":
                stdout.print(exc.format_message(), highlight=False)
            else:
                ctx = getattr(exc, "ctx", None)
                hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
                console.print(f"[red]error:[/] {exc.format_message()}{hint}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    cls=OneLineUsageErrors,
    help="Train character-level RNNs with full, truncated and randomized backpropagation through time.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="rich",
)


def friendly(command):
    """Print expected errors as one line and exit with their code; a stop signal exits silently with
    128 + its number; let anything else raise."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except BpttError as exc:
            console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            raise typer.Exit(exit_code(signal_number(exc))) from None

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


TRAIN_KEYS = {  # train's option -> the config key it sets
    "strategy": "strategy.name", "tau": "strategy.tau", "schedule": "strategy.schedule",
    "model": "model.cell", "hidden": "model.hidden", "layers": "model.layers", "dropout": "model.dropout",
    "embedding": "model.embedding", "optimizer": "optim.optimizer", "lr": "optim.lr", "clip": "optim.clip",
    "weight_decay": "optim.weight_decay", "lr_schedule": "optim.schedule", "batch_size": "data.batch_size",
    "partition": "data.partition", "data": "data.path", "preprocess": "data.preprocess",
    "val_fraction": "data.val_fraction", "epochs": "train.epochs", "max_steps": "train.max_steps",
    "max_time": "train.max_time", "eval_every": "train.eval_every", "log_every": "train.log_every",
    "seed": "train.seed", "device": "train.device", "recompute": "train.recompute",
}
ANALYZE_KEYS = {"model": "model.cell", "hidden": "model.hidden", "layers": "model.layers"}  # with --init


def option_flags(keys: dict[str, str], options: dict) -> dict:
    """{config key: value} for the options given (None: not given), paths as strings."""
    return {key: str(v) if isinstance(v, Path) else v for name, key in keys.items() if (v := options[name]) is not None}


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
    tau: Annotated[Optional[int], typer.Option("--num-steps", "-t", help="tau: nominal segment length (truncated's period, random's mean) and loss normaliser.")] = None,
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
    lr_schedule: Annotated[Optional[LrSchedule], typer.Option(help="constant, or cosine over the epochs (or train.max_tokens).")] = None,
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
    run_dir: Annotated[Optional[Path], typer.Option(help="Run directory \\[default: runs/<time>-<strategy>].")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this directory from its last.pt.")] = None,
    set_: SetOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live view (for scripts).")] = False,
) -> None:
    """Train a character-level RNN with full, truncated or randomized-truncation BPTT.

    Example: [bold]bptt train --strategy random --schedule polytail --model gru --hidden 256 --epochs 5[/]
    """
    from .train import resume as resume_run
    from .train import train as train_run

    flags = option_flags(TRAIN_KEYS, locals())
    if resume is not None and (config or run_dir):
        from .errors import ConfigError

        raise ConfigError("--resume continues a run in its own directory with its saved config; drop --config/--run-dir")
    if resume is not None:
        summary = resume_run(resume, flags, set_ or [], quiet=quiet)
    else:
        summary = train_run(load_config(config, flags, set_ or []), run_dir, quiet=quiet)
    if not quiet:
        from .ui import compact

        stdout.print(
            f"done · {summary['step']} steps · {compact(summary['tokens'])} chars · {summary['elapsed']:.0f}s · "
            f"ppl {summary['train_ppl']:.2f} train / {summary['final_val_ppl']:.2f} val "
            f"(best {summary['best_val_ppl']:.2f})"
        )


@app.command()
@friendly
def sample(
    target: Annotated[Path, typer.Argument(metavar="RUN_DIR|CHECKPOINT", help="A run directory (its best.pt) or a .pt file.")],
    prefix: Annotated[str, typer.Option(help="Warm-up text, preprocessed like the run's corpus (empty: start as after a space).")] = "",
    length: Annotated[int, typer.Option(help="Characters to generate per sample.")] = 200,
    temperature: Annotated[float, typer.Option(help="Softmax temperature, > 0: lower is safer, higher is wilder.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely characters (0: all of them).")] = 0,
    greedy: Annotated[bool, typer.Option("--greedy", help="Always take the most likely character.")] = False,
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", help="Independent samples from the same prefix.")] = 1,
    seed: Annotated[Optional[int], typer.Option(help="Random seed: same seed, same samples \\[default: fresh each time].")] = None,
    device: Annotated[Device, typer.Option(help="auto picks cuda, then mps, then cpu.")] = Device.auto,
    last: Annotated[bool, typer.Option("--last", help="Use the run's last.pt instead of its best.pt.")] = False,
    unknown: Annotated[Unknown, typer.Option(help="Prefix characters outside the vocabulary: error, skip (drop them) or unk.")] = Unknown.error,
) -> None:
    """Generate text from a trained model, streaming it as it is sampled.

    Example: [bold]bptt sample runs/my-run --prefix "the time traveller" --length 300 --temperature 0.8 --seed 1[/]
    """
    import sys

    from .sample import sample as generate

    generate(target, prefix, length, temperature, top_k, greedy, num_samples, seed, device, last, unknown, sys.stdout)


@app.command()
@friendly
def compare(
    strategies: Annotated[str, typer.Option(help=(
        "Comma-separated: full, truncated, random (both schedules), random-geometric, random-polytail."))]
    = "full,truncated,random",
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config \\[default: configs/compare.yaml].")] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds: each strategy trains once per seed.")] = "0,1,2",
    budget_tokens: Annotated[Optional[int], typer.Option(help="Training characters per run, instead of the config's epochs.")] = None,
    max_time: Annotated[Optional[float], typer.Option(help="Seconds per run, instead of the config's epochs.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output directory; rerun with the same one to skip finished runs \\[default: compare/<time>].")] = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    gradient_quality: Annotated[bool, typer.Option("--gradient-quality/--no-gradient-quality", help=(
        "Measure each strategy's gradient against exact BPTT at the initial and trained weights."))] = True,
) -> None:
    """Train every strategy on the same data, model, initial weights and budget; tabulate and plot the results.

    Example: [bold]bptt compare --strategies truncated,random --seeds 0,1 --budget-tokens 300000 --out compare/demo[/]
    """
    from . import compare as lib

    variants, seed_list = lib.parse_strategies(strategies), lib.parse_seeds(seeds)
    cfg = lib.compare_config(config, data, budget_tokens, max_time, set_ or [])
    results = lib.compare(cfg, variants, seed_list, out, gradient_quality)
    for table in lib.tables(results):
        stdout.print(lib.rich_table(*table))
    stdout.print(f"{results['out']}: results.json, results.csv, results.md, curves.png ({results['elapsed']:.0f}s)")


@app.command()
@friendly
def analyze(
    target: Annotated[Optional[Path], typer.Argument(metavar="[RUN_DIR|CHECKPOINT]", help="A run directory (its best.pt) or a .pt file.")] = None,
    init: Annotated[bool, typer.Option("--init", help="Analyse fresh, untrained weights of --model/--hidden/--layers instead.")] = False,
    theory: Annotated[bool, typer.Option("--theory", help="The chapter's theory instead: hand-written BPTT against autograd, exercises 1-2.")] = False,
    model: Annotated[Optional[Cell], typer.Option(help="With --init: recurrent cell.")] = None,
    hidden: Annotated[Optional[int], typer.Option(help="With --init: hidden units per layer.")] = None,
    layers: Annotated[Optional[int], typer.Option(help="With --init: recurrent layers.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Corpus whose validation text is analysed \\[default: the run\'s, or the book].")] = None,
    horizon: Annotated[int, typer.Option("--horizon", "-K", help="K: steps back from the last loss (with --theory: powers of M).")] = 100,
    windows: Annotated[int, typer.Option(help="Validation windows of K+1 steps to average over.")] = 4,
    streams: Annotated[int, typer.Option(help="Parallel validation streams per window.")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of the fresh weights (--init) or of the random matrix (--theory).")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Output directory \\[default: the run directory; analysis/<time> otherwise].")] = None,
) -> None:
    """Measure how the gradient vanishes or explodes through time, and suggest a truncation length tau.

    The norm of dl_T/dh_(T-k) for k = 0..K on validation text, its decay per step and the horizon where it drops below 1%; the spectrum of the first layer's W_hh (per gate block for GRU and LSTM); the step Jacobians' norms. Writes analysis.json and analysis.png (theory.png with --theory).

    Example: [bold]bptt analyze runs/my-run --horizon 100[/] · [bold]bptt analyze --init --model gru --hidden 256[/] · [bold]bptt analyze --theory[/]
    """
    from . import analyze as lib

    if lib.mode(target, init, theory) == "theory":
        table, png = lib.theory_report(horizon, seed, out)
        stdout.print(table)
        stdout.print(f"wrote {png}")
        return
    result, out_dir = lib.run(target, data, option_flags(ANALYZE_KEYS, locals()), seed, horizon, windows, streams, out)
    stdout.print(lib.table(result))
    stdout.print(f"effective horizon: {lib.horizon_text(result)}")
    stdout.print(f"wrote {out_dir / 'analysis.json'} and {out_dir / 'analysis.png'}")


demo_app = typer.Typer(
    help="Synthetic tasks that show what truncation does to the gradient.\n\n"
    "Example: [bold]bptt demo influence-balancing --steps 20000[/]",
    no_args_is_help=True,
)
app.add_typer(demo_app, name="demo")


@demo_app.command("influence-balancing")
@friendly
def influence_balancing(
    n: Annotated[int, typer.Option(help="State size.")] = 23,
    p: Annotated[int, typer.Option(help="Entries of u that are +1 (the rest are -1); p < n/2: long-run influence is negative.")] = 10,
    steps: Annotated[int, typer.Option(help="Time steps per strategy.")] = 20000,
    episode: Annotated[int, typer.Option(help="Steps per episode, each from s_0 = 1; full BPTT spans one.")] = 1000,
    lr: Annotated[float, typer.Option(help="SGD step size on theta.")] = 1e-3,
    tau: Annotated[int, typer.Option(help="Mean segment length of the random runs; every run's loss is divided by it.")] = 30,
    truncation: Annotated[Optional[list[int]], typer.Option(help="tau of a truncated run (repeatable) \\[default: 1, 10, 100].")] = None,
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


def main() -> None:
    """The `bptt` command: SIGTERM and SIGHUP stop it as Ctrl-C does (exit 128 + the signal), never with a traceback."""
    try:
        with unwind_on_signals():
            app()
    except KeyboardInterrupt as exc:  # between commands' own handling, e.g. while a command imports its modules
        sys.exit(exit_code(signal_number(exc)))
