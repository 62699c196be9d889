"""OLLA and its projection baselines against closed-form laws on constraint sets (CPU, seconds).

Statistics are averaged per chain; the chains are independent, so the standard error is the
spread of the chain means over sqrt(n_chains). Each statistical assert allows, besides
z * stderr, a bias budget for the unadjusted Euler-Maruyama discretization (stated where it
is used), and each has a negative control with a physically meaningful wrong truth.
"""

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

import boltzkit as bk
from boltzkit.constraints import (affine, ball, box, flat_torus, half_space, simplex, sphere, stiefel,
                                  torus)
from boltzkit.errors import (ConfigError, DomainError, IncompatibleMethodError,
                             InfeasibleConstraintError)
from boltzkit.samplers.olla import OLLA, ProjectedLangevin, SlackLangevin

from _stats import assert_consistent, assert_rejects

pytestmark = pytest.mark.filterwarnings("ignore::boltzkit.errors.ConvergenceWarning")

# alpha * dt = 0.1 as in the paper's experiments. At dt = 5e-3 the discretization bias of the
# equality-constrained statistics below is < 0.01 (measured with 4000 chains at dt = 5e-3 and
# 2.5e-3, where all agreed with the exact values within 2 standard errors of 0.005).
EQ = dict(step_size=5e-3, alpha=20.0)
BIAS_EQ = 0.01


def A(d, kappa):
    """Mean resultant length of von Mises-Fisher on S^{d-1}: I_{d/2}(kappa) / I_{d/2-1}(kappa)."""
    return float(special.ive(d / 2, kappa) / special.ive(d / 2 - 1, kappa))


def run(target, cls=OLLA, *, n_chains=500, burn, n_keep=20, thin=10, seed=0, x0=None, **opts):
    sampler = cls(seed=seed, device="cpu", n_chains=n_chains, thin=thin, **opts)
    sampler.fit(target, n_steps=burn, x0=x0)
    return sampler.sample(n_chains * n_keep)


def chain_mean(res, stat):
    """Mean of stat(samples) and its standard error from the independent chains."""
    n_chains = res.diagnostics["n_chains"]
    v = torch.as_tensor(stat(res.samples)).double().reshape(-1, n_chains)  # (kept step, chain)
    means = v.mean(0)
    return float(means.mean()), float(means.std() / math.sqrt(n_chains))


def check(res, stat, truth, wrong, *, bias, what):
    est, se = chain_mean(res, stat)
    assert_consistent(est, se, truth, bias=bias, what=what)
    assert_rejects(est, se, wrong, bias=bias, what=what)


# ----------------------------------------------------------------------------- spheres
def test_uniform_sphere_moments():
    res = run(bk.constrain(None, sphere(4)), burn=100, **EQ)
    # uniform on S^3: E x^2 = 1/d, E x^4 = 3 / (d (d + 2)); wrong: uniform polar angle (1/2, 3/8)
    check(res, lambda x: x[:, 3] ** 2, 1 / 4, 1 / 2, bias=BIAS_EQ, what="E x4^2")
    check(res, lambda x: x[:, 0] ** 4, 3 / 24, 3 / 8, bias=BIAS_EQ, what="E x1^4")
    # no projection: |h| fluctuates at O(dt) (about 4.5 dt on average for S^3 at alpha dt = 0.1)
    assert res.diagnostics["violation_mean"] < 10 * EQ["step_size"] < res.diagnostics["violation_max"] * 10
    assert res.diagnostics["fraction_infeasible"] < 0.2


