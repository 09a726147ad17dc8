"""Train/validation split and the two ways of cutting the character stream into batches.

Batches are time-major: ``x[t, b]`` is step t of stream b, shape ``[L, B]``, and the
targets ``y`` are the same windows shifted by one character.

Sequential partitioning (the book's sequential iterator; the hidden state carries over)::

    tokens   . . o| a0 a1 a2 a3 a4 a5 | b0 b1 b2 b3 b4 b5 | c0 c1 ...   (o = random offset per epoch)
                      stream 0            stream 1
    x  step t:   0  1  2 | 3  4  5
    stream 0:   a0 a1 a2 | a3 a4 a5      window k+1 of a stream continues window k,
    stream 1:   b0 b1 b2 | b3 b4 b5      so the final state of one window is the
    stream 2:   c0 c1 c2 | c3 c4 c5      initial state of the next.
               window 0   window 1       (windows may have any length on request)

Random partitioning (the book's random iterator): each window is B independent slices
at random positions, and every window starts from a fresh state.

The token ids may be any 1-D integer tensor, typically a memory-mapped uint8 array from the
token cache (tokencache.py): the layouts above are views, and only the window asked for is read
and converted to int64, so memory does not grow with the corpus.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import DataError
from .vocab import Vocab


@dataclass
class Dataset:
    vocab: Vocab
    train: torch.Tensor  # 1-D token ids (any integer dtype; memory-mapped when prepared from a file)
    val: torch.Tensor  # 1-D token ids, the last `val_fraction` of the stream


def ids(window: torch.Tensor) -> torch.Tensor:
    """A window of token ids as the model takes them: int64, contiguous (a copy unless it already is)."""
    return window.to(torch.long, memory_format=torch.contiguous_format)


def head(tokens: torch.Tensor, chars: int) -> torch.Tensor:
    """The start of `tokens` that predicts `chars` characters (chars + 1 ids); all of it when chars is 0."""
    return tokens[: chars + 1] if chars else tokens


def min_corpus_length(batch_size: int, window: int, val_fraction: float) -> int:
    """Fewest characters that give one training batch of one window (and a validation window)."""
    lo = hi = batch_size * window + 1
    while not _split_fits(hi, batch_size, window, val_fraction):
        lo, hi = hi + 1, 2 * hi
    while lo < hi:  # _split_fits is monotone in n: binary search for the first n that fits
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _split_fits(mid, batch_size, window, val_fraction) else (mid + 1, hi)
    return lo


def _split_fits(n: int, batch_size: int, window: int, val_fraction: float) -> bool:
    n_val = int(n * val_fraction)
    return n - n_val >= batch_size * window + 1 and (val_fraction == 0 or n_val >= 2)


def split_point(length: int, val_fraction: float) -> int:
    """Where validation starts in a stream of `length` ids: the last `val_fraction` of it is validation."""
    return length - int(length * val_fraction)


def split_dataset(vocab: Vocab, tokens: torch.Tensor, batch_size: int, window: int, val_fraction: float) -> Dataset:
    """Split off the last `val_fraction` of `tokens` as validation (contiguous, no overlap; views, no copy)."""
    if not _split_fits(len(tokens), batch_size, window, val_fraction):
        need = min_corpus_length(batch_size, window, val_fraction)
        raise DataError(
            f"corpus has {len(tokens)} characters after preprocessing but batch size {batch_size}, "
            f"window {window} and validation fraction {val_fraction:g} need at least {need}; "
            f"use a longer text or lower --batch-size/--num-steps"
        )
    start = split_point(len(tokens), val_fraction)
    return Dataset(vocab, tokens[:start], tokens[start:])


def build_dataset(
    text: str, batch_size: int, window: int, val_fraction: float, vocab: Vocab | None = None
) -> Dataset:
    """A dataset from text in memory (a file goes through the token cache instead: builders.load_dataset)."""
    vocab = vocab or Vocab.build(text)
    return split_dataset(vocab, vocab.encode(text), batch_size, window, val_fraction)


class SequentialStreams:
    """B parallel contiguous streams; windows follow each other, so the state carries over."""

    carries_state = True

    def __init__(self, tokens: torch.Tensor, batch_size: int, tau: int, generator: torch.Generator):
        """Each epoch starts at a random offset in [0, tau), as the book's sequential iterator does."""
        self.tokens, self.batch_size, self.generator = tokens, batch_size, generator
        slack = len(tokens) - 1 - batch_size * tau
        self.max_offset = min(tau - 1, slack)
        self.offset, self.cursor = 0, 0
        self._layout()

    def start_epoch(self) -> None:
        self.offset = int(torch.randint(0, self.max_offset + 1, (), generator=self.generator))
        self.cursor = 0
        self._layout()

    def _layout(self) -> None:
        """The epoch's [steps, B] inputs and targets as views of the tokens: nothing is read or copied here."""
        steps = (len(self.tokens) - 1 - self.offset) // self.batch_size
        span = self.batch_size * steps
        self._inputs = self.tokens[self.offset : self.offset + span].view(self.batch_size, steps).t()
        self._targets = self.tokens[self.offset + 1 : self.offset + 1 + span].view(self.batch_size, steps).t()

    @property
    def x(self) -> torch.Tensor:
        """The whole epoch's inputs [steps, B] as int64 (a copy of the epoch: to inspect, not to train from)."""
        return ids(self._inputs)

    @property
    def y(self) -> torch.Tensor:
        return ids(self._targets)

    @property
    def steps_per_epoch(self) -> int:
        return self._inputs.shape[0]

    @property
    def remaining(self) -> int:
        return self.steps_per_epoch - self.cursor

    def next(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next `length` steps of every stream, `[length, B]` each."""
        start, self.cursor = self.cursor, min(self.cursor + length, self.steps_per_epoch)
        return ids(self._inputs[start : self.cursor]), ids(self._targets[start : self.cursor])

    def state_dict(self) -> dict:
        return {"offset": self.offset, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.offset, self.cursor = state["offset"], state["cursor"]
        self._layout()


class RandomWindows:
    """Windows of B independent slices at uniformly random positions; each starts a fresh state."""

    carries_state = False

    def __init__(self, tokens: torch.Tensor, batch_size: int, generator: torch.Generator):
        self.tokens, self.batch_size, self.generator = tokens, batch_size, generator
        self.steps_per_epoch = (len(tokens) - 1) // batch_size
        self.cursor = 0

    def start_epoch(self) -> None:
        self.cursor = 0

    @property
    def remaining(self) -> int:
        return self.steps_per_epoch - self.cursor

    def next(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        length = min(length, len(self.tokens) - 1)
        self.cursor = min(self.cursor + length, self.steps_per_epoch)
        starts = torch.randint(0, len(self.tokens) - length, (self.batch_size,), generator=self.generator)
        index = starts[None, :] + torch.arange(length)[:, None]
        return ids(self.tokens[index]), ids(self.tokens[index + 1])

    def state_dict(self) -> dict:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = state["cursor"]


def make_batcher(tokens, batch_size: int, tau: int, generator: torch.Generator, sequential: bool):
    """The batches of an epoch: sequential streams that carry the state, or independent random windows."""
    if sequential:
        return SequentialStreams(tokens, batch_size, tau, generator)
    return RandomWindows(tokens, batch_size, generator)


def eval_windows(tokens: torch.Tensor, batch_size: int, window: int):
    """Sequential windows over `tokens` for evaluation: every target predicted exactly once.

    The (len(tokens) - 1) % streams targets left over after the streams continue the last
    stream, in windows one stream wide (the caller keeps that stream's state).
    """
    streams = max(1, min(batch_size, (len(tokens) - 1) // window))
    steps = (len(tokens) - 1) // streams
    x = tokens[: streams * steps].view(streams, steps).t()
    y = tokens[1 : 1 + streams * steps].view(streams, steps).t()
    for start in range(0, steps, window):
        yield ids(x[start : start + window]), ids(y[start : start + window])
    for start in range(streams * steps, len(tokens) - 1, window):
        end = min(start + window, len(tokens) - 1)
        yield ids(tokens[start:end, None]), ids(tokens[start + 1 : end + 1, None])
