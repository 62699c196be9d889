r"""Alanine dipeptide (ACE-ALA-NME): the target, its Ramachandran basins and their free energies.

* :class:`AlanineDipeptide` -- 22 atoms, AMBER ff96, vacuum or OBC1 implicit solvent, built from the
  files that ship inside the ``openmmtools`` wheel (no downloads); sampled in internal coordinates
  by default (:meth:`AlanineDipeptide.sampling_view`). Conventions: :mod:`boltzkit.energies.molecular`.
* :class:`BasinEnergy` -- the molecule confined to one basin (:meth:`AlanineDipeptide.basin`).
* Basin analysis on (phi, psi) arrays, which needs no OpenMM: :func:`alanine_basin`,
  :func:`basin_populations`, :func:`basin_ess`, :func:`basin_free_energies`,
  :func:`ramachandran_histogram`, :func:`plot_ramachandran`, and the shipped metadynamics
  reference :func:`load_alanine_reference`.

Basins (degrees; chosen so that no basin straddles the phi = +-180 wrap-around of the extended
region):

  ``C7ax``    ``0 < phi < 120`` (any psi): the rare positive-phi basin (C7ax and alpha_L);
  ``alpha_R`` ``-120 < phi <= 0`` and ``-120 < psi < 50``;
  ``C7eq``    everything else: the extended basin (C7eq, C5/beta, PII), including its
  continuation at ``phi >= 120`` across the wrap-around.

Free-energy differences are ``dF(A) = -log(P_A / P_ref)`` in units of kT. Standard errors come
from a delete-one-block jackknife over ``n_blocks`` contiguous blocks, so correlated (MCMC/MD)
sequences are handled as long as a block is longer than the correlation time.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import torch

from .._utils import check_positive, package_files
from ..errors import DatasetError, MissingDependencyError, TargetError, UnreliableEstimateWarning, require
from ..geometry import dihedral, signed_volume, wrap_angle
from .base import Energy, SamplingView
from .openmm_energy import OpenMMEnergy, _bfgs


ALANINE_BASINS = ("C7eq", "alpha_R", "C7ax")
ALPHA_R_PHI, ALPHA_R_PSI, C7AX_PHI = (-120.0, 0.0), (-120.0, 50.0), (0.0, 120.0)
ALANINE_REFERENCE_FILE = "alanine_dipeptide_reference.npz"


# ----------------------------------------------------------------------------- basins
def _np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def alanine_basin(phi, psi) -> np.ndarray:
    """Basin index (0 = C7eq, 1 = alpha_R, 2 = C7ax; see the module docstring) of each
    ``(phi, psi)`` pair given in radians."""
    phi_d, psi_d = np.degrees(_np(phi)), np.degrees(_np(psi))
    if phi_d.shape != psi_d.shape:
        raise TargetError(f"phi and psi must have the same shape, got {phi_d.shape} and {psi_d.shape}")
    lab = np.zeros(phi_d.shape, dtype=np.int64)
    (p0, p1), (s0, s1), (c0, c1) = ALPHA_R_PHI, ALPHA_R_PSI, C7AX_PHI
    lab[(phi_d > p0) & (phi_d <= p1) & (psi_d > s0) & (psi_d < s1)] = 1
    lab[(phi_d > c0) & (phi_d < c1)] = 2
    return lab


def _weights(n: int, log_weights) -> np.ndarray:
    if log_weights is None:
        return np.ones(n)
    lw = _np(log_weights).ravel()
    if lw.size != n:
        raise TargetError(f"log_weights has {lw.size} entries but there are {n} samples")
    if np.isnan(lw).any():
        raise TargetError("log_weights contain NaN")
    if not np.isfinite(lw).any():
        raise TargetError("every log-weight is -inf")
    return np.exp(lw - lw.max())


def _block_sums(phi, psi, log_weights, n_blocks: int) -> "tuple[np.ndarray, np.ndarray]":
    """``(n_blocks, 3)`` summed weights per basin in contiguous blocks of the samples, and
    their totals ``(3,)``."""
    lab = alanine_basin(phi, psi).ravel()
    if isinstance(n_blocks, bool) or int(n_blocks) != n_blocks or n_blocks < 2:
        raise TargetError(f"n_blocks must be an integer >= 2, got {n_blocks!r}")
    if lab.size < n_blocks:
        raise TargetError(f"{lab.size} samples cannot be split into {n_blocks} blocks; lower n_blocks")
    w = _weights(lab.size, log_weights)
    blocks = np.array_split(np.arange(lab.size), n_blocks)
    s = np.stack([np.bincount(lab[b], weights=w[b], minlength=len(ALANINE_BASINS)) for b in blocks])
    return s, s.sum(0)


def basin_populations(phi, psi, log_weights=None, *, n_blocks: int = 10) -> dict:
    """Weighted populations of the alanine-dipeptide basins with jackknife standard errors.

    Parameters
    ----------
    phi, psi : array ``(n,)`` in radians
    log_weights : array ``(n,)`` or None
        Importance log-weights (None: equal weights).
    n_blocks : int
        Number of contiguous blocks of the jackknife.

    Returns
    -------
    dict ``basin -> (population, stderr)``.
    """
    s, tot = _block_sums(phi, psi, log_weights, n_blocks)
    full = tot / tot.sum()
    loo = (tot - s) / (tot - s).sum(1, keepdims=True)  # delete-one-block estimates
    se = np.sqrt((n_blocks - 1) / n_blocks * ((loo - loo.mean(0)) ** 2).sum(0))
    return {b: (float(full[i]), float(se[i])) for i, b in enumerate(ALANINE_BASINS)}


def basin_ess(phi, psi, log_weights=None) -> dict:
    """Effective number of samples in each basin: Kish's ``(sum w)^2 / sum w^2`` over the
    samples that fall in it (the count of samples when unweighted; 0 when none does)."""
    from ..estimators.importance import ess_kish_of_subset

    lab = alanine_basin(phi, psi).ravel()
    w = _weights(lab.size, log_weights)
    return {b: ess_kish_of_subset(w, lab == i) for i, b in enumerate(ALANINE_BASINS)}


def basin_free_energies(phi, psi, log_weights=None, *, reference: str = "C7eq",
                        n_blocks: int = 10, min_ess: float = 10.0) -> dict:
    """Free energies ``dF(A) = -log(P_A / P_reference)`` (kT) of the basins, with jackknife errors.

    A basin that no sample visits gets ``(inf, nan)``; one that appears in only some blocks
    gets a finite value whose error bar is infinite when a delete-one-block estimate is.
    With importance weights, a basin whose effective number of samples (:func:`basin_ess`)
    is below ``min_ess`` raises an :class:`~boltzkit.errors.UnreliableEstimateWarning`: its
    free energy then rests on a few weights and the jackknife error bar understates the error.

    Returns
    -------
    dict ``basin -> (dF in kT, stderr in kT)``; the reference basin maps to ``(0.0, 0.0)``.
    """
    if reference not in ALANINE_BASINS:
        raise TargetError(f"reference must be one of {ALANINE_BASINS}, got {reference!r}")
    s, tot = _block_sums(phi, psi, log_weights, n_blocks)
    r = ALANINE_BASINS.index(reference)
    if log_weights is not None:
        ess = basin_ess(phi, psi, log_weights)
        few = {b: e for b, e in ess.items() if 0 < e < min_ess}
        if few:
            warnings.warn("basin free energies rest on few effective samples ("
                          + ", ".join(f"{b}: {e:.1f}" for b, e in few.items())
                          + f" < {min_ess:g}); the error bars understate the error. Draw more "
                          "samples or improve the sampler", UnreliableEstimateWarning, stacklevel=2)
    out = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        full = -np.log(tot / tot[r])
        loo = -np.log((tot - s) / (tot[r] - s[:, r])[:, None])
        se = np.sqrt((n_blocks - 1) / n_blocks * ((loo - loo.mean(0)) ** 2).sum(0))
    for i, b in enumerate(ALANINE_BASINS):
        if i == r:
            out[b] = (0.0, 0.0)
        elif tot[i] == 0:
            out[b] = (math.inf, math.nan)
        else:
            out[b] = (float(full[i]), float(se[i]) if np.isfinite(loo[:, i]).all() else math.inf)
    return out


# ----------------------------------------------------------------------------- Ramachandran
def ramachandran_histogram(phi, psi, log_weights=None, *, bins: int = 72):
    """Normalized 2-D histogram of ``(phi, psi)`` over ``[-180, 180]^2`` degrees.

    Returns
    -------
    hist : ndarray ``(bins, bins)``, probabilities summing to 1 (``hist[i, j]``: phi bin i, psi bin j)
    edges : ndarray ``(bins + 1,)`` in degrees (same for both axes)
    """
    phi_d, psi_d = np.degrees(_np(phi)).ravel(), np.degrees(_np(psi)).ravel()
    w = _weights(phi_d.size, log_weights)
    edges = np.linspace(-180.0, 180.0, int(bins) + 1)
    h, _, _ = np.histogram2d(phi_d, psi_d, bins=[edges, edges], weights=w)
    return h / h.sum(), edges


def plot_ramachandran(phi, psi, log_weights=None, *, ax=None, bins: int = 72, title=None,
                      max_kT: float = 10.0, basins: bool = True):
    """Ramachandran free-energy map ``-log p(phi, psi)`` (kT, minimum at 0) of (weighted) samples.

    Parameters
    ----------
    phi, psi : array in radians
    log_weights : importance log-weights or None
    ax : matplotlib Axes (a new figure when None)
    bins : bins per axis over [-180, 180] degrees
    max_kT : colour-scale ceiling; empty bins are left white
    basins : draw the basin boundaries used by :func:`basin_free_energies`

    Returns
    -------
    The matplotlib Axes.
    """
    from ..plot import _plt

    plt = _plt()
    h, edges = ramachandran_histogram(phi, psi, log_weights, bins=bins)
    with np.errstate(divide="ignore"):
        f = -np.log(h)
    f -= f[np.isfinite(f)].min() if np.isfinite(f).any() else 0.0
    f[~np.isfinite(f)] = np.nan
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 3.8))
    mesh = ax.pcolormesh(edges, edges, f.T, cmap="viridis", vmin=0.0, vmax=max_kT, shading="flat")
    ax.figure.colorbar(mesh, ax=ax, label="free energy (kT)")
    if basins:
        style = dict(color="0.3", lw=0.8, ls="--")
        (p0, p1), (s0, s1) = ALPHA_R_PHI, ALPHA_R_PSI
        for v in C7AX_PHI:
            ax.axvline(v, **style)
        ax.plot([p0, p0, p1], [s0, s1, s1], **style)
        ax.plot([p0, p1], [s0, s0], **style)
    ax.set(xlim=(-180, 180), ylim=(-180, 180), xlabel="phi (deg)", ylabel="psi (deg)",
           xticks=range(-180, 181, 90), yticks=range(-180, 181, 90))
    if title:
        ax.set_title(title)
    return ax


# ----------------------------------------------------------------------------- shipped reference
def ramachandran_sample_plot(ax, x, w, config: dict) -> None:
    """The ``sample_plot`` hook of :class:`AlanineDipeptide`: the (weighted) Ramachandran map of
    Cartesian states ``x``."""
    ang = dihedral(x.double(), [AlanineDipeptide.PHI_ATOMS, AlanineDipeptide.PSI_ATOMS]).numpy()
    with np.errstate(divide="ignore"):
        lw = None if w is None else np.log(np.asarray(w, dtype=np.float64))
    plot_ramachandran(ang[:, 0], ang[:, 1], lw, ax=ax, bins=36)


def load_alanine_reference() -> dict:
    """The shipped enhanced-sampling reference of alanine dipeptide (ff96, vacuum, 300 K).

    Generated once by ``benchmarks/alanine_reference.py`` (well-tempered metadynamics on
    (phi, psi) to build a bias, then independent runs under the frozen bias, reweighted).
    Shipped values (2 runs x 8 ns under a frozen bias, 16000 frames, Kish ESS 3400):
    dF(alpha_R - C7eq) = 4.22 +- 0.05 kT (10.53 +- 0.12 kJ/mol) and dF(C7ax - C7eq) =
    4.74 +- 0.08 kT (11.82 +- 0.20 kJ/mol), jackknife errors; the two runs agree within
    them (C7ax 4.79 +- 0.09 vs 4.68 +- 0.13 kT). ``meta["cross_check"]`` holds an independent
    replica-exchange estimate at the same force field (``benchmarks/alanine_remd.py``, six runs, 16 ns
    per replica, MBAR to 300 K): 4.22 +- 0.03 and 4.41 +- 0.19 kT, within 1.6 sigma of the above.

    Returns
    -------
    dict with arrays ``phi``, ``psi`` (radians), ``log_weight`` (unbiasing log-weights),
    ``energy`` (potential energy, kT), ``run`` (index of the independent run), and ``meta``
    (dict: settings, basin free energies with standard errors, per-run values).
    """
    (path,) = package_files(
        "boltzkit", [f"data/{ALANINE_REFERENCE_FILE}"], not_installed="boltzkit is not installed",
        missing=lambda absent: DatasetError(f"the reference file boltzkit/data/{ALANINE_REFERENCE_FILE} is "
                                            "missing; regenerate it with benchmarks/alanine_reference.py"))
    data = dict(np.load(path, allow_pickle=False))
    data["meta"] = json.loads(str(data.pop("meta_json")))
    return data


# ----------------------------------------------------------------------------- the target
def alanine_dipeptide_files() -> dict:
    """Paths of the alanine-dipeptide AMBER files shipped in the openmmtools wheel
    (``prmtop``, ``crd``, ``pdb``), found without importing openmmtools."""
    exts = ("prmtop", "crd", "pdb")
    paths = package_files(
        "openmmtools", [f"data/alanine-dipeptide-gbsa/alanine-dipeptide.{ext}" for ext in exts],
        not_installed=("'openmmtools' is needed for the alanine-dipeptide files but is not installed. "
                       "Install it with: pip install 'boltzkit[molecular]'"),
        missing=lambda absent: MissingDependencyError(
            f"the openmmtools installation lacks {absent}; reinstall openmmtools "
            "(pip install --force-reinstall openmmtools)"))
    return dict(zip(exts, paths))


class AlanineDipeptide(OpenMMEnergy):
    r"""Alanine dipeptide (ACE-ALA-NME, 22 atoms) in AMBER ff96, in vacuum or OBC1 implicit solvent.

    The system is the one of ``openmmtools.testsystems.AlanineDipeptideVacuum/Implicit`` with
    ``constraints=None`` (as in FAB and bgflow), built from the prmtop/crd files in the
    openmmtools wheel; no network access. States are Cartesian coordinates in nm, flat
    ``(B, 66)`` (``(B, 22, 3)`` accepted), on ``Reals(66)``.

    Parameters
    ----------
    solvent : {"vacuum", "implicit"}
        "implicit" adds the OBC1 generalized-Born term (about 10x the cost per evaluation).
    temperature : float
        Kelvin (300 K: kT = 2.494339 kJ/mol).
    com_restraint : float or None
        Centre-of-geometry restraint width in nm (default 0.1; None for the raw, improper
        translation-invariant density). It does not change any internal-coordinate statistic.
    platform, platform_properties, energy_cut, hvp_step, backend
        As in :class:`OpenMMEnergy`: platform "auto" is Reference in vacuum, CPU with one thread
        implicit; backend "auto" uses the torch force field for accelerator states in vacuum only
        (ff96 has only bonds, angles, torsions and nonbonded terms there).
    coordinates : {"internal", "cartesian"}
        Where :func:`boltzkit.sample` samples the molecule (:meth:`sampling_view`).
        "internal" (default): in bonds, angles and dihedrals (:meth:`internal`), with the
        result mapped back to Cartesian states in the canonical frame and log Z converted to
        this target's (COM-restrained) Cartesian one. "cartesian": in the Cartesian harmonic
        frame of :meth:`prior_hint`. The energy itself is the same either way.

    Attributes
    ----------
    positions : Tensor (22, 3)
        The shipped extended structure (phi = psi = 180 deg), centred at the origin.
    PHI_ATOMS, PSI_ATOMS : tuple
        ``(4, 6, 8, 14)`` and ``(6, 8, 14, 16)`` (C-N-CA-C and N-CA-C-N).
    CHIRAL_ATOMS : tuple
        ``(6, 8, 14, 10)`` = (N, CA, C, CB) for :meth:`chirality`.

    Notes
    -----
    ``exact_log_z()`` is None. A reference for the (phi, psi) distribution and the basin free
    energies in vacuum at 300 K ships with the package
    (:func:`load_alanine_reference`). Plain MD at 300 K never visits
    phi > 0 (C7ax) in 150 ns in ff96; it is the standard mode-collapse test.

    Samplers started from the Cartesian harmonic frame (:meth:`prior_hint`) stay in C7eq /
    alpha_R; from :meth:`internal` NAAS and AIS visit C7ax and estimate log Z far better
    (``benchmarks/alanine_dipeptide.py``, methods ``*_ic``), hence the default ``coordinates``.
    """

    sample_plot = "boltzkit.energies.alanine:ramachandran_sample_plot"  # the Ramachandran map
    PHI_ATOMS = (4, 6, 8, 14)
    PSI_ATOMS = (6, 8, 14, 16)
    CHIRAL_ATOMS = (6, 8, 14, 10)
    REGRESSION_KJ_MOL = {"vacuum": -88.089, "implicit": -138.970}  # shipped coordinates, openmm 8.6

    def __init__(self, solvent: str = "vacuum", temperature: float = 300.0, *,
                 platform: str = "auto", platform_properties: "dict | None" = None,
                 com_restraint: "float | None" = 0.1, energy_cut: "float | None" = None,
                 hvp_step: float = 1e-4, coordinates: str = "internal", backend: str = "auto"):
        if solvent not in ("vacuum", "implicit"):
            raise TargetError(f"solvent must be 'vacuum' or 'implicit', got {solvent!r}")
        if coordinates not in ("internal", "cartesian"):
            raise TargetError(f"coordinates must be 'internal' or 'cartesian', got {coordinates!r}")
        system, topology, positions = alanine_dipeptide_system(solvent)
        positions = positions - positions.mean(0)
        super().__init__(system, temperature, platform=platform,
                         platform_properties=platform_properties, positions=positions,
                         topology=topology, com_restraint=com_restraint, energy_cut=energy_cut,
                         hvp_step=hvp_step, backend=backend,
                         name=f"AlanineDipeptide({solvent}, {temperature:g} K)")
        self.solvent = solvent
        self.coordinates = coordinates
        self._view = None

    def to_config(self):
        return {**super().to_config(), "type": "AlanineDipeptide", "solvent": self.solvent,
                "coordinates": self.coordinates}

    def sampling_view(self):
        """:meth:`internal` (built once) with ``coordinates="internal"`` (see there), else None.
        NAAS defaults there to the benchmark's setting (K = 256 time steps, 40 training steps of
        64 trajectories, lr 3e-4: about 8 CPU-minutes; longer training did not raise the ESS,
        ``benchmarks/results/alanine_dipeptide.json``)."""
        if self.coordinates == "cartesian":
            return None
        if self._view is None:
            ic = self.internal()
            log_z = None if self.com_restraint is None else ic.cartesian_log_z
            self._view = SamplingView(
                ic, ic.to_cartesian, log_z,
                method_options={"naas": {"n_time_steps": 256, "n_steps": 40, "batch_size": 64, "lr": 3e-4}},
                description="internal coordinates (bonds, angles, dihedrals; phi, psi and the "
                            "methyl rotors spread over their circle), mapped back to Cartesian")
        return self._view

    # -- analysis
    def internal(self, **kw):
        """This molecule in internal coordinates
        (:class:`~boltzkit.energies.internal.InternalCoordinateEnergy`, on ``Reals(60)``), with
        the full harmonic prior hint in which phi, psi and the three methyl rotors are spread
        over their circle (``soft_std`` 1 rad), so samplers started from it reach C7ax and
        alpha_R. Map samples back with ``.to_cartesian(q)`` (then :meth:`phi_psi`).

        >>> ic = AlanineDipeptide().internal()          # doctest: +SKIP
        >>> res = bk.sample(ic, n_time_steps=256)        # doctest: +SKIP
        >>> phi, psi = ic.cartesian_energy.phi_psi(ic.to_cartesian(res.samples))  # doctest: +SKIP
        """
        from .internal import InternalCoordinateEnergy

        opts = {"hint": "full", "soft_torsions": (self.PHI_ATOMS, self.PSI_ATOMS), **kw}
        return InternalCoordinateEnergy(self, **opts)

    BASIN_CENTRES_DEG = {"alpha_R": (-75.0, -25.0), "C7ax": (70.0, -60.0)}  # C7eq: minimized_state

    def basin(self, name: str, *, wall: float = 50.0, wall_width: float = 0.2) -> "BasinEnergy":
        """This molecule confined to one Ramachandran basin (the boxes of
        :func:`alanine_basin`), in internal coordinates.

        ``u_q`` plus a wall on the (phi, psi) distance outside the basin (:class:`BasinEnergy`).
        The internal coordinates are built around the basin's own structure
        (:meth:`basin_structure`): the prior hint is the harmonic frame there and the dihedral
        windows are centred on it (a basin across a window's seam would be split between two
        copies 2 pi apart and half missed). The energy's log Z is the basin's plus the thin
        layer the wall lets through; :meth:`BasinEnergy.log_z_inside` removes that layer
        exactly, so basin free energies follow from one sampler run per basin,
        ``dF(A) = -(log Z_A - log Z_C7eq)``, without ever crossing a barrier:

        >>> be = ala.basin("C7ax")                                           # doctest: +SKIP
        >>> res = bk.sample(be, method="ais", n_steps=1000, resample_ess=0.5)  # doctest: +SKIP
        >>> log_z, err = be.log_z_inside(res)                                # doctest: +SKIP
        """

        if name not in ALANINE_BASINS:
            raise TargetError(f"basin must be one of {ALANINE_BASINS}, got {name!r}")
        return BasinEnergy(self.internal(reference=self.basin_structure(name)), name, wall=wall,
                           wall_width=wall_width)

    def basin_structure(self, name: str) -> torch.Tensor:
        """A representative structure of a Ramachandran basin (``(1, 3N)`` float64, cached):
        :meth:`minimized_state` for C7eq; for the others the structure minimized (BFGS in
        internal coordinates) with phi and psi held at the basin centre
        (``BASIN_CENTRES_DEG``). Held rather than free, because a basin need not hold a
        local minimum of its own (in vacuum, alpha_R relaxes towards C7eq)."""
        cache = self.__dict__.setdefault("_basin_structures", {})
        if name not in cache:
            centre = self.BASIN_CENTRES_DEG.get(name)
            cache[name] = self.minimized_state() if centre is None else self._held_minimum(centre)
        return cache[name].clone()

    def _held_minimum(self, phi_psi_deg) -> torch.Tensor:
        ic = self.internal(hint="diagonal", soft_barrier=None)
        q = ic.to_internal(self.minimized_state()).double()
        idx, sign, offset = _backbone_torsions(ic, q[0])
        for i, s, o, target in zip(idx, sign, offset, phi_psi_deg):  # backbone angle = target
            q[0, i] = s * (math.radians(target) - o)
        free = torch.ones(q.shape[1], dtype=torch.bool)
        free[list(idx)] = False

        def energy_and_grad(v):  # v: the free coordinates (1, n_free)
            qq = q.clone()
            qq[:, free] = v
            u, g = ic.energy_and_grad(qq)
            return u, g[:, free]

        res = _bfgs(energy_and_grad, q[0, free])
        q[0, free] = torch.from_numpy(np.asarray(res.x, dtype=np.float64))
        return ic.to_cartesian(q).reshape(1, -1)

    def phi_psi(self, x) -> "tuple[np.ndarray, np.ndarray]":
        """Backbone dihedrals (radians, ``(-pi, pi]``) of the states ``x`` computed by mdtraj.

        Returns
        -------
        phi, psi : ndarray ``(B,)`` float64
        """
        md = require("mdtraj", "molecular")
        ang = md.compute_dihedrals(self.to_mdtraj(x), [self.PHI_ATOMS, self.PSI_ATOMS]).astype(np.float64)
        return ang[:, 0], ang[:, 1]

    def phi_psi_torch(self, x) -> "tuple[torch.Tensor, torch.Tensor]":
        """Differentiable torch version of :meth:`phi_psi` (same angles, any dtype/device)."""
        ang = dihedral(self._flat(torch.as_tensor(x)), [self.PHI_ATOMS, self.PSI_ATOMS])
        return ang[:, 0], ang[:, 1]

    def chirality(self, x) -> torch.Tensor:
        """Signed volume (N - CA) . [(C - CA) x (CB - CA)] (nm^3): > 0 for L-alanine, < 0 for D."""
        return signed_volume(self._flat(torch.as_tensor(x)), self.CHIRAL_ATOMS)

    def is_l(self, x) -> torch.Tensor:
        """Boolean ``(B,)``: which states have L chirality at the alpha carbon."""
        return self.chirality(x) > 0

    def plot_ramachandran(self, x, log_weights=None, **kw):
        """Ramachandran free-energy map of the states ``x`` (see :func:`plot_ramachandran`)."""
        phi, psi = self.phi_psi(x)
        return plot_ramachandran(phi, psi, log_weights, **kw)


def _backbone_torsions(ic, q0):
    """Where phi and psi sit in the internal coordinates ``q`` of ``ic`` (an
    :meth:`AlanineDipeptide.internal`) and how they read: ``(index, sign, offset)``, each a pair,
    with ``phi = sign[0] q[index[0]] + offset[0]`` (mod 2 pi), likewise psi. Read off by
    turning each coordinate a little at the state ``q0`` (``(n_dof,)``)."""
    ala = ic.cartesian_energy
    index = tuple(ic.zmatrix.find_torsion(a) for a in (ala.PHI_ATOMS, ala.PSI_ATOMS))
    sign, offset = [], []
    for k, i in enumerate(index):
        q = torch.stack([q0, q0]).clone()
        q[1, i] += 0.1
        a = ala.phi_psi_torch(ic.to_cartesian(q))[k]
        s = 1.0 if float(wrap_angle(a[1] - a[0])) > 0 else -1.0
        sign.append(s)
        offset.append(float(a[0]) - s * float(q0[i]))
    return index, sign, offset


def _arc_offset(a, arc_deg):
    """Signed distance (rad) of the angles ``a`` from the arc ``arc_deg = (lo, hi)`` (degrees):
    positive outside (how far out), negative inside (how deep in)."""
    lo, hi = (math.radians(v) for v in arc_deg)
    return wrap_angle(a - 0.5 * (lo + hi)).abs() - 0.5 * (hi - lo)


class BasinEnergy(Energy):
    r"""Alanine dipeptide in internal coordinates confined to one basin by a flat-bottom wall on
    (phi, psi); see :meth:`AlanineDipeptide.basin`. The basin boxes are those of
    :func:`alanine_basin` (C7eq is everything outside alpha_R and C7ax).

    The wall is ``k (sqrt(d^2 + w^2) - w)`` with ``d`` the (phi, psi) distance (rad) outside
    the box, ``k = wall`` (kT/rad) and ``w = wall_width`` (rad): quadratic (stiffness
    ``k / w``) within ``w`` of the box, linear beyond. A bounded slope keeps explicit
    (unadjusted) Langevin steps stable where a stiff quadratic wall makes them explode; the
    layer the wall lets through is removed exactly by :meth:`log_z_inside`.
    """

    def __init__(self, ic, basin: str, *, wall: float = 50.0, wall_width: float = 0.2):
        self.wall_k = check_positive("wall", wall, error=TargetError)
        self.wall_width = check_positive("wall_width", wall_width, error=TargetError)
        super().__init__(ic.domain, name=f"{ic.cartesian_energy.name}[{basin}]")
        self.ic, self.basin = ic, basin
        self.index, self.sign, self.offset = _backbone_torsions(ic, ic.prior_hint().loc)

    def angles(self, q):
        """(phi, psi) in radians, ``(-pi, pi]``, of internal-coordinate states ``q``."""
        return tuple(wrap_angle(self.sign[k] * q[:, i] + self.offset[k]) for k, i in enumerate(self.index))

    def outside(self, q):
        """Distance (rad) of each state's (phi, psi) outside the basin box."""
        phi, psi = self.angles(q)
        ax_phi = _arc_offset(phi, C7AX_PHI)
        if self.basin == "C7ax":
            return ax_phi.clamp(min=0.0)
        r_phi, r_psi = _arc_offset(phi, ALPHA_R_PHI), _arc_offset(psi, ALPHA_R_PSI)
        if self.basin == "alpha_R":
            return torch.hypot(r_phi.clamp(min=0.0), r_psi.clamp(min=0.0))
        # C7eq: depth inside the C7ax arc, plus the smaller depth inside the alpha_R box
        return (-ax_phi).clamp(min=0.0) + torch.minimum((-r_phi).clamp(min=0.0),
                                                        (-r_psi).clamp(min=0.0))

    def inside(self, q) -> torch.Tensor:
        """Boolean ``(B,)``: the states in the basin box (where the wall is off)."""
        return self.outside(torch.as_tensor(q).double()) == 0

    def wall(self, q):
        d, w = self.outside(q.double()), self.wall_width
        return self.wall_k * (torch.sqrt(d * d + w * w) - w)

    def log_z_inside(self, result) -> "tuple[float, float]":
        """``(log Z_A, stderr)`` of the basin itself from a sampler's ``result`` on this
        energy: its log Z plus the log of the weighted fraction of samples inside the box
        (:meth:`~boltzkit.result.Result.log_z_of`), which removes the layer beyond the wall."""
        return result.log_z_of(self.inside)

    def energy(self, q):
        return self.ic.energy(q) + self.wall(q).to(q.dtype)

    def grad_energy(self, q):
        with torch.enable_grad():
            qq = q.detach().double().requires_grad_(True)
            (g,) = torch.autograd.grad(self.wall(qq).sum(), qq)
        return self.ic.grad_energy(q) + g.to(q.dtype)

    def prior_hint(self):
        return self.ic.prior_hint()

    def to_cartesian(self, q):
        return self.ic.to_cartesian(q)

    def to_config(self):
        return {**self.ic.to_config(), "type": "AlanineDipeptideBasin", "basin": self.basin,
                "wall": self.wall_k, "wall_width": self.wall_width}


def alanine_dipeptide_system(solvent: str = "vacuum"):
    """Unconstrained alanine-dipeptide ``(system, openmm topology, positions (22, 3) nm ndarray)``
    from the openmmtools data files (a fresh System each call; safe to add forces to it)."""
    app = require("openmm.app", "molecular")
    files = alanine_dipeptide_files()
    prmtop = app.AmberPrmtopFile(files["prmtop"])
    system = prmtop.createSystem(implicitSolvent=None if solvent == "vacuum" else app.OBC1,
                                 constraints=None, nonbondedCutoff=None)
    crd = app.AmberInpcrdFile(files["crd"])
    pos = np.asarray(crd.getPositions(asNumpy=True)._value, dtype=np.float64)  # nm
    return system, prmtop.topology, pos


# ============================================================================ RDKit torsions
