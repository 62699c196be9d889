r"""NAAS: Non-equilibrium Annealed Adjoint Sampler.

Paper
-----
Choi, Chen, Tao & Liu, "Non-equilibrium Annealed Adjoint Sampler", arXiv 2506.18165
(NeurIPS 2025). No public code exists; this implementation follows the boltzkit research brief
(``continuous_samplers.md`` sections 4-5), which reconstructs the equations. Where the brief
marks a detail as open, the choice made here is stated below.

Objective
---------
An annealed Langevin reference along ``U_t = (1 - beta_t) U_0 + beta_t E`` with
``U_0(x) = |x|^2 / (2 s_0^2)`` (``s_0 = prior_std``) is corrected by a learned control ``v``
(paper form, ``dX = [-(sigma_t^2/2) grad U_t(X) + sigma_t v(t, X)] dt + sigma_t dW``) that solves

    min_v  E[ int_0^1 ( 1/2 |v_t|^2 + d_t U_t(X_t) ) dt ],

learned by adjoint matching on a replay buffer: ``v(t_k, x_k) ~ -sigma_{t_k} a_k``, where ``a``
is the lean adjoint of the Jarzynski work (terminal condition 0). The initial law that makes
the terminal law exactly ``exp(-E)/Z`` is ``exp(-U_0 - V_0)``, with ``V_0`` the value function
at ``t = 0``; a second, memoryless **prior stage** (a variance-exploding Brownian motion from
the origin whose time-1 law is ``N(0, s_0^2) = pi_0``) learns to produce it by reciprocal
adjoint matching (Adjoint Sampling's RAM) with terminal-cost gradient ``grad V_0``. The two
stages alternate inside every training step.

Returns
-------
:meth:`NAAS.sample` returns a :class:`~boltzkit.result.Result` of weighted samples. The log
importance weight of each sample is the exact discrete-time path weight of the whole chain
(prior stage + annealed stage, brief section 5): Brownian-bridge backward kernels on the prior
stage (whose Euler steps use the exact noise variance, so they telescope exactly) and reverse
annealed-Langevin (ULA) kernels on the annealed stage, so ``E[w] = Z`` exactly for any step
count and any control; ``log_z``, its standard error and the ESS come from
:func:`boltzkit.result.result_from_log_weights`. With zero controls the weight is the AIS /
Jarzynski weight of the annealed Langevin chain started from ``pi_0``. ``history`` holds the
loss, the ESS fraction and log Z of each step's fresh trajectories, and a running log Z.

Choices made where the brief leaves NAAS open (each chosen to pass the exact-truth tests)
-------------------------------------------------------------------------------------------
* Path ``beta_t = t^beta_power`` (default linear; powers > 1 keep the early levels smooth for
  widely spread modes), uniform grid (``refine_end`` refines it near ``t = 1``).
* Diffusion ``sigma_t^2 = 2 relaxation / L_t`` with ``L_t = (1 - beta_t)/s_0^2 + beta_t/s_1^2``
  (``s_1 = target_scale``): the reference relaxes ``relaxation`` e-folds per unit time at
  every level whatever the curvature, and the ULA step ``h sigma_t^2 L_t / 2 = h relaxation``
  stays small at the stiff end of the path (brief pitfall 5). A fixed ``sigma`` overrides it.
* Paper form ``sigma_t v`` for the annealed control (the network outputs ``v``, O(1) under the
  schedule above); regression target ``-sigma_t a``.
* Running cost in discrete time: the exact AIS work increments
  ``c_k(x_{k+1}) = (beta_{k+1} - beta_k)(E - U_0)(x_{k+1})``; the adjoint is the exact
  discrete derivative of the future work with noise and control held fixed
  (:func:`~boltzkit.nn.sde.lean_adjoint`), so it matches autograd through the
  unrolled chain (tested).
* Replay: the annealed-stage buffer holds by default only the rows of the current
  iteration's fresh trajectories (``buffer_size=None``), each reused for
  ``updates_per_step`` Adam steps. The lean-adjoint target is a fixed-point regression whose
  conditional mean is ``grad V`` only for trajectories of the current control; with a buffer
  of ~12 iterations of stale trajectories (the former default, 50 000 rows) the ESS on
  GMM-40 after 30 steps was 0.03 against 0.19 with fresh rows only (150 steps: 0.06 vs
  0.14; ``benchmarks/naas_continuous.py``).
* Importance-weighted regression (``importance_weighted=True``, default): every buffer row
  of a fresh trajectory is weighted by ``B softmax(log w)``, its self-normalized path weight
  (prior stage included). Under the optimal path measure ``P* ~ P^u w`` the lean adjoint is
  the pathwise derivative of the work along the reference flow, so
  ``E_{P*}[a_k | x_k] = grad V_k(x_k)`` whatever the current control ``u``: the weighted
  regression targets the optimal control directly, where the paper's on-policy regression
  only has it as a fixed point. The on-policy iteration collapses onto the wider mode of a
  two-mode mixture with unequal widths (1-D, modes at -6 and 6 with widths 0.4 and 1.2:
  unweighted, 100 % of samples in the wide mode and log Z off by log 2; weighted, 51 % and
  log Z within 0.01; the exact optimal control of the discretized chain, computed on a grid,
  gives 53 %), and the same holds on the prior stage's reciprocal regression. The price is
  the variance of the weights: the regression sees about ``ESS * B`` trajectories. Where the
  weights degenerate (many-well-32: batch ESS ~0.001) the weights are tempered, ``w^a`` with
  the largest ``a <= 1`` that keeps the batch ESS fraction at ``min_weight_ess`` (0.05), as
  adaptive SMC tempers its incremental weights; ``a = 0`` is the paper's on-policy regression.
* Adjoint clipping (``adjoint_clip``, default 10): after each backward step every adjoint is
  scaled down to at most ``adjoint_clip`` times the batch median norm. Pathwise derivatives
  of the work explode for trajectories that linger near saddles between modes (the
  linearized Langevin flow is expanding there); unclipped, these rare targets destabilized
  training on every mixture tried. Clipping biases the regression target, never the weights.
* Prior stage: Adjoint-Sampling type -- Dirac start, variance-exploding noise with
  ``v(s) = s_0^2 (1 - r^{-2s}) / (1 - r^{-2})`` (``r = prior_noise_ratio``) so the time-1 law is
  exactly ``pi_0``, ``U_0 + log p^base_1`` is constant and the terminal-cost gradient is
  ``grad V_0`` alone. Control in code form ``g^2 c`` with the network output scaled by
  ``1 / sqrt(v(1) - v(s) + s_1^2)`` (the size of the optimal control), which keeps the stiff
  early steps stable. The regression target ``-grad V_0(x_0)`` is the clipped per-trajectory
  adjoint ``-a_0`` of the annealed stage (brief 4.4, second option): reading ``grad V_0`` off
  the annealed network instead made the prior run away to regions where that network
  extrapolates.
* SCLD training (``train_on="smc"``; Chen, Richter, Berner et al., "Sequential Controlled
  Langevin Diffusions", ICLR 2025, arXiv 2412.07081): instead of adjoint matching, every step
  runs the controlled path as SMC from ``pi_0`` (no prior stage), cut into ``scld_segments``
  equal segments with resampling (and ``smc_mcmc_steps`` MALA moves) at each boundary, stores
  each particle's segment in a replay buffer, and minimizes the mean over segments of the
  variance of their log-weights (objective and failure modes:
  :mod:`boltzkit.samplers._shared.scld`). By default (``scld_backward="learned"``) the
  backward kernels are learned with the same network, as in SCLD's CMCD form: reverse ULA
  shifted by ``-h_k sigma_{t_k} v(t_{k+1}, x_{k+1})``, in training and in :meth:`NAAS.sample`
  and :meth:`NAAS.sample_smc` alike (any normalized backward kernel keeps ``E[w] = Z``; one
  more network pass per step). With the fixed reverse-ULA kernel (``"fixed"``) no control
  flattens the annealing increments (the failure mode there): on a 2-D Gaussian (16 levels,
  40 steps) the segment log-variance fell 4.97 -> 2.98 and the whole-path ESS *dropped*
  0.16 -> 0.03, against 0.23 and 0.57 with the learned kernel. Training needs no Hessian-vector
  products (one energy gradient per particle and level, one energy per particle and segment).
* Energy gradients may be clipped (``grad_clip``; per particle on particle systems, per
  sample otherwise). The clipped gradient defines the reference drift *and* its backward
  kernels, so the weights stay exact. ``grad_clip="auto"`` (default) clips at
  ``10 sqrt(n_dof)`` in a prior-hint frame (about ten times the equilibrium gradient norm
  there; explicit Euler on a molecule otherwise blows up at the first clash) and not at all
  otherwise.
* Coordinates: when the target gives a :meth:`~boltzkit.energies.Energy.prior_hint`
  ``x = loc + S z`` (``use_prior_hint=True``, default), both stages run in ``z``: the prior
  ``pi_0 = N(0, s_0^2 I)`` in ``z`` is ``N(loc, s_0^2 S S^T)`` in ``x`` (for a molecule: the
  harmonic approximation of its minimized structure), ``prior_std`` and ``target_scale`` are
  in units of ``S`` (1 and 1 are then natural), and samples are returned in ``x`` with
  ``log w_x = log w_z + log|det S|``. This replaces hand-shifting a target to the origin.

Failure modes
-------------
* Cost: every fresh trajectory needs ``K + 1`` energy gradients forward and ``K`` Hessian-vector
  products backward (the replay buffer amortizes them over ``updates_per_step`` updates). At
  equal energy evaluations, plain AIS with MALA moves beat NAAS on GMM-40 in the CPU benchmark
  (``benchmarks/naas_continuous.py``).
* Slow gains over the uncontrolled chain: on GMM-40 (``prior_std`` 25, K = 64, CPU) the
  untrained annealed-Langevin chain has ESS 0.23; 150 training steps keep it there (0.23,
  log Z error -0.03 +- 0.03) and 600 steps at ``lr=3e-4`` reach 0.26, while AIS with MALA
  moves reaches 0.83 at equal energy evaluations. With ``importance_weighted=False`` (the
  paper's on-policy regression) the same 150 steps *lowered* the ESS to 0.14 and drifted
  the mode masses (total variation 0.10 vs 0.07). Compare with ``n_steps=0`` before
  trusting a trained sampler.
* Degenerate weights: where the batch ESS is tiny (many-well-32 at CPU budget, ~0.001) the
  tempered regression is close to the on-policy one and nothing corrects the mode masses;
  the importance weights then rest on a handful of samples (check ``ess_frac`` and
  ``pareto_k``).
* Mode weights: geometric annealing fixes the mode proportions of the reference when the
  modes separate (broad modes are favoured); the pathwise adjoint carries little
  information across barriers, and only the importance weighting of the regression moves
  mass between modes.
* SCLD training (``train_on="smc"``): the log-variance gradient is a score-function
  estimate weighted by the centred segment log-weights, noisy where those are heavy-tailed
  (many-well-32). Measured against SMC at equal evaluations in ``benchmarks/scld.py``.
* A too large ``relaxation * h`` or a stiff energy (Lennard-Jones) makes explicit Euler
  unstable (``TrainingDivergedError``): raise ``n_time_steps``, lower ``relaxation`` or set
  ``grad_clip``.
* ``prior_std`` must cover the target and ``target_scale`` should be the width of the
  narrowest well. Left at None (default) they come from the target's prior hint or, without
  one, from the scale probe (:mod:`boltzkit.probe`); the probe can miss a narrow mode far
  from wide ones, and then the prior does not cover it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import torch

from .. import distributed as dist
from .._finite import check_energies
from .._registry import register
from ..domains import Reals
from ..energies.base import framed
from ..domains.particles import ParticleCloud
from ..errors import ConfigError, IncompatibleMethodError, NonFiniteEnergyError, TrainingDivergedError
from ..estimators.importance import log_z_from_log_weights, power_for_ess
from ..result import result_from_log_weights
from ..nn.continuous_nets import make_control_net
from ..nn.ema import EMA
from ..nn.buffers import ReplayBuffer
from ._shared.scld import (check_smc_config, control_shift, controlled_backward, segment_buffer,
                           segment_loss, segment_rollout)
from ._shared.smc import MALARejuvenation, controlled_islands, island_result
from ..kernels.langevin import default_step_size
from ..nn.sde import (VEPriorSchedule, brownian_bridge_kernel, euler_maruyama,
                          gaussian_log_prob, lean_adjoint, reversed_reference_kernel, state_noise,
                          state_space, time_grid)
from .._utils import check_fraction
from .base import SamplerConfig, TrainableSampler, check_count, check_choice, check_flag, check_number

__all__ = ["NAAS", "NAASConfig", "AnnealedLangevin"]

AUTO_CLIP = 10.0  # grad_clip="auto" in a prior-hint frame: 10 x the equilibrium gradient norm
SCLD_GRAD_CLIP = 1.0  # train_on="smc": network gradient norm clip (SCLD's reference default)


@dataclass(frozen=True, kw_only=True)
class NAASConfig(SamplerConfig):
    """Options of :class:`NAAS` (defaults: a 2-D mixture trains in about a minute on CPU).

    Path and reference
        prior_std (s_0), target_scale (s_1) (both None by default: 1 and 1 in the frame of the
        target's prior hint, or, without a hint, 1 and the narrowest harmonic width in the
        frame of the scale probe, :func:`boltzkit.probe.probe_frame`; giving either one turns
        the probe off and leaves the other at 1), relaxation, sigma (fixed diffusion, overrides the
        schedule), beta_power, n_time_steps (K), refine_end, grad_clip, adjoint_clip
        (relative to the batch median; None disables).
    Prior stage
        prior_stage (False: start from pi_0 = N(0, s_0^2) directly), prior_time_steps,
        prior_noise_ratio (sigma_max / sigma_min of its VE noise), prior_updates_per_step,
        prior_buffer_size, prior_lr.
    Training
        n_steps (training iterations), batch_size (fresh trajectories per iteration),
        updates_per_step (Adam steps per iteration), train_batch_size, buffer_size (rows;
        None = the rows of one iteration's fresh trajectories, i.e. on-policy regression),
        times_per_trajectory (time points per fresh trajectory pushed to the buffer), lr,
        hidden, n_layers, ema_decay (None: no EMA), running_window (iterations pooled in
        the running log Z), train_on ("paths": adjoint matching; "smc": SCLD training, see the
        module docstring; the prior stage is then off), scld_segments (equal segments of the
        path, a divisor of n_time_steps), scld_buffer_size (segment rows kept; None = 4
        iterations' rows), scld_backward ("learned" or "fixed" backward kernels, module docstring).
    Sampling
        sample_batch_size; resample_ess (None: plain importance sampling of whole paths; a
        fraction in (0, 1]: the sampled chain runs as an SMC sampler, see
        :meth:`NAAS.sample_smc`), n_islands (independent particle islands of the SMC sampler;
        its log Z error bar comes from their spread), smc_mcmc_steps (MALA rejuvenation steps
        per level of the SMC sampler; 0: none).
    Regression and coordinates (module docstring)
        importance_weighted (False: the paper's on-policy regression), min_weight_ess (the
        weights' tempering keeps their batch ESS fraction at least this), use_prior_hint (run
        in the standardized frame of the target's prior hint).
    """

    n_steps: int = 200
    n_time_steps: int = 64
    prior_std: "float | None" = None
    target_scale: "float | None" = None
    relaxation: float = 3.0
    sigma: "float | None" = None
    beta_power: float = 1.0
    refine_end: float = 1.0
    grad_clip: "float | str | None" = "auto"
    adjoint_clip: "float | None" = 10.0
    prior_stage: bool = True
    prior_time_steps: int = 32
    prior_noise_ratio: float = 1000.0
    prior_updates_per_step: int = 20
    prior_buffer_size: int = 10_000
    prior_lr: float = 1e-3
    batch_size: int = 256
    updates_per_step: int = 20
    train_batch_size: int = 512
    buffer_size: "int | None" = None
    times_per_trajectory: int = 16
    lr: float = 1e-3
    hidden: int = 64
    n_layers: "int | None" = None
    ema_decay: "float | None" = 0.99
    running_window: int = 10
    sample_batch_size: int = 2048
    use_prior_hint: bool = True
    importance_weighted: bool = True
    min_weight_ess: float = 0.05
    resample_ess: "float | None" = None
    n_islands: int = 16
    smc_mcmc_steps: int = 0
    train_on: str = "paths"
    scld_segments: int = 8
    scld_buffer_size: "int | None" = None
    scld_backward: str = "learned"

    def __post_init__(self):
        for nm in ("n_steps", "n_time_steps", "prior_time_steps", "prior_updates_per_step",
                   "prior_buffer_size", "batch_size", "updates_per_step", "train_batch_size",
                   "times_per_trajectory", "hidden", "running_window", "sample_batch_size"):
            check_count(nm, getattr(self, nm))
        for nm in ("n_layers", "buffer_size"):
            check_count(nm, getattr(self, nm), allow_none=True)
        for nm in ("relaxation", "beta_power", "lr", "prior_lr", "prior_noise_ratio"):
            check_number(nm, getattr(self, nm))
        for nm in ("prior_std", "target_scale", "sigma", "adjoint_clip"):
            check_number(nm, getattr(self, nm), allow_none=True)
        if self.prior_noise_ratio <= 1.0:
            raise ConfigError(f"prior_noise_ratio (sigma_max / sigma_min of the prior stage) must "
                              f"be > 1, got {self.prior_noise_ratio!r}")
        if self.grad_clip != "auto":
            check_number("grad_clip", self.grad_clip, allow_none=True)
        check_number("min_weight_ess", self.min_weight_ess, allow_zero=True, upper=1)
        if not (isinstance(self.refine_end, (int, float)) and self.refine_end >= 1):
            raise ConfigError(f"refine_end must be >= 1 (1 = uniform grid), got {self.refine_end!r}")
        check_fraction("ema_decay", self.ema_decay, allow_none=True)
        check_smc_config(self)
        for nm in ("prior_stage", "use_prior_hint", "importance_weighted"):
            check_flag(nm, getattr(self, nm))
        check_choice("scld_backward", self.scld_backward, ("learned", "fixed"))


class AnnealedLangevin:
    r"""The NAAS reference: ``dX = -(sigma_t^2/2) grad U_t(X) dt + sigma_t dW`` along
    ``U_t = (1 - beta_t) |x|^2/(2 s_0^2) + beta_t E(x)``.

    Parameters
    ----------
    energy : Energy on ``Reals`` or ``ParticleCloud``.
    prior_std, target_scale, relaxation, sigma, beta_power, grad_clip : see :class:`NAASConfig`.

    Counts energy-gradient evaluations (``n_grad``) and Hessian-vector products (``n_hvp``),
    per state.
    """

    def __init__(self, energy, *, prior_std=1.0, target_scale=1.0, relaxation=3.0, sigma=None,
                 beta_power=1.0, grad_clip=None):
        self.energy = energy
        self.domain = energy.domain
        self.project, self.n_dof = state_space(self.domain)
        self.s0, self.s1 = float(prior_std), float(target_scale)
        self.relaxation, self.fixed_sigma = float(relaxation), sigma
        self.beta_power, self.grad_clip = float(beta_power), grad_clip
        self.n_grad = self.n_hvp = 0
        self._cache = (None, None)  # the last state tensor seen and its (clipped, projected) gradient

    # -- schedules
    def beta(self, t: float) -> float:
        return float(t) ** self.beta_power

    def sigma(self, t: float) -> float:
        if self.fixed_sigma is not None:
            return float(self.fixed_sigma)
        b = self.beta(t)
        curv = (1.0 - b) / self.s0 ** 2 + b / self.s1 ** 2
        return math.sqrt(2.0 * self.relaxation / curv)

    # -- potentials
    def log_prior(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized ``log pi_0(x)`` (float64), on the state space."""
        return gaussian_log_prob(x, self.s0 ** 2, self.n_dof)

    def grad_u0(self, x):
        return x / self.s0 ** 2

    def clip_norm(self, g, limit: float, relative: bool = False):
        """Scale ``g`` down to norm ``limit``: per particle on particle systems, per sample
        otherwise (then re-projected). ``relative``: the limit is ``limit`` times the batch
        median of the norms."""
        particles = isinstance(self.domain, ParticleCloud)
        p = self.domain.as_particles(g) if particles else g
        n = p.norm(dim=-1, keepdim=True)
        lim = limit * n.median() if relative else limit
        p = p * (lim / n.clamp_min(lim)).nan_to_num(1.0)
        return self._proj(self.domain.flatten(p)) if particles else p

    def _proj(self, v):
        return v if self.project is None else self.project(v)

    def check_spread(self, far: float) -> None:
        """States ``far`` (their largest coordinate) a million prior widths out mean the
        reference itself diverged (its steps are too large for the target's stiffness): raise
        that, rather than blame the energy that overflowed there."""
        if far > 1e6 * self.s0:
            raise TrainingDivergedError(
                f"NAAS's annealed Langevin reference diverged (states reach {far:.3g} with prior_std "
                f"{self.s0:g}): its steps are too large for this target's stiffness. Give the target's "
                "size and narrowest local width as prior_std and target_scale, or raise n_time_steps "
                "(particle systems get no scale probe: DW-4 runs with prior_std=2, target_scale=0.5, "
                "relaxation=3; LJ-13 with prior_std=1, target_scale=0.1, relaxation=3, n_time_steps=200; "
                "benchmarks/naas_continuous.py)")

    def _checked(self, x, g):
        """The energy gradient ``g`` at ``x`` checked for non-finite values, clipped and projected."""
        try:
            check_energies(None, x, grad=g, name=f"{self.energy.name}.energy", energy_fn=self.energy.energy,
                           energy=self.energy)
        except NonFiniteEnergyError:
            self.check_spread(float(x.detach()[torch.isfinite(x)].abs().max()))
            raise
        return self._proj(g if self.grad_clip is None else self.clip_norm(g, self.grad_clip))

    def grad_energy(self, x: torch.Tensor) -> torch.Tensor:
        """Clipped, projected ``grad E(x)``, cached for the last state tensor seen."""
        c, g = self._cache
        if c is not None and (c is x or (c.data_ptr() == x.data_ptr() and c.shape == x.shape
                                         and c.dtype == x.dtype and c._version == x._version)):
            return g
        g = self._checked(x, self.energy.grad_energy(x.detach()))
        self.n_grad += x.shape[0]
        self._cache = (x, g)
        return g

    def grad_u(self, t: float, x):
        b = self.beta(t)
        return (1.0 - b) * self.grad_u0(x) + b * self.grad_energy(x)

    def drift(self, t: float, x):
        """Reference drift ``-(sigma_t^2 / 2) grad U_t(x)``."""
        return -0.5 * self.sigma(t) ** 2 * self.grad_u(t, x)

    def drift_vjp(self, t: float, x, a):
        """``(d_x drift)^T a``: one gradient and one Hessian-vector product of the (clipped) E."""
        b, s2 = self.beta(t), self.sigma(t) ** 2
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.energy.energy(xg).sum(), xg, create_graph=True)
            gc = self._checked(x, g)
            (hv,) = torch.autograd.grad(gc, xg, grad_outputs=a.detach())
        self.n_grad += x.shape[0]
        self.n_hvp += x.shape[0]
        self._cache = (x, gc.detach())
        return -0.5 * s2 * self._proj((1.0 - b) * a / self.s0 ** 2 + b * hv)

    def work_grad(self, t: float, t_next: float, x):
        """Gradient of the AIS work increment ``(beta_{k+1} - beta_k) (E - U_0)(x)``."""
        return (self.beta(t_next) - self.beta(t)) * (self.grad_energy(x) - self.grad_u0(x))


@register("naas", kinds=("energy",), domains=(Reals, ParticleCloud), priority=10,
          paper="Choi et al. 2025, arXiv 2506.18165",
          pays="continuous energies with gradients where a trained sampler is reused for many draws; "
               "sample_smc adds resampling (GMM-40 ESS 0.76 vs 0.23 plain); at CPU budgets AIS/SMC "
               "are as accurate")
class NAAS(TrainableSampler):
    """Non-equilibrium Annealed Adjoint Sampler (continuous energies; exact path weights)."""

    Config = NAASConfig
    needs_grad = True

    # ------------------------------------------------------------------ setup
    def _attach(self, target):
        dom = getattr(target, "domain", None)
        if dom is not None and not isinstance(dom, (Reals, ParticleCloud)):
            raise IncompatibleMethodError(
                f"NAAS samples continuous energies on Reals or ParticleCloud, got {dom!r}; "
                "use a discrete sampler for lattices and sequences (bk.explain(target) lists them)")
        return super()._attach(target)

    def _setup(self, target) -> None:
        c = self.config
        # the sampler works on `self.work`: the target itself, or the target in the
        # standardized frame of its prior hint (samples are mapped back in `sample`)
        self.work, self.frame = framed(target, c.use_prior_hint and isinstance(target.domain, Reals))
        self.prior_std, self.target_scale, self.scale_probe = c.prior_std, c.target_scale, None
        if (self.frame is None and isinstance(target.domain, Reals) and c.prior_std is None
                and c.target_scale is None):  # no scale given: the scale probe's frame
            from ..probe import probe_frame

            self.work, self.frame, pr = probe_frame(target, seed=self.seed)
            self.target_scale, self.scale_probe = pr.narrowest_width, pr.summary()
        self.prior_std = 1.0 if self.prior_std is None else float(self.prior_std)
        self.target_scale = 1.0 if self.target_scale is None else float(self.target_scale)
        self._log_det = 0.0 if self.frame is None else self.frame.log_det
        self.ref = AnnealedLangevin(self.work, prior_std=self.prior_std, target_scale=self.target_scale,
                                    relaxation=c.relaxation, sigma=c.sigma,
                                    beta_power=c.beta_power, grad_clip=self._grad_clip())
        self.project, self.n_dof = self.ref.project, self.ref.n_dof
        self.dim = target.domain.event_numel
        self.ts = time_grid(c.n_time_steps, refine_end=float(c.refine_end))
        self.prior_ts = time_grid(c.prior_time_steps)
        self.prior_sched = VEPriorSchedule(self.prior_std, c.prior_noise_ratio)
        pt = self.prior_ts.tolist()
        # drift coefficient of the prior network output, code form g^2 c: (g^2 averaged over the
        # step, matching the exact step variance) x control scale
        self._prior_g2 = {a: self.prior_sched.step_variance(a, b) / (b - a)
                          * self.prior_sched.control_scale(a, self.target_scale)
                          for a, b in zip(pt, pt[1:])}
        self._sigmas = torch.tensor([self.ref.sigma(float(t)) for t in self.ts[:-1]],
                                    device=self.device)
        self._hs = torch.diff(self.ts).to(self.device, torch.float32)
        with self._seeded_init():  # network init from the sampler's own stream
            self.net, self.prior_net = (make_control_net(target.domain, hidden=c.hidden, n_layers=c.n_layers,
                                                         input_scale=self.prior_std).to(self.device)
                                        for _ in range(2))
        self.opt = torch.optim.Adam(self.net.parameters(), lr=c.lr)
        self.prior_opt = torch.optim.Adam(self.prior_net.parameters(), lr=c.prior_lr)
        self.ema = EMA(self.net, c.ema_decay) if c.ema_decay is not None else None
        self.prior_ema = EMA(self.prior_net, c.ema_decay) if c.ema_decay is not None else None
        # SCLD training (train_on="smc") starts its SMC from pi_0 itself: no prior stage
        self._prior_on = c.prior_stage and c.train_on == "paths"
        if c.train_on == "smc":
            self.buffer = segment_buffer(c.batch_size, c.scld_segments, c.scld_buffer_size)
        else:
            fresh = c.batch_size * min(c.times_per_trajectory, c.n_time_steps)
            self.buffer = ReplayBuffer(fresh if c.buffer_size is None else c.buffer_size, replace=True)
        self.prior_buffer = ReplayBuffer(c.prior_buffer_size, replace=True)
        self._recent_lw: deque = deque(maxlen=c.running_window)

    def _grad_clip(self):
        """``grad_clip`` resolved: "auto" is ``AUTO_CLIP`` times the equilibrium gradient norm in a
        prior-hint frame, about ``sqrt(n_dof) / target_scale`` (``E_p |grad u|^2 = E_p[lap u]`` is
        ``n_dof`` for a standardized basin), and no clipping otherwise."""
        auto = self.config.grad_clip == "auto"
        if auto and self.frame is not None:
            return AUTO_CLIP * math.sqrt(state_space(self.target.domain)[1]) / self.target_scale
        return None if auto else self.config.grad_clip

    # ------------------------------------------------------------------ simulation
    def _annealed_drift(self, net):
        ref = self.ref
        return lambda t, x: ref.drift(t, x) + ref.sigma(t) * net(t, x)

    @torch.no_grad()
    def _simulate(self, n: int, net, prior_net, generator, *, record: bool = False):
        """Run the full chain for ``n`` samples; returns (x_K, log_w float64, annealed path)."""
        ref = self.ref
        x0, lw_start = self._start(n, prior_net, generator)
        path = euler_maruyama(self._annealed_drift(net), ref.sigma, x0, self.ts,
                              generator=generator, project=self.project, n_dof=self.n_dof,
                              backward=self._backward_kernel(net), record=record)
        x = path.x
        far = float(x.abs().max())  # NaN or inf where a state is not finite
        if not math.isfinite(far):
            return x, None, path
        ref.check_spread(far)
        u = self.work.energy(x)
        check_energies(u, x, name=f"{self.work.name}.energy", where="at the trajectories' end states",
                       energy=self.work)
        log_gamma = -u.to(torch.float64)
        lw = log_gamma + path.log_bwd - path.log_fwd + lw_start + self._log_det
        return x, lw, path

    def _start(self, n: int, prior_net, generator):
        """The annealed chain's start and its log-weight ``-log`` of its density: the prior
        stage's end points with ``log B - log F`` (the Dirac source cancels the first bridge),
        or, without the prior stage, draws from the reference prior with ``-log pi_0``."""
        if not self._prior_on:
            x = self.prior_std * state_noise((n, self.dim), generator, self.device, self.project)
            return x, -self.ref.log_prior(x)
        sched, g2 = self.prior_sched, self._prior_g2
        y0 = torch.zeros(n, self.dim, device=self.device)
        ppath = euler_maruyama(lambda s, y: g2[s] * prior_net(s, y), None, y0, self.prior_ts,
                               generator=generator, project=self.project, n_dof=self.n_dof,
                               noise_var=sched.step_variance,
                               backward=brownian_bridge_kernel(sched.variance))
        return ppath.x, ppath.log_bwd - ppath.log_fwd

    def adjoint(self, xs: torch.Tensor) -> torch.Tensor:
        """Lean adjoint ``a`` of the annealed stage along stored states ``xs`` (K + 1, B, D)."""
        ref, ts = self.ref, self.ts
        clip = self.config.adjoint_clip
        return lean_adjoint(
            xs, ts, ref.drift_vjp,
            transform=None if clip is None else (lambda a: ref.clip_norm(a, clip, relative=True)),
            cost_grad=lambda k, x: ref.work_grad(float(ts[k]), float(ts[k + 1]), x))

    # ------------------------------------------------------------------ training
    def _diverged(self, what: str):
        raise TrainingDivergedError(
            f"NAAS training diverged at step {self.step + 1}: {what}. Increase n_time_steps, "
            "lower relaxation (or sigma) or lr, or set grad_clip for stiff energies.")

    def train_step(self) -> dict:
        c, gen = self.config, self.gens["train"]
        if c.train_on == "smc":
            return self._scld_step()
        x, lw, path = self._simulate(c.batch_size, self.net, self.prior_net, gen, record=True)
        # checks agree across ranks (dist.all_true), so no rank is left waiting for a peer
        if not dist.all_true(lw is not None and bool(torch.isfinite(lw).all())):
            self._diverged("non-finite states or importance weights in fresh trajectories")
        adj = self.adjoint(path.xs)
        if not dist.all_true(bool(torch.isfinite(adj).all())):
            self._diverged("non-finite adjoint")
        # push (t_k, x_k, -sigma_k a_k) at random time indices k < K of each trajectory
        K, B = c.n_time_steps, c.batch_size
        m = min(c.times_per_trajectory, K)
        k_idx = torch.randint(0, K, (B, m), generator=gen, device=gen.device).to(self.device)
        b_idx = torch.arange(B, device=self.device)[:, None].expand(B, m)
        t_rows = self.ts[:-1].to(self.device, torch.float32)[k_idx].reshape(-1)
        w = self._trajectory_weights(lw)
        self.buffer.add(t=t_rows, x=path.xs[k_idx, b_idx].reshape(B * m, -1),
                        target=(-self._sigmas[k_idx][..., None] * adj[k_idx, b_idx]).reshape(B * m, -1),
                        w=w[b_idx].reshape(-1))

        def matching(b):  # annealed stage: adjoint matching
            return (b["w"] * (self.net(b["t"], b["x"]) - b["target"]).pow(2).mean(-1)).mean()

        self.net.train()
        metrics = {"loss": self._updates(c.updates_per_step, self.net, self.opt, self.ema, self.buffer,
                                         matching)}
        # prior stage: reciprocal adjoint matching towards exp(-U_0 - V_0)
        if self._prior_on:
            metrics["prior_loss"] = self._prior_updates(path.xs[0], -adj[0], w)
        # diagnostics of the fresh, current-model trajectories
        est = log_z_from_log_weights(lw, warn=False)
        self._recent_lw.append(lw.detach().cpu())
        run = log_z_from_log_weights(torch.cat(list(self._recent_lw)), warn=False)
        metrics.update(ess_frac=est.ess_frac, log_z=est.log_z, log_z_running=run.log_z,
                       weight_power=self._weight_power,
                       elbo=float(lw.mean()), energy_grads=float(self.ref.n_grad),
                       energy_hvps=float(self.ref.n_hvp))
        return metrics

    def _trajectory_weights(self, lw: torch.Tensor) -> torch.Tensor:
        """Regression weight of each fresh trajectory: ``B softmax(a log w)`` (mean 1; normalized
        over every rank's batch) when ``importance_weighted``, else 1. The power ``a <= 1`` is
        the largest that keeps the batch's ESS fraction at ``min_weight_ess`` or more (one
        value for all ranks, from the gathered weights); it is logged as ``weight_power``."""
        if not self.config.importance_weighted:
            self._weight_power = 0.0
            return torch.ones(lw.shape[0], device=self.device)
        a = power_for_ess(dist.all_gather_tensor(lw), self.config.min_weight_ess)
        self._weight_power = a
        return (lw.shape[0] * dist.softmax_across_ranks(a * lw)).float().to(self.device)

    def _updates(self, n: int, net, opt, ema, buffer, loss, grad_clip=None) -> float:
        """``n`` optimizer steps of ``net`` on ``loss(batch)``, each batch ``train_batch_size`` rows
        of ``buffer``; returns the mean loss."""
        gen, total = self.gens["train"], 0.0
        for _ in range(n):
            lval = loss(buffer.sample(self.config.train_batch_size, generator=gen))
            self._optimizer_step(net, opt, lval, grad_clip=grad_clip, ema=ema)
            total += float(lval.detach()) / n
        return total

    def _prior_updates(self, x0: torch.Tensor, target0: torch.Tensor, w: torch.Tensor) -> float:
        gen, sched, var1 = self.gens["train"], self.prior_sched, self.prior_std ** 2
        self.prior_buffer.add(y=x0, target=target0, w=w)

        def matching(batch):  # on the bridge from the origin to y at a uniform time s
            y = batch["y"]
            s = torch.rand(y.shape[0], 1, generator=gen, device=gen.device).to(self.device)
            xi = state_noise(y.shape, gen, self.device, self.project)
            v = sched.variance_tensor(s)
            ys = (v / var1) * y + torch.sqrt((v * (var1 - v) / var1).clamp_min(0.0)) * xi
            out = self.prior_net(s.squeeze(1), ys)
            resid = out - batch["target"] / sched.control_scale(s, self.target_scale)
            return (batch["w"] * resid.pow(2).mean(-1)).mean()

        return self._updates(self.config.prior_updates_per_step, self.prior_net, self.prior_opt,
                             self.prior_ema, self.prior_buffer, matching)

    # ------------------------------------------------------------------ SCLD training
    @torch.no_grad()
    def scld_rollout(self, n: int, net=None, generator=None):
        """One SMC pass of ``n`` particles along the controlled path from ``pi_0``, cut into
        ``scld_segments`` segments, resampled at every boundary (and moved there by
        ``smc_mcmc_steps`` MALA steps): the SCLD training data, a
        :class:`~boltzkit.samplers._shared.scld.SegmentRun`."""
        c, ref = self.config, self.ref
        net = self.net if net is None else net
        gen = self.gens["train"] if generator is None else generator
        x = self.prior_std * state_noise((n, self.dim), gen, self.device, self.project)
        return segment_rollout(
            x, ref.log_prior(x), self.ts, c.scld_segments, ref_drift=ref.drift,
            control=lambda t, y: ref.sigma(t) * net(t, y),
            noise_var=lambda t, t_next: ref.sigma(t) ** 2 * (t_next - t),
            backward=reversed_reference_kernel(ref.drift, ref.sigma),
            backward_control=self._backward_control(net),
            log_gamma=lambda k, y: self.log_gamma(float(self.ts[k]), y), generator=gen,
            project=self.project, n_dof=self.n_dof, rejuvenate=self._mala_rejuvenation(c.smc_mcmc_steps),
            on_nonfinite=self._diverged)

    def scld_loss(self, net, rows: dict) -> torch.Tensor:
        """The SCLD loss (mean over segments of the variance of the segment log-weights) of
        stored segment ``rows`` under ``net``; differentiable in the network's parameters."""
        c = self.config
        ts = self.ts.to(self.device, torch.float32)
        scale, var = self._hs * self._sigmas, self._hs * self._sigmas ** 2
        # the forward shift h_k sigma_k v at (t_k, x_k); the learned backward one at (t_{k+1}, x_{k+1})
        return segment_loss(rows, control_shift(net, ts[:-1], scale, self.project), c.scld_segments,
                            c.n_time_steps // c.scld_segments, var,
                            bshift=control_shift(net, ts[1:], scale, self.project), bvar=var)

    def _backward_control(self, net):
        """The learned backward drift ``c_B(t_k, t_{k+1}, x) = sigma_{t_k} v(t_{k+1}, x)``
        (``train_on="smc"`` with ``scld_backward="learned"``), else None."""
        c = self.config
        if c.train_on != "smc" or c.scld_backward != "learned":
            return None
        return lambda t, t_next, x: self.ref.sigma(t) * net(t_next, x)

    def _backward_kernel(self, net):
        """The annealed stage's backward kernels: reverse ULA, shifted by the learned backward
        drift when there is one (:func:`~boltzkit.samplers._shared.scld.controlled_backward`)."""
        fixed = reversed_reference_kernel(self.ref.drift, self.ref.sigma)
        bc = self._backward_control(net)
        return fixed if bc is None else controlled_backward(fixed, bc, self.project)

    def _mala_rejuvenation(self, n_mcmc: int):
        """``n_mcmc`` MALA steps on ``gamma_k`` as a rejuvenation move in
        :func:`~boltzkit.samplers._shared.smc.run_islands`'s convention (None for 0)."""
        if not n_mcmc:
            return None
        ref, ts = self.ref, self.ts
        mala = MALARejuvenation(
            lambda k, y: (-self.log_gamma(float(ts[k]), y), ref.grad_u(float(ts[k]), y)),
            n_mcmc, default_step_size("mala", self.dim, self.target_scale))

        def rejuv(k, x, carry, g):
            x, u = mala(k, x, g)
            return x, (-u.to(torch.float64),)

        rejuv.acceptance = mala.acceptance  # read by run_islands
        return rejuv

    def _scld_step(self) -> dict:
        c = self.config
        run = self.scld_rollout(c.batch_size)
        self.buffer.add(**run.rows)
        self.net.train()
        loss = self._updates(c.updates_per_step, self.net, self.opt, self.ema, self.buffer,
                             lambda rows: self.scld_loss(self.net, rows), grad_clip=SCLD_GRAD_CLIP)
        return {"loss": loss, "log_z": run.log_z, "segment_ess_frac": run.ess_frac,
                "energy_grads": float(self.ref.n_grad), "energy_hvps": float(self.ref.n_hvp)}

    # ------------------------------------------------------------------ state
    components = ("net", "prior_net", "opt", "prior_opt", "ema", "prior_ema", "buffer", "prior_buffer")

    def _extra_state(self) -> dict:
        return {"recent_lw": list(self._recent_lw), "n_grad": self.ref.n_grad, "n_hvp": self.ref.n_hvp}

    def _load_extra_state(self, state: dict) -> None:
        self._recent_lw = deque(state["recent_lw"], maxlen=self.config.running_window)
        self.ref.n_grad, self.ref.n_hvp = int(state["n_grad"]), int(state["n_hvp"])

    def _load_state_dict(self, state: dict) -> None:
        # buffers of checkpoints written before the weighted regression (no "w" rows), and empty
        # ones, are not loaded: the next step's fresh trajectories refill them
        super()._load_state_dict({**state, **{k: None for k in ("buffer", "prior_buffer") if state.get(k)
                                              and "w" not in ReplayBuffer.fields_in(state[k])}})

    # ------------------------------------------------------------------ sampling
    def sampling_nets(self):
        """The networks used by :meth:`sample` (the EMA copies when ``ema_decay`` is set), in
        eval mode."""
        nets = (self.net, self.prior_net) if self.ema is None else (self.ema.shadow, self.prior_ema.shadow)
        for net in nets:
            net.eval()
        return nets

    def sample(self, n_samples: int):
        """Draw ``n_samples`` weighted samples; returns a :class:`~boltzkit.result.Result`."""
        self._require_fit()
        check_count("n_samples", n_samples)
        if self.config.resample_ess is not None:
            return self.sample_smc(n_samples)
        net, prior_net = self.sampling_nets()
        gen = self.gens["sample"]
        grads0 = self.ref.n_grad

        def draw(m):
            x, lw, _ = self._simulate(m, net, prior_net, gen)
            if lw is None:
                raise TrainingDivergedError(
                    "NAAS sampling produced non-finite states; increase n_time_steps, lower "
                    "relaxation or set grad_clip")
            return x.cpu(), lw.cpu()

        x, lw = map(torch.cat, self._chunked(draw, n_samples))
        if self.frame is not None:
            x = self.frame.to_x(x)
        return result_from_log_weights(x, lw, exact_log_z=self.target.exact_log_z(),
                                       diagnostics=self._sampling_diagnostics(grads0),
                                       **self._result_kwargs())

    def _sampling_diagnostics(self, grads0: int, **extra) -> dict:
        """Diagnostics of :meth:`sample` and :meth:`sample_smc`: options, ``extra``, and the energy
        gradients spent in sampling (since ``grads0``) and training."""
        diag = {"n_time_steps": self.config.n_time_steps, "prior_hint": self.frame is not None, **extra,
                "sampling_energy_grads": int(self.ref.n_grad - grads0),
                "training_energy_grads": int(self.history.get("energy_grads", [0])[-1]),
                "training_energy_hvps": int(self.history.get("energy_hvps", [0])[-1])}
        if self.scale_probe is not None:
            diag["scale_probe"] = self.scale_probe
        return diag

    # ------------------------------------------------------------------ SMC view
    def log_gamma(self, t: float, x: torch.Tensor) -> torch.Tensor:
        """``log gamma_t(x) = (1 - beta_t) log pi_0(x) - beta_t E(x)`` (float64): the normalized
        prior at ``t = 0``, the target's ``exp(-E)`` at ``t = 1``; intermediate normalizers
        do not matter (they scale a level's weights uniformly)."""
        b = self.ref.beta(t)
        out = (1.0 - b) * self.ref.log_prior(x)
        if b > 0:
            out = out - b * self.work.energy(x).to(torch.float64)
        return out

    @torch.no_grad()
    def sample_smc(self, n_samples: int, *, resample_ess: "float | None" = None,
                   n_islands: "int | None" = None, mcmc_steps: "int | None" = None):
        r"""Run the trained (or untrained, ``n_steps=0``) chain as an SMC sampler.

        The island SMC of :mod:`boltzkit.samplers._shared.smc` (papers, weight increments,
        resampling, MALA rejuvenation, log Z and its error bar from ``n_islands`` independent
        islands; shared with :meth:`PDNS.sample_smc <boltzkit.samplers.pdns.PDNS.sample_smc>`)
        along this chain: intermediate targets ``gamma_k`` = :meth:`log_gamma` at ``t_k``, moves
        by the controlled Euler step ``q_k``, backward kernels ``B_k`` those of the whole-path
        weight (reverse annealed Langevin, ULA). The product of the increments over ``k`` is the
        whole-path weight of :meth:`sample` (the prior stage enters once, at ``t = 0``). With a
        zero control (``n_steps=0``) this is SMC with ULA moves along the geometric path; a
        trained control makes the increments flatter. Costs one energy evaluation per particle
        and level beyond :meth:`sample`.

        ``resample_ess``, ``n_islands`` and ``mcmc_steps`` default to the config's (0.5, 16 and
        ``smc_mcmc_steps`` where the config leaves ``resample_ess`` None), so one trained sampler
        can be sampled both ways. ``mcmc_steps`` > 0 adds MALA moves on ``gamma_{k+1}`` after
        every level (one energy gradient per step and one per level to start it, counted in
        ``diagnostics["sampling_energy_grads"]``).

        Reliability (:func:`~boltzkit.samplers._shared.smc.island_result`): on many-well-32,
        untrained, 64 levels, the islands' spread s = 2.2 implied a Jensen bias ~ 3.9 against an
        error bar of 0.55 (flagged), while the estimate was 1.9 low and the weights looked
        healthy. The spread check assumes roughly normal island log Z and misses heavier tails
        (many-well-8, untrained, 8 levels: 0.73 low, 4.4 error bars, s = 1.1, not flagged).

        Returns a weighted :class:`~boltzkit.result.Result` (final weights after the last
        resampling, island blocks contiguous) with ``diagnostics["resample_events"]``.
        """
        self._require_fit()
        check_count("n_samples", n_samples)
        frac, islands, n_mcmc = self._smc_options(n_samples, resample_ess, n_islands, mcmc_steps)
        net, prior_net = self.sampling_nets()
        gen, ref, n = self.gens["sample"], self.ref, int(n_samples)
        grads0 = ref.n_grad
        x, lw = self._start(n, prior_net, gen)
        lw = lw + ref.log_prior(x)  # the weight relative to gamma_0 = pi_0 (0 without the prior stage)
        ts = self.ts
        run = controlled_islands(
            x, lw, ts, self._annealed_drift(net), ref.sigma,
            lambda k, y: self.log_gamma(float(ts[k]), y),
            generator=gen, project=self.project, n_dof=self.n_dof, backward=self._backward_kernel(net),
            diverged="NAAS SMC produced non-finite states; increase n_time_steps, lower relaxation "
                     "or set grad_clip",
            frac=frac, n_islands=islands, rejuvenate=self._mala_rejuvenation(n_mcmc))
        x = run.x.cpu()
        if self.frame is not None:
            x = self.frame.to_x(x)
        diag = self._sampling_diagnostics(grads0, resample_ess=frac, smc_mcmc_steps=n_mcmc)
        return island_result(x, run, log_shift=self._log_det, exact_log_z=self.target.exact_log_z(),
                             diagnostics=diag, who="NAAS", **self._result_kwargs())
