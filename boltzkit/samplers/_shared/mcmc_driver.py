"""The one MCMC driver: burn-in, thinning, chains, progress, tau-based ESS and the Result.

A method built on it (MALA, the lattice moves, OLLA and its baselines) implements its kernel as
hooks and gets ``fit`` (start the chains, run ``burn_in`` steps on the ``"train"`` stream,
adapting where the method adapts) and ``sample(n)`` (continue on the ``"sample"`` stream, keep
every ``thin``-th state of each of ``n_chains`` chains, ordered step-major: sample
``t * n_chains + c`` is chain ``c`` at recorded step ``t``).

ESS = n / tau_int, tau_int the largest integrated autocorrelation time (Sokal's window,
:func:`~boltzkit.estimators.diagnostics.autocorr_estimate`) over the observables the method
names; ``log_z = None`` (MCMC gives no normalizing constant).

Hooks (see :class:`MCMCSampler`): ``_start(target, **kw)`` attaches the target and draws the
starting states; ``_transition(generator) -> (acceptance per chain or None, {stat: scalar})``
advances every chain one step (the stats go to ``history``); ``_adapt(t, acc)`` tunes during
burn-in; ``_record() -> {name: tensor}`` is what one recorded step keeps (``"x"``: the states);
``_observables(trace)`` the ``(name, (n_rec, n_chains) trace, sets_ess)`` whose tau_int are
measured; ``_finish(samples, trace, diag)`` maps the samples to the target's coordinates and adds
the method's diagnostics.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..._utils import progress_bar
from ...estimators.diagnostics import MIN_STEPS_PER_TAU, autocorr_estimate
from ...result import Result
from ..base import Sampler, SamplerConfig, check_count


@dataclass(frozen=True, kw_only=True)
class MCMCConfig(SamplerConfig):
    """Options of every MCMC sampler (each method sets its own defaults).

    n_chains : chains run in parallel (the batch dimension).
    burn_in : steps run by ``fit`` before sampling (``fit(n_steps=...)`` overrides it); the
        old name ``n_burnin`` is accepted as an alias.
    thin : steps between recorded states in ``sample``.
    """

    n_chains: int = 64
    burn_in: int = 1000
    thin: int = 1

    def __post_init__(self):
        super().__post_init__()
        check_count("n_chains", self.n_chains)
        check_count("burn_in", self.burn_in, minimum=0)
        check_count("thin", self.thin)


class MCMCSampler(Sampler):
    """Burn-in in ``fit``, thinned recording, tau-based ESS and the Result in ``sample``."""

    Config = MCMCConfig
    option_aliases: ClassVar[dict] = {"n_burnin": "burn_in"}
    log_z_unavailable: ClassVar[str] = ("MCMC draws samples without a normalizing constant; "
                                        "use method='ais' for log Z")
    step_unit: ClassVar[str] = "steps"  # what one step is called in messages ("sweeps")
    min_recorded: ClassVar[int] = 1  # recorded steps per chain at least
    tau_min_steps: ClassVar[float] = MIN_STEPS_PER_TAU  # chain length (in tau) for a reliable tau
    tau_needs_all: ClassVar[bool] = False  # reliable only if every observable converged

    def __init__(self, config=None, /, **kw):
        super().__init__(config, **kw)
        self.n_total = 0
        self.burn_in = 0
        self._history: dict[str, list] = {}

    # -- hooks
    def _start(self, target, **kw) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _transition(self, generator):  # pragma: no cover - abstract
        raise NotImplementedError

    def _adapt(self, t: int, acc) -> None:
        """Tune the kernel after burn-in step ``t`` (acceptance per chain); nothing by default."""

    def _after_burn_in(self, n_steps: int) -> None:
        """Checks once the burn-in has run; none by default."""

    def _record(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _observables(self, trace: dict) -> list:  # pragma: no cover - abstract (module docstring)
        raise NotImplementedError

    def _finish(self, samples: torch.Tensor, trace: dict, diag: dict) -> torch.Tensor:
        return samples

    def _warn_unreliable(self, obs: torch.Tensor, tau: float) -> None:
        autocorr_estimate(obs, min_steps_per_tau=self.tau_min_steps)  # emits the ConvergenceWarning

    # -- fit / sample
    def fit(self, target, *, n_steps: "int | None" = None, checkpoint=None, **kw) -> "MCMCSampler":
        """Attach ``target``, start the chains and run ``n_steps`` (default ``burn_in``) steps."""
        self._no_checkpoint(checkpoint)
        burn_in = self.config.burn_in if n_steps is None else n_steps
        check_count(f"n_steps (burn-in {self.step_unit})", burn_in, minimum=0)
        self.n_total, self._history = 0, {}
        self._start(target, **kw)
        self.burn_in = int(burn_in)
        bar = progress_bar(total=self.burn_in, desc=f"{self.name} burn-in", enabled=self.progress)
        for t in range(self.burn_in):
            acc = self._advance(self.gens["train"], t)
            self._adapt(t, acc)
            bar.update(1)
        bar.close()
        self._after_burn_in(self.burn_in)
        return self

    def _advance(self, generator, t: int):
        self._step_index = t  # within this run: named by the non-finite-energy checks
        acc, stats = self._transition(generator)
        self.n_total += 1
        for k, v in stats.items():
            self._history.setdefault(k, []).append(v)
        return acc

    @property
    def history(self) -> dict:
        """The per-step statistics since ``fit`` began (burn-in first), as float64 arrays."""
        return {k: torch.stack([t.to(torch.float64) for t in v]).cpu().numpy() if torch.is_tensor(v[0])
                else np.asarray(v, dtype=np.float64) for k, v in self._history.items()}

    def sample(self, n_samples: int) -> Result:
        """Continue the chains and return ``n_samples`` states (``n_chains`` per recorded step)."""
        self._require_fit()
        check_count("n_samples", n_samples)
        t0 = time.perf_counter()
        C, thin = self.config.n_chains, self.config.thin
        n_rec = max(self.min_recorded, -(-int(n_samples) // C))
        trace, accs = {}, []
        bar = progress_bar(total=n_rec * thin, desc=self.name, enabled=self.progress)
        for rec in range(n_rec):
            acc = None
            for i in range(thin):
                a = self._advance(self.gens["sample"], rec * thin + i)
                acc = a if acc is None else acc + a
                bar.update(1)
            for k, v in self._record().items():
                trace.setdefault(k, []).append(v)
            if acc is not None:
                accs.append(acc / thin)
        bar.close()
        wall = time.perf_counter() - t0
        trace = {k: torch.stack(v) for k, v in trace.items()}
        samples = trace["x"].flatten(0, 1)[:n_samples]
        ess, diag = self._ess(n_samples, self._observables(trace))
        diag.update({"log_z_unavailable": self.log_z_unavailable, "n_chains": C, "thin": thin,
                     "steps_per_chain": n_rec, "burn_in": self.burn_in, "total_steps": self.n_total,
                     "wall_time_s": wall, "sample_wall_time_s": wall,
                     "ess_per_second": ess / wall if wall > 0 else float("inf")})
        if accs:
            diag["acceptance"] = float(torch.stack(accs).mean())
        samples = self._finish(samples, trace, diag)
        kw = self._result_kwargs()
        kw["history"] = self.history
        return Result(samples=samples, log_weights=None, log_z=None, log_z_stderr=None, ess=ess,
                      diagnostics=diag, **kw)

    def _ess(self, n_samples: int, observables: list):
        """ESS = n / tau_int of the slowest ESS-setting observable; tau_int of every named one."""
        if observables[0][1].shape[0] < 2:  # one state per chain: independent draws given burn-in
            diag = {"tau_int": math.nan, "tau_converged": False}
            diag.update({f"tau_int_{name}": math.nan for name, _, _ in observables if name})
            return float(n_samples), diag
        ests = [autocorr_estimate(o, min_steps_per_tau=self.tau_min_steps, warn=False)
                for _, o, _ in observables]
        diag = {}
        for (name, _, _), est in zip(observables, ests):
            if name:
                diag[f"tau_int_{name}"] = est.tau
                diag[f"tau_int_{name}_stderr"] = est.stderr
        for_ess = [i for i, (_, _, sets) in enumerate(observables) if sets]
        worst = max(for_ess, key=lambda i: ests[i].tau)
        tau = ests[worst].tau
        converged = all(ests[i].converged for i in for_ess) if self.tau_needs_all else ests[worst].converged
        diag.update({"tau_int": tau, "tau_int_stderr": ests[worst].stderr, "tau_converged": converged})
        if not converged:
            self._warn_unreliable(observables[worst][1], tau)
        return n_samples / tau, diag
