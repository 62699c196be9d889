"""Calibration of the importance-sampling log Z estimator and of the Jarzynski estimator.

Setting with exact answers: target p~(x) = exp(-|x - mu|^2 / 2) in d = 3 (log Z =
(d/2) log 2 pi), proposal q = N(0, s^2 I). For s^2 > 1/2 the weight variance is finite and
    E_q[w^2] / E_q[w]^2 = prod_dims  s / sqrt(2 pi) * sqrt(pi / a) * exp(mu^2 / a - mu^2),
    a = 1 - 1 / (2 s^2),
so Kish ESS / N converges to its inverse. For s < 1 the weights have a Pareto tail with shape
k = 1 - s^2 (infinite variance when k > 1/2). Replicates are vectorized (200 x N draws).
"""

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from _stats import assert_consistent, assert_rejects
from boltzkit.errors import TargetError, UnreliableEstimateWarning
from boltzkit.estimators import jarzynski, log_z_from_log_weights

D, MU = 3, 0.3
LOG_Z = 0.5 * D * math.log(2 * math.pi)
R, N = 200, 400
COVERAGE_ALPHA = 1e-4


def replicate_log_weights(s, *, n_rep=R, n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, s, size=(n_rep, n, D))
    log_p = -0.5 * ((x - MU) ** 2).sum(-1)
    log_q = -0.5 * (x ** 2).sum(-1) / s ** 2 - D * math.log(s) - 0.5 * D * math.log(2 * math.pi)
    return log_p - log_q


def estimates(s, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableEstimateWarning)
        return [log_z_from_log_weights(lw) for lw in replicate_log_weights(s, **kw)]


def kish_limit(s):
    a = 1.0 - 1.0 / (2 * s * s)
    one = s / math.sqrt(2 * math.pi) * math.sqrt(math.pi / a) * math.exp(MU ** 2 / a - MU ** 2)
    return one ** -D


def coverage_pvalue(ests, truth, level=0.95):
    z = stats.norm.isf((1 - level) / 2)
    hits = sum(abs(e.log_z - truth) <= z * e.stderr for e in ests)
    return stats.binomtest(hits, len(ests), level).pvalue, hits / len(ests)


def test_log_z_interval_coverage_is_nominal_for_light_tails():
    ests = estimates(1.5)
    p, cov = coverage_pvalue(ests, LOG_Z)
    assert p > COVERAGE_ALPHA, f"95% coverage {cov:.3f} over {R} replicates"
    zs = np.array([(e.log_z - LOG_Z) / e.stderr for e in ests])
    assert_consistent(zs.mean(), 1 / math.sqrt(R), 0.0, what="mean z-score")
    assert 0.8 < zs.std() < 1.2
    # negative control: the same check against log Z shifted by two typical error bars fails
    shift = 2 * float(np.median([e.stderr for e in ests]))
    assert coverage_pvalue(ests, LOG_Z + shift)[0] < COVERAGE_ALPHA


def test_heavy_tailed_weights_undercover_and_are_flagged():
    """s = 0.45: Pareto k = 1 - s^2 = 0.80, infinite weight variance. The nominal interval
    undercovers, k-hat sees the tail, and the estimate says it is unreliable."""
    ests = estimates(0.45)
    p, cov = coverage_pvalue(ests, LOG_Z)
    assert p < COVERAGE_ALPHA and cov < 0.8
    ks = np.array([e.pareto_k for e in ests])
    assert ks.mean() > 0.7
    assert np.mean([not e.reliable for e in ests]) > 0.5
    with pytest.warns(UnreliableEstimateWarning, match="Pareto k"):
        for lw in replicate_log_weights(0.45, n_rep=20):
            log_z_from_log_weights(lw)


def test_pareto_k_orders_tails():
    """k-hat grows as the proposal narrows: bounded weights (s > 1) give k-hat < 0.5 in every
    replicate; the means follow the true k = 1 - s^2 in order."""
    light = np.array([e.pareto_k for e in estimates(1.5)])
    assert (light < 0.5).all() and light.mean() < 0.0
    means = [np.mean([e.pareto_k for e in estimates(s, n_rep=60)]) for s in (0.8, 0.6, 0.45)]
    assert means[0] < means[1] < means[2]
    assert all(e.reliable for e in estimates(1.5, n_rep=50))


@pytest.mark.parametrize("s", [1.5, 1.2])
def test_kish_ess_matches_its_analytic_limit(s):
    frac = np.array([e.ess_frac for e in estimates(s)])
    se = frac.std(ddof=1) / math.sqrt(frac.size)
    # Kish ESS is a ratio of sums: bias O(1/N), allowed as 1/N
    assert_consistent(frac.mean(), se, kish_limit(s), bias=1.0 / N, what="ESS / N")
    other = 1.2 if s == 1.5 else 1.5
    assert_rejects(frac.mean(), se, kish_limit(other), bias=1.0 / N, what="ESS / N")


