r"""The uniform ("cyclic") reference CTMC on Z_q^D and its closed forms.

Reference process P^r: every site independently jumps to each of the other q - 1 values at
rate ``gamma(t) / q``. With ``Gamma(s, t) = int_s^t gamma`` and ``e = exp(-Gamma(s, t))``, one
site moves from value a to value b over [s, t] with probability

    B(s, t) = (1 + (q - 1) e) / q   if b = a (stay),      A(s, t) = (1 - e) / q   otherwise,

so the whole kernel is ``p^r_{t|s}(y | x) = B^D (A / B)^{d_H(x, y)}`` (d_H = Hamming distance).
The kernel depends on x and y only through the group difference ``y - x`` (mod q) site by
site: it is translation invariant on the cyclic group Z_q^D, which is what lets adjoint
matching transport a terminal target unchanged (:func:`shift_index`). The uniform law is
stationary, so a uniform x_0 gives a uniform x_t at every t, whatever the schedule.

Bridge. Given x_0 at time t_0 and x_1 at time 1, site d is at value n at time t with probability

    p(n) = p^r_{t|t_0}(n | x_0^d) p^r_{1|t}(x_1^d | n) / p^r_{1|t_0}(x_1^d | x_0^d)

(Chapman-Kolmogorov makes the q terms sum to one), see :func:`bridge_probs`.

Controlled process and tau-leaping. A controller ``log phi_t(x)`` (B, D, q) sets the rate of
``x -> x^{d <- n}`` to ``gamma(t) / q * phi_t(x)_{d,n}`` (phi = 1 is the reference). One step
over [t_k, t_{k+1}] moves every site independently, to n != x^d with probability
``A_k * phi_{d,n}`` and stays with probability ``1 - A_k sum_n phi_{d,n}``, where ``A_k`` is the
*exact* reference move probability of the step (not the first-order ``Gamma_k / q``). So
phi = 1 reproduces the reference kernel exactly. When a row would leave less than
``1 - max_jump`` to stay, its phi is scaled down to total jump probability ``max_jump``
(and counted): the kernel stays a valid distribution with full support, and since the
probabilities actually used are returned, path likelihoods stay exact.

Sources (:func:`sample_source`). ``"uniform"``: x_0 uniform on Z_q^D (the paper's
``beta_init = 0``). ``"delta"``: x_0 uniform over the q constant configurations (c, ..., c),
the zero-temperature ground states of a field-free ferromagnet (the paper's
``beta_init = inf``, a mixture of q Dirac masses).

Exact importance weights. Draw x_0 from the source and simulate K steps. The law
``Q(path) = P^r(path) pi(x_1) / p^r_1(x_1)`` has x_1-marginal pi, so

    log w = -U(x_1) - log p^r_1(x_1) + sum_k [log p^r_{k+1|k}(x_{k+1} | x_k) - log p^u_{k+1|k}(x_{k+1} | x_k)]

satisfies E[w] = Z exactly for any controller (:func:`cyclic_rollout` returns the sum). The
reference terminal law is closed-form (:func:`source_log_terminal`): ``p^r_1 = q^-D`` for the
uniform source (it is stationary), and for the delta source, with ``n_c(x)`` the number of
sites equal to c and A, B the move / stay probabilities over [t_0, 1],

    p^r_1(x) = (1 / q) sum_c B^{n_c(x)} A^{D - n_c(x)}.

Per site the step ratio is ``log B_k - log(stay prob)`` for a site that stayed and
``-log phi_{d,n}`` for a site that moved to n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .._utils import check_positive
from ..errors import ConfigError, TrainingDivergedError

__all__ = ["NoiseSchedule", "ConstNoise", "LogLinearNoise", "make_noise", "move_stay_log_probs",
           "transition_log_prob", "bridge_probs", "sample_bridge", "sample_categorical",
           "shift_index", "step_probs", "tau_leap_step", "CyclicPath", "cyclic_rollout",
           "log_c", "SOURCES", "sample_source", "source_log_terminal", "source_log_terminal_score"]

SOURCES = ("uniform", "delta")


# ---------------------------------------------------------------------------- schedules
class NoiseSchedule:
    """Jump rate ``gamma(t)`` of the reference and its integral ``Gamma(s, t)``."""

    def rate(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def integral(self, s, t) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_config(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError


class ConstNoise(NoiseSchedule):
    """``gamma(t) = g``; ``Gamma(s, t) = g (t - s)``."""

    def __init__(self, g: float):
        self.g = check_positive("noise scale g", g)

    def rate(self, t):
        return torch.full_like(torch.as_tensor(t, dtype=torch.float64), self.g)

    def integral(self, s, t):
        s, t = torch.as_tensor(s, dtype=torch.float64), torch.as_tensor(t, dtype=torch.float64)
        return self.g * (t - s)

    def to_config(self):
        return {"type": "const", "g": self.g}


class LogLinearNoise(NoiseSchedule):
    """``gamma(t) = g / (alpha + t)``; ``Gamma(s, t) = g log((alpha + t) / (alpha + s))``.

    Most of the noise is injected early (rate g / alpha at t = 0); a small alpha makes x_1
    nearly independent of x_0 (the "memoryless" regime).
    """

    def __init__(self, g: float, alpha: float):
        self.g, self.alpha = check_positive("noise scale g", g), check_positive("noise alpha", alpha)

    def rate(self, t):
        return self.g / (self.alpha + torch.as_tensor(t, dtype=torch.float64))

    def integral(self, s, t):
        s, t = torch.as_tensor(s, dtype=torch.float64), torch.as_tensor(t, dtype=torch.float64)
        return self.g * (torch.log1p(t / self.alpha) - torch.log1p(s / self.alpha))

    def to_config(self):
        return {"type": "log_linear", "g": self.g, "alpha": self.alpha}


def make_noise(kind: str, g: float, alpha: float = 0.5) -> NoiseSchedule:
    """``"const"`` or ``"log_linear"`` schedule (``alpha`` is used by the latter only)."""
    if kind == "const":
        return ConstNoise(g)
    if kind == "log_linear":
        return LogLinearNoise(g, alpha)
    raise ConfigError(f"unknown noise schedule {kind!r}; choose 'const' or 'log_linear'")


# ---------------------------------------------------------------------------- kernels
def move_stay_log_probs(gamma_bar: torch.Tensor, q: int) -> "tuple[torch.Tensor, torch.Tensor]":
    """float64 ``(log A, log B)``: per-site log-probabilities to move to one given other value
    and to stay, over an interval of integrated rate ``gamma_bar`` (any shape)."""
    g = torch.as_tensor(gamma_bar, dtype=torch.float64)
    log_a = torch.log(-torch.expm1(-g)) - math.log(q)
    log_b = torch.log1p((q - 1) * torch.exp(-g)) - math.log(q)
    return log_a, log_b


def log_c(gamma_bar: torch.Tensor, q: int) -> torch.Tensor:
    """``log(A / B)``: log-probability ratio of moving to one given value versus staying."""
    log_a, log_b = move_stay_log_probs(gamma_bar, q)
    return log_a - log_b


def transition_log_prob(x: torch.Tensor, y: torch.Tensor, gamma_bar, q: int) -> torch.Tensor:
    """float64 ``log p^r(y | x)`` of the reference over an interval with integrated rate
    ``gamma_bar`` (scalar or one per row); x, y int64 (B, D). Returns (B,)."""
    log_a, log_b = move_stay_log_probs(gamma_bar, q)
    return x.shape[-1] * log_b + (x != y).to(torch.float64).sum(-1) * (log_a - log_b)


def bridge_probs(x0: torch.Tensor, x1: torch.Tensor, gamma_0t, gamma_t1, q: int) -> torch.Tensor:
    """Per-site law of x_t under the reference bridge pinned at x0 (start) and x1 (end).

    Parameters
    ----------
    x0, x1 : int64 (B, D) end points.
    gamma_0t, gamma_t1 : integrated rate from the start to t and from t to the end, float
        tensors (B,) (or scalars).
    q : number of values per site.

    Returns
    -------
    float64 (B, D, q) probabilities (each row sums to one).
    """
    g0t = torch.as_tensor(gamma_0t, dtype=torch.float64, device=x0.device).reshape(-1, 1, 1)
    gt1 = torch.as_tensor(gamma_t1, dtype=torch.float64, device=x0.device).reshape(-1, 1, 1)
    la0, lb0 = move_stay_log_probs(g0t, q)
    la1, lb1 = move_stay_log_probs(gt1, q)
    la01, lb01 = move_stay_log_probs(g0t + gt1, q)
    n = torch.arange(q, device=x0.device)
    logp = (torch.where(x0.unsqueeze(-1) == n, lb0, la0) + torch.where(x1.unsqueeze(-1) == n, lb1, la1)
            - torch.where((x0 == x1).unsqueeze(-1), lb01, la01))
    return logp.exp()


def sample_categorical(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row of ``probs`` (..., q) by inverse CDF (int64 (...,))."""
    u = torch.rand(probs.shape[:-1] + (1,), generator=generator, device=probs.device,
                   dtype=probs.dtype)
    return (u > probs.cumsum(-1)).sum(-1).clamp_(max=probs.shape[-1] - 1)


