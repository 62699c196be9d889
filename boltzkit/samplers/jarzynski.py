r"""Jarzynski's equality: free energies from non-equilibrium work, and driven (annealed) Langevin.

Papers
------
* C. Jarzynski, "Nonequilibrium equality for free energy differences", Phys. Rev. Lett. 78,
  2690 (1997), arXiv:cond-mat/9610209.
* Guo, Tao & Chen, "Complexity Analysis of Normalizing Constant Estimation: from Jarzynski
  Equality to Annealed Importance Sampling and beyond", arXiv:2502.04575.

Objective
---------
For a protocol U_0 -> U_1 started in equilibrium, ``E[exp(-W)] = Z_1 / Z_0``, i.e.
``Delta F = -log E[exp(-W)]`` (kT). :func:`jarzynski` turns work values into that estimate
(the IS estimator with log-weights ``-W``). :func:`annealed_langevin` generates the work by
driving overdamped Langevin dynamics along the geometric path
``U_k = (1 - lambda_k) |x|^2 / (2 s0^2) + lambda_k U`` from x ~ N(0, s0^2 I)::

    W = sum_k [U_{k+1}(x_k) - U_k(x_k)]                      # increment before each move
    x_{k+1} = x_k - dt grad U_{k+1}(x_k) + sqrt(2 dt) xi_k    # unadjusted Langevin (ULA)

Returns
-------
:func:`annealed_langevin` returns a :class:`~boltzkit.result.Result` with the final points,
log-weights ``log Z_0 - W`` and ``log_z`` +- ``log_z_stderr``.

Failure modes
-------------
* ULA is not exactly invariant for U_k (no Metropolis correction), so the estimate carries a
  discretization bias of order dt that the error bar does not include; it vanishes only as
  dt -> 0 (with n_steps * dt fixed or growing). MH-corrected AIS (:mod:`.ais`) has no such bias.
* Too large a dt on stiff or super-quadratic energies (x^4) diverges; the run then raises
  :class:`~boltzkit.errors.TrainingDivergedError`.
* A fast protocol (small n_steps * dt) spreads the work; the weights degenerate (low ESS,
  Pareto k > 0.7) exactly as in AIS, and multimodal targets suffer the same mode trapping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._registry import register
from ..domains import Reals
from ..errors import IncompatibleMethodError, TargetError, TrainingDivergedError
from ..result import result_from_log_weights
from .base import SamplerConfig, check_number
from . import ais as _ais
from ..estimators.importance import LogZEstimate, log_z_from_log_weights
from ..kernels.langevin import ula_move


def jarzynski(work, *, log_z0: float = 0.0, warn: bool = True) -> LogZEstimate:
    """Jarzynski estimate of log Z_1 from work values W (kT) of a protocol started at Z_0.

    ``log_z = log_z0 + log mean exp(-W)``, so ``Delta F = F_1 - F_0 = log_z0 - log_z``; the
    standard error is the delta-method error of the IS estimator with log-weights ``-W``.

    Parameters
    ----------
    work : array or Tensor (N,)
        Work values in units of kT (``+inf`` allowed: a zero weight).
    log_z0 : float
        log normalizing constant of the initial state.
    warn : bool
        Emit :class:`~boltzkit.errors.UnreliableEstimateWarning` for degenerate weights.

    Returns
    -------
    LogZEstimate
        The same object as :func:`~boltzkit.estimators.importance.log_z_from_log_weights`.
    """
    if isinstance(work, torch.Tensor):
        work = work.detach().to("cpu", torch.float64).numpy()
    w = np.asarray(work, dtype=np.float64)
    if w.ndim != 1 or w.size < 2:
        raise TargetError(f"work must be a 1-D array of at least 2 values, got shape {w.shape}")
    bad = np.flatnonzero(np.isnan(w) | (w == -np.inf))
    if bad.size:
        raise TargetError(f"work contains NaN or -inf (first at index {bad[0]}); check the protocol "
                          "energies along the trajectories")
    if not math.isfinite(log_z0):
        raise TargetError(f"log_z0 must be finite, got {log_z0!r}")
    return log_z_from_log_weights(-w, log_z0=log_z0, warn=warn)


@dataclass(frozen=True, kw_only=True)
class JarzynskiConfig(SamplerConfig):
    """Options of driven Langevin / Jarzynski.

    n_steps : number of ULA steps (levels) K, one per level.
    dt : ULA time step; the total protocol time is ``n_steps * dt``.
    schedule : lambda schedule ("linear", "geometric", "sigmoid" or an explicit tuple), see
        :func:`~boltzkit.samplers.ais.annealing_schedule`.
    init_std : standard deviation of the Gaussian start N(0, init_std^2 I).
    """

    n_steps: int = 1000
    dt: float = 0.01
    schedule: "str | tuple" = "linear"
    init_std: float = 1.0

    def __post_init__(self):
        _ais.check_fixed_ladder(self)
        check_number("dt", self.dt)
        check_number("init_std", self.init_std)


@register("jarzynski", kinds=("energy",), domains=(Reals,), priority=0,
          paper="Jarzynski 1997, arXiv:cond-mat/9610209",
          description="Driven unadjusted Langevin along the geometric path; log Z by Jarzynski")
class Jarzynski(_ais.AnnealedSampler):
    """Annealed (driven) overdamped Langevin with Jarzynski work weights (dt-biased)."""

    Config = JarzynskiConfig
    needs_grad = True

    def fit(self, target, *, n_steps: "int | None" = None, checkpoint=None) -> "Jarzynski":
        """Check ``target`` (nothing is trained); ``n_steps`` sets the number of ULA steps."""
        self._no_checkpoint(checkpoint)
        if not isinstance(getattr(target, "domain", None), Reals):
            raise IncompatibleMethodError("jarzynski (driven Langevin) needs a target on Reals, got "
                                          f"{type(getattr(target, 'domain', None)).__name__}")
        if n_steps is not None:
            self.config = self.make_config(self.config, n_steps=n_steps)
        self._attach(target)
        return self

    def sample(self, n_samples: int):
        """Run ``n_samples`` driven trajectories; returns a weighted Result."""
        cfg = self.config
        gen = self.gens["sample"]
        dt = float(cfg.dt)
        with self._ladder(n_samples, desc="jarzynski") as (lambdas, bar):
            ann = _ais._Annealer(self.target, cfg.init_std)

            def ula(pot, x, state, k):
                y, new, _ = ula_move(pot, x, state, dt, gen)
                if not bool(torch.isfinite(new[0]).all()):
                    raise TrainingDivergedError(
                        f"driven Langevin diverged at step {k} of {lambdas.size - 1}: non-finite "
                        f"energies; use a smaller dt (now {dt:g})")
                return y, new, 1.0

            x, lw, _, _ = ann.run(int(n_samples), lambdas, ula, gen, bar=bar, device=self.device)
        work = ann.log_z0 - lw
        diag = {"dt": dt, "n_levels": int(lambdas.size - 1), "total_time": dt * (lambdas.size - 1),
                "log_z0": ann.log_z0, "mean_work": float(work.mean()),
                "work_std": float(work.std()),
                "bias_note": "ULA is not exactly invariant: log Z carries an O(dt) bias"}
        return result_from_log_weights(x, lw, exact_log_z=self.target.exact_log_z(),
                                       diagnostics=diag, history={"lambda": lambdas[1:]},
                                       **self._result_kwargs())


def annealed_langevin(target, *, n_samples: int = 1024, n_steps: int = 1000, dt: float = 0.01,
                      schedule="linear", init_std: float = 1.0, seed: "int | None" = None,
                      device="auto", progress: "bool | None" = None):
    """Driven overdamped Langevin along the geometric path; log Z by Jarzynski's equality.

    Parameters
    ----------
    target : Energy on ``Reals``
    n_samples : int
        Number of independent trajectories.
    n_steps, dt, schedule, init_std :
        As in :class:`JarzynskiConfig`.
    seed, device, progress :
        As in :func:`boltzkit.sample`.

    Returns
    -------
    Result
        See the module docstring (Returns; Failure modes: the O(dt) bias outside the error bar).
    """
    sampler = Jarzynski(seed=seed, device=device, progress=progress, n_steps=n_steps, dt=dt,
                        schedule=schedule, init_std=init_std)
    return sampler.fit(target).sample(n_samples)


__all__ = ["jarzynski", "annealed_langevin", "Jarzynski", "JarzynskiConfig"]
