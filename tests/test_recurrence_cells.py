"""bpttcli.recurrence.cells: the hand-written BPTT backward against autograd through an unrolled graph."""

from __future__ import annotations

import pytest
import torch

from bpttcli.recurrence import available_paths, path_for, recur, use_kernel, use_path
from bpttcli.unrolled import unrolled_forward
from helpers import (  # noqa: F401
    ALL_CELLS, RECURRENT, final_state_loss, grad_of, leaves_of, make_batch, make_model, random_state,
    rel_err, summed_ce,
)
from recurrence_helpers import CUTS, kernel_inputs


def kernel_and_unrolled(model, x, y, state, xi=None, reference=None):
    """(logits, gradient wrt parameters and initial state) of CE + a function of the final state,
    through the model's kernels and through `reference` (the float64 unrolled graph by default)."""
    reference = reference or model
    results = []
    for net, forward in ((model, model), (reference, lambda *a: unrolled_forward(reference, *a))):
        s = [tuple(t.detach().to(net.head.weight.dtype).requires_grad_() for t in layer) for layer in state]
        logits, final = forward(x, s, xi)[:2]
        loss = summed_ce(logits, y) + final_state_loss(final)
        results.append((logits.detach().double(), grad_of(loss, leaves_of(net, s)).double()))
    return results


@pytest.mark.parametrize("cell", RECURRENT)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("embedding", [0, 3])
@pytest.mark.parametrize("scale", [0.0, 0.5])  # zero or random initial state
def test_kernel_matches_unrolled(cell, layers, embedding, scale):
    model = make_model(cell, layers=layers, embedding=embedding)
    x, y = make_batch()
    (logits, grad), (ref_logits, ref_grad) = kernel_and_unrolled(model, x, y, random_state(model, 3, scale=scale))
    assert rel_err(logits, ref_logits) < 1e-12
    assert rel_err(grad, ref_grad) < 1e-10


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("xi", [CUTS, [0.0] * 9, [1.0] * 9])
def test_xi_matches_scale_grad(cell, layers, xi):
    model = make_model(cell, layers=layers)
    x, y = make_batch()
    (_, grad), (_, ref_grad) = kernel_and_unrolled(model, x, y, random_state(model, 3), xi)
    assert rel_err(grad, ref_grad) < 1e-10


def test_xi_changes_the_gradient():
    """The check above has teeth: a cut mid-window moves the gradient."""
    model = make_model("gru")
    x, y = make_batch()
    state = random_state(model, 3)
    (_, cut), _ = kernel_and_unrolled(model, x, y, state, CUTS)
    (_, full), _ = kernel_and_unrolled(model, x, y, state)
    assert rel_err(cut, full) > 0.05


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("xi", [None, CUTS * 3])
@pytest.mark.parametrize("path", available_paths())
def test_float32_close_to_float64(cell, xi, path):
    reference = make_model(cell, vocab=11, hidden=16, layers=2)
    model = make_model(cell, vocab=11, hidden=16, layers=2, dtype=torch.float32)
    x, y = make_batch(vocab=11, steps=27, batch=4)
    with use_path(path), use_kernel("hand-written"):  # the LSTM's rule would run torch's fused kernel where xi = 1
        assert path_for(model.head.weight).name == path  # the parametrization really runs each path
        (logits, grad), (ref_logits, ref_grad) = kernel_and_unrolled(model, x, y, random_state(model, 4), xi, reference)
    assert rel_err(logits, ref_logits) < 1e-5
    assert rel_err(grad, ref_grad) < 1e-5


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_backward_passes_gradcheck(cell):
    """Finite differences on the Functions themselves, through both outputs (the steps, the final state)."""
    gx, weight, bias, state = kernel_inputs(cell)

    def run(gx, weight, bias, *state):
        out, new = recur(cell, gx, state, weight, bias, None)
        return (out, *new)

    assert torch.autograd.gradcheck(run, (gx, weight, bias, *state))
