"""Continuous PDNS run as an SMC sampler (PDNS.sample_smc): exact increments, unbiased log Z
under resampling (exact truths, several seeds, negative controls), rejuvenation, bad input."""

import math
import warnings

import numpy as np
import pytest
import torch

from boltzkit.energies import Gaussian, GaussianMixture, Ising
from boltzkit.errors import ConfigError, IncompatibleMethodError
from boltzkit.samplers.naas import NAAS
from boltzkit.samplers.pdns import PDNS

from _stats import assert_consistent, assert_rejects

GAUSS = Gaussian([1.0, -0.5], cov=[[0.5, 0.2], [0.2, 1.2]])  # log Z exact (closed form)
TWO = GaussianMixture([[-4.0], [5.0]], [0.5, 1.0], [0.3, 0.7])  # log Z = 0, 70 % right
OPTS = dict(device="cpu", n_time_steps=32, batch_size=64, inner_steps=2, progress=False)


def test_smc_increments_telescope_to_the_path_weight():
    # a threshold that never triggers: the product of the per-level increments is the
    # whole-path weight of sample(), draw for draw (same seed, same noise order)
    a = PDNS(seed=3, reference_std=3.0, **OPTS).fit(GAUSS, n_steps=4)
    b = PDNS(seed=3, reference_std=3.0, resample_ess=1e-12, n_islands=4, **OPTS).fit(GAUSS, n_steps=4)
    ra, rb = a.sample(256), b.sample(256)
    assert rb.diagnostics["smc"] and rb.diagnostics["resample_events"] == 0
    torch.testing.assert_close(ra.samples, rb.samples)
    torch.testing.assert_close(ra.log_weights, rb.log_weights, rtol=0, atol=1e-8)
    # one energy evaluation per particle and level
    assert rb.diagnostics["sampling_energy_evals"] == 256 * OPTS["n_time_steps"]


@pytest.mark.parametrize("target, ref_std, mcmc, power", [(GAUSS, 3.0, 0, 3.0), (TWO, 6.0, 0, 3.0),
                                                          (TWO, 6.0, 2, 2.0)])
def test_zero_control_is_smc_with_unbiased_log_z_over_seeds(target, ref_std, mcmc, power):
    exact = target.exact_log_z()
    z, pooled = [], []
    for seed in range(6):
        s = PDNS(seed=seed, reference_std=ref_std, resample_ess=0.5, n_islands=16,
                 smc_mcmc_steps=mcmc, smc_beta_power=power, **OPTS).fit(target, n_steps=0)
        r = s.sample(512)
        assert r.diagnostics["resample_events"] > 0
        if mcmc:
            assert 0.2 < r.diagnostics["mcmc_acceptance"] < 0.95
            assert r.diagnostics["sampling_energy_grads"] == 512 * OPTS["n_time_steps"] * (mcmc + 1)
        z.append((r.log_z - exact) / r.log_z_stderr)
        pooled.append(r.log_z)
    assert np.abs(z).max() < 3.5  # each seed within its island error bar
    se = np.std(pooled, ddof=1) / math.sqrt(len(pooled))
    assert_consistent(float(np.mean(pooled)), se, exact, bias=0.01)
    # negative control: a wrong truth (the small mode's mass lost) fails
    assert_rejects(float(np.mean(pooled)), se, exact + math.log(0.7))


def test_trained_control_smc_log_z_and_mode_mass():
    s = PDNS(seed=0, reference_std=6.0, resample_ess=0.5, n_islands=16, **OPTS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.fit(TWO, n_steps=60)
        r = s.sample(1024)
    assert_consistent(r.log_z, r.log_z_stderr, 0.0, bias=r.log_z_stderr ** 2)
    assert_rejects(r.log_z, r.log_z_stderr, math.log(0.7), bias=r.log_z_stderr ** 2)  # one mode only
    right = float((r.resample(4000, seed=0)[:, 0] > 0).double().mean())
    assert abs(right - 0.7) < 0.06


def test_same_seed_same_result_and_naas_shares_the_machinery():
    r1 = PDNS(seed=1, reference_std=3.0, resample_ess=0.5, n_islands=8, smc_mcmc_steps=1,
              **OPTS).fit(GAUSS, n_steps=0).sample(128)
    r2 = PDNS(seed=1, reference_std=3.0, resample_ess=0.5, n_islands=8, smc_mcmc_steps=1,
              **OPTS).fit(GAUSS, n_steps=0).sample(128)
    torch.testing.assert_close(r1.log_weights, r2.log_weights, rtol=0, atol=0)
    # NAAS's SMC view with MALA rejuvenation (the same island runner) is calibrated as well
    n = NAAS(seed=0, prior_std=1.5, target_scale=1.0, device="cpu", n_time_steps=16, prior_stage=False,
             resample_ess=0.5, n_islands=16, smc_mcmc_steps=2, progress=False).fit(GAUSS, n_steps=0)
    r = n.sample(512)
    assert r.diagnostics["mcmc_acceptance"] > 0.2
    assert_consistent(r.log_z, r.log_z_stderr, GAUSS.exact_log_z(), bias=r.log_z_stderr ** 2)


def test_bad_input_fails_before_work():
    with pytest.raises(ConfigError, match="resample_ess"):
        PDNS(resample_ess=1.5)
    with pytest.raises(ConfigError, match="smc_mcmc_steps"):
        PDNS(smc_mcmc_steps=-1)
    with pytest.raises(ConfigError, match="n_islands"):
        PDNS(n_islands=0)
    s = PDNS(seed=0, reference_std=3.0, resample_ess=0.5, n_islands=16, **OPTS).fit(GAUSS, n_steps=0)
    with pytest.raises(ConfigError, match="multiple of n_islands"):
        s.sample(1000)
    lat = PDNS(seed=0, device="cpu", batch_size=8, progress=False).fit(Ising(L=3, beta=0.3), n_steps=0)
    with pytest.raises(IncompatibleMethodError, match="continuous"):
        lat.sample_smc(64)
