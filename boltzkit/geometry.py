r"""Molecular geometry on batches: dihedral angles, chirality, angle wrapping.

One implementation of each, used by the molecular targets, the internal-coordinate map, the
collective variables and the analysis helpers. Works on torch tensors (differentiable) and,
through :func:`dihedral_np`, on numpy arrays.

Dihedral of atoms ``(a, b, c, d)``: the IUPAC/mdtraj angle in ``(-pi, pi]``,
``atan2(|b2| b1 . (b2 x b3), (b1 x b2) . (b2 x b3))`` with ``b1 = x_b - x_a`` etc.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import TargetError


def wrap_angle(t: torch.Tensor) -> torch.Tensor:
    """Angles (radians) mapped to ``(-pi, pi]``."""
    return t - 2 * math.pi * torch.ceil((t - math.pi) / (2 * math.pi))


def dihedral_points(a, b, c, d) -> torch.Tensor:
    """Dihedral angle (radians, ``(-pi, pi]``) of the points ``a, b, c, d`` (``(..., 3)`` each)."""
    b1, b2, b3 = b - a, c - b, d - c
    n1, n2 = torch.cross(b1, b2, dim=-1), torch.cross(b2, b3, dim=-1)
    y = b2.norm(dim=-1) * (b1 * n2).sum(-1)
    return torch.atan2(y, (n1 * n2).sum(-1))


def as_atoms(x) -> torch.Tensor:
    """``(B, N, 3)`` view of a batch given flat ``(B, 3N)`` or as ``(B, N, 3)``."""
    x = torch.as_tensor(x)
    if x.ndim == 2 and x.shape[-1] % 3 == 0:
        return x.reshape(x.shape[0], -1, 3)
    if x.ndim == 3 and x.shape[-1] == 3:
        return x
    raise TargetError(f"coordinates must have shape (B, 3N) or (B, N, 3), got {tuple(x.shape)}; add a "
                      "batch dimension with x[None] for one state")


def dihedral(x, atoms) -> torch.Tensor:
    """Dihedral angles (radians, in ``(-pi, pi]``) of atom quadruples, batched and differentiable.

    Parameters
    ----------
    x : Tensor ``(B, 3N)`` or ``(B, N, 3)``
        Cartesian coordinates.
    atoms : sequence of 4 ints, or ``(m, 4)`` array of them

    Returns
    -------
    Tensor ``(B,)`` for one quadruple, ``(B, m)`` for ``m`` of them.
    """
    p = as_atoms(x)
    idx = torch.as_tensor(np.asarray(atoms, dtype=np.int64), device=p.device)
    single = idx.ndim == 1
    idx = idx.reshape(-1, 4)
    out = dihedral_points(*(p[:, idx[:, k], :] for k in range(4)))
    return out[:, 0] if single else out


def dihedral_np(x: np.ndarray, atoms) -> np.ndarray:
    """:func:`dihedral` of a numpy batch ``(B, N, 3)`` (float64 in, float64 out)."""
    return dihedral(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)), atoms).numpy()


def signed_volume(x, atoms) -> torch.Tensor:
    """Signed volume ``(x_a - x_b) . [(x_c - x_b) x (x_d - x_b)]`` around centre ``b`` (nm^3).

    For an amino acid with ``atoms = (N, CA, C, CB)`` the sign gives the chirality of the
    alpha carbon: positive for L, negative for its mirror image D.
    """
    p = as_atoms(x)
    a, b, c, d = (int(i) for i in atoms)
    ctr = p[:, b, :]
    return ((p[:, a, :] - ctr) * torch.cross(p[:, c, :] - ctr, p[:, d, :] - ctr, dim=-1)).sum(-1)
