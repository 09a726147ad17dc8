"""`bptt analyze`: how the gradient vanishes or explodes through time in a model, and the tau that suggests.

Three views of the same product of step Jacobians, all on the first recurrent layer:

- the gradient curve ||dl_T/dh_{T-k}||, k = 0..K, where l_T is the loss at the last step of a
  validation window (mean over streams and windows), with its fitted per-step decay factor;
- the spectrum of W_hh, split into its gate blocks for the GRU (r, z, n) and the LSTM (i, f, g, o):
  the candidate block (n, g) plays W_hh's role in the Elman RNN, the gates scale it;
- the spectral norms of the step Jacobians d s_t / d s_{t-1} along the trajectories of the first
  validation window's first streams (s = h, or (h, c) for the LSTM); exp(mean log norm) is a
  Lyapunov-style growth factor per step, an upper bound on the curve's decay factor (norms of
  products never exceed products of norms).

The effective horizon is the first k where the curve falls below 1% of its k = 0 value: gradient
from further back barely moves the weights, so truncating there (tau ~ horizon) loses little.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.table import Table

from . import theory
from .config import Config, check_seed, load_config
from .data import eval_windows
from .errors import ConfigError, DataError
from .fsutil import atomic_write_json, ensure_dir, timestamped_dir
from .model import CharRNN, State, detach_state
from .plots import Panel, Series, plot_panels
from .recurrence import Cell
from .runtime import check_memory, seed_everything
from .builders import build_model, load_dataset, load_trained
from .unrolled import unrolled_forward
from .vocab import Vocab

BLOCKS = {Cell.rnn: ("W_hh",), Cell.linear: ("W_hh",), Cell.gru: ("r", "z", "n"), Cell.lstm: ("i", "f", "g", "o")}
THEORY_SIZE = 10  # M is THEORY_SIZE x THEORY_SIZE
MAX_THEORY_HORIZON = 10_000  # --theory computes M^k for every k up to the horizon
THRESHOLD = 0.01  # the effective horizon: where the gradient falls below 1% of its k = 0 value
JACOBIAN_STREAMS = 4  # step Jacobians along the first streams of the first window only: an SVD each
BLOCK_LABELS = {"W_hh": "$W_{hh}$"}  # gate blocks (r, z, n / i, f, g, o) are labelled "$r$ block", ...


@dataclass
class Analysis:
    source: str
    cell: str
    hidden: int
    gradient_norms: list[float]  # ||dl_T/dh_{T-k}||, k = 0..K
    decay: float  # fitted per-step factor of the curve
    horizon: int | None  # first k below 1% of k = 0; None: not within K
    spectrum: dict[str, dict]  # block -> singular values, spectral radius
    jacobian_norms: list[float]  # ||d s_t / d s_{t-1}||_2 along the first window, mean over streams, per t
    lyapunov: float  # mean log ||d s_t / d s_{t-1}||_2 over steps and streams
    jacobian_streams: int  # the first streams of the first window that the Jacobian norms average over
    streams: int  # streams per window (those the gradient curve averages over)


def mode(target: Path | None, init: bool, theory: bool) -> str:
    """Which analysis was asked for: exactly one of a checkpoint, --init or --theory."""
    chosen = [name for name, on in (("checkpoint", target is not None), ("init", init), ("theory", theory)) if on]
    if len(chosen) != 1:
        raise ConfigError("pass a run directory or checkpoint, or --init (fresh weights), or --theory: exactly one")
    return chosen[0]


def check_options(horizon: int, windows: int, streams: int, seed: int) -> None:
    if min(horizon, windows, streams) < 1:
        raise ConfigError("--horizon, --windows and --streams must be >= 1")
    check_seed(seed, "--seed")


def default_out() -> Path:
    """analysis/<time>: where --init and --theory write by default."""
    return timestamped_dir("analysis")


def load_checkpoint(target: Path, data: Path | None = None) -> tuple[Config, CharRNN, Vocab, Path]:
    """The model, config and vocabulary of a run directory (best.pt) or checkpoint file; `data` replaces the corpus."""
    config, model, vocab, path = load_trained(target)
    if data is not None:
        config.data.path = str(data)
    return config, model, vocab, path


def validation_windows(config: Config, vocab: Vocab | None, streams: int, steps: int, count: int):
    """Up to `count` consecutive full windows [steps, streams] of the validation text, and its vocabulary."""
    data = load_dataset(config, vocab)
    full = (x for x in eval_windows(data.val, streams, steps) if x[0].shape[0] == steps)  # lazily: read only `count`
    first = next(full, None)
    same_width = (x for x in full if x[0].shape[1] == first[0].shape[1])
    windows = [first, *itertools.islice(same_width, count - 1)] if first else []
    if not windows:
        raise DataError(
            f"the validation text has {len(data.val)} characters, too few for one window of {steps} steps; "
            f"lower --horizon or use a longer --data"
        )
    return windows, data.vocab


def gradient_curve(model: CharRNN, windows) -> torch.Tensor:
    """||dl_T/dh_{T-k}|| of the first layer for k = 0..T-1, mean over streams and windows (state carried)."""
    total, count, state = 0.0, 0, None
    for x, y in windows:
        state = state or model.init_state(x.shape[1])
        logits, new_state, hiddens = unrolled_forward(model, x, state)
        F.cross_entropy(logits[-1], y[-1], reduction="sum").backward()
        norms = torch.stack([h[0].grad.norm(dim=-1) for h in reversed(hiddens)])  # [k, streams]
        total, count = total + norms.sum(1), count + norms.shape[1]
        state = detach_state(new_state)
    model.zero_grad(set_to_none=True)
    return (total / count).detach()


def fit_decay(curve: torch.Tensor) -> float:
    """exp(slope) of the least-squares line through log curve[k] against k (where positive): the per-step factor."""
    k = torch.nonzero(curve > 0).flatten()
    logs = curve[k].double().log()
    k = k.double()
    slope = ((k - k.mean()) * (logs - logs.mean())).sum() / ((k - k.mean()) ** 2).sum()
    return math.exp(float(slope))


def effective_horizon(curve: torch.Tensor, threshold: float = THRESHOLD) -> int | None:
    """The first k where curve[k] < threshold * curve[0]; None if there is none."""
    below = torch.nonzero(curve < threshold * curve[0])
    return int(below[0]) if len(below) else None


def spectrum(model: CharRNN) -> dict[str, dict]:
    """Singular values and spectral radius of each gate block of the first layer's W_hh."""
    layer = model.layers[0]
    blocks = layer.weight_hh.detach().double().split(layer.hidden)
    return {
        name: {"singular_values": torch.linalg.svdvals(w).tolist(),
               "spectral_radius": float(torch.linalg.eigvals(w).abs().max())}
        for name, w in zip(BLOCKS[layer.cell], blocks)
    }


