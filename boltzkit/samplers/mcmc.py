r"""Classic Markov-chain Monte Carlo for Ising and Potts lattices (reference baselines).

Papers
------
* Metropolis, Rosenbluth, Rosenbluth, Teller & Teller, "Equation of State Calculations by Fast
  Computing Machines", J. Chem. Phys. 21, 1087 (1953) -- single-site Metropolis.
* Glauber, "Time-dependent statistics of the Ising model", J. Math. Phys. 4, 294 (1963) --
  heat-bath (Gibbs) updates.
* Swendsen & Wang, "Nonuniversal critical dynamics in Monte Carlo simulations",
  Phys. Rev. Lett. 58, 86 (1987) -- cluster updates of the Fortuin-Kasteleyn representation.
* Wolff, "Collective Monte Carlo Updating for Spin Systems", Phys. Rev. Lett. 62, 361 (1989).

Objective
---------
Every update leaves pi_s(x) = exp(-s U(x)) / Z_s invariant (detailed balance), where U is the
reduced energy of the target and s = ``scale`` (s = 1 is the target, s = 0 the uniform
distribution; AIS anneals s). Single-site updates use local fields computed with
``torch.roll``; sites are updated one colour class at a time (a checkerboard for even L; odd
periodic L needs three classes), so a sweep visits every site once. Cluster updates put a
bond on each satisfied edge with p = 1 - exp(-2 s beta J) (Ising) or 1 - exp(-s beta J)
(Potts), find the clusters of all chains at once with
``scipy.sparse.csgraph.connected_components`` and recolour them.

Returns
-------
A :class:`~boltzkit.result.Result` of unweighted, correlated samples (``log_weights=None``,
``log_z=None``; use ``method="ais"`` for log Z), ordered step-major: sample
``k = t * n_chains + c`` is chain ``c`` after recorded step ``t``. ``ess = N / tau_int`` of
the energy (convention of :mod:`boltzkit.estimators.diagnostics`).

Failure modes
-------------
* Critical slowing down of local updates: tau ~ L^z with z ~ 2.17 at the 2-D Ising critical
  point; below T_c the chains of Metropolis/heat bath get stuck in one magnetized phase.
* Swendsen-Wang and Wolff need h = 0 and ferromagnetic J >= 0; for q > 4 Potts (first-order
  transition) every method here tunnels exponentially slowly between phases.
* Burn-in is not detected automatically; the autocorrelation warning
  (:class:`~boltzkit.errors.ConvergenceWarning`) fires when chains are shorter than 50 tau_int.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._registry import register
from ..domains import Lattice
from ..energies.lattice import LatticeModel
from ..errors import IncompatibleMethodError
from ..kernels.lattice import (checkerboard_sweep, cluster_incompatibility,  # noqa: F401 (re-exported)
                               fk_clusters, lattice_model, local_incompatibility, swendsen_wang_update,
                               wolff_update)
from ._shared.mcmc_driver import MCMCConfig, MCMCSampler
from .base import check_count

LOG_Z_UNAVAILABLE = "MCMC draws samples without a normalizing constant; use method='ais' for log Z"


# ============================================================================ samplers
def order_parameter(model: LatticeModel, x: torch.Tensor) -> torch.Tensor:
    """|m| per state (B,): Ising |mean spin|; Potts (q max_c n_c / N - 1) / (q - 1)."""
    if model.kind == "ising":
        return x.flatten(1).to(torch.float64).mean(1).abs()
    frac = torch.nn.functional.one_hot(x.flatten(1), model.q).to(torch.float64).mean(1)
    return (model.q * frac.amax(1) - 1.0) / (model.q - 1)


@dataclass(frozen=True, kw_only=True)
class LatticeMCMCConfig(MCMCConfig):
    """Options of the lattice MCMC samplers (:class:`MCMCConfig`; one step is one sweep).

    n_chains : the default keeps chains long (n_samples / n_chains steps) so that tau_int can
        be checked; raise it on a GPU or for large n_samples.
    """

    n_chains: int = 16
    burn_in: int = 500


@dataclass(frozen=True, kw_only=True)
class ClusterConfig(LatticeMCMCConfig):
    burn_in: int = 100


@dataclass(frozen=True, kw_only=True)
class WolffConfig(ClusterConfig):
    """n_flips : Wolff cluster flips per chain per step (one step = one recorded sweep)."""

    n_flips: int = 1

    def __post_init__(self):
        super().__post_init__()
        check_count("n_flips", self.n_flips)


class LatticeMCMC(MCMCSampler):
    """Lattice moves on the shared MCMC driver; the ESS is that of the energy.

    ``sample`` returns ``samples`` (n_samples, L, L) ordered step-major,
    ``ess = n_samples / tau_int(energy)``, ``log_z = None``; diagnostics hold tau_int of the
    energy and of |m| (in recorded steps of ``thin`` sweeps), acceptance, sweeps and wall time;
    ``history`` the mean energy and acceptance per sweep since ``fit`` began.
    """

    Config = LatticeMCMCConfig
    log_z_unavailable = LOG_Z_UNAVAILABLE
    step_unit = "sweeps"
    _incompatibility = staticmethod(local_incompatibility)
    rule: str = "metropolis"  # of the checkerboard sweep; the cluster samplers override _update

    def _update(self, x, generator):
        return checkerboard_sweep(self.target, x, generator=generator, rule=self.rule)

    def _start(self, target) -> None:
        why = self._incompatibility(target)
        if why is not None:
            raise IncompatibleMethodError(f"method {self.name!r} cannot sample "
                                          f"{getattr(target, 'name', type(target).__name__)}: it {why}")
        self._attach(target)
        self.model = lattice_model(self.target)
        self.x = self.target.domain.reference(self.config.n_chains, generator=self.gens["init"],
                                              device=self.device)

    def _transition(self, generator):
        self.x, acc = self._update(self.x, generator)
        with torch.no_grad():
            self._last_energy = self.target.energy(self.x).to(torch.float64)
        # kept as device tensors (no host sync per sweep); converted in sample()
        return acc, {"mean_energy": self._last_energy.mean(), "acceptance": acc.mean()}

    def _record(self):
        return {"x": self.x.cpu(), "energy": self._last_energy.cpu(),
                "abs_m": order_parameter(self.model, self.x).cpu()}

    def _observables(self, trace):
        return [("energy", trace["energy"], True), ("abs_m", trace["abs_m"], False)]

    def _finish(self, samples, trace, diag):
        diag.update({"sweeps": diag["steps_per_chain"] * diag["thin"], "total_sweeps": self.n_total,
                     "mean_energy": float(trace["energy"].mean()), "mean_abs_m": float(trace["abs_m"].mean()),
                     **self._extra_diagnostics()})
        return samples

    def _extra_diagnostics(self) -> dict:
        return {}


@register("metropolis", domains=(Lattice,), priority=1, provides_log_z=False,
          paper="Metropolis et al., J. Chem. Phys. 21, 1087 (1953)",
          supports=local_incompatibility)
class Metropolis(LatticeMCMC):
    """Checkerboard single-site Metropolis for Ising and Potts lattices."""


@register("heat_bath", domains=(Lattice,), priority=2, provides_log_z=False,
          paper="Glauber, J. Math. Phys. 4, 294 (1963)", supports=local_incompatibility)
class HeatBath(LatticeMCMC):
    """Checkerboard single-site heat-bath (Gibbs) updates for Ising and Potts lattices."""

    rule = "heat_bath"


@register("swendsen_wang", domains=(Lattice,), priority=5, provides_log_z=False,
          paper="Swendsen & Wang, Phys. Rev. Lett. 58, 86 (1987)",
          supports=cluster_incompatibility)
class SwendsenWang(LatticeMCMC):
    """Swendsen-Wang cluster updates for Ising (h = 0) and Potts lattices."""

    Config = ClusterConfig
    _incompatibility = staticmethod(cluster_incompatibility)

    def _update(self, x, generator):
        return swendsen_wang_update(self.target, x, generator=generator)


@register("wolff", domains=(Lattice,), priority=3, provides_log_z=False,
          paper="Wolff, Phys. Rev. Lett. 62, 361 (1989)", supports=cluster_incompatibility)
class Wolff(LatticeMCMC):
    """Wolff single-cluster updates for Ising (h = 0) and Potts lattices.

    One step (the unit of burn_in, thin and tau_int here) is ``n_flips`` cluster flips per
    chain; ``diagnostics["mean_cluster_fraction"]`` converts it to sweeps
    (sweeps per step = n_flips * mean_cluster_fraction). "acceptance" is the flipped fraction.
    """

    Config = WolffConfig
    _incompatibility = staticmethod(cluster_incompatibility)

    def __init__(self, config=None, /, **kw):
        super().__init__(config, **kw)
        self._cluster_sum, self._cluster_n = 0.0, 0

    def _update(self, x, generator):
        changed = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for _ in range(self.config.n_flips):
            x, frac = wolff_update(self.target, x, generator=generator)
            changed += frac
            self._cluster_sum += float(frac.sum())
            self._cluster_n += frac.numel()
        return x, changed

    def _extra_diagnostics(self) -> dict:
        return {"mean_cluster_fraction": self._cluster_sum / max(self._cluster_n, 1),
                "n_flips": self.config.n_flips}
