"""AIS/SMC per-level log Z path and SMC over beta for lattices, against exact truths.

Truths: exact 4x4 / 3x3 Ising and Potts log Z (enumeration / transfer matrix,
:mod:`boltzkit.energies.exact`) at every intermediate inverse temperature. Every statistical
check has a negative control (the truth one level off must be rejected).
"""

import math

import numpy as np
import pytest
import torch

from _stats import assert_consistent, assert_rejects
from boltzkit.energies import Ising
from boltzkit.energies.exact import ising_log_z
from boltzkit.estimators import ais


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _check_path(res, exact_at_beta, beta, levels):
    h = res.history
    lam, lz, se = h["lambda"], h["log_z_running"], h["log_z_running_stderr"]
    assert lam[0] == 0.0 and lam[-1] == pytest.approx(1.0) and lz.dtype == np.float64
    assert lz.shape == lam.shape == se.shape and se[0] == 0.0
    assert lz[-1] == pytest.approx(res.log_z, abs=1e-9)
    for k in levels:
        b = lam[k] * beta
        assert_consistent(lz[k], se[k], exact_at_beta(b), bias=se[k] ** 2, what=f"log Z at beta={b:.3f}")
        # negative control: the truth one level off (an indexing slip) is ruled out
        assert_rejects(lz[k], se[k], exact_at_beta(lam[k - 1] * beta), bias=se[k] ** 2)


@pytest.mark.parametrize("beta", [0.3, 0.4407, 0.6])
def test_ais_log_z_path_matches_exact_ising(beta):
    """log Z_k of exp(-lambda_k E) at every level equals the 4x4 lattice's exact log Z at
    lambda_k beta within the per-level error bar."""
    res = ais(Ising(4, beta), n_samples=1000, n_steps=60, schedule="linear", seed=0, device="cpu")
    exact = lambda b: ising_log_z(4, 4, b)  # noqa: E731
    assert res.history["log_z_running"][0] == pytest.approx(16 * math.log(2))
    _check_path(res, exact, beta, levels=[20, 30, 45, 60])


def test_continuous_ais_and_island_smc_record_the_path():
    """Continuous AIS and island SMC: the path ends at the reported log Z +- stderr, starts at
    the reference's exact log Z_0, and (islands) the per-level error bar is the islands'."""
    from boltzkit.energies import Gaussian

    g = Gaussian(torch.zeros(2), torch.tensor([[2.0, 0.0], [0.0, 0.5]]))
    truth = g.exact_log_z()
    for opts in ({}, {"resample_ess": 0.5, "n_islands": 8}):
        res = ais(g, n_samples=512, n_steps=40, init_std=1.0, seed=0, device="cpu",
                  use_prior_hint=False, **opts)
        h = res.history
        assert h["lambda"].shape == h["log_z_running"].shape == (41,)
        assert h["log_z_running"][0] == pytest.approx(math.log(2 * math.pi))  # N(0, I) in 2-D
        assert h["log_z_running"][-1] == pytest.approx(res.log_z, abs=1e-9)
        assert h["log_z_running_stderr"][-1] == pytest.approx(res.log_z_stderr, rel=1e-6)
        assert_consistent(res.log_z, res.log_z_stderr, truth, bias=res.log_z_stderr ** 2)
        assert_rejects(res.log_z, res.log_z_stderr, truth + 0.5, bias=res.log_z_stderr ** 2)
