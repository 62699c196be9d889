r"""Free energies the way chemists and physicists use them: differences between states (BAR,
MBAR through pymbar, reweighting), profiles along collective variables, curves over beta.

* ``bk.free_energy_difference(res_a, res_b, targets=(a, b))`` -> :class:`FreeEnergyDifference`
* ``bk.mbar(results, targets)`` -> :class:`MultistateFreeEnergies` (all pairwise Delta F, the
  covariance, ``expectation(fn, state)``, ``free_energy(target)``, ``free_energy_profile``)
* ``Result.free_energy_profile(cv, bins)`` -> :class:`FreeEnergyProfile` (bootstrap errors)
* ``bk.free_energy.level_mbar(res)`` -> :class:`MultistateFreeEnergies` over the levels of one
  AIS/SMC run with ``keep_levels`` (:func:`level_mbar_jackknife`: island error bars)
* ``Result.log_z_path`` -> :class:`LogZPath`; ``Result.thermo_curves()`` ->
  :class:`ThermoCurveEstimate` (U(beta), C(beta) per site; :func:`thermo_curves_from_path`)

Papers
------
C. H. Bennett, "Efficient estimation of free energy differences from Monte Carlo data",
J. Comput. Phys. 22, 245 (1976) (BAR). M. R. Shirts and J. D. Chodera, "Statistically optimal
analysis of samples from multiple equilibrium states", J. Chem. Phys. 129, 124105 (2008)
(MBAR). The estimators themselves are pymbar's (``pip install 'boltzkit[free_energy]'``);
this module only builds pymbar's inputs from boltzkit objects and returns boltzkit objects.

Objective
---------
States ``k = 1..K`` are targets on one domain with reduced potentials ``u_k(x)`` (kT,
``Energy.energy``); ``N_k`` samples ``x_n`` were drawn from state k. MBAR solves

    f_i = -log sum_n exp(-u_i(x_n)) / sum_k N_k exp(f_k - u_k(x_n)),

``f_i = -log Z_i`` up to one constant, from the matrix ``u_kn[k, n] = u_k(x_n)`` over all
pooled samples; BAR is its two-state case, in terms of the work values
``w_F = u_b(x_a) - u_a(x_a)`` and ``w_R = u_a(x_b) - u_b(x_b)``. Every ``Delta F`` here is
``F_b - F_a = -log(Z_b / Z_a)`` in kT.

Inputs from boltzkit Results
----------------------------
BAR and MBAR assume independent draws from each state. A :class:`~boltzkit.result.Result`
without importance weights (MCMC) is thinned to every ``ceil(n / ESS)``-th sample (its
statistical inefficiency); a weighted Result (importance sampling, AIS, neural samplers) is
resampled by weight to ``floor(ESS)`` draws (Kish ESS); a weighted Result whose weights are all
equal is used as it is. A Result stores only a description of its target
(``Result.target``), so the target objects are passed explicitly, in the order of the Results.

Failure modes
-------------
* Poor overlap between the states: the estimate and, worse, its analytic error bar become
  unreliable (pymbar #490). The overlap (pymbar's scalar overlap, 0 = none, 1 = identical
  states) is reported, and an :class:`~boltzkit.errors.UnreliableEstimateWarning` is raised
  below ``MIN_OVERLAP``; add intermediate states.
* Correlated samples under-reported by the Result's ESS: error bars too small.
* Resampled weighted Results repeat draws; with a small ESS the error bar is optimistic.
* Profiles: a bin that few (effective) samples reach has an unreliable error bar; the
  bootstrap cannot see regions no sample visited (they are NaN, not high).
* Curves: see :func:`thermo_curves_from_path` (window bias at sharp peaks; approximate errors).
"""

from __future__ import annotations

import builtins
import json
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .cv import as_cv
from .errors import BoltzkitError, TargetError, UnreliableEstimateWarning, require
from .estimators.diagnostics import integrated_autocorr_time
from .plot import _plt

__all__ = ["FreeEnergyDifference", "MultistateFreeEnergies", "free_energy_difference", "mbar",
           "reduced_potentials", "state_draws", "MIN_OVERLAP", "FreeEnergyProfile", "histogram_profile",
           "LogZPath", "ThermoCurveEstimate", "thermo_curves_from_path", "level_mbar", "level_log_z",
           "level_mbar_jackknife"]

MIN_OVERLAP = 0.03    # pymbar's rule of thumb for the overlap scalar
MIN_REGION_DRAWS = 10  # fewer pooled draws in a region: warn
WIDE_FACTOR = 4       # the smooth that sets tau of the curve error bars spans +-WIDE_FACTOR windows
_ENERGY_BATCH = 65536


def pymbar_module():
    """Import pymbar (quietly: its import logs banners about JAX) or fail naming the extra."""
    log = logging.getLogger("pymbar")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return require("pymbar", "free_energy")
    finally:
        log.setLevel(level)


# ----------------------------------------------------------------------------- inputs
def _state_name(res, target, i: int) -> str:
    name = getattr(target, "name", None) or (res.target.get("name") if res is not None else None)
    return f"{i}:{name}" if name else str(i)


def _check_targets(results, targets) -> list:
    if targets is None:
        raise TargetError("pass the targets explicitly, one per Result, e.g. targets=(target_a, "
                          "target_b): a Result stores only a description of its target "
                          "(Result.target), not the energy itself")
    targets = list(targets)
    if len(targets) != len(results):
        raise TargetError(f"{len(results)} results but {len(targets)} targets; pass one target "
                          "per Result, in the same order")
    for i, t in enumerate(targets):
        if not (hasattr(t, "domain") and callable(getattr(t, "energy", None))):
            raise TargetError(f"targets[{i}] ({type(t).__name__}) is not an energy target: it needs "
                              "a `domain` and an `energy(x)` method (bk.energies.Energy)")
    dom0 = targets[0].domain
    for i, t in enumerate(targets[1:], 1):
        if t.domain != dom0:
            raise TargetError(f"targets[0] lives on {dom0!r} but targets[{i}] on {t.domain!r}; "
                              "free-energy differences need states on one domain")
    for i, (r, t) in enumerate(zip(results, targets)):
        rec = r.target.get("domain") if isinstance(r.target, dict) else None
        if rec is not None and hasattr(t.domain, "to_config") and rec != t.domain.to_config():
            raise TargetError(f"results[{i}] was produced on a domain {rec} but targets[{i}] is on "
                              f"{t.domain.to_config()}; pass the targets in the order of the results")
    return targets


