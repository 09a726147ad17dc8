"""bpttcli.recurrence: the hand-written BPTT backward against autograd through an unrolled graph."""

from __future__ import annotations

import pytest
import torch

from bpttcli.recurrence import GATES, available_paths, path_for, recur, use_path
from bpttcli.unrolled import unrolled_forward
from helpers import (  # noqa: F401
    ALL_CELLS, RECURRENT, final_state_loss, grad_of, leaves_of, make_batch, make_model, random_state,
    rel_err, summed_ce,
)

CUTS = [0.0, 1.7, 1.0, 0.0, 0.4, 2.5, 1.0, 0.0, 1.3]  # xi per step; zeros cut the chain mid-window


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
    with use_path(path):
        assert path_for(model.head.weight).name == path  # the parametrization really runs each path
        (logits, grad), (ref_logits, ref_grad) = kernel_and_unrolled(model, x, y, random_state(model, 4), xi, reference)
    assert rel_err(logits, ref_logits) < 1e-5
    assert rel_err(grad, ref_grad) < 1e-5


def kernel_inputs(cell, steps=4, batch=2, hidden=3):
    """Random float64 leaves for `recur`: gx [T, B, G], weight, bias and the initial state."""
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return (0.5 * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()

    gates = GATES[cell] * hidden
    state = tuple(randn(batch, hidden) for _ in range(2 if cell == "lstm" else 1))
    return randn(steps, batch, gates), randn(gates, hidden), randn(gates), state


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_backward_passes_gradcheck(cell):
    """Finite differences on the Functions themselves, through both outputs (the steps, the final state)."""
    gx, weight, bias, state = kernel_inputs(cell)

    def run(gx, weight, bias, *state):
        out, new = recur(cell, gx, state, weight, bias, None)
        return (out, *new)

    assert torch.autograd.gradcheck(run, (gx, weight, bias, *state))


def output_gradient(cell, hook=None, given=None):
    """Run `recur` with cuts and backpropagate c (a fixed [T, B, H] tensor) into its output steps."""
    gx, weight, bias, state = kernel_inputs(cell)
    out, _ = recur(cell, gx, state, weight, bias, CUTS[:4])
    c = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    if hook:
        out.register_hook(hook)
    sibling = torch.zeros_like(out, requires_grad=True)
    if given is None:
        ((out + sibling) * c).sum().backward()  # autograd hands one tensor, c, to both branches
    else:
        out.backward(given)
    return c, sibling.grad, weight.grad


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_backward_leaves_shared_gradients_intact(cell):
    """The output gradient may be held elsewhere too: never overwrite it, and the result must not depend on it."""
    c, sibling, weight = output_gradient(cell)
    assert torch.equal(sibling, c)
    given = c.clone()
    assert torch.equal(output_gradient(cell, given=given)[2], weight) and torch.equal(given, c)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_backward_leaves_a_hook_kept_gradient_intact(cell):
    seen = []
    c, _, weight = output_gradient(cell, hook=seen.append)
    assert torch.equal(output_gradient(cell)[2], weight)  # holds: the parameter gradients are right
    assert torch.equal(seen[0], c)  # fails: the kept tensor was reused as the backward's buffer
