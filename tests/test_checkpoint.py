"""bpttcli.checkpoint: CPU tensors, atomic writes, weights_only loading and one-line errors."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from bpttcli import checkpoint
from bpttcli.errors import CheckpointError


def payload() -> dict:
    w = torch.randn(3, 2, requires_grad=True)
    return {"model": {"w": w * 2}, "hidden": [[w[0]], (w[1],)], "step": 7, "vocab": ["a", "b"], "best": float("inf")}


def test_round_trip_is_cpu_detached_and_loads_with_weights_only(tmp_path):
    original = payload()
    checkpoint.save(original, tmp_path / "last.pt", tmp_path / "best.pt")
    assert (tmp_path / "last.pt").read_bytes() == (tmp_path / "best.pt").read_bytes()
    loaded = checkpoint.load(tmp_path / "last.pt")
    assert loaded["format"] == checkpoint.FORMAT and loaded["step"] == 7 and loaded["best"] == float("inf")
    assert torch.equal(loaded["model"]["w"], original["model"]["w"].detach())
    assert isinstance(loaded["hidden"][1], tuple) and not loaded["hidden"][0][0].requires_grad


def test_to_cpu_moves_every_nested_tensor():
    moved = checkpoint.to_cpu({"a": [torch.ones(2, requires_grad=True), ({"b": torch.zeros(1)},)], "n": 3})
    tensors = [moved["a"][0], moved["a"][1][0]["b"]]
    assert all(t.device.type == "cpu" and not t.requires_grad for t in tensors) and moved["n"] == 3


def test_a_failed_write_keeps_the_previous_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    checkpoint.save({"step": 1}, tmp_path / "last.pt")
    before = (tmp_path / "last.pt").read_bytes()

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(CheckpointError, match="cannot write checkpoint .*No space left on device"):
        checkpoint.save({"step": 2}, tmp_path / "last.pt")
    assert (tmp_path / "last.pt").read_bytes() == before and os.listdir(tmp_path) == ["last.pt"]


@pytest.mark.parametrize("damage, says", [
    (lambda p: p.write_bytes(p.read_bytes()[:-200]), "corrupted or truncated"),
    (lambda p: p.write_bytes(p.read_bytes()[:30]), "corrupted or truncated"),
    (lambda p: p.write_bytes(b"\x00garbage" * 10), "corrupted or truncated"),
    (lambda p: p.write_bytes(b""), "corrupted or truncated"),
    (lambda p: torch.save([1, 2], p), "is not a bptt checkpoint"),
    (lambda p: torch.save({"format": 99}, p), "is not a bptt checkpoint"),
    (lambda p: p.unlink(), "no checkpoint at"),
], ids=["tail-cut", "head-only", "garbage", "empty", "list", "other-format", "missing"])
def test_damaged_checkpoints_raise_one_line(tmp_path, damage, says):
    path = tmp_path / "last.pt"
    checkpoint.save(payload(), path)
    damage(path)
    with pytest.raises(CheckpointError, match=says) as caught:
        checkpoint.load(path)
    assert "\n" not in str(caught.value)


def test_a_pickled_object_is_refused_by_weights_only(tmp_path):
    torch.save({"format": checkpoint.FORMAT, "path": tmp_path}, tmp_path / "x.pt")  # an arbitrary class
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        checkpoint.load(tmp_path / "x.pt")


def test_resolve_prefers_best_then_last(tmp_path):
    with pytest.raises(CheckpointError, match="has no checkpoint"):
        checkpoint.resolve(tmp_path)
    checkpoint.save({}, tmp_path / "last.pt")
    assert checkpoint.resolve(tmp_path) == tmp_path / "last.pt"
    checkpoint.save({}, tmp_path / "best.pt")
    assert checkpoint.resolve(tmp_path) == tmp_path / "best.pt"
    assert checkpoint.resolve(tmp_path, "last") == tmp_path / "last.pt"
    assert checkpoint.resolve(tmp_path / "x.pt") == tmp_path / "x.pt"


def test_a_raw_pickle_is_refused_without_torch_warnings(tmp_path, recwarn):
    with open(tmp_path / "raw.pt", "wb") as f:
        pickle.dump({"format": checkpoint.FORMAT}, f, protocol=4)
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        checkpoint.load(tmp_path / "raw.pt")
    assert [str(w.message) for w in recwarn] == []


@pytest.mark.parametrize("vocab", [[1, 2, 3], "abc", [["a"]]], ids=["ints", "string", "nested"])
def test_a_damaged_vocabulary_is_refused_on_load(tmp_path, vocab):
    checkpoint.save({**payload(), "vocab": vocab}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="damaged vocabulary"):
        checkpoint.load(tmp_path / "last.pt")


def test_a_failed_checkpoint_write_names_the_errno(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(27, "File too large")))
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*last.pt: File too large \(EFBIG\)"):
        checkpoint.save({"step": 2}, tmp_path / "last.pt")