def state_draws(res, *, seed: int = 0, decorrelate: bool = True, name: str = "state") -> torch.Tensor:
    """Approximately independent, unweighted draws of the state sampled by ``res``.

    Unweighted (MCMC) samples are thinned by their statistical inefficiency ``n / ESS``;
    weighted samples are resampled by weight to ``floor(ESS)`` draws (multinomial, ``seed``),
    unless all weights are equal. ``decorrelate=False`` returns the samples unchanged
    (unweighted Results only).
    """
    n = res.n_samples
    if n == 0:
        raise TargetError(f"{name} has no samples; every state needs at least one draw")
    lw = res.log_weights
    if lw is not None:
        lw_np = lw.numpy()
        finite = np.isfinite(lw_np)
        if np.isnan(lw_np).any() or not finite.any():
            raise TargetError(f"{name} has NaN log-weights or none finite; it carries no usable draw")
        if finite.all() and np.ptp(lw_np) == 0:
            lw = None  # equal weights: exact draws
    if lw is None:
        if decorrelate and res.log_weights is None:
            return res.samples[::max(1, math.ceil(res._inflation() - 1e-9))]
        return res.samples
    if not decorrelate:
        raise TargetError(f"{name} has unequal importance weights; BAR/MBAR need unweighted draws, "
                          "so leave decorrelate=True (they are resampled by weight)")
    w = res.weights()
    ess = 1.0 / float(np.sum(w * w))
    m = max(1, int(math.floor(ess + 1e-9)))
    return res.resample(m, seed=seed)


def reduced_potentials(targets: Sequence, x: torch.Tensor, *, names=None) -> np.ndarray:
    """``u_kn[k, n] = targets[k].energy(x[n])`` (float64, kT), batched, without gradients.

    Raises :class:`~boltzkit.errors.TargetError` naming the state when a value is not finite.
    """
    out = np.empty((len(targets), x.shape[0]), dtype=np.float64)
    with torch.no_grad():
        for k, t in enumerate(targets):
            dev = getattr(t, "device", torch.device("cpu"))
            for s in range(0, x.shape[0], _ENERGY_BATCH):
                xb = x[s:s + _ENERGY_BATCH].to(dev)
                out[k, s:s + xb.shape[0]] = torch.as_tensor(t.energy(xb)).detach().double().cpu().numpy()
    bad = ~np.isfinite(out)
    if bad.any():
        k, n = np.argwhere(bad)[0]
        nm = names[k] if names is not None else str(k)
        raise TargetError(f"the reduced potential of state {nm} is not finite at {int(bad[k].sum())} "
                          f"of {x.shape[0]} pooled samples (first: sample {int(n)}, value {out[k, n]}); "
                          "BAR/MBAR need finite energies of every sample in every state. Soften hard "
                          "walls or cut the energy (e.g. a lin-log cut) before comparing states")
    return out


def _pool(results, targets, *, seed, decorrelate):
    """``(checked targets, pooled draws x, draws per state, state names, u_kn)``."""
    targets = _check_targets(results, targets)
    names = [_state_name(r, t, i) for i, (r, t) in enumerate(zip(results, targets))]
    draws = []
    for i, (r, t) in enumerate(zip(results, targets)):
        x = state_draws(r, seed=seed + i, decorrelate=decorrelate, name=f"state {names[i]}")
        try:
            t.domain.validate(x, what=f"the samples of state {names[i]}")
        except BoltzkitError as exc:
            raise TargetError(f"{exc}; results[{i}] does not hold states of targets[{i}]") from None
        draws.append(x)
    x = torch.cat([d.to(draws[0].dtype) for d in draws])
    n_k = np.array([d.shape[0] for d in draws], dtype=np.int64)
    return targets, x, n_k, names, reduced_potentials(targets, x, names=names)


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class FreeEnergyDifference:
    """``Delta F = F_b - F_a = -log(Z_b / Z_a)`` in kT, with its standard error.

    Unpacks as ``dF, se = bk.free_energy_difference(...)``.
    """

    value: float
    stderr: float
    method: str
    states: tuple
    n_samples: tuple
    overlap: float = float("nan")

    def __iter__(self):
        return iter((self.value, self.stderr))

    def __repr__(self):
        a, b = self.states
        return (f"Delta F({b} - {a}) = {self.value:.4f} +- {self.stderr:.2g} kT ({self.method}; "
                f"{self.n_samples[0]} + {self.n_samples[1]} draws; overlap {self.overlap:.3g})")


