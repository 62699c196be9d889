"""BAR / MBAR through pymbar, profiles and thermodynamic curves, against exact truths.

Harmonic oscillators ``u_k(x) = k |x|^2 / 2`` in d dimensions: ``F_k = -(d/2) log(2 pi / k)``,
so ``F_b - F_a = (d/2) log(k_b / k_a)`` and ``E_k[|x|^2] = d / k``. Exact draws make the
samples; every check uses the estimator's own error bar and has a negative control.
"""

import math
import sys
import warnings

import numpy as np
import pytest
import torch

from _stats import assert_consistent, assert_rejects
import boltzkit as bk
from boltzkit.energies import Energy, Gaussian
from boltzkit.domains import Reals
from boltzkit.errors import MissingDependencyError, TargetError
from boltzkit.result import Result, result_from_log_weights

pymbar = pytest.importorskip("pymbar")

D = 2
KS = (1.0, 2.0, 4.0)


def oscillator(k, d=D):
    return Gaussian(mean=np.zeros(d), std=1.0 / math.sqrt(k))


def exact_result(k, n, seed, d=D):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) / math.sqrt(k)
    return Result(samples=x, ess=float(n), diagnostics={"log_z_unavailable": "exact draws"},
                  method="exact", target=oscillator(k, d).to_config())


def df_exact(ka, kb, d=D):
    return 0.5 * d * math.log(kb / ka)


# ----------------------------------------------------------------------------- BAR
def test_bar_harmonic_oscillators_analytic_and_negative_control():
    ra, rb = exact_result(1.0, 2000, 1), exact_result(4.0, 2000, 2)
    est = bk.free_energy_difference(ra, rb, targets=(oscillator(1.0), oscillator(4.0)))
    truth = df_exact(1.0, 4.0)
    assert est.method == "BAR" and est.n_samples == (2000, 2000) and 0 < est.overlap <= 1
    assert_consistent(est.value, est.stderr, truth, what="BAR Delta F")
    assert_rejects(est.value, est.stderr, truth + 0.15, what="BAR Delta F")
    dF, se = est  # unpacks
    assert dF == est.value and "BAR" in repr(est) and "kT" in repr(est)


def test_bar_agrees_with_pymbar_called_directly():
    ra, rb = exact_result(1.0, 500, 3), exact_result(2.0, 400, 4)
    ta, tb = oscillator(1.0), oscillator(2.0)
    est = bk.free_energy_difference(ra, rb, targets=(ta, tb))
    xa, xb = ra.samples, rb.samples
    w_f = (tb.energy(xa) - ta.energy(xa)).numpy()
    w_r = (ta.energy(xb) - tb.energy(xb)).numpy()
    ref = pymbar.other_estimators.bar(w_f, w_r)
    assert est.value == pytest.approx(ref["Delta_f"], abs=1e-10)
    assert est.stderr == pytest.approx(ref["dDelta_f"], rel=1e-8)


def test_bar_from_weighted_and_correlated_results():
    # state a from importance sampling (proposal N(0, 1.5^2)): resampled to its ESS;
    # state b from a "chain" that repeats every draw 4 times (ESS = n/4): thinned
    g = torch.Generator().manual_seed(5)
    xq = 1.5 * torch.randn(4000, D, generator=g, dtype=torch.float64)
    lw = -oscillator(1.0).energy(xq) - (-0.5 * (xq / 1.5).pow(2).sum(-1))
    ra = result_from_log_weights(xq, lw, warn=False)
    xb = exact_result(4.0, 1000, 6).samples.repeat_interleave(4, 0)
    rb = Result(samples=xb, ess=1000.0, diagnostics={"log_z_unavailable": "chain"})
    est = bk.free_energy_difference(ra, rb, targets=(oscillator(1.0), oscillator(4.0)))
    assert est.n_samples[1] == 1000 and est.n_samples[0] == math.floor(ra.ess + 1e-9)
    assert_consistent(est.value, est.stderr, df_exact(1.0, 4.0), what="BAR Delta F (weighted)")
    assert_rejects(est.value, est.stderr, df_exact(1.0, 4.0) + 0.2, what="BAR Delta F (weighted)")


