"""bpttcli.recurrence.kernels: torch's fused kernel where xi = 1, forced on the CPU, against the unrolled
reference and the hand-written BPTT (weight drop, locked dropout, --recompute, TBPTT's replay); the rule."""

from __future__ import annotations

import pytest
import torch

from bpttcli.engine import Replay, forward_loss, window_gradient
from bpttcli.model import CharRNN
from bpttcli.recurrence import Cell, cells, describe, kernel_for, use_kernel
from bpttcli.recurrence.kernels import fused_by_rule
from bpttcli.strategies import TBPTT, Segment
from bpttcli.unrolled import unrolled_forward
from helpers import RECURRENT, final_state_loss, grad_of, leaves_of, make_batch, random_state, rel_err, summed_ce
from recurrence_helpers import gradients, models

HAND = {Cell.rnn: cells.ElmanRNN, Cell.gru: cells.GRU, Cell.lstm: cells.LSTM}


def runs_hand_written(model: CharRNN, xi=None) -> bool:
    """Whether the model's first layer ran the hand-written Function (read from the output's autograd node)."""
    x, _ = make_batch(vocab=model.head.out_features, steps=4, batch=2)
    out = model.layers[0](x, model.init_state(2)[0], xi)[0]
    return isinstance(out.grad_fn, HAND[model.cell]._backward_cls)


@pytest.mark.parametrize("cell", RECURRENT)
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_fused_matches_the_unrolled_reference(cell, dtype, tolerance):
    model, reference = models(cell)
    model.to(dtype)
    expected = gradients(reference, lambda *a: unrolled_forward(reference, *a), None)
    with use_kernel("fused"):
        assert not runs_hand_written(model)
        got = gradients(model, model, None)
    assert rel_err(got, expected) < tolerance


def regularised(cell) -> CharRNN:
    torch.manual_seed(0)
    model = CharRNN(11, cell, 6, layers=2, embedding=4, weight_drop=0.4, locked_dropout=0.3).double().train()
    model.draw_masks(3)
    return model


def both_kernels(work) -> tuple[torch.Tensor, torch.Tensor]:
    """work() under the fused and the hand-written kernel: two flattened float64 gradients."""
    results = []
    for kernel in ("fused", "hand-written"):
        with use_kernel(kernel):
            results.append(work())
    return results


@pytest.mark.parametrize("cell", RECURRENT)
def test_fused_keeps_weight_drop_and_locked_dropout(cell):
    model = regularised(cell)
    assert all(layer.weight_mask is not None for layer in model.layers)
    x, y = make_batch(vocab=11, steps=9, batch=3)
    state = random_state(model, 3)

    def grad():
        logits, final = model(x, state)
        return grad_of(summed_ce(logits, y) + final_state_loss(final), leaves_of(model, state))

    fused, hand = both_kernels(grad)
    assert rel_err(fused, hand) < 1e-10


@pytest.mark.parametrize("cell", RECURRENT)
def test_fused_under_recompute_gives_the_same_gradient(cell):
    model = regularised(cell)
    x, y = make_batch(vocab=11, steps=17, batch=3)

    def grad(recompute):
        model.zero_grad(set_to_none=True)
        loss, _ = forward_loss(model, x, y, model.init_state(3), None, recompute)
        loss.backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    with use_kernel("fused"):
        plain, recomputed = grad(False), grad(True)
    assert rel_err(recomputed, plain) < 1e-10
    assert rel_err(plain, both_kernels(lambda: grad(False))[1]) < 1e-10


@pytest.mark.parametrize("cell", RECURRENT)
def test_fused_replays_tbptt_context(cell):
    model = regularised(cell)
    x, y = make_batch(vocab=11, steps=20, batch=3)

    def grad():
        return window_gradient(model, x, y, model.init_state(3), TBPTT(5, 12), torch.Generator(), 1.0)

    fused, hand = both_kernels(grad)
    assert rel_err(fused, hand) < 1e-10
    replay = Replay()
    with use_kernel("fused"):
        replay.forward(model, x[:5], y[:5], model.init_state(3), Segment(5, context=7))
    assert replay.x is not None  # the context the next segment runs again was kept


def test_the_rule():
    cpu32 = torch.empty(8, 2)
    assert kernel_for(Cell.lstm, cpu32, None) == "fused"  # oneDNN's LSTM
    assert kernel_for(Cell.lstm, cpu32, [0.0, 1.5]) == "hand-written"  # xi != 1: only the hand-written applies it
    assert kernel_for(Cell.lstm, cpu32.double(), None) == "hand-written"
    for cell in (Cell.gru, Cell.rnn):
        assert kernel_for(cell, cpu32, None) == "hand-written"  # torch has no fused CPU GRU/RNN
        assert fused_by_rule(cell, torch.device("cuda"), torch.float32)  # cuDNN
    assert kernel_for(Cell.linear, cpu32, None) == "hand-written"
    with use_kernel("fused"):
        assert kernel_for(Cell.gru, cpu32, None) == "fused"
        assert kernel_for(Cell.gru, cpu32, [0.0, 1.5]) == "hand-written"
        assert kernel_for(Cell.linear, cpu32, None) == "hand-written"
    with use_kernel("hand-written"):
        assert kernel_for(Cell.lstm, cpu32, None) == "hand-written"
    with pytest.raises(ValueError, match="unknown kernel"):
        with use_kernel("cudnn"):
            pass


def test_the_rule_is_what_runs():
    lstm, gru = CharRNN(7, Cell.lstm, 8), CharRNN(7, Cell.gru, 8)
    assert not runs_hand_written(lstm) and runs_hand_written(lstm, [0.0, 1.0, 2.0, 1.0])
    assert runs_hand_written(gru) and runs_hand_written(lstm.double())
    cpu = torch.device("cpu")
    assert describe(Cell.lstm, cpu).startswith("fused oneDNN where xi = 1, else hand-written")
    assert describe(Cell.gru, cpu).startswith("hand-written")
    with use_kernel("fused"):
        assert describe(Cell.gru, cpu).startswith("fused torch where xi = 1, else hand-written")
