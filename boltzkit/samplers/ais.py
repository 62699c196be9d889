r"""Annealed importance sampling (AIS): weighted samples and log Z for continuous and lattice energies.

Paper
-----
R. M. Neal, "Annealed Importance Sampling", Statistics and Computing 11, 125-139 (2001),
arXiv:physics/9803008. Complexity analysis (continuous case): Guo, Tao & Chen, "Complexity
Analysis of Normalizing Constant Estimation: from Jarzynski Equality to Annealed Importance
Sampling and beyond", arXiv:2502.04575.

Objective
---------
Anneal along the geometric path ``log gamma_k = (1 - lambda_k) log pi_0 + lambda_k log p~``,
``0 = lambda_0 < ... < lambda_K = 1``, from a normalized reference ``pi_0`` (exact draws) to
the target ``p~ = exp(-U)``::

    x ~ pi_0;  log w = 0
    for k = 1..K:
        log w += log gamma_k(x) - log gamma_{k-1}(x)      # evaluated before moving
        x ~ T_k(x, .)                                     # n_mcmc MH steps leaving gamma_k invariant
    log Z_hat = log Z_0 + logsumexp(log w) - log N

``E[exp(log w)] = Z / Z_0`` exactly, because every T_k is Metropolis-Hastings corrected.

With ``resample_ess`` it is an SMC sampler (Del Moral, Doucet & Jasra, JRSS B 68, 411 (2006)):
the particles are split into ``n_islands`` independent islands, and an island whose ESS drops
below ``resample_ess`` times its size is resampled (systematic), its mean weight carried into
its running log Z. Each island's Z estimate stays unbiased; log Z and its error bar come from
the spread of the independent islands.

**Default on a continuous target** (no ``n_steps``, ``schedule`` or ``resample_ess`` given):
that SMC sampler on an adaptive ladder. An independent pilot run (``pilot`` = 1/8 of the
particles, at least 256) chooses each next lambda as the largest whose conditional ESS of the
incremental weights stays at ``cess`` = 0.97 (Zhou, Johansen & Aston, JCGS 25, 701 (2016));
a ladder shorter than ``min_levels`` = 200 is refined to 200 levels (:func:`refine_ladder`);
the main run then uses that fixed ladder, resampling an island below ESS 0.5, with about
n / 32 islands (:func:`boltzkit.samplers.smc.default_n_islands`). Measured with no hints
(``benchmarks/scale_defaults.py``): many-well-32 at 10,000 particles -0.06 +- 0.09 (plain
AIS on 200 geometric levels: -0.39 +- 0.35, ESS 8, flagged). Give ``n_steps`` (or a
``schedule``) for plain AIS on a fixed ladder, as before.

A **temperature ladder** (``beta_start``) and per-level samples for MBAR over the levels
(``keep_levels``, no extra energy evaluations) are options of :class:`AISConfig`.

* ``Reals``: pi_0 = N(0, init_std^2 I) (in the standardized frame of the target's
  :meth:`~boltzkit.energies.Energy.prior_hint` when it gives one: N(loc, init_std^2 S S^T)
  in ``x``), log Z_0 is folded into the weights; T_k is MALA or HMC
  (:mod:`boltzkit.samplers.mala`) on gamma_k. MALA's drift ``h grad U_k`` is cut to 10 times
  its noise norm (truncated-drift MALA, still exact; why:
  :func:`~boltzkit.samplers._shared.smc.capped_drift`). The step size of level k is set from
  the mean acceptance of level k-1 (Robbins-Monro on log h toward ``target_accept``). Like any
  population-adapted SMC kernel this couples the particles through the past, an O(1/N) effect
  far below the reported error bar; pass ``adapt_step_size=False`` for exactly independent
  particles.
* Ising / Potts: pi_0 uniform (log Z_0 = n_sites log q), gamma_k = exp(-lambda_k U), T_k =
  checkerboard heat-bath sweeps (:func:`boltzkit.samplers.mcmc.checkerboard_sweep`).
* Other categorical energies: pi_0 uniform in the index representation; T_k = random-scan
  single-site Metropolis (a sweep = n_sites proposals of a uniformly drawn other value).

Returns
-------
A :class:`~boltzkit.result.Result` with the final particles as ``samples``, float64
``log_weights`` that include log Z_0 (so ``logmeanexp(log_weights)`` is log Z_hat), ``log_z``
+- ``log_z_stderr`` (delta method, :func:`~boltzkit.estimators.importance.log_z_from_log_weights`),
Kish ESS, Pareto k, and in ``history``: ``lambda`` (levels 0..K; for a lattice at inverse
temperature beta, level k is the lattice at lambda_k beta), ``log_z_running`` +-
``log_z_running_stderr`` (float64: the running estimate of log Z_k of gamma_k at every level,
from the weights after level k's increment; with islands, from their spread; level 0 is the
exact log Z_0), and the acceptance / step size per level (levels 1..K).

Failure modes
-------------
* Well separated modes: the geometric path traps particles early, their mode proportions
  come from pi_0 and are corrected only by the weights, which then degenerate (low ESS,
  Pareto k > 0.7, ``UnreliableEstimateWarning``). A pi_0 much narrower than the target
  (``init_std`` too small) misses far modes altogether, silently: log Z_hat is then low.
* log Z_hat is biased low by about stderr^2 / 2 (Jensen), and the stderr itself is unreliable
  when the weights are degenerate.
* Too few levels (``n_steps``) or too little mixing (``n_mcmc``) widens the weight spread.
* SMC islands of ~32 particles keep a mode of mass p only when 32 p is not small: rarer modes
  live in a few islands, whose spread (the error bar) then grows -- or, when no island holds
  them, they are missed silently, as in plain AIS.
* Small budgets: few islands can show a spread far below their true one (measured on
  many-well-32 in :func:`~boltzkit.samplers.smc.island_reliability`, which therefore bounds the
  spread from above and never calls fewer than 8 islands reliable; such runs are flagged,
  ``diagnostics["unreliable_because"]``). The price: at n = 2,048-4,096 (32 islands of 64-128,
  spread 0.8-0.95, near the limit) most many-well-32 runs are flagged although right; at the
  default 10,000 (25 islands, spread 0.4-0.7) none of 8 seeds was (``benchmarks/smc_small_budget.py``).
  The pilot's own log Z (``diagnostics["pilot_log_z"]`` +- ``pilot_log_z_stderr``) comes from
  its short, self-chosen ladder: it is biased low (many-well-32 at n = 10,000: about -1 +- 0.3
  while the main run is right) and is information, not a check.
* The adaptive ladder adapts to the weights, not to mixing: where the MCMC moves cannot follow
  the path (barriers), raise ``min_levels`` or ``n_mcmc``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from .._finite import check_energies
from .._registry import register
from .._utils import progress_bar
from ..domains import Categorical, Reals
from ..errors import ConfigError, IncompatibleMethodError, TargetError
from ..estimators.importance import log_z_from_log_weights
from ..result import result_from_log_weights
from ._shared.smc import (ANNEALING_ADVICE, MALA_TARGET_ACCEPT, STEP_GAIN, IslandRun, capped_drift,
                          island_result, pool_islands, resample_islands, running_log_z, systematic_indices)
from .base import Sampler, SamplerConfig, check_count, check_flag, check_fraction, check_number
from .smc import SWEEP_PER_ENERGY, _kernel_of, _local_moves, checked_islands, default_n_islands, next_lambda
from ..kernels.categorical import random_scan_metropolis
from ..kernels.langevin import adapt_log_step, default_step_size, hmc_move, mala_move

SCHEDULES = ("geometric", "sigmoid", "linear")
DEFAULT_N_STEPS = 200     # levels of a fixed ladder when none is given (lattices; schedule="geometric")
REAL_KERNELS = ("mala", "hmc")
DISCRETE_KERNELS = ("heat_bath", "metropolis")
GEOMETRIC_LAMBDA_MIN = 1e-3
SIGMOID_SHARPNESS = 4.0
HMC_JITTER = 0.2  # per-chain U(0.8, 1.2) step-size factor, see hmc_move
ADAPTIVE_RESAMPLE_ESS = 0.5   # resampling threshold of the default (adaptive-ladder) run
ADAPTIVE_LEVELS_PER_SQRT_DIM = 20.0  # typical adaptive-ladder length / sqrt(d), for time estimates


def _adaptive(cfg, domain) -> bool:
    """Whether ``cfg`` asks for the adaptive ladder on ``domain``."""
    return cfg.schedule == "adaptive" or (cfg.schedule == "auto" and cfg.n_steps is None
                                          and isinstance(domain, Reals))


def annealing_schedule(n_steps: int, schedule="geometric") -> np.ndarray:
    r"""Inverse temperatures ``0 = lambda_0 < lambda_1 < ... < lambda_K = 1`` (float64, K + 1 values).

    Parameters
    ----------
    n_steps : int
        Number of levels K.
    schedule : str or sequence of float
        ``"geometric"``: lambda_1..K geometrically spaced from 1e-3 to 1;
        ``"sigmoid"``: Grosse et al. (2013), lambda_k ~ sigmoid(4 (2k/K - 1)) rescaled to [0, 1];
        ``"linear"``: evenly spaced; or an explicit increasing sequence from 0 to 1 (then
        ``n_steps`` must equal its length minus one, or be None).
    """
    if not isinstance(schedule, str):
        lam = np.asarray(schedule, dtype=np.float64).reshape(-1)
        if lam.size < 2 or lam[0] != 0.0 or lam[-1] != 1.0 or not (np.diff(lam) > 0).all():
            raise ConfigError("an explicit schedule must increase strictly from 0 to 1, e.g. "
                              "np.linspace(0, 1, 101)")
        if n_steps is not None and n_steps != lam.size - 1:
            raise ConfigError(f"the explicit schedule has {lam.size - 1} levels but n_steps = "
                              f"{n_steps}; drop n_steps or make them agree")
        return lam
    check_count("n_steps", n_steps)
    K = int(n_steps)
    if schedule == "linear":
        return np.linspace(0.0, 1.0, K + 1)
    if schedule == "geometric":
        return np.concatenate([[0.0], np.geomspace(GEOMETRIC_LAMBDA_MIN, 1.0, K)]) if K > 1 \
            else np.array([0.0, 1.0])
    if schedule == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-SIGMOID_SHARPNESS * (2.0 * np.arange(K + 1) / K - 1.0)))
        return (s - s[0]) / (s[-1] - s[0])
    raise ConfigError(f"unknown schedule {schedule!r}; use 'auto', 'adaptive', one of {SCHEDULES} "
                      "or an explicit sequence of lambdas")


def fixed_ladder(cfg) -> np.ndarray:
    """The fixed ladder of an AIS or driven-Langevin config: its explicit schedule, or
    ``cfg.n_steps`` levels (DEFAULT_N_STEPS when None) of its named schedule ("auto": geometric)."""
    if not isinstance(cfg.schedule, str):
        return annealing_schedule(None, cfg.schedule)
    n_steps = DEFAULT_N_STEPS if cfg.n_steps is None else cfg.n_steps
    return annealing_schedule(n_steps, "geometric" if cfg.schedule == "auto" else cfg.schedule)


def check_fixed_ladder(cfg, default_n_steps: "int | None" = None) -> None:
    """Check a config's fixed ladder (in ``__post_init__``: an explicit or named schedule, not
    "auto"; ``n_steps`` None stands for ``default_n_steps``); an explicit schedule is stored as a
    tuple of floats and sets ``n_steps`` to its number of levels."""
    if not isinstance(cfg.schedule, str):
        object.__setattr__(cfg, "schedule", tuple(float(v) for v in cfg.schedule))
        object.__setattr__(cfg, "n_steps", len(cfg.schedule) - 1)
        annealing_schedule(None, cfg.schedule)
    else:
        annealing_schedule(default_n_steps if cfg.n_steps is None else cfg.n_steps, cfg.schedule)


@dataclass(frozen=True, kw_only=True)
class AISConfig(SamplerConfig):
    """Options of AIS.

    n_steps : number of levels K of a fixed ladder. None (default): on a continuous target the
        ladder is adaptive (``schedule="auto"``); elsewhere DEFAULT_N_STEPS = 200.
    kernel : "auto", "mala" or "hmc" (Reals); "auto", "heat_bath" (Ising/Potts only) or
        "metropolis" (any categorical energy). "auto" = MALA / heat bath / Metropolis.
    n_mcmc : transitions (MCMC steps or lattice sweeps) per level.
    schedule : "auto" (default), "adaptive", "geometric", "sigmoid", "linear", or an explicit
        tuple of lambdas from 0 to 1. "adaptive" (continuous targets): the module docstring's
        pilot-chosen ladder (the main run's step sizes still adapt level by level on its own
        particles, an O(1/N) coupling of the islands, see below). "auto" = "adaptive" on a
        continuous target when ``n_steps`` is not given, else "geometric".
    init_std : standard deviation of the Gaussian reference pi_0 (Reals). None (default): 1 in
        the frame of the target's prior hint, or, without a hint, 1 in the frame of the scale
        probe (:func:`boltzkit.probe.probe_frame`: pi_0 = N(c, C) covering every minimum it
        found, with the local widths; its evaluations are in ``diagnostics["scale_probe"]``).
    step_size : initial MALA/HMC step size; None = 0.5 init_std^2 d^(-1/3) (MALA) or
        0.5 init_std d^(-1/4) (HMC).
    target_accept : acceptance rate the step size follows; None = 0.574 (MALA), 0.65 (HMC).
    adapt_step_size : adapt the step size level by level from the previous level's acceptance.
    n_leapfrog : leapfrog steps per HMC transition.
    use_prior_hint : (Reals) when the target gives a :meth:`~boltzkit.energies.Energy.prior_hint`
        ``x = loc + S z``, anneal in ``z`` from N(0, init_std^2 I), i.e. from
        N(loc, init_std^2 S S^T) in ``x``; samples, weights and log Z are returned in ``x``.
    resample_ess : (Reals) None (plain AIS), "auto" (default: 0.5 with the adaptive ladder,
        None with a fixed one) or a fraction in (0, 1]: the SMC sampler of the module docstring.
    n_islands : (with ``resample_ess``) number of independent particle islands; the samples
        are stored island by island (contiguous blocks). None (default):
        :func:`boltzkit.samplers.smc.default_n_islands` (about n / 32, 2 to 32).
    cess : (adaptive ladder) conditional-ESS fraction kept between consecutive levels.
    pilot : (adaptive ladder) fraction of the particles (at least 256) of the pilot run that
        chooses the ladder and the step sizes.
    max_levels : (adaptive ladder) stop with an error beyond this many levels.
    min_levels : (adaptive ladder) a ladder shorter than this is refined to this many levels
        (:func:`refine_ladder`), so the particles get at least this many MCMC moves on the way.
    keep_levels : 0 (default) or the number of particles kept at every level (drawn by
        systematic resampling from the level's weighted particles, after its MCMC move), with
        their reference and target energies, for MBAR over the levels
        (:meth:`boltzkit.result.Result.level_mbar`); stored in ``history`` as
        ``level_samples`` (K, m, d), ``level_u0``, ``level_u`` (K, m).
    beta_start : (Reals) None (default): the geometric path from pi_0 to exp(-U). A number b in
        (0, 1): a temperature ladder. The path first goes geometrically from pi_0 to exp(-b U)
        (the target at the higher temperature T / b), then tempers exp(-lambda U) from
        lambda = b to 1, i.e. level lambda has the reduced potential
        ``max(0, 1 - lambda / b) U_0 + lambda U`` (history ``lambda`` and ``lambda_u0`` hold
        both coefficients per level). The adaptive ladder places its levels by the conditional
        ESS in each stage. Every increment is exact, so log Z stays unbiased and the running
        log Z of a tempering level is log Z(beta = lambda); with ``keep_levels``,
        :func:`~boltzkit.free_energy.level_mbar` pools the tempering levels (MBAR over
        temperatures). Molecules: b = 300 K / T_high, e.g. 0.4 for 750 K. Failure modes: the
        tempering stage re-weights each basin by exp(-(lambda' - lambda) U), so a basin that is
        rare at T / b must be populated by enough particles there, and a basin favoured only at
        high temperature (entropy) loses its particles on the way down, raising the weight spread;
        the low-temperature levels of the tempering stage overlap the target, the high ones
        barely, so MBAR gains only where adjacent temperatures overlap; a b so small that
        exp(-b U) is nearly flat leaves the first stage no easier and the second longer.
        Measured on alanine dipeptide (2048 particles x 200 levels, 3 seeds,
        ``benchmarks/alanine_levels.py``): b = 0.4 gave dF(alpha_R) 4.17-4.45 +- 0.24-0.33 and
        dF(C7ax) 4.75-5.77 +- 0.58-2.45 kT, all within 2 error bars of the reference, where the
        geometric path left C7ax without a finite error bar in 2 of 3 seeds; but C7ax's weight
        still sits in the lineages of a few islands (MALA does not cross its barriers), so its
        error bar is rarely below 1 kT at this budget; b = 0.6 lost C7ax in one run.
    """

    n_steps: "int | None" = None
    kernel: str = "auto"
    n_mcmc: int = 1
    schedule: "str | tuple" = "auto"
    init_std: "float | None" = None
    step_size: "float | None" = None
    target_accept: "float | None" = None
    adapt_step_size: bool = True
    n_leapfrog: int = 5
    use_prior_hint: bool = True
    resample_ess: "float | str | None" = "auto"
    n_islands: "int | None" = None
    cess: float = 0.97
    pilot: float = 0.125
    max_levels: int = 20_000
    min_levels: int = DEFAULT_N_STEPS
    keep_levels: int = 0
    beta_start: "float | None" = None

    def __post_init__(self):
        check_flag("use_prior_hint", self.use_prior_hint)
        if self.resample_ess not in (None, "auto"):
            check_number("resample_ess", self.resample_ess, upper=1)
        check_count("n_islands", self.n_islands, allow_none=True)
        for name in ("cess", "pilot"):  # fractions in (0, 1)
            check_number(name, getattr(self, name))
            check_fraction(name, getattr(self, name))
        check_count("max_levels", self.max_levels)
        check_count("min_levels", self.min_levels)
        check_number("beta_start", self.beta_start, allow_none=True, upper=1)
        check_count("keep_levels", self.keep_levels, minimum=0)
        if isinstance(self.schedule, str) and self.schedule in ("auto", "adaptive"):
            if self.n_steps is not None:
                check_count("n_steps", self.n_steps)
                if self.schedule == "adaptive":
                    raise ConfigError(f"schedule='adaptive' chooses the levels itself; drop n_steps="
                                      f"{self.n_steps} or give schedule='geometric'")
        else:
            check_fixed_ladder(self, DEFAULT_N_STEPS)
        check_count("n_mcmc", self.n_mcmc)
        check_count("n_leapfrog", self.n_leapfrog)
        if self.kernel not in ("auto",) + REAL_KERNELS + DISCRETE_KERNELS:
            raise ConfigError(f"unknown kernel {self.kernel!r}; use 'auto', 'mala' or 'hmc' "
                              "(continuous), 'heat_bath' or 'metropolis' (categorical)")
        check_number("init_std", self.init_std, allow_none=True)
        check_number("step_size", self.step_size, allow_none=True)
        check_number("target_accept", self.target_accept, allow_none=True)
        check_fraction("target_accept", self.target_accept, allow_none=True)


def _resolve_kernel(target, kernel: str) -> str:
    dom = target.domain
    if isinstance(dom, Reals):
        if kernel == "auto":
            return "mala"
        if kernel not in REAL_KERNELS:
            raise ConfigError(f"kernel {kernel!r} is for categorical targets; {target.name} is "
                              f"continuous: use 'mala' or 'hmc'")
        return kernel
    if isinstance(dom, Categorical):
        lattice = _local_moves(target)  # the target offers lattice_model()
        if kernel == "auto":
            return "heat_bath" if lattice else "metropolis"
        if kernel == "heat_bath" and not lattice:
            raise ConfigError(f"kernel 'heat_bath' needs an Ising or Potts energy; use "
                              f"'metropolis' for {target.name}")
        if kernel not in DISCRETE_KERNELS:
            raise ConfigError(f"kernel {kernel!r} is for continuous targets; {target.name} is "
                              f"categorical: use 'heat_bath' or 'metropolis'")
        return kernel
    raise IncompatibleMethodError(f"AIS handles Reals and categorical domains, not "
                                  f"{type(dom).__name__}")


# ============================================================================ kernels
def metropolis_sweep(energy, x: torch.Tensor, *, generator: torch.Generator, scale: float = 1.0):
    """One random-scan single-site Metropolis sweep leaving exp(-scale U) invariant, on the
    physical representation of any :class:`~boltzkit.domains.Categorical` energy
    (:func:`boltzkit.kernels.categorical.random_scan_metropolis` on its index representation).

    Returns ``(x_new, acceptance)``: the new states and the per-chain accepted fraction (B,).
    """
    dom = energy.domain
    B = x.shape[0]

    def energy_of_index(idx):
        states = dom.decode(idx.reshape(B, *dom.event_shape))
        u = energy.energy(states)
        check_energies(u, states, name=f"{energy.name}.energy", where="in a Metropolis proposal")
        return u

    idx, acc = random_scan_metropolis(energy_of_index, dom.encode(x).reshape(B, dom.n_sites), dom.q,
                                      generator=generator, scale=scale)
    return dom.decode(idx.reshape(B, *dom.event_shape)), acc


# ============================================================================ drivers
class _Annealer:
    """Shared level loop for continuous targets: AIS (MH-corrected) and Jarzynski (ULA).

    ``move(potential, x, state, k) -> (x, state, acceptance_rate)`` performs the transitions of
    level k on gamma_k; ``potential(y) = (U_k(y), grad U_k(y), U(y), grad U(y))`` with
    ``U_k = a(lambda_k) |y|^2 / (2 s0^2) + lambda_k U`` and ``state = potential(x)``, where
    ``a(lambda) = max(0, 1 - lambda / beta_start)`` (the geometric path when ``beta_start`` = 1;
    ``AISConfig.beta_start``).
    """

    def __init__(self, target, init_std: float, beta_start: float = 1.0):
        self.target = target
        self.beta_start = float(beta_start)
        self.s2 = float(init_std) ** 2
        self.dim = target.domain.dim
        self.log_z0 = 0.5 * self.dim * math.log(2.0 * math.pi * self.s2)
        self.where = "at the reference draws"

    def raw(self, y):
        u, g = self.target.energy(y), self.target.grad_energy(y)
        check_energies(u, y, grad=g, name=f"{self.target.name}.energy", where=self.where, energy=self.target)
        return u, g

    def u0(self, y):
        return 0.5 * (y * y).sum(-1) / self.s2

    def ref_coef(self, lam: float) -> float:
        """Coefficient ``a(lambda)`` of the reference energy at level ``lambda``."""
        return max(0.0, 1.0 - lam / self.beta_start)

    def next_level(self, logw, u, u0, lam: float, cess: float, islands: int) -> float:
        """The adaptive ladder's next lambda, within the current stage of the path (the increment
        ``-(a' - a) U_0 - (lambda' - lambda) U`` is linear in lambda' only within a stage)."""
        b = self.beta_start
        if lam < b:  # geometric stage, in t = lambda / b
            t = next_lambda(logw, b * u - u0, lam / b, cess, islands)
            return b if t >= 1.0 else b * t
        t = next_lambda(logw, (1.0 - b) * u, (lam - b) / (1.0 - b), cess, islands)  # tempering
        return 1.0 if t >= 1.0 else b + (1.0 - b) * t

    def mix(self, lam: float, y, u, g):
        a = self.ref_coef(lam)
        return a * self.u0(y) + lam * u, a * y / self.s2 + lam * g

    def potential(self, lam: float):
        def pot(y):
            u, g = self.raw(y)
            return (*self.mix(lam, y, u, g), u, g)
        return pot

    def run(self, n: int, lambdas, move, generator, *, bar=None, device="cpu",
            resample_ess=None, n_islands: int = 1, cess: "float | None" = None,
            max_levels: int = 20_000, keep: int = 0):
        """Returns x (n, d), log-weights (float64, log Z_0 included), acceptance per level, and
        None, or with ``resample_ess`` the :class:`~._shared.smc.IslandRun` (the islands' log Z,
        the number of resampling events).

        ``lambdas`` None: the adaptive ladder (each next lambda keeps the conditional ESS of
        the incremental weights at ``cess``); the ladder used is in ``self.lambdas``. ``keep``
        > 0: ``self.kept`` holds, per level 1..K, ``keep`` particles drawn by systematic
        resampling from the weighted particles after the move, with U_0 and U there."""
        x = math.sqrt(self.s2) * torch.randn(n, self.dim, generator=generator, device=device)
        u, g = self.raw(x)
        bad = ~torch.isfinite(u)
        if bool(bad.any()):
            raise TargetError(f"{self.target.name}.energy is not finite at {int(bad.sum())} of {n} "
                              f"reference draws from N(0, {math.sqrt(self.s2):g}^2 I); change init_std")
        logw = torch.zeros(n, dtype=torch.float64, device=device)
        log_acc = torch.zeros(n_islands, dtype=torch.float64, device=device)  # log Z so far, per island
        n_events = 0
        acc_hist = []
        zero = torch.zeros((), dtype=torch.float64, device=device)
        running = [(zero + self.log_z0, zero)]
        ladder = [0.0]
        kept = []
        k, total = 0, "?" if lambdas is None else lambdas.size - 1
        while ladder[-1] < 1.0:
            k += 1
            u0, u64 = self.u0(x).double(), u.double()  # the reference and target energies at x
            if lambdas is not None:
                lam = float(lambdas[k])
            else:
                if k > max_levels:
                    raise ConfigError(f"the adaptive ladder needs more than max_levels={max_levels} "
                                      f"levels (at lambda={ladder[-1]:.4g}); lower cess or raise max_levels")
                lam = self.next_level(logw, u64, u0, ladder[-1], cess, n_islands)
            dlam, da = lam - ladder[-1], self.ref_coef(lam) - self.ref_coef(ladder[-1])
            ladder.append(lam)
            self.where = f"at annealing level {k} of {total}"
            logw -= da * u0 + dlam * u64
            running.append(running_log_z(logw, log_acc, self.log_z0))
            if resample_ess is not None:
                (x, u, g), logw, log_acc, events = resample_islands((x, u, g), logw, log_acc,
                                                                    resample_ess, generator)
                n_events += events
            state = (*self.mix(lam, x, u, g), u, g)
            x, state, acc = move(self.potential(lam), x, state, k)
            u, g = state[2], state[3]
            acc_hist.append(acc)
            if keep:
                idx = systematic_indices(logw + log_acc.repeat_interleave(n // n_islands), keep, generator)
                kept.append((x[idx], self.u0(x[idx]).double(), u[idx].double(), idx // (n // n_islands)))
            if bar is not None:
                bar.update(1)
                if k % 20 == 0 or lam == 1.0:
                    lz = self.log_z0 + float(torch.logsumexp(logw, 0)) - math.log(n)
                    bar.set_postfix({"acc": f"{acc:.2f}", "logZ_k": f"{lz:.4g}"})
        acc_hist = np.asarray(acc_hist, dtype=np.float64)
        self.lambdas = np.asarray(ladder, dtype=np.float64)
        self.running = running_history(self.lambdas, running)
        self.kept = kept
        if resample_ess is None:
            return x, logw + self.log_z0, acc_hist, None
        island_log_z, logw = pool_islands(logw, log_acc)
        run = IslandRun(x, logw + self.log_z0, (island_log_z + self.log_z0).cpu(), n_events, None)
        return x, run.lw, acc_hist, run


def refine_ladder(lambdas: np.ndarray, min_levels: int, knot: "float | None" = None) -> np.ndarray:
    """The ladder ``lambdas`` (levels 0..K) with at least ``min_levels`` levels: when K is
    smaller, ``min_levels`` levels placed by linear interpolation of lambda over the level index,
    so each new step lies within one old step (its conditional ESS is at least the old one's).
    ``knot``, a level of ``lambdas`` (the end of a temperature ladder's first stage), stays a
    level: each side is refined on its own, its share of the levels as in ``lambdas``."""
    K = lambdas.size - 1
    if K >= min_levels:
        return lambdas
    if knot is not None and 0.0 < knot < 1.0 and knot in lambdas:
        j = int(np.flatnonzero(lambdas == knot)[0])
        n1 = min(max(1, round(min_levels * j / K)), min_levels - 1)
        first = np.interp(np.linspace(0.0, j, n1 + 1), np.arange(j + 1), lambdas[:j + 1])
        second = np.interp(np.linspace(j, K, min_levels - n1 + 1), np.arange(j, K + 1), lambdas[j:])
        out = np.concatenate([first, second[1:]])
        out[0], out[n1], out[-1] = 0.0, knot, 1.0
        return out
    t = np.linspace(0.0, K, int(min_levels) + 1)
    out = np.interp(t, np.arange(K + 1), lambdas)
    out[0], out[-1] = 0.0, 1.0
    return out


def running_history(lambdas, running) -> dict:
    """History keys shared by AIS and SMC: ``lambda`` (levels 0..K, lambda_0 = 0), and
    ``log_z_running`` / ``log_z_running_stderr`` (log Z_k of gamma_k at every level, float64;
    level 0 is the exact reference)."""
    lz, se = (torch.stack(v).cpu().double().numpy() for v in zip(*running))
    return {"lambda": np.asarray(lambdas, dtype=np.float64), "log_z_running": lz,
            "log_z_running_stderr": se}


class AnnealedSampler(Sampler):
    """What AIS and driven Langevin (:mod:`.jarzynski`) share: nothing to train, and a run along a
    ladder of levels."""

    @contextlib.contextmanager
    def _ladder(self, n_samples, *, desc: str):
        """The opening of ``sample``: check the call, then yield the fixed ladder (None: the
        adaptive one, chosen during the run) and a progress bar over its levels, gradients off."""
        self._require_fit()
        check_count("n_samples", n_samples)
        lambdas = None if _adaptive(self.config, self.target.domain) else fixed_ladder(self.config)
        bar = progress_bar(total=None if lambdas is None else lambdas.size - 1, desc=desc,
                           enabled=self.progress)
        try:
            with torch.no_grad():
                yield lambdas, bar
        finally:
            bar.close()


@register("ais", kinds=("energy",), domains=(Reals, Categorical), priority={Reals: 5, Categorical: 0},
          paper="Neal 2001, arXiv:physics/9803008",
          description="Annealed importance sampling: weighted samples and log Z (MALA/HMC or lattice sweeps)")
class AIS(AnnealedSampler):
    """Annealed importance sampling from a tractable reference to the target."""

    Config = AISConfig

    @classmethod
    def estimate_seconds(cls, target, profile, n_samples: "int | None" = None, config=None) -> float:
        """Wall time with default options from the device profile (:func:`boltzkit._registry.probe`):
        n_samples x levels x transitions (alanine in internal coordinates: 198 s estimated, 167 s
        measured on an idle core), a MALA step one energy and one gradient evaluation (the
        profile's measured ``grad_s``; ~3 energies where it was not measured), an HMC step
        n_leapfrog of them, a lattice sweep ~ SWEEP_PER_ENERGY, a Metropolis sweep ~ n_sites."""
        cfg = config or cls.Config()
        n = n_samples or 10_000
        e = profile.energy_s if math.isfinite(profile.energy_s) else 1e-5
        dom = target.domain
        if isinstance(dom, Reals):
            grad = getattr(profile, "grad_s", float("nan"))
            per = (1.0 + grad / e if math.isfinite(grad) else 3.0) * (cfg.n_leapfrog if cfg.kernel == "hmc" else 1)
        else:
            per = SWEEP_PER_ENERGY if _local_moves(target) else 1.3 * dom.n_sites
        if _adaptive(cfg, dom):  # the ladder's length is unknown before the pilot: a typical one
            levels = max(cfg.min_levels, ADAPTIVE_LEVELS_PER_SQRT_DIM * math.sqrt(dom.dim)) + cfg.pilot * ADAPTIVE_LEVELS_PER_SQRT_DIM * math.sqrt(dom.dim)
        else:
            levels = cfg.n_steps or DEFAULT_N_STEPS
        # a continuous level's weight reuses the energy its MALA/HMC move cached; a lattice level
        # evaluates it once more
        return float(n * levels * (cfg.n_mcmc * per + (0.0 if isinstance(dom, Reals) else 1.0)) * e)

    def fit(self, target, *, n_steps: "int | None" = None, checkpoint=None) -> "AIS":
        """Check ``target`` and the options (AIS has nothing to train); ``n_steps`` sets K."""
        self._no_checkpoint(checkpoint)
        if n_steps is not None and n_steps != self.config.n_steps:
            if not isinstance(self.config.schedule, str) or self.config.schedule == "adaptive":
                raise ConfigError(f"n_steps={n_steps} conflicts with the explicit schedule of "
                                  f"{self.config.n_steps} levels; drop one of them")
            self.config = self.make_config(self.config, n_steps=n_steps)
        dom = getattr(target, "domain", None)
        if not isinstance(dom, (Reals, Categorical)):
            raise IncompatibleMethodError(f"AIS handles Reals and categorical domains, got "
                                          f"{type(dom).__name__}")
        if self.config.schedule == "adaptive" and not isinstance(dom, Reals):
            raise ConfigError("schedule='adaptive' is for continuous targets in 'ais'; for lattice and "
                              "sequence targets use method='smc' (adaptive ladder, island resampling)")
        if self.config.resample_ess not in (None, "auto") and not isinstance(dom, Reals):
            raise ConfigError("resample_ess (SMC) is implemented for continuous targets only in 'ais'; "
                              "for lattice and sequence targets use method='smc' (adaptive ladder, "
                              "island resampling)")
        if self.config.beta_start is not None and not isinstance(dom, Reals):
            raise ConfigError("beta_start (a temperature ladder after the reference stage) is for "
                              "continuous targets in 'ais'; a lattice run is already a temperature "
                              "ladder from the uniform distribution (method='smc')")
        if self.config.keep_levels and not isinstance(dom, Reals):
            raise ConfigError("keep_levels (per-level samples for MBAR) is implemented for continuous "
                              "targets; leave keep_levels=0 on lattice and sequence targets")
        self._attach(target, needs_grad=isinstance(dom, Reals))
        self.kernel = _resolve_kernel(target, self.config.kernel)
        return self

    def sample(self, n_samples: int):
        """Run AIS with ``n_samples`` particles; returns a weighted :class:`~boltzkit.result.Result`."""
        cfg = self.config
        with self._ladder(n_samples, desc=f"ais ({self.kernel})") as (lambdas, bar):
            run = self._run_reals if isinstance(self.target.domain, Reals) else self._run_categorical
            x, lw, extra = run(int(n_samples), lambdas, self.gens["sample"], bar)
        exact = self.target.exact_log_z() if isinstance(self.target.domain, Reals) else None
        smc = extra.pop("smc", None)
        diag = {"kernel": self.kernel, "n_levels": int(extra["running"]["lambda"].size - 1),
                "n_mcmc": cfg.n_mcmc,
                "acceptance": float(np.mean(extra["acceptance"])),
                "log_weight_std": float(lw.std()), **extra.pop("diag", {})}
        history = {**extra.pop("running"), **extra}
        kw = self._result_kwargs()
        if not smc:
            return result_from_log_weights(x, lw, exact_log_z=exact, diagnostics=diag,
                                           history=history, **kw)
        pilot_isl = diag.pop("pilot_island_log_z", None)
        if pilot_isl is not None:
            pest = log_z_from_log_weights(pilot_isl, warn=False)
            diag.update(pilot_log_z=pest.log_z, pilot_log_z_stderr=pest.stderr,
                        pilot_island_log_z_std=float(pilot_isl.std()))
        history["island_log_z"] = smc.island_log_z.double().numpy()
        return island_result(x, smc, exact_log_z=exact, diagnostics=diag, history=history, warn=False,
                             who="AIS", advice=ANNEALING_ADVICE, **kw)

    # ----------------------------------------------------------------- continuous
    def _run_reals(self, n, lambdas, gen, bar):
        cfg = self.config
        work, frame, init_std, pr = self._start_frame(cfg.init_std, cfg.use_prior_hint)
        probe = {} if pr is None else {"scale_probe": pr.summary()}
        beta_start = 1.0 if cfg.beta_start is None else float(cfg.beta_start)
        ann = _Annealer(work, init_std, beta_start)
        target_acc = cfg.target_accept if cfg.target_accept is not None else \
            (MALA_TARGET_ACCEPT if self.kernel == "mala" else 0.65)
        h0 = cfg.step_size if cfg.step_size is not None else \
            default_step_size(self.kernel, ann.dim, init_std)

        def mover():
            """A fresh level move (its own step-size adaptation) and its step-size record."""
            log_h, steps = [math.log(h0)], []

            def move(pot, x, state, k):
                h = math.exp(log_h[0])
                steps.append(h)
                if self.kernel == "mala":  # truncated drift (MALTA): still exact, see capped_drift
                    pot, cap_state = capped_drift(pot, h, ann.dim)
                    state = cap_state(state)
                acc_sum = 0.0
                for _ in range(cfg.n_mcmc):
                    x, state, acc = mala_move(pot, x, state, h, gen) if self.kernel == "mala" else \
                        hmc_move(pot, x, state, h, cfg.n_leapfrog, gen, jitter=HMC_JITTER)
                    acc_sum += float(acc.double().mean())
                rate = acc_sum / cfg.n_mcmc
                if cfg.adapt_step_size:
                    log_h[0] = adapt_log_step(log_h[0], rate, target_acc, STEP_GAIN)
                return x, state, rate
            return move, steps

        resample = cfg.resample_ess if cfg.resample_ess != "auto" else \
            (ADAPTIVE_RESAMPLE_ESS if lambdas is None else None)
        n_isl = 1 if resample is None else checked_islands(n, cfg.n_islands)
        pilot = {}
        if lambdas is None:  # the ladder from an independent pilot run
            n_p = max(256, int(n * cfg.pilot))
            m_p = default_n_islands(n_p)
            n_p -= n_p % m_p
            move, steps = mover()
            *_, psmc = ann.run(n_p, None, move, gen, device=self.device,
                               resample_ess=resample or ADAPTIVE_RESAMPLE_ESS, n_islands=m_p, cess=cfg.cess,
                               max_levels=cfg.max_levels)
            lambdas = refine_ladder(ann.lambdas, cfg.min_levels, knot=beta_start)
            pilot = {"ladder_from": f"independent pilot run ({n_p} particles)", "pilot_particles": n_p,
                     "pilot_levels": int(ann.lambdas.size - 1), "cess": cfg.cess,
                     "pilot_island_log_z": psmc.island_log_z.double()}
            if bar is not None and hasattr(bar, "total"):
                bar.total = lambdas.size - 1
        move, steps = mover()
        x, lw, acc, smc = ann.run(n, lambdas, move, gen, bar=bar, device=self.device,
                                  resample_ess=resample, n_islands=n_isl, keep=cfg.keep_levels)
        running = ann.running
        if cfg.beta_start is not None:  # the reference coefficient of every level (MBAR)
            running["lambda_u0"] = np.array([ann.ref_coef(v) for v in ann.lambdas])
        kept = self._kept_history(ann, frame)
        if frame is not None:  # back to the target's coordinates (constant Jacobian |det S|)
            x, lw = frame.to_x(x), lw + frame.log_det
            running["log_z_running"] = running["log_z_running"] + frame.log_det
            if smc:
                smc = replace(smc, lw=lw, island_log_z=smc.island_log_z + frame.log_det)
            if pilot:
                pilot["pilot_island_log_z"] = pilot["pilot_island_log_z"] + frame.log_det
        per_level = cfg.n_mcmc * (cfg.n_leapfrog if self.kernel == "hmc" else 1) + 1
        evals = n * (lambdas.size - 1) * per_level + n
        if pilot:
            evals += pilot["pilot_particles"] * (pilot["pilot_levels"] + 1) * (cfg.n_mcmc + 1)
        return x, lw, {"acceptance": acc, "step_size": np.asarray(steps), "smc": smc, "running": running,
                       **kept,
                       "diag": {"log_z0": ann.log_z0, "init_std": init_std, "adaptive_ladder": bool(pilot),
                                **({"beta_start": beta_start} if cfg.beta_start is not None else {}),
                                **pilot, "energy_evaluations": int(evals),
                                "final_step_size": steps[-1], "prior_hint": frame is not None, **probe}}

    @staticmethod
    def _kept_history(ann, frame) -> dict:
        """The per-level particles (in ``x``) with U_0 (reference, in the frame) and U (target),
        and the reduced-energy offset log|det S| of the frame, for MBAR over the levels."""
        if not ann.kept:
            return {}
        y, u0, u, isl = (torch.stack(v) for v in zip(*ann.kept))
        K, m = u.shape
        xs = y.reshape(K * m, -1)
        off = 0.0
        if frame is not None:
            xs, off = frame.to_x(xs), float(frame.log_det)
        return {"level_samples": xs.reshape(K, m, -1).cpu().numpy(), "level_u0": u0.cpu().numpy(),
                "level_u": u.cpu().numpy(), "level_island": isl.cpu().numpy(),
                "level_log_det": np.array(off),
                "level_log_z0": np.array(ann.log_z0)}

    # ----------------------------------------------------------------- categorical
    def _run_categorical(self, n, lambdas, gen, bar):
        dom = self.target.domain
        _, sweep = _kernel_of(self.target, self.kernel)
        log_z0 = dom.log_size()
        x = dom.reference(n, generator=gen, device=self.device)
        logw = torch.zeros(n, dtype=torch.float64, device=self.device)
        one = torch.zeros(1, dtype=torch.float64, device=self.device)
        running = [(one[0] + log_z0, one[0])]
        acc_hist = []
        for k in range(1, lambdas.size):
            lam, dlam = float(lambdas[k]), float(lambdas[k] - lambdas[k - 1])
            u = self.target.energy(x).double()
            check_energies(u, x, name=f"{self.target.name}.energy", where=f"at ais level {k} of {lambdas.size - 1}",
                           energy=self.target)
            logw -= dlam * u
            running.append(running_log_z(logw, one, log_z0))
            rate = 0.0
            for _ in range(self.config.n_mcmc):
                x, acc = sweep(x, lam, gen)
                rate += float(acc.double().mean())
            acc_hist.append(rate / self.config.n_mcmc)
            bar.update(1)
            if k % 20 == 0:
                bar.set_postfix({"acc": f"{acc_hist[-1]:.2f}"})
        if not bool(torch.isfinite(logw).any()):
            raise TargetError(f"{self.target.name}.energy returned non-finite values along the path")
        return x, logw + log_z0, {"acceptance": np.asarray(acc_hist), "diag": {"log_z0": log_z0},
                                  "running": running_history(lambdas, running)}


def ais(target, *, n_samples: int = 1024, n_steps: "int | None" = None, kernel: str = "auto",
        n_mcmc: int = 1, schedule="auto", seed: "int | None" = None, device="auto",
        progress: "bool | None" = None, **options):
    """Annealed importance sampling estimate of log Z with weighted samples.

    Parameters
    ----------
    target : Energy
        On a ``Reals`` or categorical domain.
    n_samples : int
        Number of particles (independent annealing runs, batched).
    n_steps, kernel, n_mcmc, schedule, **options :
        :class:`AISConfig` fields (levels, MCMC kernel and transitions per level, ladder; SMC,
        adaptive ladder, MBAR levels, temperature ladder).
    seed, device, progress :
        As in :func:`boltzkit.sample`.

    Returns
    -------
    Result
        Weighted samples, ``log_z`` +- ``log_z_stderr``; see the module docstring.
    """
    sampler = AIS(seed=seed, device=device, progress=progress, n_steps=n_steps, kernel=kernel,
                  n_mcmc=n_mcmc, schedule=schedule, **options)
    return sampler.fit(target).sample(n_samples)


__all__ = ["AIS", "AISConfig", "ais", "annealing_schedule", "metropolis_sweep"]
