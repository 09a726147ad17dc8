"""Reuse of the incoming output gradient as the backward's working buffer.

The backward overwrites the output gradient with the pre-activation gradient when autograd hands
over its only reference, so full BPTT keeps the hidden states and one gradient buffer, not two.
Whether it is the only reference is read from `_use_count` (C++ holders) and `sys.getrefcount`
(Python holders), calibrated once per process: the part most likely to break on a torch upgrade,
and where it cannot be read, the backward copies. `buffers.OVERWRITE_GRADIENTS = False` makes it
always copy (set it on this module: it is read here).
"""

from __future__ import annotations

import sys

import torch

OVERWRITE_GRADIENTS = True  # reuse the output gradient's buffer when we own it (tests switch it off)
_owned_refs: int | None = None  # Python references to a gradient only autograd and we hold (probed)
_probing = False


def _owned(grad: torch.Tensor) -> bool:
    """True if autograd handed us the only reference to `grad`, so that we may overwrite it.

    A gradient the caller passed in (`backward(gradient=g)`), one a hook kept, or one autograd also
    hands to another node (both inputs of an addition share it) has more holders: C++ ones show in
    `_use_count`, Python ones in `sys.getrefcount` beyond what a solely owned gradient has at this
    point of the call (measured once by `calibrate`). Where either cannot be read, never.
    """
    global _owned_refs
    if _probing:
        _owned_refs = sys.getrefcount(grad)
        return False
    try:
        return _owned_refs is not None and grad._use_count() == 1 and sys.getrefcount(grad) <= _owned_refs
    except (AttributeError, RuntimeError):
        return False


class _Probe(torch.autograd.Function):
    """Identity whose backward asks for a grad buffer exactly as the kernels do."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad_buffer(grad, torch.empty(1))


def calibrate() -> None:
    """Count the references a solely owned output gradient has inside a backward (once per process)."""
    global _probing
    if _owned_refs is not None or not OVERWRITE_GRADIENTS:
        return
    _probing = True
    try:
        with torch.enable_grad():
            x = torch.zeros(2, requires_grad=True)
            (_Probe.apply(x) * 2).sum().backward()  # MulBackward hands over a fresh tensor
    except RuntimeError:
        pass
    finally:
        _probing = False


def grad_buffer(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """The incoming output gradient as a buffer the backward may overwrite: itself if we own it, else a copy."""
    if grad is None:
        return torch.zeros_like(like)
    if (
        OVERWRITE_GRADIENTS and _owned(grad) and not grad.requires_grad and grad.is_contiguous()
        and grad.shape == like.shape and grad.dtype == like.dtype
    ):
        return grad
    return grad.to(like.dtype, memory_format=torch.contiguous_format, copy=True)
