r"""Shared SDE machinery of the continuous samplers: Euler--Maruyama on a time grid, the
exact discrete-time path log-weight, and the lean adjoint.

Conventions (the "code form" of the adjoint-sampler family)
-----------------------------------------------------------
A controlled SDE ``dX = [b(t, X) + g(t)^2 u(t, X)] dt + g(t) dW`` is simulated with
Euler--Maruyama on a grid ``t_0 < ... < t_K``:

    x_{k+1} = x_k + h_k f(t_k, x_k) + g(t_k) sqrt(h_k) eps_k,    eps_k ~ N(0, I),

where ``f`` is the full drift the caller passes (optionally with the exact step variance
``int g^2`` in place of ``g(t_k)^2 h_k``). On a mean-free particle domain the drift and
the noise are projected onto the zero-centre-of-mass subspace, and every Gaussian density is
taken on that subspace (``n_dof = (n - 1) * dim`` degrees of freedom).

Path log-weight (exact in discrete time)
----------------------------------------
With forward kernels ``q_k`` (the Euler--Maruyama Gaussians above), any normalized backward
kernels ``B_k(x_k | x_{k+1})``, source density ``mu`` and unnormalized target ``gamma``,

    log w = log gamma(x_K) + sum_k log B_k(x_k | x_{k+1}) - log mu(x_0) - sum_k log q_k(x_{k+1} | x_k)

satisfies ``E_q[w] = Z`` exactly for every step count, because ``gamma(x_K) prod_k B_k``
integrates to ``Z``. :func:`euler_maruyama` accumulates ``sum log q_k`` (from the noise actually
drawn) and ``sum log B_k`` in float64; :func:`path_log_weight` assembles ``log w``. Backward
kernels are Gaussian, ``B_k = N(x_{k+1} + shift, var I)``; two standard choices are provided:
:func:`reversed_reference_kernel` (the reverse annealed-Langevin / ULA step, CMCD- and
AIS-style weights) and :func:`brownian_bridge_kernel` (the exact reversal of a drift-free
reference started from a point, as in Adjoint Sampling).

Lean adjoint
------------
:func:`lean_adjoint` integrates, backward along a stored trajectory, the exact discrete
derivative of the future cost ``J_k = sum_{j >= k} c_j(x_{j+1}) + G(x_K)`` with respect to
``x_k``, holding the noise and the control fixed (the "lean" adjoint of Adjoint Matching,
arXiv 2409.08861, in its discretize-then-differentiate form):

    a_K = grad G(x_K);    a_k = A + h_k (d_x b(t_k, x_k))^T A,    A = a_{k+1} + grad c_k(x_{k+1}).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import ConfigError

__all__ = ["SDEPath", "VEPriorSchedule", "state_space", "state_noise", "time_grid", "gaussian_log_prob",
           "euler_maruyama",
           "reversed_reference_kernel", "brownian_bridge_kernel", "path_log_weight",
           "lean_adjoint", "vjp", "grad_and_hvp"]

LOG_2PI = math.log(2.0 * math.pi)

Drift = Callable[[float, torch.Tensor], torch.Tensor]
Diffusion = Callable[[float], float]
# backward(t_k, t_{k+1}, x_k, x_{k+1}) -> (shift, var): B_k = N(x_{k+1} + shift, var I)
Backward = Callable[[float, float, torch.Tensor, torch.Tensor], "tuple[torch.Tensor, float]"]


def state_space(domain) -> "tuple[Callable | None, int]":
    """``(project, n_dof)`` of a continuous domain: the projection onto the state space
    (None for ``Reals``) and the number of degrees of freedom of its Gaussian densities."""
    project = getattr(domain, "project", None)
    n_dof = int(getattr(domain, "n_dof", domain.event_numel))
    if project is not None and n_dof == domain.event_numel:
        project = None  # projection is the identity
    return project, n_dof


def state_noise(shape, generator: torch.Generator, device, project: "Callable | None" = None) -> torch.Tensor:
    """Standard normal draws of ``shape`` from ``generator`` (on its device), moved to ``device``
    and projected onto the state space (``project`` of :func:`state_space`)."""
    eps = torch.randn(shape, generator=generator, device=generator.device).to(device)
    return eps if project is None else project(eps)


def time_grid(n_steps: int, *, refine_end: float = 1.0, dtype=torch.float64,
              device="cpu") -> torch.Tensor:
    """Grid ``t_k = 1 - (1 - k/K)^refine_end`` on [0, 1], shape ``(K + 1,)``.

    ``refine_end = 1`` is uniform; values above 1 make the steps smaller near ``t = 1``
    (useful when the drift stiffens at the end of an annealing path).
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ConfigError(f"n_steps must be a positive integer, got {n_steps!r}")
    if not refine_end >= 1.0:
        raise ConfigError(f"refine_end must be >= 1 (1 = uniform grid), got {refine_end!r}")
    s = torch.linspace(0.0, 1.0, n_steps + 1, dtype=torch.float64)
    t = 1.0 - (1.0 - s) ** refine_end
    t[0], t[-1] = 0.0, 1.0
    return t.to(device=device, dtype=dtype)


