"""Split and partitioning properties. Token ids are positions (torch.arange), so values say where they came from."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import torch

from bpttcli.data import RandomWindows, SequentialStreams, build_dataset, eval_windows, head, min_corpus_length
from bpttcli.errors import DataError

N, B, T = 103, 4, 5
TEXT = "".join(chr(97 + (i * 7919) % 23) for i in range(1000))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def streams(seed: int = 0, n: int = N) -> SequentialStreams:
    s = SequentialStreams(torch.arange(n), B, T, gen(seed))
    s.start_epoch()
    return s


def drain(batcher, lengths=(T,)) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every window left in the epoch, requesting `lengths` in turn."""
    windows, lengths = [], itertools.cycle(lengths)
    while batcher.remaining > 0:
        windows.append(batcher.next(next(lengths)))
    return windows


def stacked(windows) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([x for x, _ in windows]), torch.cat([y for _, y in windows])


# ------------------------------------------------------------------- split


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.37])
def test_split_is_the_last_fraction_contiguous_without_overlap(fraction):
    data = build_dataset(TEXT, B, T, fraction)
    assert len(data.val) == int(len(TEXT) * fraction)
    assert torch.equal(torch.cat([data.train, data.val]), data.vocab.encode(TEXT))


def test_given_vocab_is_used():
    data = build_dataset(TEXT, B, T, 0.1)
    again = build_dataset(TEXT[::-1], B, T, 0.1, vocab=data.vocab)
    assert again.vocab is data.vocab


