"""A small first-in-first-out replay buffer of weighted samples.

Stores ``samples`` (any shape, batch first) with their ``log_weights`` (float64 importance
log-weights with respect to the proposal that produced them) and optional named extras of
the same batch length (e.g. the unmasking order of a masked-diffusion path). Because each
log-weight refers to its own proposal, self-normalized weights over a mixture of batches
from different proposals remain consistent; staleness costs variance, not bias.
"""

from __future__ import annotations

import torch

from ...errors import ConfigError

__all__ = ["ReplayBuffer"]


class ReplayBuffer:
    """FIFO buffer of (samples, log_weights, **extras) holding at most ``capacity`` rows.

    Parameters
    ----------
    capacity : maximum number of rows kept; adding more drops the oldest.

    Examples
    --------
    >>> buf = ReplayBuffer(4)
    >>> buf.add(torch.zeros(3, 2), torch.zeros(3))
    >>> len(buf)
    3
    """

    def __init__(self, capacity: int):
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ConfigError(f"buffer capacity must be a positive integer, got {capacity!r}")
        self.capacity = capacity
        self.data: "dict[str, torch.Tensor]" = {}

    def __len__(self) -> int:
        return 0 if not self.data else int(self.data["samples"].shape[0])

    def clear(self) -> None:
        self.data = {}

    def add(self, samples: torch.Tensor, log_weights: torch.Tensor, **extras: torch.Tensor) -> None:
        """Append a batch; drop the oldest rows beyond ``capacity``."""
        new = {"samples": samples.detach(), "log_weights": log_weights.detach().to(torch.float64),
               **{k: v.detach() for k, v in extras.items()}}
        n = new["samples"].shape[0]
        for k, v in new.items():
            if v.shape[0] != n:
                raise ConfigError(f"buffer entry {k!r} has {v.shape[0]} rows but samples have {n}")
        if self.data and set(new) != set(self.data):
            raise ConfigError(f"buffer holds entries {sorted(self.data)}, got {sorted(new)}")
        if self.data:
            new = {k: torch.cat([self.data[k], v]) for k, v in new.items()}
        self.data = {k: v[-self.capacity:] for k, v in new.items()}

    def get(self, idx: "torch.Tensor | None" = None) -> "dict[str, torch.Tensor]":
        """All stored entries, or the rows ``idx``."""
        if not self.data:
            raise ConfigError("the replay buffer is empty; add a batch first")
        return dict(self.data) if idx is None else {k: v[idx] for k, v in self.data.items()}

    def sample(self, n: int, *, generator: torch.Generator) -> "dict[str, torch.Tensor]":
        """``n`` rows drawn uniformly without replacement (all rows if ``n >= len``)."""
        size = len(self)
        if n >= size:
            return self.get()
        dev = self.data["samples"].device
        idx = torch.randperm(size, generator=generator, device=generator.device)[:n].to(dev)
        return self.get(idx)

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "data": dict(self.data)}

    def load_state_dict(self, state: dict) -> None:
        self.capacity = int(state["capacity"])
        self.data = dict(state["data"])