# ------------------------------------------------------------------------------ Jarzynski
def test_jarzynski_gaussian_work_exact_free_energy():
    """Gaussian work W ~ N(m, v): E[exp(-W)] = exp(-m + v/2), so Delta F = m - v/2 exactly."""
    rng = np.random.default_rng(1)
    m, v, log_z0 = 2.0, 1.0, 0.7
    work = rng.normal(m, math.sqrt(v), size=20_000)
    est = jarzynski(work, log_z0=log_z0)
    assert_consistent(est.log_z, est.stderr, log_z0 - (m - v / 2), bias=est.stderr ** 2)
    # negative control: the dissipation-free value -<W> (the second law bound) is ruled out
    assert_rejects(est.log_z, est.stderr, log_z0 - m)
    assert est.n == work.size and est.reliable


def test_jarzynski_coverage_over_replicates():
    rng = np.random.default_rng(2)
    m, v = 1.0, 0.5
    work = rng.normal(m, math.sqrt(v), size=(R, 500))
    ests = [jarzynski(w) for w in work]
    p, cov = coverage_pvalue(ests, -(m - v / 2))
    assert p > COVERAGE_ALPHA, f"coverage {cov:.3f}"
    assert coverage_pvalue(ests, -m)[0] < COVERAGE_ALPHA  # negative control


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("work, match", [
    ([1.0, float("nan"), 2.0], "NaN"),
    ([1.0, -float("inf")], "-inf"),
    ([[1.0, 2.0], [3.0, 4.0]], "1-D"),
    ([1.0], "at least 2"),
])
def test_jarzynski_bad_work(work, match):
    with pytest.raises(TargetError, match=match):
        jarzynski(work)
    with pytest.raises(TargetError, match="log_z0"):
        jarzynski([1.0, 2.0], log_z0=float("inf"))


def test_importance_estimator_bad_weights():
    with pytest.raises(TargetError, match="NaN"):
        log_z_from_log_weights([0.0, float("nan")])
    with pytest.raises(TargetError, match="-inf"):
        log_z_from_log_weights([-float("inf")] * 3)
    with pytest.raises(TargetError, match="no log-weights"):
        log_z_from_log_weights([])
    # +inf work is allowed: a zero weight
    est = jarzynski([0.0, float("inf"), 0.0, 0.0])
    assert est.log_z == pytest.approx(math.log(3 / 4))


def test_power_for_ess_tempers_to_the_requested_ess():
    """Lognormal weights with log-sd s: Kish ESS fraction of w^a is exp(-(a s)^2) in the
    large-N limit, so the power that keeps a fraction f is sqrt(-log f) / s."""
    from boltzkit.estimators.importance import ess_kish, power_for_ess

    lw = np.random.default_rng(0).normal(0.0, 3.0, 200_000)
    a = power_for_ess(lw, 0.2)
    assert a == pytest.approx(math.sqrt(-math.log(0.2)) / 3.0, rel=0.03)
    assert ess_kish(a * lw) / lw.size >= 0.2 > ess_kish((a + 0.02) * lw) / lw.size
    assert power_for_ess(lw, 0.2) != pytest.approx(math.sqrt(-math.log(0.1)) / 3.0, rel=0.03)  # negative control
    assert power_for_ess(0.01 * lw, 0.2) == 1.0  # nearly uniform weights are kept whole
    assert power_for_ess(lw, 0.0) == 1.0 and power_for_ess(lw, 1.0) < 1e-2


def test_pareto_k_is_not_fitted_to_a_tail_of_repeated_values():
    """Near-uniform weights over a few repeated values (a discrete target sampled almost
    perfectly) once read k-hat = 2.5 and were flagged unreliable; now k-hat is not estimated."""
    from boltzkit.estimators.importance import pareto_k

    rng = np.random.default_rng(0)
    vals = np.array([-0.025, -0.0218, -0.0122, -0.0119, 0.0002, 0.0124])
    lw = rng.choice(vals, size=4000, p=[0.414, 0.005, 0.54, 0.018, 0.022, 0.001])
    est = log_z_from_log_weights(lw, warn=False)
    assert est.ess_frac > 0.99 and math.isnan(est.pareto_k) and est.reliable
    # negative control: continuous heavy-tailed weights (lognormal, sd 3) are still flagged
    heavy = log_z_from_log_weights(rng.normal(0.0, 3.0, 4000), warn=False)
    assert pareto_k(rng.normal(0.0, 3.0, 4000)) > 0.7 and not heavy.reliable
