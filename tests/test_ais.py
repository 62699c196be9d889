"""AIS, driven Langevin (Jarzynski) and MALA against exact truths.

Truths: closed-form log Z of Gaussian mixtures (log of the summed weights), brute-force
enumeration of 3x3 Ising and a small Potts-like chain done here, and exact Gaussian moments.
Every statistical check has a negative control with a physically meaningful wrong value.
"""

import itertools
import math

import numpy as np
import pytest
import torch

import boltzkit as bk
from _stats import assert_consistent, assert_rejects
from boltzkit.domains import Reals, Sequence
from boltzkit.energies import BETA_C_ISING, Energy, Gaussian, GaussianMixture, Ising
from boltzkit.errors import (ConfigError, ConvergenceWarning, IncompatibleMethodError, TargetError,
                             UnreliableEstimateWarning)
from boltzkit.estimators import annealed_langevin, ais, annealing_schedule
from boltzkit.samplers.mala import hmc_step, mala_step

WEIGHTS = [1.0, 2.5, 0.8]


def three_modes():
    return GaussianMixture([[-5.0, 0.0], [5.0, 0.0], [0.0, 6.0]],
                           [[0.7, 0.9], [1.0, 1.6], [0.5, 0.5]], WEIGHTS)


def jensen_bias(se):
    """log Z_hat = log of an unbiased estimate: biased low by about se^2 / 2; allow 2x that."""
    return se * se


# ------------------------------------------------------------------------------ AIS, continuous
def test_ais_gaussian_mixture_log_z():
    gmm = three_modes()
    res = ais(gmm, n_samples=2000, n_steps=200, init_std=5.0, seed=0, device="cpu")
    truth = math.log(sum(WEIGHTS))
    assert res.log_weights.dtype == torch.float64 and res.samples.shape == (2000, 2)
    assert res.diagnostics["reliable"] and res.ess > 200
    assert_consistent(res.log_z, res.log_z_stderr, truth, bias=jensen_bias(res.log_z_stderr))
    # negative control: the value with the lightest mode missing is ruled out
    missing = math.log(sum(WEIGHTS) - WEIGHTS[2])
    assert_rejects(res.log_z, res.log_z_stderr, missing, bias=jensen_bias(res.log_z_stderr))
    # the weighted samples put the right mass in each mode
    probs = torch.as_tensor(res.weights())
    mode = gmm.mode_assignment(res.samples)
    for k in range(3):
        assert abs(float(probs[mode == k].sum()) - WEIGHTS[k] / sum(WEIGHTS)) < 0.05


def test_ais_narrow_reference_misses_a_far_mode():
    """Negative control of the method: pi_0 = N(0, 0.3^2) and few levels never reach the mode
    at (0, 6); the estimate then excludes the truth (the failure mode the docs warn about)."""
    with pytest.warns(UnreliableEstimateWarning):
        res = ais(three_modes(), n_samples=500, n_steps=10, init_std=0.3, seed=0, device="cpu")
    assert not res.reliable
    assert_rejects(res.log_z, res.log_z_stderr, math.log(sum(WEIGHTS)),
                   bias=jensen_bias(res.log_z_stderr))


@pytest.mark.parametrize("kernel, n_samples, n_steps", [("mala", 2000, 100), ("hmc", 2000, 40)])
def test_ais_gmm40_log_z_and_mode_coverage(kernel, n_samples, n_steps):
    g = GaussianMixture.gmm40()
    res = ais(g, n_samples=n_samples, n_steps=n_steps, kernel=kernel, init_std=30.0,
              schedule="linear", seed=0, device="cpu")
    assert res.diagnostics["kernel"] == kernel and res.diagnostics["reliable"]
    assert_consistent(res.log_z, res.log_z_stderr, 0.0, bias=jensen_bias(res.log_z_stderr))
    assert_rejects(res.log_z, res.log_z_stderr, math.log(30 / 40))  # a quarter of the modes lost
    covered = torch.unique(g.mode_assignment(res.resample(4000, seed=0)))
    assert covered.numel() == 40


