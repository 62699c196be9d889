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
:func:`resample_islands`) and its mean weight is carried into its running
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

from ..._utils import check_count, check_number
from ...errors import ConfigError, TrainingDivergedError, UnreliableEstimateWarning
from ...estimators.importance import PARETO_K_LIMIT, log_z_from_log_weights, pareto_k
from ...kernels.langevin import adapt_log_step, mala_move
from ...result import result_from_log_weights

ISLAND_SPREAD_LIMIT = 1.0  # islands' log Z standard deviation above this: not reliable
ISLAND_MAX_SHARE = 0.25  # a heavy island tail is flagged when its largest island holds more of the Z sum
JENSEN_ROUNDING = 1e-12  # a Jensen bias below this is float rounding (exact runs: all islands equal)
ANNEALING_ADVICE = "Raise n_samples, the sweeps/MCMC steps per level or cess, or use another kernel."
MIN_RELIABLE_ISLANDS = 8  # fewer islands: the spread (and so the error bar) is itself too uncertain
ISLAND_SPREAD_CONFIDENCE = 0.95  # the spread limit applies to this one-sided upper bound of the spread

__all__ = ["IslandRun", "run_islands", "controlled_islands", "island_result", "check_smc_options", "check_islands",
           "MALARejuvenation", "spread_upper_bound", "capped_drift", "DRIFT_CAP"]

MALA_TARGET_ACCEPT = 0.574
STEP_GAIN = 1.0  # Robbins-Monro gain of the level-to-level step-size adaptation (AIS too)
DRIFT_CAP = 10.0  # a MALA drift |h grad U| is cut to this many times the noise norm sqrt(2 h d)


def capped_drift(potential: Callable, step_size: float, dim: int, cap: float = DRIFT_CAP):
    r"""``potential`` with its gradient cut to the norm ``cap sqrt(2 d / h)`` per particle, so that
    a MALA proposal's drift ``h grad U`` is at most ``cap`` times the norm ``sqrt(2 h d)`` of its
    noise: the truncated-drift MALA (MALTA) of Roberts & Tweedie (Bernoulli 2, 341 (1996)).

    The Metropolis-Hastings ratio of :func:`~boltzkit.kernels.langevin.mala_move` uses the same
    cut gradient in the forward and the reverse proposal and the true ``U``, so the kernel still
    leaves ``exp(-U)`` exactly invariant; a cut changes nothing where it does not bind (the scale
    factor is exactly 1). Near equilibrium with a tuned step the drift is below the noise, so the
    cap binds only far out of equilibrium: a particle in a clash (alanine dipeptide's reference
    draws reach U ~ 1e10 kT with |grad U| ~ 1e9) would otherwise be thrown to coordinates of
    ~1e8, where the energy is meaningless (its gradient NaN).

    Returns ``(capped potential, cap_state)``: ``cap_state(state)`` cuts an already cached
    ``state = (U, grad U, *extras)`` the same way (the starting point's drift).
    """
    limit = cap * math.sqrt(2.0 * dim / step_size)

    def cap_state(state):
        u, g, *rest = state
        norm = g.flatten(1).norm(dim=1).view(-1, *([1] * (g.ndim - 1)))
        scale = torch.where(norm > limit, limit / norm, torch.ones_like(norm))
        return (u, g * scale, *rest)

    return (lambda y: cap_state(potential(y))), cap_state


def check_smc_options(n_samples: int, frac, n_islands: int, mcmc_steps: int = 0) -> None:
    """Validate the SMC options before any work (clear message naming the fix)."""
    check_number("resample_ess", frac, upper=1)
    check_count("n_islands", n_islands)
    check_count("smc_mcmc_steps", mcmc_steps, minimum=0)
    check_islands(n_samples, n_islands)


def check_islands(n: int, n_islands: int) -> None:
    """Raise ConfigError unless ``n`` particles split into ``n_islands`` equal islands of at
    least 2; the message suggests the nearest valid ``n_samples``."""
    if n % n_islands or n // n_islands < 2:
        raise ConfigError(f"n_samples={n} must be a multiple of n_islands={n_islands} with at least "
                          f"2 particles per island; e.g. n_samples={n_islands * max(2, -(-n // n_islands))}")


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
    level (Robbins-Monro on log h toward 0.574, :func:`~boltzkit.kernels.langevin.adapt_log_step`),
    with the drift capped at ``DRIFT_CAP`` times the noise (:func:`capped_drift`; still exact).

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
        h = math.exp(self.log_h)
        pot, _ = capped_drift(lambda y: self.potential(k, y), h, x[0].numel())
        state = pot(x)
        acc = 0.0
        for _ in range(self.n_steps):
            x, state, a = mala_move(pot, x, state, h, generator)
            acc += float(a.double().mean())
        rate = acc / self.n_steps
        self.acceptance.append(rate)
        if self.adapt:
            self.log_h = adapt_log_step(self.log_h, rate, MALA_TARGET_ACCEPT, STEP_GAIN)
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
    island_log_z, lw = pool_islands(lw, log_acc)
    acc = getattr(rejuvenate, "acceptance", None)
    return IslandRun(x=x, lw=lw, island_log_z=island_log_z, resample_events=events,
                     acceptance=float(sum(acc) / len(acc)) if acc else None)


