"""NAAS run as an SMC sampler (NAAS.sample_smc): exactness of the increments, calibration."""

import math
import warnings

import numpy as np
import pytest
import torch

from boltzkit.energies import Gaussian, GaussianMixture
from boltzkit.errors import ConfigError
from boltzkit.samplers.naas import NAAS

from _stats import assert_consistent, assert_rejects

GAUSS = Gaussian([1.0, -0.5], cov=[[0.5, 0.2], [0.2, 1.2]])
TWO = GaussianMixture([[-4.0], [5.0]], [0.5, 1.0], [0.3, 0.7])  # log Z = 0, 70 % right
OPTS = dict(device="cpu", n_time_steps=24, prior_time_steps=16, batch_size=64,
            updates_per_step=4, prior_updates_per_step=4, train_batch_size=128)


def test_smc_increments_telescope_to_the_path_weight():
    # a threshold that never triggers: the product of the per-level increments is the
    # whole-path weight of sample(), draw for draw (same seed, same noise order)
    a = NAAS(seed=3, prior_std=1.0, target_scale=1.0, **OPTS).fit(GAUSS, n_steps=2)
    b = NAAS(seed=3, prior_std=1.0, target_scale=1.0, resample_ess=1e-12, n_islands=4,
             **OPTS).fit(GAUSS, n_steps=2)
    ra, rb = a.sample(256), b.sample(256)
    assert rb.diagnostics["resample_events"] == 0 and rb.diagnostics["smc"]
    torch.testing.assert_close(ra.samples, rb.samples)
    torch.testing.assert_close(ra.log_weights, rb.log_weights, rtol=0, atol=1e-8)


@pytest.mark.parametrize("target, prior_std, target_scale, frac",
                         [(GAUSS, 1.0, 1.0, 0.9), (TWO, 4.0, 0.5, 0.5)])
def test_smc_zero_control_log_z_calibrated_over_seeds(target, prior_std, target_scale, frac):
    exact = target.exact_log_z()
    z, pooled = [], []
    for seed in range(6):
        s = NAAS(seed=seed, prior_std=prior_std, target_scale=target_scale, resample_ess=frac,
                 n_islands=16, **OPTS).fit(target, n_steps=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = s.sample(512)
        assert r.diagnostics["resample_events"] > 0
        z.append((r.log_z - exact) / r.log_z_stderr)
        pooled.append(r.log_z)
    z = np.asarray(z)
    assert np.abs(z).max() < 3.5  # each seed within its island error bar
    se = np.std(pooled, ddof=1) / math.sqrt(len(pooled))
    assert_consistent(float(np.mean(pooled)), se, exact, bias=0.01)
    assert_rejects(float(np.mean(pooled)), se, exact + 0.15)  # negative control


def test_smc_with_trained_control_and_mode_mass():
    s = NAAS(seed=0, prior_std=4.0, target_scale=0.5, resample_ess=0.5, n_islands=16,
             **OPTS).fit(TWO, n_steps=5)
    r = s.sample(1024)
    assert_consistent(r.log_z, r.log_z_stderr, 0.0, bias=r.log_z_stderr ** 2)
    right = float((r.resample(4000, seed=0)[:, 0] > 0).double().mean())
    assert abs(right - 0.7) < 0.06
    with pytest.raises(ConfigError, match="multiple of n_islands"):
        s.sample(1000)
    with pytest.raises(ConfigError, match="resample_ess"):
        NAAS(resample_ess=1.5)


def test_smc_flags_a_biased_island_estimate():
    # many-well-32 with 16 untrained levels: the islands' log Z spread (about 3) implies a
    # log-mean-exp bias far above the error bar; the run is 8 nats low and must be flagged
    from boltzkit.energies import ManyWell
    from boltzkit.errors import UnreliableEstimateWarning

    mw = ManyWell(32)
    s = NAAS(seed=0, resample_ess=0.5, n_islands=16, prior_std=1.7, target_scale=0.2,
             **{**OPTS, "n_time_steps": 16}).fit(mw, n_steps=0)
    with pytest.warns(UnreliableEstimateWarning):
        r = s.sample(512)
    assert not r.reliable and r.diagnostics["island_jensen_bias"] > r.log_z_stderr
    assert r.log_z < mw.exact_log_z() - 3 * r.log_z_stderr  # it is indeed wrong
    # control: a well-resolved Gaussian run is not flagged
    g = NAAS(seed=0, prior_std=1.0, target_scale=1.0, resample_ess=0.9, n_islands=16,
             **OPTS).fit(GAUSS, n_steps=0).sample(512)
    assert g.reliable and g.diagnostics["island_jensen_bias"] < g.log_z_stderr