def test_ais_is_reproducible_and_seed_dependent():
    gmm = three_modes()
    a = ais(gmm, n_samples=64, n_steps=20, init_std=5.0, seed=5, device="cpu")
    b = ais(gmm, n_samples=64, n_steps=20, init_std=5.0, seed=5, device="cpu")
    c = ais(gmm, n_samples=64, n_steps=20, init_std=5.0, seed=6, device="cpu")
    assert torch.equal(a.samples, b.samples) and torch.equal(a.log_weights, b.log_weights)
    assert not torch.equal(a.samples, c.samples)
    assert a.seed == 5 and a.method == "ais"


def test_ais_through_bk_sample_and_history():
    res = bk.sample(three_modes(), method="ais", n_samples=256, n_steps=30, seed=1,
                    device="cpu", init_std=5.0, schedule="sigmoid")
    assert res.method == "ais" and res.config["n_steps"] == 30 and res.config["schedule"] == "sigmoid"
    assert len(res.history["acceptance"]) == 30 and len(res.history["step_size"]) == 30
    assert res.diagnostics["exact_log_z"] == pytest.approx(math.log(4.3))
    assert "ais" in bk.select(three_modes()).alternatives or bk.select(three_modes()).name == "ais"


@pytest.mark.parametrize("schedule", ["geometric", "sigmoid", "linear"])
def test_annealing_schedules(schedule):
    lam = annealing_schedule(50, schedule)
    assert lam.shape == (51,) and lam[0] == 0.0 and lam[-1] == pytest.approx(1.0, abs=1e-15)
    assert (np.diff(lam) > 0).all()
    assert annealing_schedule(1, schedule).tolist() == [0.0, 1.0]


# ------------------------------------------------------------------------------ AIS, discrete
def brute_force_log_z(energy, q, n_sites, shape):
    states = torch.tensor(list(itertools.product(range(q), repeat=n_sites))).reshape(-1, *shape)
    u = energy.energy(energy.domain.decode(states)).double()
    return float(torch.logsumexp(-u, 0))


@pytest.mark.parametrize("beta", [BETA_C_ISING, 0.6])
def test_ais_ising_3x3_matches_enumeration(beta):
    m = Ising(3, beta)
    truth = brute_force_log_z(m, 2, 9, (3, 3))
    res = ais(m, n_samples=2000, n_steps=100, seed=0, device="cpu")
    assert res.diagnostics["kernel"] == "heat_bath" and res.samples.shape == (2000, 3, 3)
    assert set(res.samples.unique().tolist()) <= {-1.0, 1.0}
    assert_consistent(res.log_z, res.log_z_stderr, truth, bias=jensen_bias(res.log_z_stderr))
    # negative control: the value at a 5% different coupling is ruled out
    wrong = brute_force_log_z(Ising(3, 1.05 * beta), 2, 9, (3, 3))
    assert_rejects(res.log_z, res.log_z_stderr, wrong, bias=jensen_bias(res.log_z_stderr))


def test_ais_generic_metropolis_on_sequence_energy():
    """A non-lattice categorical energy (random pair couplings on a length-6, q=3 sequence)."""
    gen = torch.Generator().manual_seed(0)
    J = torch.randn(6, 6, 3, 3, generator=gen) * 0.6
    h = torch.randn(6, 3, generator=gen)

    pairs = [(i, j) for i in range(6) for j in range(i + 1, 6)]

    def potts_chain(x):
        x = x.long()
        u_pair = sum(J[i, j][x[:, i], x[:, j]] for i, j in pairs)
        return -(u_pair + h[torch.arange(6), x].sum(1))

    e = Energy.from_function(potts_chain, Sequence(6, "ABC"), name="random-chain")
    truth = brute_force_log_z(e, 3, 6, (6,))
    res = ais(e, n_samples=1000, n_steps=60, seed=0, device="cpu")
    assert res.diagnostics["kernel"] == "metropolis"
    assert_consistent(res.log_z, res.log_z_stderr, truth, bias=jensen_bias(res.log_z_stderr))
    assert_rejects(res.log_z, res.log_z_stderr, truth - 0.2, bias=jensen_bias(res.log_z_stderr))


