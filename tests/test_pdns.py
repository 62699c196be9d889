"""Tests of PDNS (proximal diffusion neural sampler) and its proximal schedule.

Ground truths are exact: enumeration of the 2^9 states of the Ising lattice, the closed form
``log Z = log sum_k w_k`` for Gaussian mixtures and ``(n_dof / 2) log 2 pi`` for a harmonic
particle cloud. Statistical checks use the estimator's own error bar, and each has a negative
control; on the lattice the control is the plain (non-proximal) WDCE sampler with the same
network, seed and budget, which collapses onto one of the two ordered states.
"""

import io
import math

import numpy as np
import pytest
import torch

import boltzkit as bk
from boltzkit._registry import DeviceProfile, registry
from boltzkit.domains.particles import ParticleCloud
from boltzkit.energies import Energy, GaussianMixture, Ising
from boltzkit.energies.exact import enumerate_states
from boltzkit.errors import ConfigError, IncompatibleMethodError
from boltzkit.samplers._shared.proximal import ProximalSchedule, ess_fraction, tilted_kl
from boltzkit.samplers.pdns import PDNS, pdns_priority

from _stats import assert_consistent, assert_rejects, z_limit

quiet = pytest.mark.filterwarnings("ignore::boltzkit.errors.UnreliableEstimateWarning",
                                   "ignore::boltzkit.errors.ConvergenceWarning")

LATTICE = dict(batch_size=128, hidden=16, lr=3e-3, inner_steps=5, n_replicates=2)
MIXTURE = dict(reference_std=6.0, n_time_steps=40, batch_size=256, hidden=32, lr=3e-3, inner_steps=5)


def _positive_magnetization(x):
    return (x.flatten(1).sum(1) > 0).double()


def _check_log_z(res, exact, one_mode_lost, what):
    """log Z within its error bar (+ Jensen budget), rejecting a value 5 tolerances away and
    the value a sampler that lost modes would report."""
    bias = res.log_z_stderr ** 2 + 2e-3
    assert_consistent(res.log_z, res.log_z_stderr, exact, bias=bias, what=what)
    tol = z_limit() * res.log_z_stderr + bias
    assert_rejects(res.log_z, res.log_z_stderr, exact + 5 * tol, bias=bias, what=what)
    assert_rejects(res.log_z, res.log_z_stderr, one_mode_lost, bias=bias, what=what + " (modes lost)")


# ---------------------------------------------------------------------------- lattice, two modes
@pytest.fixture(scope="module")
def ising_pair():
    """Ising 3 x 3 at beta = 0.7 (two ordered states, P(m > 0) = 1/2 exactly): PDNS and plain
    WDCE with the same network, seed and budget."""
    target = Ising(L=3, beta=0.7)
    out = {}
    for schedule in ("adaptive", "none"):
        sampler = PDNS(device="cpu", seed=0, progress=False, schedule=schedule, **LATTICE)
        sampler.fit(target, n_steps=160)
        out[schedule] = (sampler, sampler.sample(8000))
    return target, out


@quiet
def test_lattice_both_modes_in_right_proportions_and_log_z(ising_pair):
    target, out = ising_pair
    sampler, res = out["adaptive"]
    exact = enumerate_states(target, dtype=torch.float64).log_z
    _check_log_z(res, exact, exact - math.log(2), "PDNS Ising 3x3 log Z")
    p, se = res.expectation(_positive_magnetization)
    assert_consistent(p, se, 0.5, what="weighted P(m > 0)")
    assert_rejects(p, se, 0.5 + 5 * z_limit() * se, what="weighted P(m > 0)")
    # the sampler itself (unweighted) visits both ordered states
    raw = float(_positive_magnetization(res.samples).mean())
    assert 0.3 < raw < 0.7, f"unweighted P(m > 0) = {raw:.3f}: the sampler covers one mode only"
    assert res.diagnostics["proximal_done"] and res.diagnostics["final_prox_lambda"] == 0.0


