r"""Metropolis-adjusted Langevin (MALA) and Hamiltonian Monte Carlo kernels for ``Reals`` targets.

Papers
------
* Roberts & Tweedie, "Exponential convergence of Langevin distributions and their discrete
  approximations", Bernoulli 2(4), 341-363 (1996) -- MALA.
* Roberts & Rosenthal, "Optimal scaling of discrete approximations to Langevin diffusions",
  J. R. Stat. Soc. B 60, 255-268 (1998) -- the 0.574 target acceptance rate.
* Duane, Kennedy, Pendleton & Roweth, "Hybrid Monte Carlo", Phys. Lett. B 195, 216 (1987);
  Neal, "MCMC using Hamiltonian dynamics", arXiv:1206.1901 -- HMC.

Objective
---------
Leave p(x) = exp(-U(x)) / Z invariant. MALA proposes
``y = x - h grad U(x) + sqrt(2 h) xi`` and accepts with probability
``min(1, exp(-U(y) + U(x)) q(x | y) / q(y | x))``, ``q(y | x) = N(y; x - h grad U(x), 2 h I)``.
During burn-in (``fit``) one global step size h is adapted toward ``target_accept`` from the
mean acceptance of all chains (Robbins-Monro on log h); it is then frozen, so the kernel used
by ``sample`` is exactly invariant.

Returns
-------
A :class:`~boltzkit.result.Result` of unweighted, correlated samples ordered step-major
(sample ``t * n_chains + c`` is chain ``c`` at recorded step ``t``), in the target's own
coordinates (with a prior hint the chains run in its standardized frame, which is MALA with
the preconditioner ``S S^T``; the autocorrelation times are measured there); ``log_z = None`` (MCMC gives
no normalizing constant; use ``method="ais"``); ``ess = N / tau_int`` with tau_int the largest
of the integrated autocorrelation times of every coordinate and of the energy
(:mod:`boltzkit.estimators.diagnostics` convention).

Failure modes
-------------
* Multimodal targets: chains stay in the mode they started near; the mode weights of the
  samples are then wrong, and nothing in the output flags it except, at best, a long tau_int.
* Stiff or badly scaled targets force a small global step size and slow mixing in the wide
  directions (no preconditioning).
* Energies with super-quadratic growth (e.g. x^4) make large steps overshoot; rejections then
  dominate until the step size shrinks.

Pure kernels
------------
:func:`mala_step`, :func:`hmc_step`, :func:`mala_move` and :func:`hmc_move` live in
:mod:`boltzkit.kernels.langevin` (re-exported here); this module is the MCMC driver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._finite import check_energies
from .._registry import register
from ..domains import Reals
from ..errors import TargetError
from ..kernels.langevin import (Potential, adapt_log_step, default_step_size,  # noqa: F401 (re-exported)
                                hmc_move, hmc_step, mala_move, mala_step)
from ._shared.mcmc_driver import MCMCConfig, MCMCSampler
from .base import check_flag, check_fraction, check_number

LOG_Z_UNAVAILABLE = ("MALA is an MCMC sampler: it draws correlated, unweighted samples and no "
                     "normalizing constant; use method='ais' for log Z")


# ============================================================================ sampler
@dataclass(frozen=True, kw_only=True)
class MALAConfig(MCMCConfig):
    """Options of the MALA sampler (``n_chains``, ``burn_in``, ``thin``: :class:`MCMCConfig`;
    the burn-in adapts the step size).

    step_size : initial step size h; None picks the scale probe's step where the probe ran,
        else 0.5 * init_std^2 * d^(-1/3).
    target_accept : acceptance rate the burn-in adapts toward (0.574, Roberts-Rosenthal).
    adapt : adapt the step size during burn-in (it is always frozen afterwards).
    init_std : chains start from N(0, init_std^2 I) (in the hint's frame, see below). None
        (default): 1 in the hint's frame, or without a hint 1 in the frame of the scale probe
        (:func:`boltzkit.probe.probe_frame`; the chains then run preconditioned by its
        covering covariance and start spread over every minimum it found).
    use_prior_hint : when the target gives a :meth:`~boltzkit.energies.Energy.prior_hint`
        ``x = loc + S z``, run the chains in ``z`` (MALA preconditioned by ``S S^T``; chains
        start at ``loc + init_std S xi``) and return states in ``x``.
    """

    step_size: "float | None" = None
    target_accept: float = 0.574
    adapt: bool = True
    init_std: "float | None" = None
    use_prior_hint: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_flag("use_prior_hint", self.use_prior_hint)
        check_number("step_size", self.step_size, allow_none=True)
        check_number("target_accept", self.target_accept)
        check_fraction("target_accept", self.target_accept)
        check_number("init_std", self.init_std, allow_none=True)


@register("mala", domains=(Reals,), priority=1, provides_log_z=False,
          paper="Roberts & Tweedie 1996 (MALA)",
          description="Metropolis-adjusted Langevin chains with burn-in step-size adaptation")
class MALA(MCMCSampler):
    """Metropolis-adjusted Langevin MCMC for continuous energies (no log Z)."""

    Config = MALAConfig
    needs_grad = True
    log_z_unavailable = LOG_Z_UNAVAILABLE

    def __init__(self, config=None, /, **kw):
        super().__init__(config, **kw)
        self.x = self.state = None
        self.log_step = math.nan

    @property
    def step_size(self) -> float:
        return math.exp(self.log_step)

    def _potential(self, y):
        u, g = self.work.energy(y), self.work.grad_energy(y)
        where = f"at mala step {self.n_total + 1}" if self.state is not None else "at mala's starting states"
        check_energies(u, y, grad=g, name=f"{self.target.name}.energy", where=where,  # never a silent rejection
                       energy=self.work)
        return u, g

    def _start(self, target) -> None:
        self._attach(target)
        cfg = self.config
        self.work, self.frame, init_std, pr = self._start_frame(cfg.init_std, cfg.use_prior_hint)
        h_probe, self.scale_probe = (None, None) if pr is None else (pr.mala_step_size, pr.summary())
        dim = self.target.domain.dim
        self.x = init_std * torch.randn(cfg.n_chains, dim, generator=self.gens["init"],
                                            device=self.device)
        self.state = None
        with torch.no_grad():
            self.state = self._potential(self.x)
        if not bool(torch.isfinite(self.state[0]).all()):
            where = "" if self.frame is None else " in the frame of its prior_hint()"
            raise TargetError(f"{self.target.name}.energy is not finite at some starting points "
                              f"drawn from N(0, {init_std:g}^2 I){where}; change init_std")
        h0 = cfg.step_size if cfg.step_size is not None else \
            h_probe if h_probe is not None else default_step_size("mala", dim, init_std)
        self.log_step = math.log(h0)

    def _transition(self, generator):
        with torch.no_grad():
            self.x, self.state, acc = mala_move(self._potential, self.x, self.state,
                                                self.step_size, generator)
        acc = acc.double()
        return acc, {"acceptance": float(acc.mean()), "step_size": self.step_size,
                     "mean_energy": float(self.state[0].double().mean())}

    def _adapt(self, t, acc):
        if self.config.adapt:
            self.log_step = adapt_log_step(self.log_step, float(acc.mean()), self.config.target_accept,
                                           gain=1.0 / math.sqrt(1.0 + t / 10.0))

    def _record(self):
        return {"x": self.x.cpu(), "energy": self.state[0].detach().cpu()}

    def _observables(self, trace):
        # the slowest observable among the coordinates and the energy sets the ESS
        chain = trace["x"]  # (n_rec, C, d), in the sampler's coordinates
        return [(None, chain[:, :, j], True) for j in range(chain.shape[2])] + \
            [("energy", trace["energy"], True)]

    def _finish(self, samples, trace, diag):
        diag["step_size"] = self.step_size
        if self.scale_probe is not None:
            diag["scale_probe"] = self.scale_probe
        return samples if self.frame is None else self.frame.to_x(samples)
