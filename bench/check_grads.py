"""Quick check: the kernels' gradients against the unrolled autograd reference (fp64 and fp32).

    python bench/check_grads.py            # every cell, 1-2 layers, random xi with zeros
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from bpttcli import recurrence
from bpttcli.model import CharRNN
from bpttcli.recurrence import Cell, buffers
from bpttcli.unrolled import unrolled_forward


def _loss(logits, y):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")


def _grads(model, x, y, state, xi, fn):
    model.zero_grad(set_to_none=True)
    state = [tuple(s.clone().requires_grad_() for s in layer) for layer in state]
    logits, new = fn(model, x, state, xi)[:2]
    extra = sum((s * (i + 1.0) / 7).sum() for layer in new for i, s in enumerate(layer))  # loss on the final state
    (_loss(logits, y) + extra).backward()
    return [p.grad.clone() for p in model.parameters()] + [s.grad.clone() for layer in state for s in layer]


def max_error(cell, layers, dtype, steps=13, batch=3, hidden=8, vocab=11, seed=0, device="cpu", cuts=True) -> float:
    """Max |g - g_ref| / max(|g_ref|, 1) over all parameter and initial-state gradients, xi with zeros (unless
    not `cuts`) and None."""
    torch.manual_seed(seed)
    model = CharRNN(vocab, cell, hidden, layers).to(device, dtype)
    x, y = torch.randint(0, vocab, (2, steps, batch), device=device)
    state = [tuple(torch.randn(batch, hidden, dtype=dtype, device=device) for _ in layer)
             for layer in model.init_state(batch)]
    xi = (torch.rand(steps, dtype=torch.float64) * 2).tolist()
    xi[0], xi[steps // 2] = 0.0, 0.0
    ref_model = CharRNN(vocab, cell, hidden, layers).double()  # on the CPU: MPS has no float64
    ref_model.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    worst = 0.0
    for xs in (xi, None) if cuts else (None,):
        got = _grads(model, x, y, state, xs, lambda m, *a: m(*a))
        ref_state = [tuple(s.double().cpu() for s in layer) for layer in state]
        ref = _grads(ref_model, x.cpu(), y.cpu(), ref_state, xs, unrolled_forward)
        worst = max(worst, max(float((g.double().cpu() - r).abs().max() / r.abs().max().clamp(min=1))
                               for g, r in zip(got, ref)))
    return worst


def main() -> int:
    bad = 0
    for path, overwrite in [(p, True) for p in recurrence.available_paths()] + [("portable", False)]:
        buffers.OVERWRITE_GRADIENTS = overwrite
        with recurrence.use_path(path), recurrence.use_kernel("hand-written"):
            for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
                for cell in Cell:
                    for layers in (1, 2):
                        err = max(max_error(cell, layers, dtype), max_error(cell, layers, dtype, steps=35, hidden=48))
                        ok = err <= tol
                        bad += not ok
                        print(f"{path:9s} {'in-place' if overwrite else 'copy':8s} {str(dtype):14s} {cell.value:6s} layers={layers}  max rel err {err:.2e}"
                              f"  {'ok' if ok else 'FAIL'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
