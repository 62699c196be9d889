"""OLLA: Overdamped Langevin with LAnding, and two projection-based baselines.

Paper
-----
K. Jeon, M. Muehlebach and M. Tao, "Fast Non-Log-Concave Sampling under Nonconvex Equality
and Inequality Constraints with Landing", NeurIPS 2025, arXiv:2510.22044.

Target
------
rho(dx) ~ exp(-f(x)) sigma_Sigma(dx) on Sigma = {h(x) = 0, g(x) <= 0}, sigma_Sigma the surface
measure of {h = 0} restricted to {g <= 0} (a :class:`~boltzkit.constraints.ConstrainedTarget`).

Dynamics (Ito), with the active constraints c = [h, g_A + eps] (A = {j : g_j(x) >= 0}),
J = dc/dx (rows = gradients), G = J J^T, Pi = I - J^T G^{-1} J:

    dX = [ -Pi grad f  -  alpha J^T G^{-1} c  -  J^T G^{-1} tau ] dt + sqrt(2) Pi dW,
    tau_i = tr(Pi Hess c_i)   (Ito / mean-curvature correction).

With the correction, dc = -alpha c dt exactly: the process *lands* on Sigma at rate alpha and
then moves as the reversible diffusion whose invariant law is rho. Inside {g < 0} an
inequality is inactive; on crossing the boundary it joins the active set and is driven back
to g = -eps. Euler-Maruyama, no projection, no rejection, many chains in parallel.
``curvature="exact"`` forms tau from d Hessian-vector products per state (small d),
``"hutchinson"`` from a few Rademacher probes, ``"none"`` drops it (biased: the chains sit
off the manifold, on S^{d-1} at E h ~ (d - 1) / alpha).

Inequality margin (a boltzkit choice): the paper drives an active inequality to g = -eps with a
fixed eps (1.0 in its experiments). At fixed alpha * dt the inward kick alpha dt eps / |grad g|
then does not shrink with dt and leaves a depleted layer at the boundary, while a small eps
makes the boundary sticky (c decays geometrically towards 0 and re-entry takes many steps).
The default ``epsilon="auto"`` sets the kick to 1.7 noise standard deviations, sqrt(2 dt):
in 1-D simulations this cancels the first-order boundary-layer bias for alpha dt in
[0.05, 0.3]; pass ``epsilon=1.0`` for the paper's setting.

Baselines
---------
``projected_langevin``: Euler proposal y = x - dt grad f + sqrt(2 dt) xi, then Newton
iterations for lambda with h(y + J(x)^T lambda) = 0 (projection along the old normals,
Lelievre-Rousset-Stoltz / Zappa-Holmes-Cerfon-Goodman); a step whose projection fails, or
that leaves {g <= 0}, is rejected (the chain stays put).
``slack_langevin``: the same on (x, s) with each inequality turned into g_j(x) + s_j^2 = 0.
As in the paper's baseline the slack state is uniform on the augmented manifold, so the
x-marginal is *not* rho: it piles up at the boundary as 1 / sqrt(-g). ``slack_correction=True``
adds the log-det energy term (co-area formula) that makes the x-marginal exactly rho, but its
drift 1/s is singular at the boundary and the unadjusted chain is then unstable there.

Returns
-------
A :class:`~boltzkit.Result` with unweighted samples (n, *event_shape) in float64,
``log_z=None`` (these are MCMC samplers: no normalizing constant; the reason is in
``diagnostics["log_z_unavailable"]``), ESS = n / tau_int (max over the energy and up to 16
coordinates), constraint violations (mean/max, fraction infeasible), ESS per second, and the
violation per step in ``history``.

Violation bound (the samples are near, not on, the set)
-------------------------------------------------------
Between landings each step changes an equality ``h_i`` by ``dt xi^T (Pi H_i Pi) xi`` (H_i its
Hessian; the Ito term cancels its mean) and by the second-order term of the Ito drift itself,
``dt^2 n^T H_i n / 2`` (``n = J^T G^{-1} tau``); the landing contracts by ``1 - alpha dt`` per
step. So in the stationary state ``h_i`` is about normal with
``sd = ||Pi H_i Pi||_F sqrt(dt / (alpha (1 - alpha dt / 2)))`` and mean
``mu = dt n^T H_i n / (2 alpha)``; the Result reports the folded-normal ``E|h_i|`` as
``eq_violation_mean_predicted`` (:meth:`OLLA.predicted_eq_violation`, from the Hessians at the
samples), next to the measured ``violation_mean``. Sphere S^{d-1} with h = (|x|^2 - 1)/2 (|h| is
the radius error to first order): sd = sqrt((d - 1) dt / alpha) / sqrt(1 - alpha dt / 2),
mu = dt (d - 1)^2 / (2 alpha). At the defaults (dt = 1e-3, alpha = 100) E|h| = 0.0078 on S^9
(tail about 4 sd: the 4.4 % seen there); but mu grows as d^2: on S^99 at dt = 2e-3,
alpha = 50 the samples sit 17 % outside the sphere (predicted 20 %). Keep
``dt (d - 1)^2 / alpha`` (generally dt |tau|^2 / alpha) small, or land the output
(``land_samples``, :class:`OLLAConfig`). Measured on S^2, S^9, S^39: prediction within 3 %;
S^99: 15 % high (benchmarks/olla_scaling.py).

Where it pays (benchmarks/olla_scaling.py: vMF on great spheres S^{k-1} in R^d cut out by the
sphere and p - 1 linear equalities, equal step size 2e-3, accuracy checked per run; 2-core CPU
shared with other jobs): seconds per effective sample of OLLA with Hutchinson curvature vs
Newton projection 0.66x at d = 10, 0.69x at d = 40 (p = 1), 1.2x at d = 40, p = 4, 1.7x / 3x at
d = 100 (p = 1 / 4); exact curvature costs d Hessian-vector products per state (4x slower than
Hutchinson at d = 40, p = 4). Here the projection converges in one or two Newton steps and
never rejects, so OLLA's missing projection saves little; it pays where projections are costly
or fail (many nonlinear constraints, inequalities: slack Langevin is biased, -4.7 se on a cap).

Failure modes
-------------
Unadjusted: O(step_size) bias, and an O(sqrt(step_size)) boundary layer where inequalities
are slightly violated. alpha * step_size must be < 1 (it is checked); near 1 the landing
overshoots. Where constraint gradients become linearly dependent (LICQ fails) the Gram
matrix is singular and a pseudo-inverse is used. Exact curvature costs d Hessian-vector
products per state (O(p d^2)); use Hutchinson (the default above d = 64) in high dimension.
Mixing between well-separated modes is as slow as for any Langevin chain.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD

from .._finite import check_energies
from .._registry import register
from ..constraints.base import Constrained
from ..constraints._geometry import (GramSolver, batched_jacobian, normal_component,
                                     project_tangent, tangent_projector)
from ..errors import (ConfigError, ConvergenceWarning, DomainError, IncompatibleMethodError,
                      InfeasibleConstraintError, TargetError, TrainingDivergedError)
from ._shared.mcmc_driver import MCMCConfig, MCMCSampler
from .base import check_count, check_choice, check_flag, check_number

LOG_Z_UNAVAILABLE = ("{name} is an (unadjusted) MCMC sampler of a constrained target: it returns "
                     "samples, not the normalizing constant of exp(-f) on the constraint set")
_MAX_TAU_COORDS = 16
EPS_KICK = 1.7  # inward landing kick of an active inequality, in noise standard deviations
LAND_REL_TOL = 1e-6  # land_samples: returned samples satisfy the constraints to 1e-6 * domain.tol


def _probes(b: int, d: int, n: "int | None", like: torch.Tensor, gen) -> torch.Tensor:
    """Directions of a trace estimate, (B, K, D) in ``like``'s dtype and device: the D unit
    vectors (``n=None``, exact) or ``n`` Rademacher vectors drawn from ``gen``."""
    if n is None:
        return torch.eye(d, dtype=like.dtype, device=like.device).expand(b, d, d)
    return torch.randint(0, 2, (b, n, d), generator=gen, device=like.device).to(like.dtype) * 2 - 1


@dataclass(frozen=True, kw_only=True)
class ConstrainedLangevinConfig(MCMCConfig):
    """Options shared by the constrained Langevin samplers (``n_chains``, ``burn_in`` (old name
    ``n_burnin``), ``thin``: :class:`MCMCConfig`).

    step_size : Euler-Maruyama step dt.
    land_start : move the start points onto the set with Gauss-Newton steps before the burn-in
        (False: start from the raw points and let the dynamics land them; feasibility is then
        checked after the burn-in).
    """

    step_size: float = 1e-3
    n_chains: int = 256
    burn_in: int = 2000
    thin: int = 10
    land_start: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_number("step_size", self.step_size)
        check_flag("land_start", self.land_start)


@dataclass(frozen=True, kw_only=True)
class OLLAConfig(ConstrainedLangevinConfig):
    """OLLA options (defaults from the paper's 2-D experiments: alpha * dt = 0.1).

    alpha : landing rate; alpha * step_size must be < 1.
    epsilon : inequality margin: an active inequality is driven to g = -epsilon (units of g).
        "auto" (boltzkit's default) uses epsilon_j = EPS_KICK * sqrt(2 dt) |grad g_j| / (alpha dt),
        a landing kick of EPS_KICK noise standard deviations (the module's "Inequality margin").
    proj_damp : Tikhonov damping delta of the Gram matrix J J^T + delta I.
    curvature : "exact" (Hessians), "hutchinson" (n_hutchinson probes), "none", or "auto"
        (exact up to ``exact_max_dim`` coordinates, Hutchinson above).
    land_samples : move the *returned* samples onto the set by Gauss-Newton steps (at most
        ``land_iters``) until max(|h|, g+) <= 1e-6 * domain.tol; the chains keep running
        unlanded, so the dynamics and its law are unchanged. The landing moves each sample by
        about its violation, O(sqrt(dt / alpha)), along the normal space: a change of the law
        of the same order as the discretization error (none for a sphere and any law that the
        radial map leaves alone; on a von Mises-Fisher law on S^4 the landed samples keep
        E mu.x = A_d(kappa) within the error of tests/test_olla.py).
    """

    alpha: float = 100.0
    land_samples: bool = False
    land_iters: int = 20
    epsilon: "float | str" = "auto"
    proj_damp: float = 0.0
    curvature: str = "auto"
    n_hutchinson: int = 5
    exact_max_dim: int = 64

    def __post_init__(self):
        super().__post_init__()
        check_number("alpha", self.alpha)
        if self.epsilon != "auto":
            check_number("epsilon", self.epsilon, allow_zero=True)
        check_number("proj_damp", self.proj_damp, allow_zero=True)
        check_choice("curvature", self.curvature, ("auto", "exact", "hutchinson", "none"))
        check_count("n_hutchinson", self.n_hutchinson)
        check_count("exact_max_dim", self.exact_max_dim)
        check_count("land_iters", self.land_iters)
        check_flag("land_samples", self.land_samples)
        if self.alpha * self.step_size >= 1:
            raise ConfigError(f"alpha * step_size = {self.alpha * self.step_size:g} must be < 1 for "
                              "stable landing (0.05 - 0.5 works well); lower alpha or step_size")


@dataclass(frozen=True, kw_only=True)
class ProjectedLangevinConfig(ConstrainedLangevinConfig):
    """Projection baseline options.

    proj_iters : Newton iterations of the projection; a step that does not converge is rejected.
    proj_tol : convergence tolerance on max |h|.
    """

    proj_iters: int = 20
    proj_tol: float = 1e-9

    def __post_init__(self):
        super().__post_init__()
        check_count("proj_iters", self.proj_iters)
        check_number("proj_tol", self.proj_tol)


@dataclass(frozen=True, kw_only=True)
class SlackLangevinConfig(ProjectedLangevinConfig):
    """slack_correction : add the log-det term that makes the x-marginal exactly the target
    (off by default, as in the paper's baseline: its drift is singular at s = 0, which makes
    the unadjusted chain unstable near the boundary)."""

    slack_correction: bool = False

    def __post_init__(self):
        super().__post_init__()
        check_flag("slack_correction", self.slack_correction)


class _ConstrainedLangevin(MCMCSampler):
    """Shared hooks of the constrained samplers on the MCMC driver: feasible starts, the
    violation history, ESS over the energy and up to 16 coordinates, the constraint diagnostics."""

    Config = ConstrainedLangevinConfig
    needs_grad = True
    min_recorded = 2
    tau_min_steps = 10  # many independent chains: 10 tau per chain is enough for a usable estimate
    tau_needs_all = True

    # -- to implement: one step of every chain
    def _init_state(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _positions(self, state: torch.Tensor) -> torch.Tensor:
        return state

    def _step(self, state: torch.Tensor, gen: torch.Generator):
        """Advance all chains; return (new_state, violation (B,) of the old state, {stat: scalar})."""
        raise NotImplementedError

    def _start(self, target, x0=None) -> None:
        """``fit(target, n_steps=None, x0=None)``: ``x0`` optional start states (1 or n_chains,
        *event_shape), by default the domain's reference draws; starts are moved onto the set
        by Gauss-Newton steps first, and one that cannot reach it raises InfeasibleConstraintError."""
        dom = getattr(target, "domain", None)
        if not isinstance(dom, Constrained):
            raise IncompatibleMethodError(
                f"{self.name} samples constrained targets (domain Constrained), got a domain of type "
                f"{type(dom).__name__}; build one with "
                "bk.constrain(energy, equalities=..., inequalities=...)")
        self._attach(target)
        self.domain = dom
        self._setup()
        self.state = self._init_state(self._initial_points(x0))

    def _setup(self) -> None:
        pass

    def _transition(self, gen):
        self.state, viol, st = self._step(self.state, gen)
        self._stat_keys = tuple(st)
        return None, {"violation_mean": viol.mean(), "violation_max": viol.max(),
                      "fraction_infeasible": (viol > self.domain.tol).double().mean(), **st}

    def _check_finite(self) -> None:
        if not bool(torch.isfinite(self.state).all()):
            raise TrainingDivergedError(
                f"{self.name} chains left the finite range (NaN/inf states); lower step_size "
                f"(now {self.config.step_size:g})")

    def _after_burn_in(self, n_steps):
        if n_steps:
            self._check_finite()
        dom = self.domain
        if not self.config.land_start:
            ok = dom.contains(dom.unflatten(self._positions(self.state)))
            if not bool(ok.any()):
                raise InfeasibleConstraintError(
                    f"no chain reached the constraint set within the {n_steps} burn-in steps (tol = "
                    f"{dom.tol:g}); burn in longer, start closer to the set, use land_start=True, or "
                    "check that the set is not empty (g(x) <= 0 means feasible)")

    def _record(self):
        return {"x": self._positions(self.state).detach().clone()}

    def _observables(self, trace):
        """The energy and up to 16 evenly spaced coordinates (all set the ESS)."""
        self._check_finite()
        cfg, kept = self.config, trace["x"]  # (n_keep, B, D)
        with torch.no_grad():
            energies = self.target.energy(self.domain.unflatten(kept.reshape(-1, kept.shape[-1])))
        energies = energies.reshape(kept.shape[0], -1).to(torch.float64)
        if not bool(torch.isfinite(kept).all()) or not bool(torch.isfinite(energies).all()):
            raise TrainingDivergedError(
                f"{self.name} chains produced NaN/inf states; lower step_size (now {cfg.step_size:g})"
                + (f" or alpha (now {cfg.alpha:g})" if hasattr(cfg, "alpha") else ""))
        d = kept.shape[-1]
        coords = torch.linspace(0, d - 1, min(d, _MAX_TAU_COORDS)).round().long().unique()
        return [("energy", energies.cpu(), True)] + [(None, kept[:, :, j].cpu(), True) for j in coords.tolist()]

    def _warn_unreliable(self, obs, tau):
        warnings.warn(f"{self.name}: the chains are short compared with their autocorrelation "
                      f"time (tau_int = {tau:.3g} kept steps); the ESS is a rough estimate. Draw more "
                      "samples per chain (fewer n_chains or more n_samples) or a larger step_size.",
                      ConvergenceWarning, stacklevel=4)

    def _finish(self, samples, trace, diag):
        cfg, dom = self.config, self.domain
        n_steps_run = diag["steps_per_chain"] * cfg.thin
        landing = self._extra_diagnostics(samples)
        if getattr(cfg, "land_samples", False):
            samples, landing = self._land_output(samples, landing)
        with torch.no_grad():
            c_all = dom.values_flat(samples)
        viol = dom.violation_from_values(c_all)
        h, g = c_all[:, :dom.n_eq], c_all[:, dom.n_eq:]
        diag.update({
            "log_z_unavailable": LOG_Z_UNAVAILABLE.format(name=self.name),
            "violation_mean": float(viol.mean()), "violation_max": float(viol.max()),
            "eq_violation_mean": float(h.abs().mean()) if dom.n_eq else 0.0,
            "ineq_violation_mean": float(g.clamp_min(0).amax(1).mean()) if dom.n_ineq else 0.0,
            "fraction_infeasible": float((viol > dom.tol).double().mean()),
            "tau_int_reliable": diag["tau_converged"],
            "seconds_per_step": diag["wall_time_s"] / n_steps_run,
            "n_burnin_steps": self.burn_in, "n_sampling_steps": n_steps_run,
            "step_size": cfg.step_size, **landing,
        })
        for k in getattr(self, "_stat_keys", ()):
            v = self.history[k]
            diag[k] = float(np.mean(v[self.burn_in:])) if len(v) > self.burn_in else float("nan")
        return dom.unflatten(samples)

    # -- internals
    def _extra_diagnostics(self, samples: torch.Tensor) -> dict:
        """Method-specific diagnostics of the (unlanded) returned samples; none by default."""
        return {}

    def _land_output(self, samples: torch.Tensor, extra: dict):
        """Gauss-Newton landing of the returned copies onto the set (the chains are untouched).

        Returns the landed flat samples and diagnostics: the violation before landing, the mean
        and largest distance moved, and the landing tolerance ``1e-6 * domain.tol``.
        """
        dom = self.domain
        tol = LAND_REL_TOL * dom.tol
        before = dom.violation(samples)
        landed = dom.flatten(dom.land(dom.unflatten(samples), n_iter=self.config.land_iters, margin=0.0))
        after = dom.violation(landed)
        moved = (landed - samples).norm(dim=1)
        if not bool((after <= tol).all()):
            warnings.warn(f"{self.name}: {int((after > tol).sum())} returned samples did not land within "
                          f"{tol:.3g} in {self.config.land_iters} Gauss-Newton steps (largest violation "
                          f"{float(after.max()):.3g}); raise land_iters or lower step_size",
                          ConvergenceWarning, stacklevel=3)
        return landed, {**extra, "landed": True, "land_tol": tol, "violation_mean_before_landing": float(before.mean()),
                        "violation_max_before_landing": float(before.max()),
                        "land_distance_mean": float(moved.mean()), "land_distance_max": float(moved.max())}

    def _initial_points(self, x0) -> torch.Tensor:
        dom, b = self.domain, self.config.n_chains
        if not self.config.land_start:
            if x0 is None:
                x0 = dom.base.reference(b, generator=self.gens["init"], device=self.device)
            x0 = self._check_x0(x0)
            return dom.flatten(x0.expand(b, *dom.event_shape).clone())
        if x0 is None:
            x = dom.reference(b, generator=self.gens["init"], device=self.device)
            ok = dom.contains(x)
            if not bool(ok.any()):
                viol = dom.violation(x)
                raise InfeasibleConstraintError(
                    f"no feasible point found: {b} random starts moved by {dom.n_land} Gauss-Newton steps "
                    f"all still violate the constraints (smallest violation {float(viol.min()):.3g} > "
                    f"tol = {dom.tol:g}), so the set {{h(x) = 0, g(x) <= 0}} appears empty. Check the "
                    "constants and the signs (g(x) <= 0 means feasible), or give start points with "
                    "fit(target, x0=...)")
            if not bool(ok.all()):  # restart the few stuck chains from feasible ones
                good = ok.nonzero().flatten()
                bad = (~ok).nonzero().flatten()
                x[bad] = x[good[torch.arange(bad.numel(), device=x.device) % good.numel()]]
            return dom.flatten(x)
        x0 = self._check_x0(x0)
        x = dom.land(x0)
        ok = dom.contains(x)
        if not bool(ok.all()):
            bad = (~ok).nonzero().flatten()
            viol = dom.violation(x)
            raise InfeasibleConstraintError(
                f"{bad.numel()} of {x0.shape[0]} start points cannot reach the constraint set: after "
                f"{dom.n_land} Gauss-Newton steps the violation is still {float(viol[bad].max()):.3g} > "
                f"tol = {dom.tol:g} (first bad index {int(bad[0])}). Start closer to the set, or check "
                "that it is not empty (g(x) <= 0 means feasible)")
        return dom.flatten(x.expand(b, *dom.event_shape).clone())

    def _check_x0(self, x0) -> torch.Tensor:
        dom, b = self.domain, self.config.n_chains
        x0 = torch.as_tensor(x0).to(self.device, torch.float64)
        if x0.ndim != len(dom.event_shape) + 1 or tuple(x0.shape[1:]) != tuple(dom.event_shape):
            raise DomainError(f"x0 has shape {tuple(x0.shape)}; expected (k, "
                              f"{', '.join(map(str, dom.event_shape))}) with k = 1 or n_chains = {b}")
        if x0.shape[0] not in (1, b):
            raise ConfigError(f"x0 holds {x0.shape[0]} states; give 1 (shared) or n_chains = {b}")
        if not bool(torch.isfinite(x0).all()):
            raise DomainError("x0 contains NaN or inf")
        return x0

    def _grad_energy(self, xr: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        (gf,) = torch.autograd.grad(u.sum(), xr, retain_graph=True, allow_unused=True)
        gf = torch.zeros_like(xr) if gf is None else gf
        # a NaN energy is the target's fault: named, never reported as the chains diverging
        check_energies(u.detach(), xr.detach(), grad=gf, name=f"{self.target.name}.energy",
                       where=f"at {self.name} step {getattr(self, '_step_index', 0) + 1}")
        return gf

    def _noise(self, like: torch.Tensor, gen) -> torch.Tensor:
        return torch.randn(like.shape, generator=gen, device=like.device, dtype=like.dtype)


# ============================================================================ OLLA
@register("olla", kinds=("energy",), domains=(Constrained,), priority=10, provides_log_z=False,
          paper="Jeon, Muehlebach & Tao, NeurIPS 2025, arXiv:2510.22044",
          pays="constraint sets where projection is costly or fails (many nonlinear constraints, "
               "inequalities): 0.66-0.69x projection's cost per effective sample at d = 10-40, 1.7-3x at "
               "d = 100; samples sit off the set by eq_violation_mean_predicted, land_samples=True puts "
               "the returned points on it")
class OLLA(_ConstrainedLangevin):
    """Overdamped Langevin with landing (Jeon et al. 2025): constrained sampling without projections."""

    Config = OLLAConfig

    def _setup(self):
        cfg = self.config
        small = self.domain.event_numel <= cfg.exact_max_dim
        self.curvature_mode = (("exact" if small else "hutchinson") if cfg.curvature == "auto"
                               else cfg.curvature)
        self._hvp_mode = "reverse" if small else "forward"

    def _curvature(self, x, cols, jac, mask, solver, gen):
        """tau_i = tr(Pi Hess c_i) of the active constraints, (B, P).

        Exact: sum over the D directions e_k of (Pi e_k)^T Hess c_i e_k. Hutchinson: mean over
        Rademacher probes v of (Pi v)^T Hess c_i v (see :meth:`_bilinear`).
        """
        b, p, d = jac.shape
        if self.curvature_mode == "none" or p == 0:
            return jac.new_zeros(b, p)
        exact = self.curvature_mode == "exact"
        v = _probes(b, d, None if exact else self.config.n_hutchinson, x, gen)
        # exact: the symmetric projector, whose row k is Pi e_k
        u = tangent_projector(jac, solver) if exact else project_tangent(v, jac, solver)
        quad = self._bilinear(x, cols, u, v).reshape(b, v.shape[1], p)
        tau = quad.sum(1) if exact else quad.mean(1)
        return tau * mask

    def _bilinear(self, x, cols, u, v):
        """u_k^T Hess c_i(x) v_k for directions u, v of shape (B, K, D) -> (B * K, P).

        Each state is repeated K times, so one batched backward pass over the P constraints
        gives every Hessian-vector product. Small D: J v by reverse mode, then its gradient
        (double backward). Large D: J v by forward mode, then its gradient (much cheaper
        there: the double backward of large matrix products is slow). If an operation lacks
        the chosen kind of derivative, the other one is used from then on.
        """
        b, k, d = v.shape
        err = None
        for _ in range(2):
            try:
                if self._hvp_mode == "forward":
                    xk = x.detach().repeat_interleave(k, dim=0).requires_grad_(True)
                    with torch.enable_grad():
                        with fwAD.dual_level(), warnings.catch_warnings():
                            # torch scripts its forward-AD decompositions on first use (its warning)
                            warnings.filterwarnings("ignore", message=".*torch.jit.script.*",
                                                    category=DeprecationWarning)
                            out = self.domain.values_cols(fwAD.make_dual(xk, v.reshape(b * k, d)), cols)
                            jv = fwAD.unpack_dual(out).tangent
                        if jv is None:  # constant constraints
                            jv = torch.zeros_like(out)
                        hv = batched_jacobian(jv, xk)  # (B K, P, D): rows Hess c_i v_k
                else:  # J v by reverse mode, then its gradient
                    hv = self._hessian_times(x, cols, v).reshape(b * k, -1, d)
                return torch.einsum("npd,nd->np", hv, u.reshape(b * k, d))
            except (RuntimeError, NotImplementedError) as exc:
                err = exc
                self._hvp_mode = "reverse" if self._hvp_mode == "forward" else "forward"
        raise TargetError("cannot differentiate the constraints twice (one of their operations supports "
                          "neither forward-over-reverse nor double backward); use curvature='none'") from err

    def _extra_diagnostics(self, samples):
        if self.domain.n_eq == 0:
            return {}
        return {"eq_violation_mean_predicted": self.predicted_eq_violation(samples)}

    def predicted_eq_violation(self, x: torch.Tensor, *, n_states: int = 64, n_probes: int = 8) -> float:
        """Predicted stationary mean |h_i| of the equality constraints at the current settings:
        the folded-normal ``E|h_i|`` of the module's violation bound (leading order in dt; its
        derivation, the sphere's closed form and the measured accuracy are there), averaged over
        up to ``n_states`` of the states ``x`` (flat, (B, D)); traces and norms exactly (all D
        directions) for D <= 16, else with ``n_probes`` Rademacher probes. Returns the largest
        over the equalities (a curved one dominates ``violation_mean``; linear equalities have
        H = 0), 0.0 without equalities.
        """
        cfg, dom = self.config, self.domain
        m = dom.n_eq
        if m == 0:
            return 0.0
        xs = x[:n_states].detach().to(torch.float64)
        b, d = xs.shape
        cols = torch.arange(m, device=xs.device)
        with torch.enable_grad():
            xr = xs.clone().requires_grad_(True)
            jac = batched_jacobian(dom.values_cols(xr, cols), xr).detach()
        solver = GramSolver(jac, None, cfg.proj_damp)
        exact = d <= 16
        v = _probes(b, d, None if exact else n_probes, xs, torch.Generator(device=xs.device).manual_seed(0))
        k = v.shape[1]
        phv = project_tangent(self._hessian_times(xs, cols, project_tangent(v, jac, solver)).reshape(b, k * m, d),
                              jac, solver).reshape(b, k, m, d)  # Pi H_i Pi v_k
        f2 = phv.pow(2).sum(-1).sum(1) / (1 if exact else k)  # (B, m): ||Pi H_i Pi||_F^2
        tau = torch.einsum("bkmd,bkd->bm", phv, v) / (1 if exact else k)  # tr(Pi H_i)
        n = normal_component(jac, solver.solve(tau))  # (B, D): the Ito drift direction
        nhn = torch.einsum("bmd,bd->bm", self._hessian_times(xs, cols, n.unsqueeze(1))[:, 0], n)
        dt, alpha = cfg.step_size, cfg.alpha
        sd = torch.sqrt(f2 * dt / (alpha * (1.0 - alpha * dt / 2))).clamp_min(1e-300)
        mu = dt * nhn / (2 * alpha)
        folded = sd * math.sqrt(2 / math.pi) * torch.exp(-0.5 * (mu / sd) ** 2) \
            + mu * torch.erf(mu / (sd * math.sqrt(2)))
        return float(folded.mean(0).max())  # the worst equality

    def _hessian_times(self, xs, cols, u):
        """``H_i u_k`` for the constraints ``cols`` at states xs (B, D), directions u (B, K, D)
        -> (B, K, P, D), by one batched double-backward pass over repeated states."""
        b, k, d = u.shape
        xk = xs.detach().repeat_interleave(k, dim=0).requires_grad_(True)
        with torch.enable_grad():
            jk = batched_jacobian(self.domain.values_cols(xk, cols), xk, create_graph=True)
            jv = torch.einsum("npd,nd->np", jk, u.reshape(b * k, d))
            hv = batched_jacobian(jv, xk).detach()
        return hv.reshape(b, k, -1, d)

    def _margins(self, jac, mask):
        """Landing margins epsilon of the active inequality rows (constants, zero elsewhere)."""
        cfg, m = self.config, self.domain.n_eq
        eps = torch.zeros_like(mask, dtype=jac.dtype)
        if mask.shape[1] == m:
            return eps
        if cfg.epsilon == "auto":
            scale = EPS_KICK * math.sqrt(2 * cfg.step_size) / (cfg.alpha * cfg.step_size)
            eps[:, m:] = scale * jac[:, m:].norm(dim=-1)
        else:
            eps[:, m:] = float(cfg.epsilon)
        return eps * mask

    def _step(self, x, gen):
        cfg, dom = self.config, self.domain
        dt = cfg.step_size
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            u = self.target.energy(dom.unflatten(xr))
            c, mask, cols, c_all = dom.active_system(xr, 0.0)
            gf = self._grad_energy(xr, u)
            jac = batched_jacobian(c, xr)
        jac, gf, c = jac.detach(), gf.detach(), c.detach()
        solver = GramSolver(jac, mask, cfg.proj_damp)
        tau = self._curvature(x, cols, jac, mask, solver, gen)
        c = c + self._margins(jac, mask)
        xi = self._noise(x, gen)
        if jac.shape[1] == 0:  # no active constraint anywhere: plain Langevin
            x_new = x - dt * gf + math.sqrt(2 * dt) * xi
        else:
            rhs = torch.stack([(cfg.alpha * c + tau) * mask, torch.einsum("bpd,bd->bp", jac, gf),
                               torch.einsum("bpd,bd->bp", jac, xi)], dim=-1)
            sol = solver.solve(rhs)
            pi_gf = gf - normal_component(jac, sol[..., 1])
            pi_xi = xi - normal_component(jac, sol[..., 2])
            x_new = x - dt * (pi_gf + normal_component(jac, sol[..., 0])) + math.sqrt(2 * dt) * pi_xi
        viol = dom.violation_from_values(c_all)
        boundary = mask[:, dom.n_eq:].any(dim=1).double().mean() if mask.shape[1] > dom.n_eq \
            else x.new_zeros((), dtype=torch.float64)
        return x_new.detach(), viol, {"boundary_fraction": boundary}


# ============================================================================ baselines
@register("projected_langevin", kinds=("energy",), domains=(Constrained,), priority=0,
          provides_log_z=False, paper="constrained Langevin with Newton projection (OLLA's baseline)")
class ProjectedLangevin(_ConstrainedLangevin):
    """Constrained Langevin: Euler proposal, Newton projection onto {h = 0}, reject if g > 0."""

    Config = ProjectedLangevinConfig
    rejects_infeasible = True  # inequalities: reject proposals that leave {g <= 0}

    # functions of the (possibly augmented) state
    def _eq(self, z):
        return self.domain._stack(self.domain.equalities, z)

    def _ineq(self, z):
        return self.domain._stack(self.domain.inequalities, z)

    def _energy(self, z):
        return self.target.energy(self.domain.unflatten(z))

    def _step(self, z, gen):
        cfg = self.config
        dt = cfg.step_size
        viol = self.domain.violation(self._positions(z))
        with torch.enable_grad():
            zr = z.detach().requires_grad_(True)
            gf = self._grad_energy(zr, self._energy(zr))
            jac0 = batched_jacobian(self._eq(zr), zr).detach()
        y = z - dt * gf.detach() + math.sqrt(2 * dt) * self._noise(z, gen)
        m = jac0.shape[1]
        if m == 0:
            w, conv = y, torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
        else:
            lam = y.new_zeros(y.shape[0], m)
            for _ in range(cfg.proj_iters + 1):
                with torch.enable_grad():
                    wr = (y + normal_component(jac0, lam)).requires_grad_(True)
                    r = self._eq(wr)
                    conv = (r.detach().abs().amax(1) <= cfg.proj_tol) & torch.isfinite(r.detach()).all(1)
                    if bool(conv.all()):
                        break
                    jw = batched_jacobian(r, wr).detach()
                delta, info = torch.linalg.solve_ex(jw @ jac0.transpose(1, 2), r.detach())
                ok = (info == 0)[:, None] & torch.isfinite(delta)
                lam = torch.where(conv[:, None] | ~ok, lam, lam - delta)
            w = wr.detach()
        accept = conv & torch.isfinite(w).all(1)
        if self.domain.n_ineq and self.rejects_infeasible:
            with torch.no_grad():
                accept &= (self._ineq(w) <= 0).all(1)
        z_new = torch.where(accept[:, None], w, z)
        return z_new.detach(), viol, {"rejection_rate": 1.0 - accept.double().mean()}


@register("slack_langevin", kinds=("energy",), domains=(Constrained,), priority=0,
          provides_log_z=False, paper="projection Langevin with squared slack variables (OLLA's baseline)")
class SlackLangevin(ProjectedLangevin):
    """Projection Langevin on (x, s) with inequalities as equalities g(x) + s^2 = 0."""

    Config = SlackLangevinConfig
    rejects_infeasible = False  # the slack equalities g + s^2 = 0 keep g <= 0

    def _setup(self):
        self._d = self.domain.event_numel

    def _positions(self, z):
        return z[:, :self._d]

    def _init_state(self, x):
        with torch.no_grad():
            g = self._ineq(x)
        sign = torch.randint(0, 2, g.shape, generator=self.gens["init"], device=x.device).to(x.dtype) * 2 - 1
        return torch.cat([x, sign * torch.sqrt((-g).clamp_min(1e-12))], dim=1)

    def _eq(self, z):
        x, s = z[:, :self._d], z[:, self._d:]
        return torch.cat([super()._eq(x), self._ineq(x) + s * s], dim=1)

    def _energy(self, z):
        u = self.target.energy(self.domain.unflatten(z[:, :self._d]))
        if not self.config.slack_correction or self.domain.n_ineq == 0:
            return u
        # exp(-phi) = sqrt(det G_h) prod|s| / sqrt(det G_aug) turns the surface measure of the
        # augmented manifold into sigma_Sigma on the x-marginal (co-area formula)
        dom = self.domain
        jac_aug = batched_jacobian(self._eq(z), z, create_graph=True)
        logdet_aug = torch.linalg.slogdet(jac_aug @ jac_aug.transpose(1, 2))[1]
        logdet_h = 0.0
        if dom.n_eq:
            jac_h = jac_aug[:, :dom.n_eq, :self._d]
            logdet_h = torch.linalg.slogdet(jac_h @ jac_h.transpose(1, 2))[1]
        s = z[:, self._d:]
        return u + 0.5 * logdet_aug - 0.5 * logdet_h - 0.5 * torch.log(s * s + 1e-300).sum(1)
