"""NAAS: exact-truth tests on Gaussians, a Gaussian mixture and a mean-free particle system.

Exact truths: closed-form Gaussian log Z and moments, mixture log Z = log sum w and mode
masses w_k / sum w, the subspace Gaussian log Z of a mean-free harmonic cloud, and autograd
through the unrolled annealed chain (for the lean adjoint). Every statistical check uses the
estimator's own error bar and has a negative control.
"""

import math

import numpy as np
import pytest
import torch

import boltzkit as bk
from boltzkit.domains import ParticleCloud, Reals
from boltzkit.energies.base import Energy
from boltzkit.energies.continuous import Gaussian, GaussianMixture
from boltzkit.energies.lattice import Ising
from boltzkit.errors import ConfigError, IncompatibleMethodError, TrainingDivergedError
from boltzkit.estimators.importance import self_normalized_expectation
from boltzkit.samplers.naas import NAAS

from _stats import assert_consistent, assert_rejects

SMALL = dict(n_time_steps=24, prior_time_steps=16, batch_size=128, updates_per_step=8,
             prior_updates_per_step=8, train_batch_size=256)


def naas(seed=0, **kw):
    return NAAS(seed=seed, device="cpu", **{**SMALL, **kw})


def test_registered_as_default_for_continuous_energies():
    assert bk.select(Gaussian([0.0, 1.0])).name == "naas"
    particles = Energy.from_function(lambda x: 0.5 * (x * x).sum(-1), ParticleCloud(3, 2))
    assert bk.select(particles).name == "naas"
    spec = bk.registry()["naas"]
    assert spec.priority == 10 and "2506.18165" in spec.paper


def test_gaussian_log_z_and_moments():
    tgt = Gaussian([1.0, -0.5], cov=[[0.5, 0.2], [0.2, 1.2]])
    # an explicit unit-scale prior (the scale probe's frame would make the reference exact
    # already, leaving training nothing to improve)
    s = naas(prior_std=1.0, target_scale=1.0).fit(tgt, n_steps=12)
    assert len(s.history["loss"]) == 12 and {"ess_frac", "log_z", "log_z_running"} <= set(s.history)
    res = s.sample(4000)
    exact = tgt.exact_log_z()
    assert res.diagnostics["exact_log_z"] == pytest.approx(exact)
    assert_consistent(res.log_z, res.log_z_stderr, exact, bias=res.log_z_stderr ** 2)
    assert_rejects(res.log_z, res.log_z_stderr, exact + 0.1, bias=res.log_z_stderr ** 2)
    m0, se0 = res.expectation(lambda x: x[:, 0])
    assert_consistent(m0, se0, 1.0, what="E[x0]")
    assert_rejects(m0, se0, 1.2, what="E[x0]")
    v1, se1 = res.expectation(lambda x: (x[:, 1] + 0.5) ** 2)
    assert_consistent(v1, se1, 1.2, what="Var[x1]")
    assert_rejects(v1, se1, 1.5, what="Var[x1]")
    c, sec = res.expectation(lambda x: (x[:, 0] - 1.0) * (x[:, 1] + 0.5))
    assert_consistent(c, sec, 0.2, what="Cov[x0, x1]")
    assert_rejects(c, sec, 0.0, what="Cov[x0, x1]")
    ess = s.history["ess_frac"]  # training improves on the uncontrolled reference
    assert np.mean(ess[-3:]) > ess[0] + 0.15 and res.ess / res.n_samples > 0.8


def test_one_dimensional_gaussian():
    tgt = Gaussian([2.0], std=0.5)
    res = naas(prior_std=2.0, target_scale=0.5).fit(tgt, n_steps=6).sample(10000)
    assert res.samples.shape == (10000, 1)
    assert_consistent(res.log_z, res.log_z_stderr, tgt.exact_log_z(), bias=res.log_z_stderr ** 2)
    assert_rejects(res.log_z, res.log_z_stderr, tgt.exact_log_z() - 0.1, bias=res.log_z_stderr ** 2)


def test_gaussian_mixture_mode_weights_and_log_z():
    w = np.array([1.0, 0.6, 0.4])  # unnormalized: log Z = log 2
    tgt = GaussianMixture([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.5]], stds=[0.6, 0.8, 0.7], weights=w)
    s = naas(prior_std=3.0, target_scale=0.6).fit(tgt, n_steps=30)
    res = s.sample(6000)
    assert_consistent(res.log_z, res.log_z_stderr, math.log(2.0), bias=res.log_z_stderr ** 2)
    assert_rejects(res.log_z, res.log_z_stderr, math.log(2.0) - 0.15, bias=res.log_z_stderr ** 2)
    modes = tgt.mode_assignment(res.samples)
    probs = w / w.sum()
    wrong = probs[[1, 0, 2]]  # swapped mode masses
    for k in range(3):
        p, se = self_normalized_expectation((modes == k).double(), res.log_weights)
        assert_consistent(p, se, probs[k], what=f"P(mode {k})")
        if abs(wrong[k] - probs[k]) > 0:
            assert_rejects(p, se, wrong[k], what=f"P(mode {k})")
    assert res.diagnostics["training_energy_grads"] > 0 and res.diagnostics["training_energy_hvps"] > 0


