"""bpttcli.strategies: segment lengths, the compensation factors xi and the cut-probability schedules."""

from __future__ import annotations

import math

import pytest
import torch

from bpttcli.strategies import Full, RandomTruncation, Schedule, StrategyName, Truncated, make_strategy

SCHEDULES = list(Schedule)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def split(strategy, available, generator):
    """The segments that cover `available` steps, in order (what the engine does with a window)."""
    out = []
    while available > 0:
        out.append(strategy.next_segment(available, generator))
        available -= out[-1].length
    return out


def assert_mean(samples, expected):
    """The sample mean (per column) is within 5 standard errors of `expected`."""
    samples = samples.double()
    stderr = samples.std(0) / len(samples) ** 0.5
    z = (samples.mean(0) - expected).abs() / (5 * stderr)
    assert z.max() <= 1, f"mean {samples.mean(0)} vs {expected}: {float(z.max()):.2f} x the 5-sigma bound"


def closed_form_survival(schedule, tau, alpha, k):
    """S[k] = prod_{j=1..k} (1 - c_j); for polytail a ratio of Gamma functions with m = (alpha-2) tau."""
    k = torch.as_tensor(k, dtype=torch.float64)
    if schedule is Schedule.geometric:
        return (1 - 1 / tau) ** k
    m = (alpha - 2) * tau
    lg = torch.lgamma
    return torch.exp(lg(m + k - alpha + 2) + math.lgamma(m + 1) - math.lgamma(m - alpha + 2) - lg(m + k + 1))


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("tau", [3, 10])
def test_segment_lengths_have_mean_tau(schedule, tau):
    strategy, g = RandomTruncation(tau, schedule), gen()
    lengths = torch.tensor([strategy.next_segment(10**6, g).length for _ in range(20000)])
    assert lengths.min() >= 1
    assert_mean(lengths, tau)
    k = torch.arange(1, 2 * tau + 1)
    assert_mean((lengths[:, None] > k).double(), strategy.survival(2 * tau)[1:])  # P(length > k) = S[k]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_xi_has_mean_one_at_every_position(schedule):
    """Over draws, the xi of each step of a window, and their products over spans, average to 1."""
    strategy, g, steps = RandomTruncation(3, schedule), gen(), 16
    xi = torch.tensor([[w for s in split(strategy, steps, g) for w in s.xi.tolist()] for _ in range(4000)])
    assert (xi[:, 0] == 0).all()
    assert_mean(xi[:, 1:], 1.0)
    assert_mean(torch.cumprod(xi[:, 4:11], 1), 1.0)  # the weight on the chain h_3 -> h_t for t = 4..10


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_segments_fit_available(schedule):
    strategy, g = RandomTruncation(4, schedule), gen()
    for available in range(1, 40):
        for _ in range(25):
            segment = strategy.next_segment(available, g)
            assert 1 <= segment.length <= available
            assert segment.xi.shape == (segment.length,) and segment.xi[0] == 0
            assert (segment.xi[1:] > 1).all()  # every surviving step is compensated
            expected = 1 / float(strategy.survival(segment.length)[segment.length - 1])
            assert segment.max_weight == pytest.approx(expected, rel=1e-5)


def test_truncated_yields_tau_then_remainder():
    assert [(s.length, s.xi) for s in split(Truncated(4), 10, gen())] == [(4, None), (4, None), (2, None)]
    assert [s.length for s in split(Truncated(5), 10, gen())] == [5, 5]
    assert [s.length for s in split(Truncated(12), 10, gen())] == [10]


def test_full_spans_available_or_its_window():
    assert [s.length for s in split(Full(5), 37, gen())] == [37]
    assert [s.length for s in split(Full(5, window=5), 12, gen())] == [5, 5, 2]
    assert Full(5).whole_epoch and not Full(5, window=5).whole_epoch
    assert Full(5).next_segment(37, gen()).max_weight == 1.0


def test_make_strategy():
    assert make_strategy(StrategyName.full, 7, carries_state=True).window is None
    assert make_strategy(StrategyName.full, 7, carries_state=False).window == 7
    assert isinstance(make_strategy("truncated", 7, True), Truncated)
    random = make_strategy("random", 7, True, Schedule.polytail, alpha=3.5)
    assert (random.tau, random.schedule, random.alpha) == (7, Schedule.polytail, 3.5)
    with pytest.raises(ValueError):
        RandomTruncation(7, Schedule.polytail, alpha=2.0)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("tau, alpha", [(3, 4.0), (10, 3.0), (7, 6.5)])
def test_survival_matches_closed_form(schedule, tau, alpha):
    strategy = RandomTruncation(tau, schedule, alpha)
    for upto in (5, 3000):  # grown in two steps: the cached prefix must stay consistent
        s = strategy.survival(upto)
        assert len(s) == upto + 1 and s[0] == 1
        expected = closed_form_survival(schedule, tau, alpha, torch.arange(upto + 1))
        torch.testing.assert_close(s, expected, rtol=1e-10, atol=0)


@pytest.mark.parametrize("tau, alpha", [(3, 4.0), (10, 4.0), (10, 3.0), (7, 6.5)])
def test_polytail_survival_sums_to_tau(tau, alpha):
    assert float(RandomTruncation(tau, Schedule.polytail, alpha).survival(2**16).sum()) == pytest.approx(tau, rel=2e-3)


@pytest.mark.parametrize("tau", [3, 10, 30])
def test_polytail_compensation_grows_much_slower(tau):
    """The largest compensation 1/S[k] on a segment of 10 tau steps: ~e^10 geometric, ~200 polytail."""
    k = 10 * tau
    geometric = 1 / float(RandomTruncation(tau, Schedule.geometric).survival(k)[k])
    polytail = 1 / float(RandomTruncation(tau, Schedule.polytail).survival(k)[k])
    assert geometric > 2e4 and polytail < 400


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_seeded_generators_repeat(schedule):
    def draw(seed):
        return [(s.length, s.xi.tolist()) for s in split(RandomTruncation(4, schedule), 300, gen(seed))]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_tbptt_segments_are_k1_new_steps_with_k2_minus_k1_context():
    from bpttcli.strategies import TBPTT

    assert [(s.length, s.context, s.xi) for s in split(TBPTT(4, 7), 10, gen())] == [(4, 3, None), (4, 3, None), (2, 3, None)]
    assert make_strategy("tbptt", 5, True).k2 == 10 and make_strategy("tbptt", 5, True, k2=6).k2 == 6
    with pytest.raises(ValueError):
        TBPTT(5, 4)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_a_floor_keeps_the_mean_and_never_cuts_early(schedule):
    strategy, g = RandomTruncation(8, schedule, floor=3), gen()
    segments = [strategy.next_segment(10**6, g) for _ in range(20000)]
    lengths = torch.tensor([s.length for s in segments])
    assert lengths.min() >= 4
    assert_mean(lengths, 8)
    assert all((s.xi[1:4] == 1).all() and (s.xi[4:] > 1).all() for s in segments[:200])  # no variance in the floor


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_xi_has_mean_one_with_a_floor(schedule):
    strategy, g, steps = RandomTruncation(4, schedule, floor=2), gen(), 16
    xi = torch.tensor([[w for s in split(strategy, steps, g) for w in s.xi.tolist()] for _ in range(4000)])
    assert (xi[:, 1:3] == 1).all()  # the first segment's floor: never cut, never weighted
    assert_mean(xi[:, 3:], 1.0)
    assert_mean(torch.cumprod(xi[:, 4:11], 1), 1.0)


def test_floor_must_be_below_tau():
    with pytest.raises(ValueError):
        RandomTruncation(4, floor=4)
