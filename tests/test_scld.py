"""SCLD training of NAAS (train_on="smc"): the loss lives on the SMC's resampled segments, it
trains, and the trained sampler's SMC log Z is calibrated against exact values."""

import math
import warnings

import numpy as np
import pytest
import torch

from boltzkit.energies import Gaussian, GaussianMixture
from boltzkit.errors import ConfigError
from boltzkit.samplers._shared.scld import segment_log_variance
from boltzkit.samplers.naas import NAAS

from _stats import assert_consistent, assert_rejects

GAUSS = Gaussian([2.0, -1.0], cov=[[0.3, 0.1], [0.1, 0.5]])  # log Z = log(2 pi sqrt(det))
TWO = GaussianMixture([[-4.0], [5.0]], [0.5, 1.0], [0.3, 0.7])  # log Z = 0, 70 % right
SCLD = dict(device="cpu", train_on="smc", n_time_steps=8, scld_segments=4, batch_size=128,
            updates_per_step=8, train_batch_size=256, relaxation=1.0, ema_decay=None)


def _eval_loss(s, n=4096, seed=123):
    g = torch.Generator().manual_seed(seed)
    run = s.scld_rollout(n, s.net, g)
    with torch.no_grad():
        return float(s.scld_loss(s.net, run.rows))


def test_loss_is_the_variance_of_the_smc_segment_increments():
    s = NAAS(seed=1, prior_std=2.0, target_scale=0.6, **SCLD).fit(GAUSS, n_steps=1)
    g = torch.Generator().manual_seed(0)
    run = s.scld_rollout(256, s.net, g)
    S = s.config.scld_segments
    # segment starts after the first are resampled particles: duplicated rows
    for k in range(1, S):
        assert torch.unique(run.start[k], dim=0).shape[0] < 256
    # the loss recomputed from the stored rows is the per-segment variance of the actual
    # incremental SMC log-weights of this pass (same control: same numbers)
    with torch.no_grad():
        loss = float(s.scld_loss(s.net, run.rows))
    direct = float(run.log_w.var(dim=1).mean())
    assert loss == pytest.approx(direct, rel=1e-4)
    # and it matches the helper on the increments themselves
    seg = torch.arange(S).repeat_interleave(256)
    assert float(segment_log_variance(run.log_w.reshape(-1), seg, S)) == pytest.approx(direct, rel=1e-9)


def test_training_lowers_the_segment_log_variance():
    before = _eval_loss(NAAS(seed=0, prior_std=2.0, target_scale=0.6, **SCLD).fit(GAUSS, n_steps=0))
    trained = _eval_loss(NAAS(seed=0, prior_std=2.0, target_scale=0.6, **SCLD).fit(GAUSS, n_steps=15))
    fixed = _eval_loss(NAAS(seed=0, prior_std=2.0, target_scale=0.6, scld_backward="fixed", **SCLD)
                       .fit(GAUSS, n_steps=15))
    frozen = _eval_loss(NAAS(seed=0, prior_std=2.0, target_scale=0.6, **{**SCLD, "lr": 1e-9})
                        .fit(GAUSS, n_steps=15))
    assert frozen == pytest.approx(before, rel=0.02)  # control: same run without learning
    # a fixed reverse-ULA backward kernel bounds what the forward control can remove; the
    # learned (CMCD-form) backward kernel, the default, goes much further
    assert fixed < 0.8 * before
    assert trained < 0.5 * fixed
    # and it is a different training from the default (adjoint matching) from the same seed
    paths = NAAS(seed=0, prior_std=2.0, target_scale=0.6, **{**SCLD, "train_on": "paths"}).fit(GAUSS, n_steps=2)
    assert "segment_ess_frac" not in paths.history and paths.history["energy_hvps"][-1] > 0


