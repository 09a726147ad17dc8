"""bpttcli.averaging: the moving average of the weights, swapping it in and out, and its checkpoint entries."""

from __future__ import annotations

import torch
from torch import nn

from bpttcli.averaging import WeightAverage


def test_average_follows_the_warmed_up_decay():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = WeightAverage(model, decay=0.9)
    expected = torch.zeros(1, 2)
    for n in range(1, 30):
        with torch.no_grad():
            model.weight.fill_(float(n))
        average.update(model)
        decay = min(0.9, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * n
    assert torch.allclose(average.shadow[0], expected)


def test_applied_swaps_the_average_in_and_the_trained_weights_back():
    model = nn.Linear(3, 2)
    average = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update(model)
    trained = [p.detach().clone() for p in model.parameters()]
    with average.applied(model):
        assert all(torch.equal(p, s) for p, s in zip(model.parameters(), average.shadow))
        assert not torch.equal(model.weight, trained[0])
    assert all(torch.equal(p, t) for p, t in zip(model.parameters(), trained))


def test_checkpoint_entries_and_restore():
    model = nn.Linear(3, 2)
    average = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    average.update(model)
    saved = average.checkpoint(model)
    assert torch.equal(saved["model"]["weight"], average.shadow[0])
    assert torch.equal(saved["train_model"]["weight"], model.weight)
    restored = WeightAverage(nn.Linear(3, 2), decay=0.5)
    restored.load_state_dict(saved["average"], torch.device("cpu"))
    assert restored.updates == 1 and torch.equal(restored.shadow[0], average.shadow[0])


def test_off_does_nothing():
    model = nn.Linear(3, 2)
    average = WeightAverage(model, decay=0.0)
    average.update(model)
    with average.applied(model):
        pass
    assert average.checkpoint(model) == {} and average.shadow == []