def controlled_islands(x: torch.Tensor, lw: torch.Tensor, ts: torch.Tensor, drift: Callable,
                       diffusion: "Callable | None", log_gamma: Callable, *, generator, project, n_dof,
                       backward: Callable, noise_var: "Callable | None" = None, diverged: str,
                       **islands) -> IslandRun:
    """:func:`run_islands` along a controlled Euler-Maruyama path on the grid ``ts`` (NAAS and
    PDNS ``sample_smc``): level ``k`` moves by one step of ``drift`` (noise ``diffusion`` or
    ``noise_var``, :func:`~boltzkit.nn.sde.euler_maruyama`) and is weighted by
    ``log gamma_{k+1}(x_{k+1}) + log B_k(x_k | x_{k+1}) - log gamma_k(x_k) - log q_k(x_{k+1} | x_k)``,
    ``log_gamma(k, x)`` the intermediate targets (float64, ``gamma_0`` at the start points
    carried), ``B_k`` the ``backward`` kernels. A non-finite state raises TrainingDivergedError
    with the message ``diverged``. ``islands``: :func:`run_islands`'s keywords (``frac``,
    ``n_islands``, ``rejuvenate``)."""
    from ...nn.sde import euler_maruyama

    def step(k, x, carry):
        (log_g,) = carry
        mv = euler_maruyama(drift, diffusion, x, ts[k:k + 2], generator=generator, project=project,
                            n_dof=n_dof, noise_var=noise_var, backward=backward)
        if not bool(torch.isfinite(mv.x).all()):
            raise TrainingDivergedError(diverged)
        log_g_new = log_gamma(k + 1, mv.x)
        return mv.x, log_g_new - log_g + mv.log_bwd - mv.log_fwd, (log_g_new,)

    return run_islands(x, lw, ts.numel() - 1, step, generator=generator, carry=(log_gamma(0, x),),
                       **islands)


def island_result(samples, run: IslandRun, *, log_shift: float = 0.0, exact_log_z=None,
                  diagnostics: dict, who: str, advice: "str | None" = None, **result_kwargs):
    """A weighted :class:`~boltzkit.result.Result` of an island run: weights ``run.lw +
    log_shift``, log Z error bar from the spread of the independent islands, and the reliability
    flag from :func:`island_reliability`, with a warning naming the fix: ``advice``, by default
    that of the trained path sampler ``who``."""
    isl = (run.island_log_z + log_shift).cpu()
    M = isl.numel()
    est = log_z_from_log_weights(isl, warn=False)
    diag = {**diagnostics, "smc": True, "n_islands": M, "resample_events": run.resample_events,
            "log_z_stderr_from": "between islands"}
    if run.acceptance is not None:
        diag["mcmc_acceptance"] = run.acceptance
    res = result_from_log_weights(samples, (run.lw + log_shift).cpu(), exact_log_z=exact_log_z,
                                  diagnostics=diag, **result_kwargs)
    res = replace(res, log_z_stderr=est.stderr)
    island_reliability(res, isl, stacklevel=3,
                       advice=advice or f"{who}: raise n_time_steps, add smc_mcmc_steps or train longer.")
    return res


def spread_upper_bound(spread: float, M: int, confidence: float = ISLAND_SPREAD_CONFIDENCE) -> float:
    """One-sided ``confidence`` upper bound of the islands' log Z standard deviation from its
    sample value over ``M`` islands: ``s sqrt((M - 1) / chi2_{1 - confidence}(M - 1))`` (exact for
    normal island log Z; heavier tails make the sample spread even less trustworthy). With few
    islands the sample spread is often far below the true one (M = 8: below 0.56 of it in 5 %
    of runs), so a spread that looks healthy is not enough."""
    if M < 2 or not math.isfinite(spread):
        return float("nan")
    from scipy.stats import chi2

    return spread * math.sqrt((M - 1) / chi2.ppf(1.0 - confidence, M - 1))