def sample_bridge(x0, x1, gamma_0t, gamma_t1, q: int, *, generator: torch.Generator) -> torch.Tensor:
    """Draw x_t (B, D) from the reference bridge (see :func:`bridge_probs`)."""
    return sample_categorical(bridge_probs(x0, x1, gamma_0t, gamma_t1, q), generator)


def shift_index(x_from: torch.Tensor, x_to: torch.Tensor, q: int) -> torch.Tensor:
    """Group-shifted value indices ``(n + x_to^d - x_from^d) mod q``, int64 (B, D, q).

    Adjoint matching reads a quantity defined at ``x_to`` for the move ``x_from -> x_from^{d<-n}``
    at the translated value: the move adds ``n - x_from^d`` to site d, and the same
    translation applied at ``x_to`` lands on this index.
    """
    return torch.remainder(torch.arange(q, device=x_from.device) + (x_to - x_from).unsqueeze(-1), q)


# ---------------------------------------------------------------------------- sources
def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ConfigError(f"unknown source {source!r}; choose one of {', '.join(map(repr, SOURCES))}")


def sample_source(source: str, n: int, d: int, q: int, *, generator: torch.Generator,
                  device=None) -> torch.Tensor:
    """``n`` initial states (int64 (n, d)) from the ``"uniform"`` or ``"delta"`` source."""
    _check_source(source)
    if source == "uniform":
        return torch.randint(0, q, (n, d), generator=generator, device=device)
    return torch.randint(0, q, (n, 1), generator=generator, device=device).expand(n, d).contiguous()