def step_jacobian(model: CharRNN, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
    """d s_t / d s_{t-1} [B, S, S] of the first layer for one step x [1, B], and the next state."""
    prev = [tuple(s.detach().requires_grad_(i == 0) for s in layer) for i, layer in enumerate(state)]
    _, new_state, _ = unrolled_forward(model, x, prev)
    out = torch.cat(new_state[0], -1)
    size, batch = out.shape[-1], out.shape[0]
    eye = torch.eye(size, dtype=out.dtype)[:, None].expand(size, batch, size)  # row i of every stream's J
    rows = torch.autograd.grad(out, prev[0], grad_outputs=eye, is_grads_batched=True)
    return torch.cat(rows, -1).transpose(0, 1), detach_state(new_state)


def jacobian_norms(model: CharRNN, x: torch.Tensor) -> torch.Tensor:
    """||d s_t / d s_{t-1}||_2 [T, B] along the trajectory of window x [T, B] from a zero state."""
    state, norms = model.init_state(x.shape[1]), []
    for t in range(x.shape[0]):
        j, state = step_jacobian(model, x[t : t + 1], state)
        norms.append(torch.linalg.matrix_norm(j.detach(), ord=2))
    return torch.stack(norms)


def analyze(model: CharRNN, windows, source: str) -> Analysis:
    """All three views of gradient flow for `model` on `windows` of validation text."""
    model.eval()
    curve = gradient_curve(model, windows)
    first = windows[0][0][:, :JACOBIAN_STREAMS]
    norms = jacobian_norms(model, first)
    return Analysis(
        source=source, cell=model.cell.value, hidden=model.hidden, gradient_norms=curve.tolist(),
        decay=fit_decay(curve), horizon=effective_horizon(curve), spectrum=spectrum(model),
        jacobian_norms=norms.mean(1).tolist(), lyapunov=float(norms.clamp(min=1e-30).log().mean()),
        jacobian_streams=first.shape[1], streams=windows[0][0].shape[1],
    )


def horizon_text(a: Analysis) -> str:
    """The effective horizon as a suggestion for tau."""
    k = len(a.gradient_norms) - 1
    if a.horizon is None:
        return f"> {k}: the gradient stays above 1% over the whole horizon; raise --horizon"
    return f"{a.horizon} steps: suggested tau (--num-steps) ~ {a.horizon}"


def table(a: Analysis) -> Table:
    """The analysis as a rich table: the curve at a few k, its decay and horizon, the spectrum, the Jacobians."""
    curve, k = a.gradient_norms, len(a.gradient_norms) - 1
    t = Table(title=f"Gradient flow through time · {a.cell.upper()}-{a.hidden} · {a.source}", title_justify="left")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_row("||dl_T/dh_T|| (k = 0)", f"{curve[0]:.4g}")
    for step in sorted({1, 5, 10, 20, 50, 100, k} & set(range(1, k + 1))):
        t.add_row(f"k = {step}: ||dl_T/dh_T-k|| / ||dl_T/dh_T||", f"{curve[step] / curve[0]:.3g}")
    t.add_row("fitted decay per step", f"x{a.decay:.4f} ({'vanishing' if a.decay < 1 else 'exploding'})")
    t.add_row("effective horizon (1%)", horizon_text(a))
    for name, s in a.spectrum.items():
        t.add_row(f"{name}: spectral radius · top singular value",
                  f"{s['spectral_radius']:.3f} · {s['singular_values'][0]:.3f}")
    t.add_row("step Jacobian ||ds_t/ds_t-1||: mean", f"{sum(a.jacobian_norms) / len(a.jacobian_norms):.4f}")
    t.add_row("Lyapunov-style exp(mean log ||J_t||)", f"x{math.exp(a.lyapunov):.4f} per step")
    return t


def plot(a: Analysis, path: Path) -> Path:
    """analysis.png: the gradient curve with its fit and horizon, the W_hh spectrum, the step Jacobian norms."""
    curve, k = a.gradient_norms, range(len(a.gradient_norms))
    flow = [Series(rf"$\|\partial\ell_T/\partial h_{{T-k}}\|$, mean over {a.streams} streams", list(k), curve),
            Series(f"fit ×{a.decay:.3f} per step", list(k), [curve[0] * a.decay**i for i in k]),
            Series("1% of $k = 0$", [0, k[-1]], [THRESHOLD * curve[0]] * 2, style="k:")]
    if a.horizon is not None:
        flow.append(Series(f"horizon $k = {a.horizon}$", [a.horizon] * 2, [min(c for c in curve if c > 0), curve[0]],
                           style="k--"))
    sigmas = [Series(BLOCK_LABELS.get(name, f"${name}$ block"), list(range(1, len(s["singular_values"]) + 1)),
                     s["singular_values"]) for name, s in a.spectrum.items()]
    steps = list(range(1, len(a.jacobian_norms) + 1))
    of = f" of {a.streams}" if a.jacobian_streams < a.streams else ""
    jac = [Series(f"mean over the first {a.jacobian_streams}{of} streams", steps, a.jacobian_norms),
           Series(rf"$\exp(\overline{{\log\|J_t\|}})$ = {math.exp(a.lyapunov):.3f}", [1, steps[-1]],
                  [math.exp(a.lyapunov)] * 2, style="k--")]
    return plot_panels(path, [
        Panel(flow, "$k$ (steps back from $T$)", "gradient norm",
              r"$\|\partial\ell_T/\partial h_{T-k}\|$: how far back the gradient reaches", logy=True),
        Panel(sigmas + [Series("1", [1, len(sigmas[0].x)], [1.0, 1.0], style="k:")], "index", "singular value",
              r"singular values of $W_{hh}$ (first layer)", logy=True),
        Panel(jac, "$t$ (first validation window)", r"$\|J_t\|_2 = \|\partial s_t/\partial s_{t-1}\|_2$",
              "step Jacobians", logy=True),
    ], title=f"{a.cell.upper()}-{a.hidden} · {a.source}")


def save(a: Analysis, out: Path) -> tuple[Path, Path]:
    """analysis.json (strict: a non-finite number is null) and analysis.png in `out`."""
    ensure_dir(out, ConfigError)
    atomic_write_json(out / "analysis.json", asdict(a))
    return out / "analysis.json", plot(a, out / "analysis.png")


def run(target: Path | None, data: Path | None, model_flags: dict, seed: int, horizon: int, windows: int,
        streams: int, out: Path | None) -> tuple[Analysis, Path]:
    """Analyse a checkpoint (`target`) or, with target None, fresh weights of `model_flags`; write json and png."""
    check_options(horizon, windows, streams, seed)
    if target is not None:
        if any(v is not None for v in model_flags.values()):
            raise ConfigError("--model, --hidden and --layers describe fresh weights; use them with --init")
        config, model, vocab, path = load_checkpoint(target, data)
        source, out = str(path), out or path.parent
    else:
        config = load_config(None, {**model_flags, "data.path": str(data) if data else None})
        check_memory(config, torch.device("cpu"))
        vocab, source, out = None, "fresh weights", out or default_out()
    batches, vocab = validation_windows(config, vocab, streams, horizon + 1, windows)
    if target is None:
        seed_everything(seed)
        model = build_model(config, len(vocab))
    analysis = analyze(model, batches, source)
    save(analysis, out)
    return analysis, out


# `bptt analyze --theory`: the chapter's gradient recursion and exercises 1-2, executed.


def theory_report(steps: int, seed: int, out: Path | None, size: int = THEORY_SIZE) -> tuple[Table, Path]:
    """Table and theory.png: the hand-written linear-RNN gradient against autograd, then powers of a symmetric M."""
    check_options(steps, 1, 1, seed)
    if steps > MAX_THEORY_HORIZON:
        raise ConfigError(f"--horizon must be at most {MAX_THEORY_HORIZON:,} with --theory (got {steps})")
    g = torch.Generator().manual_seed(seed)
    m = theory.symmetric_matrix(size, g)
    angles = theory.alignment_angles(m, torch.randn(size, generator=g, dtype=torch.float64), steps)
    rate = theory.alignment_rate(m)
    errors = [theory.power_eigenvalue_error(m, k) for k in range(1, steps + 1)]
    t = Table(title=f"The chapter's theory, executed (M: random symmetric {size}x{size}, spectral radius 1)",
              title_justify="left")
    for column in ("k", "angle(M^k x, v1), degrees", f"tan ratio (-> |λ2/λ1| = {rate:.3f})",
                   "eig(M^k) vs λ^k, rel. error"):
        t.add_column(column, justify="right")
    for k in sorted({1, 2, 5, 10, 20, 50, steps} & set(range(1, steps + 1))):
        ratio = math.tan(angles[k]) / max(math.tan(angles[k - 1]), 1e-300)
        t.add_row(str(k), f"{math.degrees(angles[k]):.4g}", f"{ratio:.4f}", f"{errors[k - 1]:.1e}")
    t.caption = f"linear RNN: max |hand-written BPTT - autograd| = {theory.gradient_check(seed):.1e}"
    out = ensure_dir(out or default_out(), ConfigError)
    ks = list(range(steps + 1))
    tail = math.tan(angles[-1])  # anchor the predicted rate at k = K, where it has taken over
    path = plot_panels(out / "theory.png", [
        Panel([Series("angle(M^k x, v1)", ks, [math.degrees(a) for a in angles]),
               Series(f"∝ |λ2/λ1|^k = {rate:.3f}^k", ks,
                      [math.degrees(math.atan(tail * rate ** (k - steps))) for k in ks])],
              "k", "degrees", "Exercise 2: M^k x turns to the top eigenvector v1", logy=True),
        Panel([Series("max |eig(M^k) - λ^k| / max |λ|^k", ks[1:], [e or math.nan for e in errors])],
              "k", "relative error", "Exercise 1: eig(M^k) = λ^k, up to rounding", logy=True),
    ])
    return t, path
