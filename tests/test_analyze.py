"""`bptt analyze`: the chapter's theory executed, gradient flow through time, and the command on tiny settings."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import make_batch, make_model

from bpttcli import analyze, theory
from bpttcli.recurrence import Cell

TEXT = "the time traveller for so it will be convenient to speak of him was expounding a recondite matter to us " * 20


# ------------------------------------------------------------------ the chapter's theory


def test_hand_written_linear_rnn_gradients_match_autograd():
    assert theory.gradient_check(seed=0) < 1e-12
    assert theory.gradient_check(seed=1, steps=30, batch=1, sizes=(3, 4, 2)) < 1e-12


@pytest.mark.parametrize("k", [1, 2, 3, 7, 20])
def test_exercise_1_powers_of_a_symmetric_matrix_have_powered_eigenvalues(k):
    m = theory.symmetric_matrix(12, torch.Generator().manual_seed(k))
    assert torch.allclose(m, m.t())
    assert theory.power_eigenvalue_error(m, k) < 1e-12


def test_exercise_2_powers_turn_a_random_vector_to_the_top_eigenvector():
    g = torch.Generator().manual_seed(0)
    m = theory.symmetric_matrix(10, g)
    angles = theory.alignment_angles(m, torch.randn(10, generator=g, dtype=torch.float64), 150)
    assert angles[0] > 0.1 and angles[-1] < 1e-3
    assert bool((angles[1:] <= angles[:-1] + 1e-12).all())  # the angle never grows
    late = torch.tan(angles[-40:])
    assert (late[1:] / late[:-1]).mean().item() == pytest.approx(theory.alignment_rate(m), rel=1e-3)


# ------------------------------------------------------------------ gradient flow


def test_gradient_curve_is_the_linear_recursion_applied_backwards():
    """For the linear cell dl_T/dh_{T-k} = (W_hh^T)^k dl_T/dh_T exactly: checks k's direction and the norms."""
    model = make_model(Cell.linear, hidden=6)
    x, y = make_batch(steps=8, batch=1)
    curve = analyze.gradient_curve(model, [(x, y)])
    logits, _ = model(x, model.init_state(1))
    dlogits = torch.softmax(logits[-1, 0], -1) - F.one_hot(y[-1, 0], logits.shape[-1])
    g = model.head.weight.detach().t() @ dlogits.detach()  # dl_T/dh_T
    w = model.layers[0].weight_hh.detach()
    expected = torch.stack([(torch.linalg.matrix_power(w.t(), k) @ g).norm() for k in range(8)])
    assert torch.allclose(curve, expected, rtol=1e-9)


def test_decay_fit_and_effective_horizon_of_a_geometric_curve():
    curve = 3.0 * 0.9 ** torch.arange(101, dtype=torch.float64)
    assert analyze.fit_decay(curve) == pytest.approx(0.9)
    assert analyze.effective_horizon(curve) == math.ceil(math.log(0.01) / math.log(0.9))  # 44
    assert analyze.effective_horizon(curve[:30]) is None


def test_spectrum_splits_gated_cells_into_their_gate_blocks():
    model = make_model(Cell.lstm, hidden=5)
    spec = analyze.spectrum(model)
    assert list(spec) == ["i", "f", "g", "o"]
    for block in spec.values():
        assert len(block["singular_values"]) == 5
        assert block["spectral_radius"] <= block["singular_values"][0] + 1e-12
    assert list(analyze.spectrum(make_model(Cell.gru, hidden=5))) == ["r", "z", "n"]


def test_step_jacobian_of_the_elman_rnn_is_diag_of_tanh_derivative_times_w_hh():
    model = make_model(Cell.rnn, hidden=6)
    x, _ = make_batch(steps=1, batch=3)
    state = [(0.5 * torch.randn(3, 6, dtype=torch.float64),)]
    jac, new_state = analyze.step_jacobian(model, x, state)
    h = new_state[0][0]
    expected = (1 - h**2)[:, :, None] * model.layers[0].weight_hh.detach()
    assert torch.allclose(jac, expected, atol=1e-12)


def test_step_jacobian_of_the_lstm_covers_h_and_c():
    model = make_model(Cell.lstm, hidden=4, layers=2)
    x, _ = make_batch(steps=1, batch=2)
    jac, _ = analyze.step_jacobian(model, x, model.init_state(2))
    assert jac.shape == (2, 8, 8)


# ------------------------------------------------------------------ the command


@pytest.fixture
def corpus(tiny_corpus):
    return tiny_corpus(TEXT)