@quiet
def test_lattice_plain_wdce_collapses_and_the_checks_detect_it(ising_pair):
    """Negative control: same network, seed and budget without the proximal term."""
    target, out = ising_pair
    _, res = out["none"]
    exact = enumerate_states(target, dtype=torch.float64).log_z
    bias = res.log_z_stderr ** 2 + 2e-3
    assert_rejects(res.log_z, res.log_z_stderr, exact, bias=bias, what="plain WDCE log Z")
    p, se = res.expectation(_positive_magnetization)
    assert_rejects(p, se, 0.5, what="plain WDCE weighted P(m > 0)")
    assert abs(res.log_z - (exact - math.log(2))) < 0.05, "plain WDCE should have lost exactly one mode"


def test_history_records_the_proximal_stages(ising_pair):
    _, out = ising_pair
    sampler, res = out["adaptive"]
    h = res.history
    for key in ("loss", "stage", "prox_step", "prox_lambda", "stage_kl", "stage_ess_frac", "ess_frac",
                "log_z"):
        assert len(h[key]) == sampler.step == 160, key
    inner = sampler.config.inner_steps
    assert np.array_equal(h["stage"], np.arange(160) // inner + 1)  # one stage per fresh batch
    lam = h["prox_lambda"]
    assert lam[0] < 1.0 and np.all(np.diff(lam) <= 0) and lam[-1] == 0.0
    assert 0.0 < h["prox_step"][0] < 1.0, "the first stage should be a partial (proximal) step"
    # a stage that moves the target (lambda decreases, stopping rule not yet fired) spends the
    # whole KL budget (on top of the current mismatch after `patience` repeated stages)
    moved = np.concatenate([[True], np.diff(lam) < 0]) & (lam > 0)
    budget = sampler.config.kl_budget
    assert moved.sum() >= 2 and np.all(h["stage_kl"][moved] >= budget - 1e-6)
    assert np.isclose(h["stage_kl"][moved], budget, atol=1e-6).any()
    _, plain = out["none"]
    assert np.all(plain.history["prox_step"] == 1.0) and np.all(plain.history["prox_lambda"] == 0.0)


# ---------------------------------------------------------------------------- continuous mixture
@pytest.fixture(scope="module")
def mixture():
    """1-D mixture 0.6 N(-4, 0.5^2) + 1.4 N(4, 0.5^2): log Z = log 2, P(x > 0) = 0.7."""
    target = GaussianMixture([[-4.0], [4.0]], 0.5, [0.6, 1.4])
    res = bk.sample(target, method="pdns", n_steps=200, n_samples=12_000, seed=0, device="cpu",
                    progress=False, **MIXTURE)
    return target, res


@quiet
def test_mixture_modes_in_right_proportions_and_log_z(mixture):
    target, res = mixture
    assert res.method == "pdns"
    _check_log_z(res, math.log(2.0), math.log(1.4), "PDNS mixture log Z")
    assert res.diagnostics["exact_log_z"] == pytest.approx(math.log(2.0))
    p, se = res.expectation(lambda x: (x[:, 0] > 0).double())
    assert_consistent(p, se, 0.7, what="weighted P(x > 0)")
    assert_rejects(p, se, 0.5, what="weighted P(x > 0) (equal modes)")
    assert_rejects(p, se, 0.7 + 5 * z_limit() * se, what="weighted P(x > 0)")
    raw = float((res.samples[:, 0] > 0).double().mean())
    assert 0.55 < raw < 0.85, f"unweighted P(x > 0) = {raw:.3f}"
    assert res.diagnostics["ess_frac"] > 0.3


def _harmonic_cloud():
    dom = ParticleCloud(3, 2)
    return Energy.from_function(lambda x: 0.5 * (x * x).sum(-1), dom, name="harmonic",
                                log_z=0.5 * dom.n_dof * math.log(2 * math.pi))


@quiet
@pytest.mark.parametrize("make_target", [
    lambda: GaussianMixture([[-2.0, 0.0], [2.0, 1.0]], [0.7, 0.4], [0.5, 1.5]),
    _harmonic_cloud,
], ids=["reals", "mean-free-particles"])
def test_weights_are_exact_for_a_random_untrained_control(make_target):
    """E[exp(log w)] = Z for any control: a randomly perturbed network gives log Z within its
    error bar (exact Euler-Maruyama and bridge kernels, mean-free projection, n_dof)."""
    target = make_target()
    sampler = PDNS(device="cpu", seed=3, progress=False, reference_std=3.0, n_time_steps=20,
                   hidden=16, n_layers=2, batch_size=64, inner_steps=2, sample_batch_size=4096)
    sampler.fit(target, n_steps=3)  # a few steps through the bridge-matching loss, then randomize
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in sampler.ema.shadow.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    res = sampler.sample(16_000)
    exact = target.exact_log_z()
    bias = res.log_z_stderr ** 2 + 1e-3
    assert_consistent(res.log_z, res.log_z_stderr, exact, bias=bias)
    assert_rejects(res.log_z, res.log_z_stderr, exact + 5 * (z_limit() * res.log_z_stderr + bias), bias=bias)
    if isinstance(target.domain, ParticleCloud):
        com = target.domain.center_of_mass(res.samples).abs().max()
        assert float(com) < 1e-5, "samples must stay on the zero-centre-of-mass subspace"


# ---------------------------------------------------------------------------- the schedule
def test_tilted_kl_and_ess_of_the_tilt():
    gen = torch.Generator().manual_seed(0)
    lw = 3.0 * torch.randn(512, generator=gen, dtype=torch.float64)
    kls = [tilted_kl(a * lw) for a in np.linspace(0, 1, 11)]
    assert kls[0] == pytest.approx(0.0, abs=1e-12) and np.all(np.diff(kls) > 0)
    assert ess_fraction(1e-9 * lw) == pytest.approx(1.0, abs=1e-9)  # a -> 0: uniform weights
    assert ess_fraction(lw) < 0.2


def test_adaptive_step_hits_the_kl_budget_and_ess_target():
    gen = torch.Generator().manual_seed(1)
    lw = 4.0 * torch.randn(1000, generator=gen, dtype=torch.float64)
    sch = ProximalSchedule("adaptive", "model", kl_budget=0.3)
    sch.advance(lw, lw)
    assert 0 < sch.step < 1 and tilted_kl(sch.step * lw) == pytest.approx(0.3, abs=1e-6)
    assert sch.lam == pytest.approx(1 - sch.step) and sch.stage == 1
    sch2 = ProximalSchedule("adaptive", "model", ess_target=0.4)
    sch2.advance(lw, lw)
    assert ess_fraction(sch2.step * lw) == pytest.approx(0.4, abs=1e-4)
    # a batch already close to the target takes the full step: the stopping rule fires
    sch.advance(1e-3 * lw, lw)
    assert sch.done and sch.step == 1.0 and sch.lam == 0.0
    sch.advance(lw, lw)  # after the stopping rule: plain WDCE
    assert sch.step == 1.0 and torch.equal(sch.tilt(lw, lw), lw)


def test_path_anchor_lambda_decreases_to_zero():
    gen = torch.Generator().manual_seed(2)
    reward = 5.0 * torch.randn(800, generator=gen, dtype=torch.float64)
    sch = ProximalSchedule("adaptive", "path", kl_budget=0.2)
    lams = []
    for k in range(30):  # a model that approaches the target: log_w = log dP*/dP_theta shrinks
        log_w = reward * 0.8 ** k
        sch.advance(log_w, reward)
        lams.append(sch.lam)
        if not sch.done:
            assert tilted_kl(sch.tilt(log_w, reward)) <= 0.2 + 1e-6
    assert np.all(np.diff(lams) <= 0) and sch.done and lams[-1] == 0.0
    # with a = 1 / lam = 0 the tilt is the plain WDCE weight, bit for bit
    assert torch.equal(sch.tilt(reward, reward), reward)


def test_path_anchor_cannot_stall_on_a_fitting_error_floor():
    """A sampler that never fits the current stage within the budget: the target is repeated
    ``patience`` times, then the budget is counted on top of the mismatch."""
    gen = torch.Generator().manual_seed(3)
    reward = 2.0 * torch.randn(600, generator=gen, dtype=torch.float64)
    noise = 1.5 * torch.randn(600, generator=gen, dtype=torch.float64)  # KL floor ~ 1.1 nats > budget
    sch = ProximalSchedule("adaptive", "path", kl_budget=0.3, patience=2)
    lams = []
    for _ in range(9):
        log_w = sch.lam * reward + noise  # log dP_lam/dP_theta = noise: the fit error
        sch.advance(log_w, reward)
        lams.append(sch.lam)
    moved = np.diff([1.0] + lams) < 0
    assert moved.tolist() == [False, False, True] * 3
    assert tilted_kl(noise) > 0.3


def test_constant_schedule_and_none():
    lw = torch.linspace(-3, 3, 64, dtype=torch.float64)
    sch = ProximalSchedule("constant", "model", eta=0.5, eta_growth=2.0, tol=1e-2)
    expect_lam = 1.0
    for k in range(3):
        sch.advance(lw, lw)
        eta = 0.5 * 2.0 ** k
        expect_lam /= 1 + eta
        assert sch.step == pytest.approx(eta / (1 + eta)) and sch.lam == pytest.approx(expect_lam)
    path = ProximalSchedule("constant", "path", eta=1.0)
    path.advance(lw, lw)
    assert path.lam == pytest.approx(0.5) and torch.allclose(path.tilt(lw, lw), 0.5 * lw)
    none = ProximalSchedule("none")
    assert none.done and none.step == 1.0 and none.lam == 0.0


# ---------------------------------------------------------------------------- API
@quiet
@pytest.mark.parametrize("make_target,opts", [
    (lambda: Ising(L=3, beta=0.5), dict(batch_size=32, inner_steps=2, anchor="model")),
    (lambda: GaussianMixture([[-2.0], [2.0]], 0.5), dict(batch_size=32, inner_steps=2, n_time_steps=10)),
], ids=["lattice", "continuous"])
def test_same_seed_same_samples_and_checkpoint_resume(make_target, opts, tmp_path):
    target = make_target()

    def run(seed, n_steps=8, checkpoint=None):
        s = PDNS(device="cpu", seed=seed, progress=False, **opts)
        s.fit(target, n_steps=n_steps, checkpoint=checkpoint)
        return s, s.sample(64)

    (_, a), (_, b), (_, c) = run(0), run(0), run(1)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.log_weights, b.log_weights)
    assert not torch.equal(a.log_weights, c.log_weights)
    ck = tmp_path / "pdns.pt"
    run(0, n_steps=5, checkpoint=ck)  # interrupted mid-stage (inner_steps = 2)
    resumed, d = run(0, checkpoint=ck)
    assert resumed.step == 8
    assert torch.equal(a.samples, d.samples) and torch.equal(a.log_weights, d.log_weights)