@pytest.mark.parametrize("d", [3, 5])
def test_von_mises_fisher_through_bk_sample(d):
    kappa = 2.0
    target = bk.constrain(lambda x: -kappa * x[:, 0], sphere(d))
    res = bk.sample(target, n_samples=20_000, n_steps=400, seed=1, device="cpu", n_chains=1000,
                    thin=10, **EQ)
    assert res.method == "olla"
    if d == 3:
        assert math.isclose(A(3, kappa), 1 / math.tanh(kappa) - 1 / kappa, rel_tol=1e-12)
    # E mu.x = A_d(kappa); wrong: the formula of the sphere two dimensions down
    check(res, lambda x: x[:, 0], A(d, kappa), A(d - 2, kappa), bias=BIAS_EQ, what=f"vMF S^{d - 1}")
    assert res.diagnostics["violation_mean"] < target.domain.tol
    # the Result contract of a sampler without log Z
    assert res.log_z is None and res.log_z_stderr is None
    assert "normalizing constant" in res.diagnostics["log_z_unavailable"]
    assert res.samples.shape == (20_000, d) and res.samples.dtype == torch.float64
    assert 0 < res.ess <= 20_000 and res.diagnostics["tau_int"] >= 1
    assert res.diagnostics["ess_per_second"] > 0 and res.diagnostics["seconds_per_step"] > 0
    n_total = 400 + res.diagnostics["n_sampling_steps"]
    for key in ("violation_mean", "violation_max", "fraction_infeasible", "boundary_fraction"):
        assert res.history[key].shape == (n_total,)
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in res.diagnostics.values())


def test_spherical_cap_from_an_inequality():
    a = 0.5
    target = bk.constrain(None, sphere(3), inequalities=[lambda x: a - x[:, 2]])
    res = run(target, burn=400, **EQ)
    # Archimedes: x3 ~ U[a, 1]. Bias budget 0.01 for the boundary layer of the soft landing
    # (measured with 1000 chains: +0.0036 +- 0.0017 at dt = 5e-3, +0.0004 +- 0.0025 at 3e-3).
    # Wrong truth: uniform polar angle on the cap, E cos(theta) = sin(t) / t, t = arccos(a).
    t = math.acos(a)
    check(res, lambda x: x[:, 2], (1 + a) / 2, math.sin(t) / t, bias=BIAS_EQ, what="cap E x3")
    check(res, lambda x: (x[:, 2] > 0.75).double(), 0.5, 0.35, bias=0.02, what="cap P(x3 > 0.75)")
    d = res.diagnostics
    assert d["violation_mean"] < target.domain.tol and d["ineq_violation_mean"] < 5e-3
    assert 0 < d["boundary_fraction"] < 0.2


def test_truncated_gaussian_on_a_box():
    lo, hi = [-0.5, 0.0], [1.5, 2.0]
    target = bk.constrain(lambda x: 0.5 * (x * x).sum(1), box(lo, hi))
    res = run(target, burn=400, **EQ)
    # truncated normal marginals; bias budget 0.02 for the boundary layers at dt = 5e-3
    # (measured +0.012 +- 0.012 and -0.004 +- 0.011); wrong truth: the untruncated mean 0
    for i in range(2):
        check(res, lambda x: x[:, i], stats.truncnorm(lo[i], hi[i]).mean(), 0.0, bias=0.02,
              what=f"box E x{i + 1}")
    assert res.diagnostics["violation_mean"] < 0.01


def test_dirichlet_on_the_probability_simplex():
    d = 4
    res = run(bk.constrain(None, simplex(d)), burn=300, n_keep=10, step_size=1e-3, alpha=100.0)
    # uniform on {x >= 0, sum x = 1} is Dirichlet(1, ..., 1): E x1^2 = 2 / (d (d + 1));
    # wrong: the same formula for d - 1. Bias budget 0.005 (measured -0.002 +- 0.003 here).
    check(res, lambda x: x[:, 0] ** 2, 2 / (d * (d + 1)), 2 / ((d - 1) * d), bias=0.005,
          what="simplex E x1^2")
    assert float(res.samples.sum(1).sub(1).abs().max()) < 0.05


