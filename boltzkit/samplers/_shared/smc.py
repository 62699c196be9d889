r"""Island SMC over a controlled, annealed path: the machinery shared by NAAS and PDNS.

Papers
------
Del Moral, Doucet & Jasra, "Sequential Monte Carlo samplers", JRSS B 68, 411 (2006) (arbitrary
forward/backward kernels); Chen, Richter, Berner et al., "Sequential Controlled Langevin
Diffusions", ICLR 2025, arXiv 2412.07081 (SMC resampling inside a learned diffusion sampler).

Objective
---------
Particles ``x_k`` with log-weights ``lw`` travel along intermediate targets ``gamma_k``
(``gamma_0`` normalized, ``gamma_K = exp(-U)``). A level moves every particle with the sampler's
own (controlled) kernel ``q_k`` and multiplies its weight by the increment

    w_k = gamma_{k+1}(x_{k+1}) B_k(x_k | x_{k+1}) / (gamma_k(x_k) q_k(x_{k+1} | x_k)),

supplied by the caller's ``step``; the product over levels is the whole-path weight, so
``E[prod w_k] = Z`` for any control. Particles are split into ``n_islands`` contiguous, independent
islands; an island whose ESS falls below ``frac`` times its size is resampled (systematic,
:func:`boltzkit.samplers.ais.resample_islands`) and its mean weight is carried into its running
log Z, which stays unbiased for Z. An optional MCMC move that leaves ``gamma_{k+1}`` invariant
(MALA, :class:`MALARejuvenation`) follows each level and changes no weight.
``log Z = log mean_i Z_i`` over the islands, its error bar from their spread.

Failure modes
-------------
* The island error bar is honest only when the island log Z spread ``s`` is small: log-mean-exp
  of M islands is low by about ``(e^{s^2} - 1) / (2M)`` for normal island log Z. :func:`island_result`
  flags the result unreliable when that exceeds the error bar (it misses heavier tails).
* A mode that no particle of any island reaches is missed silently, as in any SMC.
* Resampling after every level with poor intermediate targets (increments far from constant)
  adds variance that plain importance sampling of whole paths would not have.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Callable

import torch

from ...errors import ConfigError, UnreliableEstimateWarning
from ...estimators.importance import log_z_from_log_weights
from ...kernels.langevin import adapt_log_step, mala_move
from ...result import result_from_log_weights

__all__ = ["IslandRun", "run_islands", "island_result", "check_smc_options", "MALARejuvenation"]

MALA_TARGET_ACCEPT = 0.574
_STEP_GAIN = 1.0


def check_smc_options(n_samples: int, frac, n_islands: int, mcmc_steps: int = 0) -> None:
    """Validate the SMC options before any work (clear message naming the fix)."""
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac <= 1:
        raise ConfigError(f"resample_ess must be a fraction in (0, 1], got {frac!r}")
    if isinstance(n_islands, bool) or not isinstance(n_islands, int) or n_islands < 1:
        raise ConfigError(f"n_islands must be a positive integer, got {n_islands!r}")
    if isinstance(mcmc_steps, bool) or not isinstance(mcmc_steps, int) or mcmc_steps < 0:
        raise ConfigError(f"smc_mcmc_steps must be a non-negative integer, got {mcmc_steps!r}")
    if n_samples % n_islands or n_samples // n_islands < 2:
        raise ConfigError(f"n_samples={n_samples} must be a multiple of n_islands={n_islands} "
                          "with at least 2 particles per island")


@dataclass
class IslandRun:
    """Output of :func:`run_islands`: final particles ``x``, their float64 log-weights ``lw``
    (island mass folded in: ``logmeanexp(lw)`` is the pooled log Z), ``island_log_z`` (M,),
    the number of island resampling events and the mean MALA acceptance (None without MCMC)."""

    x: torch.Tensor
    lw: torch.Tensor
    island_log_z: torch.Tensor
    resample_events: int
    acceptance: "float | None"


class MALARejuvenation:
    """``n_steps`` MALA moves on the level's intermediate target, step size adapted from level to
    level (Robbins-Monro on log h toward 0.574, :func:`~boltzkit.kernels.langevin.adapt_log_step`).

    ``potential(k, y) -> (U_k(y), grad U_k(y))`` is ``-log gamma_k`` up to a constant, batched.
    Like any population-adapted SMC kernel, the adaptation couples the islands through the past
    (an O(1/N) effect); ``adapt=False`` keeps them exactly independent.
    """

    def __init__(self, potential: Callable, n_steps: int, step_size: float, *, adapt: bool = True):
        self.potential, self.n_steps, self.adapt = potential, int(n_steps), adapt
        self.log_h = math.log(step_size)
        self.acceptance: list = []

    def __call__(self, k: int, x: torch.Tensor, generator) -> "tuple[torch.Tensor, torch.Tensor]":
        """Move ``x`` at level ``k``; returns the new points and ``U_k`` there."""
        pot = (lambda y: self.potential(k, y))
        state = pot(x)
        acc = 0.0
        for _ in range(self.n_steps):
            x, state, a = mala_move(pot, x, state, math.exp(self.log_h), generator)
            acc += float(a.double().mean())
        rate = acc / self.n_steps
        self.acceptance.append(rate)
        if self.adapt:
            self.log_h = adapt_log_step(self.log_h, rate, MALA_TARGET_ACCEPT, _STEP_GAIN)
        return x, state[0]


@torch.no_grad()
def run_islands(x: torch.Tensor, lw: torch.Tensor, n_levels: int, step: Callable, *, frac: float,
                n_islands: int, generator, rejuvenate: "Callable | None" = None,
                carry: tuple = ()) -> IslandRun:
    """Run ``n_levels`` SMC levels over contiguous islands.

    ``step(k, x, carry) -> (x_new, log_increment float64 (n,), carry_new)`` moves level ``k`` to
    ``k + 1``; ``carry`` is a tuple of per-particle tensors (dim 0) reordered with the particles
    at resampling (e.g. the cached ``log gamma_k``). ``rejuvenate(k + 1, x, carry, generator) ->
    (x, carry)``, when given, is an MCMC move leaving ``gamma_{k+1}`` invariant; it runs after
    the level's resampling and returns the carry updated at the moved points.
    ``lw`` enters as the particles' log-weights at level 0 (e.g. a prior stage's weight). No
    resampling follows the last level.
    """
    from ..ais import resample_islands

    n = x.shape[0]
    log_acc = torch.zeros(n_islands, dtype=torch.float64, device=lw.device)
    events = 0
    for k in range(n_levels):
        x, inc, carry = step(k, x, carry)
        lw = lw + inc
        if k < n_levels - 1:
            (x, *carry), lw, log_acc, ev = resample_islands((x, *carry), lw, log_acc, frac, generator)
            carry, events = tuple(carry), events + ev
        if rejuvenate is not None:
            x, carry = rejuvenate(k + 1, x, carry, generator)
    m = n // n_islands
    island_log_z = log_acc + torch.logsumexp(lw.view(n_islands, m), 1) - math.log(m)
    acc = getattr(rejuvenate, "acceptance", None)
    return IslandRun(x=x, lw=lw + log_acc.repeat_interleave(m), island_log_z=island_log_z,
                     resample_events=events,
                     acceptance=float(sum(acc) / len(acc)) if acc else None)


def island_result(samples, run: IslandRun, *, log_shift: float = 0.0, exact_log_z=None,
                  diagnostics: dict, who: str, **result_kwargs):
    """A weighted :class:`~boltzkit.result.Result` of an island run: weights ``run.lw +
    log_shift``, log Z error bar from the spread of the independent islands, and the reliability
    flag lowered (with a warning naming the fix) when the islands' spread implies a log-mean-exp
    (Jensen) bias above that error bar."""
    isl = (run.island_log_z + log_shift).cpu()
    M = isl.numel()
    est = log_z_from_log_weights(isl, warn=False)
    s_isl = float(isl.std()) if M > 1 else 0.0
    jensen = math.expm1(min(s_isl ** 2, 700.0)) / (2 * M)
    diag = {**diagnostics, "smc": True, "n_islands": M, "resample_events": run.resample_events,
            "log_z_stderr_from": "between islands", "island_log_z_std": s_isl,
            "island_jensen_bias": jensen}
    if run.acceptance is not None:
        diag["mcmc_acceptance"] = run.acceptance
    res = result_from_log_weights(samples, (run.lw + log_shift).cpu(), exact_log_z=exact_log_z,
                                  diagnostics=diag, **result_kwargs)
    if jensen > est.stderr:
        res.diagnostics.update(reliable=False, unreliable_reason=(
            f"the islands' log Z spread {s_isl:.2f} implies a Jensen bias of about {jensen:.2g}, "
            f"more than the error bar {est.stderr:.2g}; raise n_time_steps, add smc_mcmc_steps or "
            "train longer"))
        warnings.warn(f"{who} SMC: {res.diagnostics['unreliable_reason']}", UnreliableEstimateWarning,
                      stacklevel=3)
    return replace(res, log_z_stderr=est.stderr)
