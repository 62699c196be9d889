"""Domains, energies' input validation, Result persistence and estimates, registry and options."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

import boltzkit as bk
from boltzkit.domains import Categorical, Lattice, Reals, Sequence
from boltzkit.energies import Energy, Ising, Potts
from boltzkit.errors import (ConfigError, DomainError, IncompatibleMethodError, TargetError,
                             UnreliableEstimateWarning)
from boltzkit.result import Result, result_from_log_weights

from _stats import assert_consistent, assert_rejects


# ----------------------------------------------------------------------------- domains
def test_lattice_encode_decode_roundtrip():
    d = Lattice((3, 3), 2, values=(-1.0, 1.0))
    idx = torch.randint(0, 2, (5, 3, 3))
    x = d.decode(idx)
    assert set(x.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(d.encode(x), idx)
    assert bool(d.contains(x).all())


def test_domain_validation_messages():
    d = Lattice((3, 3), 3)
    with pytest.raises(DomainError, match=r"shape \(3, 3\).*expects \(batch, 3, 3\)"):
        d.validate(torch.zeros(3, 3, dtype=torch.long))
    bad = torch.zeros(4, 3, 3, dtype=torch.long)
    bad[2, 1, 1] = 7
    with pytest.raises(DomainError, match=r"1 of 4 states.*first bad index 2.*\[0, 3\)"):
        d.validate(bad)
    with pytest.raises(DomainError, match="positive integer"):
        Reals(0)
    with pytest.raises(DomainError, match="q"):
        Lattice((3, 3), 1)
    # error messages print domains by their constructor, not as <... object at 0x...>
    assert repr(Categorical(12, 3)) == "Categorical(shape=(12,), q=3)"
    assert repr(Lattice((3, 3), 3, periodic=False)) == "Lattice(shape=(3, 3), q=3, periodic=False)"


def test_sequence_strings():
    d = Sequence(4, "ACGT")
    x = d.from_strings(["ACGT", "TTAA"])
    assert d.to_strings(x) == ["ACGT", "TTAA"]
    with pytest.raises(DomainError, match="not in the alphabet"):
        d.from_strings(["ACGX"])


# ----------------------------------------------------------------------------- energies
def _ising_energy_loops(s, beta, J, h):
    """Plain double loop over sites, right and down neighbours (each periodic bond once)."""
    L = s.shape[0]
    e = 0.0
    for i in range(L):
        for j in range(L):
            e += J * s[i, j] * (s[(i + 1) % L, j] + s[i, (j + 1) % L]) + h * s[i, j]
    return -beta * e


def test_ising_and_potts_energy_match_explicit_loops():
    g = torch.Generator().manual_seed(1)
    ising = Ising(L=5, beta=0.37, J=1.3, h=0.2)
    x = ising.domain.reference(4, generator=g)
    for b in range(4):
        assert math.isclose(float(ising.energy(x)[b]), _ising_energy_loops(x[b].numpy(), 0.37, 1.3, 0.2),
                            rel_tol=1e-5)
    potts = Potts(L=4, q=3, beta=0.8)
    y = potts.domain.reference(3, generator=g)
    for b in range(3):
        s = y[b].numpy()
        n_eq = sum(int(s[i, j] == s[(i + 1) % 4, j]) + int(s[i, j] == s[i, (j + 1) % 4])
                   for i in range(4) for j in range(4))
        assert math.isclose(float(potts.energy(y)[b]), -0.8 * n_eq, rel_tol=1e-6)


def test_lattice_energy_argument_errors():
    with pytest.raises(TargetError, match="L must be an integer >= 3"):
        Ising(L=2, beta=0.3)
    with pytest.raises(TargetError, match="beta must be >= 0"):
        Ising(L=4, beta=-1.0)
    with pytest.raises(TargetError, match="q must be an integer >= 2"):
        Potts(L=4, q=1)


def _wrapped(fn, dim=2):
    return Energy.from_function(fn, Reals(dim), name="user")


def test_bad_energy_shape_dtype_nan_are_named_before_work():
    with pytest.raises(TargetError, match=r"returned shape \(8, 1\).*one value per state"):
        bk.sample(_wrapped(lambda x: (x ** 2).sum(-1, keepdim=True)), "ais", n_samples=16)
    with pytest.raises(TargetError, match="dtype torch.int64"):
        bk.sample(_wrapped(lambda x: (x ** 2).sum(-1).long()), "ais", n_samples=16)

    def nan_energy(x):
        u = (x ** 2).sum(-1)
        u[3] = float("nan")
        return u

    with pytest.raises(TargetError, match=r"1 NaN or infinite values out of 8 \(first at batch index 3\)"):
        bk.sample(_wrapped(nan_energy), "ais", n_samples=16)
    with pytest.raises(TargetError, match="not a boltzkit target"):
        bk.sample(lambda x: x, n_samples=16)


# ----------------------------------------------------------------------------- registry / options
def test_select_and_incompatible_method():
    ising = Ising(L=4, beta=0.3)
    choice = bk.select(ising)
    assert choice.name in bk.registry()
    assert "Lattice" in choice.reason
    with pytest.raises(IncompatibleMethodError, match="unknown method 'nope'; available:"):
        bk.select(ising, "nope")
    with pytest.raises(IncompatibleMethodError, match="method 'mala' cannot sample.*Methods that can"):
        bk.select(ising, "mala")
    text = bk.explain(ising)
    assert choice.name in text and "compatible" in text


def test_unknown_option_lists_valid_names():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['bogus'\] for 'ais'; valid options:"):
        bk.sample(Ising(L=3, beta=0.3), "ais", n_samples=16, bogus=1)
    with pytest.raises(ConfigError, match="n_samples"):
        bk.sample(Ising(L=3, beta=0.3), "ais", n_samples=0)
    with pytest.raises(ConfigError, match="seed"):
        bk.sample(Ising(L=3, beta=0.3), "ais", n_samples=16, seed=-3)


# ----------------------------------------------------------------------------- Result
def _gaussian_is(n=20_000, seed=0, proposal_std=2.0):
    """IS of the unnormalized N(0,1) density exp(-x^2/2) (Z = sqrt(2 pi)) from N(0, s^2)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=g, dtype=torch.float64) * proposal_std
    log_q = -0.5 * (x[:, 0] / proposal_std) ** 2 - math.log(proposal_std * math.sqrt(2 * math.pi))
    lw = -0.5 * x[:, 0] ** 2 - log_q
    return result_from_log_weights(x.float(), lw, method="is-test", diagnostics={})


