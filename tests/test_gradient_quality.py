"""bpttcli.gradient_quality without training: the scores by hand, and full / truncated / random on a tiny model."""

from __future__ import annotations

import pytest
import torch

from bpttcli import checkpoint
from bpttcli.builders import build_model, load_dataset
from bpttcli.config import load_config
from bpttcli.gradient_quality import gradient_quality, probe, score
from bpttcli.recurrence import Cell
from bpttcli.strategies import Full, RandomTruncation, Schedule, Truncated

from helpers import make_batch, make_model

TAU, DRAWS = 6, 64
WINDOW = 5 * TAU


def test_score_by_hand():
    grads, exact = torch.tensor([[1.0, 0.0], [3.0, 0.0]]), torch.tensor([2.0, 0.0])
    s = score(grads, exact, [[(2, 0), (1, 0)], [(1, 0), (2, 0)]])
    assert s["bias"] == 0 and s["cosine"] == 1
    assert s["rel_sd"] == pytest.approx(2**0.5 / 2) and s["bias_floor"] == pytest.approx(0.5)  # sd / ||g||, / sqrt(M)
    assert s["reach"] == pytest.approx(4 / 6)  # 3 + 1 of the 6 (target, earlier step) pairs of 3 steps
    assert s["memory"] == pytest.approx(2 / 3) and s["backward"] == 1
    assert score(torch.tensor([[2.0, 2.0]]), exact, [[(3, 0)]])["bias"] == pytest.approx(1)  # ||(0, 2)|| / ||(2, 0)||


def test_score_counts_the_context_tbptt_replays():
    """Segments of 2 new steps, the second replaying 1 step before it: 3 + (2 * 1 + 3) of 10 pairs."""
    s = score(torch.tensor([[1.0, 0.0]]), torch.tensor([1.0, 0.0]), [[(2, 0), (2, 1)]])
    assert s["reach"] == pytest.approx(8 / 10) and s["memory"] == pytest.approx(3 / 4)
    assert s["backward"] == pytest.approx(5 / 4)


@pytest.fixture(scope="module")
def probed():
    model = make_model(Cell.gru, hidden=8)
    windows = [make_batch(steps=WINDOW, batch=4, seed=seed) for seed in range(2)]
    strategies = {"full": Full(WINDOW), "truncated": Truncated(TAU),
                  **{s.value: RandomTruncation(TAU, s) for s in Schedule}}
    return probe(model, windows, strategies, DRAWS, torch.Generator().manual_seed(0))


def test_full_is_the_exact_gradient(probed):
    full = probed["full"]
    assert full["bias"] < 1e-12 and full["rel_sd"] == 0 and full["cosine"] == pytest.approx(1)
    assert full["reach"] == 1 and full["memory"] == 1


def test_truncated_is_biased_far_above_its_floor(probed):
    trunc = probed["truncated"]
    assert trunc["rel_sd"] == 0 and trunc["bias_floor"] == 0  # deterministic: one draw is every draw
    assert trunc["bias"] > 0.02 and trunc["cosine"] < 1
    assert trunc["reach"] == pytest.approx(5 * (TAU * (TAU + 1) / 2) / (WINDOW * (WINDOW + 1) / 2))
    assert trunc["memory"] == pytest.approx(1 / 5)
    for schedule in Schedule:  # truncation's bias is beyond what the random strategies' noise could show
        assert trunc["bias"] > 3 * probed[schedule.value]["bias_floor"]


@pytest.mark.parametrize("schedule", list(Schedule))
def test_random_is_unbiased_its_bias_within_its_floor(probed, schedule):
    """With the compensation factor xi = 1/(1 - c_k) removed, the bias is about 10x the floor here."""
    random = probed[schedule.value]
    assert random["rel_sd"] > 0 and random["bias"] < 2 * random["bias_floor"]
    assert probed["truncated"]["reach"] < random["reach"] < 1 and 1 / 5 < random["memory"] <= 1


def test_gradient_quality_probes_the_initial_and_the_trained_weights(tiny_corpus, tmp_path):
    config = load_config(None, {"data.path": str(tiny_corpus()), "data.batch_size": 2, "model.hidden": 6,
                                "strategy.tau": TAU, "train.device": "cpu"})
    data = load_dataset(config, quiet=True)
    trained = build_model(config, len(data.vocab))
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(2)
    checkpoint.save({"model": trained.state_dict()}, tmp_path / "trained.pt")
    strategies = {"full": Full(TAU), "truncated": Truncated(TAU), "random": RandomTruncation(TAU)}
    q = gradient_quality(config, strategies, dict.fromkeys(strategies, tmp_path / "trained.pt"), 3, data, 2, 4)
    assert (q["windows"], q["length"], q["draws"], q["seed"]) == (2, WINDOW, 4, 3)
    rows = {(r["strategy"], r["at"]): r for r in q["rows"]}
    assert list(rows) == [(s, at) for s in strategies for at in ("initial", "trained")]
    assert rows["full", "trained"]["bias"] < 1e-6 and rows["truncated", "initial"]["bias"] > 0
    assert rows["truncated", "trained"]["bias"] != rows["truncated", "initial"]["bias"]  # other weights, other bias
    again = gradient_quality(config, strategies, dict.fromkeys(strategies, tmp_path / "trained.pt"), 3, data, 2, 4)
    assert again == q  # the seed fixes the initial weights, the windows and the draws
