"""bpttcli.recurrence.matmul: the per-step products' paths (portable, mkl, onednn).

Each path is forced in turn and checked against the float64 unrolled reference; the automatic choice
and the fallback when the private MKL ops are missing or wrong are checked directly.
"""

from __future__ import annotations

import pytest
import torch

from bpttcli.recurrence import available_paths, matmul, path_for, use_kernel, use_path
from bpttcli.unrolled import unrolled_forward
from helpers import ALL_CELLS, rel_err
from recurrence_helpers import XI, gradients, models


@pytest.mark.parametrize("path", available_paths())
@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("xi", [None, XI])
def test_each_path_matches_the_float64_reference(path, cell, xi):
    model, reference = models(cell)
    expected = gradients(reference, lambda *a: unrolled_forward(reference, *a), xi)
    with use_path(path), use_kernel("hand-written"):
        assert path_for(model.layers[0].weight_hh).name == path
        got = gradients(model, model, xi)
    assert rel_err(got, expected) < 1e-5


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_paths_agree_with_each_other(cell):
    model, _ = models(cell)
    results = []
    for path in available_paths():
        with use_path(path):
            results.append(gradients(model, model, XI))
    assert all(rel_err(r, results[-1]) < 1e-6 for r in results)


def test_automatic_choice():
    small, large = torch.empty(3 * 64, 64), torch.empty(4 * 512, 512)
    fast, onednn = "mkl" in available_paths(), "onednn" in available_paths()
    assert path_for(small).name == ("onednn" if onednn else "portable")
    assert path_for(large).name == ("onednn" if onednn else "mkl" if fast else "portable")
    assert path_for(large.double()).name == "portable"  # the private paths are float32 only
    with use_path("onednn"):
        assert path_for(large.double()).name == "portable"
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
    """Forget the one-time self-checks, so that a test can make them run again (restored afterwards)."""
    monkeypatch.setattr(matmul, "_checked", {})


def _missing(self):
    raise AttributeError("_OpNamespace 'mkl' object has no attribute '_mkl_linear'")


def test_missing_private_ops_fall_back_to_portable(fresh_probe, monkeypatch):
    monkeypatch.setattr(matmul.MklPath, "__init__", _missing)
    monkeypatch.setattr(matmul.OneDnnPath, "__init__", _missing)
    assert available_paths() == ["portable"]
    assert path_for(torch.empty(4 * 512, 512)).name == "portable"
    for name in ("mkl", "onednn"):
        with use_path(name):
            assert path_for(torch.empty(4 * 512, 512)).name == "portable"


def test_missing_onednn_ops_fall_back_to_mkl(fresh_probe, monkeypatch):
    if not hasattr(torch.ops.mkl, "_mkl_linear"):
        pytest.skip("this torch has no MKL packed sgemm")
    monkeypatch.setattr(matmul.OneDnnPath, "__init__", _missing)
    assert available_paths() == ["mkl", "portable"]
    assert path_for(torch.empty(4 * 512, 512)).name == "mkl"
    assert path_for(torch.empty(3 * 64, 64)).name == "portable"


def test_wrong_mkl_results_fall_back_to_portable(fresh_probe, monkeypatch):
    if not hasattr(torch.ops.mkl, "_mkl_linear"):
        pytest.skip("this torch has no MKL packed sgemm")
    monkeypatch.setattr(matmul.MklPath, "project", lambda self, h, w: torch.zeros(h.shape[0], w[1].shape[0]))
    monkeypatch.setattr(matmul.OneDnnPath, "__init__", _missing)
    assert available_paths() == ["portable"]


def test_wrong_onednn_carry_fails_the_self_check(fresh_probe, monkeypatch):
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        pytest.skip("this torch has no oneDNN linear")
    monkeypatch.setattr(matmul.OneDnnPath, "carry", lambda self, dst, d, w, alpha: None)
    assert "onednn" not in available_paths()
