r"""Free-energy differences between states: BAR and MBAR through pymbar, reweighting, profiles.

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
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .errors import BoltzkitError, TargetError, UnreliableEstimateWarning, require

__all__ = ["FreeEnergyDifference", "MultistateFreeEnergies", "free_energy_difference", "mbar",
           "reduced_potentials", "state_draws", "MIN_OVERLAP"]

MIN_OVERLAP = 0.03    # pymbar's rule of thumb for the overlap scalar
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
        if np.isnan(lw_np).any() or not np.isfinite(lw_np).any():
            raise TargetError(f"{name} has NaN log-weights or none finite; it carries no usable draw")
        if np.ptp(lw_np[np.isfinite(lw_np)]) == 0 and np.isfinite(lw_np).all():
            lw = None  # equal weights: exact draws
    if lw is None:
        x = res.samples
        if decorrelate and res.log_weights is None:
            stride = max(1, math.ceil(res._inflation() - 1e-9))
            x = x[::stride]
        return x
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
    return x, n_k, names


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

    @property
    def free_energies(self) -> np.ndarray:
        """``F_k - F_0`` (kT) of every state."""
        return self.delta_f[0].copy()

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
        if u is None:
            out = self._mbar.compute_expectations(a)
            return float(out["mu"][k]), float(out["sigma"][k])
        out = self._mbar.compute_expectations(a, u_kn=u)
        return float(out["mu"][0]), float(out["sigma"][0])

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
    targets = _check_targets([res_a, res_b], targets)
    if len(targets) != 2:
        raise TargetError("free_energy_difference compares two states; use bk.mbar for more")
    x, n_k, names = _pool([res_a, res_b], targets, seed=seed, decorrelate=decorrelate)
    u = reduced_potentials(targets, x, names=names)
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
    targets = _check_targets(results, targets)
    x, n_k, names = _pool(results, targets, seed=seed, decorrelate=decorrelate)
    u = reduced_potentials(targets, x, names=names)
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
