"""Streaming preparation gives exactly today's in-memory encoding (corpus.preprocess + Vocab.build), chunk by chunk."""

from __future__ import annotations

import io

import numpy as np
import pytest

from bpttcli import prepare
from bpttcli.corpus import Preprocess, preprocess, read_text
from bpttcli.vocab import Vocab

TRICKY = {
    "utf8": "Café naïve — 東京の夜 🚀👩‍🚀\r\nTabs\tand CRLF\r\n\u00a0Zeit, Straße!\n",
    "leading and trailing runs": "  ...¡Hola!! 42 -- the END...\n\n  ",
    "letters only": "abcXYZ",
    "no letters": "123 ... 456 !!\n",
    "one run across everything": "a" + " \t\n.,;:!?" * 50 + "€" * 30 + "b",
    "bom inside": "a\ufeffb c",
}
CHUNKS = [1, 2, 3, 5, 7, 64, 1 << 16]  # 1-3 bytes split every multi-byte character and every run


def prepared(path, mode, chunk) -> tuple[list[str], np.ndarray]:
    """(vocabulary without <unk>, ids) as the cache builds them, with a tiny chunk."""
    chars, _ = prepare.vocabulary(prepare.count(path, mode, lambda n: None, chunk))
    out = io.BytesIO()
    length = prepare.encode(path, mode, chars, out, lambda n: None, chunk)
    ids = np.frombuffer(out.getvalue(), prepare.token_dtype(len(chars) + 1))
    assert len(ids) == length
    return chars, ids


def reference(text: str, mode) -> tuple[list[str], np.ndarray]:
    """Today's in-memory path: the regex preprocessing, Vocab.build and Vocab.encode."""
    text = preprocess(text, mode)
    vocab = Vocab.build(text)
    return vocab.to_list(), vocab.encode(text).numpy()


@pytest.mark.parametrize("mode", list(Preprocess))
@pytest.mark.parametrize("name", list(TRICKY))
@pytest.mark.parametrize("bom", [False, True])
def test_chunked_preparation_equals_the_in_memory_encoding(tiny_corpus, mode, name, bom):
    path = tiny_corpus(TRICKY[name], bom=bom)
    want_chars, want_ids = reference(TRICKY[name], mode)
    for chunk in CHUNKS:
        chars, ids = prepared(path, mode, chunk)
        assert chars == want_chars, chunk
        assert np.array_equal(ids, want_ids), chunk


@pytest.mark.parametrize("mode", list(Preprocess))
def test_the_book_prepares_to_exactly_todays_tokens(book, mode):
    want_chars, want_ids = reference(read_text(book), mode)
    chars, ids = prepared(book, mode, 1 << 14)
    assert chars == want_chars and np.array_equal(ids, want_ids)
    assert ids.dtype == np.uint8


def test_vocabulary_orders_by_falling_count_then_character():
    counts = np.zeros(prepare.UNICODE, np.int64)
    for char, n in {"b": 1, "c": 2, "a": 3, " ": 2, "d": 1, "東": 3}.items():
        counts[ord(char)] = n
    chars, ordered = prepare.vocabulary(counts)
    assert chars == Vocab.build("bccaaa d" + "東" * 3 + " ").to_list() == ["a", "東", " ", "c", "b", "d"]
    assert ordered == [3, 3, 2, 2, 1, 1]


@pytest.mark.parametrize("size, dtype", [(2, np.uint8), (256, np.uint8), (257, np.uint16), (65536, np.uint16),
                                         (65537, np.uint32)])
def test_ids_take_the_narrowest_unsigned_type(size, dtype):
    assert prepare.token_dtype(size) == np.dtype(dtype)


def test_a_vocabulary_over_256_characters_is_written_as_uint16(tiny_corpus):
    text = "".join(chr(0x4E00 + i) for i in range(300)) + "東京" * 50
    chars, ids = prepared(tiny_corpus(text), Preprocess.raw, 7)
    assert ids.dtype == np.uint16 and len(chars) == 301  # 京 is among the 300, 東 is not
    assert np.array_equal(ids, reference(text, Preprocess.raw)[1])


def test_translate_maps_ids_and_counts_unknowns():
    ids = np.array([1, 2, 3, 2, 1], np.uint8)
    out = io.BytesIO()
    unknown = prepare.translate(ids, np.array([0, 5, 0, 7], np.uint16), out, lambda n: None, chunk=2)
    assert np.frombuffer(out.getvalue(), np.uint16).tolist() == [5, 0, 7, 0, 5] and unknown == 2
