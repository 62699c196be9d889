"""Lattice models on periodic L x L square lattices: :class:`Ising` and :class:`Potts`.

Every nearest-neighbour bond is counted once (2 L^2 bonds on the torus, L >= 3). Energies are
returned in float64: the bond sums are exact integers, so U is exact to double precision.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..domains import Lattice
from ..errors import TargetError
from .base import Energy

BETA_C_ISING = 0.5 * math.log(1.0 + math.sqrt(2.0))


def potts_beta_c(q: int) -> float:
    """Critical coupling beta_c J = ln(1 + sqrt q) of the square-lattice q-state Potts model."""
    return math.log(1.0 + math.sqrt(q))


def _check_q(q) -> int:
    if isinstance(q, bool) or int(q) != q or q < 2:
        raise TargetError(f"q must be an integer >= 2 (the number of Potts states), got {q!r}")
    return int(q)


def _check_lattice_args(L, beta, J):
    if int(L) != L or L < 3:
        raise TargetError(f"L must be an integer >= 3 (L = 2 double-counts periodic bonds), got {L!r}")
    for nm, v in (("beta", beta), ("J", J)):
        if not math.isfinite(float(v)):
            raise TargetError(f"{nm} must be finite, got {v!r}")
    if beta < 0:
        raise TargetError(f"beta must be >= 0, got {beta!r}")


@dataclass(frozen=True)
class LatticeModel:
    """What a nearest-neighbour lattice energy says about itself (its ``lattice_model()`` hook):
    the kernels of :mod:`boltzkit.kernels.lattice` read L, beta, J, h and q from it."""

    kind: str  # "ising" or "potts"
    L: int
    beta: float
    J: float
    h: float
    q: int


def neighbour_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of the four periodic nearest neighbours of every site; t is (B, L, L[, ...])."""
    return torch.roll(t, 1, 1) + torch.roll(t, -1, 1) + torch.roll(t, 1, 2) + torch.roll(t, -1, 2)


@functools.lru_cache(maxsize=None)
def colour_classes(L: int) -> tuple:
    """Partition the periodic L x L lattice into classes with no two neighbours in one class.

    With a proper colouring a(i) of the ring of L sites (alternating 0, 1, plus colour 2 on
    the last site when L is odd), c(i, j) = (a(i) + a(j)) mod k is a proper colouring of the
    torus: a checkerboard (k = 2) for even L, three classes for odd L.
    """
    a = np.arange(L) % 2
    k = 2
    if L % 2:
        a[-1], k = 2, 3
    colour = (a[:, None] + a[None, :]) % k
    return tuple(colour == c for c in range(k))


class _LatticeEnergy:
    """Shared pieces of nearest-neighbour lattice models."""

    sample_plot = "boltzkit.plot:lattice_sample_plot"  # order-parameter histogram

    @staticmethod
    def _bond_sum(s: torch.Tensor, pair) -> torch.Tensor:
        """Sum over the 2 L^2 bonds of pair(s_i, s_j); s is (B, L, L)."""
        return (pair(s, torch.roll(s, 1, dims=1)) + pair(s, torch.roll(s, 1, dims=2))).flatten(1).sum(1)

    @property
    def n_sites(self) -> int:
        return self.L * self.L

    # ---- hooks: how samplers learn the local structure (no type checks)
    def lattice_model(self) -> LatticeModel:
        """L, beta, J, h, q for the lattice kernels (:mod:`boltzkit.kernels.lattice`).
        A subclass that changes :meth:`energy` must override this hook and :meth:`local_log_ratios`."""
        return LatticeModel(self._kind, self.L, self.beta, self.J, getattr(self, "h", 0.0), self.domain.q)

    def local_log_ratios(self, idx: torch.Tensor) -> torch.Tensor:
        """Single-site conditionals: ``log pi(x^{d <- n}) - log pi(x) = U(x) - U(x^{d <- n})``
        for every site d and value n, in closed form from the neighbour sums.

        idx : int64 (B, D) index configurations (sites flattened row-major).
        Returns float64 (B, D, q), 0 at each site's current value.
        """
        b, d, q = idx.shape[0], self.n_sites, self.domain.q
        if self._kind == "ising":
            s = (2 * idx - 1).to(torch.float64)  # index 0 -> spin -1, 1 -> +1
            field = self.J * neighbour_sum(s.view(b, self.L, self.L)).reshape(b, d, 1) + self.h
            spins = torch.tensor([-1.0, 1.0], dtype=torch.float64, device=idx.device)
            return self.beta * (spins - s.unsqueeze(-1)) * field
        lat = idx.view(b, self.L, self.L)
        counts = neighbour_sum(torch.nn.functional.one_hot(lat, q).to(torch.float64)).reshape(b, d, q)
        here = counts.gather(-1, idx.unsqueeze(-1))
        return self.beta * self.J * (counts - here)


