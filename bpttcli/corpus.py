"""Reading and preprocessing a text corpus."""

from __future__ import annotations

import enum
import re
from pathlib import Path

from .errors import DataError


class Preprocess(str, enum.Enum):
    letters = "letters"  # the book's: every run of non-letters becomes one space, then lowercase
    raw = "raw"  # every Unicode character kept, case and newlines included


_NON_LETTERS = re.compile(r"[^A-Za-z]+")


def preprocess(text: str, mode: Preprocess) -> str:
    if Preprocess(mode) is Preprocess.letters:
        return _NON_LETTERS.sub(" ", text).lower()
    return text


def read_text(path: Path) -> str:
    """Read a UTF-8 text file, or raise a one-line DataError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"corpus {path} is not a file; pass an existing UTF-8 text file with --data PATH")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"corpus {path} is not UTF-8 (bad byte at offset {exc.start}); convert it, e.g. iconv -t UTF-8"
        ) from None
    except OSError as exc:
        raise DataError(
            f"cannot read corpus {path}: {exc.strerror}; make it readable or pass another file with --data PATH"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise DataError(f"corpus {path} is empty; pass a text file with some content")
    return text
