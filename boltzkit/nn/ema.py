"""Exponential moving average of network weights (with the usual warm-up)."""

from __future__ import annotations

import copy

import torch


class EMA:
    """Keeps ``shadow``, a copy of ``model`` whose weights track an EMA of the model's.

    Effective decay is ``min(decay, (1 + n) / (10 + n))`` after n updates, so early
    updates follow the model closely.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)
        self.n_updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.n_updates += 1
        d = min(self.decay, (1.0 + self.n_updates) / (10.0 + self.n_updates))
        for s, p in zip(self.shadow.parameters(), model.parameters()):
            s.lerp_(p.detach(), 1.0 - d)
        for s, b in zip(self.shadow.buffers(), model.buffers()):
            s.copy_(b)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow.state_dict(), "n_updates": self.n_updates}

    def load_state_dict(self, state: dict) -> None:
        self.shadow.load_state_dict(state["shadow"])
        self.n_updates = int(state["n_updates"])