def test_learned_backward_smc_increments_telescope_to_the_path_weight():
    # the learned backward kernel enters sample() and sample_smc() alike: with a threshold that
    # never triggers, the SMC weights are the whole-path weights, draw for draw
    opts = dict(seed=3, prior_std=2.0, target_scale=0.6, **SCLD)
    a = NAAS(**opts).fit(GAUSS, n_steps=2)
    b = NAAS(resample_ess=1e-12, n_islands=4, **opts).fit(GAUSS, n_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ra, rb = a.sample(256), b.sample(256)
    assert rb.diagnostics["resample_events"] == 0
    torch.testing.assert_close(ra.samples, rb.samples)
    torch.testing.assert_close(ra.log_weights, rb.log_weights, rtol=0, atol=1e-8)
    assert a._backward_control(a.net) is not None  # the learned kernel is in use


@pytest.mark.parametrize("target, prior_std, target_scale", [(GAUSS, 2.0, 0.6), (TWO, 4.0, 0.5)])
def test_scld_trained_smc_log_z_calibrated(target, prior_std, target_scale):
    exact = target.exact_log_z()
    ests, ses = [], []
    for seed in range(4):
        s = NAAS(seed=seed, prior_std=prior_std, target_scale=target_scale,
                 **{**SCLD, "n_time_steps": 16}).fit(target, n_steps=8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = s.sample_smc(2048, n_islands=32)
        assert abs(r.log_z - exact) <= 3 * r.log_z_stderr, (seed, r.log_z, r.log_z_stderr, exact)
        ests.append(r.log_z)
        ses.append(r.log_z_stderr)
    mean = float(np.mean(ests))
    se = float(np.std(ests, ddof=1)) / math.sqrt(len(ests))
    assert_consistent(mean, se, exact, bias=0.01)
    # negative controls: a wrong truth fails, per seed and pooled
    assert all(abs(e - (exact + 0.5)) > 3 * v for e, v in zip(ests, ses))
    assert_rejects(mean, se, exact + 0.15)


def test_scld_options_checked_before_any_work():
    with pytest.raises(ConfigError, match="train_on"):
        NAAS(train_on="resampled")
    with pytest.raises(ConfigError, match="multiple of"):
        NAAS(train_on="smc", n_time_steps=10, scld_segments=4)
    with pytest.raises(ConfigError, match="scld_segments"):
        NAAS(train_on="smc", scld_segments=0)
    with pytest.raises(ConfigError, match="scld_backward"):
        NAAS(train_on="smc", scld_backward="cmcd")


# ---------------------------------------------------------------------------- PDNS (same hook)
PDNS_SCLD = dict(device="cpu", train_on="smc", n_time_steps=20, scld_segments=4, batch_size=128,
                 inner_steps=5, ema_decay=0.9, progress=False)


def test_pdns_loss_is_the_variance_of_the_smc_segment_increments():
    from boltzkit.samplers.pdns import PDNS

    s = PDNS(seed=2, **PDNS_SCLD).fit(TWO, n_steps=3)
    run = s.inst.scld_rollout(s.model, 256, torch.Generator().manual_seed(0), n_segments=4, mcmc_steps=0)
    assert all(torch.unique(run.start[k], dim=0).shape[0] < 256 for k in range(1, 4))
    with torch.no_grad():
        loss = float(s.inst.scld_loss(s.model, run.rows, 4))
    assert loss == pytest.approx(float(run.log_w.var(dim=1).mean()), rel=1e-4)
    assert "segment_ess_frac" in s.history and "stage" not in s.history  # no proximal stages


def test_pdns_scld_trained_smc_log_z_calibrated():
    from boltzkit.samplers.pdns import PDNS

    ests, ses = [], []
    for seed in range(3):
        s = PDNS(seed=seed, **PDNS_SCLD).fit(TWO, n_steps=20)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = s.sample_smc(2048, n_islands=32)
        assert abs(r.log_z) <= 3 * r.log_z_stderr, (seed, r.log_z, r.log_z_stderr)
        assert abs(r.log_z - 0.5) > 3 * r.log_z_stderr  # negative control: a wrong truth fails
        ests.append(r.log_z)
        ses.append(r.log_z_stderr)
    se = float(np.std(ests, ddof=1)) / math.sqrt(len(ests))
    assert_consistent(float(np.mean(ests)), se, 0.0, bias=0.01)
    assert_rejects(float(np.mean(ests)), se, 0.2)


def test_pdns_scld_needs_a_continuous_target():
    from boltzkit.energies import Ising
    from boltzkit.errors import IncompatibleMethodError
    from boltzkit.samplers.pdns import PDNS

    with pytest.raises(IncompatibleMethodError, match="train_on='smc'"):
        PDNS(train_on="smc", n_time_steps=20, scld_segments=4).fit(Ising(L=3, beta=0.3), n_steps=1)
    with pytest.raises(ConfigError, match="multiple of"):
        PDNS(train_on="smc", n_time_steps=25, scld_segments=10)
