"""bpttcli.model: PyTorch's parameter layout, the input projection, states and dropout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bpttcli.model import detach_state
from bpttcli.recurrence import Cell
from bpttcli.theory import linear_rnn_forward
from helpers import (  # noqa: F401
    RECURRENT, final_state_loss, grad_of, make_batch, make_model, random_state, rel_err, summed_ce,
)

TORCH_NN = {Cell.rnn: nn.RNN, Cell.gru: nn.GRU, Cell.lstm: nn.LSTM}
NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def torch_twin(model):
    """nn.RNN/GRU/LSTM carrying the model's recurrent weights, parameter for parameter."""
    net = TORCH_NN[model.cell](model.layers[0].weight_ih.shape[1], model.hidden, len(model.layers)).double()
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            for name in NAMES:
                getattr(net, f"{name}_l{i}").copy_(getattr(layer, name))
    return net


def twin_forward(model, net, x, state):
    """The model's forward with its recurrent layers replaced by `net`: logits and per-layer final state."""
    h0 = tuple(torch.stack(s) for s in zip(*state))  # (h [L, B, H], c [L, B, H])
    out, final = net(F.one_hot(x, model.head.out_features).double(), h0 if model.cell is Cell.lstm else h0[0])
    final = final if model.cell is Cell.lstm else (final,)
    return model.head(out), [tuple(s[i] for s in final) for i in range(len(state))]


@pytest.mark.parametrize("cell", RECURRENT)
@pytest.mark.parametrize("layers", [1, 2])
def test_weights_interchangeable_with_torch_nn(cell, layers):
    model = make_model(cell, layers=layers)
    net = torch_twin(model)
    x, y = make_batch()
    state = random_state(model, 3)
    results = []
    twin = lambda *args: twin_forward(model, net, *args)  # noqa: E731
    for forward, params in ((model, model.layers.parameters()), (twin, net.parameters())):
        logits, final = forward(x, state)
        leaves = list(params) + list(model.head.parameters()) + [s for layer in state for s in layer]
        results.append((logits, grad_of(summed_ce(logits, y) + final_state_loss(final), leaves)))
    (logits, grad), (their_logits, their_grad) = results
    assert rel_err(logits, their_logits) < 1e-12
    assert rel_err(grad, their_grad) < 1e-10


@pytest.mark.parametrize("embedding", [0, 4])
def test_projection_is_the_input_layer(embedding):
    model = make_model(Cell.gru, embedding=embedding)
    x, _ = make_batch()
    layer = model.layers[0]
    inputs = model.embed(x) if embedding else F.one_hot(x, 7).double()
    expected = inputs @ layer.weight_ih.t() + layer.bias_ih
    assert rel_err(layer.project(model.embed(x) if embedding else x), expected) < 1e-14


def test_linear_cell_is_the_chapter_forward():
    model = make_model(Cell.linear)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name:
                p.zero_()
    x, _ = make_batch()
    state = random_state(model, 3)
    layer = model.layers[0]
    weights = layer.weight_ih, layer.weight_hh, model.head.weight
    hs, o = linear_rnn_forward(F.one_hot(x, 7).double(), state[0][0], *weights)
    logits, final = model(x, state)
    assert rel_err(logits, o) < 1e-12
    assert rel_err(final[0][0], hs[-1]) < 1e-12


def test_init_and_detach_state():
    model = make_model(Cell.lstm, hidden=6, layers=2)
    state = model.init_state(4)
    assert [len(layer) for layer in state] == [2, 2]
    assert all(t.shape == (4, 6) and t.dtype == torch.float64 and not t.any() for layer in state for t in layer)
    assert [len(layer) for layer in make_model(Cell.rnn, layers=3).init_state(2)] == [1, 1, 1]
    live = [tuple(2 * t for t in layer) for layer in random_state(model, 4)]
    detached = detach_state(live)
    assert all(not d.requires_grad and torch.equal(d, t) for a, b in zip(detached, live) for d, t in zip(a, b))


def test_dropout_only_while_training():
    x, _ = make_batch()
    plain = make_model(Cell.rnn, layers=2)
    model = make_model(Cell.rnn, layers=2)
    model.drop.p = 0.5
    model.eval()
    assert torch.equal(model(x, model.init_state(3))[0], plain(x, plain.init_state(3))[0])
    model.train()
    assert not torch.allclose(model(x, model.init_state(3))[0], plain(x, plain.init_state(3))[0])


def test_stream_dropout_is_nn_dropout_and_cuts_the_global_batchs_mask_into_columns():
    from bpttcli.model import StreamDropout

    x = torch.randn(7, 6, 33, dtype=torch.float64)
    torch.manual_seed(1)
    reference, after = nn.Dropout(0.3)(x), torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(StreamDropout(0.3)(x), reference) and torch.equal(torch.rand(3), after)  # same RNG use
    for columns in (slice(0, 3), slice(3, 6)):  # each of 2 processes: its streams of the 6-stream mask
        shard = StreamDropout(0.3)
        shard.streams, shard.columns = 6, columns
        torch.manual_seed(1)
        assert torch.equal(shard(x[:, columns]), reference[:, columns]) and torch.equal(torch.rand(3), after)
    assert torch.equal(StreamDropout(0.3).eval()(x), x)