def gaussian_log_prob(residual: torch.Tensor, var: float, n_dof: int) -> torch.Tensor:
    """``log N(residual; 0, var I)`` with ``n_dof`` degrees of freedom, in float64, shape (B,).

    ``residual`` must lie in the state space (for mean-free particles: zero centre of mass).
    """
    r = residual.to(torch.float64).flatten(1)
    return -0.5 * (r * r).sum(-1) / var - 0.5 * n_dof * (LOG_2PI + math.log(var))


@dataclass
class SDEPath:
    """Output of :func:`euler_maruyama`.

    Attributes
    ----------
    x : final state ``(B, D)``.
    ts : the time grid ``(K + 1,)`` (float64).
    xs : ``(K + 1, B, D)`` states, or None when not recorded.
    noise : ``(K, B, D)`` standard normal increments actually used (projected), or None.
    log_fwd : float64 ``(B,)``, ``sum_k log q_k(x_{k+1} | x_k)``.
    log_bwd : float64 ``(B,)``, ``sum_k log B_k(x_k | x_{k+1})``, or None without backward kernels.
    """

    x: torch.Tensor
    ts: torch.Tensor
    xs: "torch.Tensor | None"
    noise: "torch.Tensor | None"
    log_fwd: torch.Tensor
    log_bwd: "torch.Tensor | None"


def _check_grid(ts: torch.Tensor) -> torch.Tensor:
    if not isinstance(ts, torch.Tensor) or ts.ndim != 1 or ts.numel() < 2:
        raise ConfigError("ts must be a 1-D tensor of at least two time points; build one with "
                          "time_grid(n_steps)")
    if not bool((ts[1:] > ts[:-1]).all()):
        raise ConfigError("ts must be strictly increasing")
    return ts.detach().to("cpu", torch.float64)


def euler_maruyama(drift: Drift, diffusion: Diffusion, x0: torch.Tensor, ts: torch.Tensor, *,
                   generator: torch.Generator, project: "Callable | None" = None,
                   n_dof: "int | None" = None, backward: "Backward | None" = None,
                   noise_var: "Callable[[float, float], float] | None" = None,
                   record: bool = False, record_noise: bool = False) -> SDEPath:
    """Simulate ``x_{k+1} = x_k + h_k f(t_k, x_k) + g(t_k) sqrt(h_k) eps_k`` for a batch.

    Parameters
    ----------
    drift : ``f(t, x) -> (B, D)``, the full drift (reference plus control), ``t`` a float.
    diffusion : ``g(t) -> float``, a scalar diffusion coefficient (the step's noise variance
        is ``g(t_k)^2 h_k``). May be None when ``noise_var`` is given.
    x0 : ``(B, D)`` initial states; the simulation runs in their dtype and device.
    ts : ``(K + 1,)`` strictly increasing time grid.
    generator : torch generator of the noise (on ``x0``'s device).
    project : projection onto the state space (mean-free particles); applied to the drift
        and the noise. None for ``Reals``.
    n_dof : degrees of freedom of the Gaussian kernels (default ``D``).
    backward : optional backward kernels ``(t_k, t_{k+1}, x_k, x_{k+1}) -> (shift, var)``
        meaning ``B_k = N(x_{k+1} + shift, var I)``; ``var = 0`` denotes a Dirac that the
        caller cancels against a Dirac source (it contributes 0).
    noise_var : optional ``(t_k, t_{k+1}) -> variance`` of the step's noise, replacing
        ``g(t_k)^2 h_k``; pass ``int_{t_k}^{t_{k+1}} g^2`` to make a drift-free reference's
        steps exact (then :func:`brownian_bridge_kernel` telescopes exactly).
    record, record_noise : keep all states / all noise increments.

    Returns
    -------
    SDEPath
    """
    ts_cpu = _check_grid(ts)
    if not isinstance(x0, torch.Tensor) or x0.ndim != 2:
        raise ConfigError(f"x0 must be a (batch, dim) tensor, got "
                          f"{tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__}")
    n_dof = x0.shape[1] if n_dof is None else int(n_dof)
    x = x0
    xs = [x0] if record else None
    noises = [] if record_noise else None
    log_fwd = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
    log_bwd = torch.zeros_like(log_fwd) if backward is not None else None
    for k in range(ts_cpu.numel() - 1):
        t, t_next = float(ts_cpu[k]), float(ts_cpu[k + 1])
        h = t_next - t
        var = float(noise_var(t, t_next)) if noise_var is not None else float(diffusion(t)) ** 2 * h
        if not var > 0:
            raise ConfigError(f"the diffusion must be positive, got step variance {var!r} at t = {t:g}")
        f = drift(t, x)
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if project is not None:
            f, eps = project(f), project(eps)
        x_next = x + h * f + math.sqrt(var) * eps
        # density of x_next under q_k: the standardized residual is eps itself
        log_fwd += gaussian_log_prob(eps, 1.0, n_dof) - 0.5 * n_dof * math.log(var)
        if backward is not None:
            shift, back_var = backward(t, t_next, x, x_next)
            if back_var > 0:
                resid = (x.to(torch.float64) - x_next.to(torch.float64)) - shift.to(torch.float64)
                log_bwd += gaussian_log_prob(resid, back_var, n_dof)
        x = x_next
        if record:
            xs.append(x)
        if record_noise:
            noises.append(eps)
    return SDEPath(x=x, ts=ts_cpu, xs=torch.stack(xs) if record else None,
                   noise=torch.stack(noises) if record_noise else None,
                   log_fwd=log_fwd, log_bwd=log_bwd)