def test_bad_input_fails_before_work():
    for opts in (dict(schedule="fast"), dict(anchor="both"), dict(kl_budget=0.0), dict(ess_target=1.5),
                 dict(eta=-1.0), dict(eta_growth=0.5), dict(tol=2.0), dict(weighting="top"),
                 dict(inner_steps=0), dict(batch_size=1), dict(noise_ratio=1.0), dict(bogus=1)):
        with pytest.raises(ConfigError):
            PDNS(**opts)
    with pytest.raises(ConfigError):
        PDNS(device="cpu", seed=0).fit(Ising(L=3, beta=0.5), n_steps=0).sample(1)

    class Fake:
        kind, name = "energy", "fake"
        domain = object()

    with pytest.raises(IncompatibleMethodError):
        PDNS(device="cpu", seed=0).fit(Fake(), n_steps=1)


def test_registration_and_multimodal_priority():
    spec = registry()["pdns"]
    ising, mixture = Ising(L=4, beta=0.6), GaussianMixture([[-5.0], [5.0]], 0.5)
    for target, default in ((ising, "mdns"), (mixture, "naas")):
        assert spec.incompatibility(target) is None
        default_priority = registry()[default].priority_for(target)
        assert bk.select(target).name == default  # by priority (on a CPU the budget rule picks SMC/AIS)
        assert pdns_priority(target) < default_priority
        target.multimodal = True  # declared multimodal with high barriers
        assert pdns_priority(target) > default_priority
    assert pdns_priority(Ising(L=3)) == 3  # no attribute: below the defaults