@dataclass(frozen=True, eq=False)
class MultistateFreeEnergies:
    """MBAR free energies of K states on one domain.

    Attributes
    ----------
    delta_f : ndarray (K, K), ``delta_f[i, j] = F_j - F_i`` in kT.
    stderr : ndarray (K, K), standard errors of ``delta_f``.
    covariance : ndarray (K, K), pymbar's asymptotic covariance ``Theta`` of the ``f_k``
        (``stderr[i, j]^2 = Theta_ii + Theta_jj - 2 Theta_ij``).
    states : names of the states.
    n_samples : ndarray (K,), draws used per state (after thinning / resampling).
    overlap : pymbar's scalar overlap (1 - second largest eigenvalue of the overlap matrix).
    """

    delta_f: np.ndarray
    stderr: np.ndarray
    covariance: np.ndarray
    states: tuple
    n_samples: np.ndarray
    overlap: float
    _mbar: Any = field(repr=False)
    _x: torch.Tensor = field(repr=False)
    _u_kn: np.ndarray = field(repr=False)
    _targets: tuple = field(repr=False)

    def difference(self, a: int = 0, b: int = 1) -> FreeEnergyDifference:
        """``F_b - F_a`` as a :class:`FreeEnergyDifference`."""
        return FreeEnergyDifference(float(self.delta_f[a, b]), float(self.stderr[a, b]), "MBAR",
                                    (self.states[a], self.states[b]),
                                    (int(self.n_samples[a]), int(self.n_samples[b])), self.overlap)

    def _state_u(self, state) -> "tuple[int | None, np.ndarray | None]":
        if isinstance(state, (int, np.integer)) and not isinstance(state, bool):
            if not 0 <= state < len(self.states):
                raise TargetError(f"state index {state} is out of range; there are {len(self.states)} states")
            return int(state), None
        if hasattr(state, "energy") and hasattr(state, "domain"):
            if state.domain != self._targets[0].domain:
                raise TargetError(f"the new state lives on {state.domain!r}, the sampled states on "
                                  f"{self._targets[0].domain!r}")
            return None, reduced_potentials([state], self._x, names=[getattr(state, "name", "new")])
        raise TargetError(f"state must be an index 0..{len(self.states) - 1} or an energy target, "
                          f"got {type(state).__name__}")

    def expectation(self, fn: Callable[[torch.Tensor], torch.Tensor], state=0) -> "tuple[float, float]":
        """``E_state[fn(x)]`` and its standard error, reweighted from all pooled samples.

        ``state`` is the index of a sampled state or any energy target on the same domain
        (a state that was not sampled: reweighting needs overlap with the sampled ones).
        """
        a = torch.as_tensor(fn(self._x)).detach().double().cpu().reshape(-1).numpy()
        if a.size != self._x.shape[0]:
            raise TargetError(f"fn returned {a.size} values for {self._x.shape[0]} samples; it must "
                              "return one value per sample")
        if not np.isfinite(a).all():
            raise TargetError("fn returned non-finite values")
        k, u = self._state_u(state)
        out = self._mbar.compute_expectations(a, u_kn=u)  # u=None: the sampled states
        i = k if u is None else 0
        return float(out["mu"][i]), float(out["sigma"][i])

    def region_free_energies(self, regions: dict, state=0) -> dict:
        """Free energies of regions of state space at one state, relative to the first region:
        ``dF(A) = -log(P(A) / P(ref))`` (kT). Each region is the state restricted to it (reduced
        potential +inf outside), and pymbar's ``compute_perturbed_free_energies`` gives the
        differences with their uncertainties. ``regions`` maps names to boolean masks over the
        pooled samples or callables ``x -> (n,)`` masks; ``state`` is an index or an energy target.

        Returns a dict ``name -> FreeEnergyDifference`` (the first region maps to 0 +- 0).
        """
        if not isinstance(regions, dict) or len(regions) < 2:
            raise TargetError("regions must be a dict of at least two named masks or callables")
        k, u = self._state_u(state)
        u_n = self._u_kn[k] if u is None else u[0]
        rows = []
        for nm, r in regions.items():
            m = torch.as_tensor(r(self._x) if callable(r) else r).detach().reshape(-1).cpu().numpy().astype(bool)
            if m.size != self._x.shape[0]:
                raise TargetError(f"region {nm} selects from {m.size} entries; there are "
                                  f"{self._x.shape[0]} pooled samples")
            n_in = int(m.sum())
            if n_in == 0:
                raise TargetError(f"no pooled sample falls in region {nm}; its free energy is not estimable")
            if n_in < MIN_REGION_DRAWS:
                warnings.warn(f"region {nm} holds {n_in} pooled draws (< {MIN_REGION_DRAWS}); its free "
                              "energy and error bar are unreliable", UnreliableEstimateWarning, stacklevel=2)
            rows.append(np.where(m, u_n, np.inf))
        with np.errstate(all="ignore"):
            out = self._mbar.compute_perturbed_free_energies(np.stack(rows))
        names = list(regions)
        n = int(self.n_samples.sum())
        return {nm: FreeEnergyDifference(float(out["Delta_f"][0, i]), float(out["dDelta_f"][0, i]),
                                         "MBAR (restricted states)", (names[0], nm), (n, n), self.overlap)
                for i, nm in enumerate(names)}

    def free_energy(self, state, relative_to: int = 0) -> FreeEnergyDifference:
        """``F(state) - F(relative_to)`` for an energy target (not necessarily sampled) on the
        same domain, from the pooled samples (pymbar ``compute_perturbed_free_energies``)."""
        k, u = self._state_u(state)
        if u is None:
            return self.difference(relative_to, k)
        ref, _ = self._state_u(relative_to)
        out = self._mbar.compute_perturbed_free_energies(np.vstack([self._u_kn[ref], u[0]]))
        return FreeEnergyDifference(float(out["Delta_f"][0, 1]), float(out["dDelta_f"][0, 1]),
                                    "MBAR (perturbed)",
                                    (self.states[ref], getattr(state, "name", "new state")),
                                    (int(self.n_samples.sum()), 0), self.overlap)

    def free_energy_profile(self, cv, bins=50, *, state=0, range=None) -> "FreeEnergyProfile":
        """``F(s)`` (kT, lowest bin 0) of one state (an index or any energy target on the domain)
        from all pooled samples, through pymbar's histogram FES with analytic error bars
        (of the difference to the lowest bin). ``cv``, ``bins`` and ``range`` as in
        :meth:`boltzkit.result.Result.free_energy_profile`."""
        return _mbar_profile(self, cv, bins, state=state, range=range)

    def __repr__(self):
        w = max(len(s) for s in self.states)
        rows = [f"MBAR over {len(self.states)} states ({int(self.n_samples.sum())} draws; "
                f"overlap {self.overlap:.3g}); F_k - F_0 in kT:"]
        for k, s in enumerate(self.states):
            rows.append(f"  {s:<{w}}  {self.delta_f[0, k]:+.4f} +- {self.stderr[0, k]:.2g}  "
                        f"(n = {int(self.n_samples[k])})")
        return "\n".join(rows)


# ----------------------------------------------------------------------------- estimators
def _warn_overlap(overlap: float, what: str):
    if not (overlap >= MIN_OVERLAP):
        warnings.warn(f"the {what} states overlap poorly (overlap {overlap:.3g} < {MIN_OVERLAP}); "
                      "the estimate and its error bar are unreliable. Add intermediate states",
                      UnreliableEstimateWarning, stacklevel=3)


def free_energy_difference(res_a, res_b, targets=None, *, seed: int = 0,
                           decorrelate: bool = True) -> FreeEnergyDifference:
    """BAR estimate of ``Delta F = F_b - F_a = -log(Z_b / Z_a)`` (kT) from samples of two states.

    Parameters
    ----------
    res_a, res_b : Result
        Samples of state a and of state b (on one domain).
    targets : (target_a, target_b)
        The two energy targets (``Energy``), in the order of the Results.
    seed : int
        Seed of the resampling of weighted Results.
    decorrelate : bool
        Thin MCMC samples by their statistical inefficiency (see :func:`state_draws`).

    Returns
    -------
    FreeEnergyDifference (value, stderr, overlap); pymbar's ``bar`` does the estimation.
    """
    targets, x, n_k, names, u = _pool([res_a, res_b], targets, seed=seed, decorrelate=decorrelate)
    na = int(n_k[0])
    w_f = u[1, :na] - u[0, :na]
    w_r = u[0, na:] - u[1, na:]
    pm = pymbar_module()
    try:
        with np.errstate(all="ignore"):  # no overlap: pymbar divides by zero; the warning below says so
            out = pm.other_estimators.bar(w_f, w_r)
            overlap = float(pm.other_estimators.bar_overlap(w_f, w_r))
    except Exception as exc:  # pymbar raises its own errors when BAR cannot be solved
        raise BoltzkitError(f"BAR failed ({type(exc).__name__}: {exc}); the states probably do not "
                            "overlap: add intermediate states and use bk.mbar") from exc
    _warn_overlap(overlap, "two")
    return FreeEnergyDifference(float(out["Delta_f"]), float(out["dDelta_f"]), "BAR", tuple(names),
                                (na, int(n_k[1])), overlap)


