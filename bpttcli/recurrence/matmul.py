"""The per-step products of the recurrence, by one of three *paths* chosen per weight.

Two products run once per step: the forward's h W^T + b and the backward's carry d W; one per
window, the weight gradient sum_t d_t^T h_{t-1}. Paths:
`portable` (addmm, public ops, any device), `mkl` (MKL's packed sgemm, a private op; forward
only) and `onednn` (oneDNN's matmul on a weight packed once per window, private ops; all three
products). On the 2-core AMD EPYC VM oneDNN's packed [32 x 512] @ [512 x 2048] runs 3.6x faster
than addmm (MKL takes a generic code path there). The rule: `onednn` for every CPU float32
weight, else `mkl` from PACK_MIN_WEIGHT elements, else `portable`; a private path runs only after
a one-time self-check against torch.addmm, so a torch without the op, or with a broken one, falls
back. `use_path` forces a path (tests, benchmarks).
"""

from __future__ import annotations

import torch

from .forcing import Forcing


class PortablePath:
    """Forward products by in-place addmm on buffers pre-filled with gx + b, with W^T made
    contiguous once per window (BLAS multiplies [32 x 512] by a *transposed* [512 x G] operand
    several times slower). Public ops only, any device."""

    name, packed = "portable", False

    def prepare(self, weight: torch.Tensor, bias: torch.Tensor, batch: int):
        return weight.t().contiguous()

    def prefill(self, acc: torch.Tensor, gx: torch.Tensor | None, bias: torch.Tensor) -> None:
        """Before the loop: acc = gx + b for every step (gx None: acc = b)."""
        if gx is None:
            acc.copy_(bias.expand_as(acc))
        else:
            torch.add(gx, bias, out=acc)

    def step(self, acc: torch.Tensor, h: torch.Tensor, x: torch.Tensor, w) -> torch.Tensor:
        """x + b + h W^T: acc itself (which holds x + b already) or a new tensor."""
        return acc.addmm_(h, w)

    def prepare_carry(self, weight: torch.Tensor, batch: int):
        """The backward's operand for `carry`, once per backward pass."""
        return weight

    def carry(self, dst: torch.Tensor, d: torch.Tensor, w, alpha: float) -> None:
        """dst += alpha d W (W as stored: [G, H])."""
        dst.addmm_(d, w, alpha=alpha)

    def weight_grad(self, d: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """d^T h, once per window: d [N, G], h [N, H] -> [G, H]."""
        return torch.mm(d.t(), h)


class MklPath(PortablePath):
    """Forward products by MKL's packed sgemm (CPU float32, a private torch op): the weight is
    packed once per window (cheaper than transposing it) and [32 x 512] @ [512 x 2048] runs ~1.3x
    faster than addmm on two cores. Each product comes back in a new tensor."""

    name, packed = "mkl", True

    def __init__(self):
        self._pack, self._linear = torch.ops.mkl._mkl_reorder_linear_weight, torch.ops.mkl._mkl_linear

    def prepare(self, weight: torch.Tensor, bias: torch.Tensor, batch: int):
        weight = weight.detach().contiguous()
        return self._pack(weight, batch), weight, bias.detach(), batch

    def prefill(self, acc: torch.Tensor, gx: torch.Tensor | None, bias: torch.Tensor) -> None:
        pass  # step() adds gx + b itself

    def project(self, h: torch.Tensor, w) -> torch.Tensor:
        """h W^T + b."""
        packed, weight, bias, batch = w
        return self._linear(h, packed, weight, bias, batch)

    def step(self, acc: torch.Tensor, h: torch.Tensor, x: torch.Tensor, w) -> torch.Tensor:
        return torch.add(self.project(h, w), x, out=acc)


class OneDnnPath(PortablePath):
    """Both per-step products by oneDNN's matmul (CPU float32, private torch ops) on weights packed
    once per window: the forward adds x + b in the same call; each product comes back in a new tensor."""

    name, packed = "onednn", True

    def __init__(self):
        self._pack, self._linear = torch.ops.mkldnn._reorder_linear_weight, torch.ops.mkldnn._linear_pointwise

    def prepare(self, weight: torch.Tensor, bias: torch.Tensor, batch: int):
        return self._pack(weight.detach().contiguous(), batch), bias.detach()

    def prefill(self, acc: torch.Tensor, gx: torch.Tensor | None, bias: torch.Tensor) -> None:
        pass  # step() adds gx + b itself

    def project(self, h: torch.Tensor, w) -> torch.Tensor:
        """h W^T + b."""
        return self._linear(h, w[0], w[1], "none", [], "")

    def step(self, acc: torch.Tensor, h: torch.Tensor, x: torch.Tensor, w) -> torch.Tensor:
        return self._linear.binary(h, x, w[0], w[1], "add")

    def prepare_carry(self, weight: torch.Tensor, batch: int):
        return self._pack(weight.detach().t().contiguous(), batch)

    def carry(self, dst: torch.Tensor, d: torch.Tensor, w, alpha: float) -> None:
        dst.add_(self._linear(d, w, None, "none", [], ""), alpha=alpha)

    def weight_grad(self, d: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self._linear(d.t(), h.t(), None, "none", [], "")  # unpacked: 1.3-1.6x torch.mm here


PATHS = {"portable": PortablePath, "mkl": MklPath, "onednn": OneDnnPath}
PACK_MIN_WEIGHT = 1 << 18  # elements of W from which `mkl` pays off (H = 512 for every cell)
_portable = PortablePath()
_checked: dict[str, PortablePath | None] = {}  # private path name -> the path, or None where it failed its check
_forcing = Forcing("path", PATHS)
# force path `name` in this thread; a forced private path still falls back to `portable` where it cannot run
use_path = _forcing.use


def _self_checked(name: str) -> PortablePath | None:
    """Private path `name` if this torch has its ops and they pass a check against torch.addmm (once)."""
    if name not in _checked:
        try:
            path = PATHS[name]()
            g = torch.Generator().manual_seed(0)
            h, weight, bias, d = (torch.randn(shape, generator=g) for shape in ((5, 24), (40, 24), (40,), (5, 40)))
            ok = torch.allclose(path.project(h, path.prepare(weight, bias, 5)), torch.addmm(bias, h, weight.t()), atol=1e-4)
            dst = torch.zeros(5, 24)
            path.carry(dst, d, path.prepare_carry(weight, 5), 0.5)
            ok = ok and torch.allclose(dst, 0.5 * d @ weight, atol=1e-4)
            ok = ok and torch.allclose(path.weight_grad(d, h), d.t() @ h, atol=1e-4)
            _checked[name] = path if ok else None
        except (AttributeError, RuntimeError, TypeError):
            _checked[name] = None
    return _checked[name]


def available_paths(device: torch.device | str = "cpu") -> list[str]:
    """The paths that can run float32 kernels on `device`, the automatic choice first."""
    private = [name for name in ("onednn", "mkl") if _self_checked(name)] if torch.device(device).type == "cpu" else []
    return [*private, "portable"]


def path_for(weight: torch.Tensor) -> PortablePath:
    """The forced path, else `onednn` for CPU float32 weights, else `mkl` from PACK_MIN_WEIGHT elements,
    else portable (each private path only where its self-check passed)."""
    forced = _forcing.name
    if forced == "portable" or weight.device.type != "cpu" or weight.dtype != torch.float32:
        return _portable
    if forced is not None:
        return _self_checked(forced) or _portable
    if _self_checked("onednn"):
        return _checked["onednn"]
    return (_self_checked("mkl") if weight.numel() >= PACK_MIN_WEIGHT else None) or _portable