# ------------------------------------------------------------------------------ Jarzynski
def test_driven_langevin_bias_shrinks_with_dt():
    """ULA is not invariant: at dt = 0.1 the Jarzynski estimate is biased far beyond its error
    bar; at dt = 0.002 (same protocol time) it agrees with the truth. The O(dt) bias measured
    on this target is about 5 dt, hence the 0.01 bias allowance."""
    g = Gaussian([0.5] * 4, std=0.4)
    truth = g.exact_log_z()
    coarse = annealed_langevin(g, n_samples=2000, n_steps=30, dt=0.1, seed=1, device="cpu")
    medium = annealed_langevin(g, n_samples=2000, n_steps=100, dt=0.03, seed=1, device="cpu")
    fine = annealed_langevin(g, n_samples=4000, n_steps=1500, dt=0.002, seed=1, device="cpu")
    assert_rejects(coarse.log_z, coarse.log_z_stderr, truth)
    errs = [abs(r.log_z - truth) for r in (coarse, medium, fine)]
    assert errs[0] > errs[1] > errs[2]
    assert_consistent(fine.log_z, fine.log_z_stderr, truth, bias=0.01 + jensen_bias(fine.log_z_stderr))
    assert fine.method == "jarzynski" and fine.diagnostics["dt"] == 0.002


# ------------------------------------------------------------------------------ MALA
def test_mala_kernel_is_exactly_invariant_but_ula_is_not():
    """Start from exact draws of N(0, diag(1, 0.25)) and apply 5 steps with a large step size:
    MALA keeps the law (variance test), the unadjusted step (ULA) inflates it."""
    g = Gaussian([0.0, 0.0], std=[1.0, 0.5])
    gen = torch.Generator().manual_seed(0)
    n, h = 40_000, 0.1
    x = g.sample_exact(n, generator=gen)
    y, z = x.clone(), x.clone()
    for _ in range(5):
        y, acc = mala_step(g.energy, g.grad_energy, y, h, gen)
        z = z - h * g.grad_energy(z) + math.sqrt(2 * h) * torch.randn(z.shape, generator=gen)
    var_true = 0.25
    se = math.sqrt(2 * var_true ** 2 / n)
    assert_consistent(float((y[:, 1] ** 2).mean()), se, var_true, what="MALA variance")
    assert_rejects(float((z[:, 1] ** 2).mean()), se, var_true, what="ULA variance")
    y2, acc2 = hmc_step(g.energy, g.grad_energy, x, 0.3, 5, gen)
    assert_consistent(float((y2[:, 1] ** 2).mean()), se, var_true, what="HMC variance")
    assert acc.dtype == torch.bool and 0.3 < float(acc2.float().mean()) < 1.0


def test_mala_sampler_moments_within_mcse():
    cov = np.array([[1.0, 0.6], [0.6, 0.8]])
    g = Gaussian([1.0, -0.5], cov=cov)
    res = bk.sample(g, method="mala", n_samples=8000, n_steps=300, seed=0, device="cpu",
                    n_chains=16)
    assert res.log_z is None and "log_z_unavailable" in res.diagnostics
    assert abs(res.diagnostics["acceptance"] - 0.574) < 0.1
    assert 1.0 <= res.diagnostics["tau_int"] and res.ess < res.n_samples
    steps = res.history["step_size"]
    assert np.all(steps[300:] == steps[-1])  # frozen after burn-in
    for j, mu in enumerate([1.0, -0.5]):
        m, se = res.expectation(lambda x: x[:, j])
        assert_consistent(m, se, mu, what=f"mean[{j}]")
        assert_rejects(m, se, mu + 0.3, what=f"mean[{j}]")
    m2, se2 = res.expectation(lambda x: (x[:, 0] - 1.0) * (x[:, 1] + 0.5))
    assert_consistent(m2, se2, 0.6, what="covariance")
    with pytest.warns(ConvergenceWarning):  # 8 steps per chain: tau_int cannot be trusted
        a = bk.sample(g, method="mala", n_samples=64, n_steps=10, seed=3, device="cpu", n_chains=8)
    with pytest.warns(ConvergenceWarning):
        b = bk.sample(g, method="mala", n_samples=64, n_steps=10, seed=3, device="cpu", n_chains=8)
    assert torch.equal(a.samples, b.samples)


