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

import functools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from .._registry import register
from .._utils import progress_bar
from ..domains import Lattice
from ..errors import ConfigError, DomainError, IncompatibleMethodError
from ..estimators.diagnostics import autocorr_estimate
from ..result import Result
from .base import Sampler, SamplerConfig, _check_positive

LOG_Z_UNAVAILABLE = "MCMC draws samples without a normalizing constant; use method='ais' for log Z"


# the kernels live in boltzkit.kernels.lattice (re-exported here for existing imports)
from ..energies.lattice import LatticeModel  # noqa: E402,F401
from ..kernels.lattice import (checkerboard_sweep, cluster_incompatibility,  # noqa: E402,F401
                               fk_clusters, lattice_model, local_incompatibility,
                               swendsen_wang_update, wolff_update)

_local_incompatibility = local_incompatibility
_cluster_incompatibility = cluster_incompatibility


# ============================================================================ samplers
def order_parameter(model: LatticeModel, x: torch.Tensor) -> torch.Tensor:
    """|m| per state (B,): Ising |mean spin|; Potts (q max_c n_c / N - 1) / (q - 1)."""
    if model.kind == "ising":
        return x.flatten(1).to(torch.float64).mean(1).abs()
    frac = torch.nn.functional.one_hot(x.flatten(1), model.q).to(torch.float64).mean(1)
    return (model.q * frac.amax(1) - 1.0) / (model.q - 1)


@dataclass(frozen=True, kw_only=True)
class LatticeMCMCConfig(SamplerConfig):
    """Options of the lattice MCMC samplers.

    n_chains : independent chains run in parallel (batch dimension). The default keeps
        chains long (n_samples / n_chains steps) so that tau_int can be checked; raise it
        on a GPU or for large n_samples.
    burn_in : sweeps discarded by ``fit`` (``fit(n_steps=...)`` overrides it).
    thin : sweeps between recorded states.
    """

    n_chains: int = 16
    burn_in: int = 500
    thin: int = 1

    def __post_init__(self):
        _check_positive("n_chains", self.n_chains)
        _check_positive("thin", self.thin)
        if not isinstance(self.burn_in, (int, np.integer)) or isinstance(self.burn_in, bool) \
                or self.burn_in < 0:
            raise ConfigError(f"burn_in must be a non-negative integer (sweeps), got {self.burn_in!r}")


@dataclass(frozen=True, kw_only=True)
class ClusterConfig(LatticeMCMCConfig):
    burn_in: int = 100


@dataclass(frozen=True, kw_only=True)
class WolffConfig(ClusterConfig):
    """n_flips : Wolff cluster flips per chain per step (one step = one recorded sweep)."""

    n_flips: int = 1

    def __post_init__(self):
        super().__post_init__()
        _check_positive("n_flips", self.n_flips)


