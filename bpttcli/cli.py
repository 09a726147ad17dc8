"""The `bptt` command: parse options, build a config, call the library.

Nothing here imports torch at module level: `bptt --help` starts in a fraction of a second and each
command imports the library it calls.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .choices import Cell, Schedule, StrategyName, Unknown, XAxis
from .cli_base import Command, OneLineUsageErrors, default, friendly, option_flags
from .cli_demo import demo_app
from .config import Device, LrSchedule, OptimizerName, Partition
from .corpus import Preprocess
from .errors import ConfigError, exit_code
from .signals import signal_number, unwind_on_signals
from .ui import console, stdout

app = typer.Typer(
    cls=OneLineUsageErrors,
    help="Train character-level RNNs with full, truncated and randomized backpropagation through time.",
    no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False, rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        stdout.print(f"bptt {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    """Backpropagation through time, first-class."""


@app.command(cls=Command)
@friendly
def download(
    url: Annotated[Optional[str], typer.Option(help="Where to fetch the corpus from.")] = None,
    sha1: Annotated[Optional[str], typer.Option(help="Expected SHA-1; empty string skips the check.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Cache directory \\[default: $BPTT_DATA_DIR or ./data].")] = None,
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
    "strategy": "strategy.name", "tau": "strategy.tau", "schedule": "strategy.schedule", "floor": "strategy.floor",
    "k2": "strategy.k2",
    "model": "model.cell", "hidden": "model.hidden", "layers": "model.layers", "dropout": "model.dropout",
    "embedding": "model.embedding", "weight_drop": "model.weight_drop", "locked_dropout": "model.locked_dropout",
    "embed_dropout": "model.embed_dropout", "average": "optim.average", "optimizer": "optim.optimizer", "lr": "optim.lr", "clip": "optim.clip",
    "weight_decay": "optim.weight_decay", "lr_schedule": "optim.schedule", "batch_size": "data.batch_size",
    "partition": "data.partition", "data": "data.path", "preprocess": "data.preprocess",
    "val_fraction": "data.val_fraction", "epochs": "train.epochs", "max_steps": "train.max_steps",
    "max_time": "train.max_time", "eval_every": "train.eval_every", "log_every": "train.log_every",
    "seed": "train.seed", "device": "train.device", "recompute": "train.recompute",
    "tensorboard": "train.tensorboard",
}
ANALYZE_KEYS = {"model": "model.cell", "hidden": "model.hidden", "layers": "model.layers"}  # with --init


ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config, e.g. configs/default.yaml.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help=(
    "Override any config key, e.g. --set optim.lr=0.5 (repeatable)."))]
DataOpt = Annotated[Optional[Path], typer.Option("--data", help="Train on this UTF-8 text file instead of the book.")]
DATA, MODEL, STRATEGY, OPTIMISER, RUN = "Data", "Model", "Strategy", "Optimiser", "Run"


@app.command(cls=Command)
@friendly
def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this directory from its last.pt.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live view and no progress lines (for scripts).")] = False,
    data: Annotated[Optional[Path], typer.Option(
        help="A UTF-8 text file to train on \\[default: the book].", rich_help_panel=DATA)] = None,
    preprocess: Annotated[Optional[Preprocess], typer.Option(
        help="letters (the book's) or raw." + default("data.preprocess"), rich_help_panel=DATA)] = None,
    val_fraction: Annotated[Optional[float], typer.Option(
        help="Last fraction of the text held out." + default("data.val_fraction"), rich_help_panel=DATA)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help=(
        "Parallel streams B." + default("data.batch_size")), rich_help_panel=DATA)] = None,
    partition: Annotated[Optional[Partition], typer.Option(help=(
        "sequential (state carried) or random windows." + default("data.partition")), rich_help_panel=DATA)] = None,
    model: Annotated[Optional[Cell], typer.Option(
        help="Recurrent cell." + default("model.cell"), rich_help_panel=MODEL)] = None,
    hidden: Annotated[Optional[int], typer.Option(
        help="Hidden units per layer." + default("model.hidden"), rich_help_panel=MODEL)] = None,
    layers: Annotated[Optional[int], typer.Option(
        help="Recurrent layers." + default("model.layers"), rich_help_panel=MODEL)] = None,
    dropout: Annotated[Optional[float], typer.Option(
        help="Dropout on each layer's output." + default("model.dropout"), rich_help_panel=MODEL)] = None,
    embedding: Annotated[Optional[int], typer.Option(help=(
        "Learned embedding size; 0: one-hot input." + default("model.embedding")), rich_help_panel=MODEL)] = None,
    weight_drop: Annotated[Optional[float], typer.Option(help=(
        "DropConnect on W_hh, one mask per segment." + default("model.weight_drop")), rich_help_panel=MODEL)] = None,
    locked_dropout: Annotated[Optional[float], typer.Option(help=(
        "Variational dropout: one mask per stream and segment on each layer's output." + default("model.locked_dropout")),
        rich_help_panel=MODEL)] = None,
    embed_dropout: Annotated[Optional[float], typer.Option(help=(
        "Drop whole characters' embeddings (needs --embedding)." + default("model.embed_dropout")),
        rich_help_panel=MODEL)] = None,
    strategy: Annotated[Optional[StrategyName], typer.Option(metavar="<name>", help=(
        "full: exact gradient (with sequential partitioning one segment per epoch, the chapter's "
        "'computationally infeasible' case: memory grows with the text) · truncated: a cut every "
        "--num-steps · random: randomized truncation, unbiased · tbptt: TBPTT(k1 = tau, k2)."
        + default("strategy.name")),
        rich_help_panel=STRATEGY)] = None,
    tau: Annotated[Optional[int], typer.Option("--num-steps", "-t", help=(
        "tau: segment length (truncated's period, random's mean) and loss normaliser." + default("strategy.tau")),
        rich_help_panel=STRATEGY)] = None,
    schedule: Annotated[Optional[Schedule], typer.Option(help=(
        "Cut schedule of the random strategy." + default("strategy.schedule")), rich_help_panel=STRATEGY)] = None,
    floor: Annotated[Optional[int], typer.Option(help=(
        "random: no cut in a segment's first N steps (0 <= N < tau)." + default("strategy.floor")),
        rich_help_panel=STRATEGY)] = None,
    k2: Annotated[Optional[int], typer.Option(help=(
        "tbptt: every tau steps, their losses backpropagate through k2 >= tau steps; 0: 2 tau." + default("strategy.k2")),
        rich_help_panel=STRATEGY)] = None,
    recompute: Annotated[Optional[bool], typer.Option("--recompute", help=(
        "Segment checkpointing: O(sqrt L) memory for long segments."), rich_help_panel=STRATEGY)] = None,
    optimizer: Annotated[Optional[OptimizerName], typer.Option(
        help="sgd, or adam (AdamW)." + default("optim.optimizer"), rich_help_panel=OPTIMISER)] = None,
    lr: Annotated[Optional[float], typer.Option(
        help="Learning rate." + default("optim.lr"), rich_help_panel=OPTIMISER)] = None,
    lr_schedule: Annotated[Optional[LrSchedule], typer.Option(help=(
        "constant, or cosine over the epochs (or train.max_tokens)." + default("optim.schedule")),
        rich_help_panel=OPTIMISER)] = None,
    clip: Annotated[Optional[float], typer.Option(help=(
        "Clip the global gradient L2 norm to this; 0 disables." + default("optim.clip")), rich_help_panel=OPTIMISER)] = None,
    weight_decay: Annotated[Optional[float], typer.Option(
        help="Weight decay." + default("optim.weight_decay"), rich_help_panel=OPTIMISER)] = None,
    average: Annotated[Optional[float], typer.Option(help=(
        "Decay of the weights' moving average used to validate, save best.pt and sample; 0: off."
        + default("optim.average")), rich_help_panel=OPTIMISER)] = None,
    epochs: Annotated[Optional[int], typer.Option(
        help="Passes over the training text." + default("train.epochs"), rich_help_panel=RUN)] = None,
    max_steps: Annotated[Optional[int], typer.Option(help=(
        "Stop after this many updates; 0: no limit." + default("train.max_steps")), rich_help_panel=RUN)] = None,
    max_time: Annotated[Optional[float], typer.Option(help=(
        "Stop after this many seconds (of this invocation, on --resume); 0: no limit." + default("train.max_time")),
        rich_help_panel=RUN)] = None,
    eval_every: Annotated[Optional[int], typer.Option(help=(
        "Validate and checkpoint every N updates; 0: at the end." + default("train.eval_every")),
        rich_help_panel=RUN)] = None,
    log_every: Annotated[Optional[int], typer.Option(help=(
        "Write a metrics line every N updates." + default("train.log_every")), rich_help_panel=RUN)] = None,
    seed: Annotated[Optional[int], typer.Option(
        help="Random seed: same seed, same numbers." + default("train.seed"), rich_help_panel=RUN)] = None,
    device: Annotated[Optional[Device], typer.Option(help=(
        "auto picks cuda, then mps, then cpu." + default("train.device")), rich_help_panel=RUN)] = None,
    run_dir: Annotated[Optional[Path], typer.Option(help=(
        "Run directory \\[default: runs/<time>-<strategy>]."), rich_help_panel=RUN)] = None,
    tensorboard: Annotated[Optional[bool], typer.Option("--tensorboard", help=(
        "Also log the metrics for TensorBoard, in RUN_DIR/tensorboard (pip install 'bptt\\[tensorboard]')."),
        rich_help_panel=RUN)] = None,
) -> None:
    """Train a character-level RNN with full, truncated or randomized-truncation BPTT.

    Defaults are the main job's (configs/default.yaml writes them down); a --config file, then the options, then --set replace them. On a terminal a live view shows progress; in a log, a plain progress line every few seconds (--set train.progress_every=S).

    Example: [bold]bptt train --strategy random --schedule polytail --model gru --hidden 256 --epochs 5[/]
    """
    from .config import load_config
    from .launch import launched_rank
    from .train import resume as resume_run
    from .train import train as train_run

    flags = option_flags(TRAIN_KEYS, locals())
    quiet = quiet or launched_rank() > 0  # torchrun's other processes print nothing but errors
    if resume is not None and (config or run_dir):
        raise ConfigError("--resume continues a run in its own directory with its saved config; drop --config/--run-dir")
    if resume is not None:
        summary = resume_run(resume, flags, set_ or [], quiet=quiet)
    else:
        summary = train_run(load_config(config, flags, set_ or []), run_dir, quiet=quiet)
    if not quiet:
        from .ui import done_line

        stdout.print(done_line(summary))


@app.command(cls=Command)
@friendly
def sample(
    target: Annotated[Path, typer.Argument(metavar="RUN_DIR|CHECKPOINT", help="A run directory (its best.pt) or a .pt file.")],
    prefix: Annotated[str, typer.Option(help="Warm-up text, preprocessed like the run's corpus (empty: start as after a space).")] = "",
    prefix_file: Annotated[Optional[Path], typer.Option(help="Warm up on this UTF-8 file's text instead of --prefix.")] = None,
    length: Annotated[int, typer.Option(help="Characters to generate per sample.")] = 200,
    temperature: Annotated[float, typer.Option(help="Softmax temperature, > 0: lower is safer, higher is wilder.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely characters; 0: all of them.")] = 0,
    top_p: Annotated[float, typer.Option(help=(
        "Nucleus sampling: among the fewest likeliest characters whose probabilities sum to p; 1: all of them."))] = 1.0,
    greedy: Annotated[bool, typer.Option("--greedy", help="Always take the most likely character.")] = False,
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", help="Independent samples from the same prefix.")] = 1,
    seed: Annotated[Optional[int], typer.Option(help="Random seed: same seed, same samples \\[default: fresh each time].")] = None,
    device: Annotated[Device, typer.Option(help="auto picks cuda, then mps, then cpu.")] = Device.auto,
    last: Annotated[bool, typer.Option("--last", help="Use the run's last.pt instead of its best.pt.")] = False,
    unknown: Annotated[Unknown, typer.Option(help="Prefix characters outside the vocabulary: error, skip (drop them) or unk.")] = Unknown.error,
) -> None:
    """Generate text from a trained model, streaming it as it is sampled.

    Example: [bold]bptt sample runs/my-run --prefix "the time traveller" --length 300 --top-p 0.9 --seed 1[/]
    """
    from .sample import sample as generate

    generate(target, prefix, length, temperature, top_k, greedy, num_samples, seed, device, last, unknown, sys.stdout,
             top_p=top_p, prefix_file=prefix_file)


@app.command(cls=Command)
@friendly
def compare(
    strategies: Annotated[str, typer.Option(help=(
        "Comma-separated: full, full-window, truncated, random (both schedules), random-geometric, random-polytail, "
        "random-floor, tbptt."))]
    = "full,truncated,random",
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config \\[default: configs/compare.yaml].")] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds: each strategy trains once per seed.")] = "0,1,2",
    budget_tokens: Annotated[Optional[int], typer.Option(help="Training characters per run, instead of the config's epochs.")] = None,
    max_time: Annotated[Optional[float], typer.Option(help="Seconds per run, instead of the config's epochs.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output directory; rerun with the same one to skip finished runs \\[default: compare/<time>].")] = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    no_gradient_quality: Annotated[bool, typer.Option("--no-gradient-quality", help=(
        "Skip measuring each strategy's gradient against exact BPTT at the initial and trained weights."))] = False,
) -> None:
    """Train every strategy on the same data, model, initial weights and budget; tabulate and plot the results.

    Example: [bold]bptt compare --strategies truncated,random --seeds 0,1 --budget-tokens 300000 --out compare/demo[/]
    """
    from . import compare as lib
    from .compare_report import rich_table, tables

    variants, seed_list = lib.parse_strategies(strategies), lib.parse_seeds(seeds)
    cfg = lib.compare_config(config, data, budget_tokens, max_time, set_ or [])
    results = lib.compare(cfg, variants, seed_list, out, not no_gradient_quality)
    for table in tables(results):
        stdout.print(rich_table(*table))
    stdout.print(f"{results['out']}: results.json, results.csv, results.md, curves.png ({results['elapsed']:.0f}s)")


@app.command(cls=Command)
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


@app.command(cls=Command)
@friendly
def runs(
    root: Annotated[Path, typer.Argument(metavar="[DIR]", help="Where to look, subdirectories included.")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="One JSON list of the rows, for scripts.")] = False,
) -> None:
    """One table of the runs under a directory: model, strategy, progress, best validation perplexity, status.

    Status: finished, interrupted (resume it), diverged, running, killed (no end recorded and no process holds it).

    Example: [bold]bptt runs[/] · [bold]bptt runs compare/demo/runs --json[/]
    """
    from . import runs as lib

    rows = lib.collect(root)
    if as_json:
        stdout.print_json(data=rows)
    elif rows:
        stdout.print(lib.table(rows, root))
    else:
        stdout.print(f"no runs under {root}; start one with bptt train")


@app.command(cls=Command)
@friendly
def plot(
    targets: Annotated[list[Path], typer.Argument(metavar="RUN_DIR", help="Runs to overlay, one line each.")],
    metric: Annotated[str, typer.Option(help=(
        "Any number metrics.jsonl holds: val_ppl, ppl, loss, grad_norm_mean, grad_norm_max, clip_rate, lr, "
        "tokens_per_s, segment_mean, max_weight, ..."))] = "val_ppl",
    x: Annotated[XAxis, typer.Option("--x", help="The horizontal axis: characters, seconds or updates.")] = XAxis.chars,
    out: Annotated[Optional[Path], typer.Option(help="The PNG to write \\[default: METRIC-vs-X.png].")] = None,
) -> None:
    """Overlay a metric of several runs against characters, time or updates, from their metrics.jsonl.

    Example: [bold]bptt plot runs/a runs/b --metric grad_norm_mean --x time --out norms.png[/]
    """
    from .plots import plot_runs

    labels = [str(t) for t in targets] if len({t.name for t in targets}) < len(targets) else [t.name for t in targets]
    png = plot_runs(out or Path(f"{metric}-vs-{x.value}.png"), dict(zip(labels, targets)), metric, x.value)
    stdout.print(f"wrote {png}")


PREPARE_KEYS = {"file": "data.path", "preprocess": "data.preprocess", "data_dir": "data.data_dir"}


@app.command(cls=Command)
@friendly
def prepare(
    file: Annotated[Optional[Path], typer.Argument(metavar="FILE", help="A UTF-8 text file \\[default: the book, downloaded if needed].")] = None,
    preprocess: Annotated[Optional[Preprocess], typer.Option(help="letters (the book's) or raw.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Cache directory \\[default: $BPTT_DATA_DIR or ./data].")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Preprocess a corpus once into the token cache that train, compare, analyze and eval memory-map.

    Those commands prepare a corpus on first use anyway; this does it ahead of time. The cache lives in DATA_DIR/prepared, keyed by the file's SHA-1 and the preprocessing; delete that folder to clear it.

    Example: [bold]bptt prepare enwik8 --preprocess raw[/]
    """
    from .builders import load_prepared
    from .config import load_config
    from .tokencache import describe

    source, prepared = load_prepared(load_config(None, option_flags(PREPARE_KEYS, locals())), quiet=quiet)
    stdout.print(describe(source, prepared), highlight=False)