def mbar(results: Sequence, targets: Sequence, *, seed: int = 0,
         decorrelate: bool = True) -> MultistateFreeEnergies:
    """MBAR free energies of all states, with the covariance, from samples of each state.

    Parameters
    ----------
    results : sequence of Result, one per state (samples of that state)
    targets : sequence of energy targets, in the same order, on one domain
    seed, decorrelate : as in :func:`free_energy_difference`

    Returns
    -------
    MultistateFreeEnergies: ``delta_f``, ``stderr``, ``covariance``, ``overlap``, and
    ``expectation(fn, state)`` / ``free_energy(target)`` for reweighting to any state.
    """
    results = list(results)
    if len(results) < 2:
        raise TargetError(f"MBAR needs at least two states, got {len(results)}")
    targets, x, n_k, names, u = _pool(results, targets, seed=seed, decorrelate=decorrelate)
    pm = pymbar_module()
    try:
        m = pm.MBAR(u, n_k)
        out = m.compute_free_energy_differences(return_theta=True)
        overlap = float(m.compute_overlap()["scalar"])
    except Exception as exc:
        raise BoltzkitError(f"MBAR failed ({type(exc).__name__}: {exc}); check that the states "
                            "overlap (add intermediate states)") from exc
    _warn_overlap(overlap, f"{len(results)}")
    return MultistateFreeEnergies(np.asarray(out["Delta_f"]), np.asarray(out["dDelta_f"]),
                                  np.asarray(out["Theta"]), tuple(names), n_k, overlap,
                                  m, x, u, tuple(targets))


# ----------------------------------------------------------------------------- profiles
PROFILE_REFERENCE = ("F(s) = -log p(s) + c in kT, with p(s) the probability density of the collective "
                     "variable and c chosen so that the lowest bin has F = 0; error bars are those of "
                     "the difference F(s) - F(lowest bin), hence 0 at that bin")


@dataclass(frozen=True, eq=False)
class FreeEnergyProfile:
    """A free-energy profile ``F(s)`` (kT) on a histogram grid of a collective variable.

    Attributes
    ----------
    edges : tuple of ndarrays, the bin edges along each CV dimension (radians for angles)
    f : ndarray ``(b,)`` or ``(b1, b2)``, F in kT relative to the lowest bin; NaN where no
        sample falls
    stderr : same shape, standard error of ``f`` (of the difference to the lowest bin)
    names, periodic : of the CV dimensions
    method : how ``f`` and ``stderr`` were computed
    reference : the reference state, in words
    n_samples : samples used
    state : the state the profile belongs to
    """

    edges: tuple
    f: np.ndarray
    stderr: np.ndarray
    names: tuple
    periodic: tuple
    method: str
    n_samples: int
    state: str = ""
    reference: str = PROFILE_REFERENCE

    @property
    def centers(self) -> tuple:
        return tuple(0.5 * (e[1:] + e[:-1]) for e in self.edges)

    def _axis(self, d: int):
        c, lab = self.centers[d], self.names[d]
        if self.periodic[d]:
            return np.degrees(c), f"{lab} (deg)"
        return c, lab

    def table(self) -> list:
        """One dict per bin: CV values at the bin centre (degrees for angles), F, stderr."""
        grids = np.meshgrid(*[self._axis(d)[0] for d in range(len(self.names))], indexing="ij")
        rows = []
        for idx in np.ndindex(self.f.shape):
            row = {self.names[d] + ("_deg" if self.periodic[d] else ""): float(grids[d][idx])
                   for d in range(len(self.names))}
            row.update(F_kT=float(self.f[idx]), stderr_kT=float(self.stderr[idx]))
            rows.append(row)
        return rows

    def to_csv(self, path) -> "str":
        return write_csv(path, f"{self.reference}; method: {self.method}; state: {self.state}", self.table())

    def to_json(self, path) -> "str":
        doc = {"names": list(self.names), "periodic": list(self.periodic), "method": self.method,
               "reference": self.reference, "state": self.state, "n_samples": self.n_samples,
               "edges": [e.tolist() for e in self.edges],
               "F_kT": np.where(np.isfinite(self.f), self.f, None).tolist(),
               "stderr_kT": np.where(np.isfinite(self.stderr), self.stderr, None).tolist()}
        with open(path, "w") as fh:
            json.dump(doc, fh, indent=1)
        return str(path)

    def plot(self, path=None, *, ax=None, max_kT: "float | None" = None, contours: bool = True,
             exact=None, label=None):
        """1-D: F with a +-1 stderr band (and ``exact``, an array of F at the centres, dashed);
        2-D: a map of F clipped at ``max_kT`` with contour lines every 1 kT (Ramachandran style)."""
        plt = _plt()
        if ax is None:
            _, ax = plt.subplots(figsize=(4.6, 3.6) if len(self.names) == 1 else (4.8, 4.0))
        if len(self.names) == 1:
            x, xl = self._axis(0)
            lo, hi = self.f - self.stderr, self.f + self.stderr
            ax.plot(x, self.f, color="C0", label=label or "estimate")
            ax.fill_between(x, lo, hi, color="C0", alpha=0.3, lw=0, label="+-1 stderr")
            if exact is not None:
                ax.plot(x, exact, "k--", lw=1, label="exact")
            ax.set(xlabel=xl, ylabel="F (kT)")
            if max_kT is not None:
                ax.set_ylim(top=max_kT)
            ax.legend(frameon=False, fontsize=8)
        elif len(self.names) == 2:
            ex = [np.degrees(e) if p else e for e, p in zip(self.edges, self.periodic)]
            top = float(np.nanmax(self.f)) if max_kT is None else float(max_kT)
            fm = np.ma.masked_invalid(np.minimum(self.f, top))
            mesh = ax.pcolormesh(ex[0], ex[1], fm.T, cmap="viridis", vmin=0.0, vmax=top, shading="flat")
            ax.figure.colorbar(mesh, ax=ax, label="F (kT)")
            if contours and np.isfinite(self.f).sum() > 3:
                cx, cy = self._axis(0)[0], self._axis(1)[0]
                levels = np.arange(1.0, max(top, 1.0) + 1e-9, 1.0)
                ax.contour(cx, cy, fm.T, levels=levels, colors="w", linewidths=0.5, alpha=0.8)
            ax.set(xlabel=self._axis(0)[1], ylabel=self._axis(1)[1])
            if all(self.periodic):
                ax.set(xticks=range(-180, 181, 90), yticks=range(-180, 181, 90))
        else:
            raise TargetError("only 1-D and 2-D profiles can be plotted")
        ax.set_title(label or f"free-energy profile ({self.state})" if self.state else "free-energy profile",
                     fontsize=9)
        if path is not None:
            ax.figure.tight_layout()
            ax.figure.savefig(path, dpi=130)
        return ax

    def __repr__(self):
        ok = np.isfinite(self.f)
        return (f"FreeEnergyProfile({', '.join(self.names)}; {'x'.join(map(str, self.f.shape))} bins, "
                f"{int(ok.sum())} filled; F from 0 to {np.nanmax(self.f):.2f} kT; median stderr "
                f"{np.nanmedian(self.stderr[ok]) if ok.any() else float('nan'):.2g} kT; {self.method})")


