"""bpttcli.engine: window gradients per strategy against exact references, checkpointing, evaluation."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from bpttcli import engine
from bpttcli.engine import evaluate, forward_loss, segments, window_gradient
from bpttcli.memory import allocation_peak
from bpttcli.model import CharRNN, detach_state
from bpttcli.recurrence import Cell
from bpttcli.strategies import Full, RandomTruncation, Schedule, Truncated
from bpttcli.theory import linear_rnn_gradients
from helpers import (  # noqa: F401
    ALL_CELLS, final_state_loss, grad_of, leaves_of, make_batch, make_model, random_state, rel_err,
)

T, TAU, V, H, B = 12, 3, 5, 4, 2  # the tiny window of the statistical tests
DRAWS = 3000


def flat_grad(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def long_memory_model(cell):
    """A tiny model whose recurrent weights are orthogonal blocks (gain 1): gradients reach far back."""
    model = make_model(cell, vocab=V, hidden=H)
    q = torch.linalg.qr(torch.randn(H, H, generator=torch.Generator().manual_seed(3), dtype=torch.float64))[0]
    with torch.no_grad():
        for block in model.layers[0].weight_hh.split(H):
            block.copy_(q)
    return model


def window(cell):
    model = long_memory_model(cell)
    x, y = make_batch(V, T, B)
    return model, x, y, random_state(model, B, scale=0.3)


def gradient(model, x, y, state, strategy, seed=0):
    return window_gradient(model, x, y, detach_state(state), strategy, torch.Generator().manual_seed(seed), 1.0)


@functools.cache
def draws(schedule):
    """DRAWS segmentations of one window by `random`, seed i being the i-th: per draw, (start, xi) pairs."""
    strategy = RandomTruncation(TAU, schedule)
    return [
        tuple((part.start, tuple(seg.xi.tolist())) for part, seg in segments(strategy, T, torch.Generator().manual_seed(seed)))
        for seed in range(DRAWS)
    ]


def draw_gradients(model, x, y, state, draws):
    """Each draw's window gradient as the sum of its segments' gradients, the segment's state being
    the (detached) forward state at its start: what window_gradient computes, with each distinct
    segment evaluated once so that thousands of draws take a fraction of a second."""
    with torch.no_grad():
        states = [detach_state(state)] + [detach_state(model(x[:t], state)[1]) for t in range(1, T)]
    cache = {}

    def segment(start, xi):
        if (start, xi) not in cache:
            model.zero_grad(set_to_none=True)
            part = slice(start, start + len(xi))
            forward_loss(model, x[part], y[part], states[start], list(xi))[0].backward()
            cache[start, xi] = flat_grad(model)
        return cache[start, xi]

    return torch.stack([sum(segment(*s) for s in draw) for draw in draws])


def z_scores(samples, exact):
    """|mean - exact| per coordinate in units of 5 standard errors (a floor covers zero-variance ones)."""
    stderr = samples.std(0) / len(samples) ** 0.5
    return (samples.mean(0) - exact).abs() / (5 * stderr + 1e-9 * exact.abs().max())


def test_full_matches_chapter_recursion():
    model = make_model(Cell.linear, vocab=V, hidden=H)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name:
                p.zero_()
    x, y = make_batch(V, T, B)
    state = random_state(model, B)
    window_gradient(model, x, y, detach_state(state), Full(T), torch.Generator(), 1.0)
    layer = model.layers[0]
    ref = linear_rnn_gradients(
        F.one_hot(x, V).double(), y, state[0][0].detach(), layer.weight_ih.detach(), layer.weight_hh.detach(),
        model.head.weight.detach(),
    )
    assert rel_err(layer.weight_ih.grad, ref.w_hx) < 1e-6
    assert rel_err(layer.weight_hh.grad, ref.w_hh) < 1e-6
    assert rel_err(model.head.weight.grad, ref.w_qh) < 1e-6


@pytest.mark.parametrize("schedule", list(Schedule))
def test_draws_are_window_gradients(schedule):
    """The cheap per-draw sum equals window_gradient run with the draw's seed."""
    model, x, y, state = window(Cell.gru)
    fast = draw_gradients(model, x, y, state, draws(schedule)[:10])
    for seed in range(10):
        exact = gradient(model, x, y, state, RandomTruncation(TAU, schedule), seed)
        assert rel_err(fast[seed], exact) < 1e-12


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("schedule", list(Schedule))
def test_random_is_unbiased(cell, schedule):
    model, x, y, state = window(cell)
    full = gradient(model, x, y, state, Full(T))
    z = z_scores(draw_gradients(model, x, y, state, draws(schedule)), full)
    assert z.max() <= 1, f"mean of {DRAWS} draws off by {float(z.max()):.2f} x the 5-sigma bound"


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_truncated_is_biased_on_long_dependencies(cell):
    model, x, y, state = window(cell)
    full = gradient(model, x, y, state, Full(T))
    truncated = gradient(model, x, y, state, Truncated(TAU))
    samples = draw_gradients(model, x, y, state, draws(Schedule.geometric))
    z = z_scores(samples - full + truncated, full)  # the random draws' spread, centred on truncated's
    assert z.max() > 2, f"truncated within {float(z.max()):.2f} x the bound that random satisfies"


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("tau", [T, T + 5])
def test_truncated_equals_full_when_tau_covers_window(cell, tau):
    model, x, y, state = window(cell)
    assert rel_err(gradient(model, x, y, state, Truncated(tau)), gradient(model, x, y, state, Full(T))) < 1e-10


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("xi", [None, [0.0, 1.5, 1.0, 0.0, 2.0, 1.0, 0.7, 1.0, 0.0, 3.0, 1.0, 1.2, 1.0]])
def test_recompute_keeps_loss_and_gradient(cell, xi):
    model = make_model(cell, vocab=V, hidden=H, layers=2)
    x, y = make_batch(V, 13, B)  # chunks of 4, 4, 4, 1 steps
    state = random_state(model, B)
    results = []
    for recompute in (False, True):
        loss, final = forward_loss(model, x, y, state, xi, recompute)
        results.append((loss.detach(), grad_of(loss + final_state_loss(final), leaves_of(model, state))))
    (loss, grad), (loss_rc, grad_rc) = results
    assert abs(float(loss_rc - loss)) <= 1e-10 * abs(float(loss))
    assert rel_err(grad_rc, grad) < 1e-10


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("cuts", [False, True])
@pytest.mark.parametrize("skip", [0, 70])
def test_long_segments_run_in_chunks_with_the_same_loss_and_gradient(cell, cuts, skip):
    steps = engine.CHUNKED_FROM + 7  # 9 chunks of 14 steps and one of 9
    model = make_model(cell, vocab=V, hidden=H, layers=2)
    x, y = make_batch(V, steps, B)
    state = random_state(model, B)
    xi = torch.rand(steps, generator=torch.Generator().manual_seed(2), dtype=torch.float64).mul(2).tolist() if cuts else None
    results = []
    for run in (forward_loss, engine._segment_loss):  # in chunks, and in one piece
        loss, final = run(model, x, y, state, xi, skip=skip)
        results.append((loss.detach(), grad_of(loss + final_state_loss(final), leaves_of(model, state))))
    (loss, grad), (whole_loss, whole_grad) = results
    assert abs(float(loss - whole_loss)) <= 1e-12 * abs(float(whole_loss))
    assert rel_err(grad, whole_grad) < 1e-10