@app.command("eval", cls=Command)
@friendly
def evaluate(
    target: Annotated[Path, typer.Argument(metavar="RUN_DIR|CHECKPOINT", help="A run directory (its best.pt) or a .pt file.")],
    data: Annotated[Optional[Path], typer.Option("--data", help="Evaluate on this UTF-8 text file instead of the run's corpus.")] = None,
    split: Annotated[Optional[str], typer.Option(metavar="[val|train|all]", help="Part of the text \\[default: val of the run's corpus, all of --data].")] = None,
    max_chars: Annotated[int, typer.Option(help="Predict only the first N characters of the split (0: all of it).")] = 0,
    last: Annotated[bool, typer.Option("--last", help="Use the run's last.pt instead of its best.pt.")] = False,
    device: Annotated[Device, typer.Option(help="auto picks cuda, then mps, then cpu.")] = Device.auto,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Loss, bits per character and perplexity of a trained model on its validation split or any text file.

    The text gets the run's preprocessing and vocabulary; characters outside the vocabulary are scored as <unk> and counted. Training validates on the first train.eval_tokens characters; this covers the whole split.

    Example: [bold]bptt eval runs/my-run[/] · [bold]bptt eval runs/my-run --data notes.txt --json[/]
    """
    import json

    from . import evaluation as lib

    result = lib.evaluate_run(target, data, lib.parse_split(split), last, max_chars, device, quiet)
    stdout.print(json.dumps(result, allow_nan=False) if as_json else lib.summary(result), highlight=False)


app.add_typer(demo_app, name="demo")


def main() -> None:
    """The `bptt` command: SIGTERM and SIGHUP stop it as Ctrl-C does (exit 128 + the signal), never with a traceback."""
    try:
        with unwind_on_signals():
            app(prog_name="bptt")
    except KeyboardInterrupt as exc:  # between commands' own handling, e.g. while a command imports its modules
        sys.exit(exit_code(signal_number(exc)))
