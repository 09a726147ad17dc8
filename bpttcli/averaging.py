"""Weight averaging: an exponential moving average of the weights, used for validation, best.pt and sampling.

Averaged weights generalise better than the last iterate on small corpora (Polyak averaging; AWD-LSTM
averages too). The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so early
averages are not dominated by the initial weights. The average is part of every checkpoint, so a
resumed run continues the same average.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class WeightAverage:
    """The moving average of `model`'s parameters; with decay 0 it is off and every method does nothing."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.shadow = [p.detach().clone() for p in model.parameters()] if decay else []

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights in (after each optimizer step)."""
        if not self.shadow:
            return
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for average, p in zip(self.shadow, model.parameters()):
            average.lerp_(p.detach(), 1 - decay)

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        """Inside the block the model holds the averaged weights; the trained ones come back after it."""
        if not self.shadow:
            yield
            return
        params = list(model.parameters())
        trained = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, average in zip(params, self.shadow):
                p.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, weights in zip(params, trained):
                    p.copy_(weights)

    def checkpoint(self, model: nn.Module) -> dict:
        """A checkpoint's entries: "model" holds the averaged weights (what sample, eval and analyze load),
        "train_model" the trained ones and "average" this average; none of them when averaging is off."""
        if not self.shadow:
            return {}
        with self.applied(model):
            averaged = {name: t.detach().clone() for name, t in model.state_dict().items()}
        return {"model": averaged, "train_model": model.state_dict(),
                "average": {"updates": self.updates, "shadow": [t.cpu() for t in self.shadow]}}

    def load_state_dict(self, saved: dict | None, device: torch.device) -> None:
        """Continue a saved average; a checkpoint without one (averaging newly on) starts from the weights."""
        if saved and self.shadow:
            self.updates = saved["updates"]
            self.shadow = [t.to(device) for t in saved["shadow"]]
