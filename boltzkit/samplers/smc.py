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
from dataclasses import dataclass, replace

import numpy as np
import torch

from .._registry import register
from .._utils import progress_bar
from ..domains import Categorical
from ..errors import ConfigError, IncompatibleMethodError, TargetError
from ..result import result_from_log_weights
from ._shared.smc import ISLAND_MAX_SHARE, ISLAND_SPREAD_LIMIT, island_reliability  # noqa: F401
from .base import Sampler, SamplerConfig, _check_positive

KERNELS = ("auto", "heat_bath", "metropolis", "swendsen_wang")
MIN_ISLAND = 32          # particles per island, at least
LEVELS_PER_SQRT_SITE = 2.5  # adaptive ladder at cess 0.9: 38 levels for 16 x 16 Ising at beta_c, 20 for 8 x 8
                            # (x sqrt(log 0.9 / log cess): 72 at the default cess 0.97)
SWEEP_PER_ENERGY = 30.0     # a checkerboard heat-bath sweep: 10-100 energy evaluations measured (batch-size dependent)
MAX_ISLANDS = 32


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
    pilot : fraction of n_samples (at least 256) for an independent pilot run that chooses the
        adaptive ladder; the main run then uses it fixed, so its islands are exactly independent
        and each island's Z is exactly unbiased. 0 adapts on the main particles (O(1/N) coupling).
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
        for nm in ("cess", "resample_ess"):
            v = getattr(self, nm)
            if not (isinstance(v, (int, float)) and 0 < v < 1) or isinstance(v, bool):
                raise ConfigError(f"{nm} must be a fraction in (0, 1), got {v!r}")
        if self.n_sweeps is not None:
            _check_positive("n_sweeps", self.n_sweeps)
        if self.n_islands is not None:
            _check_positive("n_islands", self.n_islands)
        _check_positive("max_levels", self.max_levels)
        if not (isinstance(self.pilot, (int, float)) and 0 <= self.pilot < 1) or isinstance(self.pilot, bool):
            raise ConfigError(f"pilot must be a fraction in [0, 1), got {self.pilot!r}")
        if self.kernel not in KERNELS:
            raise ConfigError(f"unknown kernel {self.kernel!r}; use one of {KERNELS}")
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
    streams = ("init", "train", "sample")
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
        if checkpoint is not None:
            raise ConfigError("'smc' keeps no checkpoints (it does not train); leave checkpoint=None")
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

    def _run(self, n: int, M: int, ladder, *, pilot: bool = False) -> dict:
        """One SMC pass of ``n`` particles in ``M`` islands; ``ladder`` None adapts it (CESS)."""
        from ._shared.smc import resample_islands, running_log_z

        cfg = self.config
        gen, dev, dom = self.gens["sample"], self.device, self.target.domain
        log_z0 = dom.log_size()
        x = dom.reference(n, generator=gen, device=dev)
        logw = torch.zeros(n, dtype=torch.float64, device=dev)
        log_acc = torch.zeros(M, dtype=torch.float64, device=dev)
        zero = torch.zeros((), dtype=torch.float64, device=dev)
        running, lambdas, acc_hist, ess_hist = [(zero + log_z0, zero)], [0.0], [], []
        events, n_energy, lam = 0, 0, 0.0
        bar = progress_bar(total=1000, desc=f"smc ({self.kernel}{', ladder pilot' if pilot else ''})",
                           enabled=self.progress)
        try:
            with torch.no_grad():
                while lam < 1.0:
                    if len(lambdas) > cfg.max_levels:
                        raise ConfigError(f"the adaptive ladder needs more than max_levels="
                                          f"{cfg.max_levels} levels (at lambda={lam:.4g}); lower "
                                          "cess or raise max_levels")
                    u = self.target.energy(x).double()
                    n_energy += n
                    if not bool(torch.isfinite(u).all()):
                        raise TargetError(f"{self.target.name}.energy is not finite at lambda={lam:.4g}")
                    if ladder is not None:
                        new = ladder[len(lambdas)]
                    else:
                        new = next_lambda(logw, u, lam, cfg.cess, M)
                    logw = logw - (new - lam) * u
                    running.append(running_log_z(logw, log_acc, log_z0))
                    lw = logw.view(M, -1)
                    ess_hist.append(torch.exp(2 * torch.logsumexp(lw, 1) - torch.logsumexp(2 * lw, 1)).mean()
                                    / lw.shape[1])
                    (x,), logw, log_acc, k = resample_islands((x,), logw, log_acc, cfg.resample_ess, gen)
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

    def sample(self, n_samples: int):
        """Run SMC with ``n_samples`` particles; returns a weighted :class:`~boltzkit.result.Result`."""
        from .ais import running_history
        from ..estimators.importance import log_z_from_log_weights

        self._require_fit()
        _check_positive("n_samples", n_samples)
        cfg, n = self.config, int(n_samples)
        M = cfg.n_islands or default_n_islands(n)
        if n % M or n // M < 2:
            raise ConfigError(f"n_samples={n} must be a multiple of n_islands={M} with at least 2 "
                              f"particles per island; e.g. n_samples={M * max(2, -(-n // M))}")
        t0 = time.perf_counter()
        ladder, n_pilot = cfg.schedule, 0
        if ladder is None and cfg.pilot > 0:  # the ladder from an independent pilot: islands iid
            n_pilot = max(256, int(n * cfg.pilot))
            m_pilot = default_n_islands(n_pilot)
            n_pilot -= n_pilot % m_pilot
            ladder = tuple(self._run(n_pilot, m_pilot, None, pilot=True)["lambdas"])
        r = self._run(n, M, ladder)
        x, logw, log_acc, running, lambdas = r["x"], r["logw"], r["log_acc"], r["running"], r["lambdas"]
        acc_hist, ess_hist, events, log_z0 = r["acc"], r["ess"], r["events"], r["log_z0"]
        n_energy = r["n_energy"] + n_pilot * (len(lambdas) - 1)
        wall = time.perf_counter() - t0
        island_log_z = log_acc + torch.logsumexp(logw.view(M, -1), 1) - math.log(n // M) + log_z0
        lw_final = (logw + log_acc.repeat_interleave(n // M) + log_z0).cpu()
        isl = log_z_from_log_weights(island_log_z, warn=False)
        spread = float(island_log_z.std())
        history = {**running_history(lambdas, running),
                   "ess_frac": torch.stack(ess_hist).cpu().numpy(),
                   "acceptance": torch.stack(acc_hist).cpu().numpy(),
                   "island_log_z": island_log_z.cpu().numpy()}
        diag = {"kernel": self.kernel, "n_levels": len(lambdas) - 1, "n_sweeps": self.n_sweeps,
                "n_islands": M, "resample_events": events, "log_z0": log_z0,
                "log_z_stderr_from": "between islands", "island_log_z_std": spread,
                "island_ess_frac": isl.ess_frac, "energy_evaluations": n_energy,
                "sweeps_total": (n + n_pilot) * self.n_sweeps * (len(lambdas) - 1),
                "acceptance": float(np.mean(history["acceptance"])), "wall_time_s": wall,
                "adaptive_ladder": cfg.schedule is None,
                "ladder_from": ("explicit schedule" if cfg.schedule is not None else
                                f"independent pilot run ({n_pilot} particles)" if n_pilot else
                                "the particles themselves")}
        exact = getattr(self.target, "exact_log_z", lambda: None)()
        res = result_from_log_weights(x.cpu(), lw_final, exact_log_z=exact, diagnostics=diag,
                                      history=history, warn=False, **self._result_kwargs())
        res = replace(res, log_z_stderr=isl.stderr)
        island_reliability(res, island_log_z, stacklevel=3)
        return res


__all__ = ["SMC", "SMCConfig", "island_reliability", "cess_fraction", "next_lambda", "default_n_sweeps", "default_n_islands"]