def island_reliability(res, island_log_z, *, stacklevel: int = 2, advice: str = ANNEALING_ADVICE) -> bool:
    """Set ``res.diagnostics["reliable"]`` for an island SMC run and warn when it is False.

    Reliable needs the pooled weights' own check (ESS, Pareto k) and independent islands
    whose log Z estimates look like a sample the error bar can summarise:

    * their standard deviation at most ``ISLAND_SPREAD_LIMIT``, and so its one-sided 95 % upper
      bound (:func:`spread_upper_bound`): with few islands (M = 8, islands of 32 particles on
      many-well-32 at n = 256) the sample spread of islands whose true spread is about 1.3 came
      out 0.76-0.95 in 4 of 20 runs, and those runs were 3.4-4.3 error bars low, flagged reliable;
    * at least ``MIN_RELIABLE_ISLANDS`` = 8 islands: with 4, the error bar is a t quantity with
      3 degrees of freedom (beyond 3.2 error bars in 5 % of ideal runs), and measured on a d = 15
      anisotropic Gaussian (n = 128, islands of 32 from N(0, I)) 2 of 3 runs were 3.8 and 5.3
      error bars low with a spread of 0.22 among 4 islands (0.55-0.68 among 32 at n = 1024);
    * the log-mean-exp (Jensen) bias that spread implies for lognormal island estimates,
      ``(e^{s^2} - 1) / (2M)``, below the error bar (the check NAAS's SMC path makes);
    * no heavy tail that dominates: flagged when the Pareto tail index k of the island Z
      estimates exceeds ``PARETO_K_LIMIT`` *and* the largest island carries more than
      ``ISLAND_MAX_SHARE`` of their sum (the mean of M draws then rests on one island). k alone
      is too noisy to flag on with M ~ 32 islands (its tail fit uses 5-6 of them): measured,
      k > 0.7 on 4 of 200 good Ising 6 x 6 runs and on a many-well-32 run within its error
      bar, where the largest island held 4 % and 9 % of the sum;
    * a finite error bar.

    What no one-run check can catch: an estimate that is off by a chance fluctuation of the
    islands (a t-distributed z with M - 1 degrees of freedom lands beyond 3 error bars in about
    0.5 % of runs at M = 32), and a mode every island missed. The island diagnostics are stored
    in ``res.diagnostics`` (``island_log_z_std``, ``island_log_z_std_upper``, ``island_jensen_bias``, ``island_pareto_k``,
    ``island_max_share``, ``unreliable_because``)."""
    lz = torch.as_tensor(island_log_z).double().cpu()
    M = lz.numel()
    spread = float(lz.std()) if M > 1 else float("nan")
    spread_upper = spread_upper_bound(spread, M)
    jensen = math.expm1(min(spread ** 2, 700.0)) / (2 * M) if M > 1 else float("nan")
    k_isl = pareto_k(lz.numpy())
    share = float(torch.exp(lz.max() - torch.logsumexp(lz, 0))) if M > 1 else float("nan")
    d = res.diagnostics
    d.update(island_log_z_std=spread, island_log_z_std_upper=spread_upper, island_jensen_bias=jensen,
             island_pareto_k=k_isl, island_max_share=share)
    reasons = []
    if not d.get("reliable", True):
        reasons.append(f"degenerate pooled weights (ESS {res.ess:.1f}, Pareto k "
                       f"{d.get('pareto_k', float('nan')):.2f})")
    if not spread <= ISLAND_SPREAD_LIMIT:
        reasons.append(f"islands disagree (log Z spread {spread:.2f} between {M} islands; limit "
                       f"{ISLAND_SPREAD_LIMIT})")
    elif M < MIN_RELIABLE_ISLANDS:
        reasons.append(f"only {M} islands, too few for an error bar from their spread (at least "
                       f"{MIN_RELIABLE_ISLANDS}): raise n_samples or n_islands")
    elif not spread_upper <= ISLAND_SPREAD_LIMIT:
        reasons.append(f"too few islands to bound their spread (log Z spread {spread:.2f} between {M} "
                       f"islands, {ISLAND_SPREAD_CONFIDENCE:.0%} upper bound {spread_upper:.2f} above the "
                       f"limit {ISLAND_SPREAD_LIMIT}): raise n_samples or n_islands")
    elif not jensen <= max(res.log_z_stderr, JENSEN_ROUNDING):
        reasons.append(f"the islands' log Z spread {spread:.2f} implies a Jensen bias of about "
                       f"{jensen:.2g}, above the error bar {res.log_z_stderr:.2g}")
    if k_isl > PARETO_K_LIMIT and share > ISLAND_MAX_SHARE:
        reasons.append(f"heavy-tailed island estimates (Pareto k {k_isl:.2f} over {M} islands; the "
                       f"largest holds {share:.0%} of their Z)")
    if not math.isfinite(res.log_z_stderr):
        reasons.append("no finite error bar")
    d["reliable"] = not reasons
    d["unreliable_because"] = "; ".join(reasons)
    if reasons:
        warnings.warn(f"{res.method or 'SMC'}: {d['unreliable_because']}: the error bar is not reliable. "
                      + advice, UnreliableEstimateWarning, stacklevel=stacklevel + 1)
    return d["reliable"]


