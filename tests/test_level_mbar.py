"""MBAR over the levels of one annealing run (issue 20): exact truths on an analytic oscillator."""

import math
import warnings

import numpy as np
import pytest

import boltzkit as bk
from boltzkit.energies import Gaussian
from boltzkit.errors import TargetError
from boltzkit.free_energy import level_log_z, level_mbar, level_mbar_jackknife

pytest.importorskip("pymbar")

MU = np.array([1.5, -0.5])
SIG = np.array([0.3, 0.6])


def path_log_z(lam, s0=1.0, mu=MU, sig=SIG):
    """Exact log Z of exp(-(1 - lam)|y|^2 / (2 s0^2) - lam |y - mu|^2 / (2 sig^2)) (per axis a
    Gaussian integral)."""
    lam = np.asarray(lam, np.float64)[:, None]
    a = (1.0 - lam) / s0 ** 2 + lam / sig ** 2
    b = lam / sig ** 2
    return (0.5 * np.log(2 * np.pi / a) + (b * mu) ** 2 / (2 * a) - b * mu ** 2 / 2).sum(1)


@pytest.fixture(scope="module")
def run():
    g = Gaussian(MU, std=SIG)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return g, bk.sample(g, method="ais", n_samples=512, seed=0, device="cpu", init_std=1.0,
                            use_prior_hint=False, keep_levels=64, progress=False)


def test_level_mbar_log_z_of_every_level_is_exact(run):
    g, res = run
    assert res.diagnostics["adaptive_ladder"] and res.history["level_u"].shape[1] == 64
    mb = level_mbar(res, target=g)
    lz, se = level_log_z(res, mb)
    lam = res.history["lambda"]
    levels = [int(s.split()[1]) for s in mb.states[1:]]
    exact = path_log_z(lam[levels])
    z = (lz - exact) / se
    assert np.all(np.abs(z) < 4.5), z
    assert abs(lz[-1] - g.exact_log_z()) < 4 * se[-1] + 1e-3
    # negative control: a wrong truth (the widths 25 % larger: log Z + 2 log 1.25 at the
    # target) fails
    wrong = path_log_z(lam[levels], sig=1.25 * SIG)
    assert abs(lz[-1] - wrong[-1]) > 4 * se[-1]


def test_level_mbar_region_free_energy_and_jackknife(run):
    g, res = run
    K = None

    def right_half(mb):
        nonlocal K
        K = len(mb.states) - 1
        r = mb.region_free_energies({"left": lambda x: x[:, 0] < MU[0], "right": lambda x: x[:, 0] >= MU[0]},
                                    state=K)
        return np.array([r["right"].value])

    val, se = level_mbar_jackknife(res, right_half, n_groups=8)
    assert se[0] > 0
    assert abs(val[0] - 0.0) < 4 * se[0] + 0.02   # exact: the halves at the mean are equal
    # a quarter split: P(x0 > mu + sig * 0.6745) = 1/4 -> dF = log 3
    mb = level_mbar(res)
    q = mb.region_free_energies({"low": lambda x: x[:, 0] < MU[0] + 0.6745 * SIG[0],
                                 "high": lambda x: x[:, 0] >= MU[0] + 0.6745 * SIG[0]}, state=len(mb.states) - 1)
    assert abs(q["high"].value - math.log(3)) < 4 * q["high"].stderr + 0.02
    assert abs(q["high"].value - 0.0) > 4 * q["high"].stderr  # negative control: not equal halves


def test_level_mbar_refuses_runs_without_kept_levels():
    g = Gaussian(MU, std=SIG)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bk.sample(g, method="ais", n_samples=64, n_steps=5, seed=0, device="cpu", progress=False,
                        init_std=1.0)
    with pytest.raises(TargetError, match="keep_levels"):
        level_mbar(res)
    with pytest.raises(bk.errors.ConfigError, match="keep_levels"):
        bk.sample(g, method="ais", n_samples=64, keep_levels=-1, device="cpu")
