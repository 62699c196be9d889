"""SMC over inverse temperature started from a trained lattice sampler (MDNS, discrete ASBS):
``sample_smc`` / :class:`boltzkit.samplers.smc.NeuralStartSMC`.

Truths: exact log Z of 4x4 Ising (Kaufman / enumeration) and 3x3 Potts q = 3 (enumeration),
and the exact Boltzmann pmf of the energy on 3x3 Ising. Every statistical check has a negative
control (a wrong truth must be rejected).
"""

import math

import numpy as np
import pytest
import torch

import boltzkit as bk
from _stats import assert_consistent, assert_rejects, chi2_gof_pvalue
from boltzkit.energies import Ising, Potts
from boltzkit.energies.exact import enumerate_states, exact_marginal_pmf, ising_log_z, potts_log_z
from boltzkit.energies.lattice import BETA_C_ISING, potts_beta_c
from boltzkit.errors import ConfigError
from boltzkit.samplers.discrete_asbs import DiscreteASBS
from boltzkit.samplers.mdns import MDNS
from boltzkit.samplers.smc import SMC, start_level

quiet = pytest.mark.filterwarnings("ignore::boltzkit.errors.UnreliableEstimateWarning",
                                   "ignore::boltzkit.errors.ConvergenceWarning")
FAST = dict(batch_size=128, n_replicates=2, resample_every=5, lr=3e-3)
Z3 = 2.7e-3  # two-sided false-alarm rate of a 3-standard-error check


def _mdns(target, n_steps, seed=0, **opts):
    return MDNS(device="cpu", seed=seed, progress=False, **FAST, **opts).fit(target, n_steps=n_steps)


def _check_seeds(results, truth, wrong):
    """Every seed within 3 of its own error bar (+ Jensen budget stderr^2); the seeds' mean
    within its error bar; the wrong truth rejected by that mean (negative control)."""
    est = np.array([r.log_z for r in results])
    se = np.array([r.log_z_stderr for r in results])
    for e, s in zip(est, se, strict=True):
        assert_consistent(e, s, truth, alpha=Z3, bias=s ** 2)
    mean, mse = est.mean(), math.sqrt(np.sum(se ** 2)) / len(se)
    assert_consistent(mean, mse, truth, bias=max(se) ** 2)
    assert_rejects(mean, mse, wrong, bias=max(se) ** 2)


@pytest.fixture(scope="module")
def ising4():
    """4x4 Ising at beta_c and two MDNS runs on it: briefly trained (40 steps: its weights are
    poor at the target, ESS ~0.05) and trained (100 steps: ESS ~0.6)."""
    target = Ising(4, BETA_C_ISING)
    return target, {40: _mdns(target, 40, seed=0), 100: _mdns(target, 100, seed=1)}


@quiet
@pytest.mark.parametrize("n_steps", [40, 100])
def test_mdns_smc_log_z_on_critical_ising(ising4, n_steps):
    """4x4 Ising at beta_c: the briefly trained MDNS starts below the target and the lattice
    kernel tempers the rest; the trained one starts at the target (one level of resampling +
    heat-bath sweeps). Four independent runs of each give log Z within 3 of their island error
    bar; a 3 % colder lattice's log Z is ruled out."""
    _, samplers = ising4
    truth = ising_log_z(4, 4, BETA_C_ISING)
    results = []
    for _ in range(4):  # the sampler's stream moves on: independent runs
        res = samplers[n_steps].sample_smc(1024)
        d = res.diagnostics
        assert res.method == "mdns" and d["smc"] and d["n_islands"] == 32
        assert d["kernel"] == "heat_bath" and d["train_steps"] == n_steps
        if n_steps == 40:
            assert d["start_lambda"] < 1.0 and d["n_levels"] > 2
        else:
            assert d["start_lambda"] == 1.0 and d["n_levels"] == 1
        assert d["energy_evaluations"] >= 1024 + 256  # the proposal draws (main + pilot) count
        results.append(res)
    _check_seeds(results, truth, ising_log_z(4, 4, 1.03 * BETA_C_ISING))


