"""A generic first-in-first-out replay buffer of named tensors (trajectory tuples).

Each row is one tuple, e.g. ``(t, x_t, target)`` of adjoint matching or ``(x_0, x_1)`` of a
bridge-matching sampler. Rows are kept in preallocated ring storage on one device; adding
beyond ``capacity`` overwrites the oldest rows. Matching losses are off-policy tolerant, so a
buffer of rows from older models is fine for regression; importance weights must still come
from fresh trajectories of the current model.
"""

from __future__ import annotations

import torch

from ...errors import ConfigError

__all__ = ["TensorReplayBuffer"]


class TensorReplayBuffer:
    """Ring buffer holding at most ``capacity`` rows of named tensors.

    Parameters
    ----------
    capacity : int
        Maximum number of rows.

    Examples
    --------
    >>> buf = TensorReplayBuffer(100)
    >>> buf.add(t=torch.rand(8), x=torch.randn(8, 2))
    >>> batch = buf.sample(4, generator=torch.Generator().manual_seed(0))
    >>> batch["x"].shape
    torch.Size([4, 2])
    """

    def __init__(self, capacity: int):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"buffer capacity must be a positive integer, got {capacity!r}")
        self.capacity = capacity
        self._store: "dict[str, torch.Tensor]" = {}
        self._size = 0
        self._head = 0  # next row to write

    def __len__(self) -> int:
        return self._size

    @property
    def keys(self) -> tuple:
        return tuple(self._store)

    def clear(self) -> None:
        self._store, self._size, self._head = {}, 0, 0

    def add(self, **fields: torch.Tensor) -> None:
        """Append a batch of rows; every field must have the same leading size."""
        if not fields:
            raise ConfigError("add() needs at least one named tensor, e.g. add(x=x, target=y)")
        fields = {k: v.detach() for k, v in fields.items()}
        n = {v.shape[0] if v.ndim else -1 for v in fields.values()}
        if len(n) != 1 or -1 in n:
            raise ConfigError(f"all fields need the same leading (batch) size, got "
                              f"{ {k: tuple(v.shape) for k, v in fields.items()} }")
        n = n.pop()
        if self._store:
            if set(fields) != set(self._store):
                raise ConfigError(f"buffer holds fields {sorted(self._store)}, got {sorted(fields)}")
            for k, v in fields.items():
                if v.shape[1:] != self._store[k].shape[1:]:
                    raise ConfigError(f"field {k!r} has row shape {tuple(v.shape[1:])}, the buffer "
                                      f"holds {tuple(self._store[k].shape[1:])}")
        else:
            self._store = {k: torch.empty((self.capacity, *v.shape[1:]), dtype=v.dtype, device=v.device)
                           for k, v in fields.items()}
        if n >= self.capacity:  # keep only the newest rows
            fields = {k: v[n - self.capacity:] for k, v in fields.items()}
            n = self.capacity
        idx = (self._head + torch.arange(n)) % self.capacity
        for k, v in fields.items():
            dst = self._store[k]
            dst[idx.to(dst.device)] = v.to(dst.device, dst.dtype)
        self._head = (self._head + n) % self.capacity
        self._size = min(self._size + n, self.capacity)

    def get(self, idx: "torch.Tensor | None" = None) -> "dict[str, torch.Tensor]":
        """All stored rows (oldest first is not guaranteed), or the rows ``idx``."""
        if not self._size:
            raise ConfigError("the replay buffer is empty; add rows first")
        if idx is None:
            return {k: v[: self._size] for k, v in self._store.items()}
        return {k: v[idx.to(v.device)] for k, v in self._store.items()}

    def sample(self, n: int, *, generator: torch.Generator) -> "dict[str, torch.Tensor]":
        """``n`` rows drawn uniformly with replacement."""
        if not self._size:
            raise ConfigError("the replay buffer is empty; add rows first")
        idx = torch.randint(0, self._size, (int(n),), generator=generator, device=generator.device)
        return self.get(idx)

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "size": self._size, "head": self._head,
                "store": {k: v[: self._size].clone() for k, v in self._store.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.capacity = int(state["capacity"])
        self._size, self._head = int(state["size"]), int(state["head"])
        self._store = {}
        for k, v in state["store"].items():
            full = torch.empty((self.capacity, *v.shape[1:]), dtype=v.dtype, device=v.device)
            full[: self._size] = v
            self._store[k] = full