def test_circle_from_two_equalities():
    kappa, c = 3.0, 0.8
    rho = math.sqrt(1 - c * c)
    target = bk.constrain(lambda x: -kappa * x[:, 0], sphere(3), equalities=[lambda x: x[:, 2] - c])
    res = run(target, burn=400, **EQ)
    # circle of radius rho: the angle is von Mises with concentration kappa * rho;
    # wrong: concentration kappa (ignoring that the circle is smaller)
    check(res, lambda x: x[:, 0], rho * A(2, kappa * rho), rho * A(2, kappa), bias=BIAS_EQ,
          what="circle E x1")
    assert float(res.samples[:, 2].sub(c).abs().max()) < 0.05


# ----------------------------------------------------------------------------- tori
def test_flat_torus_has_von_mises_marginals():
    k1, k2 = 1.0, 3.0
    res = run(bk.constrain(lambda x: -k1 * x[:, 0] - k2 * x[:, 2], flat_torus(2)), burn=400, **EQ)
    check(res, lambda x: x[:, 0], A(2, k1), A(2, k2), bias=BIAS_EQ, what="E cos(theta1)")
    check(res, lambda x: x[:, 2], A(2, k2), A(2, k1), bias=BIAS_EQ, what="E cos(theta2)")
    check(res, lambda x: x[:, 0] * x[:, 2], A(2, k1) * A(2, k2), A(2, k2) ** 2, bias=BIAS_EQ,
          what="E cos(theta1) cos(theta2)")


def test_torus_of_revolution_uses_the_surface_measure():
    big, small = 1.0, 0.5
    res = run(bk.constrain(None, torus(big, small)), burn=400, **EQ)
    # surface measure: the tube angle phi has density (R + r cos phi) / (2 pi R), so
    # E cos phi = r / (2R); wrong: uniform in the parameters (E cos phi = 0)
    cos_phi = lambda x: (x[:, :2].norm(dim=1) - big) / small  # noqa: E731
    check(res, cos_phi, small / (2 * big), 0.0, bias=BIAS_EQ, what="torus E cos(phi)")


def test_stiefel_uniform_is_haar():
    n = 3
    res = run(bk.constrain(None, stiefel(n, 2)), burn=200, n_keep=10, n_chains=300, **EQ)
    # Haar on V(3, 2): E X11^2 X12^2 = 1 / (n (n + 2)); wrong: independent uniform columns (1/n^2)
    check(res, lambda x: x[:, 0] ** 2 * x[:, 1] ** 2, 1 / (n * (n + 2)), 1 / n ** 2, bias=0.005,
          what="E X11^2 X12^2")
    check(res, lambda x: x[:, 0] ** 4, 3 / (n * (n + 2)), 3 / 8, bias=BIAS_EQ, what="E X11^4")


# ----------------------------------------------------------------------------- the dynamics
def test_curvature_correction_keeps_the_chains_on_the_sphere():
    d, alpha = 3, 20.0
    target = bk.constrain(None, sphere(d))
    h = lambda x: ((x * x).sum(1) - 1) / 2  # noqa: E731  (the sphere's constraint function)
    offset = (d - 1) / alpha  # stationary E h without the Ito term: dh = -alpha h dt + (d-1) dt
    means = {}
    # "exact-forward": Hessian-vector products by forward-over-reverse AD (used above exact_max_dim)
    modes = (("none", {}), ("exact", {}), ("hutchinson", {}), ("exact-forward", {"exact_max_dim": 2}))
    for mode, opts in modes:
        res = run(target, burn=60, n_keep=8, thin=5, n_chains=200, curvature=mode.split("-")[0],
                  **opts, **EQ)
        means[mode] = chain_mean(res, h)
    # bias budget 5 % of the offset: O(alpha dt) corrections of the discrete landing
    assert_consistent(*means["none"], offset, bias=0.05 * offset, what="E h without curvature term")
    for mode in ("exact", "hutchinson", "exact-forward"):
        assert_consistent(*means[mode], 0.0, bias=0.05 * offset, what=f"E h with {mode} curvature")
        assert_rejects(*means[mode], offset, bias=0.05 * offset, what=f"E h with {mode} curvature")
    assert_rejects(*means["none"], 0.0, bias=0.05 * offset, what="E h without curvature term")


