r"""Ready-made collective variables (CVs) for free-energy profiles.

A :class:`CollectiveVariable` maps a batch of states ``(B, *event_shape)`` to ``(B, m)``
float64 values, with a name per column and whether each column is an angle (periodic on
``(-pi, pi]``). Use one with :meth:`boltzkit.result.Result.free_energy_profile` or
:meth:`boltzkit.free_energy.MultistateFreeEnergies.free_energy_profile`; any callable
``x -> (B,)`` or ``(B, m)`` works there too.

* molecules: :func:`phi_psi`, :func:`phi`, :func:`psi` (backbone dihedrals through
  :func:`boltzkit.analysis.dihedral`; alanine dipeptide's atoms by default);
* lattices: :func:`magnetization` (Ising spins, or the Potts order parameter with ``q``),
  :func:`energy_per_site` (reduced energy per site, kT);
* continuous targets: :func:`coordinate`.

:func:`from_spec` turns a short string (``"phi,psi"``, ``"magnetization"``, ``"x0"``) into a CV.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .errors import TargetError
from .geometry import dihedral

__all__ = ["CollectiveVariable", "as_cv", "phi_psi", "phi", "psi", "magnetization",
           "energy_per_site", "coordinate", "from_spec", "ALANINE_PHI", "ALANINE_PSI"]

# alanine dipeptide (ACE-ALA-NME, openmmtools atom order): phi = C-N-CA-C, psi = N-CA-C-N
ALANINE_PHI, ALANINE_PSI = (4, 6, 8, 14), (6, 8, 14, 16)


@dataclass(frozen=True)
class CollectiveVariable:
    """A batched map from states to ``m`` real values.

    Attributes
    ----------
    fn : callable ``x (B, ...) -> (B,) or (B, m)``
    names : one name per column
    periodic : one flag per column: True for an angle in radians on ``(-pi, pi]``
    """

    fn: Callable
    names: tuple
    periodic: tuple

    def __post_init__(self):
        if len(self.names) != len(self.periodic):
            raise TargetError("a collective variable needs one periodic flag per name")

    @property
    def dim(self) -> int:
        return len(self.names)

    def __call__(self, x) -> np.ndarray:
        with torch.no_grad():
            v = self.fn(torch.as_tensor(x))
        v = torch.as_tensor(v).detach().to("cpu", torch.float64).numpy()
        n = int(x.shape[0])
        if v.ndim == 1:
            v = v[:, None]
        if v.shape != (n, self.dim):
            raise TargetError(f"collective variable {','.join(self.names)} returned shape {v.shape} for "
                              f"{n} states; expected ({n},) or ({n}, {self.dim})")
        if not np.isfinite(v).all():
            raise TargetError(f"collective variable {','.join(self.names)} returned non-finite values")
        return v

    def __repr__(self):
        return f"CollectiveVariable({', '.join(self.names)})"


def as_cv(cv, x_example=None) -> CollectiveVariable:
    """A :class:`CollectiveVariable` from a CV, a spec string (:func:`from_spec`) or a callable
    (columns named ``s0, s1, ...``, not periodic; ``x_example`` sets the number of columns)."""
    if isinstance(cv, CollectiveVariable):
        return cv
    if isinstance(cv, str):
        return from_spec(cv)
    if callable(cv):
        m = 1
        if x_example is not None:
            with torch.no_grad():
                v = torch.as_tensor(cv(x_example[:2]))
            m = 1 if v.ndim == 1 else int(v.shape[-1])
        name = getattr(cv, "__name__", "s")
        names = (name,) if m == 1 and name != "<lambda>" else tuple(f"s{i}" for i in range(m))
        return CollectiveVariable(cv, names, (False,) * m)
    raise TargetError(f"cv must be a CollectiveVariable, a string such as 'phi,psi', or a callable "
                      f"x -> (B,) values, got {type(cv).__name__}")


# ----------------------------------------------------------------------------- molecules
def phi_psi(phi_atoms=ALANINE_PHI, psi_atoms=ALANINE_PSI) -> CollectiveVariable:
    """Backbone dihedrals ``(phi, psi)`` (radians) of Cartesian states ``(B, 3N)`` or ``(B, N, 3)``."""
    return _dihedral_cv(("phi", "psi"), [tuple(phi_atoms), tuple(psi_atoms)])


def _dihedral_cv(names: tuple, quads) -> CollectiveVariable:
    return CollectiveVariable(lambda x: dihedral(x, quads), names, (True,) * len(names))


def phi(atoms=ALANINE_PHI) -> CollectiveVariable:
    """Backbone dihedral phi (radians) of Cartesian states."""
    return _dihedral_cv(("phi",), tuple(atoms))


def psi(atoms=ALANINE_PSI) -> CollectiveVariable:
    """Backbone dihedral psi (radians) of Cartesian states."""
    return _dihedral_cv(("psi",), tuple(atoms))


# ----------------------------------------------------------------------------- lattices
def magnetization(q: "int | None" = None, *, absolute: bool = False) -> CollectiveVariable:
    """Magnetization per site.

    ``q=None``: the mean spin of +-1 states (Ising); with ``q``: the Potts order parameter
    ``(q max_a n_a / N - 1) / (q - 1)`` of states in ``{0..q-1}`` (in [0, 1]).
    ``absolute`` takes ``|m|`` (Ising).
    """
    if q is not None and (isinstance(q, bool) or int(q) != q or q < 2):
        raise TargetError(f"q must be None (Ising spins) or an integer >= 2, got {q!r}")

    def m(x):
        flat = x.flatten(1)
        if q is None:
            v = flat.double().mean(1)
            return v.abs() if absolute else v
        frac = torch.nn.functional.one_hot(flat.long(), int(q)).double().mean(1)
        return (q * frac.max(1).values - 1.0) / (q - 1.0)

    return CollectiveVariable(m, ("|m|" if absolute else "m",), (False,))


def energy_per_site(target) -> CollectiveVariable:
    """Reduced energy per site ``U(x) / n_sites`` (kT) of a lattice target."""
    n = getattr(target, "n_sites", None) or getattr(target.domain, "n_sites", None) \
        or target.domain.event_numel
    return CollectiveVariable(lambda x: target.energy(x).double() / n, ("u",), (False,))


# ----------------------------------------------------------------------------- continuous
def coordinate(i: int = 0, name: "str | None" = None) -> CollectiveVariable:
    """The ``i``-th coordinate of flat states ``(B, d)``."""
    if isinstance(i, bool) or int(i) != i or i < 0:
        raise TargetError(f"coordinate index must be a non-negative integer, got {i!r}")

    def c(x):
        if x.ndim != 2 or x.shape[1] <= i:
            raise TargetError(f"coordinate {i} of states of shape {tuple(x.shape)}: the states must be "
                              f"(B, d) with d > {i}")
        return x[:, int(i)]

    return CollectiveVariable(c, (name or f"x{int(i)}",), (False,))


_NAMED_CVS = {"phi,psi": phi_psi, "phi_psi": phi_psi, "ramachandran": phi_psi, "phi": phi, "psi": psi,
              "m": magnetization, "magnetization": magnetization, "magnetisation": magnetization,
              "|m|": lambda: magnetization(absolute=True), "abs_m": lambda: magnetization(absolute=True)}


def from_spec(spec: str, target=None) -> CollectiveVariable:
    """A CV from a short string: ``"phi,psi"``, ``"phi"``, ``"psi"``, ``"m"`` / ``"magnetization"``,
    ``"|m|"``, ``"potts_m:Q"``, ``"energy"`` (needs ``target``), ``"x0"``, ``"x1"``, ..."""
    s = spec.replace(" ", "").lower()
    if s in _NAMED_CVS:
        return _NAMED_CVS[s]()
    if s == "psi,phi":
        raise TargetError("use --cv phi,psi (phi on the x axis)")
    if s.startswith("potts_m:"):
        return magnetization(int(s.split(":", 1)[1]))
    if s in ("energy", "u", "energy_per_site"):
        if target is None:
            raise TargetError("the energy collective variable needs the target: cv.energy_per_site(target)")
        return energy_per_site(target)
    if s.startswith("x") and s[1:].isdigit():
        return coordinate(int(s[1:]))
    raise TargetError(f"unknown collective variable {spec!r}; use phi,psi | phi | psi | m | |m| | "
                      "potts_m:Q | energy | x0, x1, ...")
