r"""A small molecule from a SMILES string as a target on its rotatable torsions
(:func:`from_smiles`, :class:`TorsionEnergy`): MMFF94 energy from RDKit with rigid bonds and angles.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from scipy import constants

from ..domains import Reals
from ..errors import TargetError, require
from ..geometry import dihedral_np
from ._bridge import _check_temperature, _NumpyBackedEnergy
from .base import SamplingView
from .internal import TorusWindowedEnergy


def _moving_atoms(mol, j: int, k: int) -> np.ndarray:
    """Atoms on the ``k`` side of bond ``j-k`` (the bond must not be in a ring)."""
    n = mol.GetNumAtoms()
    seen = np.zeros(n, dtype=bool)
    seen[k] = True
    stack = [k]
    while stack:
        a = stack.pop()
        for nb in mol.GetAtomWithIdx(a).GetNeighbors():
            b = nb.GetIdx()
            if (a == k and b == j) or seen[b]:
                continue
            if b == j:
                raise TargetError(f"bond {j}-{k} is in a ring; ring torsions cannot be rotated rigidly")
            seen[b] = True
            stack.append(b)
    return seen


def _bond_axis(x: np.ndarray, j: int, k: int) -> np.ndarray:
    """Unit vectors ``(x_k - x_j) / |x_k - x_j|`` (B, 3) of bond ``j-k`` in each state."""
    axis = x[:, k] - x[:, j]
    return axis / np.linalg.norm(axis, axis=-1, keepdims=True)


def _rotate(x: np.ndarray, mask: np.ndarray, origin: np.ndarray, axis: np.ndarray,
            angle: np.ndarray) -> None:
    """In place: rotate atoms ``mask`` of each state about ``axis`` (B, 3, unit) through
    ``origin`` (B, 3) by ``angle`` (B,) (right-hand rule), Rodrigues' formula."""
    p = x[:, mask, :] - origin[:, None, :]
    k = axis[:, None, :]
    c, s = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    rot = p * c + np.cross(k, p) * s + k * (k * p).sum(-1, keepdims=True) * (1.0 - c)
    x[:, mask, :] = rot + origin[:, None, :]


class _MMFFBackend:
    """MMFF94 force field of one molecule (rebuilt lazily after unpickling)."""

    def __init__(self, molblock: str, variant: str):
        self.molblock, self.variant = molblock, variant
        self._ff = None

    def __getstate__(self):
        return {"molblock": self.molblock, "variant": self.variant}

    def __setstate__(self, state):
        self.__init__(state["molblock"], state["variant"])

    @property
    def ff(self):
        if self._ff is None:
            Chem = require("rdkit.Chem", "molecular")
            AllChem = require("rdkit.Chem.AllChem", "molecular")
            self.mol = Chem.MolFromMolBlock(self.molblock, removeHs=False)
            props = AllChem.MMFFGetMoleculeProperties(self.mol, mmffVariant=self.variant)
            if props is None:
                raise TargetError(f"MMFF ({self.variant}) has no parameters for this molecule")
            self._ff = AllChem.MMFFGetMoleculeForceField(self.mol, props)
        return self._ff