def test_chunks_bound_the_full_bptt_memory(monkeypatch):
    """All allocations of a full-BPTT forward and backward (tanh RNN, float32) stay within 1.5x the stored
    hidden states; in one piece the output layer's gradient [L, B, H] coexists with them (3.1x when written)."""
    steps, batch, hidden = 640, 8, 256
    torch.manual_seed(0)
    model = CharRNN(28, Cell.rnn, hidden)
    x, y = torch.randint(0, 28, (2, steps, batch))

    def peak() -> float:
        def work():
            loss, _ = forward_loss(model, x, y, model.init_state(batch))
            loss.backward()

        model.zero_grad(set_to_none=True)
        return allocation_peak(work, torch.device("cpu")) / (steps * batch * hidden * 4)

    chunked = peak()
    monkeypatch.setattr(engine, "CHUNKED_FROM", steps)
    assert chunked <= 1.5
    assert peak() > 1.8


def test_evaluate_is_mean_cross_entropy():
    model = make_model(Cell.gru, vocab=V, hidden=H)
    model.drop.p = 0.5  # evaluate must switch dropout off and restore training mode
    tokens = torch.randint(V, (15,), generator=torch.Generator().manual_seed(4))
    # batch 2, window 3: two streams of 7 steps, windows of 3, 3 and 1 steps carrying the state.
    x, y = tokens[:14].view(2, 7).t(), tokens[1:15].view(2, 7).t()
    model.eval()
    with torch.no_grad():
        logits, _ = model(x, model.init_state(2))
    logp = logits - logits.exp().sum(-1, keepdim=True).log()
    expected = float(-logp.gather(-1, y[..., None]).mean())
    model.train()
    assert evaluate(model, tokens, batch_size=2, window=3) == pytest.approx(expected, rel=1e-12)
    assert model.training


