"""Continuous samplers with default options on targets far from unit scale (scale probe)."""

import math
import warnings

import numpy as np
import pytest
import torch

import boltzkit as bk
from boltzkit.energies import Gaussian, GaussianMixture
from boltzkit.energies.base import PriorHint
from boltzkit.samplers.ais import ais

from _stats import assert_consistent, assert_rejects



def jensen_bias(se):
    """log of an unbiased Z estimate is low by about se^2 / 2; allow twice that."""
    return se * se


ANISO_STD = np.logspace(-2, 1, 15)  # widths 1e-2 .. 10
ANISO_MEAN = np.linspace(-30.0, 30.0, 15)


def aniso():
    return Gaussian(ANISO_MEAN, std=ANISO_STD)


def test_ais_defaults_anisotropic_gaussian_exact():
    g = aniso()
    res = bk.sample(g, method="ais", n_samples=512, n_steps=20, seed=0, device="cpu")
    probe = res.diagnostics["scale_probe"]
    assert probe["n_evaluations"] > 0 and probe["n_minima"] == 1
    # the probe's frame is the target itself, so every weight is log Z (up to rounding)
    assert_consistent(res.log_z, res.log_z_stderr, g.exact_log_z(), bias=1e-5)
    # negative control: the former default (init_std = 1 in x, an explicit option, which
    # wins over the probe) is far off with the same budget
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = ais(g, n_samples=512, n_steps=20, init_std=1.0, seed=0, device="cpu")
    assert "scale_probe" not in old.diagnostics
    assert_rejects(old.log_z, old.log_z_stderr, g.exact_log_z(), bias=jensen_bias(old.log_z_stderr))


@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_ais_defaults_fab_gmm40_all_modes(scale):
    # scale 1000: modes at up to +-40,000 with widths 1,000, far outside the probe's first
    # box; its search grows to them (before, 9 of 40 modes and log Z -1.7, flagged reliable)
    g0 = GaussianMixture.gmm40()
    g = GaussianMixture(g0.means * scale, g0.stds * scale)
    res = ais(g, n_samples=2000, seed=0, device="cpu")
    assert res.diagnostics["reliable"]
    assert abs(res.log_z) < 0.05
    assert_consistent(res.log_z, res.log_z_stderr, 0.0, bias=jensen_bias(res.log_z_stderr))
    assert_rejects(res.log_z, res.log_z_stderr, math.log(36 / 40))  # four modes lost
    covered = torch.unique(g.mode_assignment(res.resample(4000, seed=0)))
    assert covered.numel() == 40


def test_ais_defaults_haario_banana():
    # a curved ridge: the minimum's Laplace frame misses the arms (before: log Z -0.70 +- 0.03,
    # marked reliable); the probe's typical-band points widen it
    from test_probe import banana

    from boltzkit.domains import Reals
    from boltzkit.energies.base import Energy

    res = ais(Energy.from_function(banana, Reals(2)), n_samples=2000, seed=0, device="cpu")
    assert res.diagnostics["reliable"] and res.diagnostics["scale_probe"]["band_widened"]
    assert_consistent(res.log_z, res.log_z_stderr, 0.0, bias=jensen_bias(res.log_z_stderr))
    assert_rejects(res.log_z, res.log_z_stderr, math.log(0.8))  # a fifth of the mass lost


def test_ais_target_hint_wins_over_the_probe():
    class Hinted(Gaussian):
        def prior_hint(self):
            return PriorHint(torch.tensor(ANISO_MEAN[:3]), torch.tensor(ANISO_STD[:3]))

    g = Hinted(ANISO_MEAN[:3], std=ANISO_STD[:3])
    res = ais(g, n_samples=64, n_steps=5, seed=0, device="cpu")
    assert "scale_probe" not in res.diagnostics and res.diagnostics["prior_hint"]
    assert res.log_z == pytest.approx(g.exact_log_z(), abs=1e-5)