# ------------------------------------------------------------------------------ bad input
def test_bad_options_raise_before_work():
    gmm = three_modes()
    with pytest.raises(ConfigError, match="unknown kernel"):
        ais(gmm, kernel="gibbs")
    with pytest.raises(ConfigError, match="continuous"):
        ais(gmm, kernel="heat_bath", n_samples=8, n_steps=2, device="cpu")
    with pytest.raises(ConfigError, match="categorical"):
        ais(Ising(3, 0.3), kernel="mala", n_samples=8, n_steps=2, device="cpu")
    with pytest.raises(ConfigError, match="schedule"):
        ais(gmm, schedule="cosine")
    with pytest.raises(ConfigError, match="increase strictly"):
        ais(gmm, schedule=[0.0, 0.7, 0.5, 1.0])
    with pytest.raises(ConfigError, match="n_steps"):
        ais(gmm, n_steps=0)
    with pytest.raises(ConfigError, match="init_std"):
        ais(gmm, init_std=-1.0)
    with pytest.raises(ConfigError, match="unknown option"):
        ais(gmm, step=0.1)
    with pytest.raises(ConfigError, match="n_samples"):
        ais(gmm, n_samples=0, n_steps=2, device="cpu")
    with pytest.raises(ConfigError, match="dt"):
        annealed_langevin(gmm, dt=0.0)
    with pytest.raises(ConfigError, match="checkpoint"):
        bk.sample(gmm, method="ais", checkpoint="x.pt", n_steps=2, n_samples=4, device="cpu")
    with pytest.raises(IncompatibleMethodError):
        bk.sample(Ising(3, 0.3), method="jarzynski", n_samples=4)


def test_nan_energy_is_rejected_before_work():
    bad = Energy.from_function(lambda x: torch.where(x[:, 0] > 0, torch.nan, 0.0) + (x ** 2).sum(1),
                               Reals(2), name="nan-half")
    for method in ("ais", "mala", "jarzynski"):
        with pytest.raises(TargetError, match="NaN"):
            bk.sample(bad, method=method, n_samples=4, n_steps=2, device="cpu", seed=0)
    wrong_shape = Energy.from_function(lambda x: x ** 2, Reals(2))
    with pytest.raises(TargetError, match="shape"):
        ais(wrong_shape, n_samples=4, n_steps=2, device="cpu")


def test_smc_resampling_islands_log_z_and_error_bar():
    """AIS with resampling (SMC, 16 islands): log Z of the three-mode mixture within the
    between-island error bar, the mode masses right, and resampling actually happened. Over
    independent seeds the island error bar covers the truth (z-scores of 8 runs within 3.5)."""
    gmm = three_modes()
    truth = math.log(sum(WEIGHTS))
    res = ais(gmm, n_samples=2048, n_steps=100, init_std=5.0, seed=0, device="cpu",
              resample_ess=0.5, n_islands=16)
    d = res.diagnostics
    assert d["resample_events"] >= 5 and d["n_islands"] == 16 and d["log_z_stderr_from"] == "between islands"
    # the pooled weights give the same log Z as the islands (equal island sizes)
    lw = res.log_weights
    assert res.log_z == pytest.approx(float(torch.logsumexp(lw, 0)) - math.log(lw.numel()), abs=1e-9)
    assert 0.0 < res.log_z_stderr < 0.1
    assert_consistent(res.log_z, res.log_z_stderr, truth, bias=jensen_bias(res.log_z_stderr))
    missing = math.log(sum(WEIGHTS) - WEIGHTS[2])
    assert_rejects(res.log_z, res.log_z_stderr, missing, bias=jensen_bias(res.log_z_stderr))
    probs = torch.as_tensor(res.weights())
    mode = gmm.mode_assignment(res.samples)
    mass = [float(probs[mode == k].sum()) for k in range(3)]
    np.testing.assert_allclose(mass, np.array(WEIGHTS) / sum(WEIGHTS), atol=0.08)
    z = []
    for seed in range(1, 9):
        r = ais(gmm, n_samples=512, n_steps=50, init_std=5.0, seed=seed, device="cpu",
                resample_ess=0.5, n_islands=16)
        z.append((r.log_z - truth) / r.log_z_stderr)
    assert max(abs(v) for v in z) < 3.5
    # options are checked before any work
    with pytest.raises(ConfigError, match="multiple of n_islands"):
        ais(gmm, n_samples=100, n_steps=5, seed=0, resample_ess=0.5, n_islands=16)
    with pytest.raises(ConfigError, match="resample_ess"):
        ais(gmm, n_samples=64, n_steps=5, seed=0, resample_ess=1.5)
    with pytest.raises(ConfigError, match="continuous targets only"):
        ais(Ising(L=3, beta=0.3), n_samples=64, n_steps=5, seed=0, resample_ess=0.5)