def test_explain_recommends_pdns_for_declared_multimodal_targets():
    target = Ising(L=4, beta=0.6)
    target.multimodal = True
    assert bk.select(target).name == "pdns"  # priority: the target's declaration counts
    gpu = DeviceProfile("cuda", energy_s=2e-8, net_s=2e-11)
    assert bk.select(target, profile=gpu, budget=600).name == "pdns"
    # on a CPU a training-free method that fits comes first, and explain says why
    assert bk.explain(target, file=io.StringIO(), device="cpu").startswith("boltzkit would use 'smc'")
    assert "'pdns', 'mdns', 'discrete_asbs' must train first" in bk.explain(target, file=io.StringIO(),
                                                                             device="cpu")


# ---------------------------------------------------------------------------- many modes, defaults
GRID = dict(n_time_steps=40, batch_size=256, hidden=32, lr=3e-3, inner_steps=5)


def _grid9():
    """3 x 3 grid of N(m, 0.5^2 I) in 2-D, spacing 5 (10 stds), unequal weights 1..9 (log Z =
    log 45); mode masses k / 45."""
    means = [[a, b] for a in (-5.0, 0.0, 5.0) for b in (-5.0, 0.0, 5.0)]
    return GaussianMixture(means, 0.5, np.arange(1.0, 10.0))


