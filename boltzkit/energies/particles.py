r"""Particle-system benchmark energies on :class:`~boltzkit.domains.ParticleCloud`.

* :class:`MultiDoubleWell` / :class:`DoubleWell4` (DW-4): pairwise double wells
  ``E(x) = sum_{i<j} [a (r_ij - r0)^4 + b (r_ij - r0)^2 + c]`` with ``a = 0.9, b = -4, c = 0,
  r0 = 4`` for DW-4 (4 particles in 2-D; bgflow's ``MultiDoubleWellPotential`` as used by
  DEM, AS and ASBS). Each unordered pair is counted once.
* :class:`LennardJones` (LJ-13 by default): ``E(x) = f * sum_{i<j} eps [(r_m/r_ij)^12 -
  2 (r_m/r_ij)^6] + (k/2) sum_i |x_i - x_bar|^2``.

Pair-counting convention
------------------------
Both energies count **each unordered pair once** by default (the physical convention: the
LJ-13 global minimum is the Mackay icosahedron at ``-44.326801 eps`` -- Cambridge Cluster
Database -- with the oscillator switched off). The DEM / Adjoint Sampling / ASBS benchmark
code sums the Lennard-Jones term over *ordered* pairs, i.e. twice this value; pass
``pairs="ordered"`` to reproduce their energies (and their W2-on-energy numbers). The DW-4
benchmark code already counts pairs once. The harmonic term (``oscillator=True``, scale 1)
is the one those benchmarks add to keep the cluster together; it is zero-centred, so it
vanishes on the centre of mass and leaves the mean-free subspace invariant.

Distances are ``sqrt(|x_i - x_j|^2 + 1e-12)`` so that gradients stay finite at coincident
points; the shift changes energies by far less than float32 resolution elsewhere.
Energies are evaluated in the input dtype; states are flat ``(B, n * dim)`` (or ``(B, n, dim)``).
"""

from __future__ import annotations

import math

import torch

from ..domains.particles import ParticleCloud
from ..errors import TargetError
from .base import Energy

__all__ = ["MultiDoubleWell", "DoubleWell4", "LennardJones", "pairwise_distances"]

_DIST_EPS = 1e-12
LJ13_GLOBAL_MIN = -44.326801  # Cambridge Cluster Database, pairs counted once, eps = r_m = 1


def pairwise_distances(x: torch.Tensor, n_particles: int, spatial_dim: int) -> torch.Tensor:
    """``(B, n (n - 1) / 2)`` distances of the unordered pairs ``i < j`` (row-major order).

    Parameters
    ----------
    x : Tensor ``(B, n * dim)`` or ``(B, n, dim)``
    """
    p = x.reshape(x.shape[0], n_particles, spatial_dim)
    i, j = torch.triu_indices(n_particles, n_particles, offset=1, device=x.device)
    diff = p[:, i, :] - p[:, j, :]
    return torch.sqrt((diff * diff).sum(-1) + _DIST_EPS)


def _check_finite(name, **values):
    for k, v in values.items():
        if not math.isfinite(float(v)):
            raise TargetError(f"{name}: {k} must be a finite number, got {v!r}")