# ----------------------------------------------------------------------------- MBAR
def test_mbar_harmonic_oscillators_all_pairs_and_reweighting():
    res = [exact_result(k, 1500, 10 + i) for i, k in enumerate(KS)]
    tg = [oscillator(k) for k in KS]
    m = bk.mbar(res, tg)
    assert m.delta_f.shape == (3, 3) and m.covariance.shape == (3, 3)
    for i, ki in enumerate(KS):
        for j, kj in enumerate(KS):
            if i != j:
                assert_consistent(m.delta_f[i, j], m.stderr[i, j], df_exact(ki, kj), what=f"MBAR dF[{i},{j}]")
    assert_rejects(m.delta_f[0, 2], m.stderr[0, 2], df_exact(1.0, 4.0) + 0.1, what="MBAR dF")
    # stderr is the covariance's difference form
    th = m.covariance
    assert m.stderr[0, 2] == pytest.approx(math.sqrt(th[0, 0] + th[2, 2] - 2 * th[0, 2]), rel=1e-6)
    # reweighting <|x|^2> to a sampled state and to a state that was not sampled (k = 3)
    r2 = lambda x: x.pow(2).sum(-1)  # noqa: E731
    mu, se = m.expectation(r2, state=1)
    assert_consistent(mu, se, D / 2.0, what="<|x|^2> at k=2")
    mu3, se3 = m.expectation(r2, state=oscillator(3.0))
    assert_consistent(mu3, se3, D / 3.0, what="<|x|^2> at k=3 (reweighted)")
    assert_rejects(mu3, se3, D / 3.0 * 1.1, what="<|x|^2> at k=3 (reweighted)")
    f3 = m.free_energy(oscillator(3.0))
    assert_consistent(f3.value, f3.stderr, df_exact(1.0, 3.0), what="F(k=3) - F(k=1)")
    assert "MBAR over 3 states" in repr(m)


def test_mbar_region_free_energies_against_the_normal_law():
    from scipy import stats

    res = [exact_result(k, 2000, 30 + i, d=1) for i, k in enumerate((1.0, 2.0))]
    m = bk.mbar(res, [oscillator(1.0, d=1), oscillator(2.0, d=1)])
    regions = {"inner": lambda x: x[:, 0].abs() < 1.0, "outer": lambda x: x[:, 0].abs() >= 1.0}
    p_in = stats.norm.cdf(1.0) - stats.norm.cdf(-1.0)
    truth = -math.log((1 - p_in) / p_in)  # at k = 1 (unit variance)
    df = m.region_free_energies(regions, state=0)
    assert df["inner"].value == 0.0 and df["inner"].stderr == 0.0
    assert_consistent(df["outer"].value, df["outer"].stderr, truth, what="dF(outer - inner)")
    assert_rejects(df["outer"].value, df["outer"].stderr, truth + 0.15, what="dF(outer - inner)")
    # at the unsampled k = 1.5 (variance 2/3) through reweighting
    p15 = stats.norm.cdf(math.sqrt(1.5)) - stats.norm.cdf(-math.sqrt(1.5))
    d15 = m.region_free_energies(regions, state=oscillator(1.5, d=1))["outer"]
    assert_consistent(d15.value, d15.stderr, -math.log((1 - p15) / p15), what="dF at k=1.5")
    from boltzkit.errors import UnreliableEstimateWarning

    with pytest.warns(UnreliableEstimateWarning, match="pooled draws"):
        m.region_free_energies({"a": regions["inner"], "tail": lambda x: x[:, 0] > 2.5})
    with pytest.raises(TargetError, match="no pooled sample"):
        m.region_free_energies({"a": regions["inner"], "none": lambda x: x[:, 0] > 100})


def test_mbar_agrees_with_pymbar_called_directly():
    res = [exact_result(k, 300, 20 + i) for i, k in enumerate(KS)]
    tg = [oscillator(k) for k in KS]
    m = bk.mbar(res, tg)
    x = torch.cat([r.samples for r in res])
    u = np.stack([t.energy(x).numpy() for t in tg])
    ref = pymbar.MBAR(u, np.array([300, 300, 300])).compute_free_energy_differences()
    np.testing.assert_allclose(m.delta_f, ref["Delta_f"], atol=1e-7)
    np.testing.assert_allclose(m.stderr, ref["dDelta_f"], rtol=1e-5, atol=1e-9)