class Ising(_LatticeEnergy, Energy):
    r"""2-D Ising model, U(s) = -beta (J \sum_<ij> s_i s_j + h \sum_i s_i), spins s = +-1.

    States are float tensors (B, L, L) of +-1.
    """

    _kind = "ising"

    def __init__(self, L: int = 16, beta: float = BETA_C_ISING, J: float = 1.0, h: float = 0.0):
        _check_lattice_args(L, beta, J)
        super().__init__(Lattice((int(L), int(L)), 2, values=(-1.0, 1.0)),
                         name=f"Ising(L={int(L)}, beta={beta:g})")
        self.L, self.beta, self.J, self.h = int(L), float(beta), float(J), float(h)

    def energy(self, x):
        s = x.to(torch.float32) if not x.dtype.is_floating_point else x
        inter = self._bond_sum(s, lambda a, b: a * b).double()  # integer-valued: exact
        return -self.beta * (self.J * inter + self.h * s.flatten(1).sum(1).double())

    def with_beta(self, beta: float) -> "Ising":
        return Ising(self.L, beta, self.J, self.h)

    def exact_log_z(self):
        from .exact import ising_log_z

        return ising_log_z(self.L, self.L, self.beta * self.J, self.beta * self.h)

    def magnetization(self, x: torch.Tensor) -> torch.Tensor:
        """Magnetization per site (B,)."""
        return x.flatten(1).to(torch.float32).mean(1)

    def to_config(self):
        return {**super().to_config(), "type": "Ising", "L": self.L, "beta": self.beta,
                "J": self.J, "h": self.h}


class Potts(_LatticeEnergy, Energy):
    r"""2-D q-state Potts model, U(s) = -beta J \sum_<ij> delta(s_i, s_j), s_i in {0..q-1}.

    States are int64 tensors (B, L, L).
    """

    _kind = "potts"

    def __init__(self, L: int = 16, q: int = 3, beta: "float | None" = None, J: float = 1.0):
        q = _check_q(q)
        beta = potts_beta_c(int(q)) / J if beta is None else beta
        _check_lattice_args(L, beta, J)
        super().__init__(Lattice((int(L), int(L)), int(q)), name=f"Potts(L={int(L)}, q={int(q)}, beta={beta:g})")
        self.L, self.q, self.beta, self.J = int(L), int(q), float(beta), float(J)

    def energy(self, x):
        inter = self._bond_sum(x, lambda a, b: (a == b).to(torch.float32)).double()  # exact count
        return -self.beta * self.J * inter

    def with_beta(self, beta: float) -> "Potts":
        return Potts(self.L, self.q, beta, self.J)

    def exact_log_z(self):
        from .exact import potts_log_z

        return potts_log_z(self.L, self.L, self.q, self.beta * self.J)

    def to_config(self):
        return {**super().to_config(), "type": "Potts", "L": self.L, "q": self.q,
                "beta": self.beta, "J": self.J}
