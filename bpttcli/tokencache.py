"""The prepared token cache: each corpus preprocessed once into a flat file of token ids, memory-mapped after.

    <data dir>/prepared/              (data dir: data.data_dir, else $BPTT_DATA_DIR, else ./data)
      index.json                      path -> (size, mtime, ctime, inode) and SHA-1: a later start skips hashing
      v1/<sha1>-<mode>/               the corpus in its own vocabulary
        tokens.bin                    one id per character: uint8, or uint16/uint32 for larger vocabularies
        meta.json                     vocabulary, counts, dtype, length, SHA-1, source path
      v1/<sha1>-<mode>-<vocab>/       the same text in another vocabulary (a trained run's, for eval and analyze)

Entries are keyed by the corpus's content (the SHA-1 of its bytes) and preprocessing, so a
changed file is prepared again and a moved or copied one is not. An entry is built in a
temporary directory and renamed into place, so it is complete or absent; a damaged one is
rebuilt. The index is only a shortcut to the SHA-1: a file whose size, times or inode differ
from its index entry is hashed again, and a file changed within the last RACY_SECONDS before it
was read is not indexed (a change within one tick of the file system's clock keeps its times).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from . import prepare
from .corpus import CHUNK, Preprocess, check_file, unreadable
from .download import default_data_dir
from .errors import DataError
from .fsutil import atomic_write_text, ensure_dir, sha1_of
from .ui import LiveView, compact, console
from .vocab import Vocab

FORMAT = 1
RACY_SECONDS = 2.0
SHOW_HASHING = 64 << 20  # bytes: hashing a smaller file takes too little time for a progress bar
WRITABLE_HINT = "free some space, or set $BPTT_DATA_DIR (or --set data.data_dir=DIR) to another directory"


@dataclass
class Prepared:
    """A cache entry: the token ids (a read-only file mapped copy-on-write), the vocabulary and the metadata."""

    tokens: np.ndarray
    vocab: Vocab
    meta: dict
    directory: Path


def cache_root(data_dir: str | Path | None = None) -> Path:
    return Path(data_dir or default_data_dir()).expanduser() / "prepared"


def load(path: Path, mode: Preprocess, data_dir: str | Path | None = None, vocab: Vocab | None = None,
         quiet: bool = False) -> Prepared:
    """The prepared tokens of the corpus at `path`, preparing them first if needed; in `vocab` if given."""
    path, mode, root = check_file(path).resolve(), Preprocess(mode), cache_root(data_dir)
    started, stat = time.time(), path.stat()
    sha1 = corpus_sha1(path, data_dir, quiet)
    key = f"{sha1}-{mode.value}"
    own = _open(root / f"v{FORMAT}" / key) or _build(root, key, _tokenizer(path, mode, sha1, stat), path.name, quiet)
    _unchanged(path, stat)
    _remember(root, path, stat, sha1, started)
    if vocab is None or vocab == own.vocab:
        return own
    key = f"{key}-{hashlib.sha1(json.dumps(vocab.to_list()).encode()).hexdigest()[:16]}"
    return _open(root / f"v{FORMAT}" / key) or _build(root, key, _translator(own, vocab), path.name, quiet)


def corpus_sha1(path: Path, data_dir: str | Path | None = None, quiet: bool = False) -> str:
    """The SHA-1 of the corpus at `path`: from the index while the file is as it was indexed, else hashed."""
    path = check_file(path).resolve()
    stat = path.stat()
    return _indexed_sha1(cache_root(data_dir), path, stat) or _hash(path, stat.st_size, quiet)


def describe(source: Path, prepared: Prepared) -> str:
    m = prepared.meta
    return (f"{source} ({m['preprocess']}): {len(prepared.tokens):,} characters, vocabulary {len(prepared.vocab)} "
            f"({m['dtype']}), cached in {prepared.directory}")


# ----------------------------------------------------------------------------- the SHA-1 index
def _stamp(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _indexed_sha1(root: Path, path: Path, stat: os.stat_result) -> str | None:
    entry = _read_json(root / "index.json").get(str(path))
    return entry["sha1"] if isinstance(entry, dict) and entry.get("stamp") == _stamp(stat) else None


def _remember(root: Path, path: Path, stat: os.stat_result, sha1: str, read_at: float) -> None:
    """Index `path` unless it had changed within RACY_SECONDS before it was read at `read_at` (a later change
    within the same clock tick would keep its times); files that are gone drop out of the index."""
    if read_at - max(stat.st_mtime, stat.st_ctime) < RACY_SECONDS:
        return
    index = {p: e for p, e in _read_json(root / "index.json").items() if Path(p).is_file()}
    if index.get(str(path)) == {"stamp": _stamp(stat), "sha1": sha1}:
        return
    index[str(path)] = {"stamp": _stamp(stat), "sha1": sha1}
    with contextlib.suppress(OSError):  # only a shortcut: a read-only cache still works
        atomic_write_text(root / "index.json", json.dumps(index, indent=0))


def _hash(path: Path, size: int, quiet: bool) -> str:
    with LiveView(f"hashing {path.name}", size, quiet or size < SHOW_HASHING, unit="B") as view:
        try:
            return sha1_of(path, view.advance)
        except OSError as exc:
            raise unreadable(path, exc) from None


def _unchanged(path: Path, before: os.stat_result) -> None:
    if _stamp(path.stat()) != _stamp(before):
        raise DataError(f"corpus {path} changed while it was being read; run again once it is written")


# ---------------------------------------------------------------------------------- entries
def _open(entry: Path) -> Prepared | None:
    """The complete, undamaged entry at `entry`, or None."""
    meta = _read_json(entry / "meta.json")
    try:
        if meta.get("format") != FORMAT:
            return None
        dtype, length = np.dtype(meta["dtype"]), int(meta["tokens"])
        if length < 1 or (entry / "tokens.bin").stat().st_size != length * dtype.itemsize:
            return None
        tokens = np.memmap(entry / "tokens.bin", dtype, mode="c", shape=(length,))
        return Prepared(tokens, Vocab.from_list(meta["vocab"]), meta, entry)
    except (KeyError, TypeError, ValueError, OSError):
        return None


Writer = Callable[[BinaryIO, LiveView], dict]


def _build(root: Path, key: str, write: Writer, name: str, quiet: bool) -> Prepared:
    """Write an entry in a temporary directory (tokens, then meta.json) and rename it into place."""
    final = root / f"v{FORMAT}" / key
    started = time.monotonic()
    try:
        ensure_dir(final.parent, DataError)
    except DataError as exc:
        raise DataError(f"{exc} with $BPTT_DATA_DIR or --set data.data_dir=DIR") from None
    _sweep(root)
    work = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        with LiveView(f"preparing {name}", None, quiet, unit="B") as view, open(work / "tokens.bin", "wb") as f:
            meta = write(f, view)
            f.flush()
            os.fsync(f.fileno())
        meta.update(format=FORMAT, seconds=round(time.monotonic() - started, 3))
        atomic_write_text(work / "meta.json", json.dumps(meta, indent=1, allow_nan=False))
        shutil.rmtree(final, ignore_errors=True)  # a damaged entry (a complete one was opened instead)
        with contextlib.suppress(OSError):  # another process may have finished the same entry just now
            os.rename(work, final)
    except OSError as exc:
        raise DataError(f"cannot write the prepared corpus under {root}: {exc.strerror or exc}; {WRITABLE_HINT}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    prepared = _open(final)
    if prepared is None:
        raise DataError(f"the prepared corpus {final} cannot be read back; delete {root} and run again")
    if not quiet:
        console.print(f"prepared {name} in {meta['seconds']:.1f} s: {compact(len(prepared.tokens))} chars, "
                      f"vocabulary {len(prepared.vocab)} ({prepared.tokens.dtype}), cached in {final}",
                      highlight=False, soft_wrap=True)
    return prepared


def _sweep(root: Path, age: float = 86400.0) -> None:
    """Remove temporary directories that a killed preparation left behind a day or more ago."""
    for stale in root.glob(".tmp-*"):
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > age:
                shutil.rmtree(stale)


def _tokenizer(path: Path, mode: Preprocess, sha1: str, stat: os.stat_result) -> Writer:
    """Prepare the corpus file: count (first pass), then encode (second pass); refuse it if it changed meanwhile."""

    def write(out: BinaryIO, view: LiveView) -> dict:
        size = path.stat().st_size
        view.advance(0, total=size, description=f"counting {path.name}")
        chars, counts = prepare.vocabulary(prepare.count(path, mode, view.advance))
        view.advance(0, total=size, completed=0, description=f"encoding {path.name}")
        length = prepare.encode(path, mode, chars, out, view.advance)
        _unchanged(path, stat)
        dtype = prepare.token_dtype(len(chars) + 1)
        return {"sha1": sha1, "preprocess": mode.value, "source": str(path), "source_bytes": size, "tokens": length,
                "dtype": dtype.name, "vocab": chars, "counts": counts}

    return write


def _translator(own: Prepared, vocab: Vocab) -> Writer:
    """The entry `own` re-encoded in `vocab`: characters outside it become <unk> (id 0)."""

    def write(out: BinaryIO, view: LiveView) -> dict:
        dtype = prepare.token_dtype(len(vocab))
        table = np.array([0] + [vocab.stoi.get(c, 0) for c in own.vocab.itos[1:]], dtype)
        view.advance(0, total=own.tokens.nbytes, description=f"re-encoding {Path(own.meta['source']).name}")
        unknown = prepare.translate(own.tokens, table, out, view.advance, CHUNK)
        counts = dict(zip(own.meta["vocab"], own.meta["counts"]))
        outside = [c for c in own.vocab.itos[1:] if c not in vocab.stoi]
        return {**own.meta, "dtype": dtype.name, "vocab": vocab.to_list(), "counts": [counts.get(c, 0) for c in vocab.itos[1:]],
                "unknown": unknown, "outside": outside}

    return write
