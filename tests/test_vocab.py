"""The character vocabulary: order, round trips, unknown characters."""

from __future__ import annotations

import json

import torch

from bpttcli.vocab import UNK, Vocab

TEXT = "hello world, 世界 🌍 hello!"


def test_unk_first_then_by_falling_frequency():
    vocab = Vocab.build("bccaaa d")
    assert vocab.itos == [UNK, "a", "c", " ", "b", "d"]  # ties broken by character
    assert len(vocab) == 6 and vocab.stoi[UNK] == 0


def test_encode_decode_round_trip():
    vocab = Vocab.build(TEXT)
    ids = vocab.encode(TEXT)
    assert ids.dtype == torch.long and len(ids) == len(TEXT)
    assert 0 not in ids.tolist()
    assert vocab.decode(ids) == TEXT
    assert vocab.decode(ids.tolist()) == TEXT


def test_serialisable_round_trip():
    vocab = Vocab.build(TEXT)
    chars = json.loads(json.dumps(vocab.to_list()))
    assert UNK not in chars
    restored = Vocab.from_list(chars)
    assert restored == vocab and restored.itos == vocab.itos
    assert restored.encode(TEXT).tolist() == vocab.encode(TEXT).tolist()


def test_unknown_characters_are_reported_and_map_to_unk():
    vocab = Vocab.build("abc")
    assert vocab.unknown("xaybxz") == ["x", "y", "z"]
    assert vocab.unknown("cab") == []
    assert vocab.encode("axb").tolist() == [vocab.stoi["a"], 0, vocab.stoi["b"]]
    assert vocab.decode(vocab.encode("axb")) == "a\ufffdb"


def test_equality_depends_on_order():
    assert Vocab(["a", "b"]) != Vocab(["b", "a"])
    assert Vocab(["a", "b"]) != ["a", "b"]