def systematic_indices(logw: torch.Tensor, m: int, generator) -> torch.Tensor:
    """``m`` indices drawn by systematic resampling from the normalised weights ``exp(logw)``;
    ``logw`` (n,), or (R, n) for R independent draws (R, m), one uniform per row."""
    lw = logw.double().reshape(-1, logw.shape[-1])
    cdf = torch.cumsum(torch.softmax(lw, 1), 1)
    cdf[:, -1] = 1.0
    pos = (torch.rand(lw.shape[0], 1, generator=generator, dtype=torch.float64, device=logw.device)
           + torch.arange(m, dtype=torch.float64, device=logw.device)) / m
    return torch.searchsorted(cdf, pos).clamp_(max=lw.shape[1] - 1).view(*logw.shape[:-1], m)


def island_ess(logw: torch.Tensor, islands: int) -> torch.Tensor:
    """Kish ESS (islands,) of each island (contiguous block) of the log-weights ``logw``."""
    lw = logw.view(islands, -1)
    return torch.exp(2 * torch.logsumexp(lw, 1) - torch.logsumexp(2 * lw, 1))


def resample_islands(tensors: tuple, logw, log_acc, frac: float, generator, *, ess=None):
    """Systematic resampling, within each island (contiguous blocks of ``logw``) whose ESS is
    below ``frac`` times its size; a resampled island's mean weight moves into ``log_acc``
    and its weights restart at 0, so ``log_acc + logmeanexp(logw)`` stays its log Z.

    ``tensors`` (each indexed by particle along dim 0) are reordered with the particles;
    ``ess``: the islands' :func:`island_ess`, where the caller has computed it already.
    Returns ``(tensors, logw, log_acc, number of islands resampled)``."""
    islands = log_acc.numel()
    m = logw.numel() // islands
    lw = logw.view(islands, m)
    ess = island_ess(logw, islands) if ess is None else ess
    need = ess < frac * m
    if not bool(need.any()):
        return tensors, logw, log_acc, 0
    log_acc = log_acc + torch.where(need, torch.logsumexp(lw, 1) - math.log(m), torch.zeros_like(log_acc))
    idx = systematic_indices(lw, m, generator)
    keep = torch.arange(m, device=logw.device).expand(islands, m)
    idx = torch.where(need[:, None], idx, keep) + m * torch.arange(islands, device=logw.device)[:, None]
    idx = idx.reshape(-1)
    logw = torch.where(need.repeat_interleave(m), torch.zeros_like(logw), logw[idx])
    return tuple(t[idx] for t in tensors), logw, log_acc, int(need.sum())


def pool_islands(logw: torch.Tensor, log_acc: torch.Tensor):
    """The end of an island run: every island's log Z estimate ``log_acc + log mean exp(logw)``
    (its resampled mass and its current weights), and the particles' log-weights with their
    island's resampled mass folded in (their log-mean-exp is the pooled log Z)."""
    m = logw.numel() // log_acc.numel()
    island_log_z = log_acc + torch.logsumexp(logw.view(-1, m), 1) - math.log(m)
    return island_log_z, logw + log_acc.repeat_interleave(m)


def running_log_z(logw: torch.Tensor, log_acc: torch.Tensor, log_z0: float):
    """Running estimate of log Z_k of the current intermediate target and its standard error.

    ``logw`` (float64, n) are the particles' log-weights after the incremental weight of level
    k, in ``log_acc.numel()`` contiguous islands whose resampled mass sits in ``log_acc``.
    One island: delta-method stderr of the pooled weights (as
    :func:`~boltzkit.estimators.importance.log_z_from_log_weights`); several: the same
    formula applied to the independent islands' Z estimates (their spread). Returns two 0-d
    float64 tensors (no host sync), ``(log Z_k, stderr)``.
    """
    M = log_acc.numel()
    m = logw.numel() // M
    isl = log_acc + torch.logsumexp(logw.view(M, m), 1) - math.log(m)
    a = logw if M == 1 else isl
    n = a.numel()
    log_z = torch.logsumexp(isl, 0) - math.log(M) + log_z0
    if n < 2:
        return log_z, torch.full_like(log_z, float("nan"))
    ess = torch.exp(2 * torch.logsumexp(a, 0) - torch.logsumexp(2 * a, 0))
    return log_z, torch.sqrt(((n / ess - 1.0) / (n - 1)).clamp_min(0.0))
