r"""Analysis helpers for molecular samples: dihedrals, chirality, Ramachandran maps, basins.

Nothing here needs OpenMM, mdtraj or RDKit: the functions work on torch tensors / numpy arrays
of Cartesian coordinates (nm) or of dihedral angles (radians), so results of any sampler can
be analysed where only the core package is installed.

Conventions
-----------
* Dihedral of atoms ``(a, b, c, d)``: the IUPAC/mdtraj angle in ``(-pi, pi]``,
  ``atan2(|b2| b1 . (b2 x b3), (b1 x b2) . (b2 x b3))`` with ``b1 = x_b - x_a`` etc.
* Alanine-dipeptide basins (degrees; chosen so that no basin straddles the phi = +-180
  wrap-around of the extended region):

  ``C7ax``    ``0 < phi < 120`` (any psi): the rare positive-phi basin (C7ax and alpha_L);
  ``alpha_R`` ``-120 < phi <= 0`` and ``-120 < psi < 50``;
  ``C7eq``    everything else: the extended basin (C7eq, C5/beta, PII), including its
  continuation at ``phi >= 120`` across the wrap-around.

* Free-energy differences are ``dF(A) = -log(P_A / P_ref)`` in units of kT. Standard errors
  come from a delete-one-block jackknife over ``n_blocks`` contiguous blocks, so correlated
  (MCMC/MD) sequences are handled as long as a block is longer than the correlation time.
"""

from __future__ import annotations

import json
import math
from importlib import resources

import numpy as np
import torch

from .errors import DatasetError, TargetError

__all__ = ["dihedral", "signed_volume", "ALANINE_BASINS", "alanine_basin", "basin_populations",
           "basin_ess",
           "basin_free_energies", "ramachandran_histogram", "plot_ramachandran",
           "load_alanine_reference", "ALANINE_REFERENCE_FILE"]

ALANINE_BASINS = ("C7eq", "alpha_R", "C7ax")
# the boxes, in degrees: alpha_R = phi in (-120, 0], psi in (-120, 50); C7ax = phi in (0, 120);
# C7eq = everything else
ALPHA_R_PHI, ALPHA_R_PSI, C7AX_PHI = (-120.0, 0.0), (-120.0, 50.0), (0.0, 120.0)
ALANINE_REFERENCE_FILE = "alanine_dipeptide_reference.npz"


def _as_atoms(x: torch.Tensor) -> torch.Tensor:
    """``(B, N, 3)`` view of a batch given flat ``(B, 3N)`` or as ``(B, N, 3)``."""
    x = torch.as_tensor(x)
    if x.ndim == 2 and x.shape[-1] % 3 == 0:
        return x.reshape(x.shape[0], -1, 3)
    if x.ndim == 3 and x.shape[-1] == 3:
        return x
    raise TargetError(f"coordinates must have shape (B, 3N) or (B, N, 3), got {tuple(x.shape)}")


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
    p = _as_atoms(x)
    idx = torch.as_tensor(np.asarray(atoms, dtype=np.int64), device=p.device)
    single = idx.ndim == 1
    idx = idx.reshape(-1, 4)
    a, b, c, d = (p[:, idx[:, k], :] for k in range(4))
    b1, b2, b3 = b - a, c - b, d - c
    n1, n2 = torch.cross(b1, b2, dim=-1), torch.cross(b2, b3, dim=-1)
    y = b2.norm(dim=-1) * (b1 * n2).sum(-1)
    out = torch.atan2(y, (n1 * n2).sum(-1))
    return out[:, 0] if single else out


def signed_volume(x, atoms) -> torch.Tensor:
    """Signed volume ``(x_a - x_b) . [(x_c - x_b) x (x_d - x_b)]`` around centre ``b`` (nm^3).

    For an amino acid with ``atoms = (N, CA, C, CB)`` the sign gives the chirality of the
    alpha carbon: positive for L, negative for its mirror image D.
    """
    p = _as_atoms(x)
    a, b, c, d = (int(i) for i in atoms)
    ctr = p[:, b, :]
    return ((p[:, a, :] - ctr) * torch.cross(p[:, c, :] - ctr, p[:, d, :] - ctr, dim=-1)).sum(-1)


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


