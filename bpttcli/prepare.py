"""Streaming preparation: a corpus file -> its vocabulary -> token ids in a flat file, one chunk at a time.

Two passes over the file (`corpus.read_chunks`), each holding one chunk in memory:

1. count every character of the preprocessed text; the vocabulary is then ordered exactly as
   `Vocab.build` orders it (`<unk>` at 0, then by falling count, ties by character);
2. map every character to its id with a lookup table and append the ids to the output file,
   as uint8 when the vocabulary fits, else uint16 or uint32.

`letters` works on bytes: every byte outside A-Z and a-z (each byte of a multi-byte UTF-8
character included) is a non-letter, so a byte table (A-Z -> a-z, a-z kept, anything else ->
space), then dropping every space that follows a space (carried across chunks), gives exactly
`corpus.preprocess(text, letters)`. `raw` works on the decoded text's code points, with a table
over all of Unicode (1.1M entries). `lines` (d2l's tokenisation) works on the decoded text a line at
a time, the line still open at a chunk's end waiting for the next chunk.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from .corpus import CHUNK, Preprocess, preprocess, read_chunks

SPACE = ord(" ")
UNICODE = 0x110000  # code points
Advance = Callable[[int], None]


def _letters_table() -> np.ndarray:
    table = np.full(256, SPACE, np.uint8)
    lower = np.arange(ord("a"), ord("z") + 1, dtype=np.uint8)
    table[lower] = table[lower - 32] = lower
    return table


LETTERS = _letters_table().tobytes()  # for bytes.translate, ~3x faster than a numpy gather


class Letters:
    """`letters` over consecutive chunks of a file's bytes: the preprocessed characters' code points (uint8)."""

    size = 256

    def __init__(self):
        self.after_space = False  # whether the previous chunk's text ended in a space

    def __call__(self, data: bytes, text: str) -> np.ndarray:
        mapped = np.frombuffer(data.translate(LETTERS), np.uint8)
        space = mapped == SPACE
        keep = ~space
        keep[1:] |= ~space[:-1]  # a space survives unless a space comes right before it
        if len(data):
            keep[0] |= not self.after_space
            self.after_space = bool(space[-1])
        return mapped[keep]

    def finish(self) -> np.ndarray:
        return np.zeros(0, np.uint8)


class Lines:
    """`lines` over consecutive chunks of decoded text: each whole line preprocessed, then joined (uint8)."""

    size = 256

    def __init__(self):
        self.open_line = ""  # the text after the last newline so far

    def __call__(self, data: bytes, text: str) -> np.ndarray:
        *lines, self.open_line = (self.open_line + text).split("\n")
        return self._points("\n".join(lines))

    def finish(self) -> np.ndarray:
        """The last line (the file need not end in a newline)."""
        line, self.open_line = self.open_line, ""
        return self._points(line)

    @staticmethod
    def _points(text: str) -> np.ndarray:
        return np.frombuffer(preprocess(text, Preprocess.lines).encode("ascii"), np.uint8)


class Raw:
    """`raw` over consecutive chunks of decoded text: its code points."""

    size = UNICODE

    def __call__(self, data: bytes, text: str) -> np.ndarray:
        if text.isascii():  # the common case, 4x less memory than UTF-32
            return np.frombuffer(text.encode("ascii"), np.uint8)
        return np.frombuffer(text.encode("utf-32-le"), np.uint32)

    def finish(self) -> np.ndarray:
        return np.zeros(0, np.uint8)


Step = Letters | Lines | Raw  # one preprocessing mode over consecutive chunks


def code_points(path: Path, step: Step, advance: Advance, chunk: int = CHUNK, checked: bool = False):
    """The text of `path` preprocessed by `step`, as arrays of code points, a chunk at a time; `advance(bytes read)`
    after each. With `checked` (a second pass), `letters` does not decode the text again: it only needs the bytes."""
    for data, text in read_chunks(path, chunk, decode=not (checked and isinstance(step, Letters))):
        yield step(data, text)
        advance(len(data))
    yield step.finish()


def _step(mode: Preprocess) -> Step:
    return {Preprocess.letters: Letters, Preprocess.lines: Lines, Preprocess.raw: Raw}[Preprocess(mode)]()


def _add_counts(counts: np.ndarray, points: np.ndarray, block: int = 1 << 20) -> None:
    """counts += np.bincount(points), in blocks (bincount copies its input as int64); bytes as pairs of bytes
    (half the scattered increments)."""
    for start in range(0, len(points), block):
        part = points[start : start + block]
        if part.dtype == np.uint8 and len(part) % 2 == 0:
            pairs = np.bincount(part.view(np.uint16), minlength=1 << 16).reshape(256, 256)
            found = pairs.sum(0) + pairs.sum(1)  # either byte order: both bytes of each pair are counted
        else:
            found = np.bincount(part)
        counts[: len(found)] += found


def count(path: Path, mode: Preprocess, advance: Advance, chunk: int = CHUNK) -> np.ndarray:
    """How often each code point occurs in the preprocessed text (an array indexed by code point)."""
    step = _step(mode)
    counts = np.zeros(step.size, np.int64)
    for points in code_points(path, step, advance, chunk):
        _add_counts(counts, points)
    return counts


def vocabulary(counts: np.ndarray) -> tuple[list[str], list[int]]:
    """The characters in vocabulary order (falling count, ties by character; `<unk>` not included) and their counts."""
    points = np.flatnonzero(counts)
    order = points[np.lexsort((points, -counts[points]))]
    return [chr(p) for p in order], counts[order].tolist()


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned integer type that holds ids 0 .. vocab_size - 1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"a vocabulary of {vocab_size} characters does not fit in 32 bits")


def id_table(chars: list[str], size: int, dtype: np.dtype) -> np.ndarray:
    """A lookup table code point -> id: 1, 2, ... for `chars` in order, 0 (`<unk>`) for everything else."""
    table = np.zeros(size, dtype)
    table[[ord(c) for c in chars]] = np.arange(1, len(chars) + 1)
    return table


def encode(path: Path, mode: Preprocess, chars: list[str], out: BinaryIO, advance: Advance, chunk: int = CHUNK) -> int:
    """Write the ids of the preprocessed text of `path` (counted already) in the vocabulary `chars` to `out`;
    returns how many."""
    step = _step(mode)
    table = id_table(chars, step.size, token_dtype(len(chars) + 1))
    as_bytes = table[:256].tobytes() if table.dtype == np.uint8 else None
    written = 0
    for points in code_points(path, step, advance, chunk, checked=True):
        out.write(points.tobytes().translate(as_bytes) if as_bytes and points.dtype == np.uint8 else table[points])
        written += len(points)
    return written


def translate(ids: np.ndarray, table: np.ndarray, out: BinaryIO, advance: Advance, chunk: int = CHUNK) -> int:
    """Write `table[ids]` to `out` a chunk at a time (ids of one vocabulary -> ids of another); returns the <unk> count."""
    unknown = 0
    for start in range(0, len(ids), chunk):
        mapped = table[ids[start : start + chunk]]
        out.write(mapped)
        unknown += int(np.count_nonzero(mapped == 0))
        advance(len(mapped) * ids.itemsize)
    return unknown
