"""Importance-sampling estimators from log-weights.

Given unnormalized log importance weights ``lw_i = log p~(x_i) - log q(x_i)`` (or their
path-space analogue), ``Z_hat = mean(exp(lw))`` is unbiased for Z. We report

* ``log_z = logsumexp(lw) - log N`` (biased low by about stderr^2 / 2, Jensen),
* ``log_z_stderr = sqrt((N / ESS - 1) / (N - 1))``: the delta-method standard error of
  log Z_hat, i.e. the sample coefficient of variation of the weights over sqrt(N),
* the Kish effective sample size ``ESS = (sum w)^2 / sum w^2``,
* the Pareto k-hat of the weight tail (Vehtari et al.): above 0.7 the variance of the
  weights is practically infinite and the error bar is not trustworthy.

All arithmetic is float64.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import TargetError, UnreliableEstimateWarning

PARETO_K_LIMIT = 0.7
ESS_FRAC_LIMIT = 0.01
MIN_DISTINCT_TAIL = 5  # fewer distinct tail exceedances: k-hat is not estimated (NaN)


def _as_f64(lw) -> np.ndarray:
    if isinstance(lw, torch.Tensor):
        lw = lw.detach().to("cpu", torch.float64).numpy()
    return np.asarray(lw, dtype=np.float64).reshape(-1)


def normalized_weights(log_weights) -> np.ndarray:
    """Self-normalized weights (float64, sum to one)."""
    lw = _as_f64(log_weights)
    w = np.exp(lw - lw.max())
    return w / w.sum()


def ess_kish(log_weights) -> float:
    """Kish effective sample size (sum w)^2 / sum w^2, in [1, N]."""
    w = normalized_weights(log_weights)
    return float(1.0 / np.sum(w * w))


def ess_kish_of_subset(weights, mask) -> float:
    """Kish ESS ``(sum w m)^2 / sum (w m)^2`` of the samples selected by ``mask`` (boolean or
    0/1), with ``weights`` on one scale for all samples (e.g. ``exp(lw - max lw)``); 0 when no
    selected weight is positive (none selected, or all underflow on that scale)."""
    wm = np.asarray(weights, dtype=np.float64) * np.asarray(mask, dtype=np.float64)
    s2 = float(np.sum(wm * wm))
    return float(np.sum(wm)) ** 2 / s2 if s2 > 0 else 0.0


def power_for_ess(log_weights, min_ess_frac: float, *, tol: float = 1e-3) -> float:
    """The largest power ``a`` in [0, 1] at which the tempered weights ``w^a`` keep a Kish ESS
    fraction of at least ``min_ess_frac`` (bisection; ``a = 1`` when the weights already do).

    Tempering ``w -> w^a`` interpolates between uniform weights (a = 0) and the full
    importance weights (a = 1), as in adaptive sequential Monte Carlo.
    """
    lw = _as_f64(log_weights)
    n = lw.size

    def ok(a):
        return ess_kish(a * lw) >= min_ess_frac * n

    if ok(1.0):
        return 1.0
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def pareto_k(log_weights) -> float:
    """Tail shape k-hat of the largest weights (Zhang & Stephens 2009 estimator).

    Fits a generalized Pareto distribution to the M = min(N/5, 3 sqrt N) largest weights.
    Returns NaN when there are too few weights, or too few distinct values among the largest
    ones (a discrete target's repeated states), to fit.
    """
    lw = _as_f64(log_weights)
    return _pareto_k_of_tail(np.sort(lw), lw.size)


def _tail_size(n: int) -> int:
    """M = min(N/5, 3 sqrt N): how many of the largest weights the Pareto fit uses."""
    return int(min(n / 5.0, 3.0 * math.sqrt(n)))


def _pareto_k_of_tail(lw: np.ndarray, n: int) -> float:
    """k-hat from the sorted largest log-weights ``lw`` (at least M + 1 of them) of ``n``."""
    m = _tail_size(n)
    if m < 5:
        return float("nan")
    w = np.exp(lw - lw[-1])
    tail, cutoff = w[-m:], w[-m - 1]
    x = tail - cutoff
    if np.all(x <= 0) or x[-1] <= 0:
        return 0.0
    if np.unique(x[x > 0]).size < MIN_DISTINCT_TAIL:
        # a tail of a few repeated values (a discrete target sampled repeatedly in a few
        # states): a generalized Pareto fit to it is meaningless and read k = 2-3 on
        # near-uniform weights; the weights of a finite space are bounded anyway
        return float("nan")
    # Zhang-Stephens profile-likelihood grid over theta = -k/sigma
    nm = x.size
    prior = 3.0
    mgrid = 30 + int(math.sqrt(nm))
    q1 = x[max(int(nm / 4.0 + 0.5) - 1, 0)]
    xstar = q1 if q1 > 0 else x[-1] / 4.0
    j = np.arange(1, mgrid + 1)
    theta = 1.0 / x[-1] + (1.0 - np.sqrt(mgrid / (j - 0.5))) / (prior * xstar)
    kk = np.log1p(-theta[:, None] * x).mean(1)  # (mgrid,): one row per theta
    ll = nm * (np.log(-theta / kk) - kk - 1.0)
    with np.errstate(over="ignore"):  # overflow -> inf -> weight 0, which is the right limit
        wt = 1.0 / np.exp(ll - ll[:, None]).sum(axis=1)
    theta_hat = float(np.sum(theta * wt))
    k = float(np.mean(np.log1p(-theta_hat * x)))
    # weakly informative shrinkage toward 0.5 (Vehtari et al. 2024, eq. 8)
    return float((nm * k + 10 * 0.5) / (nm + 10))


@dataclass(frozen=True)
class LogZEstimate:
    log_z: float
    stderr: float
    ess: float
    n: int
    pareto_k: float
    max_weight: float

    @property
    def ess_frac(self) -> float:
        return self.ess / self.n

    @property
    def reliable(self) -> bool:
        k_ok = not (self.pareto_k > PARETO_K_LIMIT)  # NaN (too few weights) does not flag
        return bool(k_ok and self.ess_frac >= ESS_FRAC_LIMIT and math.isfinite(self.log_z))

    def diagnostics(self) -> dict:
        return {"ess": self.ess, "ess_frac": self.ess_frac, "pareto_k": self.pareto_k,
                "max_weight": self.max_weight, "n_weights": self.n, "reliable": self.reliable}


def log_z_from_log_weights(log_weights, *, log_z0: float = 0.0, warn: bool = True) -> LogZEstimate:
    """log Z (+ log_z0) with its delta-method standard error and weight diagnostics."""
    lw = _as_f64(log_weights)
    n = lw.size
    if n == 0:
        raise TargetError("no log-weights were given; draw at least two samples")
    bad = np.flatnonzero(np.isnan(lw))
    if bad.size:
        raise TargetError(f"{bad.size} of {n} log-weights are NaN (first at index {bad[0]}); "
                          "the target or the sampler produced NaN energies or densities")
    if not np.isfinite(lw).any():
        raise TargetError("every log-weight is -inf: no sample has positive target density")
    mx = lw.max()
    s = np.exp(lw - mx)
    log_z = float(mx + math.log(s.sum()) - math.log(n)) + log_z0
    w = s / s.sum()
    return _estimate(log_z, float(1.0 / np.sum(w * w)), n, pareto_k(lw), float(w.max()), warn)


def _estimate(log_z: float, ess: float, n: int, k: float, max_weight: float, warn: bool) -> LogZEstimate:
    """The estimate of ``n`` weights of Kish ESS ``ess`` with its delta-method standard error; when
    ``warn``, an UnreliableEstimateWarning for degenerate weights."""
    stderr = math.sqrt(max(n / ess - 1.0, 0.0) / max(n - 1, 1)) if n > 1 else float("inf")
    est = LogZEstimate(log_z=log_z, stderr=stderr, ess=ess, n=n, pareto_k=k, max_weight=max_weight)
    if warn and not est.reliable:
        warnings.warn(f"importance weights are degenerate (ESS {ess:.1f} of {n}, Pareto k {k:.2f}); the log "
                      f"Z error bar {stderr:.3g} is not reliable. Train longer or draw more samples.",
                      UnreliableEstimateWarning, stacklevel=3)
    return est


class LogWeightAccumulator:
    """Streaming version of :func:`log_z_from_log_weights`: feed log-weights chunk by chunk.

    Memory is constant: running float64 sums of ``w`` and ``w^2`` (rescaled to the running
    maximum) and the ``tail_capacity`` largest log-weights for the Pareto fit, which is exact
    while ``N <= (tail_capacity / 3)^2`` (10^6 weights for the default 3001). The estimate
    equals the in-memory one on the concatenated weights to rounding.

    Examples
    --------
    >>> acc = LogWeightAccumulator()
    >>> for chunk in (np.zeros(100), np.zeros(50)):
    ...     acc.update(chunk)
    >>> round(acc.estimate().ess)
    150
    """

    def __init__(self, tail_capacity: int = 3001):
        self.tail_capacity = int(tail_capacity)
        self.n, self.max = 0, -math.inf
        self._s1 = self._s2 = 0.0
        self._tail = np.empty(0)

    def update(self, log_weights) -> None:
        lw = _as_f64(log_weights)
        if lw.size == 0:
            return
        bad = np.flatnonzero(np.isnan(lw))
        if bad.size:
            raise TargetError(f"{bad.size} log-weights of this chunk are NaN (first at index "
                              f"{bad[0]}); the target or the sampler produced NaN energies or densities")
        new_max = max(self.max, float(lw.max()))
        if math.isfinite(new_max):
            shift = math.exp(self.max - new_max) if math.isfinite(self.max) else 0.0
            d = np.exp(lw - new_max)
            self._s1 = self._s1 * shift + float(d.sum())
            self._s2 = self._s2 * shift * shift + float(np.sum(d * d))
            self.max = new_max
        self.n += lw.size
        self._keep_tail(lw, self.tail_capacity)

    def merge(self, other: "LogWeightAccumulator") -> None:
        """Add the weights fed to ``other`` (e.g. another rank's), as if fed here."""
        if other.n == 0:
            return
        new_max = max(self.max, other.max)
        if math.isfinite(new_max):
            a = math.exp(self.max - new_max) if math.isfinite(self.max) else 0.0
            b = math.exp(other.max - new_max) if math.isfinite(other.max) else 0.0
            self._s1 = self._s1 * a + other._s1 * b
            self._s2 = self._s2 * a * a + other._s2 * b * b
            self.max = new_max
        self.n += other.n
        self._keep_tail(other._tail, max(self.tail_capacity, other.tail_capacity))

    def _keep_tail(self, values, cap: int) -> None:
        """Keep the ``cap`` largest of the stored tail and ``values`` (the Pareto fit's input)."""
        tail = np.concatenate([self._tail, values])
        self._tail = np.partition(tail, tail.size - cap)[-cap:] if tail.size > cap else tail
        self.tail_capacity = cap

    def estimate(self, *, log_z0: float = 0.0, warn: bool = True) -> LogZEstimate:
        """The :class:`LogZEstimate` of all weights fed so far."""
        n = self.n
        if n == 0:
            raise TargetError("no log-weights were given; draw at least two samples")
        if not math.isfinite(self.max):
            raise TargetError("every log-weight is -inf: no sample has positive target density")
        log_z = self.max + math.log(self._s1) - math.log(n) + log_z0
        k = (_pareto_k_of_tail(np.sort(self._tail), n) if _tail_size(n) + 1 <= self._tail.size
             else float("nan"))
        return _estimate(log_z, self._s1 * self._s1 / self._s2, n, k, 1.0 / self._s1, warn)


def self_normalized_expectation(values, log_weights) -> "tuple[float, float]":
    """Self-normalized IS estimate of E_p[f] and its delta-method standard error."""
    f = _as_f64(values)
    w = normalized_weights(log_weights)
    if f.shape != w.shape:
        raise TargetError(f"values have {f.size} entries but there are {w.size} weights")
    mean = float(np.sum(w * f))
    se = float(math.sqrt(np.sum(w * w * (f - mean) ** 2)))
    return mean, se