def test_result_log_z_expectation_and_free_energy_difference():
    res = _gaussian_is()
    truth = 0.5 * math.log(2 * math.pi)
    assert_consistent(res.log_z, res.log_z_stderr, truth)
    assert_rejects(res.log_z, res.log_z_stderr, truth + 0.05)
    m2, se = res.expectation(lambda x: x[:, 0] ** 2)
    assert_consistent(m2, se, 1.0, what="E[x^2]")
    assert_rejects(m2, se, 1.1, what="E[x^2]")
    df, se = res.free_energy_difference(lambda x: x[:, 0] < 0, lambda x: x[:, 0] > 1)
    exact = -math.log(stats.norm.sf(1.0) / 0.5)
    assert_consistent(df, se, exact, what="Delta F")
    assert_rejects(df, se, exact + 0.15, what="Delta F")
    with pytest.raises(TargetError, match="no sample falls in in_b"):
        res.free_energy_difference(lambda x: x[:, 0] < 0, lambda x: x[:, 0] > 100)
    # a state reached by a handful of samples: the estimate comes with a warning, a broad one without
    with pytest.warns(UnreliableEstimateWarning, match="in_b"):
        res.free_energy_difference(lambda x: x[:, 0] < 0, lambda x: x[:, 0] > 6.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res.free_energy_difference(lambda x: x[:, 0] < 0, lambda x: x[:, 0] > 1)


def test_free_energy_difference_of_island_smc_counts_lineages_not_copies():
    """Resampled SMC particles are copies of few lineages: 16 independent islands of 128 samples,
    each 4 distinct N(0, 1) draws repeated 32 times. Delta F(x > 1 vs x < 0) is exact; with the
    island jackknife its z-scores are calibrated over 300 replicates, while the delta-method bar
    alone (the same samples without islands: the negative control) is about 6x too small; the
    same holds for an expectation."""
    exact = -math.log(stats.norm.sf(1.0) / 0.5)
    rng = np.random.default_rng(0)
    z_isl, z_flat, est, se_isl, z_isl_e, z_flat_e = [], [], [], [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(300):
            x = torch.as_tensor(np.repeat(rng.standard_normal(64), 32)[:, None])
            lw = torch.zeros(x.shape[0], dtype=torch.float64)
            runs = [result_from_log_weights(x, lw, method="smc-test", diagnostics=d)
                    for d in ({"n_islands": 16}, {})]
            (df, se), (_, se0) = (r.free_energy_difference(lambda s: s[:, 0] < 0, lambda s: s[:, 0] > 1)
                                  for r in runs)
            (m, sm), (_, sm0) = (r.expectation(lambda s: s[:, 0] ** 2) for r in runs)
            z_isl_e.append(abs(m - 1.0) / sm)
            z_flat_e.append(abs(m - 1.0) / sm0)
            est.append(df)
            se_isl.append(se)
            z_isl.append(abs(df - exact) / se)
            z_flat.append(abs(df - exact) / se0)
    assert np.mean(np.asarray(z_isl) <= 3) >= 0.95
    assert np.mean(np.asarray(z_flat) <= 3) < 0.7
    # the same for an expectation (E[x^2] = 1)
    assert np.mean(np.asarray(z_isl_e) <= 3) >= 0.95 and np.mean(np.asarray(z_flat_e) <= 3) < 0.7
    finite = np.isfinite(se_isl)
    assert finite.mean() > 0.9 and 0.5 < np.median(np.asarray(se_isl)[finite]) / np.std(est) < 2


def test_result_log_z_of_region():
    """log Z of the target restricted to a region, against the normal tail; the MCMC-style
    result without log Z refuses."""
    res = _gaussian_is()
    for cut in (-1.0, 1.0):
        lz, se = res.log_z_of(lambda x: x[:, 0] > cut)
        truth = 0.5 * math.log(2 * math.pi) + math.log(stats.norm.sf(cut))
        assert_consistent(lz, se, truth, what="log Z_A")
        assert_rejects(lz, se, truth + 0.1, what="log Z_A")
    with pytest.raises(TargetError, match="no sample falls in region"):
        res.log_z_of(lambda x: x[:, 0] > 100)
    with pytest.warns(UnreliableEstimateWarning, match="restricted log Z"):
        res.log_z_of(lambda x: x[:, 0] > 6.5)
    nolz = Result(samples=res.samples, log_weights=None, log_z=None, log_z_stderr=None, ess=10.0,
                  diagnostics={"log_z_unavailable": "MCMC"}, method="mcmc", target={}, config={}, seed=0)
    with pytest.raises(TargetError, match="no log Z"):
        nolz.log_z_of(lambda x: x[:, 0] > 0)


def test_result_save_load_roundtrip(tmp_path):
    res = _gaussian_is(n=500)
    res = Result(**{**{f: getattr(res, f) for f in ("samples", "log_weights", "log_z", "log_z_stderr", "ess",
                                                  "diagnostics", "method", "target", "config", "seed")},
                    "history": {"loss": np.linspace(1, 0, 7), "ess_frac": np.ones(7)}})
    path = res.save(tmp_path / "run.npz")
    back = Result.load(path)
    assert torch.equal(back.samples, res.samples)
    assert torch.equal(back.log_weights, res.log_weights)
    assert back.log_z == res.log_z and back.ess == res.ess
    assert back.diagnostics == res.diagnostics
    np.testing.assert_array_equal(back.history["loss"], res.history["loss"])
    assert "log Z" in back.summary()
    # unweighted (MCMC-like) results carry the reason instead of a log Z
    mc = Result(samples=torch.zeros(4, 2), ess=3.0, diagnostics={"log_z_unavailable": "MCMC"})
    assert Result.load(mc.save(tmp_path / "mc")).log_z is None


def test_save_is_atomic_and_load_never_unpickles(tmp_path, monkeypatch):
    res = _gaussian_is(n=200)
    path = res.save(tmp_path / "run.npz")
    before = path.read_bytes()

    def crash(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(np, "savez_compressed", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        _gaussian_is(n=300, seed=5).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name != "run.npz"]  # no temp files left
    # an object array would need pickle: loading must refuse rather than execute code
    evil = tmp_path / "evil.npz"
    np.savez(evil, samples=np.zeros((2, 2)), __meta__=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="object arrays.*never unpickles"):
        Result.load(evil)


def test_result_requires_reason_without_log_z():
    with pytest.raises(bk.errors.BoltzkitError, match="log_z_unavailable"):
        Result(samples=torch.zeros(3, 1))


def test_plot_writes_png(tmp_path):
    res = _gaussian_is(n=300)
    res.plot(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000
