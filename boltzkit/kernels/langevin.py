r"""Langevin-type kernels for ``Reals`` targets: MALA, HMC and ULA, pure and batched.

Papers
------
* Roberts & Tweedie, Bernoulli 2(4), 341 (1996) -- MALA; Roberts & Rosenthal, JRSS B 60, 255
  (1998) -- the 0.574 acceptance target.
* Duane, Kennedy, Pendleton & Roweth, Phys. Lett. B 195, 216 (1987); Neal, arXiv:1206.1901 -- HMC.

Objective
---------
Each ``*_move(potential, x, state, step_size, generator)`` is one transition of every chain
(batch dimension B) on a cached ``state = potential(x) = (U, grad U, *extras)``; MALA and HMC
leave exp(-U) invariant (Metropolis-Hastings corrected), ULA (the unadjusted Euler step) does
not and is biased by O(h). ``*_step(energy_fn, grad_fn, x, ...)`` are the stateless forms.
:func:`adapt_log_step` is the Robbins-Monro step-size rule shared by the samplers.

Failure modes
-------------
A step size too large for the stiffest direction makes MALA/HMC reject almost everything and
ULA diverge; one global step size mixes slowly along wide directions (no preconditioning).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ..errors import ConfigError

# A potential maps a batch y (B, d) to (U(y), grad U(y), *extras): every tensor has batch
# dimension B and is carried along with the accepted states (extras hold, e.g., the raw target
# energy and gradient when the potential is an annealing mixture).
Potential = Callable[[torch.Tensor], "tuple[torch.Tensor, ...]"]


def _per_chain(step_size, x: torch.Tensor) -> torch.Tensor:
    """Step size as a (1, 1) tensor (a number) or a (B, 1) one (one value per chain)."""
    if isinstance(step_size, (int, float)):  # one number: checked on the host, no device sync
        ok = math.isfinite(step_size) and step_size > 0
        h = torch.full((1, 1), step_size, dtype=x.dtype, device=x.device)
    else:
        h = torch.as_tensor(step_size, dtype=x.dtype, device=x.device).reshape(-1, 1)
        if h.numel() not in (1, x.shape[0]):
            raise ConfigError(f"step_size must be a number or have one entry per chain "
                              f"({x.shape[0]}), got {h.numel()} entries")
        ok = bool(torch.isfinite(h).all()) and not bool((h <= 0).any())
    if not ok:
        raise ConfigError(f"step_size must be finite and > 0, got {step_size!r}")
    return h


def _accept(log_alpha: torch.Tensor, generator) -> torch.Tensor:
    """Metropolis decision; NaN ratios (from non-finite proposals) are rejections."""
    log_alpha = torch.nan_to_num(log_alpha.double(), nan=-math.inf)
    log_u = torch.rand(log_alpha.shape, generator=generator, device=log_alpha.device,
                       dtype=torch.float64).log()
    return log_u < log_alpha


def _select(accept: torch.Tensor, new: tuple, old: tuple) -> tuple:
    return tuple(torch.where(accept.view(-1, *([1] * (a.ndim - 1))), a, b) for a, b in zip(new, old))


def mala_move(potential: Potential, x: torch.Tensor, state: tuple, step_size,
              generator: "torch.Generator | None" = None):
    """One MALA transition on a cached state.

    Parameters
    ----------
    potential : callable
        ``y -> (U(y), grad U(y), *extras)``, batched.
    x : Tensor (B, d)
        Current points.
    state : tuple
        ``potential(x)``, the cached values at ``x``.
    step_size : float or Tensor (B,)
        Langevin step h (proposal ``x - h grad U + sqrt(2h) xi``).
    generator : torch.Generator
        Source of every random draw.

    Returns
    -------
    x_new, state_new, accepted : Tensor (B, d), tuple, bool Tensor (B,)
    """
    h = _per_chain(step_size, x)
    u, g = state[0], state[1]
    xi = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    y = x - h * g + torch.sqrt(2 * h) * xi
    new = potential(y)
    uy, gy = new[0], new[1]
    back = (x - y + h * gy) / torch.sqrt(2 * h)  # standardized reverse-move noise
    log_alpha = (u - uy) - 0.5 * (back * back).sum(-1) + 0.5 * (xi * xi).sum(-1)
    acc = _accept(log_alpha, generator) & torch.isfinite(y).all(-1)
    x_new, *state_new = _select(acc, (y, *new), (x, *state))
    return x_new, tuple(state_new), acc


def hmc_move(potential: Potential, x: torch.Tensor, state: tuple, step_size, n_leapfrog: int,
             generator: "torch.Generator | None" = None, *, jitter: float = 0.0):
    """One HMC transition (unit mass, ``n_leapfrog`` leapfrog steps of size ``step_size``).

    Same arguments and returns as :func:`mala_move`. ``jitter`` > 0 multiplies each chain's
    step size by an independent U(1 - jitter, 1 + jitter) draw; the draw does not depend on
    the state, so the kernel stays exactly invariant, and it breaks the resonances of a fixed
    trajectory length (a trajectory close to a full period of some mode barely moves).
    """
    if int(n_leapfrog) != n_leapfrog or n_leapfrog < 1:
        raise ConfigError(f"n_leapfrog must be a positive integer, got {n_leapfrog!r}")
    if not 0.0 <= jitter < 1.0:
        raise ConfigError(f"jitter must be in [0, 1), got {jitter!r}")
    h = _per_chain(step_size, x)
    if jitter > 0:
        u = torch.rand(x.shape[0], 1, generator=generator, device=x.device, dtype=x.dtype)
        h = h * (1.0 + jitter * (2.0 * u - 1.0))
    p0 = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    q, new = x, state
    p = p0 - 0.5 * h * state[1]
    for i in range(int(n_leapfrog)):
        q = q + h * p
        new = potential(q)
        p = p - (h if i < n_leapfrog - 1 else 0.5 * h) * new[1]
    log_alpha = (state[0] - new[0]) + 0.5 * (p0 * p0).sum(-1) - 0.5 * (p * p).sum(-1)
    acc = _accept(log_alpha, generator) & torch.isfinite(q).all(-1)
    x_new, *state_new = _select(acc, (q, *new), (x, *state))
    return x_new, tuple(state_new), acc


def _stateless(move, energy_fn, grad_fn, x: torch.Tensor, *args):
    """One ``move`` on the potential ``y -> (energy_fn(y), grad_fn(y))`` from ``x`` (no cached
    state): ``(x_new, accepted)``."""
    x_new, _, acc = move(lambda y: (energy_fn(y), grad_fn(y)), x, (energy_fn(x), grad_fn(x)), *args)
    return x_new, acc


def mala_step(energy_fn, grad_fn, x: torch.Tensor, step_size,
              generator: "torch.Generator | None" = None):
    """One MALA step targeting exp(-energy_fn): ``energy_fn`` and ``grad_fn`` are the batched
    ``(B, d) -> (B,)`` energy and ``(B, d) -> (B, d)`` gradient, the other arguments those of
    :func:`mala_move`. Returns ``(x_new, accepted)``: Tensor (B, d) and bool Tensor (B,)."""
    return _stateless(mala_move, energy_fn, grad_fn, x, step_size, generator)


def hmc_step(energy_fn, grad_fn, x: torch.Tensor, step_size, n_leapfrog: int = 10,
             generator: "torch.Generator | None" = None):
    """One HMC step targeting exp(-energy_fn); returns ``(x_new, accepted)`` like :func:`mala_step`."""
    return _stateless(hmc_move, energy_fn, grad_fn, x, step_size, n_leapfrog, generator)


def adapt_log_step(log_step: float, acceptance: float, target: float, gain: float) -> float:
    """Robbins-Monro update of log h toward an acceptance rate, clipped to |change| <= 1."""
    return log_step + float(np.clip(gain * (acceptance - target), -1.0, 1.0))


def default_step_size(kernel: str, dim: int, scale: float = 1.0) -> float:
    """A starting step size for a roughly N(0, scale^2 I) target in ``dim`` dimensions."""
    if kernel == "mala":
        return 0.5 * scale ** 2 * dim ** (-1.0 / 3.0)
    return 0.5 * scale * dim ** (-0.25)


def ula_move(potential: Potential, x: torch.Tensor, state: tuple, step_size,
             generator: "torch.Generator | None" = None):
    """One unadjusted Langevin (Euler-Maruyama) step ``x - h grad U + sqrt(2h) xi``, always
    accepted (not invariant: O(h) bias). Returns ``(x_new, state_new, accepted)`` like
    :func:`mala_move`."""
    h = _per_chain(step_size, x)
    xi = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    y = x - h * state[1] + torch.sqrt(2 * h) * xi
    return y, tuple(potential(y)), torch.ones(x.shape[0], dtype=torch.bool, device=x.device)


__all__ = ["Potential", "mala_move", "hmc_move", "ula_move", "mala_step", "hmc_step",
           "adapt_log_step", "default_step_size"]
