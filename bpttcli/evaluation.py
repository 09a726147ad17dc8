"""`bptt eval`: a trained model's loss, bits per character and perplexity on its validation split or any text file.

The text goes through the run's own preprocessing and vocabulary, via the token cache, so a file
of any size is read from a memory map a window at a time. Characters outside the model's
vocabulary are scored as `<unk>` (which the model was never trained to predict, so they cost a
lot) and counted in the result. Windows, batch size and the carried state are those of the
validation during training: on the run's own validation split the loss equals what training
logs when `train.eval_tokens` covers the split.
"""

from __future__ import annotations

import enum
import math
from pathlib import Path

import torch

from .builders import load_prepared, load_trained
from .config import Device
from .data import head, split_point
from .engine import evaluate
from .errors import ConfigError, DataError
from .runtime import resolve_device
from .ui import LiveView, compact

BLOCK = 1 << 24  # ids counted at a time, so counting <unk> reads the memory map in bounded pieces


class Split(str, enum.Enum):
    val = "val"  # the last data.val_fraction of the text, as in training
    train = "train"  # the rest
    all = "all"  # the whole text


def parse_split(text: str | None) -> Split | None:
    """A --split value (None: not given), or a one-line ConfigError naming the choices."""
    if text is None:
        return None
    try:
        return Split(text)
    except ValueError:
        raise ConfigError(f"--split must be one of {', '.join(s.value for s in Split)} (got {text!r})") from None


def select(tokens: torch.Tensor, split: Split, val_fraction: float) -> torch.Tensor:
    start = split_point(len(tokens), val_fraction)
    return {Split.val: tokens[start:], Split.train: tokens[:start], Split.all: tokens}[Split(split)]


def count_unknown(tokens: torch.Tensor) -> int:
    """How many of the characters predicted (all but the first) are <unk>."""
    return sum(int((tokens[i : i + BLOCK] == 0).sum()) for i in range(1, len(tokens), BLOCK))


def evaluate_run(target: Path, data: Path | None = None, split: Split | None = None, last: bool = False,
                 max_chars: int = 0, device: Device | str = Device.auto, quiet: bool = False) -> dict:
    """Evaluate a run directory's best.pt (last.pt with `last`) or a checkpoint on `split` of its corpus or of `data`.

    `split` defaults to val for the run's corpus and to all of `data`; `max_chars` > 0 predicts only the
    first that many characters of the split.
    """
    if max_chars < 0:
        raise ConfigError(f"--max-chars must be >= 0, 0 meaning the whole split (got {max_chars})")
    config, model, vocab, checkpoint = load_trained(target, "last" if last else "best")
    if data is not None:
        config.data.path = str(data)
    split = Split(split or (Split.all if data is not None else Split.val))
    source, prepared = load_prepared(config, vocab, quiet)
    tokens = head(select(torch.from_numpy(prepared.tokens), split, config.data.val_fraction), max_chars)
    if len(tokens) < 2:
        fix = "the run has no validation split; pass --split train or all" if split is Split.val else "use a longer text"
        raise DataError(f"the {split.value} split of {source} has {len(tokens)} characters, too few to evaluate; {fix}")
    model.to(resolve_device(device))
    with LiveView("eval", len(tokens) - 1, quiet, unit="chars") as view:
        loss = evaluate(model, tokens, config.data.batch_size, config.strategy.tau, view.advance)
    return {
        "checkpoint": str(checkpoint), "corpus": str(source), "preprocess": config.data.preprocess.value,
        "split": split.value, "chars": len(tokens) - 1, "loss": loss, "bits_per_char": loss / math.log(2),
        "perplexity": math.exp(loss) if loss < 709 else None,
        "unknown_chars": count_unknown(tokens) if prepared.meta.get("unknown") else 0,
        "outside_vocabulary": prepared.meta.get("outside", []),
    }


def summary(result: dict) -> str:
    """The result on one line, e.g. for the terminal."""
    ppl = "inf" if result["perplexity"] is None else f"{result['perplexity']:.3f}"
    line = (f"{result['checkpoint']} on {result['corpus']} ({result['split']}, {result['chars']:,} chars): "
            f"{result['bits_per_char']:.4f} bits/char · perplexity {ppl} · loss {result['loss']:.4f} nats/char")
    if result["unknown_chars"]:
        shown = " ".join(map(repr, result["outside_vocabulary"][:10]))
        line += (f" · {compact(result['unknown_chars'])} chars outside the vocabulary scored as <unk> "
                 f"({shown}{' ...' if len(result['outside_vocabulary']) > 10 else ''})")
    return line