def reversed_reference_kernel(ref_drift: Drift, diffusion: Diffusion) -> Backward:
    """Backward kernels ``B_k(x_k | x_{k+1}) = N(x_{k+1} + h_k b(t_k, x_{k+1}), g(t_k)^2 h_k I)``.

    For an annealed Langevin reference ``b = -(g^2/2) grad U_t`` this is the reverse ULA step
    at level ``t_k``; with zero control the path weight then approximates the AIS / Jarzynski
    weight ``exp(-sum_k [U_{t_{k+1}} - U_{t_k}](x_{k+1}))`` and is exactly unbiased for Z.
    """

    def backward(t, t_next, x, x_next):
        h = t_next - t
        return h * ref_drift(t, x_next), float(diffusion(t)) ** 2 * h

    return backward


def brownian_bridge_kernel(variance: Callable[[float], float], start: "torch.Tensor | float" = 0.0) -> Backward:
    """Exact reversal of a drift-free reference ``dX = g(t) dW`` started at the point ``start``.

    With ``v(t) = int_0^t g^2`` the reversal is the Brownian bridge
    ``B_k = N(start + (v_k / v_{k+1}) (x_{k+1} - start), v_k (v_{k+1} - v_k) / v_{k+1} I)``;
    at ``v_k = 0`` it is a Dirac at ``start`` (returned as ``var = 0``), which cancels the
    Dirac source. ``variance`` must be ``v``.
    """

    def backward(t, t_next, x, x_next):
        v0, v1 = float(variance(t)), float(variance(t_next))
        return (v0 / v1 - 1.0) * (x_next - start), v0 * (v1 - v0) / v1

    return backward


def path_log_weight(log_target_end: torch.Tensor, path: SDEPath,
                    log_source_start: "torch.Tensor | None" = None) -> torch.Tensor:
    """``log gamma(x_K) + sum log B_k - log mu(x_0) - sum log q_k`` in float64, shape (B,).

    Leave ``log_source_start`` as None for a Dirac source whose first backward kernel is the
    matching Dirac (:func:`brownian_bridge_kernel`).
    """
    if path.log_bwd is None:
        raise ConfigError("the path was simulated without backward kernels; pass backward=... "
                          "to euler_maruyama")
    lw = log_target_end.to(torch.float64) + path.log_bwd - path.log_fwd
    if log_source_start is not None:
        lw = lw - log_source_start.to(torch.float64)
    return lw


def vjp(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(d fn / d x)^T v`` for a batched map ``fn: (B, D) -> (B, D)`` (one autograd call)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(x), x, grad_outputs=v)
    return g