def test_hessian_forms_agree_between_forward_and_reverse_mode():
    target = bk.constrain(lambda x: -x[:, 0], torus(2.0, 0.5),
                          inequalities=[lambda x: torch.sin(x[:, 1]) * x[:, 2]])
    s = OLLA(seed=0, device="cpu", n_chains=6).fit(target, n_steps=0)
    x = s.state
    gen = torch.Generator().manual_seed(0)
    u, v = (torch.randn(6, 3, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    cols = torch.tensor([0, 1])
    out = {}
    for mode in ("forward", "reverse"):
        s._hvp_mode = mode
        out[mode] = s._bilinear(x, cols, u, v)
    # reference: explicit per-state Hessians
    for i in range(6):
        for j, fn in enumerate(target.domain.equalities + target.domain.inequalities):
            hess = torch.autograd.functional.hessian(lambda y: fn(y[None])[0], x[i])
            ref = torch.einsum("kd,de,ke->k", u[i], hess, v[i])
            assert torch.allclose(out["forward"].reshape(6, 3, 2)[i, :, j], ref, atol=1e-10)
    assert torch.allclose(out["forward"], out["reverse"], atol=1e-10)


def test_landing_is_exact_for_linear_constraints():
    a = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]], dtype=torch.float64)
    target = bk.constrain(lambda x: 0.5 * (x * x).sum(1), affine(a, [1.0, 0.0]))
    x0 = torch.tensor([[3.0, 0.0, 1.0, -1.0]], dtype=torch.float64)  # |h| = (2/sqrt2, 2/sqrt2)
    s = OLLA(seed=0, device="cpu", n_chains=8, land_start=False, **EQ).fit(target, n_steps=40, x0=x0)
    # linear constraints: c_{k+1} = (1 - alpha dt) c_k exactly, for every chain
    expected = math.sqrt(2.0) * (1 - 0.1) ** np.arange(40)
    np.testing.assert_allclose(s.history["violation_max"], expected, rtol=1e-10)
    np.testing.assert_allclose(s.history["violation_mean"], expected, rtol=1e-10)


def test_landing_from_off_the_sphere():
    target = bk.constrain(None, sphere(3))
    x0 = torch.tensor([[2.0, 0.0, 0.0]], dtype=torch.float64)  # h0 = 1.5
    s = OLLA(seed=0, device="cpu", n_chains=64, land_start=False, **EQ).fit(target, n_steps=120, x0=x0)
    # noise-free mean recursion of h = (|x|^2 - 1) / 2 along the normal (the Ito term cancels
    # the mean tangential-noise drift): h' = (1 - a) h + dt^2 (alpha h + 2)^2 / (2 (1 + 2 h))
    dt, alpha = EQ["step_size"], EQ["alpha"]
    h = [1.5]
    for _ in range(119):
        h.append((1 - alpha * dt) * h[-1] + dt ** 2 * (alpha * h[-1] + 2) ** 2 / (2 * (1 + 2 * h[-1])))
    viol = s.history["violation_mean"]  # mean |h| over 64 chains; noise floor O(dt)
    np.testing.assert_allclose(viol, h, atol=0.03)
    assert viol[0] == 1.5 and viol[-20:].max() < 0.05


# ----------------------------------------------------------------------------- baselines
def test_projected_langevin_von_mises_fisher():
    kappa = 2.0
    res = run(bk.constrain(lambda x: -kappa * x[:, 2], sphere(3)), ProjectedLangevin, burn=300,
              step_size=5e-3)
    check(res, lambda x: x[:, 2], A(3, kappa), A(2, kappa), bias=BIAS_EQ, what="projected vMF")
    assert res.diagnostics["violation_max"] < 1e-8  # Newton projection to proj_tol
    assert res.diagnostics["rejection_rate"] < 0.01


