"""Continuous targets: exact log Z against independent quadrature, exact samplers against
exact moments, analytic gradients against autograd, and input validation.

Truths: 2-D grid quadrature of exp(-U) (Gaussian, mixture, GMM-40), the research brief's
quadrature values for Many-Well (164.6956753 for d = 32, 41.1739188 for d = 8), and scipy
quadrature of the 1-D double-well moments computed here.
"""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from _stats import assert_consistent, assert_rejects, chi2_gof_pvalue
from boltzkit.energies import Energy, Gaussian, GaussianMixture, ManyWell
from boltzkit.energies.continuous import GMM40_MEANS, GMM40_STD
from boltzkit.errors import TargetError


def grid_log_z(energy, lo, hi, h):
    """log of the 2-D integral of exp(-U) by the rectangle rule, in float64.

    For smooth, rapidly decaying integrands the rule is spectrally accurate: for a Gaussian of
    width s the relative error is ~exp(-2 pi^2 s^2 / h^2), below 1e-60 for every grid used here.
    """
    t = torch.arange(lo, hi + h / 2, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(t, t, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    u = energy.double().energy(pts)
    return float(torch.logsumexp(-u, 0)) + 2 * math.log(h)


def three_modes():
    return GaussianMixture([[-5.0, 0.0], [5.0, 0.0], [0.0, 6.0]],
                           [[0.7, 0.9], [1.0, 1.6], [0.5, 0.5]], [1.0, 2.5, 0.8])


# ------------------------------------------------------------------------------ log Z
def test_gaussian_log_z_matches_quadrature():
    g = Gaussian([1.0, -2.0], cov=[[2.0, 0.8], [0.8, 1.0]])
    assert abs(grid_log_z(g, -14, 14, 0.1) - g.exact_log_z()) < 1e-8
    gd = Gaussian([0.5, 0.0], std=[0.3, 2.0])
    assert abs(grid_log_z(gd, -16, 16, 0.05) - gd.exact_log_z()) < 1e-8
    # the closed form itself: (d/2) log 2 pi + 1/2 log det Sigma
    assert gd.exact_log_z() == pytest.approx(math.log(2 * math.pi) + math.log(0.3 * 2.0), abs=1e-12)


def test_mixture_log_z_matches_quadrature_with_unnormalized_weights():
    gmm = three_modes()
    assert gmm.exact_log_z() == pytest.approx(math.log(4.3), abs=1e-12)
    assert abs(grid_log_z(gmm, -16, 16, 0.1) - math.log(4.3)) < 1e-8


def test_gmm40_table_is_fabs_instance_and_log_z():
    # the literal table is FAB's instance: fab-torch seeds the global torch RNG with 0 and then
    # draws locs = (torch.rand((n_mixes, dim)) - 0.5) * 2 * loc_scaling (float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fab = (torch.rand((40, 2)) - 0.5) * 2 * 40.0
    assert torch.equal(torch.tensor(GMM40_MEANS, dtype=torch.float32), fab)
    assert torch.equal(torch.tensor(GMM40_MEANS, dtype=torch.float64), fab.double())  # exact literals
    # negative control: another seed (or the former numpy table) is a different instance
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        other = (torch.rand((40, 2)) - 0.5) * 2 * 40.0
    assert not torch.allclose(torch.tensor(GMM40_MEANS, dtype=torch.float32), other)
    g = GaussianMixture.gmm40()
    assert g.n_components == 40 and g.dim == 2
    assert GMM40_STD == pytest.approx(math.log(1 + math.e)) and GMM40_STD == pytest.approx(1.3132617, abs=1e-7)
    assert torch.allclose(g.stds, torch.full((40, 2), GMM40_STD, dtype=torch.float64))
    assert float(g.weights.sum()) == pytest.approx(1.0, abs=1e-6)
    assert g.exact_log_z() == pytest.approx(0.0, abs=1e-12)
    assert abs(grid_log_z(g, -50, 50, 0.4)) < 1e-6


def test_manywell_log_z_matches_reference_values():
    assert ManyWell(32).exact_log_z() == pytest.approx(164.6956753, abs=1e-6)
    assert ManyWell(8).exact_log_z() == pytest.approx(41.1739188, abs=1e-6)
    # one pair by 2-D grid quadrature of the energy itself
    assert abs(grid_log_z(ManyWell(2), -6, 6, 0.02) - ManyWell(2).exact_log_z()) < 1e-8


# ------------------------------------------------------------------------------ exact samplers
def test_gaussian_exact_samples_match_mean_and_covariance():
    cov = np.array([[2.0, 0.8], [0.8, 1.0]])
    g = Gaussian([1.0, -2.0], cov=cov)
    n = 100_000
    x = g.sample_exact(n, generator=torch.Generator().manual_seed(1)).double().numpy()
    for j in range(2):
        assert_consistent(x[:, j].mean(), math.sqrt(cov[j, j] / n), [1.0, -2.0][j], what=f"mean[{j}]")
    emp = np.cov(x.T)
    for i, j in [(0, 0), (1, 1), (0, 1)]:
        se = math.sqrt((cov[i, i] * cov[j, j] + cov[i, j] ** 2) / n)
        assert_consistent(emp[i, j], se, cov[i, j], what=f"cov[{i},{j}]")
    # negative control: a 5% error in a variance is detected
    assert_rejects(emp[0, 0], math.sqrt(2 * cov[0, 0] ** 2 / n), 1.05 * cov[0, 0], what="cov[0,0]")


def test_mixture_exact_samples_component_frequencies_and_mean():
    gmm = three_modes()
    n = 40_000
    x = gmm.sample_exact(n, generator=torch.Generator().manual_seed(2))
    counts = torch.bincount(gmm.mode_assignment(x), minlength=3).numpy()
    w = np.array([1.0, 2.5, 0.8]) / 4.3
    assert chi2_gof_pvalue(counts, w) > 1e-4
    assert chi2_gof_pvalue(counts, w[[1, 0, 2]]) < 1e-6  # negative control: swapped weights
    means = np.array([[-5.0, 0.0], [5.0, 0.0], [0.0, 6.0]])
    stds = np.array([[0.7, 0.9], [1.0, 1.6], [0.5, 0.5]])
    mu = w @ means
    var = w @ (stds ** 2 + means ** 2) - mu ** 2
    xd = x.double().numpy()
    for j in range(2):
        assert_consistent(xd[:, j].mean(), math.sqrt(var[j] / n), mu[j], what=f"mean[{j}]")
    assert_rejects(xd[:, 0].mean(), math.sqrt(var[0] / n), mu[0] + 0.2, what="mean[0]")


def _double_well_moment(f):
    u = lambda t: t ** 4 - 6 * t ** 2 - 0.5 * t  # noqa: E731
    shift = 10.0  # exp(-u) peaks near e^9.9; keeps quad in range
    num = integrate.quad(lambda t: f(t) * math.exp(-u(t) - shift), -8, 8, points=[-1.7, 0, 1.7],
                         limit=200)[0]
    den = integrate.quad(lambda t: math.exp(-u(t) - shift), -8, 8, points=[-1.7, 0, 1.7],
                         limit=200)[0]
    return num / den


def test_manywell_exact_samples_match_quadrature_moments():
    mw = ManyWell(8)
    n = 50_000
    x = mw.sample_exact(n, generator=torch.Generator().manual_seed(3)).double().numpy()
    quartic, gauss = x[:, 0::2].reshape(-1), x[:, 1::2].reshape(-1)
    m = quartic.size
    p_right = _double_well_moment(lambda t: float(t > 0))
    m2 = _double_well_moment(lambda t: t * t)
    m4 = _double_well_moment(lambda t: t ** 4)
    assert p_right == pytest.approx(0.8443, abs=1e-4) and m2 == pytest.approx(2.95981, abs=1e-5)
    frac = (quartic > 0).mean()
    assert_consistent(frac, math.sqrt(p_right * (1 - p_right) / m), p_right, what="P(right well)")
    assert_consistent((quartic ** 2).mean(), math.sqrt((m4 - m2 ** 2) / m), m2, what="E[x^2]")
    assert_consistent(gauss.mean(), math.sqrt(1 / m), 0.0, what="gaussian mean")
    assert_consistent((gauss ** 2).mean(), math.sqrt(2 / m), 1.0, what="gaussian E[x^2]")
    assert_rejects(frac, math.sqrt(p_right * (1 - p_right) / m), p_right - 0.01, what="P(right well)")
    # every pair independent: the 4-bit well code follows the product law
    codes = mw.mode_assignment(torch.as_tensor(x, dtype=torch.float32)).numpy()
    k = np.array([bin(c).count("1") for c in range(16)])
    probs = p_right ** k * (1 - p_right) ** (4 - k)
    assert chi2_gof_pvalue(np.bincount(codes, minlength=16), probs) > 1e-4


def test_exact_samplers_are_reproducible():
    for e in (Gaussian([0.0, 1.0], std=2.0), three_modes(), ManyWell(4)):
        a = e.sample_exact(50, generator=torch.Generator().manual_seed(7))
        b = e.sample_exact(50, generator=torch.Generator().manual_seed(7))
        c = e.sample_exact(50, generator=torch.Generator().manual_seed(8))
        assert torch.equal(a, b) and not torch.equal(a, c)


# ------------------------------------------------------------------------------ energies
@pytest.mark.parametrize("make", [lambda: Gaussian([1.0, -1.0, 0.0], cov=np.diag([1.0, 2.0, 0.5]) + 0.3),
                                  three_modes, GaussianMixture.gmm40, lambda: ManyWell(6)])
def test_analytic_gradients_match_autograd(make):
    e = make().double()
    x = 3.0 * torch.randn(64, e.domain.dim, generator=torch.Generator().manual_seed(0),
                          dtype=torch.float64)
    g_auto = Energy.grad_energy(e, x)
    assert torch.allclose(e.grad_energy(x), g_auto, rtol=1e-9, atol=1e-9)


def test_energy_formulas_at_known_points():
    mw = ManyWell(4)
    x = torch.tensor([[1.0, 2.0, -2.0, 0.0]])
    assert float(mw.energy(x)) == pytest.approx((1 - 6 - 0.5) + 2.0 + (16 - 24 + 1.0))
    g = Gaussian([1.0, 0.0], std=[2.0, 1.0])
    assert float(g.energy(torch.tensor([[3.0, 1.0]]))) == pytest.approx(0.5 * (1.0 + 1.0))
    one = GaussianMixture([[0.0, 0.0]], 1.0, [3.0])  # U = -log(3 N(x; 0, I))
    assert float(one.energy(torch.zeros(1, 2))) == pytest.approx(-math.log(3 / (2 * math.pi)), abs=1e-6)
    gmm40 = GaussianMixture.gmm40()
    means = torch.tensor(GMM40_MEANS, dtype=torch.float32)
    assert torch.equal(gmm40.mode_assignment(means + 0.5), torch.arange(40))
    assert mw.mode_assignment(torch.tensor([[1.5, 0, -1.5, 0], [-1.5, 0, 1.5, 0]])).tolist() == [1, 2]
    # the double well's barrier top is the local maximum of x^4 - 6x^2 - x/2
    assert 4 * mw.barrier ** 3 - 12 * mw.barrier - 0.5 == pytest.approx(0.0, abs=1e-10)


def test_parameters_are_buffers_and_follow_dtype():
    g = three_modes()
    assert {"means", "stds", "weights"} <= set(dict(g.named_buffers()))
    assert set(dict(Gaussian([0.0], std=1.0).named_buffers())) >= {"mean", "scale_tril"}
    x = torch.randn(5, 2, dtype=torch.float64)
    gd = g.to(torch.float64)
    assert gd.means.dtype == torch.float64 and gd.energy(x).dtype == torch.float64
    assert gd.exact_log_z() == pytest.approx(math.log(4.3))
    mw = ManyWell(4)
    assert "_icdf_cdf" not in mw.state_dict()  # derived tables are not persisted


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_energies_move_to_cuda():
    for e in (Gaussian([0.0, 1.0], std=2.0), GaussianMixture.gmm40(), ManyWell(8)):
        e = e.to("cuda")
        x = e.sample_exact(10, generator=torch.Generator("cuda").manual_seed(0))
        assert x.is_cuda and e.energy(x).is_cuda


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("build, match", [
    (lambda: Gaussian([0.0, 0.0], cov=[[1.0, 2.0], [2.0, 1.0]]), "positive definite"),
    (lambda: Gaussian([0.0, 0.0], cov=[[1.0, 0.0]]), "shape"),
    (lambda: Gaussian([0.0, 0.0], cov=[[1.0, 0.5], [0.0, 1.0]]), "symmetric"),
    (lambda: Gaussian([0.0, 0.0], cov=np.eye(2), std=1.0), "not both"),
    (lambda: Gaussian([0.0, 0.0], std=[-1.0, 1.0]), "positive"),
    (lambda: Gaussian([0.0, 0.0], std=[1.0, 1.0, 1.0]), "shape"),
    (lambda: Gaussian([[0.0, 0.0]]), "1-D"),
    (lambda: Gaussian([0.0, float("nan")]), "NaN"),
    (lambda: GaussianMixture([0.0, 1.0]), "shape \\(K, d\\)"),
    (lambda: GaussianMixture([[0.0], [1.0]], [1.0, 1.0, 1.0]), "stds"),
    (lambda: GaussianMixture([[0.0], [1.0]], 1.0, [1.0, -0.5]), "weights must be positive"),
    (lambda: GaussianMixture([[0.0], [1.0]], 1.0, [1.0]), "weights must have shape"),
    (lambda: GaussianMixture([[0.0], [1.0]], [1.0, 0.0]), "stds must be positive"),
    (lambda: GaussianMixture([[0.0], [1.0]], "wide"), "array of numbers"),
    (lambda: ManyWell(5), "even"),
    (lambda: ManyWell(0), "even"),
])
def test_bad_parameters_raise_target_error(build, match):
    with pytest.raises(TargetError, match=match):
        build()


def test_wrong_state_shape_raises():
    for e in (Gaussian([0.0, 0.0]), three_modes(), ManyWell(4)):
        with pytest.raises(TargetError, match="batch of shape"):
            e.energy(torch.zeros(e.domain.dim))
        with pytest.raises(TargetError, match="batch of shape"):
            e.energy(torch.zeros(3, e.domain.dim + 1))