def source_log_terminal(source: str, x1: torch.Tensor, gamma_total, q: int) -> torch.Tensor:
    """float64 ``log p^r_1(x_1)`` (B,): the reference's terminal law started from ``source``.

    Parameters
    ----------
    source : ``"uniform"`` or ``"delta"`` (see the module docstring).
    x1 : int64 (B, D) terminal states.
    gamma_total : integrated reference rate over the whole time grid, ``Gamma(t_0, 1)``.
    q : number of values per site.
    """
    _check_source(source)
    b, d = x1.shape
    if source == "uniform":
        return torch.full((b,), -d * math.log(q), dtype=torch.float64, device=x1.device)
    counts = torch.nn.functional.one_hot(x1, q).sum(1).to(torch.float64)  # (B, q): n_c(x1)
    return _delta_log_terminal(counts, d, gamma_total, q) - math.log(q)


def _delta_log_terminal(counts: torch.Tensor, d: int, gamma_total, q: int) -> torch.Tensor:
    """``log p^r_1 + log q`` of the delta source at states with value counts ``counts`` (last
    axis: ``n_c`` for c = 0..q-1)."""
    log_a, log_b = move_stay_log_probs(torch.as_tensor(gamma_total, dtype=torch.float64), q)
    log_a, log_b = log_a.to(counts.device), log_b.to(counts.device)
    return torch.logsumexp(counts * log_b + (d - counts) * log_a, dim=-1)


def source_log_terminal_score(source: str, x: torch.Tensor, gamma_total, q: int) -> torch.Tensor:
    """Discrete score of the reference terminal law, ``log p^r_1(x^{d <- n}) - log p^r_1(x)``.

    Zero for the uniform source. For the delta source, and a target invariant under the global
    translation ``x -> x + c`` (Ising without field, Potts), the Schrödinger-bridge corrector
    is exactly this score: the bridge potential on the source is the same at every constant
    configuration, so ``phihat = K^T a`` is proportional to ``p^r_1``.

    Parameters
    ----------
    x : int64 (B, D) states.
    gamma_total : integrated reference rate ``Gamma(t_0, 1)``.

    Returns
    -------
    float64 (B, D, q); zero at each site's current value.
    """
    _check_source(source)
    b, d = x.shape
    if source == "uniform":
        return torch.zeros(b, d, q, dtype=torch.float64, device=x.device)
    eye = torch.eye(q, dtype=torch.float64, device=x.device)
    counts = eye[x].sum(1)  # (B, q): n_c(x)
    moved = counts[:, None, None, :] - eye[x][:, :, None, :] + eye[None, None, :, :]  # (B, D, n, c)
    return (_delta_log_terminal(moved, d, gamma_total, q)
            - _delta_log_terminal(counts, d, gamma_total, q)[:, None, None])


