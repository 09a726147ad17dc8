"""The forward's per-step product h W^T + b, by one of two *paths* chosen per weight.

`portable` (addmm, public ops, any device), or `mkl` (MKL's packed sgemm, a private op) for CPU
float32 weights from PACK_MIN_WEIGHT elements. `mkl` runs only after a one-time self-check against
torch.addmm, so a torch without the op, or with a broken one, runs `portable`. `use_path` forces
a path (tests, benchmarks).
"""

from __future__ import annotations

import contextlib
import threading

import torch


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

    def step(self, acc: torch.Tensor, h: torch.Tensor, x: torch.Tensor, w) -> None:
        """acc = x + b + h W^T (acc holds x + b already)."""
        acc.addmm_(h, w)


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

    def step(self, acc: torch.Tensor, h: torch.Tensor, x: torch.Tensor, w) -> None:
        torch.add(self.project(h, w), x, out=acc)


PATHS = {"portable": PortablePath, "mkl": MklPath}
PACK_MIN_WEIGHT = 1 << 18  # elements of W from which `mkl` pays off (H = 512 for every cell)
_portable, _mkl = PortablePath(), None
_mkl_checked = False
_forced = threading.local()


def _mkl_path() -> MklPath | None:
    """The MKL path if this torch has its ops and they pass a check against torch.addmm (once)."""
    global _mkl, _mkl_checked
    if not _mkl_checked:
        _mkl_checked = True
        try:
            path = MklPath()
            g = torch.Generator().manual_seed(0)
            h, weight, bias = (torch.randn(shape, generator=g) for shape in ((5, 24), (40, 24), (40,)))
            got = path.project(h, path.prepare(weight, bias, 5))
            _mkl = path if torch.allclose(got, torch.addmm(bias, h, weight.t()), atol=1e-4) else None
        except (AttributeError, RuntimeError, TypeError):
            _mkl = None
    return _mkl


def available_paths(device: torch.device | str = "cpu") -> list[str]:
    """The paths that can run float32 kernels on `device`."""
    return ["mkl", "portable"] if torch.device(device).type == "cpu" and _mkl_path() else ["portable"]


@contextlib.contextmanager
def use_path(name: str | None):
    """Force path `name` in this thread (tests, benchmarks); None restores the automatic choice.

    A forced `mkl` still falls back to `portable` where it cannot run (not CPU float32).
    """
    if name is not None and name not in PATHS:
        raise ValueError(f"unknown path {name!r}; choose from {', '.join(PATHS)}")
    previous, _forced.name = getattr(_forced, "name", None), name
    try:
        yield
    finally:
        _forced.name = previous


def path_for(weight: torch.Tensor) -> PortablePath:
    """`mkl` for CPU float32 weights of at least PACK_MIN_WEIGHT elements (or when forced), else portable."""
    forced = getattr(_forced, "name", None)
    if forced == "portable" or weight.device.type != "cpu" or weight.dtype != torch.float32:
        return _portable
    if forced is None and weight.numel() < PACK_MIN_WEIGHT:
        return _portable
    return _mkl_path() or _portable