# ----------------------------------------------------------------------------- validation
def test_bad_inputs_raise_clear_errors(monkeypatch):
    ra, rb = exact_result(1.0, 50, 1), exact_result(2.0, 50, 2)
    with pytest.raises(TargetError, match="targets explicitly"):
        bk.free_energy_difference(ra, rb)
    with pytest.raises(TargetError, match="one domain"):
        bk.free_energy_difference(ra, rb, targets=(oscillator(1.0), oscillator(2.0, d=3)))
    r3 = exact_result(2.0, 50, 2, d=3)
    with pytest.raises(TargetError, match="order of the results|does not hold"):
        bk.free_energy_difference(ra, r3, targets=(oscillator(1.0), oscillator(2.0)))
    empty = Result(samples=torch.zeros(0, D), diagnostics={"log_z_unavailable": "none"})
    with pytest.raises(TargetError, match="no samples"):
        bk.free_energy_difference(ra, empty, targets=(oscillator(1.0), oscillator(2.0)))
    wall = Energy.from_function(lambda x: torch.where(x[:, 0] > 0, 0.5 * x.pow(2).sum(-1),
                                                      torch.full_like(x[:, 0], math.inf)),
                                domain=Reals(D), name="half-space")
    with pytest.raises(TargetError, match="not finite"):
        bk.mbar([ra, rb], [wall, oscillator(2.0)])
    with pytest.raises(TargetError, match="at least two"):
        bk.mbar([ra], [oscillator(1.0)])
    monkeypatch.setitem(sys.modules, "pymbar", None)
    with pytest.raises(MissingDependencyError, match="free_energy"):
        bk.free_energy_difference(ra, rb, targets=(oscillator(1.0), oscillator(2.0)))


def test_poor_overlap_warns():
    from boltzkit.errors import UnreliableEstimateWarning

    ra, rb = exact_result(1.0, 200, 1), exact_result(2000.0, 200, 2)
    with pytest.warns(UnreliableEstimateWarning, match="overlap"):
        bk.free_energy_difference(ra, rb, targets=(oscillator(1.0), oscillator(2000.0)))


# ----------------------------------------------------------------------------- profiles
A_DW = 2.0  # u(x) = a (x^2 - 1)^2: barrier a kT at x = 0


def double_well(a=A_DW):
    return Energy.from_function(lambda x: a * (x[:, 0] ** 2 - 1.0) ** 2, domain=Reals(1),
                                name=f"double well a={a}")


def is_result(a, n, seed, s=1.2):
    """Importance-sampling Result of the double well from N(0, s^2): weighted samples."""
    g = torch.Generator().manual_seed(seed)
    x = s * torch.randn(n, 1, generator=g, dtype=torch.float64)
    lw = -double_well(a).energy(x) + 0.5 * (x[:, 0] / s) ** 2
    return result_from_log_weights(x, lw, warn=False, target=double_well(a).to_config())


def exact_profile(edges, a=A_DW):
    from scipy import integrate

    mass = np.array([integrate.quad(lambda t: math.exp(-a * (t * t - 1) ** 2), lo, hi)[0]
                     for lo, hi in zip(edges[:-1], edges[1:])])
    return -np.log(mass / np.diff(edges))  # up to a constant


def _max_z(prof, exact):
    f, se = prof.f, prof.stderr
    j = int(np.nanargmin(f))
    d = (f - (exact - exact[j]))
    ok = np.isfinite(d) & (se > 0)
    return float(np.max(np.abs(d[ok]) / se[ok]))


def test_profile_double_well_against_quadrature_with_negative_control():
    from _stats import z_limit

    res = is_result(A_DW, 20000, 0)
    prof = res.free_energy_profile(bk.cv.coordinate(0), bins=24, range=(-1.8, 1.8))
    assert prof.f.shape == (24,) and np.nanmin(prof.f) == 0.0 and "lowest bin" in prof.reference
    ex = exact_profile(prof.edges[0])
    lim = z_limit(1e-4 / 24)  # Bonferroni over the bins
    assert _max_z(prof, ex) < lim, (_max_z(prof, ex), lim)
    assert _max_z(prof, exact_profile(prof.edges[0], a=2.4)) > lim  # negative control: wrong barrier
    # the weights matter: the unweighted proposal histogram is rejected
    raw = Result(samples=res.samples, ess=float(res.n_samples), diagnostics={"log_z_unavailable": "x"})
    assert _max_z(raw.free_energy_profile("x0", bins=24, range=(-1.8, 1.8)), ex) > lim


