"""Integrated autocorrelation time against AR(1) chains, whose tau_int is known exactly.

For x_t = phi x_{t-1} + e_t, rho(t) = phi^t and tau_int = 1 + 2 sum_t phi^t = (1 + phi) / (1 - phi).
"""

import warnings

import numpy as np
import pytest
from scipy import signal

from _stats import assert_consistent, assert_rejects
from boltzkit.errors import ConvergenceWarning, TargetError
from boltzkit.estimators import autocorr_estimate, autocorr_function, ess_mcmc, integrated_autocorr_time


def ar1(phi, n_steps, n_chains, seed):
    """Stationary AR(1) chains (n_steps, n_chains), unit innovation variance."""
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((n_steps, n_chains))
    x0 = rng.standard_normal(n_chains) / np.sqrt(1.0 - phi**2)
    x, _ = signal.lfilter([1.0], [1.0, -phi], e, axis=0, zi=(phi * x0)[None, :])
    return x


def tau_ar1(phi):
    return (1.0 + phi) / (1.0 - phi)


@pytest.mark.parametrize("phi, n_chains", [(0.0, 4), (0.5, 4), (0.9, 8), (0.97, 16)])
def test_tau_matches_ar1(phi, n_chains):
    x = ar1(phi, 20_000, n_chains, seed=int(phi * 100))
    est = autocorr_estimate(x)
    assert est.converged
    # window truncation leaves out 2 phi^(M+1) / (1 - phi) (tiny for c = 5)
    bias = 2 * phi ** (est.window + 1) / (1 - phi)
    assert_consistent(est.tau, est.stderr, tau_ar1(phi), bias=bias, what=f"tau_int(phi={phi})")
    assert est.ess == pytest.approx(x.size / est.tau)
    # negative control: a 50% longer correlation time must be rejected
    assert_rejects(est.tau, est.stderr, 1.5 * tau_ar1(phi), bias=bias, what=f"tau_int(phi={phi})")


def test_stderr_is_calibrated():
    """Sokal's error bar matches the spread of tau over independent replicates (within 30%)."""
    phi = 0.8
    taus, ses = [], []
    for rep in range(60):
        est = autocorr_estimate(ar1(phi, 4000, 1, seed=1000 + rep), warn=False)
        taus.append(est.tau)
        ses.append(est.stderr)
    ratio = np.std(taus, ddof=1) / np.mean(ses)
    assert 0.7 < ratio < 1.3, ratio
    # and the replicate mean is unbiased to within its own error
    assert_consistent(np.mean(taus), np.std(taus, ddof=1) / np.sqrt(len(taus)), tau_ar1(phi),
                      what="mean tau over replicates", bias=0.03 * tau_ar1(phi))


def test_autocorr_function_of_ar1():
    x = ar1(0.7, 50_000, 4, seed=3)
    rho = autocorr_function(x)
    assert rho[0] == 1.0
    np.testing.assert_allclose(rho[1:6], 0.7 ** np.arange(1, 6), atol=0.02)


def test_anticorrelated_chain_is_clamped_to_one():
    x = ar1(-0.5, 10_000, 2, seed=4)
    assert integrated_autocorr_time(x) == 1.0
    assert ess_mcmc(x) == x.size


def test_constant_chain():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert integrated_autocorr_time(np.ones((100, 3))) == 1.0


def test_shapes_agree():
    x = ar1(0.5, 5000, 1, seed=5)
    assert integrated_autocorr_time(x[:, 0]) == integrated_autocorr_time(x)


def test_short_chain_warns_and_long_chain_does_not():
    with pytest.warns(ConvergenceWarning, match="Run the chain"):
        est = autocorr_estimate(ar1(0.95, 300, 4, seed=6))
    assert not est.converged
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert autocorr_estimate(ar1(0.2, 5000, 2, seed=7)).converged
    # quiet mode
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        autocorr_estimate(ar1(0.95, 300, 4, seed=6), warn=False)


def test_chains_stuck_in_different_modes_warn():
    # two chains that never leave their own mode: about the grand mean rho(t) does not decay
    x = np.random.default_rng(8).standard_normal((500, 2)) * 0.1 + np.array([-1.0, 1.0])
    with pytest.warns(ConvergenceWarning, match="lower bound"):
        est = autocorr_estimate(x)
    assert not est.converged and est.tau > 100


@pytest.mark.parametrize("bad, msg", [(np.zeros((3, 3, 3)), "shape"), (np.zeros(1), "at least 2"),
                                      (np.array([0.0, np.nan, 1.0]), "NaN")])
def test_bad_input(bad, msg):
    with pytest.raises(TargetError, match=msg):
        integrated_autocorr_time(bad)
    with pytest.raises(TargetError, match="window constant"):
        integrated_autocorr_time(np.zeros(10), c=0)
