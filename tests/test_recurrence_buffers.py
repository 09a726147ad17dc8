"""bpttcli.recurrence.buffers: the backward's reuse of the output gradient's buffer.

It may overwrite only a gradient autograd handed over alone: one held elsewhere too (a sibling
branch, the caller, a hook) stays intact, and reusing changes no result.
"""

from __future__ import annotations

import pytest
import torch

from bpttcli.recurrence import buffers, recur
from helpers import ALL_CELLS
from recurrence_helpers import CUTS, XI, gradients, kernel_inputs, models


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
    assert torch.equal(output_gradient(cell)[2], weight)  # the hook changes no parameter gradient
    assert torch.equal(seen[0], c)  # and the tensor it kept was not reused as the backward's buffer


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_reusing_the_output_gradient_changes_nothing(cell, monkeypatch):
    """The backward may overwrite the gradient autograd hands it (when it holds the only reference):
    the result is bitwise the same as with a copy, and in a training step the reuse really happens."""
    model, _ = models(cell)
    reused = []
    original = buffers.grad_buffer

    def spy(grad, like):
        out = original(grad, like)
        reused.append(out is grad)
        return out

    monkeypatch.setattr(buffers, "grad_buffer", spy)
    monkeypatch.setattr(buffers, "_owned_refs", None)  # recount references with the spy's frame in the way
    overwritten = gradients(model, model, XI)
    assert reused[-2:] == [True, True]  # both layers' output gradients were owned (before them: the probe)
    monkeypatch.setattr(buffers, "OVERWRITE_GRADIENTS", False)
    before = len(reused)
    assert torch.equal(gradients(model, model, XI), overwritten)
    assert len(reused) > before and not any(reused[before:])  # switched off: every buffer was a copy
