"""AIS/SMC with a temperature ladder (``beta_start``): exact log Z at every level of an analytic
Gaussian, with negative controls.

Level lambda of the path has the reduced potential ``a(lambda) U_0 + lambda U`` with
``a = max(0, 1 - lambda / beta_start)``: geometric from the reference N(0, s0^2) to
exp(-beta_start U), then exp(-beta U) for beta from beta_start to 1, where
``log Z(beta) = sum_i 1/2 log(2 pi sig_i^2 / beta)`` exactly.
"""

import math
import warnings

import numpy as np
import pytest
import torch

import boltzkit as bk
from _stats import assert_consistent, assert_rejects
from boltzkit.energies import Gaussian, Ising
from boltzkit.errors import ConfigError
from boltzkit.estimators import ais
from boltzkit.free_energy import level_log_z, level_mbar

MU = np.array([1.5, -0.5])
SIG = np.array([0.3, 0.6])
B0 = 0.25


def path_log_z(lam, b0=B0, s0=1.0, mu=MU, sig=SIG):
    """Exact log Z of exp(-a |y|^2 / (2 s0^2) - lam |y - mu|^2 / (2 sig^2)), a = max(0, 1 - lam / b0)."""
    lam = np.asarray(lam, np.float64)[:, None]
    a = np.maximum(0.0, 1.0 - lam / b0)
    prec = a / s0 ** 2 + lam / sig ** 2
    lin = lam * mu / sig ** 2
    return (0.5 * np.log(2 * np.pi / prec) + lin ** 2 / (2 * prec) - lam * mu ** 2 / (2 * sig ** 2)).sum(1)


@pytest.fixture(scope="module")
def run():
    g = Gaussian(MU, std=SIG)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bk.sample(g, method="ais", n_samples=512, seed=0, device="cpu", init_std=1.0,
                        use_prior_hint=False, keep_levels=64, beta_start=B0, progress=False)
    torch.set_num_threads(n)
    return g, res


def test_temperature_ladder_path(run):
    _, res = run
    lam, a = res.history["lambda"], res.history["lambda_u0"]
    assert res.diagnostics["beta_start"] == B0 and res.diagnostics["n_islands"] > 1
    assert B0 in lam  # the adaptive ladder stops at the stage boundary
    assert np.all(np.diff(lam) > 0) and lam[0] == 0.0 and lam[-1] == 1.0
    np.testing.assert_allclose(a, np.maximum(0.0, 1.0 - lam / B0))
    assert (lam > B0).sum() >= 20  # the tempering stage has levels of its own


def test_temperature_ladder_log_z_is_exact_at_every_level(run):
    g, res = run
    se = res.log_z_stderr
    assert_consistent(res.log_z, se, g.exact_log_z(), bias=se * se)
    # the running log Z of every level (each tempering level is the Gaussian at beta = lambda)
    lam = res.history["lambda"]
    lz, lse = res.history["log_z_running"][1:], res.history["log_z_running_stderr"][1:]
    z = (lz - path_log_z(lam[1:])) / lse
    assert np.all(np.abs(z) < 4.5), z
    # negative controls: the final estimate is not the target's at beta = 0.8, and the tempering
    # levels are not those of the geometric path (reference kept in: a = 1 - lambda)
    wrong = float(path_log_z([0.8])[0])
    assert_rejects(res.log_z, se, wrong, bias=se * se)
    temp = lam[1:] > 2 * B0
    geo = path_log_z(lam[1:], b0=1.0)
    assert np.max(np.abs((lz - geo) / lse)[temp]) > 10


def test_level_mbar_over_temperatures_is_exact(run):
    g, res = run
    mb = level_mbar(res, target=g)
    lz, se = level_log_z(res, mb)
    lam = res.history["lambda"]
    levels = [int(s.split()[1]) for s in mb.states[1:]]
    z = (lz - path_log_z(lam[levels])) / se
    assert np.all(np.abs(z) < 4.5), z
    assert abs(lz[-1] - g.exact_log_z()) < 4 * se[-1] + 1e-3
    # negative control: the same samples with the geometric path's reduced potentials
    geo = path_log_z(lam[levels], b0=1.0)
    assert np.max(np.abs(lz - geo) / se) > 10


def test_plain_ais_on_a_fixed_temperature_ladder():
    """Plain AIS (fixed geometric lambda schedule, no resampling) along the same path."""
    g = Gaussian(MU, std=SIG)
    res = ais(g, n_samples=1024, n_steps=100, init_std=1.0, use_prior_hint=False, beta_start=0.3,
              seed=3, device="cpu", progress=False)
    assert "n_islands" not in res.diagnostics
    se = res.log_z_stderr
    assert_consistent(res.log_z, se, g.exact_log_z(), bias=se * se)
    assert_rejects(res.log_z, se, g.exact_log_z() + 2 * math.log(1.15), bias=se * se)
    lam = res.history["lambda"]
    z = (res.history["log_z_running"][1:] - path_log_z(lam[1:], b0=0.3)) / res.history["log_z_running_stderr"][1:]
    assert np.all(np.abs(z) < 4.5), z


def test_beta_start_one_is_the_geometric_path():
    g = Gaussian(MU, std=SIG)
    kw = dict(n_samples=256, n_steps=20, init_std=1.0, use_prior_hint=False, seed=5, device="cpu",
              progress=False)
    a, b = ais(g, **kw), ais(g, beta_start=1.0, **kw)
    assert a.log_z == b.log_z and torch.equal(a.samples, b.samples)


@pytest.mark.parametrize("bad", [0.0, 1.5, -0.2, True, "high"])
def test_beta_start_must_be_a_ratio(bad):
    with pytest.raises(ConfigError, match="beta_start"):
        ais(Gaussian(MU, std=SIG), n_samples=64, beta_start=bad)


def test_beta_start_is_refused_on_a_lattice():
    with pytest.raises(ConfigError, match="beta_start.*method='smc'"):
        ais(Ising(L=3, beta=0.3), n_samples=64, beta_start=0.5)