def test_analyze_fresh_weights_writes_table_json_and_png(bptt, corpus, tmp_path):
    result = bptt("analyze", "--init", "--model", "gru", "--hidden", "8", "--data", corpus, "--horizon", "10",
                  "--windows", "2", "--streams", "3", "--out", "out")
    assert "effective horizon:" in result.output
    report = json.loads((tmp_path / "out/analysis.json").read_text())
    assert report["cell"] == "gru" and report["source"] == "fresh weights"
    assert len(report["gradient_norms"]) == 11 and list(report["spectrum"]) == ["r", "z", "n"]
    assert len(report["jacobian_norms"]) == 11
    assert (report["streams"], report["jacobian_streams"]) == (3, 3)  # what the plot's legend says it averages
    assert (tmp_path / "out/analysis.png").read_bytes()[:4] == b"\x89PNG"


def test_analyze_a_trained_run_writes_into_the_run_directory(bptt, corpus, tmp_path):
    bptt("train", "--data", corpus, "--hidden", "8", "--batch-size", "4", "--num-steps", "10", "--max-steps", "2",
         "--run-dir", "run", "-q")
    bptt("analyze", "run", "--horizon", "8", "--windows", "1", "--streams", "2")
    report = json.loads((tmp_path / "run/analysis.json").read_text())
    assert report["source"].endswith("best.pt") and len(report["gradient_norms"]) == 9
    assert report["gradient_norms"][0] > 0
    assert (report["streams"], report["jacobian_streams"]) == (2, 2)
    assert (tmp_path / "run/analysis.png").is_file()


def test_the_jacobian_legend_says_how_many_of_the_streams_it_averages(tmp_path, monkeypatch):
    import bpttcli.analyze as lib

    captured = {}

    def keep(path, panels, title=""):
        captured["labels"] = [s.label for s in panels[2].series]
        captured["titles"] = [p.title for p in panels]

    monkeypatch.setattr(lib, "plot_panels", keep)
    a = lib.Analysis("x", "gru", 4, [1.0, 0.5, 0.25], 0.5, 1, {"r": {"singular_values": [1.0], "spectral_radius": 1.0}},
                     [0.9, 0.8], -0.1, jacobian_streams=4, streams=16)
    lib.plot(a, tmp_path / "a.png")
    assert captured["labels"][0] == "mean over the first 4 of 16 streams"
    assert all("$" in title for title in captured["titles"][:2])  # mathtext: rendered as math, not as dl_T/dh_{T-k}


def test_analyze_theory_prints_the_exercises_and_writes_theory_png(bptt, tmp_path):
    result = bptt("analyze", "--theory", "--horizon", "30", "--out", "th")
    assert "hand-written BPTT - autograd" in result.output and "30" in result.output
    assert (tmp_path / "th/theory.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args", [
    [],  # nothing to analyse
    ["--init", "--theory"],
    ["run", "--init"],
    ["run", "--model", "gru"],  # model options describe fresh weights only
    ["--init", "--horizon", "0"],
])
def test_analyze_usage_errors_are_one_line(bptt_error, args):
    assert bptt_error("analyze", *args, code=2).startswith("error: ")


def test_analyze_horizon_longer_than_the_validation_text_is_a_data_error(bptt_error, corpus):
    line = bptt_error("analyze", "--init", "--hidden", "4", "--data", corpus, "--horizon", "5000", code=3)
    assert "lower --horizon" in line


@pytest.mark.parametrize("args, says", [
    (["--theory", "--horizon", "-5"], "--horizon, --windows and --streams must be >= 1"),
    (["--theory", "--horizon", "20000"], "--horizon must be at most 10,000 with --theory"),
    (["--theory", "--seed", str(2**63)], "--seed must be an integer in [0, 2^63)"),
    (["--init", "--seed", str(2**64)], "--seed must be an integer in [0, 2^63)"),
    (["--init", "--hidden", "1000000"], "model.hidden=1000000 with model.layers=1 needs ~"),
])
def test_analyze_values_that_used_to_crash_are_one_line_errors(bptt_error, corpus, tmp_path, args, says):
    assert says in bptt_error("analyze", *args, "--data", corpus, "--out", "out", code=2, alone=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore:Data has no positive values")
def test_analysis_json_is_strict(tmp_path):
    result = analyze.Analysis("x", "rnn", 4, [1.0, math.inf], math.nan, None, {"W_hh": {"singular_values": [math.nan],
                              "spectral_radius": 1.0}}, [math.inf], -math.inf, 1, 1)
    path, _ = analyze.save(result, tmp_path)
    report = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in analysis.json"))
    assert report["decay"] is None and report["gradient_norms"] == [1.0, None] and report["lyapunov"] is None