@pytest.mark.filterwarnings("ignore")
def test_ais_defaults_openmm_harmonic_oscillator_array():
    testsystems = pytest.importorskip("openmmtools.testsystems")
    unit = pytest.importorskip("openmm.unit")
    from boltzkit.energies import OpenMMEnergy

    ho = testsystems.HarmonicOscillatorArray()
    e = OpenMMEnergy(ho.system, temperature=300.0)  # no positions, so no prior hint
    kt = unit.MOLAR_GAS_CONSTANT_R * 300.0 * unit.kelvin
    var = (kt / ho.K).value_in_unit(unit.nanometer ** 2)
    exact = 1.5 * ho.N * math.log(2 * math.pi * var)  # -58.38 for the default array
    res = bk.sample(e, method="ais", n_samples=128, n_steps=10, seed=0, device="cpu")
    assert res.diagnostics["scale_probe"]["n_minima"] == 1
    assert_consistent(res.log_z, res.log_z_stderr, exact, bias=1e-4)
    assert_rejects(res.log_z, res.log_z_stderr, exact + 0.5)


def _std_ratio(res, std):
    return (res.samples.double().std(0).numpy() / std)


def test_mala_defaults_anisotropic_gaussian():
    g = aniso()
    res = bk.sample(g, method="mala", n_samples=4096, n_steps=300, seed=0, device="cpu")
    assert res.diagnostics["scale_probe"]["n_minima"] == 1
    ratio = _std_ratio(res, ANISO_STD)
    # 4096 correlated draws (ESS reported by the sampler): the std of each coordinate within 15 %
    assert res.ess > 200 and np.abs(ratio - 1).max() < 0.15
    mean_err = (res.samples.double().mean(0).numpy() - ANISO_MEAN) / ANISO_STD
    assert np.abs(mean_err).max() < 0.3
    # negative control: an explicit unit-scale start and step (the former default) with the
    # same budget has not reached the wide coordinates
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its autocorrelation has not decayed, as expected
        old = bk.sample(g, method="mala", n_samples=4096, n_steps=300, seed=0, device="cpu",
                        init_std=1.0)
    assert "scale_probe" not in old.diagnostics
    assert np.abs(_std_ratio(old, ANISO_STD) - 1).max() > 0.5


@pytest.mark.filterwarnings("ignore")
def test_naas_defaults_widths_1e_3_to_1e2_without_hint():
    # widths 1e-3 .. 1e2 around a mode at 30: the annealed Langevin reference in the probe's
    # frame is stable and its exact path weights give log Z (untrained, n_steps=0)
    g = Gaussian(np.full(10, 30.0), std=np.logspace(-3, 2, 10))
    res = bk.sample(g, method="naas", n_samples=512, n_steps=0, seed=0, device="cpu",
                    n_time_steps=32)
    assert res.diagnostics["scale_probe"]["n_minima"] == 1
    assert_consistent(res.log_z, res.log_z_stderr, g.exact_log_z(), bias=jensen_bias(res.log_z_stderr))
    assert_rejects(res.log_z, res.log_z_stderr, g.exact_log_z() + 0.1)
    # an explicit prior width wins: no probe
    from boltzkit.samplers.naas import NAAS

    s = NAAS(seed=0, device="cpu", prior_std=2.0, n_time_steps=4).fit(
        Gaussian(np.zeros(2), std=1.0), n_steps=0)
    assert s.scale_probe is None and s.prior_std == 2.0 and s.target_scale == 1.0


@pytest.mark.filterwarnings("ignore")
def test_naas_defaults_fab_gmm40_untrained_covers_all_modes():
    g = GaussianMixture.gmm40()
    res = bk.sample(g, method="naas", n_samples=2048, n_steps=0, seed=0, device="cpu")
    assert res.diagnostics["scale_probe"]["narrowest_width"] < 0.1
    assert_consistent(res.log_z, res.log_z_stderr, 0.0, bias=jensen_bias(res.log_z_stderr))
    covered = torch.unique(g.mode_assignment(res.resample(4000, seed=0)))
    assert covered.numel() == 40