def write_csv(path, comment: str, rows: list) -> str:
    """Write ``rows`` (dicts of numbers with the same keys) as CSV under a ``# comment`` line,
    values to 8 significant digits; returns the path."""
    keys = list(rows[0])
    lines = [",".join(keys)] + [",".join(f"{r[k]:.8g}" for k in keys) for r in rows]
    with open(path, "w") as fh:
        fh.write(f"# {comment}\n")
        fh.write("\n".join(lines) + "\n")
    return str(path)


def _edges(values: np.ndarray, bins, range_, periodic, w) -> tuple:
    dims = values.shape[1]
    if np.ndim(bins) == 0 or (np.ndim(bins) == 1 and len(bins) == dims and dims > 1
                              and all(np.ndim(b) == 0 for b in bins)):
        counts = [int(bins)] * dims if np.ndim(bins) == 0 else [int(b) for b in bins]
        if any(c < 1 for c in counts):
            raise TargetError(f"bins must be positive, got {bins!r}")
        out = []
        for d in range(dims):
            if range_ is not None:
                lo, hi = (range_[d] if dims > 1 else (range_[0] if np.ndim(range_[0]) else range_))
            elif periodic[d]:
                lo, hi = -math.pi, math.pi
            else:
                v = values[w > 0, d]
                lo, hi = float(v.min()), float(v.max())
                hi = hi if hi > lo else lo + 1.0
                hi = float(np.nextafter(hi, np.inf))
            if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
                raise TargetError(f"the range of {d}-th CV dimension must be finite with hi > lo, got {(lo, hi)}")
            out.append(np.linspace(lo, hi, counts[d] + 1))
        return tuple(out)
    edges = [np.asarray(bins, float)] if dims == 1 and np.ndim(bins[0]) == 0 else [np.asarray(b, float) for b in bins]
    if len(edges) != dims or any(e.ndim != 1 or e.size < 2 or not (np.diff(e) > 0).all() for e in edges):
        raise TargetError(f"bins must be a number of bins or, per CV dimension, increasing edges; got {bins!r}")
    return tuple(edges)


def _bin_index(values: np.ndarray, edges: tuple) -> np.ndarray:
    """Flat bin index of each row of ``values`` (C order over the grid), -1 outside."""
    idx = []
    ok = np.ones(values.shape[0], bool)
    for d, e in enumerate(edges):
        i = np.searchsorted(e, values[:, d], side="right") - 1
        i[values[:, d] == e[-1]] = e.size - 2            # the last edge belongs to the last bin
        ok &= (i >= 0) & (i < e.size - 1)
        idx.append(np.clip(i, 0, e.size - 2))
    flat = np.ravel_multi_index(idx, [e.size - 1 for e in edges])
    return np.where(ok, flat, -1)


def _bin_volumes(edges: tuple) -> np.ndarray:
    """Volume of every bin of the grid, flat in C order (the order of :func:`_bin_index`)."""
    vol = np.ones(())
    for e in edges:
        vol = np.multiply.outer(vol, np.diff(e))
    return vol.reshape(-1)