@quiet
def test_safety_net_fallback_and_coverage_check(ising4):
    """The proposal cannot make the answer worse unnoticed. (a) A network whose weights stay
    degenerate at every inverse temperature (3x3 Potts q = 3, whole network randomised):
    plain SMC from the uniform start runs instead and is right. (b) A proposal that misses
    mass at its start level (same, another seed) is flagged unreliable by the coverage check
    (its log Z_lam0 against an independent SMC from the uniform start). (c) Negative control of
    the construction: weights that drop the proposal's -log q (as if the samples were uniform)
    are caught the same way on the 4x4 Ising sampler."""
    beta = potts_beta_c(3)
    target, truth = Potts(3, 3, beta), potts_log_z(3, 3, 3, beta)
    outcomes = {}
    for seed in (0, 1):
        s = _mdns(target, 0, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in s.ema.shadow.parameters():
                p.add_(0.5 * torch.randn(p.shape, generator=gen))
        outcomes[seed] = s.sample_smc(1024)
        if seed == 0:
            s0 = s
    a, b = outcomes[0], outcomes[1]
    assert a.diagnostics["start"] == "uniform" and a.diagnostics["reliable"]
    again = s0.sample_smc(1024)  # the fallback draws on the sampler's stream: a new, independent run
    assert again.diagnostics["start"] == "uniform" and again.log_z != a.log_z
    assert_consistent(a.log_z, a.log_z_stderr, truth, alpha=Z3, bias=a.log_z_stderr ** 2)
    assert_rejects(a.log_z, a.log_z_stderr, truth - 0.3, bias=a.log_z_stderr ** 2)
    assert b.diagnostics["start"] == "proposal" and not b.diagnostics["reliable"]
    assert abs(b.diagnostics["start_coverage_z"]) > 3 and "misses mass" in b.diagnostics["unreliable_because"]
    _, samplers = ising4
    s = samplers[40]
    proposal = s._smc_proposal

    def uniform_weights(n, g):
        x, u, _ = proposal(n, g)
        return x, u, -u + 16 * math.log(2)

    s._smc_proposal = uniform_weights
    try:
        wrong = s.sample_smc(1024)
    finally:
        del s._smc_proposal
    assert not wrong.diagnostics["reliable"] and abs(wrong.diagnostics["start_coverage_z"]) > 3


@quiet
def test_discrete_asbs_shares_the_hook():
    """Discrete ASBS (untrained controller, delta source) started SMC on 3x3 Potts q = 3 at beta_c:
    log Z within its error bar on 2 seeds; the proposal's energies, read back from its weights,
    equal the target's."""
    beta = potts_beta_c(3)
    target, truth = Potts(3, 3, beta), potts_log_z(3, 3, 3, beta)
    results = []
    for seed in range(2):
        s = DiscreteASBS(device="cpu", seed=seed, progress=False).fit(target, n_steps=0)
        x, u, _ = s._smc_proposal(64, torch.Generator().manual_seed(seed))
        np.testing.assert_allclose(u.numpy(), target.energy(target.domain.decode_flat(x)).double().numpy(),
                                   atol=1e-9)
        res = s.sample_smc(512)
        assert res.method == "discrete_asbs" and res.diagnostics["start"] == "proposal"
        results.append(res)
    _check_seeds(results, truth, truth - 0.3)


@pytest.mark.parametrize("kernel", ["heat_bath", "swendsen_wang"])
def test_start_at_the_target_keeps_it_invariant(kernel):
    """An exact proposal (exact Boltzmann samples of 3x3 Ising at beta = 0.4, log w = log Z for
    every sample) starts at lambda = 1; its level of sweeps keeps the law: log Z exact, the
    energy histogram after the sweeps matches the exact pmf (chi-square) while that of a
    different temperature is rejected, and the sweeps did move the samples."""
    target = Ising(3, 0.4)
    en = enumerate_states(target)
    smc = SMC(device="cpu", seed=0, progress=False, kernel=kernel, n_sweeps=2).fit(target)
    drawn = {}

    def draw(n, g):
        idx = torch.multinomial(torch.exp(en.log_probs), n, replacement=True, generator=g)
        x = target.domain.decode(en.states[idx])
        drawn["x"] = x  # the last draw is the main population
        u = en.energies[idx].double()
        return x, u, -u - en.log_probs[idx]

    res = smc.sample_from(draw, 4096)
    d = res.diagnostics
    assert d["start_lambda"] == 1.0 and d["n_levels"] == 1 and d["resample_events"] == 0
    assert res.log_z == pytest.approx(en.log_z, abs=1e-9) and res.log_z_stderr < 1e-9
    moved = (res.samples != drawn["x"]).flatten(1).any(1).double().mean()
    assert moved > 0.3
    bond_energy = Ising(3, 1.0).energy  # H(x), integer-valued, the same statistic at every beta
    vals = bond_energy(res.samples).double().numpy()
    for beta, should_pass in ((0.4, True), (0.3, False)):
        support, probs = exact_marginal_pmf(Ising(3, beta), bond_energy)
        counts = np.array([np.isclose(vals, v).sum() for v in support])
        assert counts.sum() == vals.size
        p = chi2_gof_pvalue(counts, probs)
        assert (p > 1e-4) if should_pass else (p < 1e-4), (beta, p)


def test_start_level_finds_the_last_crossing():
    """start_level: for a uniform proposal (ESS falls with lambda) the ESS at the returned level
    is the asked fraction and just above it is lower; for a proposal fitted to exp(-0.5 U) the
    ESS is 1 at 0.5 and the level lies above 0.5; an unreachable fraction gives the ESS maximum."""
    u = torch.randn(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    lam, ess = start_level(u, -u, 0.5)
    assert 0 < lam < 1 and ess == pytest.approx(0.5, abs=1e-6)
    lw = lambda s: -u + (1 - s) * u  # noqa: E731 (the weights at level s)
    e_above = torch.exp(2 * torch.logsumexp(lw(lam + 1e-3), 0) - torch.logsumexp(2 * lw(lam + 1e-3), 0)) / 4000
    assert float(e_above) < 0.5
    lam2, ess2 = start_level(u, -0.5 * u, 0.5)
    assert lam2 > 0.5 and ess2 == pytest.approx(0.5, abs=1e-6)
    lam3, ess3 = start_level(u, -0.5 * u + 4 * torch.randn(4000, dtype=torch.float64,
                                                           generator=torch.Generator().manual_seed(1)), 0.99)
    assert ess3 < 0.99 and 0.0 <= lam3 <= 1.0


@quiet
def test_bk_sample_route_seed_and_bad_options():
    """``bk.sample(..., method="mdns", smc=True)`` returns the SMC-started result; the same seed
    gives the same result; bad options fail before any work with the fix named."""
    target = Ising(3, 0.4)
    a = bk.sample(target, method="mdns", smc=True, n_steps=5, n_samples=256, seed=1, device="cpu",
                  progress=False, **FAST)
    assert a.method == "mdns" and "start_lambda" in a.diagnostics and "loss" in a.history
    assert a.history["lambda"][0] == a.diagnostics["start_lambda"]
    s = _mdns(target, 5, seed=1)
    b = s.sample_smc(256)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.log_weights, b.log_weights)
    with pytest.raises(ConfigError, match="smc_start_ess"):
        MDNS(smc_start_ess=0.0)
    with pytest.raises(ConfigError, match="smc must be"):
        MDNS(smc="yes")
    with pytest.raises(ConfigError, match="start_ess"):
        s.sample_smc(256, start_ess=1.5)
    with pytest.raises(ConfigError, match="multiple of n_islands"):
        s.sample_smc(250, n_islands=16)
    with pytest.raises(ConfigError, match="cess"):
        s.sample_smc(256, cess=1.5)