def _block_sums(lab: np.ndarray, w: np.ndarray, n_blocks: int) -> np.ndarray:
    """``(n_blocks, 3)`` summed weights per basin in contiguous blocks."""
    blocks = np.array_split(np.arange(lab.size), n_blocks)
    return np.stack([np.bincount(lab[b], weights=w[b], minlength=len(ALANINE_BASINS))
                     for b in blocks])


def _check_blocks(n: int, n_blocks: int):
    if isinstance(n_blocks, bool) or int(n_blocks) != n_blocks or n_blocks < 2:
        raise TargetError(f"n_blocks must be an integer >= 2, got {n_blocks!r}")
    if n < n_blocks:
        raise TargetError(f"{n} samples cannot be split into {n_blocks} blocks; lower n_blocks")


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
    lab = alanine_basin(phi, psi).ravel()
    _check_blocks(lab.size, n_blocks)
    s = _block_sums(lab, _weights(lab.size, log_weights), n_blocks)
    tot = s.sum(0)
    full = tot / tot.sum()
    loo = (tot - s) / (tot - s).sum(1, keepdims=True)  # delete-one-block estimates
    se = np.sqrt((n_blocks - 1) / n_blocks * ((loo - loo.mean(0)) ** 2).sum(0))
    return {b: (float(full[i]), float(se[i])) for i, b in enumerate(ALANINE_BASINS)}


def basin_ess(phi, psi, log_weights=None) -> dict:
    """Effective number of samples in each basin: Kish's ``(sum w)^2 / sum w^2`` over the
    samples that fall in it (the count of samples when unweighted; 0 when none does)."""
    from .estimators.importance import ess_kish_of_subset

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
    lab = alanine_basin(phi, psi).ravel()
    _check_blocks(lab.size, n_blocks)
    s = _block_sums(lab, _weights(lab.size, log_weights), n_blocks)
    tot = s.sum(0)
    r = ALANINE_BASINS.index(reference)
    if log_weights is not None:
        ess = basin_ess(phi, psi, log_weights)
        few = {b: e for b, e in ess.items() if 0 < e < min_ess}
        if few:
            import warnings

            from .errors import UnreliableEstimateWarning

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
    from .plot import _plt

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
def load_alanine_reference() -> dict:
    """The shipped enhanced-sampling reference of alanine dipeptide (ff96, vacuum, 300 K).

    Generated once by ``benchmarks/alanine_reference.py`` (well-tempered metadynamics on
    (phi, psi) to build a bias, then independent runs under the frozen bias, reweighted).
    Shipped values (2 runs x 8 ns under a frozen bias, 16000 frames, Kish ESS 3400):
    dF(alpha_R - C7eq) = 4.22 +- 0.05 kT (10.53 +- 0.12 kJ/mol) and dF(C7ax - C7eq) =
    4.74 +- 0.08 kT (11.82 +- 0.20 kJ/mol), jackknife errors; the two runs agree within
    them (C7ax 4.79 +- 0.09 vs 4.68 +- 0.13 kT).

    Returns
    -------
    dict with arrays ``phi``, ``psi`` (radians), ``log_weight`` (unbiasing log-weights),
    ``energy`` (potential energy, kT), ``run`` (index of the independent run), and ``meta``
    (dict: settings, basin free energies with standard errors, per-run values).
    """
    try:
        ref = resources.files("boltzkit").joinpath("data", ALANINE_REFERENCE_FILE)
        with ref.open("rb") as fh:
            data = dict(np.load(fh, allow_pickle=False))
    except FileNotFoundError as exc:
        raise DatasetError(f"the reference file boltzkit/data/{ALANINE_REFERENCE_FILE} is missing; "
                           "regenerate it with benchmarks/alanine_reference.py") from exc
    data["meta"] = json.loads(str(data.pop("meta_json")))
    return data
