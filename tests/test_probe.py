"""The scale probe (boltzkit.probe) against exact widths, minima and mode boxes."""

import math

import numpy as np
import pytest
import torch

from boltzkit.domains import Reals
from boltzkit.energies import Gaussian, GaussianMixture
from boltzkit.energies.base import Energy
from boltzkit.errors import TargetError
from boltzkit.probe import hessian_fd, minimize, probe_scale

WIDTHS = np.logspace(-3, 2, 12)  # local widths 1e-3 .. 1e2
MEAN = np.linspace(-45.0, 45.0, 12)  # inside a box of +-50


class Counting(Energy):
    """Wraps an energy and counts the states it evaluates (energy and gradient calls)."""

    def __init__(self, base):
        super().__init__(base.domain, "counting")
        self.base, self.calls = base, 0

    def energy(self, x):
        self.calls += x.shape[0]
        return self.base.energy(x)

    def grad_energy(self, x):
        return self.base.grad_energy(x)


def test_probe_recovers_anisotropic_widths_and_centre_exactly():
    g = Gaussian(MEAN, std=WIDTHS)
    p = probe_scale(g, seed=0)
    assert p.n_minima == 1
    np.testing.assert_allclose(p.minima[0].numpy(), MEAN, rtol=0, atol=1e-9 * 100)
    np.testing.assert_allclose(p.minima_widths[0].numpy(), WIDTHS, rtol=1e-6)
    # one minimum: the covering Gaussian is the target itself
    np.testing.assert_allclose(p.widths().numpy(), WIDTHS, rtol=1e-6)
    np.testing.assert_allclose(p.centre.numpy(), MEAN, atol=1e-7)
    assert p.laplace_log_z == pytest.approx(g.exact_log_z(), abs=1e-6)
    assert p.narrowest_width == pytest.approx(1.0, rel=1e-6)
    # negative control: the widths of a Gaussian 10 % wider are not recovered from this one
    assert not np.allclose(p.minima_widths[0].numpy(), 1.1 * WIDTHS, rtol=1e-2)


def test_probe_recovers_a_correlated_covariance():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(6, 6))
    cov = a @ a.T + 0.01 * np.eye(6)
    g = Gaussian(np.full(6, -20.0), cov=cov)
    p = probe_scale(g, seed=1)
    np.testing.assert_allclose(p.covariance().numpy(), cov, rtol=1e-5, atol=1e-8)
    assert p.laplace_log_z == pytest.approx(g.exact_log_z(), abs=1e-6)
    # negative control: the diagonal alone is not the covariance
    assert not np.allclose(p.covariance().numpy(), np.diag(np.diag(cov)), rtol=1e-2, atol=1e-2)


def test_probe_finds_a_mixtures_modes_and_box_without_hint():
    # three modes spread over the +-50 box, each with local widths 1e-3, 1 and 1e2 along the
    # three axes (modes of unequal shape have unequal basins of attraction: a narrow mode far
    # from a wide one may be missed, see the module's failure modes)
    means = np.array([[-45.0, 30.0, 0.0], [40.0, -45.0, 10.0], [5.0, 48.0, -40.0]])
    stds = np.array([1e-3, 1.0, 1e2])
    gm = GaussianMixture(means, np.tile(stds, (3, 1)), np.array([0.2, 0.3, 0.5]))
    p = probe_scale(gm, seed=0)
    found = gm.mode_assignment(p.minima.float())
    assert sorted(found.tolist()) == [0, 1, 2]
    np.testing.assert_allclose(p.minima_widths.numpy(), np.tile(stds, (3, 1)), rtol=0.02)
    np.testing.assert_allclose(p.minima[torch.argsort(found)].numpy(), means, atol=1e-3)
    # the covering Gaussian spans the three modes: each within 2 of its standard deviations
    z = p.to_z(torch.tensor(means))
    assert float(z.norm(dim=-1).max()) < 2.0
    assert p.laplace_log_z == pytest.approx(gm.exact_log_z(), abs=2e-2)
    # negative control: a wrong mode mass (0.3 -> 0.6) is excluded by the Laplace sum
    assert abs(p.laplace_log_z - math.log(1.3)) > 0.1


def test_probe_searches_beyond_its_box_when_a_minimum_lies_outside():
    # modes 2,000 apart, far outside the default +-50 box: from every default start the wide
    # mode's tails dominate, so only a search grown to the scale of the minimum it found
    # reaches the narrow, heavier one (log Z = log 4)
    gm = GaussianMixture([[-1000.0, 0.0], [1000.0, 5.0]], [10.0, 3.0], [1.0, 3.0])
    p = probe_scale(gm, seed=0)
    assert sorted(gm.mode_assignment(p.minima.float()).tolist()) == [0, 1]
    assert p.laplace_log_z == pytest.approx(math.log(4.0), abs=1e-6)
    assert float(p.to_z(gm.means.double()).norm(dim=-1).max()) < 2.0
    # negative control: the first round alone (the default box) sees only the wide mode
    one = probe_scale(gm, seed=0, max_rounds=1)
    assert one.n_minima == 1 and abs(one.laplace_log_z - math.log(4.0)) > 1.0


