r"""Sequential Monte Carlo over inverse temperature for categorical energies (lattices, sequences).

Papers
------
* P. Del Moral, A. Doucet & A. Jasra, "Sequential Monte Carlo samplers", JRSS B 68, 411 (2006):
  the sampler (reweight, resample, move with a kernel that leaves the current level invariant).
* Y. Zhou, A. M. Johansen & J. A. D. Aston, "Toward automatic model comparison: an adaptive
  sequential Monte Carlo approach", J. Comput. Graph. Stat. 25, 701 (2016): the next level is
  chosen by bisection so that the conditional ESS of the incremental weights is a fixed fraction.
* C. Vergé, C. Dubarry, P. Del Moral & E. Moulines, "On parallel implementation of sequential
  Monte Carlo methods: the island particle model", Stat. Comput. 25, 243 (2015): independent
  islands, whose spread gives the error bar.

Objective
---------
The path ``gamma_lambda(x) = exp(-lambda U(x))`` runs from the uniform distribution (lambda = 0,
Z_0 = q^n_sites exactly) to the target (lambda = 1; for a lattice at inverse temperature beta,
level lambda is the lattice at lambda beta). With normalised weights W_{k-1} and the particles
x before they move::

    log Z_hat = log Z_0 + sum_k log sum_i W_{k-1}^i exp(-(lambda_k - lambda_{k-1}) U(x^i))

``lambda_k`` is the largest step whose conditional ESS ``(sum_i W^i w^i)^2 / sum_i W^i (w^i)^2``
(averaged over the islands) stays at ``cess`` (bisection). An island whose ESS falls below
``resample_ess`` of its size is resampled (systematic); then every particle takes ``n_sweeps``
sweeps of a kernel that leaves gamma_{lambda_k} invariant: checkerboard heat bath or
Swendsen-Wang where the target offers the ``lattice_model()`` hook (Ising, Potts;
:mod:`boltzkit.kernels.lattice`), random-scan Metropolis on any other categorical energy
(:mod:`boltzkit.kernels.categorical`). The particles are
split into ``n_islands`` islands that never exchange particles: each island's Z estimate is
unbiased, and log Z +- stderr come from their log-mean-exp and spread (delta method).

Defaults scale with the target: ``n_sweeps`` grows with the linear size of the lattice,
islands hold at least 32 particles, and the ladder is as fine as the energy's spread requires.

Returns
-------
A weighted :class:`~boltzkit.result.Result`: the final particles, island by island, with
float64 ``log_weights`` whose log-mean-exp is log Z_hat; ``history`` holds ``lambda`` (the
chosen ladder, levels 0..K), ``log_z_running`` +- ``log_z_running_stderr`` (log Z of every
intermediate level), ``ess_frac`` and ``acceptance`` per level (levels 1..K).

Failure modes
-------------
* The ladder is chosen by an independent pilot run (``pilot`` = 1/8 of the particles) and then
  held fixed, so the islands are exactly independent and Z exactly unbiased; with
  ``pilot=0`` it adapts on the particles themselves (an O(1/N) coupling of the islands).
* First-order transitions (Potts with q > 4 at beta_c) and slow mixing: if the kernel cannot
  move particles between phases within ``n_sweeps``, islands lose a phase and disagree; the
  spread (and the ``reliable`` flag, which requires the islands to agree) shows it, but an
  island set that all miss the same phase cannot be detected.
* log Z_hat is biased low by about stderr^2 / 2 (Jensen).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch

from .._registry import register
from .._utils import progress_bar
from ..domains import Categorical
from ..errors import ConfigError, ConvergenceWarning, IncompatibleMethodError, TargetError, UnreliableEstimateWarning
from ..estimators.importance import ess_kish
from ._shared.smc import (ANNEALING_ADVICE, IslandRun, check_islands, island_ess, island_reliability,
                          island_result, pool_islands, resample_islands, running_log_z)
from .base import Sampler, SamplerConfig, check_choice, check_count, check_fraction, check_number

KERNELS = ("auto", "heat_bath", "metropolis", "swendsen_wang")
MIN_ISLAND = 32          # particles per island, at least
LEVELS_PER_SQRT_SITE = 2.5  # adaptive ladder at cess 0.9: 38 levels for 16 x 16 Ising at beta_c, 20 for 8 x 8
                            # (x sqrt(log 0.9 / log cess): 72 at the default cess 0.97)
SWEEP_PER_ENERGY = 30.0     # a checkerboard heat-bath sweep: 10-100 energy evaluations measured (batch-size dependent)
MAX_ISLANDS = 32
COVERAGE_Z = 3.0  # a proposal start whose log Z_lam0 is this many combined error bars off is flagged


def default_n_sweeps(target) -> int:
    """Sweeps per level: grows with the linear size of the lattice, ``ceil(sqrt(n_sites) / 4)``,
    at least 2 (4 for 16 x 16). Measured on 16 x 16 Ising at beta_c, 4096 particles, CPU time x
    variance of log Z: cess 0.97 with 4 sweeps 0.034, cess 0.9 with 8 sweeps 0.068, cess 0.98
    with 2 sweeps 0.067 (one or two sweeps at cess 0.9: islands disagree, flagged unreliable)."""
    return max(2, math.ceil(math.sqrt(target.domain.n_sites) / 4))


def default_n_islands(n: int) -> int:
    """About ``n / MIN_ISLAND`` islands (2 to ``MAX_ISLANDS``): the divisor of ``n`` nearest to
    that with at least 2 particles per island (more islands on a tie); when ``n`` has none
    (a prime), the count itself, and ``n`` is refused."""
    want = int(min(MAX_ISLANDS, max(2, n // MIN_ISLAND)))
    divisors = [m for m in range(2, min(MAX_ISLANDS, n // 2) + 1) if n % m == 0]
    if not divisors:
        return want
    return min(divisors, key=lambda m: (abs(m - want), -m))


@dataclass(frozen=True, kw_only=True)
class SMCConfig(SamplerConfig):
    """Options of SMC over inverse temperature.

    cess : conditional-ESS fraction kept between consecutive levels (adaptive ladder).
    resample_ess : resample an island when its ESS falls below this fraction of its size.
    n_sweeps : kernel sweeps per level; None = :func:`default_n_sweeps`.
    kernel : "auto" (heat bath where the target offers lattice updates, else Metropolis),
        "heat_bath", "metropolis" or "swendsen_wang".
    n_islands : independent islands; None = :func:`default_n_islands` (n_samples must be a
        multiple of it).
    schedule : None (adaptive ladder) or an explicit increasing sequence of lambdas from 0 to 1.
    max_levels : stop with an error if the adaptive ladder needs more levels than this.
    pilot : fraction of n_samples (at least 256) for the independent pilot run that chooses the
        adaptive ladder (see Failure modes); 0 adapts on the main particles.
    """

    cess: float = 0.97
    resample_ess: float = 0.5
    n_sweeps: "int | None" = None
    kernel: str = "auto"
    n_islands: "int | None" = None
    schedule: "tuple | None" = None
    max_levels: int = 20_000
    pilot: float = 0.125

    def __post_init__(self):
        for name in ("cess", "resample_ess"):  # fractions in (0, 1)
            check_number(name, getattr(self, name))
            check_fraction(name, getattr(self, name))
        check_count("n_sweeps", self.n_sweeps, allow_none=True)
        check_count("n_islands", self.n_islands, allow_none=True)
        check_count("max_levels", self.max_levels)
        check_fraction("pilot", self.pilot)
        check_choice("kernel", self.kernel, KERNELS)
        if self.schedule is not None:
            from .ais import annealing_schedule

            lam = annealing_schedule(None, self.schedule)  # validates
            object.__setattr__(self, "schedule", tuple(float(v) for v in lam))


def _kernel_of(target, kernel: str):
    """(name, move(x, lam, generator) -> (x, acceptance)) for ``target``; reasons when refused."""
    from .ais import metropolis_sweep
    from ..kernels import lattice

    why_local = lattice.local_incompatibility(target)
    if kernel == "auto":
        kernel = "heat_bath" if why_local is None else "metropolis"
    if kernel == "heat_bath":
        if why_local is not None:
            raise IncompatibleMethodError(f"kernel 'heat_bath' {why_local}; use kernel='metropolis'")
        return kernel, lambda x, lam, gen: lattice.checkerboard_sweep(target, x, generator=gen, scale=lam,
                                                                      rule="heat_bath")
    if kernel == "swendsen_wang":
        why = lattice.cluster_incompatibility(target)
        if why is not None:
            raise IncompatibleMethodError(f"kernel 'swendsen_wang' {why}")
        return kernel, lambda x, lam, gen: lattice.swendsen_wang_update(target, x, generator=gen, scale=lam)
    return kernel, lambda x, lam, gen: metropolis_sweep(target, x, generator=gen, scale=lam)


def cess_fraction(logw: torch.Tensor, u: torch.Tensor, delta: float, n_islands: int) -> float:
    """Conditional ESS fraction of the step ``delta`` (Zhou, Johansen & Aston 2016), averaged
    over islands: ``(sum W w)^2 / sum W w^2`` with W the island-normalised weights and
    ``log w = -delta U``."""
    lw = logw.view(n_islands, -1)
    lW = lw - torch.logsumexp(lw, 1, keepdim=True)
    inc = -delta * u.view(n_islands, -1)
    num = 2 * torch.logsumexp(lW + inc, 1)
    den = torch.logsumexp(lW + 2 * inc, 1)
    return float(torch.exp(num - den).mean())


def checked_islands(n: int, n_islands: "int | None") -> int:
    """Islands for ``n`` particles: ``n_islands``, or :func:`default_n_islands` when None; checked."""
    M = n_islands or default_n_islands(n)
    check_islands(n, M)
    return M


def next_lambda(logw, u, lam: float, cess: float, n_islands: int, *, iters: int = 60) -> float:
    """Largest lambda' in (lam, 1] whose conditional ESS fraction is at least ``cess`` (bisection)."""
    hi = 1.0 - lam
    if cess_fraction(logw, u, hi, n_islands) >= cess:
        return 1.0
    lo = 0.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if cess_fraction(logw, u, mid, n_islands) >= cess:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-6 * hi:
            break
    return lam + max(lo, 1e-12)


