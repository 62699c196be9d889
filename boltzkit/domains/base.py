"""State spaces.

A domain owns the shape and dtype of one state, a tractable reference draw and a
membership check. Targets live on domains; samplers dispatch on them.

Categorical domains (:class:`Lattice`, :class:`Sequence`) have two representations:
the *index* representation (int64 in ``[0, q)``) that discrete samplers work with, and the
*physical* representation that energies read (for Ising: float spins +-1). ``encode`` and
``decode`` convert between them; for most domains both are the identity.
"""

from __future__ import annotations

import math
from typing import Sequence as Seq

import torch

from ..errors import DomainError


class Domain:
    """Base class. Subclasses set ``event_shape``, and ``is_discrete`` and ``dtype`` where they differ
    from the defaults (continuous, float32)."""

    event_shape: tuple[int, ...] = ()
    is_discrete: bool = False
    dtype: torch.dtype = torch.float32

    @property
    def event_numel(self) -> int:
        return int(math.prod(self.event_shape))

    @property
    def n_dof(self) -> int:
        """Degrees of freedom (smaller than event_numel on constrained subspaces)."""
        return self.event_numel

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Project onto the domain's linear subspace (identity unless overridden)."""
        return x

    def reference(self, n: int, *, generator: "torch.Generator | None" = None,
                  device: "torch.device | str" = "cpu") -> torch.Tensor:
        raise NotImplementedError

    def contains(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean tensor (B,): which states belong to the domain."""
        raise NotImplementedError

    def validate(self, x: torch.Tensor, what: str = "x") -> torch.Tensor:
        """Raise :class:`DomainError` naming the problem if ``x`` is not a batch of states."""
        if not isinstance(x, torch.Tensor):
            raise DomainError(f"{what} must be a torch.Tensor, got {type(x).__name__}; "
                              "convert with torch.as_tensor(...)")
        shape = tuple(x.shape[1:])
        if x.ndim != len(self.event_shape) + 1 or shape != tuple(self.event_shape):
            raise DomainError(f"{what} has shape {tuple(x.shape)} but {self!r} expects "
                              f"(batch, {', '.join(map(str, self.event_shape))}); "
                              "add a batch dimension with x[None] for a single state")
        ok = self.contains(x)
        if not bool(ok.all()):
            bad = (~ok).nonzero().flatten()
            raise DomainError(f"{int(bad.numel())} of {x.shape[0]} states in {what} are not in "
                              f"{self!r} (first bad index {int(bad[0])}): {self._range_hint()}")
        return x

    def _range_hint(self) -> str:
        return "check the values"

    def to_config(self) -> dict:
        raise NotImplementedError

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.to_config() == other.to_config()

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(self.to_config())))


class Reals(Domain):
    """Euclidean space R^dim. Reference draw: standard normal."""

    def __init__(self, dim: int):
        if int(dim) != dim or dim < 1:
            raise DomainError(f"Reals(dim) needs a positive integer dimension, got {dim!r}")
        self.dim = int(dim)
        self.event_shape = (self.dim,)

    def reference(self, n, *, generator=None, device="cpu"):
        return torch.randn(n, self.dim, generator=generator, device=device)

    def contains(self, x):
        return torch.isfinite(x).all(dim=-1)

    def _range_hint(self):
        return "states must be finite real vectors (found NaN or inf)"

    def to_config(self):
        return {"type": "Reals", "dim": self.dim}

    def __repr__(self):
        return f"Reals({self.dim})"


class Categorical(Domain):
    """Fixed-length configurations of ``n_sites`` variables with ``q`` values each.

    ``values`` (optional) maps an index to its physical value, e.g. ``(-1.0, 1.0)`` for spins.
    """

    is_discrete = True

    def __init__(self, shape: "int | Seq[int]", q: int, values: "Seq[float] | None" = None):
        shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
        if not shape or any(s < 1 for s in shape):
            raise DomainError(f"shape must be a tuple of positive integers, got {shape!r}")
        if int(q) != q or q < 2:
            raise DomainError(f"q (number of values per site) must be an integer >= 2, got {q!r}")
        if values is not None and len(values) != q:
            raise DomainError(f"values has {len(values)} entries but q = {q}; give one per value")
        self.event_shape = shape
        self.q = int(q)
        self.values = None if values is None else tuple(float(v) for v in values)
        self.dtype = torch.int64 if values is None else torch.float32

    @property
    def n_sites(self) -> int:
        return self.event_numel

    def log_size(self) -> float:
        """log of the number of states, n_sites * log q."""
        return self.n_sites * math.log(self.q)

    # -- representations
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Physical -> index representation (int64 in [0, q))."""
        if self.values is None:
            return x.long()
        vals = torch.tensor(self.values, device=x.device, dtype=x.dtype)
        return (x.unsqueeze(-1) == vals).long().argmax(-1)

    def decode(self, idx: torch.Tensor) -> torch.Tensor:
        """Index -> physical representation."""
        if self.values is None:
            return idx.long()
        return torch.tensor(self.values, device=idx.device, dtype=torch.float32)[idx.long()]

    def decode_flat(self, idx: torch.Tensor) -> torch.Tensor:
        """Flat index configurations (B, D) -> physical states (B, *event_shape)."""
        return self.decode(idx.view(idx.shape[0], *self.event_shape))

    def reference(self, n, *, generator=None, device="cpu"):
        idx = torch.randint(0, self.q, (n, *self.event_shape), generator=generator, device=device)
        return self.decode(idx)

    def contains(self, x):
        flat = x.reshape(x.shape[0], -1)
        if self.values is None:
            ok = (flat >= 0) & (flat < self.q)
            if x.dtype.is_floating_point:
                ok &= flat == flat.round()
        else:
            ok = (flat.unsqueeze(-1) == torch.tensor(self.values, device=x.device, dtype=flat.dtype)).any(-1)
        return ok.all(dim=1)

    def _range_hint(self):
        if self.values is None:
            return f"values must be integers in [0, {self.q})"
        return f"values must be one of {self.values}"

    def to_config(self):
        return {"type": type(self).__name__, "shape": list(self.event_shape), "q": self.q,
                "values": None if self.values is None else list(self.values)}

    def __repr__(self):
        v = "" if self.values is None else f", values={self.values}"
        return f"{type(self).__name__}(shape={self.event_shape}, q={self.q}{v})"


class Lattice(Categorical):
    """A ``shape`` lattice (periodic by default) of sites with ``q`` states each."""

    def __init__(self, shape, q, values=None, periodic: bool = True):
        super().__init__(shape, q, values)
        self.periodic = bool(periodic)

    def to_config(self):
        return {**super().to_config(), "periodic": self.periodic}

    def __repr__(self):
        return super().__repr__()[:-1] + ("" if self.periodic else ", periodic=False") + ")"


class Sequence(Categorical):
    """Sequences of fixed ``length`` over an ``alphabet`` (a string or list of tokens)."""

    def __init__(self, length: int, alphabet: "str | Seq[str]"):
        alphabet = list(alphabet)
        if len(set(alphabet)) != len(alphabet):
            raise DomainError(f"alphabet has repeated tokens: {alphabet!r}")
        super().__init__((int(length),), len(alphabet))
        self.alphabet = alphabet
        self.length = int(length)
        # single-character tokens are written as one word, longer ones separated by spaces
        self._sep = "" if all(len(a) == 1 for a in alphabet) else " "

    def to_strings(self, x: torch.Tensor) -> list[str]:
        return [self._sep.join(self.alphabet[i] for i in row) for row in x.long().tolist()]

    def from_strings(self, seqs: "Seq[str]") -> torch.Tensor:
        lut = {a: i for i, a in enumerate(self.alphabet)}
        rows = []
        for s in seqs:
            toks = s.split() if self._sep else list(s)
            if len(toks) != self.length:
                raise DomainError(f"sequence {s!r} has length {len(toks)}, expected {self.length}")
            try:
                rows.append([lut[t] for t in toks])
            except KeyError as exc:
                raise DomainError(f"token {exc.args[0]!r} is not in the alphabet {self.alphabet}")
        return torch.tensor(rows, dtype=torch.int64)

    def to_config(self):
        return {"type": "Sequence", "length": self.length, "alphabet": self.alphabet}

    def __repr__(self):
        alphabet = self.alphabet if self._sep else "".join(self.alphabet)
        return f"Sequence(length={self.length}, alphabet={alphabet!r})"