def test_mbar_profile_of_several_results_against_quadrature():
    from _stats import z_limit

    res = [is_result(A_DW, 6000, 1), is_result(1.0, 6000, 2)]
    m = bk.mbar(res, [double_well(A_DW), double_well(1.0)])
    prof = m.free_energy_profile("x0", bins=16, range=(-1.6, 1.6), state=0)
    assert "MBAR" in prof.method and np.nanmin(prof.f) == 0.0
    lim = z_limit(1e-4 / 16)
    assert _max_z(prof, exact_profile(prof.edges[0])) < lim
    assert _max_z(prof, exact_profile(prof.edges[0], a=1.0)) > lim  # the other state's profile


def test_profile_2d_ramachandran_plot_and_tables(tmp_path):
    g = torch.Generator().manual_seed(3)
    ang = torch.remainder(torch.randn(4000, 2, generator=g) * 0.8 + math.pi, 2 * math.pi) - math.pi
    cv = bk.cv.CollectiveVariable(lambda x: x, ("phi", "psi"), (True, True))
    res = Result(samples=ang, ess=4000.0, diagnostics={"log_z_unavailable": "x"})
    prof = res.free_energy_profile(cv, bins=18, n_bootstrap=50)
    assert prof.f.shape == (18, 18) and prof.edges[0][0] == pytest.approx(-math.pi)
    prof.plot(tmp_path / "rama.png", max_kT=6)
    assert (tmp_path / "rama.png").stat().st_size > 1000
    prof.to_csv(tmp_path / "p.csv")
    prof.to_json(tmp_path / "p.json")
    head = (tmp_path / "p.csv").read_text().splitlines()[1]
    assert head == "phi_deg,psi_deg,F_kT,stderr_kT"


def test_collective_variables():
    from boltzkit.analysis import dihedral

    x = torch.randn(5, 22, 3, dtype=torch.float64)
    v = bk.cv.phi_psi()(x)
    np.testing.assert_allclose(v[:, 0], dihedral(x, (4, 6, 8, 14)).numpy())
    s = torch.tensor([[[1.0, 1.0], [1.0, -1.0]]])
    assert bk.cv.magnetization()(s)[0, 0] == pytest.approx(0.5)
    p = torch.tensor([[[0, 0], [0, 2]]])
    assert bk.cv.magnetization(q=3)(p)[0, 0] == pytest.approx((3 * 0.75 - 1) / 2)
    ising = bk.energies.Ising(L=3, beta=0.5)
    up = torch.ones(1, 3, 3)
    assert bk.cv.energy_per_site(ising)(up)[0, 0] == pytest.approx(-0.5 * 18 / 9)
    with pytest.raises(TargetError, match="unknown collective variable"):
        bk.cv.from_spec("chi1")


# ----------------------------------------------------------------------------- curves over beta
def test_exact_curves_against_enumeration():
    from boltzkit.energies import exact as ex

    b = np.array([0.0, 0.05, 0.3, ex.K_C_ISING, 0.6, 1.0])
    k, e = ex.ising_curve(4, b), ex.ising_curve_enumerate(4, b)
    np.testing.assert_allclose(k.log_z, e.log_z, atol=1e-12)
    np.testing.assert_allclose(k.energy, e.energy, atol=1e-9)
    np.testing.assert_allclose(k.heat_capacity, e.heat_capacity, atol=1e-8)
    # q = 2 Potts at 2K is the Ising model at K (same heat capacity; energy shifted by J/2 per bond)
    p = ex.potts_curve(4, 2, 2 * b)
    np.testing.assert_allclose(p.heat_capacity, k.heat_capacity, atol=1e-8)
    np.testing.assert_allclose(p.energy, 0.5 * (k.energy - 2.0), atol=1e-9)
    assert not np.allclose(ex.ising_curve(5, b).heat_capacity, k.heat_capacity, atol=1e-3)


