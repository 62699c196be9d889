"""The replay buffer of the neural samplers: first in, first out, rows of named tensors.

Each row is one tuple: a weighted sample ``(samples, log_weights, **extras)`` (float64
importance log-weights with respect to the proposal that produced them, extras such as the
unmasking order of a masked-diffusion path), or a regression tuple such as ``(t, x_t, target)``
of adjoint matching. Because each log-weight refers to its own proposal, self-normalized weights
over a mixture of batches from different proposals remain consistent; staleness costs variance,
not bias. Matching losses are off-policy tolerant, so rows from older models are fine for
regression; importance weights must still come from fresh trajectories of the current model.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError

__all__ = ["ReplayBuffer"]


class ReplayBuffer:
    """FIFO buffer of named tensors holding at most ``capacity`` rows (oldest first).

    Parameters
    ----------
    capacity : maximum number of rows kept; adding more drops the oldest.
    replace : ``sample`` draws with replacement (regression tuples) instead of without
        (weighted samples).

    Examples
    --------
    >>> buf = ReplayBuffer(4)
    >>> buf.add(torch.zeros(3, 2), torch.zeros(3))
    >>> len(buf)
    3
    >>> buf = ReplayBuffer(100, replace=True)
    >>> buf.add(t=torch.rand(8), x=torch.randn(8, 2))
    >>> buf.sample(4, generator=torch.Generator().manual_seed(0))["x"].shape
    torch.Size([4, 2])
    """

    def __init__(self, capacity: int, *, replace: bool = False):
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ConfigError(f"buffer capacity must be a positive integer, got {capacity!r}")
        self.capacity, self.replace = capacity, replace
        self.data: "dict[str, torch.Tensor]" = {}
        self._head = 0  # rows ever added, modulo capacity (the slot order of `sample(replace=True)`)

    def __len__(self) -> int:
        return 0 if not self.data else int(next(iter(self.data.values())).shape[0])

    def clear(self) -> None:
        self.data, self._head = {}, 0

    def add(self, samples: "torch.Tensor | None" = None, log_weights: "torch.Tensor | None" = None,
            **fields: torch.Tensor) -> None:
        """Append a batch of rows (``add(samples, log_weights, **extras)`` or ``add(**fields)``);
        every field has the same leading size; the oldest rows beyond ``capacity`` are dropped."""
        if samples is not None:
            fields = {"samples": samples, "log_weights": log_weights.to(torch.float64), **fields}
        if not fields:
            raise ConfigError("add() needs at least one named tensor, e.g. add(x=x, target=y)")
        new = {k: v.detach() for k, v in fields.items()}
        n = {v.shape[0] if v.ndim else -1 for v in new.values()}
        if len(n) != 1 or -1 in n:
            raise ConfigError(f"all fields need the same leading (batch) size, got "
                              f"{ {k: tuple(v.shape) for k, v in new.items()} }")
        if self.data:
            if set(new) != set(self.data):
                raise ConfigError(f"buffer holds fields {sorted(self.data)}, got {sorted(new)}")
            for k, v in new.items():
                if v.shape[1:] != self.data[k].shape[1:]:
                    raise ConfigError(f"field {k!r} has row shape {tuple(v.shape[1:])}, the buffer "
                                      f"holds {tuple(self.data[k].shape[1:])}")
            new = {k: torch.cat([self.data[k], v.to(self.data[k].device, self.data[k].dtype)])
                   for k, v in new.items()}
        self._head = (self._head + min(n.pop(), self.capacity)) % self.capacity
        self.data = {k: v[-self.capacity:] for k, v in new.items()}

    def get(self, idx: "torch.Tensor | None" = None) -> "dict[str, torch.Tensor]":
        """All stored rows (oldest first), or the rows ``idx``."""
        if not self.data:
            raise ConfigError("the replay buffer is empty; add rows first")
        return dict(self.data) if idx is None else {k: v[idx.to(v.device)] for k, v in self.data.items()}

    def sample(self, n: int, *, generator: torch.Generator) -> "dict[str, torch.Tensor]":
        """``n`` rows drawn uniformly: with replacement if ``replace``, else without (all rows
        if ``n >= len``)."""
        size = len(self)
        if not size or (n >= size and not self.replace):
            return self.get()  # every row (or the empty buffer's error)
        if self.replace:
            # uniform slots of a ring of `capacity` slots whose oldest row sits at `_head` once full
            idx = torch.randint(0, size, (int(n),), generator=generator, device=generator.device)
            return self.get((idx - self._head) % size if size == self.capacity else idx)
        return self.get(torch.randperm(size, generator=generator, device=generator.device)[:n])

    @staticmethod
    def fields_in(state: dict) -> tuple:
        """The field names a buffer's ``state_dict`` holds."""
        return tuple(state.get("data", state.get("store", {})))

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "data": dict(self.data), "head": self._head}

    def load_state_dict(self, state: dict) -> None:
        self.capacity = int(state["capacity"])
        self._head = int(state.get("head", 0))
        if "store" in state:  # a ring buffer's state (boltzkit <= 0.x): rows in slot order
            size = int(state["size"])
            shift = -self._head if size == self.capacity else 0
            self.data = {k: torch.roll(v[:size], shift, 0) for k, v in state["store"].items()}
        else:
            self.data = dict(state["data"])
