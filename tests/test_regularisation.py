"""The model's recurrent regularisation (weight drop, locked dropout, embedding dropout): the hand-written
BPTT with the masks equals the unrolled autograd reference with the same masks."""

from __future__ import annotations

import pytest
import torch

from bpttcli.model import CharRNN
from bpttcli.recurrence import Cell
from bpttcli.unrolled import unrolled_forward
from helpers import RECURRENT, final_state_loss, grad_of, leaves_of, make_batch, random_state, rel_err, summed_ce

XI = [0.0, 1.0, 1.5, 0.0, 2.0, 1.0, 1.0, 0.5, 1.0]


def regularised_model(cell, embedding=0, layers=2):
    torch.manual_seed(0)
    return CharRNN(7, cell, hidden=5, layers=layers, embedding=embedding, weight_drop=0.4, locked_dropout=0.3,
                   embed_dropout=0.2 if embedding else 0.0).double()


@pytest.mark.parametrize("cell", RECURRENT)
@pytest.mark.parametrize("embedding", [0, 4])
def test_kernel_with_masks_matches_the_unrolled_reference(cell, embedding):
    model = regularised_model(cell, embedding)
    x, y = make_batch(7, 9, 3)
    state = random_state(model, 3)
    model.train()
    model.draw_masks(3)
    assert all(layer.weight_mask is not None for layer in model.layers)
    logits, final = model(x, state, XI)
    got = grad_of(summed_ce(logits, y) + final_state_loss(final), leaves_of(model, state))
    logits_ref, final_ref, _ = unrolled_forward(model, x, state, XI)
    expected = grad_of(summed_ce(logits_ref, y) + final_state_loss(final_ref), leaves_of(model, state))
    assert rel_err(logits, logits_ref) < 1e-12
    assert rel_err(got, expected) < 1e-10


def test_masks_regularise_training_only_and_change_per_segment():
    model = regularised_model(Cell.gru, embedding=4)
    x, _ = make_batch(7, 9, 3)
    state = model.init_state(3)
    model.eval()
    clean = model(x, state)[0]
    model.train()
    model.draw_masks(3)
    first = model(x, state)[0]
    assert not torch.allclose(first, clean)
    assert torch.equal(model(x, state)[0], first)  # the same masks until the next draw
    model.draw_masks(3)
    assert not torch.allclose(model(x, state)[0], first)
    model.eval()
    assert torch.equal(model(x, state)[0], clean)  # evaluation never sees a mask


def test_locked_dropout_is_the_same_at_every_step():
    model = CharRNN(7, Cell.rnn, hidden=64, locked_dropout=0.5).double()
    model.train()
    model.draw_masks(2)
    mask = model.locked_masks[0]
    assert mask.shape == (2, 64) and set(mask.unique().tolist()) == {0.0, 2.0}
    hidden = torch.ones(5, 2, 64, dtype=torch.float64)
    dropped = model.locked(0, hidden)
    assert all(torch.equal(dropped[t], dropped[0]) for t in range(5))


def test_weight_drop_drops_connections_of_w_hh():
    model = CharRNN(7, Cell.lstm, hidden=32, weight_drop=0.5).double()
    model.train()
    model.draw_masks(2)
    layer = model.layers[0]
    w = layer.recurrent_weight()
    dropped = (w == 0) & (layer.weight_hh != 0)
    assert 0.35 < dropped.double().mean() < 0.65
    assert torch.allclose(w[~dropped], 2 * layer.weight_hh[~dropped])


def test_no_rates_draw_no_masks_and_no_random_numbers():
    model = CharRNN(7, Cell.gru, hidden=8).double()
    model.train()
    before = torch.get_rng_state()
    model.draw_masks(2)
    assert torch.equal(torch.get_rng_state(), before)
    assert model.layers[0].weight_mask is None and model.locked_masks == [None]


def test_a_process_training_some_columns_gets_those_columns_of_the_global_batchs_masks():
    whole = regularised_model(Cell.lstm, embedding=4)
    whole.train()
    torch.manual_seed(3)
    whole.draw_masks(6)
    for columns in (slice(0, 3), slice(3, 6)):  # 2 processes with 3 of the 6 streams each
        part = regularised_model(Cell.lstm, embedding=4)
        part.train()
        part.train_columns(6, columns)
        torch.manual_seed(3)
        part.draw_masks(3)
        assert all(torch.equal(a.weight_mask, b.weight_mask) for a, b in zip(part.layers, whole.layers))
        assert all(torch.equal(a, b[columns]) for a, b in zip(part.locked_masks, whole.locked_masks))
        assert torch.equal(part.embed_mask, whole.embed_mask)