class LatticeMCMC(Sampler):
    """Shared driver: burn-in in ``fit``, recorded sweeps in ``sample``."""

    Config = LatticeMCMCConfig
    streams = ("init", "train", "sample")
    _incompatibility = staticmethod(_local_incompatibility)

    def __init__(self, config=None, /, **kw):
        super().__init__(config, **kw)
        self.x = None
        self.model = None
        self.n_sweeps = 0
        self.history = {"mean_energy": [], "acceptance": []}

    def _update(self, x, generator):  # pragma: no cover - abstract
        raise NotImplementedError

    def _sweep(self, generator) -> None:
        self.x, acc = self._update(self.x, generator)
        self.n_sweeps += 1
        with torch.no_grad():
            self._last_energy = self.target.energy(self.x).to(torch.float64)
        self._last_acc = acc
        # kept as device tensors (no host sync per sweep); converted in sample()
        self.history["mean_energy"].append(self._last_energy.mean())
        self.history["acceptance"].append(acc.mean())

    def fit(self, target, *, n_steps: "int | None" = None, checkpoint=None) -> "LatticeMCMC":
        """Attach ``target``, draw random initial states and run ``n_steps`` burn-in sweeps.

        ``n_steps`` defaults to ``config.burn_in``.
        """
        if checkpoint is not None:
            raise ConfigError(f"{self.name!r} keeps no checkpoints (it does not train); "
                              "leave checkpoint=None")
        burn_in = self.config.burn_in if n_steps is None else n_steps
        if not isinstance(burn_in, (int, np.integer)) or isinstance(burn_in, bool) or burn_in < 0:
            raise ConfigError(f"n_steps (burn-in sweeps) must be a non-negative integer, got {n_steps!r}")
        why = self._incompatibility(target)
        if why is not None:
            raise IncompatibleMethodError(f"method {self.name!r} cannot sample "
                                          f"{getattr(target, 'name', type(target).__name__)}: it {why}")
        self._attach(target)
        self.model = lattice_model(self.target)
        self.n_sweeps = 0
        self.history = {"mean_energy": [], "acceptance": []}
        self.x = self.target.domain.reference(self.config.n_chains, generator=self.gens["init"],
                                              device=self.device)
        self.burn_in = int(burn_in)
        for _ in progress_bar(range(self.burn_in), desc=f"{self.name} burn-in", enabled=self.progress):
            self._sweep(self.gens["train"])
        return self

    def sample(self, n_samples: int) -> Result:
        """Continue the chains and return ``n_samples`` states (n_chains per recorded step).

        Returns
        -------
        Result
            ``samples`` (n_samples, L, L) ordered step-major (sample t * n_chains + c is chain
            c at step t), ``ess = n_samples / tau_int(energy)``, ``log_z = None``; diagnostics
            hold tau_int of the energy and of |m| (in recorded steps of ``thin`` sweeps),
            acceptance, sweeps and wall time; ``history`` the mean energy and acceptance per
            sweep since ``fit`` began.
        """
        self._require_fit()
        _check_positive("n_samples", n_samples)
        t0 = time.perf_counter()
        B, thin = self.config.n_chains, self.config.thin
        n_rec = -(-int(n_samples) // B)
        states, energies, orders, accs = [], [], [], []
        for _ in progress_bar(range(n_rec), desc=self.name, enabled=self.progress):
            acc = 0.0
            for _ in range(thin):
                self._sweep(self.gens["sample"])
                acc = acc + self._last_acc
            states.append(self.x.cpu())
            energies.append(self._last_energy.cpu())
            orders.append(order_parameter(self.model, self.x).cpu())
            accs.append(acc / thin)
        wall = time.perf_counter() - t0
        samples = torch.stack(states).flatten(0, 1)[:n_samples]
        e_trace, m_trace = torch.stack(energies), torch.stack(orders)
        diag = {"log_z_unavailable": LOG_Z_UNAVAILABLE, "n_chains": B,
                "steps_per_chain": n_rec, "thin": thin, "sweeps": n_rec * thin,
                "burn_in": self.burn_in, "total_sweeps": self.n_sweeps,
                "acceptance": float(torch.stack(accs).mean()), "wall_time_s": wall,
                "mean_energy": float(e_trace.mean()), "mean_abs_m": float(m_trace.mean())}
        if n_rec >= 2:
            est_e = autocorr_estimate(e_trace)
            est_m = autocorr_estimate(m_trace, warn=False)
            ess = n_samples / est_e.tau
            diag.update({"tau_int_energy": est_e.tau, "tau_int_energy_stderr": est_e.stderr,
                         "tau_int_abs_m": est_m.tau, "tau_int_abs_m_stderr": est_m.stderr,
                         "tau_converged": est_e.converged})
        else:  # one state per chain: independent draws (given burn-in), tau not estimable
            ess = float(n_samples)
            diag.update({"tau_int_energy": float("nan"), "tau_int_abs_m": float("nan"),
                         "tau_converged": False})
        diag["ess_per_second"] = ess / wall if wall > 0 else float("inf")
        diag.update(self._extra_diagnostics())
        kw = self._result_kwargs()
        kw["history"] = {k: torch.stack(v).cpu().double().numpy() for k, v in self.history.items()}
        return Result(samples=samples, log_weights=None, log_z=None, log_z_stderr=None, ess=ess,
                      diagnostics=diag, **kw)

    def _extra_diagnostics(self) -> dict:
        return {}


_LATTICE_DOMAINS = (Lattice,)


@register("metropolis", domains=_LATTICE_DOMAINS, priority=1, provides_log_z=False,
          paper="Metropolis et al., J. Chem. Phys. 21, 1087 (1953)",
          supports=_local_incompatibility)
class Metropolis(LatticeMCMC):
    """Checkerboard single-site Metropolis for Ising and Potts lattices."""

    def _update(self, x, generator):
        return checkerboard_sweep(self.target, x, generator=generator, rule="metropolis")


@register("heat_bath", domains=_LATTICE_DOMAINS, priority=2, provides_log_z=False,
          paper="Glauber, J. Math. Phys. 4, 294 (1963)", supports=_local_incompatibility)
class HeatBath(LatticeMCMC):
    """Checkerboard single-site heat-bath (Gibbs) updates for Ising and Potts lattices."""

    def _update(self, x, generator):
        return checkerboard_sweep(self.target, x, generator=generator, rule="heat_bath")


@register("swendsen_wang", domains=_LATTICE_DOMAINS, priority=5, provides_log_z=False,
          paper="Swendsen & Wang, Phys. Rev. Lett. 58, 86 (1987)",
          supports=_cluster_incompatibility)
class SwendsenWang(LatticeMCMC):
    """Swendsen-Wang cluster updates for Ising (h = 0) and Potts lattices."""

    Config = ClusterConfig
    _incompatibility = staticmethod(_cluster_incompatibility)

    def _update(self, x, generator):
        return swendsen_wang_update(self.target, x, generator=generator)


@register("wolff", domains=_LATTICE_DOMAINS, priority=3, provides_log_z=False,
          paper="Wolff, Phys. Rev. Lett. 62, 361 (1989)", supports=_cluster_incompatibility)
class Wolff(LatticeMCMC):
    """Wolff single-cluster updates for Ising (h = 0) and Potts lattices.

    One step (the unit of burn_in, thin and tau_int here) is ``n_flips`` cluster flips per
    chain; ``diagnostics["mean_cluster_fraction"]`` converts it to sweeps
    (sweeps per step = n_flips * mean_cluster_fraction). "acceptance" is the flipped fraction.
    """

    Config = WolffConfig
    _incompatibility = staticmethod(_cluster_incompatibility)

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