def _mode_masses(target, res):
    """Weighted mass of each component's basin and its delta-method standard error."""
    a = target.mode_assignment(res.samples.double())
    w = torch.softmax(res.log_weights.double(), 0)
    ind = torch.nn.functional.one_hot(a, target.n_components).double()
    m = w @ ind
    se = torch.sqrt((w.unsqueeze(1) ** 2 * (ind - m) ** 2).sum(0))
    return m.numpy(), se.numpy()


@quiet
def test_default_reference_keeps_every_mode_of_a_grid_mixture():
    """No reference_std given: the pilot sets the reference width, and PDNS keeps all nine modes
    of a well-separated 2-D grid mixture (log Z and every mode's mass within their error bars).
    Negative control: the old fixed default reference_std = 1 covers only the central mode; the
    same checks reject it (log Z low by about log of the mass lost)."""
    target = _grid9()
    exact = target.mode_probabilities().numpy()
    for opts, ok in ((dict(), True), (dict(reference_std=1.0), False)):
        s = PDNS(device="cpu", seed=0, progress=False, **GRID, **opts).fit(target, n_steps=200)
        res = s.sample(6000)
        m, se = _mode_masses(target, res)
        bias = res.log_z_stderr ** 2 + 2e-3
        z = z_limit()
        log_z_ok = abs(res.log_z - math.log(45.0)) <= z * res.log_z_stderr + bias
        masses_ok = bool(np.all(np.abs(m - exact) <= z * se + 0.01))
        if ok:
            assert 4.0 < res.diagnostics["reference_std"] < 9.0  # 1.5 x RMS radius (about 4.3)
            _check_log_z(res, math.log(45.0), math.log(45.0 - 9.0), "PDNS 9-mode grid log Z")
            assert masses_ok, (m, exact, se)
            raw = np.bincount(target.mode_assignment(res.samples.double()).numpy(), minlength=9) / 6000
            assert raw.min() > 0.2 * exact.min()  # the sampler itself visits every mode
        else:
            assert res.diagnostics["reference_std"] == 1.0
            assert not (log_z_ok and masses_ok), (res.log_z, m)


def test_pilot_reference_width_matches_the_target_spread():
    """The pilot's RMS radius against closed forms: N(0, 3^2 I_3) (RMS 3) and a 1-D mixture at
    +-20 (RMS sqrt(400 + 0.25)); a target far narrower than every pilot scale gives None."""
    from boltzkit.samplers.pdns import pilot_reference_std

    gen = torch.Generator().manual_seed(0)
    g3 = GaussianMixture([[0.0, 0.0, 0.0]], 3.0)
    ref, info = pilot_reference_std(g3.energy, 3, None, 3, "cpu", gen)
    assert abs(info["pilot_rms"] - 3.0) < 0.3 and ref == pytest.approx(1.5 * info["pilot_rms"])
    far = GaussianMixture([[-20.0], [20.0]], 0.5)
    _, info = pilot_reference_std(far.energy, 1, None, 1, "cpu", gen)
    assert abs(info["pilot_rms"] - math.sqrt(400.25)) < 1.5
    tiny = GaussianMixture([[30.0] * 8], 1e-3)
    ref, info = pilot_reference_std(tiny.energy, 8, None, 8, "cpu", gen)
    assert ref is None and info["pilot_ess"] < 10
