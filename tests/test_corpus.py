"""Reading UTF-8 corpora and the two preprocessing modes."""

from __future__ import annotations

import string

import pytest

from bpttcli.corpus import Preprocess, preprocess, read_chunks, read_text
from bpttcli.errors import DataError
from bpttcli.vocab import Vocab

MIXED = "Café naïve — 東京の夜 🚀👩‍🚀\r\nTabs\tand CRLF\r\n\u00a0Zeit, Straße!\n"


def read_fails(path) -> str:
    with pytest.raises(DataError) as info:
        read_text(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_letters_mode_collapses_non_letters_and_lowercases():
    assert preprocess("Hello,  World!!\n\n42 times--The END.", Preprocess.letters) == "hello world times the end "
    assert preprocess("café ÜBER", "letters") == "caf ber"  # only the 26 ASCII letters survive


def test_letters_mode_on_the_book(book):
    text = preprocess(read_text(book), Preprocess.letters)
    assert set(text) == set(string.ascii_lowercase + " ")
    assert "  " not in text


def test_raw_mode_keeps_everything():
    assert preprocess(MIXED, Preprocess.raw) == MIXED


@pytest.mark.parametrize("bom", [False, True])
def test_utf8_round_trips_exactly_in_raw_mode(tiny_corpus, bom):
    text = read_text(tiny_corpus(MIXED, bom=bom))
    assert text == MIXED  # BOM stripped, CRLF kept, nothing normalised
    vocab = Vocab.build(preprocess(text, Preprocess.raw))
    assert vocab.decode(vocab.encode(text)) == MIXED


def test_only_a_leading_bom_is_stripped(tiny_corpus):
    assert read_text(tiny_corpus("a\ufeffb", bom=True)) == "a\ufeffb"


def test_missing_file(tmp_path):
    assert "not a file" in read_fails(tmp_path / "nope.txt")


def test_directory(tmp_path):
    assert "not a file" in read_fails(tmp_path)


def test_not_utf8(tiny_corpus):
    message = read_fails(tiny_corpus("abc café".encode("latin-1")))
    assert "not UTF-8" in message and "offset 7" in message


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf", b" \n\t\r\n"])
def test_empty(tiny_corpus, content):
    assert "empty" in read_fails(tiny_corpus(content))


def test_errors_exit_with_data_code():
    assert DataError.exit_code == 3


# ------------------------------------------------------------------ reading in chunks


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 1 << 16])
@pytest.mark.parametrize("bom", [False, True])
def test_chunks_join_into_the_files_bytes_and_text(tiny_corpus, chunk, bom):
    path = tiny_corpus(MIXED, bom=bom)
    pieces = list(read_chunks(path, chunk))
    assert b"".join(data for data, _ in pieces) == MIXED.encode("utf-8")  # the BOM dropped
    assert "".join(text for _, text in pieces) == MIXED
    assert max(len(data) for data, _ in pieces) <= chunk + 3


@pytest.mark.parametrize("chunk", [1, 3, 4, 1 << 16])
def test_a_bad_byte_is_reported_at_its_file_offset_whatever_the_chunk(tiny_corpus, chunk):
    data = "ab 東京 ".encode("utf-8") * 5 + b"\xff" + b"tail"
    bad = len(data) - 5
    with pytest.raises(DataError, match=f"offset {bad}\\)"):
        list(read_chunks(tiny_corpus(data), chunk))
    truncated = "ab 東京".encode("utf-8")[:-1]  # a multi-byte character cut off at the end of the file
    with pytest.raises(DataError, match=f"offset {len(truncated) - 2}\\)"):
        list(read_chunks(tiny_corpus(truncated, name="cut.txt"), chunk))


def test_a_second_pass_without_decoding_yields_the_same_bytes(tiny_corpus):
    path = tiny_corpus(MIXED, bom=True)
    assert [d for d, _ in read_chunks(path, 5, decode=False)] == [d for d, _ in read_chunks(path, 5)]
