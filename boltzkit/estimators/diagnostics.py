"""Autocorrelation diagnostics of Markov chains.

Convention (used everywhere in boltzkit)
----------------------------------------
For a stationary scalar chain with normalized autocorrelation function rho(t),

    tau_int = 1 + 2 * sum_{t >= 1} rho(t),        ESS = N / tau_int,

so that the variance of the chain mean is Var(x) * tau_int / N. An independent chain has
tau_int = 1 and an AR(1) chain with coefficient phi has tau_int = (1 + phi) / (1 - phi).
(Sokal's lecture notes define tau_int as half of this, with ESS = N / (2 tau_int); the
numbers differ by exactly a factor of two, the ESS is the same.)

Estimator
---------
The autocovariance is computed by FFT (zero-padded, the usual biased 1/n normalization)
about the *grand* mean of all chains and averaged over chains, so chains that sit in
different modes show up as slow decay instead of being hidden by per-chain centring.
The sum is truncated with Sokal's automatic window: the smallest M with M >= c * tau(M),
c = 5 by default. The relative standard error of the estimate is about
sqrt(2 (2M + 1) / N) (Sokal 1997, eq. 3.19), N being the total number of draws.

A chain shorter than ``min_steps_per_tau`` (50) times tau_int gives an unreliable
estimate; :class:`~boltzkit.errors.ConvergenceWarning` then says so (emcee's AutocorrError,
as a warning).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import fft as sp_fft

from ..errors import ConvergenceWarning, TargetError

MIN_STEPS_PER_TAU = 50.0


def _as_chains(x) -> np.ndarray:
    """Return a float64 array (n_steps, n_chains) from a (n_steps,) or (n_steps, n_chains) input."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise TargetError(f"a chain must have shape (n_steps,) or (n_steps, n_chains), got {x.shape}")
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise TargetError(f"a chain needs at least 2 steps and 1 chain, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise TargetError("the chain contains NaN or infinite values; the sampler produced invalid states")
    return x


def autocorr_function(x) -> np.ndarray:
    """Normalized autocorrelation rho(t), t = 0..n_steps-1, averaged over chains.

    Parameters
    ----------
    x : array or Tensor, shape (n_steps,) or (n_steps, n_chains)

    Returns
    -------
    rho : float64 array (n_steps,), rho[0] = 1. A constant chain returns rho = [1, 0, 0, ...].
    """
    x = _as_chains(x)
    n = x.shape[0]
    y = x - x.mean()
    nfft = sp_fft.next_fast_len(2 * n, real=True)
    f = sp_fft.rfft(y, n=nfft, axis=0)
    acov = sp_fft.irfft(f * np.conj(f), n=nfft, axis=0)[:n].mean(axis=1) / n
    rho = np.zeros(n)
    rho[0] = 1.0
    if acov[0] > 0:
        rho = acov / acov[0]
    return rho


@dataclass(frozen=True)
class AutocorrEstimate:
    """Integrated autocorrelation time of a chain and what it implies.

    Attributes
    ----------
    tau : tau_int = 1 + 2 sum rho(t) (clamped below at 1), in steps of the chain.
    stderr : approximate standard error of ``tau`` (Sokal), tau * sqrt(2 (2M + 1) / N).
    window : the summation window M.
    n_steps, n_chains : chain shape; N = n_steps * n_chains draws in all.
    converged : False when the window did not close or n_steps < min_steps_per_tau * tau.
    """

    tau: float
    stderr: float
    window: int
    n_steps: int
    n_chains: int
    converged: bool

    @property
    def ess(self) -> float:
        """Effective sample size N / tau_int."""
        return self.n_steps * self.n_chains / self.tau


def autocorr_estimate(x, *, c: float = 5.0, min_steps_per_tau: float = MIN_STEPS_PER_TAU,
                      warn: bool = True) -> AutocorrEstimate:
    """Estimate tau_int with Sokal's automatic window; see the module docstring.

    Parameters
    ----------
    x : array or Tensor, shape (n_steps,) or (n_steps, n_chains)
        One scalar observable along the chain(s), e.g. the energy after each sweep.
    c : float
        Window constant: the window is the smallest M with M >= c * tau(M).
    min_steps_per_tau : float
        Below ``n_steps < min_steps_per_tau * tau`` the estimate is flagged (and warned about).
    warn : bool
        Emit a :class:`~boltzkit.errors.ConvergenceWarning` when the estimate is unreliable.

    Returns
    -------
    AutocorrEstimate
    """
    if not (isinstance(c, (int, float)) and c > 0):
        raise TargetError(f"c (window constant) must be a positive number, got {c!r}")
    x = _as_chains(x)
    n, m = x.shape
    rho = autocorr_function(x)
    taus = 2.0 * np.cumsum(rho) - 1.0  # tau(M) = 1 + 2 sum_{t=1}^{M} rho(t)
    ok = np.arange(n) >= c * taus
    window_closed = bool(ok.any())
    window = int(np.argmax(ok)) if window_closed else n - 1
    tau = max(float(taus[window]), 1.0)
    stderr = tau * math.sqrt(2.0 * (2 * window + 1) / (n * m))
    long_enough = n >= min_steps_per_tau * tau
    est = AutocorrEstimate(tau=tau, stderr=stderr, window=window, n_steps=n, n_chains=m,
                           converged=window_closed and long_enough)
    if warn and not est.converged:
        if not window_closed:
            why = (f"the autocorrelation did not decay within the chain (no window M >= {c:g} tau "
                   f"up to M = {n - 1}); tau_int >= {tau:.3g} is a lower bound")
        else:
            why = (f"the chain has {n} steps, fewer than {min_steps_per_tau:g} * tau_int = "
                   f"{min_steps_per_tau * tau:.0f}; tau_int = {tau:.3g} and the ESS are unreliable")
        warnings.warn(f"{why}. Run the chain(s) longer (more sweeps per chain).",
                      ConvergenceWarning, stacklevel=2)
    return est


def integrated_autocorr_time(x, *, c: float = 5.0, min_steps_per_tau: float = MIN_STEPS_PER_TAU,
                             warn: bool = True) -> float:
    """Integrated autocorrelation time tau_int = 1 + 2 sum rho(t) (>= 1), in steps, of
    :func:`autocorr_estimate` (same arguments); the effective sample size is ``x.size / tau_int``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = np.zeros((20_000, 4))
    >>> for t in range(1, len(x)):
    ...     x[t] = 0.5 * x[t - 1] + rng.standard_normal(4)
    >>> tau = integrated_autocorr_time(x)   # exact: (1 + 0.5) / (1 - 0.5) = 3
    >>> bool(abs(tau - 3.0) < 0.3)
    True
    """
    return autocorr_estimate(x, c=c, min_steps_per_tau=min_steps_per_tau, warn=warn).tau


def ess_mcmc(x, *, c: float = 5.0, min_steps_per_tau: float = MIN_STEPS_PER_TAU,
             warn: bool = True) -> float:
    """Effective sample size N / tau_int of a chain array (n_steps,) or (n_steps, n_chains)."""
    return autocorr_estimate(x, c=c, min_steps_per_tau=min_steps_per_tau, warn=warn).ess