# ---------------------------------------------------------------------------- tau-leaping
def step_probs(x: torch.Tensor, log_phi: torch.Tensor, gamma_bar, q: int, *,
               max_jump: float = 0.99) -> "tuple[torch.Tensor, torch.Tensor]":
    """Per-site transition probabilities of one controlled step.

    Parameters
    ----------
    x : int64 (B, D) current state.
    log_phi : (B, D, q) controller output (the entry at the current value is ignored).
    gamma_bar : integrated reference rate over the step (scalar or (B,)).
    max_jump : cap on the total jump probability of one site (the stay probability is at
        least ``1 - max_jump``); capped rows are rescaled, not frozen.

    Returns
    -------
    probs : float64 (B, D, q), rows sum to one, every entry positive.
    capped : bool (B, D), rows whose jump probability was scaled down to ``max_jump``.
    """
    if not 0.0 < max_jump < 1.0:
        raise ConfigError(f"max_jump must be in (0, 1), got {max_jump!r}")
    lp = log_phi.to(torch.float64)
    if not bool(torch.isfinite(lp).all()):
        raise TrainingDivergedError("the controller returned NaN or infinite log phi; lower the "
                                    "learning rate (lr=...) or use more time steps")
    log_a, _ = move_stay_log_probs(gamma_bar, q)
    log_a = torch.as_tensor(log_a, device=x.device).reshape(-1, 1, 1)
    here = torch.nn.functional.one_hot(x, q).bool()
    jump = torch.exp(lp + log_a).masked_fill(here, 0.0)
    total = jump.sum(-1, keepdim=True)
    capped = total > max_jump
    jump = torch.where(capped, jump * (max_jump / total), jump)
    stay = 1.0 - jump.sum(-1, keepdim=True)
    return torch.where(here, stay, jump), capped.squeeze(-1)


def tau_leap_step(x: torch.Tensor, log_phi: torch.Tensor, gamma_bar, q: int, *,
                  generator: torch.Generator, max_jump: float = 0.99):
    """One controlled step with its exact log-likelihood ratio against the reference.

    Returns
    -------
    x_new : int64 (B, D).
    log_ratio : float64 (B,), ``log p^r(x_new | x) - log p^u(x_new | x)``.
    capped : bool (B, D), see :func:`step_probs`.
    """
    probs, capped = step_probs(x, log_phi, gamma_bar, q, max_jump=max_jump)
    x_new = sample_categorical(probs, generator)
    log_pu = probs.gather(-1, x_new.unsqueeze(-1)).squeeze(-1).log().sum(-1)
    log_pr = transition_log_prob(x, x_new, torch.as_tensor(gamma_bar, device=x.device), q)
    return x_new, log_pr - log_pu, capped


@dataclass
class CyclicPath:
    """A batch of simulated controlled paths.

    Attributes
    ----------
    x0, x1 : int64 (B, D) start and end states.
    log_ratio : float64 (B,), ``log p^r(path) - log p^u(path)`` summed over the K steps
        (the initial states have the same law, the source, under both).
    n_capped : number of (site, step) rows whose jump probability was capped.
    n_jumps : float64 (B,), number of site changes along each path.
    """

    x0: torch.Tensor
    x1: torch.Tensor
    log_ratio: torch.Tensor
    n_capped: int
    n_jumps: torch.Tensor

    def __len__(self) -> int:
        return int(self.x1.shape[0])


@torch.no_grad()
def cyclic_rollout(controller: Callable, x0: torch.Tensor, times: torch.Tensor,
                   noise: NoiseSchedule, q: int, *, generator: torch.Generator,
                   max_jump: float = 0.99) -> CyclicPath:
    """Simulate the controlled CTMC from ``x0`` over the time grid ``times`` (K + 1 points).

    Parameters
    ----------
    controller : callable ``(x (B, D) int64, t (B,) float) -> log phi (B, D, q)``; evaluated
        at the left end of every step.
    x0 : int64 (B, D) initial states (draws from the source, see :func:`sample_source`).
    times : increasing 1-D tensor of K + 1 times.
    noise : the reference schedule.

    Returns
    -------
    CyclicPath with the exact path log-likelihood ratio.
    """
    x = x0
    b = x0.shape[0]
    log_ratio = torch.zeros(b, dtype=torch.float64, device=x0.device)
    n_jumps = torch.zeros(b, dtype=torch.float64, device=x0.device)
    n_capped = torch.zeros((), dtype=torch.int64, device=x0.device)
    gammas = noise.integral(times[:-1].double(), times[1:].double())
    # the step times as the controller's (default-dtype) rows, built once on the device: no
    # host sync per step (the same float32 values torch.full(float(times[k])) gave)
    t_rows = times.to(device=x0.device, dtype=torch.get_default_dtype())
    for k in range(len(times) - 1):
        x_new, lr, capped = tau_leap_step(x, controller(x, t_rows[k].repeat(b)), gammas[k], q,
                                          generator=generator, max_jump=max_jump)
        log_ratio += lr
        n_jumps += (x_new != x).sum(-1)
        n_capped += capped.sum()
        x = x_new
    return CyclicPath(x0, x, log_ratio, int(n_capped), n_jumps)  # one host sync per path