class _ParticleEnergy(Energy):
    def _particles(self, x: torch.Tensor) -> torch.Tensor:
        dom = self.domain
        n, d = dom.n_particles, dom.spatial_dim
        if not isinstance(x, torch.Tensor) or x.ndim < 2 or x[0].numel() != n * d:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise TargetError(f"{self.name} expects a batch of shape (B, {n * d}) or (B, {n}, {d}), "
                              f"got {shape}; add a batch dimension with x[None] for one state")
        return x.reshape(x.shape[0], n, d)

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, n (n - 1) / 2)`` interatomic distances of the unordered pairs."""
        return pairwise_distances(self._particles(x), self.domain.n_particles, self.domain.spatial_dim)

    def to_config(self):
        dom = self.domain
        return {**super().to_config(), "type": type(self).__name__, "n_particles": dom.n_particles,
                "spatial_dim": dom.spatial_dim}


class MultiDoubleWell(_ParticleEnergy):
    r"""Pairwise double-well potential ``sum_{i<j} a (r-r0)^4 + b (r-r0)^2 + c`` (units of kT).

    Parameters
    ----------
    n_particles, spatial_dim : int
    a, b, c, r0 : float
        Quartic, quadratic and constant coefficients and the distance offset.
    mean_free : bool
        Domain convention (the energy is translation invariant either way).
    """

    def __init__(self, n_particles: int, spatial_dim: int, a: float = 0.9, b: float = -4.0,
                 c: float = 0.0, r0: float = 4.0, *, mean_free: bool = True,
                 name: "str | None" = None):
        _check_finite("MultiDoubleWell", a=a, b=b, c=c, r0=r0)
        if a <= 0:
            raise TargetError(f"MultiDoubleWell needs a > 0 (quartic confinement), got a={a!r}")
        super().__init__(ParticleCloud(n_particles, spatial_dim, mean_free),
                         name=name or f"MultiDoubleWell(n={n_particles}, dim={spatial_dim})")
        self.a, self.b, self.c, self.r0 = float(a), float(b), float(c), float(r0)

    def energy(self, x):
        r = self.distances(x) - self.r0
        r2 = r * r
        return (self.a * r2 * r2 + self.b * r2 + self.c).sum(-1)

    def to_config(self):
        return {**super().to_config(), "a": self.a, "b": self.b, "c": self.c, "r0": self.r0}


class DoubleWell4(MultiDoubleWell):
    """DW-4: 4 particles in 2-D with ``a = 0.9, b = -4, c = 0, r0 = 4`` (d = 8, 6 pairs)."""

    def __init__(self, *, mean_free: bool = True):
        super().__init__(4, 2, 0.9, -4.0, 0.0, 4.0, mean_free=mean_free, name="DW4")


class LennardJones(_ParticleEnergy):
    r"""Lennard-Jones cluster with a harmonic restraint (LJ-13 by default).

    ``E(x) = f * sum_{i<j} eps [(r_m / r_ij)^12 - 2 (r_m / r_ij)^6] + (k / 2) sum_i |x_i - x_bar|^2``

    Parameters
    ----------
    n_particles : int, default 13
    spatial_dim : int, default 3
    epsilon, r_m : float
        Well depth and position of the pair minimum (pair energy ``-epsilon`` at ``r_m``).
    oscillator : bool
        Add the harmonic term ``(k/2) sum_i |x_i - x_bar|^2`` of the DEM/AS benchmarks.
    oscillator_scale : float
        ``k`` (1 in the benchmarks).
    pairs : {"once", "ordered"}
        Each unordered pair once (``f = 1``) or the sum over ordered pairs (``f = 2``) of the
        DEM / AS / ASBS benchmark code (module docstring).
    """

    def __init__(self, n_particles: int = 13, spatial_dim: int = 3, *, epsilon: float = 1.0,
                 r_m: float = 1.0, oscillator: bool = True, oscillator_scale: float = 1.0,
                 pairs: str = "once", mean_free: bool = True):
        _check_finite("LennardJones", epsilon=epsilon, r_m=r_m, oscillator_scale=oscillator_scale)
        if epsilon <= 0 or r_m <= 0:
            raise TargetError(f"LennardJones needs epsilon > 0 and r_m > 0, got {epsilon!r}, {r_m!r}")
        if oscillator_scale < 0:
            raise TargetError(f"oscillator_scale must be >= 0, got {oscillator_scale!r}")
        if pairs not in ("once", "ordered"):
            raise TargetError(f"pairs must be 'once' (each pair counted once) or 'ordered' "
                              f"(DEM/AS benchmark convention, twice the pair sum), got {pairs!r}")
        super().__init__(ParticleCloud(n_particles, spatial_dim, mean_free),
                         name=f"LJ{int(n_particles)}")
        self.epsilon, self.r_m = float(epsilon), float(r_m)
        self.oscillator, self.oscillator_scale = bool(oscillator), float(oscillator_scale)
        self.pairs = pairs
        self.pair_factor = 1.0 if pairs == "once" else 2.0

    def lj_energy(self, x: torch.Tensor) -> torch.Tensor:
        """The Lennard-Jones part only (B,), with this energy's pair convention."""
        s6 = (self.r_m / self.distances(x)) ** 6
        return self.pair_factor * self.epsilon * (s6 * s6 - 2.0 * s6).sum(-1)

    def oscillator_energy(self, x: torch.Tensor) -> torch.Tensor:
        """``(k/2) sum_i |x_i - x_bar|^2`` (B,)."""
        p = self._particles(x)
        c = p - p.mean(1, keepdim=True)
        return 0.5 * self.oscillator_scale * (c * c).sum((1, 2))

    def energy(self, x):
        e = self.lj_energy(x)
        if self.oscillator:
            e = e + self.oscillator_energy(x)
        return e

    def to_config(self):
        return {**super().to_config(), "epsilon": self.epsilon, "r_m": self.r_m,
                "oscillator": self.oscillator, "oscillator_scale": self.oscillator_scale, "pairs": self.pairs}
