"""Lattice models on periodic L x L square lattices: :class:`Ising` and :class:`Potts`.

Every nearest-neighbour bond is counted once (2 L^2 bonds on the torus, L >= 3). Energies are
returned in float64: the bond sums are exact integers, so U is exact to double precision.
"""

from __future__ import annotations

import math

import torch

from ..domains import Lattice
from ..errors import TargetError
from .base import Energy

BETA_C_ISING = 0.5 * math.log(1.0 + math.sqrt(2.0))


def potts_beta_c(q: int) -> float:
    """Critical coupling beta_c J = ln(1 + sqrt q) of the square-lattice q-state Potts model."""
    return math.log(1.0 + math.sqrt(q))


def _check_lattice_args(L, beta, J):
    if int(L) != L or L < 3:
        raise TargetError(f"L must be an integer >= 3 (L = 2 double-counts periodic bonds), got {L!r}")
    for nm, v in (("beta", beta), ("J", J)):
        if not math.isfinite(float(v)):
            raise TargetError(f"{nm} must be finite, got {v!r}")
    if beta < 0:
        raise TargetError(f"beta must be >= 0, got {beta!r}")


class _LatticeEnergy:
    """Shared pieces of nearest-neighbour lattice models."""

    @staticmethod
    def _bond_sum(s: torch.Tensor, pair) -> torch.Tensor:
        """Sum over the 2 L^2 bonds of pair(s_i, s_j); s is (B, L, L)."""
        return (pair(s, torch.roll(s, 1, dims=1)) + pair(s, torch.roll(s, 1, dims=2))).flatten(1).sum(1)

    @property
    def n_sites(self) -> int:
        return self.L * self.L

    @property
    def n_bonds(self) -> int:
        return 2 * self.L * self.L


class Ising(_LatticeEnergy, Energy):
    r"""2-D Ising model, U(s) = -beta (J \sum_<ij> s_i s_j + h \sum_i s_i), spins s = +-1.

    States are float tensors (B, L, L) of +-1.
    """

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

    def __init__(self, L: int = 16, q: int = 3, beta: "float | None" = None, J: float = 1.0):
        if int(q) != q or q < 2:
            raise TargetError(f"q must be an integer >= 2, got {q!r}")
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
