"""Point clouds of identical particles: :class:`ParticleCloud`.

Event shape
-----------
A state is stored **flat**, shape ``(n_particles * spatial_dim,)``, particle-major
(``x[3*i:3*i+3]`` is particle ``i`` in 3-D). The flat layout lets every continuous sampler
treat a particle system like ``Reals(d)``; :meth:`ParticleCloud.as_particles` gives the
``(B, n_particles, spatial_dim)`` view that energies and equivariant networks read.

Mean-free (zero centre of mass) systems
---------------------------------------
With ``mean_free=True`` (the default, as in DEM / Adjoint Sampling benchmarks) states live on
the ``(n - 1) * spatial_dim``-dimensional linear subspace ``{x : sum_i x_i = 0}``. Densities and
normalizing constants are taken with respect to Lebesgue measure on that subspace in
orthonormal coordinates, so a Gaussian on it has ``n_dof = (n - 1) * spatial_dim`` degrees of
freedom. The reference draw is the standard normal of the subspace (an isotropic normal with
its centre of mass removed), whose per-coordinate variance is ``(n - 1) / n``.
"""

from __future__ import annotations

import torch

from ..errors import DomainError
from .base import Domain

__all__ = ["ParticleCloud"]

# tolerance of the zero-centre-of-mass check, relative to the largest coordinate
_COM_RTOL = 1e-5


class ParticleCloud(Domain):
    """``n_particles`` points in ``spatial_dim`` dimensions, stored flat.

    Parameters
    ----------
    n_particles : int >= 2
    spatial_dim : int >= 1
    mean_free : bool
        If True, states have zero centre of mass and densities live on the
        ``(n_particles - 1) * spatial_dim``-dimensional subspace.

    Examples
    --------
    >>> dom = ParticleCloud(4, 2)
    >>> x = dom.reference(3)
    >>> x.shape, dom.as_particles(x).shape
    (torch.Size([3, 8]), torch.Size([3, 4, 2]))
    """

    def __init__(self, n_particles: int, spatial_dim: int, mean_free: bool = True):
        for nm, v, lo in (("n_particles", n_particles, 2), ("spatial_dim", spatial_dim, 1)):
            if isinstance(v, bool) or int(v) != v or v < lo:
                raise DomainError(f"ParticleCloud needs an integer {nm} >= {lo}, got {v!r}")
        self.n_particles = int(n_particles)
        self.spatial_dim = int(spatial_dim)
        self.mean_free = bool(mean_free)
        self.event_shape = (self.n_particles * self.spatial_dim,)

    @property
    def n_dof(self) -> int:
        """Degrees of freedom: (n - 1) * spatial_dim when mean-free, else n * spatial_dim."""
        return (self.n_particles - int(self.mean_free)) * self.spatial_dim

    # -- layout
    def as_particles(self, x: torch.Tensor) -> torch.Tensor:
        """View a flat batch ``(B, n * dim)`` as ``(B, n, dim)``."""
        return x.reshape(*x.shape[:-1], self.n_particles, self.spatial_dim)

    def flatten(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`as_particles`: ``(B, n, dim) -> (B, n * dim)``."""
        return x.reshape(*x.shape[:-2], self.n_particles * self.spatial_dim)

    def center_of_mass(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, spatial_dim)``: the mean particle position of each state."""
        return self.as_particles(x).mean(-2)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Orthogonal projection onto the state space (removes the centre of mass when
        mean-free; identity otherwise). Works for states, gradients and noise alike."""
        if not self.mean_free:
            return x
        p = self.as_particles(x)
        return self.flatten(p - p.mean(-2, keepdim=True))

    # -- Domain interface
    def reference(self, n, *, generator=None, device="cpu"):
        return self.project(torch.randn(n, *self.event_shape, generator=generator, device=device))

    def contains(self, x):
        ok = torch.isfinite(x).all(dim=-1)
        if self.mean_free:
            scale = 1.0 + x.detach().abs().amax(dim=-1).nan_to_num(0.0, 0.0, 0.0)
            com = self.center_of_mass(x.detach()).abs().amax(dim=-1)
            ok = ok & (com <= _COM_RTOL * scale * self.n_particles)
        return ok

    def _range_hint(self):
        if self.mean_free:
            return ("states must be finite with zero centre of mass; remove it with "
                    "domain.project(x)")
        return "states must be finite (found NaN or inf)"

    def to_config(self):
        return {"type": "ParticleCloud", "n_particles": self.n_particles,
                "spatial_dim": self.spatial_dim, "mean_free": self.mean_free}

    def __repr__(self):
        return (f"ParticleCloud(n_particles={self.n_particles}, spatial_dim={self.spatial_dim}, "
                f"mean_free={self.mean_free})")