@pytest.mark.parametrize("b, t, fraction", [(1, 1, 0.0), (2, 5, 0.1), (32, 35, 0.1), (3, 7, 0.5), (4, 3, 0.01)])
def test_min_corpus_length_is_the_exact_minimum(b, t, fraction):
    need = min_corpus_length(b, t, fraction)
    text = (TEXT * (need // len(TEXT) + 1))[:need]
    data = build_dataset(text, b, t, fraction)
    x, y = SequentialStreams(data.train, b, t, gen()).next(t)
    assert x.shape == y.shape == (t, b)
    if fraction:
        assert next(eval_windows(data.val, b, t))[1].numel() > 0
    with pytest.raises(DataError, match=f"need at least {need};"):
        build_dataset(text[:-1], b, t, fraction)


# ------------------------------------------------------- sequential streams


@pytest.mark.parametrize("seed", range(4))
def test_sequential_epoch_uses_every_token_once_per_stream_region(seed):
    s = streams(seed)
    x, y = stacked(drain(s))
    start, steps = s.offset, x.shape[0]
    assert 0 <= start < T and x.shape == (steps, B)
    assert torch.equal(x.t().reshape(-1), torch.arange(start, start + B * steps))  # streams back to back
    assert torch.equal(y, x + 1)
    assert 0 <= N - 1 - (start + B * steps) < B  # only a remainder shorter than one column is left out


def test_consecutive_windows_continue_each_stream():
    windows = drain(streams(), lengths=(3, 1, 4))
    for (prev, _), (cur, _) in zip(windows, windows[1:]):
        assert torch.equal(cur[0], prev[-1] + 1)


def test_variable_lengths_tile_the_stream_exactly():
    s = streams()
    lengths = (1, 4, 2, 7, 3)
    windows = drain(s, lengths)
    got = [len(x) for x, _ in windows]
    assert got[:-1] == list(itertools.islice(itertools.cycle(lengths), len(got) - 1))
    assert sum(got) == s.steps_per_epoch and s.remaining == 0
    assert torch.equal(stacked(windows)[0], s.x)


def test_a_request_past_the_end_is_clipped():
    s = streams()
    x, _ = s.next(s.steps_per_epoch + 10)
    assert len(x) == s.steps_per_epoch and s.remaining == 0
    assert s.next(T)[0].numel() == 0


def test_offsets_vary_across_epochs_and_are_reproducible():
    def offsets(seed):
        s, seen = streams(seed), []
        for _ in range(30):
            s.start_epoch()
            seen.append(s.offset)
        return seen

    assert offsets(0) == offsets(0) != offsets(1)
    assert set(offsets(0)) == set(range(T))


def test_offset_is_bounded_by_the_slack():
    s = streams(n=B * T + 1)
    assert s.max_offset == 0 and s.steps_per_epoch == T


def test_state_dict_round_trip():
    s = streams(seed=3)
    s.next(2)
    s.next(3)
    state = s.state_dict()
    restored = SequentialStreams(torch.arange(N), B, T, gen(99))
    restored.load_state_dict(state)
    assert restored.remaining == s.remaining
    for a, b in zip(drain(s, (2, 5)), drain(restored, (2, 5))):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ----------------------------------------------------------- random windows


@pytest.mark.parametrize("length", [1, T, 17, N - 1, N + 10])
def test_random_windows_of_any_length_predict_the_next_position(length):
    x, y = RandomWindows(torch.arange(N), B, gen()).next(length)
    steps = min(length, N - 1)
    assert x.shape == y.shape == (steps, B)
    assert torch.equal(x - x[0], torch.arange(steps)[:, None].expand(steps, B))  # each column contiguous
    assert torch.equal(y, x + 1) and x.min() >= 0 and y.max() <= N - 1


def test_random_windows_are_reproducible_by_seed():
    def windows(seed):
        return stacked(drain(RandomWindows(torch.arange(N), B, gen(seed)), (3, 8)))[0]

    assert torch.equal(windows(5), windows(5))
    assert not torch.equal(windows(5), windows(6))


def test_random_windows_epoch_accounting():
    r = RandomWindows(torch.arange(N), B, gen())
    assert r.steps_per_epoch == (N - 1) // B
    drain(r, (7,))
    assert r.remaining == 0
    r.load_state_dict({"cursor": 3})
    assert r.state_dict() == {"cursor": 3}
    r.start_epoch()
    assert r.remaining == r.steps_per_epoch


# ------------------------------------------------------------- evaluation

@pytest.mark.parametrize(
    "n, b, t",
    [(41, 4, 5), (21, 8, 5), (2, 4, 5), (61, 1, 7),
     (36, 4, 5), (12, 2, 5), (23, 8, 2)],
)
def test_eval_windows_predict_every_target_exactly_once(n, b, t):
    windows = list(eval_windows(torch.arange(n), b, t))
    assert all(len(x) <= t and 1 <= x.shape[1] <= b and torch.equal(y, x + 1) for x, y in windows)
    for (prev, _), (cur, _) in zip(windows, windows[1:]):  # the state carries over; a narrower window goes on
        assert torch.equal(cur[0], prev[-1, -cur.shape[1] :] + 1)  # with the last streams
    targets = torch.cat([y.reshape(-1) for _, y in windows])
    assert torch.equal(targets.sort().values, torch.arange(1, n))


# ------------------------------------------------- narrow, memory-mapped token ids


def narrow(n: int = N) -> torch.Tensor:
    """torch.arange(n) as uint8, the dtype of a prepared corpus with a small vocabulary."""
    return torch.arange(n).to(torch.uint8)


def test_narrow_tokens_give_the_same_int64_windows():
    wide, small = SequentialStreams(torch.arange(N), B, T, gen(2)), SequentialStreams(narrow(), B, T, gen(2))
    for s in (wide, small):
        s.start_epoch()
    for (x, y), (xs, ys) in zip(drain(wide, (3, 7)), drain(small, (3, 7)), strict=True):
        assert xs.dtype == ys.dtype == torch.long and xs.is_contiguous() and ys.is_contiguous()
        assert torch.equal(x, xs) and torch.equal(y, ys)
    for (x, y), (xs, ys) in zip(drain(RandomWindows(torch.arange(N), B, gen(3)), (4,)),
                                drain(RandomWindows(narrow(), B, gen(3)), (4,)), strict=True):
        assert xs.dtype == torch.long and torch.equal(x, xs) and torch.equal(y, ys)
    for (x, y), (xs, ys) in zip(eval_windows(torch.arange(N), B, T), eval_windows(narrow(), B, T), strict=True):
        assert xs.dtype == torch.long and torch.equal(x, xs) and torch.equal(y, ys)


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_sequential_streams_read_only_the_window_they_return(tmp_path):
    """64 MB of memory-mapped uint8 ids: building the layout and drawing windows touches a few pages, not the
    corpus (the old layout copied it twice as int64: 1 GiB)."""
    n = 64 << 20
    path = tmp_path / "tokens.bin"
    with open(path, "wb") as f:
        f.truncate(n)  # a sparse file of zeros
    tokens = torch.from_numpy(np.memmap(path, np.uint8, mode="c", shape=(n,)))
    before = resident_bytes()
    s = SequentialStreams(tokens, 32, 35, gen())
    s.start_epoch()
    x, y = s.next(35)
    s.load_state_dict(s.state_dict())
    assert x.shape == (35, 32) and x.dtype == torch.long
    assert resident_bytes() - before < 16 << 20


def test_head_bounds_the_characters_predicted():
    assert torch.equal(head(torch.arange(10), 4), torch.arange(5))  # 5 ids predict 4 characters
    assert torch.equal(head(torch.arange(10), 0), torch.arange(10)) and len(head(torch.arange(3), 9)) == 3