def test_importance_weighted_regression_keeps_a_narrow_mode():
    """Two equal-mass modes of very different widths (exact log Z = 0). On-policy adjoint
    matching locks onto the broad mode (its fixed-point iteration collapses: the narrow mode's
    mass, log 2, goes missing from log Z); weighting each trajectory's regression rows by its
    path weight targets the optimal control whatever the current one, and keeps both modes."""
    tgt = GaussianMixture([[-6.0], [6.0]], stds=[0.4, 1.2], weights=[0.5, 0.5])
    runs = {iw: naas(seed=1, prior_std=5.0, target_scale=0.4, importance_weighted=iw)
            .fit(tgt, n_steps=30).sample(4000) for iw in (True, False)}
    res = runs[True]
    assert_consistent(res.log_z, res.log_z_stderr, 0.0, bias=res.log_z_stderr ** 2)
    assert_rejects(res.log_z, res.log_z_stderr, math.log(0.5), bias=res.log_z_stderr ** 2)
    narrow = float((res.samples[:, 0] < 0).double().mean())  # unweighted: the sampler itself
    assert 0.25 < narrow < 0.75
    # negative control: the unweighted (on-policy) regression collapses onto the broad mode
    bad = runs[False]
    assert_rejects(bad.log_z, bad.log_z_stderr, 0.0, bias=bad.log_z_stderr ** 2)
    assert float((bad.samples[:, 0] < 0).double().mean()) < 0.05


