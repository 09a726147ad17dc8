"""`bptt demo influence-balancing`: the task's optimum, xi on the state, and truncation's bias on tiny settings."""

from __future__ import annotations

import json

import pytest
import torch

from bpttcli.demo import Task, influence_balancing, thin, unroll

TINY = dict(steps=2000, episode=200, lr=0.003, tau=30, seed=0, quiet=True)


def episode_loss(task: Task, theta: float, episode: int) -> float:
    a, u = task.system()
    ones = torch.ones(task.n, dtype=torch.float64)
    loss, _ = unroll(a, u, torch.tensor(theta, dtype=torch.float64), ones, episode, None)
    return float(loss.sum())


def test_stationary_optimum_puts_the_fixed_point_at_one():
    task = Task()
    a, u = task.system()
    theta = task.stationary_theta()
    fixed = torch.linalg.solve(torch.eye(task.n, dtype=torch.float64) - a, theta * u)
    assert theta == pytest.approx(-1 / 6) and fixed[0].item() == pytest.approx(1.0)


def test_episode_optimum_minimises_the_episode_loss_and_tends_to_the_stationary_one():
    task = Task()
    best = task.optimal_theta(200)
    for step in (1e-3, -1e-3):
        assert episode_loss(task, best + step, 200) > episode_loss(task, best, 200)
    gaps = [abs(task.optimal_theta(t) - task.stationary_theta()) for t in (200, 1000, 5000)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 5e-3


def test_xi_zero_cuts_the_chain_so_each_step_sees_only_its_own_update():
    """With xi = 0 at every step, d loss_t / d theta is (s_t[0] - 1) u[0]: truncation to one step."""
    task = Task()
    a, u = task.system()
    theta = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    losses, _ = unroll(a, u, theta, torch.ones(task.n, dtype=torch.float64), 5, [0.0] * 5)
    grads = torch.stack([torch.autograd.grad(loss, theta, retain_graph=True)[0] for loss in losses])
    s, cut, exact, sensitivity = torch.ones(task.n, dtype=torch.float64), [], [], torch.zeros_like(u)
    for _ in range(5):
        s, sensitivity = a @ s + 0.3 * u, a @ sensitivity + u  # d s_t / d theta = sum_{j<t} A^j u
        cut.append((s[0] - 1) * u[0])
        exact.append((s[0] - 1) * sensitivity[0])
    assert torch.allclose(grads, torch.stack(cut))
    full, _ = unroll(a, u, theta, torch.ones(task.n, dtype=torch.float64), 5, None)
    assert torch.autograd.grad(full[-1], theta)[0].item() == pytest.approx(exact[-1].item())


def test_truncation_ends_far_from_the_optimum_while_full_and_random_end_close():
    task = Task()
    best = task.optimal_theta(TINY["episode"])
    runs = {r.label.split(" τ")[0]: r for r in influence_balancing(task, truncations=[1], **TINY)}
    assert set(runs) == {"truncated", "random geometric", "random polytail", "full (episode 200)"}
    assert abs(runs["full (episode 200)"].theta - best) < 1e-3
    assert abs(runs["truncated"].theta - best) > 0.5
    for name in ("random geometric", "random polytail"):
        assert abs(runs[name].theta - best) < 0.2
    assert all(len(r.losses) == TINY["steps"] and r.diverged_at is None for r in runs.values())


def test_demo_command_writes_table_json_and_png(bptt, tmp_path):
    result = bptt("demo", "influence-balancing", "--steps", "300", "--episode", "100", "--truncation", "1",
                  "--truncation", "10", "--lr", "0.01", "--out", "ib", "-q")
    assert "truncated τ=10" in result.output and "θ* = -0.0467" in result.output
    report = json.loads((tmp_path / "ib/influence-balancing.json").read_text())
    assert [r["strategy"] for r in report["runs"]][:2] == ["truncated τ=1", "truncated τ=10"]
    assert report["optimal_theta"] == pytest.approx(Task().optimal_theta(100))
    assert (tmp_path / "ib/influence-balancing.png").read_bytes()[:4] == b"\x89PNG"


def test_demo_stops_a_diverging_run_and_says_when(bptt, tmp_path):
    bptt("demo", "influence-balancing", "--steps", "3000", "--episode", "1000", "--truncation", "10",
         "--lr", "0.1", "--out", "ib", "-q")
    runs = json.loads((tmp_path / "ib/influence-balancing.json").read_text())["runs"]
    assert runs[0]["diverged_at"] is not None and runs[0]["diverged_at"] < 3000


@pytest.mark.parametrize("args", [["--p", "0"], ["--n", "20", "--p", "10"], ["--steps", "0"], ["--lr", "0"],
                                  ["--truncation", "0"]])
def test_demo_bad_options_are_one_line_errors(bptt_error, args):
    assert bptt_error("demo", "influence-balancing", *args, code=2).startswith("error: ")


def test_the_json_keeps_each_strategys_theta_trajectory_from_theta0_to_its_end(bptt, tmp_path):
    bptt("demo", "influence-balancing", "--steps", "300", "--episode", "100", "--truncation", "1", "--lr", "0.01",
         "--out", "ib", "-q")
    runs = json.loads((tmp_path / "ib/influence-balancing.json").read_text())["runs"]
    for run in runs:
        steps, thetas = run["trajectory"]["step"], run["trajectory"]["theta"]
        assert (steps[0], thetas[0]) == (0, Task().theta0) and (steps[-1], thetas[-1]) == (300, run["theta"])
        assert steps == sorted(steps) and len(steps) == len(thetas)
    by_name = {r["strategy"]: r for r in runs}
    assert len(by_name["truncated τ=1"]["trajectory"]["step"]) == 301  # one point per update, short runs in full
    assert len(by_name["full (episode 100)"]["trajectory"]["step"]) == 4  # one update per episode


def test_thin_keeps_the_ends_and_at_most_about_the_points_asked():
    times = list(range(10_001))
    kept, values = thin(times, [t / 2 for t in times], 1000)
    assert kept[0] == 0 and kept[-1] == 10_000 and len(kept) <= 1001 and values == [t / 2 for t in kept]
    assert thin([0, 5, 9], [1.0, 2.0, 3.0], 1000) == ([0, 5, 9], [1.0, 2.0, 3.0])


def test_a_run_that_overflows_writes_strict_json_with_null(bptt, tmp_path):
    bptt("demo", "influence-balancing", "--steps", "300", "--episode", "100", "--truncation", "1", "--lr", "1e300",
         "--out", "ib", "-q")
    text = (tmp_path / "ib/influence-balancing.json").read_text()
    report = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in influence-balancing.json"))
    assert any(r["loss"] is None or r["theta"] is None for r in report["runs"])


@pytest.mark.parametrize("args, says", [
    (["--lr", "nan"], "--lr a finite number > 0"), (["--lr", "inf"], "--lr a finite number > 0"),
    (["--seed", str(2**63)], "--seed must be an integer in [0, 2^63)"), (["--n", "100000"], "--n must be in 2..4096"),
])
def test_demo_values_that_used_to_run_or_crash_are_refused(bptt_error, tmp_path, args, says):
    assert says in bptt_error("demo", "influence-balancing", *args, "--out", "ib", code=2, alone=True)
    assert not (tmp_path / "ib").exists()