def banana(x, b=0.1):
    """Haario et al.'s twisted Gaussian: x0 ~ N(0, 10^2), x1 + b x0^2 - 100 b ~ N(0, 1); log Z = 0."""
    y = x[:, 1] + b * x[:, 0] ** 2 - 100 * b
    return 0.5 * (x[:, 0] ** 2 / 100 + y ** 2) + math.log(2 * math.pi * 10)


def test_probe_widens_its_frame_over_a_curved_ridge():
    # the minimum (0, 10) has local widths (10, 1), but the ridge bends down to x1 = -30 at
    # x0 = 20: the Laplace frame puts that 2-sigma point 40 widths out
    t = Energy.from_function(banana, Reals(2))
    p = probe_scale(t, seed=0)
    assert p.n_minima == 1 and p.extra["band_widened"] and p.extra["band_outside_fraction"] > 0.1
    np.testing.assert_allclose(p.minima_widths[0].numpy(), [10.0, 1.0], rtol=1e-3)
    arms = torch.tensor([[20.0, -30.0], [-20.0, -30.0]], dtype=torch.float64)
    assert float(p.to_z(arms).norm(dim=-1).max()) < 3.0
    # negative control: a Gaussian's typical band lies inside its 99.9 % ellipsoid, nothing moves
    g = probe_scale(Gaussian(MEAN[:4], std=WIDTHS[:4]), seed=0)
    assert g.extra["band_outside_fraction"] == 0.0 and not g.extra["band_widened"]
    np.testing.assert_allclose(g.widths().numpy(), WIDTHS[:4], rtol=1e-6)


def _student(nu, d):
    return Energy.from_function(lambda x: 0.5 * (nu + d) * torch.log1p((x * x).sum(-1) / nu), Reals(d))


def test_power_law_tails_are_flagged_and_the_result_is_not_trusted():
    import warnings

    import boltzkit as bk
    from boltzkit.errors import UnreliableEstimateWarning

    for nu, d in ((1, 1), (3, 1), (5, 10)):  # Cauchy, t3, a 10-D t5
        assert probe_scale(_student(nu, d), seed=0).heavy_tail, (nu, d)
    # negative controls: exponential tails, a t30 (Gaussian-like), a 200-D Gaussian
    assert not probe_scale(Energy.from_function(lambda x: x.abs().sum(-1), Reals(1)), seed=0).heavy_tail
    assert not probe_scale(_student(30, 1), seed=0).heavy_tail
    assert not probe_scale(Gaussian(np.zeros(200), std=1.0), seed=0).heavy_tail
    # Cauchy: log Z = log pi; AIS from the Gaussian frame comes out low and now says so first
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = bk.sample(_student(1, 1), method="ais", n_samples=2000, seed=0, progress=False)
    assert any("heavy tails" in str(w.message) and issubclass(w.category, UnreliableEstimateWarning)
               for w in caught)
    ok, verdict, nxt = res.trust()
    assert not ok and "heavy tails" in verdict and "log r" in nxt
    assert res.diagnostics["scale_probe"]["heavy_tail"]


@pytest.mark.parametrize("energy", [lambda x: -torch.cos(x).sum(-1),      # periodic
                                    lambda x: 0.5 * (x[:, 1:] ** 2).sum(-1)])  # one flat direction
def test_a_target_with_infinite_mass_is_refused_before_sampling(energy):
    import boltzkit as bk

    t = Energy.from_function(energy, Reals(3))
    p = probe_scale(t, seed=0)
    assert p.receding and p.summary()["receding"]
    assert p.extra["extents"][-1] > 1.69 * p.extra["extents"][-3]  # 1.3x wider twice
    with pytest.raises(TargetError, match="kept receding.*infinite.*TorusWindowedEnergy"):
        bk.sample(t, method="ais", n_samples=64, seed=0, progress=False)
    # negative controls: many minima in a bounded box (many-well-8: 16), and modes far out
    # (the two-mode mixture above) close their search
    from boltzkit.energies import ManyWell

    assert not probe_scale(ManyWell(8), seed=0).receding
    assert not probe_scale(GaussianMixture([[-1000.0, 0.0], [1000.0, 5.0]], [10.0, 3.0]), seed=0).receding


