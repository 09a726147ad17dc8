"""Atomic writes, writable directories, whole-line appends, strict JSON and locks."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import stat
import sys

import pytest

from bpttcli.errors import BpttError, CheckpointError, DownloadError, WriteError
from bpttcli.fsutil import (Locked, append_line, atomic_open, atomic_write_bytes, atomic_write_json, atomic_write_text,
                            ensure_dir, exclusive_lock, remove_stale_temps, sha1_of, to_json)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_write_text_is_utf8_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "naïve 東京 🚀\n")
    assert path.read_bytes() == "naïve 東京 🚀\n".encode("utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_write_bytes_replaces(tmp_path):
    path = tmp_path / "out.bin"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"\x00new")
    assert path.read_bytes() == b"\x00new"


def test_new_file_gets_the_usual_permissions(tmp_path):
    path = tmp_path / "new.txt"
    atomic_write_text(path, "x")
    assert mode(path) == 0o666 & ~umask()


def test_existing_permissions_are_kept(tmp_path):
    path = tmp_path / "script.sh"
    path.write_text("old")
    path.chmod(0o750)
    atomic_write_text(path, "new")
    assert mode(path) == 0o750 and path.read_text() == "new"


def test_failure_keeps_the_old_file_and_removes_the_temp(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as f:
            f.write("partial")
            raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_ensure_dir_creates_parents(tmp_path):
    target = tmp_path / "a" / "b"
    assert ensure_dir(target) == target and target.is_dir()
    assert list(target.iterdir()) == []  # the write probe is gone
    ensure_dir(str(target))  # existing, and a str is fine


@pytest.mark.parametrize("error", [BpttError, DownloadError])
def test_ensure_dir_reports_unwritable_paths(tmp_path, error):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(error) as info:
        ensure_dir(blocker / "sub", error)
    assert str(blocker / "sub") in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------ whole lines, strict JSON, locks
def test_append_line_cuts_a_failed_write_back_off(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    append_line(path, '{"step": 1}')
    real_write, calls = os.write, []

    def full_after_a_few_bytes(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:5]))  # a short write, as a filling disk gives
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(os, "write", full_after_a_few_bytes)
    with pytest.raises(WriteError, match=rf"cannot write {path}: File too large \(EFBIG\)") as caught:
        append_line(path, '{"step": 2, "loss": 1.5}')
    assert "\n" not in str(caught.value) and isinstance(caught.value, CheckpointError)
    assert path.read_text() == '{"step": 1}\n'  # no torn line


def test_atomic_writes_name_the_file_and_the_errno(tmp_path, monkeypatch):
    (tmp_path / "out.txt").write_text("old")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(WriteError, match="out.txt: No space left on device \\(ENOSPC\\)"):
        atomic_write_text(tmp_path / "out.txt", "new")
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"] and (tmp_path / "out.txt").read_text() == "old"


def test_json_is_strict_with_null_for_non_finite_numbers(tmp_path):
    value = {"ppl": math.inf, "loss": -math.inf, "norms": [1.0, math.nan], "pair": (math.nan, 2), "n": 3}
    text = to_json(value)
    assert json.loads(text, parse_constant=pytest.fail) == {"ppl": None, "loss": None, "norms": [1.0, None],
                                                             "pair": [None, 2], "n": 3}
    atomic_write_json(tmp_path / "a.json", value)
    assert json.loads((tmp_path / "a.json").read_text(), parse_constant=pytest.fail)["ppl"] is None


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX locks")
def test_an_exclusive_lock_refuses_a_second_holder_and_goes_away(tmp_path):
    path = tmp_path / ".lock"
    with exclusive_lock(path):
        assert path.read_text().strip() == str(os.getpid())
        with pytest.raises(Locked) as caught:
            with exclusive_lock(path):
                pass
        assert caught.value.holder == str(os.getpid())
    assert not path.exists()
    with exclusive_lock(path, wait=True):  # free again
        pass


def test_remove_stale_temps_keeps_other_files(tmp_path):
    for name in (".last.pt.abc.tmp", ".metrics.jsonl.x.tmp", "last.pt", "notes.tmp"):
        (tmp_path / name).write_text("x")
    remove_stale_temps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "notes.tmp"]


def test_sha1_of_reads_the_whole_file_and_reports_each_block(tmp_path):
    data = bytes(range(256)) * 9000  # 2.2 MiB: three 1 MiB blocks
    (tmp_path / "f").write_bytes(data)
    seen = []
    assert sha1_of(tmp_path / "f", seen.append) == hashlib.sha1(data).hexdigest()
    assert seen == [1 << 20, 1 << 20, len(data) - (2 << 20)]