@pytest.mark.parametrize("prior_stage", [True, False])
def test_weights_unbiased_with_untrained_random_control(prior_stage):
    # E[w] = Z holds for any control: perturb both networks to a random nonzero control
    tgt = Gaussian([0.5, 0.5, -1.0], std=[0.8, 1.0, 1.3])
    s = naas(seed=3, prior_stage=prior_stage, ema_decay=None).fit(tgt, n_steps=1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for net in (s.net, s.prior_net):
            net.out.weight.copy_(0.3 * torch.randn(net.out.weight.shape, generator=g))
            net.out.bias.copy_(0.3 * torch.randn(net.out.bias.shape, generator=g))
    res = s.sample(8000)
    assert float(res.samples.std(0).min()) > 0.3
    assert_consistent(res.log_z, res.log_z_stderr, tgt.exact_log_z(), bias=res.log_z_stderr ** 2)
    assert_rejects(res.log_z, res.log_z_stderr, tgt.exact_log_z() + 0.15, bias=res.log_z_stderr ** 2)


def test_lean_adjoint_matches_autograd_through_annealed_chain():
    # non-quadratic energy; zero control; noise frozen; no clipping: the NAAS adjoint must be
    # the exact derivative of the future AIS work with respect to each state
    torch.manual_seed(0)
    E = lambda x: (0.25 * x ** 4 - x ** 2 + 0.3 * x).sum(-1) + 0.5 * x[:, 0] * x[:, 1]  # noqa: E731
    tgt = Energy.from_function(E, Reals(2))
    kw = dict(n_time_steps=6, beta_power=2.0, prior_std=1.5, relaxation=0.5)
    s = naas(adjoint_clip=None, **kw).fit(tgt, n_steps=1)
    ref, ts = s.ref, s.ts
    s0 = 1.5

    def drift(t, x):  # independent implementation of -(sigma_t^2 / 2) grad U_t
        b = float(t) ** 2
        (gE,) = torch.autograd.grad(E(x).sum(), x, create_graph=True)
        return -0.5 * ref.sigma(t) ** 2 * ((1 - b) * x / s0 ** 2 + b * gE)

    K, n = 6, 4
    noise = torch.randn(K, n, 2, dtype=torch.float64)
    xs = [torch.randn(n, 2, dtype=torch.float64)]
    for k in range(K):
        t, h = float(ts[k]), float(ts[k + 1] - ts[k])
        x = xs[-1].clone().requires_grad_(True)
        xs.append((x + h * drift(t, x) + ref.sigma(t) * math.sqrt(h) * noise[k]).detach())
    xs = torch.stack(xs)
    adj = s.adjoint(xs)
    for k0 in range(K + 1):
        xk = xs[k0].clone().requires_grad_(True)
        x, work = xk, 0.0
        for k in range(k0, K):
            t, h = float(ts[k]), float(ts[k + 1] - ts[k])
            x = x + h * drift(t, x) + ref.sigma(t) * math.sqrt(h) * noise[k]
            work = work + (float(ts[k + 1]) ** 2 - t ** 2) * (E(x) - 0.5 * (x * x).sum(-1) / s0 ** 2)
        if k0 == K:
            assert float(adj[K].abs().max()) == 0.0
            continue
        (grad,) = torch.autograd.grad(work.sum(), xk)
        assert torch.allclose(adj[k0], grad, rtol=1e-8, atol=1e-10), k0
    # negative control: clipping changes the target (the check is sensitive)
    s_clip = naas(adjoint_clip=0.5, **kw).fit(tgt, n_steps=1)
    assert not torch.allclose(s_clip.adjoint(xs)[0], adj[0], atol=1e-6)


def test_mean_free_particles_log_z():
    # harmonic cloud E = |x|^2 / (2 v) on the zero-centre-of-mass subspace of 3 particles in 2-D:
    # log Z = (n-1) d / 2 * log(2 pi v) with (n-1) d = 4 degrees of freedom
    v = 0.7
    dom = ParticleCloud(3, 2)
    tgt = Energy.from_function(lambda x: 0.5 * (x * x).sum(-1) / v, dom, name="harmonic3")
    res = naas(prior_std=1.0, target_scale=0.8, hidden=16, n_layers=2).fit(tgt, n_steps=4).sample(3000)
    assert float(dom.center_of_mass(res.samples).abs().max()) < 1e-4
    exact = 2.0 * math.log(2 * math.pi * v)
    assert_consistent(res.log_z, res.log_z_stderr, exact, bias=res.log_z_stderr ** 2)
    # negative control: counting all n*d = 6 coordinates is a different (wrong) convention
    assert_rejects(res.log_z, res.log_z_stderr, 3.0 * math.log(2 * math.pi * v),
                   bias=res.log_z_stderr ** 2)


def test_same_seed_same_samples_and_checkpoint_resume(tmp_path):
    tgt = Gaussian([0.3, -0.2], std=[0.7, 1.1])
    full = naas(seed=5).fit(tgt, n_steps=4)
    r_full = full.sample(256)
    # same seed => identical samples; different seed => different samples
    r_again = naas(seed=5).fit(tgt, n_steps=4).sample(256)
    assert torch.equal(r_full.samples, r_again.samples)
    assert torch.equal(r_full.log_weights, r_again.log_weights)
    assert not torch.equal(naas(seed=6).fit(tgt, n_steps=4).sample(256).samples, r_full.samples)
    # interrupted after 2 steps, resumed to 4 in a fresh sampler => same as uninterrupted
    ckpt = tmp_path / "naas.pt"
    naas(seed=5).fit(tgt, n_steps=2, checkpoint=ckpt)
    resumed = naas(seed=5)
    resumed.fit(tgt, n_steps=4, checkpoint=ckpt)
    assert resumed.step == 4 and len(resumed.history["loss"]) == 4
    assert resumed.history["loss"] == pytest.approx(full.history["loss"], rel=1e-6)
    r_res = resumed.sample(256)
    assert torch.allclose(r_res.samples, r_full.samples, atol=1e-5)
    # the result round-trips through bk.sample with method options
    res = bk.sample(tgt, method="naas", n_samples=64, n_steps=2, seed=1, device="cpu",
                    **SMALL)
    assert res.method == "naas" and res.samples.shape == (64, 2) and res.log_weights.dtype == torch.float64


def test_bad_inputs():
    with pytest.raises(ConfigError, match="unknown option"):
        NAAS(n_time_step=10)
    for opt in (dict(n_time_steps=0), dict(prior_std=-1.0), dict(sigma=0.0), dict(lr=float("nan")),
                dict(refine_end=0.5), dict(ema_decay=1.0), dict(prior_noise_ratio=1.0),
                dict(batch_size=2.5), dict(prior_stage="yes")):
        with pytest.raises(ConfigError):
            NAAS(**opt)
    with pytest.raises(IncompatibleMethodError):
        bk.sample(Ising(L=4), method="naas", n_samples=10)
    with pytest.raises(IncompatibleMethodError, match="Reals or ParticleCloud"):
        NAAS(seed=0, device="cpu").fit(Ising(L=4), n_steps=1)
    with pytest.raises(ConfigError, match="before fit"):
        NAAS(seed=0).sample(10)
    s = naas().fit(Gaussian([0.0]), n_steps=1)
    with pytest.raises(ConfigError, match="n_samples"):
        s.sample(0)


def test_divergence_raises_instead_of_nan():
    # a stiff energy with a badly mis-set target_scale makes explicit Euler explode
    tgt = Gaussian([0.0, 0.0], std=1e-3)
    with pytest.raises(TrainingDivergedError, match="n_time_steps"):
        naas(target_scale=1.0, n_time_steps=4).fit(tgt, n_steps=3)