class TorsionEnergy(_NumpyBackedEnergy):
    r"""MMFF94 energy of a molecule as a function of its rotatable torsions (rigid bonds and angles).

    A state is the vector of ``k`` torsion angles ``theta`` (radians); the conformer is the
    rigid template (an MMFF-minimized conformer) with each torsion set to ``theta_t`` by
    rotating the atoms on the ``l`` side of bond ``j-k``; ``u(theta) = E_MMFF(x(theta)) / kT``.

    Domain and periodicity: ``Reals(k)`` with **periodic meaning** -- ``u`` is 2 pi-periodic in
    every coordinate, so the target is a density on the torus ``[-pi, pi)^k``; on ``R^k`` it
    has infinite mass (``exact_log_z()`` is None). :func:`boltzkit.sample` samples it through
    :meth:`sampling_view` (one period, windowed about the template's torsions) and returns
    samples wrapped to ``[-pi, pi)`` and the log Z of the torus. Wrap other samples with
    :meth:`wrap` before histogramming. This torsion-space density is *not* the marginal of the Cartesian
    Boltzmann distribution (no bond/angle fluctuations, no metric/Jacobian factor); it is the
    conditional density at the rigid template geometry.

    Gradient: exact chain rule, ``du/dtheta_t = sum_{a moving} grad_a E . (e_t x (x_a - x_k))
    / kT`` with ``e_t`` the unit bond axis (RDKit gives Cartesian MMFF gradients). Evaluation
    loops over the batch in Python (RDKit evaluates one conformer per call, 30-170 us for
    20-70 atoms); the torsion rotations themselves are vectorized over the batch.

    Parameters
    ----------
    molblock : str
        Mol block of the molecule with explicit hydrogens and the template conformer (Angstrom).
    torsions : sequence of (i, j, k, l)
    temperature : float
        Kelvin (kT(300 K) = 0.596 kcal/mol).
    variant : "MMFF94" or "MMFF94s"
    """

    hvp_step = 1e-5  # rad

    def __init__(self, molblock: str, torsions: Sequence[Sequence[int]], temperature: float = 300.0,
                 *, variant: str = "MMFF94", smiles: "str | None" = None, name: "str | None" = None):
        Chem = require("rdkit.Chem", "molecular")
        if variant not in ("MMFF94", "MMFF94s"):
            raise TargetError(f"variant must be 'MMFF94' or 'MMFF94s', got {variant!r}")
        mol = Chem.MolFromMolBlock(molblock, removeHs=False)
        if mol is None or mol.GetNumConformers() != 1:
            raise TargetError("molblock must describe one molecule with one 3-D conformer")
        tors = np.asarray(torsions, dtype=np.int64).reshape(-1, 4)
        if tors.shape[0] == 0:
            raise TargetError("the molecule has no rotatable torsions; there is nothing to sample")
        n = mol.GetNumAtoms()
        if tors.min() < 0 or tors.max() >= n:
            raise TargetError(f"torsion atom indices must be in [0, {n})")
        for i, j, k, l in tors:
            for a, b in ((i, j), (j, k), (k, l)):
                if mol.GetBondBetweenAtoms(int(a), int(b)) is None:
                    raise TargetError(f"torsion {(i, j, k, l)}: atoms {a} and {b} are not bonded")
        super().__init__(Reals(len(tors)), name=name or f"Torsions({smiles or 'molecule'})")
        self.temperature = _check_temperature(temperature)
        self.kT = constants.R * self.temperature / 4184.0  # kcal/mol
        self.smiles, self.variant = smiles, variant
        self.torsions = tors
        self.n_atoms = n
        self._masks = np.stack([_moving_atoms(mol, int(j), int(k)) for _, j, k, _ in tors])
        self.template = np.asarray(mol.GetConformer().GetPositions(), dtype=np.float64)  # Angstrom
        self.theta0 = np.array([dihedral_np(self.template[None], t)[0] for t in tors])
        self._mmff = _MMFFBackend(molblock, variant)

    @property
    def molblock(self) -> str:
        return self._mmff.molblock

    def wrap(self, theta: torch.Tensor) -> torch.Tensor:
        """Angles mapped to ``[-pi, pi)``."""
        return torch.remainder(theta + math.pi, 2 * math.pi) - math.pi

    def sampling_view(self) -> SamplingView:
        """Where :func:`boltzkit.sample` samples these torsions: on ``R^k`` with a periodic
        window of one turn centred at the template's torsions
        (:class:`~boltzkit.energies.internal.TorusWindowedEnergy`, the same log Z as the
        torus), samples wrapped back to ``[-pi, pi)``."""
        return SamplingView(TorusWindowedEnergy(self, self.theta0), self.wrap, lambda log_z: log_z,
                            description="torsions on one period about the template (log Z of "
                                        "the torus), wrapped to [-pi, pi)")

    def reference_state(self) -> torch.Tensor:
        """The torsions of the minimized template conformer, ``(1, k)`` float32."""
        return torch.from_numpy(self.theta0).float()[None]

    def conformers(self, theta) -> np.ndarray:
        """Cartesian coordinates (Angstrom) ``(B, N, 3)`` of the torsion states ``theta`` (B, k)."""
        return self._build(self._flat(torch.as_tensor(theta)).detach().cpu().double().numpy())

    def _build(self, th: np.ndarray) -> np.ndarray:
        x = np.repeat(self.template[None], th.shape[0], axis=0)
        for t, (_, j, k, _) in enumerate(self.torsions):
            delta = th[:, t] - dihedral_np(x, self.torsions[t])
            _rotate(x, self._masks[t], x[:, k], _bond_axis(x, j, k), delta)
        return x

    def _backend(self, th, grad):
        u = np.full(th.shape[0], math.inf)
        g = np.zeros_like(th) if grad else None
        ok = np.isfinite(th).all(1)
        if not ok.any():
            return u, g
        x = self._build(np.where(ok[:, None], th, 0.0))
        ff = self._mmff.ff
        gx = np.zeros_like(x) if grad else None
        for i in np.flatnonzero(ok):
            flat = x[i].ravel().tolist()
            u[i] = ff.CalcEnergy(flat)
            if grad:
                gx[i] = np.asarray(ff.CalcGrad(flat)).reshape(-1, 3)
        u[~np.isfinite(u)] = math.inf
        if grad:
            for t, (_, j, k, _) in enumerate(self.torsions):
                m = self._masks[t]
                lever = np.cross(_bond_axis(x, j, k)[:, None, :], x[:, m, :] - x[:, k][:, None, :])
                g[:, t] = (gx[:, m, :] * lever).sum((1, 2))
            g /= self.kT
            g[~np.isfinite(u) | ~np.isfinite(g).all(1)] = 0.0
        return u / self.kT, g

    def to_config(self):
        return {**super().to_config(), "type": "TorsionEnergy", "smiles": self.smiles,
                "torsions": self.torsions.tolist(), "temperature": self.temperature,
                "variant": self.variant}