def test_probe_gmm40_box_and_mode_count():
    g = GaussianMixture.gmm40()
    p = probe_scale(g, seed=0)
    assert not p.receding
    modes = torch.unique(g.mode_assignment(p.minima.float()))
    assert modes.numel() >= 30  # FAB's instance has 36 distinct minima (4 pairs overlap)
    # the box of the minima is the box of the means, up to the modes missed
    np.testing.assert_allclose(p.minima.min(0).values.numpy(), g.means.min(0).values.numpy(), atol=3.0)
    np.testing.assert_allclose(p.minima.max(0).values.numpy(), g.means.max(0).values.numpy(), atol=3.0)
    # covering covariance vs the mixture's exact covariance Cov(means) + s^2 I
    m = g.means - g.means.mean(0)
    exact = (m.T @ m / 40 + torch.diag(g.stds[0] ** 2)).diagonal().sqrt()
    np.testing.assert_allclose(p.widths().numpy(), exact.numpy(), rtol=0.15)
    # every mean lies inside the covering Gaussian's 3-sigma ellipse
    assert float(p.to_z(g.means).norm(dim=-1).max()) < 3.0
    # negative control: a unit-scale prior (the former default) does not cover them
    assert float(g.means.norm(dim=-1).max()) > 3.0


def test_probe_counts_its_evaluations_and_is_reproducible():
    c = Counting(Gaussian(MEAN[:4], std=WIDTHS[:4]))
    p = probe_scale(c, seed=5)
    assert p.n_evaluations == c.calls and p.n_evaluations > 0
    q = probe_scale(Gaussian(MEAN[:4], std=WIDTHS[:4]), seed=5)
    assert torch.equal(p.minima, q.minima) and torch.equal(p.scale, q.scale)
    assert p.summary()["n_evaluations"] == p.n_evaluations


def test_probe_uses_a_prior_hint_frame():
    from boltzkit.energies.base import PriorHint

    class Hinted(Gaussian):
        def prior_hint(self):
            return PriorHint(torch.tensor(MEAN[:3]), torch.tensor(WIDTHS[:3] * 2.0))

    p = probe_scale(Hinted(MEAN[:3], std=WIDTHS[:3]), seed=0)
    assert p.hint_used
    np.testing.assert_allclose(p.minima[0].numpy(), MEAN[:3], atol=1e-9)
    np.testing.assert_allclose(p.widths().numpy(), WIDTHS[:3], rtol=1e-6)


def test_minimize_and_hessian_on_an_ill_conditioned_quadratic():
    g = Gaussian(np.zeros(5), std=np.logspace(-2, 1, 5))
    fn = lambda x: (g.energy(x), g.grad_energy(x))  # noqa: E731
    h = hessian_fd(fn, torch.zeros(1, 5, dtype=torch.float64), 1e-3)[0]
    np.testing.assert_allclose(h.diagonal().numpy(), np.logspace(-2, 1, 5) ** -2.0, rtol=1e-8)
    x0 = 10 * torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x, u, _, conv, _ = minimize(fn, x0, newton=True)
    assert bool(conv.all()) and float(x.abs().max()) < 1e-8


def test_probe_bad_inputs_are_refused():
    from boltzkit.energies import Ising

    with pytest.raises(TargetError, match="Reals"):
        probe_scale(Ising(L=4, beta=0.3))
    unbounded = Energy.from_function(lambda x: -(x * x).sum(-1), Reals(2), name="unbounded")
    with pytest.raises(TargetError, match="not normalizable"):
        probe_scale(unbounded, max_iter=50)


@pytest.mark.filterwarnings("ignore")
def test_probe_openmm_harmonic_oscillator_array():
    testsystems = pytest.importorskip("openmmtools.testsystems")
    unit = pytest.importorskip("openmm.unit")
    from boltzkit.energies import OpenMMEnergy

    ho = testsystems.HarmonicOscillatorArray()
    e = OpenMMEnergy(ho.system, temperature=300.0)  # no positions: no prior hint
    assert e.prior_hint() is None
    p = probe_scale(e, seed=0)
    kt = (unit.MOLAR_GAS_CONSTANT_R * 300.0 * unit.kelvin)
    k = ho.K
    sigma = math.sqrt((kt / k).value_in_unit(unit.nanometer ** 2))  # sqrt(kT / K), nm
    np.testing.assert_allclose(p.minima_widths[0].numpy(), sigma, rtol=1e-4)
    centres = ho.positions.value_in_unit(unit.nanometer).reshape(-1)
    np.testing.assert_allclose(p.minima[0].numpy(), centres, atol=1e-6)
    exact = 1.5 * ho.N * math.log(2 * math.pi * sigma ** 2)
    assert p.laplace_log_z == pytest.approx(exact, abs=1e-3)


def test_probe_above_the_newton_dimension_lbfgs_then_newton_polish():
    # d = 40 > newton_max_dim: L-BFGS (slow at condition number 1e6) then Newton iterations
    w = np.logspace(-2, 1, 40)
    g = Gaussian(np.linspace(-30.0, 30.0, 40), std=w)
    p = probe_scale(g, seed=0, max_rounds=2)
    assert p.n_minima == 1
    np.testing.assert_allclose(p.widths().numpy(), w, rtol=1e-6)
    assert p.laplace_log_z == pytest.approx(g.exact_log_z(), abs=1e-6)
