"""Ready-made constraint sets: spheres, tori, Stiefel manifolds, half-spaces, boxes, polytopes.

Each constructor returns a :class:`ConstraintSet` (equality and inequality callables plus the
ambient dimension); sets intersect with ``&`` and are passed to :func:`boltzkit.constrain`::

    target = bk.constrain(energy, bk.constraints.sphere(3) & bk.constraints.half_space([0, 0, -1], -0.5))

Constraints are scaled to have unit gradient norm on the set where that is natural, so the
feasibility tolerance reads as a distance. States are flat vectors of length ``dim``
(a Stiefel matrix ``X`` of shape (n, k) is stored row-major, ``x = X.reshape(-1)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .._utils import check_positive
from ..errors import TargetError


@dataclass(frozen=True)
class ConstraintSet:
    """Equality and inequality callables of one set, and its ambient dimension (or None)."""

    name: str
    dim: "int | None"
    equalities: tuple = ()
    inequalities: tuple = ()

    def __and__(self, other: "ConstraintSet") -> "ConstraintSet":
        if not isinstance(other, ConstraintSet):
            return NotImplemented
        if self.dim is not None and other.dim is not None and self.dim != other.dim:
            raise TargetError(f"cannot intersect {self.name} (dimension {self.dim}) with "
                              f"{other.name} (dimension {other.dim})")
        return ConstraintSet(f"{self.name} & {other.name}", self.dim if self.dim is not None else other.dim,
                             self.equalities + other.equalities, self.inequalities + other.inequalities)

    def __repr__(self):
        return (f"ConstraintSet({self.name!r}, dim={self.dim}, equalities={len(self.equalities)}, "
                f"inequalities={len(self.inequalities)})")


def _named(fn: Callable, name: str) -> Callable:
    fn.__name__ = fn.__qualname__ = name
    return fn


def _vec(v, what: str, dim: "int | None" = None) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=torch.float64)
    if t.ndim == 0 and dim is not None:
        t = t.expand(dim).clone()
    if t.ndim != 1 or (dim is not None and t.numel() != dim):
        raise TargetError(f"{what} must be a vector of length {dim if dim is not None else 'd'}, "
                          f"got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise TargetError(f"{what} must be finite")
    return t


def _check_dim(dim) -> int:
    if int(dim) != dim or dim < 1:
        raise TargetError(f"dim must be a positive integer, got {dim!r}")
    return int(dim)


# ---------------------------------------------------------------------------- manifolds
def _radial(dim, radius, center, what: str):
    """``(dim, r, x -> (|x - c|^2 - r^2) / (2r))``: zero on the sphere, negative inside."""
    dim, r = _check_dim(dim), check_positive("radius", radius, error=TargetError)
    c = None if center is None else _vec(center, "center", dim)

    def f(x):
        y = x if c is None else x - c.to(x)
        return ((y * y).sum(-1) - r * r) / (2 * r)

    return dim, r, _named(f, what)


def sphere(dim: int, radius: float = 1.0, center=None) -> ConstraintSet:
    """The sphere ``|x - center| = radius`` in R^dim (h = (|x-c|^2 - r^2) / (2r))."""
    dim, r, h = _radial(dim, radius, center, "sphere")
    return ConstraintSet(f"sphere({dim}, r={r:g})", dim, (h,))


def ball(dim: int, radius: float = 1.0, center=None) -> ConstraintSet:
    """The closed ball ``|x - center| <= radius`` (one inequality)."""
    dim, r, g = _radial(dim, radius, center, "ball")
    return ConstraintSet(f"ball({dim}, r={r:g})", dim, (), (g,))


def torus(major_radius: float = 2.0, minor_radius: float = 1.0) -> ConstraintSet:
    """Torus of revolution in R^3 around the x3 axis: ``(rho - R)^2 + x3^2 = r^2``, rho = |(x1, x2)|."""
    big = check_positive("major_radius", major_radius, error=TargetError)
    small = check_positive("minor_radius", minor_radius, error=TargetError)
    if small >= big:
        raise TargetError(f"minor_radius ({small}) must be smaller than major_radius ({big})")

    def h(x):
        rho = torch.sqrt(x[:, 0] ** 2 + x[:, 1] ** 2 + 1e-30)
        return ((rho - big) ** 2 + x[:, 2] ** 2 - small ** 2) / (2 * small)

    return ConstraintSet(f"torus(R={big:g}, r={small:g})", 3, (_named(h, "torus"),))


def flat_torus(n_circles: int = 2, radius: float = 1.0) -> ConstraintSet:
    """Product of ``n_circles`` circles in R^(2 n): ``x_{2k}^2 + x_{2k+1}^2 = radius^2`` for each k.

    For n_circles = 2 this is the Clifford torus; its surface measure is the product of the
    uniform angles.
    """
    n, r = _check_dim(n_circles), check_positive("radius", radius, error=TargetError)

    def h(x):
        y = x.reshape(x.shape[0], n, 2)
        return ((y * y).sum(-1) - r * r) / (2 * r)

    return ConstraintSet(f"flat_torus({n}, r={r:g})", 2 * n, (_named(h, "flat_torus"),))


def stiefel(n: int, k: int) -> ConstraintSet:
    """Stiefel manifold ``{X in R^(n x k): X^T X = I_k}`` (k (k+1) / 2 equalities), x = X.reshape(-1).

    k = n gives the orthogonal group O(n). The surface measure is the Haar measure.
    """
    n, k = _check_dim(n), _check_dim(k)
    if k > n:
        raise TargetError(f"the Stiefel manifold V(n, k) needs k <= n, got n={n}, k={k}")
    pairs = [(i, j) for i in range(k) for j in range(i, k)]

    def h(x):
        m = x.reshape(x.shape[0], n, k)
        # upper triangle of X^T X - I, diagonal halved (unit gradients); elementwise products
        # keep the batched second derivatives cheap (a batched matmul's double backward is not)
        cols = []
        for i, j in pairs:
            dot = (m[:, :, i] * m[:, :, j]).sum(1)
            cols.append(0.5 * (dot - 1.0) if i == j else dot)
        return torch.stack(cols, dim=1)

    return ConstraintSet(f"stiefel({n}, {k})", n * k, (_named(h, "stiefel"),))


def _linear(a, b, what: str):
    """``(x -> A x - b, (m, d))`` with the rows of ``A`` (m, d; none zero) normalized, and ``b`` with them."""
    a = torch.as_tensor(a, dtype=torch.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[0] < 1:
        raise TargetError(f"A must be a matrix (k, d), got shape {tuple(a.shape)}")
    norms = a.norm(dim=1)
    if bool((norms == 0).any()):
        raise TargetError("A has an all-zero row; every row must define a constraint")
    b = _vec(b, "b", a.shape[0])
    a, b = a / norms[:, None], b / norms
    return _named(lambda x: x @ a.to(x).T - b.to(x), what), tuple(a.shape)


def affine(a, b) -> ConstraintSet:
    """Affine subspace ``A x = b`` (rows of A normalized)."""
    h, (m, d) = _linear(a, b, "affine")
    return ConstraintSet(f"affine({m}x{d})", d, (h,))


# ---------------------------------------------------------------------------- regions
def half_space(a, b: float) -> ConstraintSet:
    """Half-space ``a . x <= b``."""
    a = _vec(a, "a")
    n = a.norm()
    if float(n) == 0:
        raise TargetError("a must be a non-zero vector")
    a, b = a / n, float(b) / float(n)
    g = _named(lambda x: x @ a.to(x) - b, "half_space")
    return ConstraintSet(f"half_space(d={a.numel()})", a.numel(), (), (g,))


def polytope(a, b) -> ConstraintSet:
    """Polytope (or polyhedron) ``A x <= b`` componentwise."""
    g, (m, d) = _linear(a, b, "polytope")
    return ConstraintSet(f"polytope({m}x{d})", d, (), (g,))


def box(lower, upper, dim: "int | None" = None) -> ConstraintSet:
    """Axis-aligned box ``lower <= x <= upper`` (2 d inequalities; scalars need ``dim``)."""
    if dim is None:  # the length of a vector bound (the upper one where both are vectors)
        dim = next((t.numel() for t in map(torch.as_tensor, (upper, lower)) if t.ndim == 1), None)
        if dim is None:
            raise TargetError("box(lower, upper) with scalar bounds needs dim=d")
    dim = _check_dim(dim)
    lo, hi = _vec(lower, "lower", dim), _vec(upper, "upper", dim)
    if bool((lo >= hi).any()):
        raise TargetError("box needs lower < upper in every coordinate")
    g = _named(lambda x: torch.cat([lo.to(x) - x, x - hi.to(x)], dim=1), "box")
    return ConstraintSet(f"box(d={dim})", dim, (), (g,))


def simplex(dim: int, *, probability: bool = True) -> ConstraintSet:
    """The probability simplex ``{x >= 0, sum x = 1}`` (``probability=False``: ``sum x <= 1``).

    With ``probability=True`` the uniform law is Dirichlet(1, ..., 1).
    """
    dim = _check_dim(dim)
    scale = dim ** 0.5
    nonneg = _named(lambda x: -x, "nonnegative")
    total = _named(lambda x: (x.sum(-1) - 1.0) / scale, "sum_to_one" if probability else "sum_at_most_one")
    if probability:
        return ConstraintSet(f"simplex({dim})", dim, (total,), (nonneg,))
    return ConstraintSet(f"simplex({dim}, solid)", dim, (), (nonneg, total))


__all__ = ["ConstraintSet", "sphere", "ball", "torus", "flat_torus", "stiefel", "affine",
           "half_space", "polytope", "box", "simplex"]