@pytest.fixture(scope="module")
def ising4_ais():

    from boltzkit.errors import UnreliableEstimateWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableEstimateWarning)
        return bk.sample(bk.energies.Ising(L=4, beta=0.7), method="ais", n_samples=256, n_steps=600,
                         schedule="linear", seed=1, progress=False)


def test_log_z_path_of_lattice_run(ising4_ais):
    from boltzkit.energies import exact as ex

    path = ising4_ais.log_z_path
    beta, lz, se = path
    assert len(path) == 601 and beta[0] == 0 and beta[-1] == pytest.approx(0.7)
    assert lz[0] == pytest.approx(16 * math.log(2))
    for k in (150, 300, 600):
        assert_consistent(lz[k], se[k], ex.ising_log_z(4, 4, beta[k]), bias=se[k] ** 2, what=f"log Z_{k}")
    with pytest.raises(TargetError, match="no per-level log Z path"):
        exact_result(1.0, 10, 0).log_z_path


def test_thermo_curves_4x4_ising_against_enumeration_with_negative_control(ising4_ais):
    from _stats import z_limit
    from boltzkit.energies import exact as ex

    cur = ising4_ais.thermo_curves()
    idx = np.linspace(0, cur.beta.size - 1, 12).astype(int)  # well-separated points
    lim = z_limit(1e-4 / (2 * idx.size))
    sub = bk.free_energy.ThermoCurveEstimate(cur.beta[idx], cur.energy[idx], cur.energy_stderr[idx],
                                             cur.heat_capacity[idx], cur.heat_capacity_stderr[idx],
                                             16, cur.method)
    dev = sub.deviation(ex.ising_curve_enumerate(4, sub.beta))
    assert dev["energy_max_z"] < lim and dev["heat_capacity_max_z"] < lim, dev
    # negative controls: a 5 % different coupling (U) and an 8 x 8 lattice (C) are rejected
    assert sub.deviation(ex.ising_curve_enumerate(4, 1.05 * sub.beta))["energy_max_z"] > lim
    assert sub.deviation(ex.ising_curve(8, sub.beta))["heat_capacity_max_z"] > lim


# ----------------------------------------------------------------------------- command line
def test_cli_profile_and_curve(tmp_path, capsys):
    import json

    from boltzkit.cli import main

    run = tmp_path / "sw.npz"
    assert main(["sample", "ising", "--L", "4", "--beta", "0.44", "--method", "swendsen_wang",
                 "--n-samples", "500", "--seed", "0", "--quiet", "--out", str(run)]) == 0
    assert main(["profile", str(run), "--cv", "m", "--bins", "17", "--n-bootstrap", "50",
                 "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p.png").exists() and (tmp_path / "p.csv").read_text().startswith("# F(s)")
    assert main(["curve", "ising", "--L", "4", "--beta", "0.2:0.5", "--n-samples", "64", "--cess", "0.998",
                 "--quiet", "--format", "json", "--out", str(tmp_path / "c")]) == 0
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["deviation"] is not None and 0.2 <= doc["table"][0]["beta"] and doc["table"][-1]["beta"] <= 0.5
    assert "exact_heat_capacity_per_site" in doc["table"][0] and (tmp_path / "c.png").exists()
    assert "vs exact" in capsys.readouterr().out
    assert main(["curve", "ising", "--beta", "0.5:0.2", "--quiet"]) == 2


def test_cli_profile_phi_psi_of_cartesian_samples(tmp_path):
    """A saved molecular run (Cartesian nm, flat (n, 66)): the Ramachandran map and its table."""
    from boltzkit.cli import main

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 66, generator=g, dtype=torch.float64)
    Result(samples=x, ess=400.0, diagnostics={"log_z_unavailable": "test"}).save(tmp_path / "ala.npz")
    assert main(["profile", str(tmp_path / "ala.npz"), "--cv", "phi,psi", "--bins", "12",
                 "--n-bootstrap", "20"]) == 0
    table = (tmp_path / "ala_profile_phi_psi.csv").read_text().splitlines()
    assert table[1] == "phi_deg,psi_deg,F_kT,stderr_kT" and len(table) == 2 + 144
    assert (tmp_path / "ala_profile_phi_psi.png").exists()
