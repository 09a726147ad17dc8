"""The prepared token cache: keyed by content and mode, a moved file found, a changed one re-prepared, bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bpttcli import prepare, tokencache
from bpttcli.corpus import preprocess, read_text
from bpttcli.errors import DataError
from bpttcli.vocab import Vocab

TEXT = "The Time Traveller (for so it will be convenient to speak of him) was expounding a recondite matter.\n" * 20


@pytest.fixture
def preparations(monkeypatch):
    """A list that grows by the corpus path each time a corpus is actually prepared (counted)."""
    done = []
    count = prepare.count
    monkeypatch.setattr(prepare, "count", lambda path, *a, **k: done.append(path) or count(path, *a, **k))
    return done


def load(path, cache, mode="letters", **kw):
    return tokencache.load(path, mode, cache, quiet=True, **kw)


def test_tokens_are_todays_encoding_and_the_meta_says_what_they_are(tiny_corpus, tmp_path):
    path = tiny_corpus(TEXT)
    got = load(path, tmp_path / "cache")
    text = preprocess(read_text(path), "letters")
    assert got.vocab == Vocab.build(text) and np.array_equal(got.tokens, got.vocab.encode(text).numpy())
    meta = json.loads((got.directory / "meta.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert meta["tokens"] == len(text) and meta["dtype"] == "uint8" and meta["preprocess"] == "letters"
    assert meta["source"] == str(path.resolve()) and meta["vocab"] == got.vocab.to_list()
    assert meta["counts"] == [text.count(c) for c in meta["vocab"]]
    assert got.directory == tmp_path / "cache" / "prepared" / f"v{tokencache.FORMAT}" / f"{meta['sha1']}-letters"
    got.tokens[0] = 99  # a stray write stays in this process's copy-on-write pages, never reaches the cache
    assert load(path, tmp_path / "cache").tokens[0] == got.vocab.stoi["t"]


def test_a_second_load_is_served_from_the_cache(tiny_corpus, tmp_path, preparations):
    path = tiny_corpus(TEXT)
    first = load(path, tmp_path)
    second = load(path, tmp_path)
    assert preparations == [path.resolve()] and np.array_equal(first.tokens, second.tokens)
    load(path, tmp_path, mode="raw")  # another preprocessing is another entry
    assert len(preparations) == 2


def test_a_moved_corpus_is_not_prepared_again(tiny_corpus, tmp_path, preparations):
    path = tiny_corpus(TEXT)
    first = load(path, tmp_path)
    moved = path.rename(tmp_path / "elsewhere.txt")
    assert load(moved, tmp_path).directory == first.directory and len(preparations) == 1


def test_a_changed_corpus_is_prepared_again_even_at_the_same_size_and_time(tiny_corpus, tmp_path, preparations,
                                                                         monkeypatch):
    real_stamp = tokencache._stamp
    monkeypatch.setattr(tokencache, "_stamp", lambda st: real_stamp(st)[:1] + real_stamp(st)[3:])  # a clock that
    path = tiny_corpus(TEXT)  # did not tick: the rewrite below keeps size, times and inode
    load(path, tmp_path)
    path.write_text(TEXT.replace("Time", "Tide"), encoding="utf-8")
    changed = load(path, tmp_path)
    assert len(preparations) == 2 and "tide" in changed.vocab.decode(changed.tokens[:12])


def test_the_index_skips_hashing_an_unchanged_file_and_only_that(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(tokencache, "RACY_SECONDS", 0.0)  # the file is older than any clock tick by now
    path = tiny_corpus(TEXT)
    load(path, tmp_path)
    hashed = []
    real_hash = tokencache._hash
    monkeypatch.setattr(tokencache, "_hash", lambda *a: hashed.append(a[0]) or real_hash(*a))
    load(path, tmp_path)
    assert hashed == [] and str(path.resolve()) in json.loads((tmp_path / "prepared" / "index.json").read_text())
    with open(path, "a", encoding="utf-8") as f:
        f.write("more")
    grown = load(path, tmp_path)
    assert grown.vocab.decode(grown.tokens[-4:]) == "more" and len(hashed) == 1


def test_a_recently_changed_file_is_not_indexed(tiny_corpus, tmp_path):
    path = tiny_corpus(TEXT)
    load(path, tmp_path)  # the file was written just now: its times cannot be trusted yet
    index = tmp_path / "prepared" / "index.json"
    assert not index.exists() or str(path.resolve()) not in json.loads(index.read_text())


def test_a_damaged_entry_is_rebuilt(tiny_corpus, tmp_path, preparations):
    path = tiny_corpus(TEXT)
    entry = load(path, tmp_path).directory
    with open(entry / "tokens.bin", "r+b") as f:
        f.truncate(10)
    assert len(load(path, tmp_path).tokens) == len(preprocess(TEXT, "letters")) and len(preparations) == 2


def test_a_file_changing_during_preparation_is_refused_and_nothing_is_cached(tiny_corpus, tmp_path, monkeypatch):
    path = tiny_corpus(TEXT)
    encode = prepare.encode

    def writer_interferes(*args, **kwargs):
        with open(path, "a", encoding="utf-8") as f:
            f.write("late")
        return encode(*args, **kwargs)

    monkeypatch.setattr(prepare, "encode", writer_interferes)
    with pytest.raises(DataError, match="changed while it was being read"):
        load(path, tmp_path)
    assert list((tmp_path / "prepared" / f"v{tokencache.FORMAT}").iterdir()) == []
    assert not list((tmp_path / "prepared").glob(".tmp-*"))


def test_another_vocabulary_re_encodes_with_unknowns_as_unk(tiny_corpus, tmp_path):
    path = tiny_corpus("abc abd xyz " * 10)
    vocab = Vocab(["b", "a", " ", "c", "d"])
    got = load(path, tmp_path, vocab=vocab)
    assert got.vocab == vocab and got.tokens.tolist()[:12] == [2, 1, 4, 3, 2, 1, 5, 3, 0, 0, 0, 3]
    assert got.meta["unknown"] == 30 and sorted(got.meta["outside"]) == ["x", "y", "z"]
    assert load(path, tmp_path, vocab=load(path, tmp_path).vocab).directory == load(path, tmp_path).directory


def test_cjk_text_in_raw_mode_is_stored_as_uint16(tiny_corpus, tmp_path):
    text = "".join(chr(0x4E00 + i) for i in range(400)) * 3
    got = load(tiny_corpus(text), tmp_path, mode="raw")
    assert got.tokens.dtype == np.uint16 and len(got.vocab) == 401
    assert got.vocab.decode(got.tokens) == text


def test_an_unwritable_cache_is_one_line_naming_the_fix(tiny_corpus, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache directory should be")
    with pytest.raises(DataError, match=r"BPTT_DATA_DIR") as info:
        load(tiny_corpus(TEXT), blocker / "cache")
    assert "\n" not in str(info.value)


def test_preparation_memory_does_not_grow_with_the_corpus(tmp_path):
    """A 64 MB corpus is prepared in a child process whose peak memory grows by less than the corpus itself."""
    corpus = tmp_path / "big.txt"
    rng = np.random.default_rng(0)
    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz  ,.\nEOTH", np.uint8)
    with open(corpus, "wb") as f:
        for _ in range(16):
            f.write(alphabet[rng.integers(0, len(alphabet), 4 << 20)].tobytes())
    child = textwrap.dedent(f"""
        import json, resource
        from bpttcli import tokencache
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        prepared = tokencache.load({str(corpus)!r}, "letters", {str(tmp_path / "cache")!r}, quiet=True)
        print(json.dumps({{"before": before, "after": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                          "tokens": len(prepared.tokens)}}))
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    grown_mib = (report["after"] - report["before"]) / 1024  # ru_maxrss is in KiB on Linux
    assert report["tokens"] > 40e6
    assert grown_mib < 48, f"preparation's peak memory grew by {grown_mib:.0f} MiB for a 64 MiB corpus"
