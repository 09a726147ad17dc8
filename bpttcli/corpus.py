"""Reading a UTF-8 text corpus, whole or in chunks, and the two preprocessing modes."""

from __future__ import annotations

import codecs
import enum
import re
from pathlib import Path
from typing import Iterator

from .errors import DataError

CHUNK = 1 << 22  # bytes per read: what preparation holds in memory at a time, whatever the corpus size


class Preprocess(str, enum.Enum):
    letters = "letters"  # the book's: every run of non-letters becomes one space, then lowercase
    raw = "raw"  # every Unicode character kept, case and newlines included
    lines = "lines"  # d2l's own: each line's non-letters become spaces, stripped, lowercased; lines joined as they are


_NON_LETTERS = re.compile(r"[^A-Za-z]+")


def preprocess(text: str, mode: Preprocess) -> str:
    """The reference definition of the modes (prepare.py applies the same to a file, chunk by chunk)."""
    mode = Preprocess(mode)
    if mode is Preprocess.letters:
        return _NON_LETTERS.sub(" ", text).lower()
    if mode is Preprocess.lines:
        return "".join(_NON_LETTERS.sub(" ", line).strip().lower() for line in text.split("\n"))
    return text


def check_file(path: Path) -> Path:
    """`path`, or a one-line DataError when it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"corpus {path} is not a file; pass an existing UTF-8 text file with --data PATH")
    return path


def read_chunks(path: Path, chunk: int = CHUNK, decode: bool = True) -> Iterator[tuple[bytes, str]]:
    """The file in pieces of about `chunk` bytes: each piece's bytes and the text decoded so far.

    A leading byte-order mark is dropped. A character split by a piece boundary is decoded with
    the next piece, so the texts join into exactly the file's text, while the byte pieces join
    into exactly its bytes. Raises a one-line DataError for a missing, unreadable, non-UTF-8 or
    empty (whitespace only) file; the last two only once the whole file has been read, and not
    at all without `decode` (the texts are then empty: for a second pass over a file checked already).
    """
    path = check_file(path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, content = 0, False  # bytes read so far; whether any non-whitespace was seen
    try:
        with open(path, "rb") as f:
            head = f.read(len(codecs.BOM_UTF8))
            offset = len(head) if head == codecs.BOM_UTF8 else 0
            data = head[offset:] + f.read(chunk)
            while decode or data:
                final = not data
                try:
                    text = decoder.decode(data, final) if decode else ""
                except UnicodeDecodeError as exc:
                    pending = len(decoder.getstate()[0])
                    bad = offset - pending + exc.start
                    raise DataError(
                        f"corpus {path} is not UTF-8 (bad byte at offset {bad}); convert it, e.g. iconv -t UTF-8"
                    ) from None
                content = content or (text != "" and not text.isspace())
                offset += len(data)
                if final:
                    break
                yield data, text
                data = f.read(chunk)
    except OSError as exc:
        raise unreadable(path, exc) from None
    if decode and not content:
        raise DataError(f"corpus {path} is empty; pass a text file with some content")


def read_text(path: Path) -> str:
    """Read a whole UTF-8 text file (without a leading BOM), or raise a one-line DataError saying what is wrong."""
    return "".join(text for _, text in read_chunks(path))


def unreadable(path: Path, exc: OSError) -> DataError:
    """The error for a corpus that exists but cannot be read."""
    return DataError(f"cannot read corpus {path}: {exc.strerror or exc}; make it readable or pass another file "
                     f"with --data PATH")