def histogram_profile(values, weights, bins=50, *, range=None, periodic=None, names=None,
                      n_bootstrap: int = 200, block: int = 1, seed: int = 0,
                      state: str = "") -> FreeEnergyProfile:
    """``F(s) = -log p(s)`` (kT, lowest bin 0) of weighted samples of a collective variable,
    with bootstrap standard errors.

    Parameters
    ----------
    values : array ``(n,)`` or ``(n, m)``, the CV of each sample
    weights : array ``(n,)`` of non-negative sample weights (self-normalized importance
        weights, or equal weights)
    bins : number of bins per dimension, or the edges (per dimension)
    range : ``(lo, hi)`` (per dimension); default: the samples' range, ``(-pi, pi)`` for angles
    periodic : per dimension, whether it is an angle (default: none)
    n_bootstrap : bootstrap replicates (pairs ``(s_i, w_i)`` resampled with replacement)
    block : block length of a moving-block bootstrap (the statistical inefficiency of
        correlated MCMC samples; 1 for independent samples)

    The error bar of bin i is the delta-method one of ``log p_i - log p_j`` (j the lowest bin)
    with the bootstrap covariance of the bin probabilities.
    """
    v = np.asarray(values, np.float64)
    v = v[:, None] if v.ndim == 1 else v
    n, dims = v.shape
    w = np.asarray(weights, np.float64).reshape(-1)
    if w.size != n:
        raise TargetError(f"{w.size} weights for {n} samples")
    if n < 2 or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise TargetError("a profile needs at least 2 samples with finite non-negative weights, not all 0")
    periodic = tuple(periodic) if periodic is not None else (False,) * dims
    names = tuple(names) if names is not None else tuple(f"s{d}" for d in builtins.range(dims))
    edges = _edges(v, bins, range, periodic, w)
    shape = tuple(e.size - 1 for e in edges)
    nb = int(np.prod(shape))
    idx = _bin_index(v, edges)
    inside = idx >= 0
    p = np.bincount(idx[inside], weights=w[inside], minlength=nb) / w.sum()
    with np.errstate(divide="ignore"):
        f_abs = -np.log(p / _bin_volumes(edges))
    if not np.isfinite(f_abs).any():
        raise TargetError("no sample falls inside the histogram range; widen range or bins")
    j = int(np.nanargmin(np.where(np.isfinite(f_abs), f_abs, np.nan)))
    # bootstrap covariance of the bin probabilities (only the filled bins)
    filled = np.flatnonzero(p > 0)
    rng = np.random.default_rng(seed)
    block = max(1, int(block))
    reps = []
    chunk = max(1, int(2e7 // n))
    for s in builtins.range(0, int(n_bootstrap), chunk):
        b = min(chunk, int(n_bootstrap) - s)
        if block == 1:
            draw = rng.integers(0, n, size=(b, n))
        else:
            nblk = -(-n // block)
            starts = rng.integers(0, max(n - block, 0) + 1, size=(b, nblk))
            draw = (starts[:, :, None] + np.arange(block)).reshape(b, -1)[:, :n]
        wb, ib = w[draw], idx[draw]
        tot = wb.sum(1, keepdims=True)
        off = (np.arange(b)[:, None] * nb + ib)[ib >= 0]
        h = np.bincount(off, weights=wb[ib >= 0], minlength=b * nb).reshape(b, nb) / tot
        reps.append(h[:, filled])
    se = np.full(nb, np.nan)
    if reps:
        pb = np.concatenate(reps)
        cov = np.cov(pb, rowvar=False, ddof=1).reshape(filled.size, filled.size)
        pf = p[filled]
        jj = int(np.flatnonzero(filled == j)[0])
        var = (np.diag(cov) / pf**2 + cov[jj, jj] / pf[jj] ** 2 - 2.0 * cov[:, jj] / (pf * pf[jj]))
        se[filled] = np.sqrt(np.maximum(var, 0.0))
    f = f_abs - f_abs[j]
    f[~np.isfinite(f)] = np.nan
    method = (f"weighted histogram; {int(n_bootstrap)} bootstrap replicates"
              + (f" in blocks of {block}" if block > 1 else ""))
    return FreeEnergyProfile(edges, f.reshape(shape), se.reshape(shape), names, periodic, method,
                             int(n), state)


def profile_of_result(res, cv, bins=50, *, range=None, n_bootstrap: int = 200,
                      seed: int = 0) -> FreeEnergyProfile:
    """:meth:`boltzkit.result.Result.free_energy_profile` (weights respected; MCMC samples
    bootstrapped in blocks of their statistical inefficiency)."""
    cv = as_cv(cv, res.samples)
    block = 1 if res.log_weights is not None else math.ceil(res._inflation() - 1e-9)
    return histogram_profile(cv(res.samples), res.weights(), bins, range=range, periodic=cv.periodic,
                             names=cv.names, n_bootstrap=n_bootstrap, block=block, seed=seed,
                             state=str(res.target.get("name", res.method)))


def _mbar_profile(self: MultistateFreeEnergies, cv, bins=50, *, state=0, range=None) -> FreeEnergyProfile:
    cv = as_cv(cv, self._x)
    vals = cv(self._x)
    k, u = self._state_u(state)
    u_n = self._u_kn[k] if u is None else u[0]
    edges = _edges(vals, bins, range, cv.periodic, np.ones(vals.shape[0]))
    pm = pymbar_module()
    fes = pm.FES(self._u_kn, self.n_samples, mbar_options={"initial_f_k": self._mbar.f_k})
    fes.generate_fes(u_n, vals if vals.shape[1] > 1 else vals[:, 0], fes_type="histogram",
                     histogram_parameters={"bin_edges": [e.copy() for e in edges]})
    centers = np.stack([g.reshape(-1) for g in np.meshgrid(*[0.5 * (e[1:] + e[:-1]) for e in edges],
                                                           indexing="ij")], 1)
    out = fes.get_fes(centers if vals.shape[1] > 1 else centers[:, 0], reference_point="from-lowest",
                      uncertainty_method="analytical")
    shape = tuple(e.size - 1 for e in edges)
    f = np.asarray(out["f_i"], float) + np.log(_bin_volumes(edges))     # per probability density
    f = f - np.nanmin(f)
    name = self.states[k] if u is None else getattr(state, "name", "new state")
    return FreeEnergyProfile(edges, f.reshape(shape), np.asarray(out["df_i"], float).reshape(shape),
                             cv.names, cv.periodic, "MBAR histogram (pymbar FES, analytic errors)",
                             int(self.n_samples.sum()), name)


# ----------------------------------------------------------------------------- curves over beta
@dataclass(frozen=True)
class LogZPath:
    """``log Z`` at every level of an annealing (AIS/SMC) run, with standard errors.

    ``lam``: the path parameter of each level (0..1); ``beta``: the inverse temperature of
    each level when the path is a temperature ladder (a lattice or other categorical target
    annealed from the uniform distribution: level lambda is the target at ``lambda beta``),
    else None. Unpacks as ``x, log_z, stderr`` with ``x`` = beta where known, else lambda.
    """

    lam: np.ndarray
    beta: "np.ndarray | None"
    log_z: np.ndarray
    stderr: np.ndarray

    def __iter__(self):
        return iter((self.lam if self.beta is None else self.beta, self.log_z, self.stderr))

    def __len__(self):
        return int(self.lam.size)

    def __repr__(self):
        x = "beta" if self.beta is not None else "lambda"
        v = self.lam if self.beta is None else self.beta
        return (f"LogZPath({self.lam.size} levels, {x} {v[0]:.4g}..{v[-1]:.4g}, log Z {self.log_z[0]:.6g}"
                f"..{self.log_z[-1]:.6g} +- {self.stderr[-1]:.2g})")


def log_z_path_of(res) -> LogZPath:
    """:attr:`boltzkit.result.Result.log_z_path`."""
    h = res.history
    need = ("lambda", "log_z_running", "log_z_running_stderr")
    if not all(k in h for k in need):
        raise TargetError(f"this Result ({res.method or 'unknown method'}) has no per-level log Z path "
                          "(history['lambda'], ['log_z_running'], ['log_z_running_stderr']); it is "
                          "recorded by annealing runs: bk.sample(target, method='ais' or 'smc')")
    lam, lz, se = (np.asarray(h[k], np.float64).reshape(-1) for k in need)
    if not (lam.size == lz.size == se.size):
        raise TargetError(f"the path arrays disagree in length: lambda {lam.size}, log_z_running "
                          f"{lz.size}, stderr {se.size}")
    tgt = res.target if isinstance(res.target, dict) else {}
    dom = tgt.get("domain") or {}
    # categorical: annealed from the uniform distribution
    beta = lam * float(tgt["beta"]) if "beta" in tgt and "q" in dom else None
    return LogZPath(lam, beta, lz, se)


@dataclass(frozen=True, eq=False)
class ThermoCurveEstimate:
    """Energy and heat capacity per site over beta, estimated from a log Z path.

    ``energy`` is ``<E>/N`` and ``heat_capacity`` ``C/N = beta^2 Var(E)/N`` (k_B = 1) in the
    energy units of the target (J for Ising/Potts; ``Energy.energy`` is ``beta E``).
    """

    beta: np.ndarray
    energy: np.ndarray
    energy_stderr: np.ndarray
    heat_capacity: np.ndarray
    heat_capacity_stderr: np.ndarray
    n_sites: int
    method: str

    def table(self) -> list:
        return [{"beta": float(b), "energy_per_site": float(e), "energy_stderr": float(es),
                 "heat_capacity_per_site": float(c), "heat_capacity_stderr": float(cs)}
                for b, e, es, c, cs in zip(self.beta, self.energy, self.energy_stderr,
                                           self.heat_capacity, self.heat_capacity_stderr)]

    def deviation(self, exact) -> dict:
        """Max and rms of ``(estimate - exact) / stderr`` against an exact curve (an object
        with ``energy`` and ``heat_capacity`` at the same betas, e.g. :func:`exact.ising_curve`)."""
        ze = (self.energy - np.asarray(exact.energy)) / self.energy_stderr
        zc = (self.heat_capacity - np.asarray(exact.heat_capacity)) / self.heat_capacity_stderr
        return {"energy_max_z": float(np.max(np.abs(ze))), "energy_rms_z": float(np.sqrt(np.mean(ze**2))),
                "heat_capacity_max_z": float(np.max(np.abs(zc))),
                "heat_capacity_rms_z": float(np.sqrt(np.mean(zc**2))),
                "energy_max_abs": float(np.max(np.abs(self.energy - exact.energy))),
                "heat_capacity_max_abs": float(np.max(np.abs(self.heat_capacity - exact.heat_capacity)))}

    def plot(self, path=None, *, exact=None, axes=None, label="SMC/AIS path"):
        """Two panels, U(beta) and C(beta), with +-1 stderr bands and the exact curves dashed."""
        plt = _plt()
        if axes is None:
            _, axes = plt.subplots(1, 2, figsize=(8.4, 3.4))
        for ax, y, s, ex_y, nm in ((axes[0], self.energy, self.energy_stderr,
                                    None if exact is None else exact.energy, "U / N  (J)"),
                                   (axes[1], self.heat_capacity, self.heat_capacity_stderr,
                                    None if exact is None else exact.heat_capacity, "C / N  (k_B)")):
            ax.plot(self.beta, y, color="C0", lw=1, label=label)
            ax.fill_between(self.beta, y - s, y + s, color="C0", alpha=0.3, lw=0, label="+-1 stderr")
            if ex_y is not None:
                ax.plot(exact.beta, ex_y, "k--", lw=1, label="exact (finite lattice)")
            ax.set(xlabel="beta J", ylabel=nm)
        axes[1].legend(frameon=False, fontsize=8)
        if path is not None:
            axes[0].figure.tight_layout()
            axes[0].figure.savefig(path, dpi=130)
        return axes

    def __repr__(self):
        k = int(np.argmax(self.heat_capacity))
        return (f"ThermoCurveEstimate({self.beta.size} points, beta {self.beta[0]:.3g}..{self.beta[-1]:.3g}; "
                f"C/N peak {self.heat_capacity[k]:.3f} +- {self.heat_capacity_stderr[k]:.2g} at beta "
                f"{self.beta[k]:.4f}; {self.method})")


def _local_linear(x: np.ndarray, y: np.ndarray, k: int, w: int):
    lo, hi = max(0, k - w), min(x.size, k + w + 1)
    dx, yy = x[lo:hi] - x[k], y[lo:hi]
    X = np.stack([np.ones_like(dx), dx], 1)
    coef, *_ = np.linalg.lstsq(X, yy, rcond=None)
    r = yy - X @ coef
    s2 = float(r @ r) / max(dx.size - 2, 1)
    return coef, s2 * np.linalg.pinv(X.T @ X)


def thermo_curves_from_path(beta, log_z, n_sites: int, *, window: "int | None" = None,
                            trim: bool = True) -> ThermoCurveEstimate:
    r"""``U(beta)/N`` and ``C(beta)/N`` with error bars from ``log Z`` at the levels of a ladder.

    Since ``d log Z / d beta = -<E>`` and ``d^2 log Z / d beta^2 = Var(E)``, each increment
    ``-(log Z_k - log Z_{k-1}) / (beta_k - beta_{k-1})`` estimates ``<E>`` at the midpoint;
    a straight line fitted to these over ``2 window + 1`` neighbouring levels gives ``<E>``
    (its value) and ``-Var(E)`` (its slope). Error bars: least squares inflated by
    ``sqrt(tau)``, with ``tau`` the integrated autocorrelation time (in levels) of the
    increments about a wider (``+-4 window`` levels, quadratic) smooth: successive increments
    share particles, so their noise is correlated.

    Failure modes: ``window`` too wide for a sharp peak of C biases it low (the fit is
    linear); too narrow makes it noisy; the error bars are approximate (they assume the
    increment noise is stationary over ``+-4 window`` levels; measured calibration in
    ``benchmarks/free_energy_curves.py``). ``trim`` drops the ``window`` levels at each end
    where the fit is one-sided.

    Parameters
    ----------
    beta, log_z : arrays (K + 1,) along the ladder (increasing beta)
    n_sites : number of sites (the curves are per site)
    window : half-width in levels; default ``max(5, K // 25)``
    """
    b, lz = np.asarray(beta, np.float64).reshape(-1), np.asarray(log_z, np.float64).reshape(-1)
    if b.size != lz.size or b.size < 8:
        raise TargetError(f"need beta and log Z at the same >= 8 levels, got {b.size} and {lz.size}")
    db = np.diff(b)
    if not (db > 0).all() or not np.isfinite(lz).all():
        raise TargetError("beta must increase strictly along the path and log Z be finite")
    K = db.size
    w = int(window) if window is not None else max(5, K // 25)
    if w < 2 or 2 * w + 1 > K:
        raise TargetError(f"window = {w} levels does not fit a path of {K} increments; use "
                          f"2 <= window <= {(K - 1) // 2}")
    bm = 0.5 * (b[1:] + b[:-1])
    u = -np.diff(lz) / db                          # <E> (total) at the midpoints
    wide = min(WIDE_FACTOR * w, (K - 1) // 2)
    spans = [(max(0, k - wide), min(K, k + wide + 1)) for k in builtins.range(K)]
    smooth = np.empty(K)
    for k, (lo, hi) in enumerate(spans):           # wide quadratic smooth, residuals -> tau
        dx = bm[lo:hi] - bm[k]
        smooth[k] = np.polynomial.polynomial.polyfit(dx, u[lo:hi], 2)[0]
    resid = u - smooth
    e, ese, v, vse = (np.empty(K) for _ in builtins.range(4))
    for k, (lo, hi) in enumerate(spans):
        coef, cov = _local_linear(bm, u, k, w)
        tau = max(1.0, integrated_autocorr_time(resid[lo:hi], warn=False))
        e[k], v[k] = coef[0], -coef[1]
        ese[k], vse[k] = math.sqrt(cov[0, 0] * tau), math.sqrt(cov[1, 1] * tau)
    sl = slice(w, K - w) if trim else slice(0, K)
    n = float(n_sites)
    return ThermoCurveEstimate(bm[sl], e[sl] / n, ese[sl] / n, bm[sl] ** 2 * v[sl] / n,
                               bm[sl] ** 2 * vse[sl] / n, int(n_sites),
                               f"log Z path: local linear fit of the increments over +-{w} levels")


def thermo_curves_of(res, *, window: "int | None" = None) -> ThermoCurveEstimate:
    """:meth:`boltzkit.result.Result.thermo_curves`."""
    path = log_z_path_of(res)
    if path.beta is None:
        raise TargetError("U(beta) and C(beta) need a temperature ladder: a run on a lattice or other "
                          "categorical target (annealed from the uniform distribution, level lambda = "
                          "the target at lambda beta); this path is not one")
    shape = (res.target.get("domain") or {}).get("shape")
    n_sites = int(np.prod(shape)) if shape else int(np.prod(res.samples.shape[1:]))
    return thermo_curves_from_path(path.beta, path.log_z, n_sites, window=window)


# ----------------------------------------------------------------------------- MBAR over levels
LEVEL_MBAR_MAX_STATES = 100  # default thinning of the levels: at most this many sampled states


def level_mbar(res, *, stride: "int | None" = None, target=None,
               exclude_islands=None) -> MultistateFreeEnergies:
    r"""MBAR over the levels of one annealing run (AIS/SMC with ``keep_levels``).

    Level k of the geometric path has the reduced potential
    ``u_k(x) = (1 - lambda_k) U_0(y(x)) + lambda_k U(x)`` (``U_0 = |y|^2 / (2 s_0^2)`` in the
    run's frame ``x = loc + S y``); a temperature ladder (``beta_start``) has ``a_k U_0 +
    lambda_k U`` with ``a_k`` in ``history["lambda_u0"]`` (0 on its tempering levels, where
    ``u_k = beta_k U``: MBAR over temperatures), so the particles kept at every level (``history``
    ``level_samples``, ``level_u0``, ``level_u``) give pymbar's ``u_kn`` without a single new
    energy evaluation. State 0 is the normalised reference, unsampled (``N_0 = 0``), with the
    exact ``F_0 = -(log Z_0 + log|det S|)``; state K is the target. So ``delta_f[0, k]`` gives
    every level's ``log Z_k = -F_0 - delta_f[0, k]`` and region free energies at the target
    pool the samples of all levels (``region_free_energies(regions,
    state=len(mb.states) - 1)``).

    Parameters
    ----------
    res : Result of ``bk.sample(target, method="ais", keep_levels=m)``
    stride : use every ``stride``-th level (always the last); None = at most
        ``LEVEL_MBAR_MAX_STATES`` sampled states.
    target : the run's energy target (optional): enables ``free_energy(other_target)`` and
        ``expectation(fn, state=other_target)`` (reweighting to states that were not sampled).
    exclude_islands : island indices whose kept particles are left out (a jackknife over
        islands, :func:`level_mbar_jackknife`).

    The kept particles are drawn from the weighted particles of each level (systematic
    resampling), so they follow each level only up to the SMC error, and they are
    correlated through shared ancestors: pymbar's analytic error bars assume independent
    draws and are optimistic; :func:`level_mbar_jackknife` gives error bars from the
    independent islands.
    """
    h = res.history
    need = ("level_samples", "level_u0", "level_u", "lambda")
    if not all(k in h for k in need):
        raise TargetError("this Result kept no per-level particles; run the annealer with "
                          "keep_levels, e.g. bk.sample(target, method='ais', keep_levels=64)")
    lam = np.asarray(h["lambda"], np.float64)
    xs = torch.as_tensor(np.asarray(h["level_samples"]))
    u0, u = np.asarray(h["level_u0"], np.float64), np.asarray(h["level_u"], np.float64)
    K = lam.size - 1
    if xs.shape[0] != K or u0.shape != u.shape or u.shape[0] != K:
        raise TargetError(f"the kept levels disagree with the ladder: {K} levels, level_samples "
                          f"{tuple(xs.shape)}, level_u {u.shape}")
    if stride is None:
        stride = max(1, math.ceil(K / LEVEL_MBAR_MAX_STATES))
    if not (isinstance(stride, int) and stride >= 1):
        raise TargetError(f"stride must be a positive integer, got {stride!r}")
    levels = sorted(set(range(K, 0, -stride)))  # level indices 1..K, the target always kept
    m = u.shape[1]
    keep = np.ones((K, m), dtype=bool)
    if exclude_islands is not None:
        isl = np.asarray(h.get("level_island"))
        if isl.shape != u.shape:  # also when there are none (h.get gives None, a 0-d array)
            raise TargetError("this Result has no island labels (level_island) for exclude_islands")
        keep = ~np.isin(isl, np.asarray(list(exclude_islands)))
    sel = [(k, keep[k - 1]) for k in levels]
    x = torch.cat([xs[k - 1][torch.from_numpy(mk)] for k, mk in sel])
    a0 = np.concatenate([u0[k - 1][mk] for k, mk in sel])
    a1 = np.concatenate([u[k - 1][mk] for k, mk in sel])
    states = [0] + levels
    ref = np.asarray(h["lambda_u0"], np.float64) if "lambda_u0" in h else 1.0 - lam
    u_kn = ref[states][:, None] * a0[None, :] + lam[states][:, None] * a1[None, :]
    n_k = np.array([0] + [int(mk.sum()) for _, mk in sel], dtype=np.int64)
    if not np.isfinite(u_kn).all():
        raise TargetError("the kept reduced energies are not all finite")
    f_init = None
    if "log_z_running" in h:  # the run's own log Z_k: MBAR starts from them (k = 0 is exact)
        f_init = -np.asarray(h["log_z_running"], np.float64)[states]
        f_init = f_init - f_init[0] if np.isfinite(f_init).all() else None
    pm = pymbar_module()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", np.exceptions.ComplexWarning)
            mb = pm.MBAR(u_kn, n_k, initial_f_k=f_init)
            out = mb.compute_free_energy_differences(return_theta=True)
            overlap = float(np.real(mb.compute_overlap()["scalar"]))
    except Exception as exc:
        raise BoltzkitError(f"MBAR over the levels failed ({type(exc).__name__}: {exc})") from exc
    names = tuple(f"level {k} (lambda={lam[k]:.4g})" for k in states)
    targets = (target,) if target is not None else ()
    return MultistateFreeEnergies(np.asarray(out["Delta_f"]), np.asarray(out["dDelta_f"]),
                                  np.asarray(out["Theta"]), names, n_k, overlap, mb, x, u_kn, targets)


def level_log_z(res, mb: "MultistateFreeEnergies | None" = None, **kw) -> "tuple[np.ndarray, np.ndarray]":
    """``log Z`` of every sampled level of :func:`level_mbar` (the target last), with pymbar's
    error bars, from the exact reference free energy ``F_0 = -(log Z_0 + log|det S|)``."""
    mb = mb if mb is not None else level_mbar(res, **kw)
    h = res.history
    f0 = -(float(np.asarray(h["level_log_z0"])) + float(np.asarray(h["level_log_det"])))
    return -f0 - mb.delta_f[0, 1:], mb.stderr[0, 1:]


def level_mbar_jackknife(res, fn: Callable[[MultistateFreeEnergies], np.ndarray], *,
                         n_groups: int = 8, **kw) -> "tuple[np.ndarray, np.ndarray]":
    """``fn(level_mbar(res))`` and its delete-one-group jackknife standard error over groups of
    the run's independent islands: an error bar that sees the SMC correlations pymbar's
    analytic one assumes away. ``fn`` maps a :class:`MultistateFreeEnergies` to an array."""
    isl = np.asarray(res.history.get("level_island", []))
    n_isl = int(res.diagnostics.get("n_islands") or 0)
    if isl.size == 0 or n_isl < 2:
        raise TargetError("the jackknife needs an island SMC run with keep_levels (n_islands >= 2)")
    g = min(int(n_groups), n_isl)
    if g < 2:
        raise TargetError(f"n_groups must be at least 2, got {n_groups!r}")
    full = np.asarray(fn(level_mbar(res, **kw)), np.float64)
    groups = np.array_split(np.arange(n_isl), g)
    reps = np.stack([np.asarray(fn(level_mbar(res, exclude_islands=grp, **kw)), np.float64)
                     for grp in groups])
    se = np.sqrt((g - 1) / g * ((reps - reps.mean(0)) ** 2).sum(0))
    return full, se