def test_baselines_on_an_interval():
    # inequality g = x^2 - 1 <= 0: uniform on [-1, 1] has E x^2 = 1/3
    target = bk.constrain(None, dim=1, inequalities=[lambda x: x[:, 0] ** 2 - 1])
    res = run(target, ProjectedLangevin, burn=200, step_size=2e-3, n_keep=20, thin=10)
    # rejection of infeasible moves: O(sqrt(dt)) boundary bias, budget 0.01; wrong: arcsine law
    check(res, lambda x: x[:, 0] ** 2, 1 / 3, 1 / 2, bias=0.01, what="projected interval E x^2")
    # squared slack x^2 - 1 + s^2 = 0 is the unit circle: the uncorrected baseline samples its
    # uniform measure, i.e. the arcsine law on x (E x^2 = 1/2), not the target
    res = run(target, SlackLangevin, burn=200, step_size=2e-3, n_keep=20, thin=10)
    check(res, lambda x: x[:, 0] ** 2, 1 / 2, 1 / 3, bias=0.01, what="slack interval E x^2")


def test_slack_correction_reweights_to_the_target():
    # exact draws of the uncorrected slack law (uniform angle on the circle x^2 + s^2 = 1),
    # reweighted by exp(-correction), must give the uniform law on [-1, 1]
    target = bk.constrain(None, dim=1, inequalities=[lambda x: x[:, 0] ** 2 - 1])
    s = SlackLangevin(seed=0, device="cpu", n_chains=4, slack_correction=True).fit(target, n_steps=0)
    theta = torch.linspace(0, 2 * math.pi, 20_001, dtype=torch.float64)[:-1] + 1e-4
    z = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1).requires_grad_(True)
    with torch.enable_grad():
        w = torch.exp(-s._energy(z)).detach()
    x2 = float((w * z[:, 0].detach() ** 2).sum() / w.sum())
    assert x2 == pytest.approx(1 / 3, abs=1e-4)