# ------------------------------------------------------------------------------ TBPTT(k1, k2)
def unrolled_segment_gradient(model, x, y, state, skip):
    """The gradient of the summed loss of targets [skip:] over x from `state`, by PyTorch's own cells."""
    from bpttcli.unrolled import unrolled_forward

    logits, _, _ = unrolled_forward(model, x, detach_state(state))
    loss = F.cross_entropy(logits[skip:].reshape(-1, V), y[skip:].reshape(-1), reduction="sum")
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])


@pytest.mark.parametrize("cell", [Cell.rnn, Cell.gru, Cell.lstm])
@pytest.mark.parametrize("k1, k2", [(3, 5), (2, 7), (4, 4)])
def test_tbptt_backpropagates_each_k1_losses_through_k2_steps(cell, k1, k2):
    """Every k1 steps, the losses of those k1 steps reach back k2 steps: the unrolled reference, segment by segment."""
    from bpttcli.strategies import TBPTT

    model, x, y, state = window(cell)
    got = gradient(model, x, y, state, TBPTT(k1, k2))
    with torch.no_grad():
        states = [detach_state(state)] + [detach_state(model(x[:t], state)[1]) for t in range(1, T + 1)]
    expected = 0
    for start in range(0, T, k1):
        end, begin = min(start + k1, T), max(0, start + k1 - k2)
        expected = expected + unrolled_segment_gradient(model, x[begin:end], y[begin:end], states[begin], start - begin)
    assert rel_err(got, expected) < 1e-10
    if k2 > k1:  # and it is not truncated BPTT
        assert rel_err(gradient(model, x, y, state, Truncated(k1)), expected) > 1e-3


def test_tbptt_with_recompute_gives_the_same_gradient():
    from bpttcli.engine import Replay
    from bpttcli.strategies import TBPTT

    model, x, y, state = window(Cell.gru)
    grads = []
    for recompute in (False, True):
        model.zero_grad(set_to_none=True)
        replay, s = Replay(), detach_state(state)
        for part, segment in segments(TBPTT(4, 9), T, torch.Generator()):
            loss, s = replay.forward(model, x[part], y[part], s, segment, recompute)
            loss.backward()
            s = detach_state(s)
        grads.append(flat_grad(model))
    assert rel_err(grads[1], grads[0]) < 1e-12


@pytest.mark.parametrize("schedule", list(Schedule))
def test_random_with_a_floor_is_unbiased(schedule):
    """The mean of `random` with a floor of 2 steps over many draws equals the exact gradient (5 sigma)."""
    model, x, y, state = window(Cell.gru)
    strategy = RandomTruncation(TAU + 1, schedule, floor=2)
    draws = [
        tuple((part.start, tuple(seg.xi.tolist())) for part, seg in segments(strategy, T, torch.Generator().manual_seed(i)))
        for i in range(DRAWS)
    ]
    samples = draw_gradients(model, x, y, state, draws)
    exact = gradient(model, x, y, state, Full(T))
    assert z_scores(samples, exact).max() <= 1