def grad_and_hvp(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 v: "torch.Tensor | Callable[[torch.Tensor], torch.Tensor]"):
    """Gradient ``grad f(x)`` and Hessian-vector product ``grad^2 f(x) v`` of a batched scalar
    function ``f: (B, D) -> (B,)`` by double backward.

    ``v`` may be a callable ``v(grad) -> (B, D)``, so the vector can depend on the gradient
    (one energy evaluation serves both).
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
        vec = v(g.detach()) if callable(v) else v
        (hv,) = torch.autograd.grad(g, x, grad_outputs=vec.detach())
    return g.detach(), hv.detach()


def lean_adjoint(xs: torch.Tensor, ts: torch.Tensor,
                 drift_vjp: Callable[[float, torch.Tensor, torch.Tensor], torch.Tensor], *,
                 cost_grad: "Callable[[int, torch.Tensor], torch.Tensor] | None" = None,
                 terminal_grad: "Callable[[torch.Tensor], torch.Tensor] | None" = None,
                 transform: "Callable[[torch.Tensor], torch.Tensor] | None" = None) -> torch.Tensor:
    """Lean adjoint along a stored trajectory (no graph is built across steps).

    Parameters
    ----------
    xs : ``(K + 1, B, D)`` states of one batch of trajectories.
    ts : ``(K + 1,)`` time grid.
    drift_vjp : ``(t_k, x_k, a) -> (d_x b(t_k, x_k))^T a`` for the *reference* drift ``b``.
    cost_grad : ``(k, x_{k+1}) -> grad c_k(x_{k+1})``, the running cost paid on arriving at
        ``x_{k+1}`` (None for no running cost).
    terminal_grad : ``x_K -> grad G(x_K)`` (None for ``G = 0``).
    transform : optional map applied to ``a[k]`` after each backward step (e.g. norm
        clipping, which stops rare exploding pathwise derivatives from propagating); with a
        transform the result is no longer the exact derivative.

    Returns
    -------
    ``(K + 1, B, D)`` tensor ``a`` with ``a[k] = d/dx_k [sum_{j >= k} c_j(x_{j+1}) + G(x_K)]``.
    Adjoint matching regresses the control ``u(t_k, x_k)`` onto ``-a[k]``.
    """
    ts = _check_grid(ts)
    n_steps = ts.numel() - 1
    if xs.shape[0] != n_steps + 1:
        raise ConfigError(f"xs has {xs.shape[0]} time points but ts has {n_steps + 1}")
    out = torch.empty_like(xs)
    a = torch.zeros_like(xs[-1]) if terminal_grad is None else terminal_grad(xs[-1])
    out[-1] = a
    for k in range(n_steps - 1, -1, -1):
        t, h = float(ts[k]), float(ts[k + 1] - ts[k])
        full = a if cost_grad is None else a + cost_grad(k, xs[k + 1])
        a = full + h * drift_vjp(t, xs[k], full)
        if transform is not None:
            a = transform(a)
        out[k] = a
    return out


class VEPriorSchedule:
    r"""Noise schedule of NAAS's prior stage and PDNS's continuous reference: variance-exploding
    Brownian motion from the origin, ``g(s)^2 = v'(s)`` with ``v(s) = s_0^2 (1 - r^{-2s}) /
    (1 - r^{-2})`` on ``s`` in [0, 1].

    The time-1 law is exactly ``N(0, s_0^2) = pi_0``; the noise decays geometrically by the
    factor ``r`` (``prior_noise_ratio``) so that the controlled endpoint can be sharp.
    """

    def __init__(self, prior_std: float, ratio: float):
        self.s0, self.r = float(prior_std), float(ratio)
        self._c = 1.0 - self.r ** -2.0

    def variance(self, s: float) -> float:
        return self.s0 ** 2 * (1.0 - self.r ** (-2.0 * float(s))) / self._c

    def diffusion(self, s: float) -> float:
        return self.s0 * math.sqrt(2.0 * math.log(self.r) * self.r ** (-2.0 * float(s)) / self._c)

    def step_variance(self, s: float, s_next: float) -> float:
        """``v(s_next) - v(s)``: the exact noise variance of a step (used by the integrator)."""
        return self.variance(s_next) - self.variance(s)

    def variance_tensor(self, s: torch.Tensor) -> torch.Tensor:
        return self.s0 ** 2 * (1.0 - self.r ** (-2.0 * s)) / self._c

    def control_scale(self, s, target_scale: float):
        """``1 / sqrt(v(1) - v(s) + s_1^2)``: the natural size of the optimal control at ``s``
        (the score of the remaining Gaussian smoothing); the network output is multiplied by it."""
        v = self.variance_tensor(s) if isinstance(s, torch.Tensor) else self.variance(s)
        return (self.s0 ** 2 - v + target_scale ** 2) ** -0.5