def test_default_is_smc_on_an_adaptive_ladder_and_n_steps_gives_plain_ais():
    """Issue 24: with no ladder given, AIS on a continuous target is an SMC sampler on a CESS
    ladder chosen by an independent pilot (refined to min_levels), island error bar; log Z of
    the three-mode mixture within it over seeds (negative control: a missing mode is
    rejected). Giving n_steps keeps plain AIS on a fixed geometric ladder."""
    gmm = three_modes()
    truth = math.log(sum(WEIGHTS))
    missing = math.log(sum(WEIGHTS) - WEIGHTS[2])
    z, est, se = [], [], []
    for seed in range(4):
        res = ais(gmm, n_samples=512, init_std=5.0, seed=seed, device="cpu", min_levels=50)
        d = res.diagnostics
        assert d["adaptive_ladder"] and d["log_z_stderr_from"] == "between islands"
        assert d["n_islands"] == 16 and d["n_levels"] >= 50 and d["pilot_levels"] >= 1
        lam = res.history["lambda"]
        assert lam[0] == 0.0 and lam[-1] == 1.0 and (np.diff(lam) > 0).all()
        z.append((res.log_z - truth) / res.log_z_stderr)
        est.append(res.log_z)
        se.append(res.log_z_stderr)
    assert max(abs(v) for v in z) < 3.5
    pooled, pooled_se = float(np.mean(est)), float(np.sqrt(np.sum(np.square(se)))) / len(se)
    assert_consistent(pooled, pooled_se, truth, bias=jensen_bias(pooled_se))
    assert_rejects(pooled, pooled_se, missing, bias=jensen_bias(pooled_se))
    plain = ais(gmm, n_samples=64, n_steps=7, init_std=5.0, seed=0, device="cpu")
    assert "n_islands" not in plain.diagnostics and plain.history["lambda"].size == 8
    with pytest.raises(ConfigError, match="adaptive"):
        ais(gmm, n_samples=64, n_steps=7, schedule="adaptive")
    with pytest.raises(ConfigError, match="cess"):
        ais(gmm, n_samples=64, cess=1.0)


def test_small_budget_smc_is_flagged_or_right_and_a_good_run_stays_unflagged():
    """Issue 24 ("an error bar is honest or flagged"): the default SMC on many-well-32 with 256
    particles (8 islands of 32, ~131k energy evaluations) gave, for seeds 1 and 4, -1.09 +- 0.27
    and -0.80 +- 0.24 from the exact log Z, flagged reliable: the sample spread of 8 islands
    (0.77, 0.92) was far below the islands' true spread (about 1.3). Now each such run is flagged
    or within 3 error bars of the exact value. Negative control: a good run (d = 15 anisotropic
    Gaussian, 1024 particles, 32 islands) stays unflagged and within its error bar, and a
    shifted truth is rejected."""
    import warnings

    from boltzkit.energies import ManyWell

    mw = ManyWell(32)
    truth = mw.exact_log_z()
    for seed in (1, 4):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnreliableEstimateWarning)
            res = bk.sample(mw, method="ais", n_samples=256, seed=seed, device="cpu", progress=False)
        d = res.diagnostics
        assert d["n_islands"] == 8 and d["island_log_z_std_upper"] > d["island_log_z_std"]
        assert not d["reliable"] or abs(res.log_z - truth) < 3 * res.log_z_stderr, (seed, res.log_z - truth)
    # the 4-island case: a d = 15 anisotropic Gaussian from N(0, I) at n = 128 was 5.3 error bars low
    g = Gaussian([0.0] * 15, std=np.geomspace(0.1, 3.0, 15).tolist())
    with pytest.warns(UnreliableEstimateWarning, match="only 4 islands"):
        small = ais(g, n_samples=128, init_std=1.0, seed=2, device="cpu")
    assert not small.diagnostics["reliable"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreliableEstimateWarning)
        good = ais(g, n_samples=1024, init_std=1.0, seed=0, device="cpu")
    assert good.diagnostics["reliable"] and good.diagnostics["n_islands"] == 32
    gt = g.exact_log_z()
    assert_consistent(good.log_z, good.log_z_stderr, gt, bias=jensen_bias(good.log_z_stderr))
    assert_rejects(good.log_z, good.log_z_stderr, gt + 1.0, bias=jensen_bias(good.log_z_stderr))