# ----------------------------------------------------------------------------- contract
@pytest.mark.parametrize("cls", [OLLA, ProjectedLangevin, SlackLangevin])
def test_same_seed_same_samples(cls):
    target = bk.constrain(lambda x: -x[:, 0], sphere(3) & half_space([0.0, 0.0, -1.0], 0.2))

    def draw(seed):
        return run(target, cls, seed=seed, n_chains=16, burn=20, n_keep=2, thin=5, step_size=5e-3).samples

    a, b, c = draw(3), draw(3), draw(4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_registry_and_explain():
    target = bk.constrain(None, sphere(3))
    choice = bk.select(target)
    assert choice.name == "olla" and set(choice.alternatives) == {"projected_langevin", "slack_langevin"}
    assert not bk.registry()["olla"].provides_log_z
    with pytest.raises(IncompatibleMethodError):
        bk.select(bk.energies.Energy.from_function(lambda x: x.sum(1), bk.domains.Reals(2)), "olla")


def test_bad_input_fails_before_the_run():
    sph = bk.constrain(None, sphere(3))
    with pytest.raises(IncompatibleMethodError, match="bk.constrain"):
        OLLA(device="cpu").fit(bk.energies.Energy.from_function(lambda x: x.sum(1), bk.domains.Reals(3)))
    with pytest.raises(InfeasibleConstraintError, match="appears empty"):  # sphere with plane x3 = 2
        OLLA(device="cpu", n_chains=8).fit(bk.constrain(None, sphere(3), equalities=[lambda x: x[:, 2] - 2]))
    with pytest.raises(InfeasibleConstraintError, match="appears empty"):  # ball with x1 <= -2
        OLLA(device="cpu", n_chains=8).fit(bk.constrain(None, ball(3) & half_space([1.0, 0, 0], -2.0)))
    with pytest.raises(InfeasibleConstraintError, match="cannot reach"):  # the gradient vanishes at 0
        OLLA(device="cpu", n_chains=8).fit(sph, x0=torch.zeros(1, 3))
    with pytest.raises(InfeasibleConstraintError, match="burn-in"):
        OLLA(device="cpu", n_chains=8, land_start=False).fit(sph, n_steps=3, x0=torch.full((1, 3), 5.0))
    with pytest.raises(DomainError, match=r"x0 has shape \(3,\)"):
        OLLA(device="cpu", n_chains=8).fit(sph, x0=torch.ones(3))
    with pytest.raises(ConfigError, match="alpha \\* step_size"):
        OLLA(step_size=0.01, alpha=100.0)
    with pytest.raises(ConfigError, match="curvature"):
        OLLA(curvature="full")
    with pytest.raises(ConfigError, match="unknown option"):
        OLLA(n_particles=3)
    with pytest.raises(ConfigError, match="before fit"):
        OLLA().sample(10)


# ----------------------------------------------------------------------------- violation bound, landing
@pytest.mark.parametrize("d", [3, 10])
def test_predicted_violation_matches_the_stationary_violation(d):
    """Stationary mean |h| of OLLA on S^{d-1} (h = (|x|^2 - 1)/2, Pi H Pi = Pi, ||.||_F^2 = d - 1)
    against the closed form E|N(mu, sd^2)|, sd = sqrt((d - 1) dt / (alpha (1 - alpha dt / 2))),
    mu = dt (d - 1)^2 / (2 alpha) (the Ito drift's own second-order term), and the
    sampler's own prediction from the Hessians. Negative control: the prediction with the
    curvature of a sphere two dimensions up."""
    dt, alpha = 2e-3, 100.0
    res = run(bk.constrain(None, sphere(d)), burn=100, n_chains=400, n_keep=10, step_size=dt, alpha=alpha)

    def folded(dim):  # E|N(mu, sd^2)| with the sphere's mu and sd
        sd = math.sqrt((dim - 1) * dt / (alpha * (1 - alpha * dt / 2)))
        mu = dt * (dim - 1) ** 2 / (2 * alpha)
        return sd * math.sqrt(2 / math.pi) * math.exp(-0.5 * (mu / sd) ** 2) + mu * math.erf(mu / (sd * math.sqrt(2)))

    closed, wrong = folded(d), folded(d + 2)
    assert res.diagnostics["eq_violation_mean_predicted"] == pytest.approx(closed, rel=1e-3)
    check(res, lambda x: ((x * x).sum(1) - 1).abs() / 2, closed, wrong, bias=0.03 * closed,
          what=f"stationary E|h| on S^{d - 1}")


def test_landing_the_output_puts_samples_on_the_sphere_without_changing_the_law():
    """land_samples=True: the returned samples satisfy |h| <= 1e-6 tol, each moved by about its
    violation, and their law is still von Mises-Fisher (E mu.x = A_d(kappa), closed form);
    the chains themselves were not landed (the unlanded run gives the same states before it)."""
    d, kappa = 5, 2.0
    target = bk.constrain(lambda x: -kappa * x[:, 0], sphere(d))
    plain = run(target, burn=400, n_chains=1000, seed=1, **EQ)
    landed = run(target, burn=400, n_chains=1000, seed=1, land_samples=True, **EQ)
    dg = landed.diagnostics
    assert dg["landed"] and dg["violation_max"] <= 1e-6 * target.domain.tol
    assert plain.diagnostics["violation_mean"] > 1e4 * dg["violation_max"]
    # same chains: the landed samples are the plain ones moved radially by about |h|
    assert torch.allclose(landed.samples, plain.samples / plain.samples.norm(dim=1, keepdim=True), atol=1e-7)
    assert dg["land_distance_mean"] == pytest.approx(plain.diagnostics["violation_mean"], rel=0.05)
    check(landed, lambda x: x[:, 0], A(d, kappa), A(d - 2, kappa), bias=BIAS_EQ, what="landed vMF S^4")
    with pytest.raises(ConfigError):
        OLLA(land_samples="yes")
