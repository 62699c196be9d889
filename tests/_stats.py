"""Statistical assertions shared by the tests.

Tolerances come from the estimator's own error bar: |est - truth| <= z * stderr + bias,
with z set by a per-assert false-alarm rate alpha (default 1e-4 -> z = 3.89). Every
statistical test in the suite also checks a negative control with :func:`assert_rejects`:
the same check against a deliberately wrong truth must fail, which proves the test has power.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

ALPHA = 1e-4


def z_limit(alpha: float = ALPHA) -> float:
    return float(stats.norm.isf(alpha / 2))


def consistent(est, stderr, truth, *, alpha=ALPHA, bias=0.0) -> bool:
    return abs(est - truth) <= z_limit(alpha) * stderr + bias


def assert_consistent(est, stderr, truth, *, alpha=ALPHA, bias=0.0, what="log Z"):
    z = z_limit(alpha)
    if not consistent(est, stderr, truth, alpha=alpha, bias=bias):
        sig = abs(est - truth) / stderr if stderr > 0 else float("inf")
        raise AssertionError(f"{what}: {est:.6f} +- {stderr:.3g} vs exact {truth:.6f} "
                             f"({sig:.1f} sigma; limit {z:.1f} sigma + bias {bias})")


def assert_rejects(est, stderr, wrong_truth, *, alpha=ALPHA, bias=0.0, what="log Z"):
    """Negative control: the estimate must be inconsistent with a wrong truth."""
    if consistent(est, stderr, wrong_truth, alpha=alpha, bias=bias):
        raise AssertionError(f"negative control passed: {what} {est:.6f} +- {stderr:.3g} is "
                             f"consistent with the wrong value {wrong_truth:.6f}; the test has no power")


def chi2_gof_pvalue(counts, probs, *, min_expected=5.0) -> float:
    """Multinomial chi-square goodness of fit of counts to exact probabilities.

    Bins with small expected counts are pooled so the chi-square approximation holds.
    """
    counts = np.asarray(counts, dtype=float)
    probs = np.asarray(probs, dtype=float)
    probs = probs / probs.sum()
    n = counts.sum()
    order = np.argsort(probs)
    c, p = counts[order], probs[order]
    pooled_c, pooled_p, acc_c, acc_p = [], [], 0.0, 0.0
    for ci, pi in zip(c, p):
        acc_c += ci
        acc_p += pi
        if acc_p * n >= min_expected:
            pooled_c.append(acc_c)
            pooled_p.append(acc_p)
            acc_c = acc_p = 0.0
    if acc_p > 0:
        if pooled_p:
            pooled_c[-1] += acc_c
            pooled_p[-1] += acc_p
        else:
            pooled_c.append(acc_c)
            pooled_p.append(acc_p)
    pooled_c, pooled_p = np.array(pooled_c), np.array(pooled_p)
    if pooled_c.size < 2:
        return 1.0
    return float(stats.chisquare(pooled_c, pooled_p * n).pvalue)
