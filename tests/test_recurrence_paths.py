"""bpttcli.recurrence's matmul paths (portable, mkl) and its reuse of the output gradient's buffer.

Each path is forced in turn and checked against the float64 unrolled reference; the automatic choice
and the fallback when the private MKL ops are missing or wrong are checked directly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bpttcli import recurrence
from bpttcli.model import CharRNN
from bpttcli.recurrence import Cell, available_paths, path_for, use_path
from bpttcli.unrolled import unrolled_forward

CELLS = [Cell.rnn, Cell.gru, Cell.lstm, Cell.linear]
XI = [0.0, 1.3, 1.0, 0.0, 0.7, 2.0, 1.0, 1.1, 0.5, 1.0, 0.0, 1.4]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gradients(model: CharRNN, forward, xi) -> torch.Tensor:
    """Gradient of CE + a function of the final state wrt parameters and initial state, flattened (float64)."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 11, (2, len(XI), 3), generator=g)
    state = [tuple((0.5 * torch.randn(3, 40, generator=g)).to(model.head.weight.dtype).requires_grad_()
                   for _ in layer) for layer in model.init_state(3)]
    logits, final = forward(x, state, xi)[:2]
    loss = F.cross_entropy(logits.reshape(-1, 11), y.reshape(-1), reduction="sum")
    loss = loss + sum((s * s.new_tensor(0.3)).sum() for layer in final for s in layer)
    leaves = list(model.parameters()) + [s for layer in state for s in layer]
    return torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, leaves)]).double()


def models(cell) -> tuple[CharRNN, CharRNN]:
    torch.manual_seed(0)
    model = CharRNN(11, cell, 40, layers=2)
    reference = CharRNN(11, cell, 40, layers=2).double()
    reference.load_state_dict(model.state_dict())
    return model, reference


def rel_err(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("path", available_paths())
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("xi", [None, XI])
def test_each_path_matches_the_float64_reference(path, cell, xi):
    model, reference = models(cell)
    expected = gradients(reference, lambda *a: unrolled_forward(reference, *a), xi)
    with use_path(path):
        assert path_for(model.layers[0].weight_hh).name == path
        got = gradients(model, model, xi)
    assert rel_err(got, expected) < 1e-5


@pytest.mark.parametrize("cell", CELLS)
def test_paths_agree_with_each_other(cell):
    model, _ = models(cell)
    results = []
    for path in available_paths():
        with use_path(path):
            results.append(gradients(model, model, XI))
    assert all(rel_err(r, results[-1]) < 1e-6 for r in results)


def test_automatic_choice():
    small, large = torch.empty(3 * 64, 64), torch.empty(4 * 512, 512)
    fast = "mkl" in available_paths()
    assert path_for(small).name == "portable"
    assert path_for(large).name == ("mkl" if fast else "portable")
    assert path_for(large.double()).name == "portable"  # MKL's packed sgemm is float32 only
    with use_path("mkl"):
        assert path_for(small).name == ("mkl" if fast else "portable")
        assert path_for(large.double()).name == "portable"
    with use_path("portable"):
        assert path_for(large).name == "portable"
    with pytest.raises(ValueError, match="unknown path"):
        with use_path("cuda-graphs"):
            pass


@pytest.fixture
def fresh_probe(monkeypatch):
    """Forget the one-time MKL self-check, so that a test can make it run again (restored afterwards)."""
    monkeypatch.setattr(recurrence, "_mkl_checked", False)
    monkeypatch.setattr(recurrence, "_mkl", None)


def test_missing_mkl_ops_fall_back_to_portable(fresh_probe, monkeypatch):
    def missing(self):
        raise AttributeError("_OpNamespace 'mkl' object has no attribute '_mkl_linear'")

    monkeypatch.setattr(recurrence.MklPath, "__init__", missing)
    assert available_paths() == ["portable"]
    assert path_for(torch.empty(4 * 512, 512)).name == "portable"
    with use_path("mkl"):
        assert path_for(torch.empty(4 * 512, 512)).name == "portable"


def test_wrong_mkl_results_fall_back_to_portable(fresh_probe, monkeypatch):
    if not hasattr(torch.ops.mkl, "_mkl_linear"):
        pytest.skip("this torch has no MKL packed sgemm")
    monkeypatch.setattr(recurrence.MklPath, "project", lambda self, h, w: torch.zeros(h.shape[0], w[1].shape[0]))
    assert available_paths() == ["portable"]


@pytest.mark.parametrize("cell", CELLS)
def test_reusing_the_output_gradient_changes_nothing(cell, monkeypatch):
    """The backward may overwrite the gradient autograd hands it (when it holds the only reference):
    the result is bitwise the same as with a copy, and in a training step the reuse really happens."""
    model, _ = models(cell)
    reused = []
    original = recurrence._grad_buffer

    def spy(grad, like):
        out = original(grad, like)
        reused.append(out is grad)
        return out

    monkeypatch.setattr(recurrence, "_grad_buffer", spy)
    monkeypatch.setattr(recurrence, "_owned_refs", None)  # recount references with the spy's frame in the way
    overwritten = gradients(model, model, XI)
    assert reused[-2:] == [True, True]  # both layers' output gradients were owned (before them: the probe)
    monkeypatch.setattr(recurrence, "OVERWRITE_GRADIENTS", False)
    assert torch.equal(gradients(model, model, XI), overwritten)