def _local_moves(target) -> bool:
    from ..kernels.lattice import local_incompatibility

    return local_incompatibility(target) is None


@register("smc", kinds=("energy",), domains=(Categorical,), priority=1,
          paper="Del Moral, Doucet & Jasra 2006; Zhou, Johansen & Aston 2016",
          pays="lattices on a CPU: log Z with a calibrated error bar in seconds to minutes, no training "
               "(16x16 Ising at beta_c within 0.04 in ~30 CPU-s)",
          description="SMC over inverse temperature: adaptive ladder, island resampling, "
                      "heat-bath / cluster / Metropolis moves; log Z with an island error bar")
class SMC(Sampler):
    """Sequential Monte Carlo from the uniform distribution to exp(-U) with an adaptive ladder."""

    Config = SMCConfig
    default_n_samples = 4096

    @classmethod
    def estimate_seconds(cls, target, profile, n_samples: "int | None" = None, config=None) -> float:
        """Wall time with default options: n_samples x levels x (sweeps x sweep + one energy
        evaluation), levels ~ LEVELS_PER_SQRT_SITE sqrt(n_sites) (adaptive ladder), a sweep ~
        SWEEP_PER_ENERGY energy evaluations (heat bath) or n_sites of them (Metropolis)."""
        cfg = config or cls.Config()
        n = n_samples or cls.default_n_samples
        sites = target.domain.n_sites
        levels = len(cfg.schedule) - 1 if cfg.schedule else LEVELS_PER_SQRT_SITE * math.sqrt(sites) \
            * math.sqrt(math.log(0.9) / math.log(cfg.cess))
        per_sweep = SWEEP_PER_ENERGY if _local_moves(target) else 1.3 * sites
        sweeps = cfg.n_sweeps or default_n_sweeps(target)
        e = profile.energy_s if math.isfinite(profile.energy_s) else 1e-5
        pilot = cfg.pilot if not cfg.schedule else 0.0
        return float(n * (1.0 + pilot) * levels * (sweeps * per_sweep + 1.0) * e)

    @classmethod
    def n_samples_for_budget(cls, target, profile, budget: float, options=None) -> int:
        """The most particles, up to ``default_n_samples`` and down to 512 (powers of 2), whose
        estimated time is within half the ``budget`` (the estimates are good to a factor ~3)."""
        cfg = cls.Config(**(options or {}))
        n = cls.default_n_samples
        while n > 512 and cls.estimate_seconds(target, profile, n, cfg) > budget / 2.0:
            n //= 2
        return n

    def fit(self, target, *, n_steps: "int | None" = None, checkpoint=None) -> "SMC":
        """Check ``target`` and the options (nothing to train); ``n_steps`` sets ``n_sweeps``."""
        self._no_checkpoint(checkpoint)
        if n_steps is not None:
            self.config = self.make_config(self.config, n_sweeps=n_steps)
        if not isinstance(getattr(target, "domain", None), Categorical):
            raise IncompatibleMethodError(f"'smc' handles categorical domains, got "
                                          f"{type(getattr(target, 'domain', None)).__name__}; for "
                                          "continuous targets use method='ais' with resample_ess")
        self._attach(target)
        self.kernel, self._move = _kernel_of(self.target, self.config.kernel)
        self.n_sweeps = self.config.n_sweeps or default_n_sweeps(self.target)
        return self

    def _run(self, n: int, M: int, ladder, *, pilot: bool = False, start: "tuple | None" = None,
             generator: "torch.Generator | None" = None, stop: float = 1.0) -> dict:
        """One SMC pass of ``n`` particles in ``M`` islands; ``ladder`` None adapts it (CESS).

        ``start`` None: uniform particles at lambda = 0 (log Z_0 = n_sites log q exactly). Else a
        weighted proposal population ``(x, u, log_w, lam0)``: physical states, their float64
        energies and float64 log-weights w.r.t. exp(-lam0 U) whose mean estimates Z_lam0 (see
        :meth:`sample_from`); its first level keeps lambda = lam0 (resample and move the
        population there before tempering), so the ladder holds lam0 twice. An adaptive run
        ends at lambda = ``stop`` (a partial ladder: log Z of exp(-stop U))."""
        cfg = self.config
        dev, dom = self.device, self.target.domain
        gen = self.gens["sample"] if generator is None else generator
        zero = torch.zeros((), dtype=torch.float64, device=dev)
        log_acc = torch.zeros(M, dtype=torch.float64, device=dev)
        if start is None:
            log_z0, lam, u_start, first = dom.log_size(), 0.0, None, False
            x = dom.reference(n, generator=gen, device=dev)
            logw = torch.zeros(n, dtype=torch.float64, device=dev)
            running = [(zero + log_z0, zero)]
        else:
            x, u_start, logw, lam = start
            log_z0, first, lam = 0.0, True, float(lam)
            running = [running_log_z(logw, log_acc, 0.0)]
        lambdas, acc_hist, ess_hist = [lam], [], []
        events, n_energy = 0, 0
        bar = progress_bar(total=1000, desc=f"smc ({self.kernel}{', ladder pilot' if pilot else ''})",
                           enabled=self.progress)
        bar.update(int(1000 * lam))
        try:
            with torch.no_grad():
                while lam < stop or first:
                    if len(lambdas) > cfg.max_levels:
                        raise ConfigError(f"the adaptive ladder needs more than max_levels="
                                          f"{cfg.max_levels} levels (at lambda={lam:.4g}); lower "
                                          "cess or raise max_levels")
                    if u_start is not None:  # the proposal's own energies (counted by its caller)
                        u, u_start = u_start, None
                    else:
                        u = self.target.energy(x).double()
                        n_energy += n
                    if not bool(torch.isfinite(u).all()):
                        raise TargetError(f"{self.target.name}.energy is not finite at lambda={lam:.4g}")
                    if ladder is not None:
                        new = ladder[len(lambdas)]
                    elif first:
                        new = lam
                    else:
                        new = min(stop, next_lambda(logw, u, lam, cfg.cess, M))
                    first = False
                    logw = logw - (new - lam) * u
                    running.append(running_log_z(logw, log_acc, log_z0))
                    ess = island_ess(logw, M)
                    ess_hist.append(ess.mean() / (n // M))
                    (x,), logw, log_acc, k = resample_islands((x,), logw, log_acc, cfg.resample_ess, gen, ess=ess)
                    events += k
                    rate = torch.zeros((), dtype=torch.float64, device=dev)
                    for _ in range(self.n_sweeps):
                        x, acc = self._move(x, new, gen)
                        rate = rate + acc.double().mean()
                    acc_hist.append(rate / self.n_sweeps)
                    bar.update(int(1000 * new) - int(1000 * lam))
                    lam = new
                    lambdas.append(lam)
        finally:
            bar.close()
        return {"x": x, "logw": logw, "log_acc": log_acc, "running": running, "lambdas": lambdas,
                "acc": acc_hist, "ess": ess_hist, "events": events, "n_energy": n_energy, "log_z0": log_z0}

    def _pilot_size(self, n: int) -> int:
        """Particles of the independent ladder pilot (0 with a fixed schedule or ``pilot=0``)."""
        cfg = self.config
        if cfg.schedule is not None or cfg.pilot <= 0:
            return 0
        n_pilot = max(256, int(n * cfg.pilot))
        return n_pilot - n_pilot % default_n_islands(n_pilot)

    def sample(self, n_samples: int):
        """Run SMC with ``n_samples`` particles; returns a weighted :class:`~boltzkit.result.Result`."""
        return self._sample_uniform(n_samples)

    def _sample_uniform(self, n_samples: int, generator: "torch.Generator | None" = None):
        """:meth:`sample` on the random stream ``generator`` (default the sampler's own)."""
        self._require_fit()
        check_count("n_samples", n_samples)
        n = int(n_samples)
        M = checked_islands(n, self.config.n_islands)
        t0 = time.perf_counter()
        ladder, n_pilot = self.config.schedule, self._pilot_size(n)
        if n_pilot:  # the ladder from an independent pilot: islands iid
            ladder = tuple(self._run(n_pilot, default_n_islands(n_pilot), None, pilot=True,
                                     generator=generator)["lambdas"])
        r = self._run(n, M, ladder, generator=generator)
        r["n_energy"] += n_pilot * (len(r["lambdas"]) - 1)
        return self._finish(r, n, M, n_pilot, t0, {}, pilot_sweeps=n_pilot * self.n_sweeps * (len(r["lambdas"]) - 1))

    def _finish(self, r: dict, n: int, M: int, n_pilot: int, t0: float, extra: dict,
                who: "str | None" = None, pilot_sweeps: int = 0):
        """The weighted Result of one main run ``r`` (+ its pilots' sweeps), island error bar."""
        from .ais import running_history

        cfg = self.config
        x, logw, log_acc, running, lambdas = r["x"], r["logw"], r["log_acc"], r["running"], r["lambdas"]
        acc_hist, ess_hist, events, log_z0 = r["acc"], r["ess"], r["events"], r["log_z0"]
        wall = time.perf_counter() - t0
        island_log_z, lw_final = pool_islands(logw, log_acc)
        run = IslandRun(x, lw_final + log_z0, island_log_z + log_z0, events, None)
        history = {**running_history(lambdas, running),
                   "ess_frac": torch.stack(ess_hist).cpu().numpy(),
                   "acceptance": torch.stack(acc_hist).cpu().numpy(),
                   "island_log_z": run.island_log_z.cpu().numpy()}
        diag = {"kernel": self.kernel, "n_levels": len(lambdas) - 1, "n_sweeps": self.n_sweeps,
                "log_z0": log_z0, "island_ess_frac": ess_kish(run.island_log_z) / M,
                "energy_evaluations": r["n_energy"],
                "sweeps_total": n * self.n_sweeps * (len(lambdas) - 1) + pilot_sweeps,
                "acceptance": float(np.mean(history["acceptance"])), "wall_time_s": wall,
                "adaptive_ladder": cfg.schedule is None,
                "ladder_from": ("explicit schedule" if cfg.schedule is not None else
                                f"independent pilot run ({n_pilot} particles)" if n_pilot else
                                "the particles themselves"), **extra}
        exact = getattr(self.target, "exact_log_z", lambda: None)()
        advice = ANNEALING_ADVICE if who is None else (f"{who}: train longer, raise n_samples, n_sweeps or "
                                                      "cess, or use method='smc' from the uniform start.")
        return island_result(x.cpu(), run, exact_log_z=exact, diagnostics=diag, history=history, warn=False,
                             who="SMC", advice=advice, **self._result_kwargs())

    def sample_from(self, draw, n_samples: int, *, start_ess: float = 0.5,
                    generator: "torch.Generator | None" = None, who: str = "proposal"):
        r"""SMC over inverse temperature started from a weighted proposal population.

        ``draw(n, generator) -> (x, u, log_w)`` returns ``n`` physical states, their float64
        energies U(x) and float64 log-weights w.r.t. the target exp(-U) of the form
        ``log_w = -U(x) - log q(path)``, where ``q`` is the probability of the whole path that
        produced x (for MDNS the order of revelation and the values; for discrete ASBS the
        jump chain), so ``E[exp(log_w)] = Z`` (see :class:`NeuralStartSMC` for the construction).
        The start level is :func:`start_level` of an independent pilot draw (``pilot`` > 0 and no
        fixed ``schedule``); from there the ladder to lambda = 1 is adaptive (CESS) as in
        :meth:`sample`. ``generator`` (default the sampler's own ``sample`` stream) drives both
        the draws and the SMC moves. Returns the weighted Result with ``start_lambda``,
        ``start_ess_frac`` and ``proposal_draws`` in its diagnostics.
        """
        self._require_fit()
        check_count("n_samples", n_samples)
        check_number("start_ess", start_ess, upper=1)
        n = int(n_samples)
        M, n_pilot = checked_islands(n, self.config.n_islands), self._pilot_size(n)
        if not n_pilot:
            raise ConfigError("a proposal start needs the independent pilot (it chooses the start level "
                              "and the ladder, and checks the proposal's coverage): leave schedule=None "
                              "and pilot > 0")
        gen = self.gens["sample"] if generator is None else generator
        t0 = time.perf_counter()

        def population(m, lam0=None):
            x, u, lw = draw(m, gen)
            u, lw = u.to(self.device, torch.float64), lw.to(self.device, torch.float64)
            lam0, ess = start_level(u, lw, start_ess) if lam0 is None else (lam0, None)
            return (x.to(self.device), u, lw + (1.0 - lam0) * u, lam0), ess

        m_pilot = default_n_islands(n_pilot)
        pilot_start, pilot_ess = population(n_pilot)
        if pilot_ess < start_ess:  # the proposal helps at no level: plain SMC from the uniform start
            res = self._sample_uniform(n, gen)
            res.diagnostics.update(start="uniform", start_lambda=0.0, start_ess_frac=pilot_ess,
                                   start_ess_target=start_ess, proposal_draws=n_pilot, proposal=who,
                                   energy_evaluations=res.diagnostics["energy_evaluations"] + n_pilot)
            warnings.warn(f"{who}: the proposal's ESS stays below start_ess={start_ess} at every "
                          f"inverse temperature (best {pilot_ess:.3g}); ran plain SMC from the uniform "
                          "start instead. Train the sampler longer.", ConvergenceWarning, stacklevel=3)
            return res
        lam0 = pilot_start[3]
        # the start level and the ladder from an independent pilot: islands iid
        rp = self._run(n_pilot, m_pilot, None, pilot=True, start=pilot_start, generator=gen)
        ladder = tuple(rp["lambdas"])
        # coverage reference: plain SMC from the uniform start (exact Z_0) up to lam0, independent
        rc = self._run(n_pilot, m_pilot, None, pilot=True, generator=gen, stop=lam0)
        ref_lz, ref_se = (float(v) for v in rc["running"][-1])
        start, _ = population(n, lam0)
        lw0 = start[2]
        ess0 = ess_kish(lw0) / n
        r = self._run(n, M, ladder, start=start, generator=gen)
        lz0, se0 = (float(v) for v in r["running"][0])
        r["n_energy"] += rp["n_energy"] + rc["n_energy"] + n + n_pilot
        z = (lz0 - ref_lz) / math.sqrt(se0 ** 2 + ref_se ** 2) if se0 + ref_se > 0 else \
            (0.0 if lz0 == ref_lz else math.inf)
        extra = {"start": "proposal", "start_lambda": lam0, "start_ess_frac": ess0,
                 "start_ess_target": start_ess, "proposal_draws": n + n_pilot, "proposal": who,
                 "start_log_z": lz0, "start_log_z_stderr": se0, "start_log_z_reference": ref_lz,
                 "start_log_z_reference_stderr": ref_se, "start_coverage_z": z,
                 "coverage_levels": len(rc["lambdas"]) - 1}
        sweeps = self.n_sweeps * n_pilot * (len(rp["lambdas"]) + len(rc["lambdas"]) - 2)
        res = self._finish(r, n, M, n_pilot, t0, extra, who=who, pilot_sweeps=sweeps)
        if not abs(z) <= COVERAGE_Z:
            d = res.diagnostics
            why = (f"the proposal's log Z at the start level lambda={lam0:.3g} ({lz0:.4f} +- {se0:.2g}) "
                   f"disagrees with an independent SMC from the uniform start ({ref_lz:.4f} +- "
                   f"{ref_se:.2g}; z = {z:.1f}): the proposal misses mass there")
            d["unreliable_because"] = "; ".join(filter(None, (d.get("unreliable_because"), why)))
            if d.get("reliable", True):
                warnings.warn(f"{who}: {why}. Train the sampler longer or use method='smc'.",
                              UnreliableEstimateWarning, stacklevel=3)
            d["reliable"] = False
        return res

def start_level(u: torch.Tensor, log_w: torch.Tensor, start_ess: float, *, grid: int = 200
                ) -> "tuple[float, float]":
    """The start level of SMC from a weighted proposal: the largest lambda in [0, 1] at which
    the weights ``log_w + (1 - lambda) u`` (w.r.t. exp(-lambda U)) keep a Kish ESS fraction of at
    least ``start_ess`` (a grid of ``grid`` steps, then bisection on the last crossing); where no
    lambda does, the lambda of the largest ESS. Returns ``(lambda, ESS fraction there)``.

    The ESS need not be monotone in lambda (a proposal trained at a warm-up factor s fits
    exp(-s U) best), hence the grid before the bisection."""
    n = u.numel()

    def ess(lam):
        lam = torch.as_tensor(lam, dtype=torch.float64, device=u.device).reshape(-1, 1)
        return island_ess(log_w[None] + (1.0 - lam) * u[None], lam.numel()) / n

    lams = torch.linspace(0.0, 1.0, grid + 1, dtype=torch.float64, device=u.device)
    e = ess(lams)
    ok = torch.nonzero(e >= start_ess).flatten()
    if ok.numel() == 0:
        k = int(torch.argmax(e))
        return float(lams[k]), float(e[k])
    k = int(ok[-1])
    if k == grid:
        return 1.0, float(e[k])
    lo, hi = float(lams[k]), float(lams[k + 1])
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if float(ess(mid)[0]) >= start_ess:
            lo = mid
        else:
            hi = mid
    return lo, float(ess(lo)[0])


class NeuralStartSMC:
    r"""SMC over inverse temperature started from a trained path sampler (``sample_smc``).

    For masked (MDNS) and uniform-noise (discrete ASBS) CTMC samplers, whose marginal q(x) is
    intractable and whose samples carry path log-weights only. Papers: Del Moral, Doucet &
    Jasra, JRSS B 68 (2006) (SMC samplers with an importance-weighted start and auxiliary
    path variables); Zhou, Johansen & Aston, JCGS 25 (2016) (adaptive ladder); the lattice
    sampler this starts is :class:`SMC`.

    Construction. A path omega (MDNS: the order of revelation and the values; discrete ASBS:
    the jump chain) ends at x and has probability Q(omega) under the trained sampler. Its
    weight ``w = exp(-U(x)) B(omega | x) / Q(omega)`` (B: the backward kernel fixed by the
    method, e.g. a uniform order for MDNS) is what :meth:`sample` returns. On the extended space,
    ``P_s(omega) = exp(-s U(x)) B(omega | x) / Z_s`` has the x-marginal pi_s = exp(-s U) / Z_s,
    and ``w_s = w exp((1 - s) U(x))`` is its importance weight. So

        log Z_hat = log (1/N) sum_i w_{s0}(omega_i)  +  sum_{k >= 1} log sum_i W_{k-1}^i exp(-(s_k - s_{k-1}) U(x_k^i))

    is SMC from the weighted population at s0 to s = 1 (the path is dropped after weighting;
    heat-bath or Swendsen-Wang sweeps leave each pi_{s_k} invariant, resampling within
    independent islands), and ``E[Z_hat] = Z`` for any trained or untrained network and any
    fixed ladder. s0 = :func:`start_level`: the largest s at which the proposal's weights keep
    an ESS fraction of ``start_ess`` on an independent pilot draw, which also fixes the ladder,
    so the islands are independent and their spread gives the error bar
    (:func:`~boltzkit.samplers._shared.smc.island_reliability` flags them as in :class:`SMC`).

    * A good sampler (ESS at s = 1 above ``start_ess``): s0 = 1; the one level is resampling
      and sweeps at the target. log Z is then the sampler's own importance estimate, with an
      error bar from the islands' spread instead of the delta method, and the samples are
      rejuvenated (more distinct states).
    * A sampler trained at a warm-up factor s < 1, or briefly: it starts where its weights are
      healthy and the lattice kernel tempers the rest.
    * A sampler whose pilot ESS is below ``start_ess`` at every s: plain :class:`SMC` from the
      uniform start runs instead (``diagnostics["start"] = "uniform"``, a ConvergenceWarning).

    Coverage check. Importance weights cannot see mass the proposal never reaches, and the
    tempering after s0 cannot restore it: Z_hat is low by the missed fraction of Z_{s0}. So an
    independent plain SMC from the uniform start (exact Z_0) up to s0, with the pilot's
    particle number, estimates log Z_{s0} too; when the proposal's estimate at s0 disagrees
    with it by more than ``COVERAGE_Z`` = 3 combined error bars the result is flagged
    unreliable (``start_coverage_z``). Measured on 3x3 Potts with a randomised network: the
    proposal started at s0 = 0.11 with 10 nats missing, every island agreeing (flagged only by
    this check). It costs the pilot's share of plain SMC up to s0 (1/8 of the particles).

    Why not the alternatives. Tempering between the proposal and the target on the extended
    space (gamma_s = Q^{1-s} P^s) needs moves that leave it invariant: a local sweep changes x
    and so Q(omega), which costs a teacher-forced re-evaluation (D network passes for MDNS)
    per move; independence Metropolis-Hastings with fresh neural paths is valid but costs a
    whole draw per move and can only reach what the sampler proposes. Both are far dearer than
    heat-bath sweeps at CPU scale; neither gives a better log Z than starting the tempering where
    the proposal is good.

    Measured (``benchmarks/lattice_neural_smc.py``, 2048 samples, critical lattices, CPU): a
    briefly trained MDNS whose own estimate is 1.7 low on 8 x 8 Ising (z -4 to -10) and 1.1 low
    on 4 x 4 Potts q = 3 gives 0.030 +- 0.042 and 0.005 +- 0.032 corrected; trained longer, the
    error bar at equal energy evaluations is 3x (Ising 8 x 8) to 6x (Potts) smaller than plain
    SMC's. In CPU time plain SMC still wins once training counts (115x on Ising 8 x 8, ~7x on
    Potts 4 x 4); the corrected sampling alone is 4x slower than plain SMC on Ising 8 x 8 and
    ~5x faster on Potts 4 x 4 at equal error bar (plain SMC extrapolated by 1/sqrt(n)).

    Failure modes. At beta_c most of the thermodynamic length lies near s = 1, so a start at
    s0 well below 1 saves few levels over plain SMC while paying D network passes per particle
    (and the coverage pilot); a sampler that misses a phase at s0 (mode collapse) is caught
    only when the missed mass exceeds about 3 error bars of the coverage pilot (at s0 = 1 and
    the default pilot, a missed Ising phase, log 2, is far beyond that; a small missed tail is
    not); start weights at ESS ~0.5 can be heavier-tailed than 32 islands show (30 runs on
    4 x 4 Potts q = 3 from a 30-step sampler: rms z 1.30, one run at z = -3.1 unflagged; another
    sampler 0.97; 4 x 4 Ising 0.94, 30/30 within 3); the ESS that sets s0 is itself estimated from the weights (optimistic for heavy
    tails). The host class implements ``_smc_proposal(n, generator) -> (x flat index (n, D),
    u float64, log_w float64)``.
    """

    def sample_smc(self, n_samples: int, *, start_ess: "float | None" = None, cess: float = 0.97,
                   n_sweeps: "int | None" = None, kernel: str = "auto", n_islands: "int | None" = None,
                   resample_ess: float = 0.5, pilot: float = 0.125):
        """Draw ``n_samples`` paths, weight them to exp(-s0 U) and run SMC from s0 to the
        target (see the class). ``start_ess`` None takes the config's ``smc_start_ess`` (0.5);
        the other options are :class:`SMCConfig`'s. Diagnostics add the start level
        (``start_lambda``), the proposal's ESS there, and ``energy_evaluations`` /
        ``sweeps_total`` of this call (proposal draws and pilot included; training is in
        ``train_*``). Returns a weighted :class:`~boltzkit.result.Result`."""
        self._require_fit()
        if start_ess is None:
            start_ess = getattr(self.config, "smc_start_ess", 0.5)
        smc = SMC(SMCConfig(cess=cess, n_sweeps=n_sweeps, kernel=kernel, n_islands=n_islands,
                            resample_ess=resample_ess, pilot=pilot),
                  device=self.device, seed=self.seed, progress=self.progress).fit(self.target)
        dom = self.target.domain

        def draw(m, generator):
            x, u, lw = self._smc_proposal(m, generator)
            return dom.decode_flat(x), u, lw

        kw = self._result_kwargs()
        res = smc.sample_from(draw, n_samples, start_ess=start_ess, generator=self.gens["sample"],
                              who=f"{self.name} + SMC")
        diag = {**res.diagnostics, **self._train_diagnostics(), "smc": True, "smc_options": smc.config_dict()}
        path = {k if k in ("lambda", "log_z_running", "log_z_running_stderr", "island_log_z") else
                "smc_" + k: v for k, v in res.history.items()}  # the training history keeps its keys
        return replace(res, diagnostics=diag, history={**kw.get("history", {}), **path},
                       **{k: kw[k] for k in ("method", "config", "seed")})

__all__ = ["SMC", "SMCConfig", "NeuralStartSMC", "start_level", "island_reliability", "cess_fraction", "next_lambda", "default_n_sweeps", "default_n_islands"]
