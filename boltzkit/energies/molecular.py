r"""Molecular Boltzmann targets: OpenMM force fields and RDKit (MMFF94) torsion models.

The code lives in one module per seam: :mod:`._bridge` (numpy force fields as torch energies),
:mod:`.openmm_energy`, :mod:`.alanine` (the target and its basin analysis) and :mod:`.smiles`;
this module gathers them and states the conventions they share.

* :class:`OpenMMEnergy` -- any ``openmm.System`` as a batched target ``u(x) = U(x) / kT`` on
  Cartesian coordinates in nm, with forces as its gradient.
* :class:`AlanineDipeptide` -- ACE-ALA-NME in AMBER ff96, shipped with openmmtools (:mod:`.alanine`).
* :func:`from_smiles` / :class:`TorsionEnergy` -- a SMILES molecule on its rotatable torsions (:mod:`.smiles`).

Optional dependencies (``pip install 'boltzkit[molecular]'``: openmm, openmmtools, mdtraj,
rdkit) are imported lazily when a target is built; importing boltzkit never imports them.

Units and conventions
---------------------
* Energies are reduced, ``u = U / kT`` with ``kT = R T`` (``R`` from ``openmm.unit`` for the
  OpenMM targets: ``kT(300 K) = 2.494339 kJ/mol``; in kcal/mol for MMFF). Gradients are
  ``grad u = -F / kT`` (1/nm for Cartesian targets, 1/rad for torsion targets).
* Cartesian states are flat, shape ``(B, 3N)`` particle-major (atom ``i`` is
  ``x[:, 3i:3i+3]``); ``(B, N, 3)`` is accepted as well.
* **Clashes and non-finite energies**: a state whose energy or forces are not finite (e.g.
  two atoms on top of each other, NaN coordinates) gets energy ``+inf`` and gradient 0. It is
  never returned as NaN; a Metropolis step rejects it. Validation of a target on such a
  state raises a :class:`~boltzkit.errors.TargetError` naming it. Huge but finite energies
  (random coordinates give ``1e6``-``1e7`` kT) are returned as they are, unless
  ``energy_cut`` is set: then ``u > cut`` becomes ``cut + log(1 + u - cut)`` (the
  lin-log regularization of FAB, Midgley et al. 2023), which changes the density only where
  it is below ``exp(-cut)`` and keeps gradients bounded for training.
* **Translation invariance**: ``exp(-U)`` of a molecule in vacuum or implicit solvent does not
  depend on its position, so over ``R^{3N}`` it has infinite mass. :class:`OpenMMEnergy`
  returns ``U / kT`` as it is by default (``com_restraint=None``; fine for MCMC and for
  free-energy *differences*). With ``com_restraint=s`` (nm) the harmonic term
  ``|c|^2 / (2 s^2)`` on the centre of geometry ``c = mean_i x_i`` is added; it decouples
  exactly from the internal coordinates (the energy depends only on ``x - c``), so every
  internal-coordinate distribution (dihedrals, basin free energies) is unchanged, and the
  density becomes normalizable: ``Z = Z_int * (2 pi s^2 / N)^{3/2}`` times a constant.
  :class:`AlanineDipeptide` uses ``com_restraint=0.1`` by default. ``Z_int`` is not known
  in closed form, so :meth:`exact_log_z` returns None; compare basin free-energy
  differences instead (:mod:`boltzkit.analysis`).
* Second derivatives: OpenMM and RDKit give energies and gradients only; the Hessian-vector
  products are finite differences of the gradient (:mod:`._bridge`).

Cost (this 2-core CPU, measured): alanine dipeptide vacuum on the Reference platform about
45 us per energy+force evaluation in a batch of 200, OBC1 implicit about 0.4 ms (CPU platform,
1 thread) -- Python-side state extraction dominates in vacuum; the evaluation loops over the
batch in one reused OpenMM ``Context`` (``energy(x)`` then ``grad_energy(x)``, as MCMC kernels
call them, is one OpenMM call per state: :mod:`._bridge`). A process pool was not added: at 22
atoms the brief measured no gain from 2 processes in vacuum and 13 % in implicit solvent.
"""

from .alanine import AlanineDipeptide, BasinEnergy, alanine_dipeptide_files, alanine_dipeptide_system
from .openmm_energy import OpenMMEnergy, ShiftedEnergy
from .smiles import TorsionEnergy, from_smiles, rotatable_torsions

__all__ = ["OpenMMEnergy", "AlanineDipeptide", "BasinEnergy", "ShiftedEnergy", "TorsionEnergy", "from_smiles",
           "rotatable_torsions", "alanine_dipeptide_files", "alanine_dipeptide_system"]