def rotatable_torsions(mol) -> list:
    """One ``(i, j, k, l)`` per rotatable bond (RDKit's Lipinski rotatable-bond SMARTS on the
    heavy atoms: single, non-ring bonds between non-terminal atoms, no triple-bond ends; amide
    C-N bonds are included), ``i``/``l`` the lowest-index heavy neighbours."""
    Chem = require("rdkit.Chem", "molecular")
    Lipinski = require("rdkit.Chem.Lipinski", "molecular")
    heavy = Chem.RemoveHs(mol)
    out = []
    for j, k in heavy.GetSubstructMatches(Lipinski.RotatableBondSmarts):
        i = min(a.GetIdx() for a in heavy.GetAtomWithIdx(j).GetNeighbors() if a.GetIdx() != k)
        l = min(a.GetIdx() for a in heavy.GetAtomWithIdx(k).GetNeighbors() if a.GetIdx() != j)
        out.append((i, j, k, l))
    return out


def from_smiles(smiles: str, temperature: float = 300.0, *, torsions=None, n_conformers: int = 10,
                seed: int = 0, variant: str = "MMFF94", max_iters: int = 2000) -> TorsionEnergy:
    """A torsion-space Boltzmann target of a small molecule from its SMILES string.

    Embeds ``n_conformers`` ETKDGv3 conformers (``randomSeed=seed``), minimizes them with MMFF
    and keeps the lowest-energy one as the rigid template of a :class:`TorsionEnergy`.

    Parameters
    ----------
    smiles : str
    temperature, variant : as in :class:`TorsionEnergy`
    torsions : sequence of (i, j, k, l), optional
        Atom indices (hydrogens are appended after the heavy atoms of the SMILES); default
        :func:`rotatable_torsions`.
    n_conformers, seed, max_iters : conformer search settings.

    Examples
    --------
    >>> target = from_smiles("CC(=O)N[C@@H](C)C(=O)NC")   # capped alanine: 4 torsions
    >>> target.domain, target.energy(target.reference_state())
    """
    Chem = require("rdkit.Chem", "molecular")
    AllChem = require("rdkit.Chem.AllChem", "molecular")
    if not isinstance(smiles, str):
        raise TargetError(f"smiles must be a string, got {type(smiles).__name__}")
    base = Chem.MolFromSmiles(smiles)
    if base is None:
        raise TargetError(f"RDKit cannot parse the SMILES {smiles!r}")
    if isinstance(n_conformers, bool) or not isinstance(n_conformers, int) or n_conformers < 1:
        raise TargetError(f"n_conformers must be a positive integer, got {n_conformers!r}")
    mol = Chem.AddHs(base)
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    cids = list(AllChem.EmbedMultipleConfs(mol, n_conformers, params))
    if not cids:
        raise TargetError(f"RDKit could not embed a 3-D conformer of {smiles!r}")
    res = AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=int(max_iters), mmffVariant=variant)
    energies = [e if conv == 0 else e + 1e6 for conv, e in res]  # prefer converged minima
    best = cids[int(np.argmin(energies))]
    keep = Chem.Mol(mol, confId=best)  # a copy holding that conformer alone
    tors = rotatable_torsions(keep) if torsions is None else torsions
    return TorsionEnergy(Chem.MolToMolBlock(keep), tors, temperature, variant=variant,
                         smiles=smiles, name=f"Torsions({smiles})")
