"""bpttcli.recall: the delayed-recall task, equal backward work per strategy, the sweep's outputs."""

from __future__ import annotations

import json

import pytest
import torch

from bpttcli.errors import ConfigError
from bpttcli.model import CharRNN
from bpttcli.recall import CUE, FILLER, Settings, accuracy, batch, lineup, save, sweep, table, train_one
from bpttcli.recurrence import Cell
from bpttcli.strategies import TBPTT, Truncated


def test_sequences_are_symbol_fillers_cue_symbol():
    x, y, recall = batch(3, 4, 2, 5, torch.Generator().manual_seed(0))
    tokens = torch.cat([x, y[-1:]])
    assert tokens.shape == (2 * 6, 5)
    for e in range(2):
        episode = tokens[6 * e : 6 * e + 6]
        assert (episode[1:4] == FILLER).all() and (episode[4] == CUE).all()
        assert torch.equal(episode[5], episode[0]) and (episode[0] >= 2).all() and (episode[0] < 6).all()
    assert recall.nonzero()[:, 0].unique().tolist() == [4, 10]  # targets right after each cue
    assert torch.equal(y[recall].view(2, 5), tokens[[0, 6]])


class Counter:
    def __init__(self):
        self.steps = 0

    def advance(self, n):
        self.steps += n


def test_every_strategy_gets_the_same_backward_work():
    s = Settings(gaps=(6,), tau=3, sequences=64, batch=8, hidden=4)
    updates = {}
    for name, strategy in (("truncated", Truncated(3)), ("tbptt", TBPTT(3, 9))):
        model = CharRNN(6, Cell.gru, 4)
        calls = []
        model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
        train_one(strategy, 6, s, model, Counter())
        updates[name] = sum(calls)  # steps run forward (= steps backpropagated)
    length = 6 + 2
    assert updates["truncated"] == 64 // 8 * length  # every sequence once
    assert 64 // 8 * length <= updates["tbptt"] < 64 // 8 * length + 3 * length  # replays, so fewer sequences


def test_sweep_writes_strict_json_a_plot_and_a_table(tmp_path):
    result = sweep(Settings(gaps=(2, 3), tau=2, sequences=64, batch=16, hidden=4), quiet=True)
    assert list(result["runs"]) == [label for label, _ in lineup(2)]
    assert all(len(a) == 2 and all(0 <= v <= 1 for v in a) for a in result["runs"].values())
    json_path, png = save(result, tmp_path)
    assert json.loads(json_path.read_text())["chance"] == 0.25 and png.stat().st_size > 0
    assert table(result).row_count == len(lineup(2))


def test_full_learns_what_truncation_cannot():
    """G = 6 > tau = 3: truncated BPTT never connects the symbol to its recall; full BPTT learns it."""
    s = Settings(gaps=(6,), tau=3, symbols=2, sequences=2500, batch=32, hidden=16, lr=0.03)
    got = {}
    for label, strategy in lineup(3):
        if label.startswith(("truncated", "full")):
            torch.manual_seed(0)
            got[label.split()[0]] = accuracy(train_one(strategy, 6, s, CharRNN(4, Cell.gru, 16), Counter()), 6, s)
    assert got["full"] > 0.9 and got["truncated"] < 0.7


@pytest.mark.parametrize("bad", [{"gaps": (0,)}, {"tau": 1}, {"symbols": 1}, {"lr": float("nan")}, {"sequences": 0}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ConfigError):
        Settings(**bad).check()
