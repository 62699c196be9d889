"""Lattice MCMC (Metropolis, heat bath, Swendsen-Wang, Wolff) against exact enumeration.

Two kinds of checks:
* exact invariance: start from iid exact draws, apply one update, and test the full state
  histogram against the exact distribution (chi-square); the same update at a wrong beta
  must be rejected;
* end to end: <U> and <|m|> from ``bk.sample`` within tau-corrected Monte-Carlo errors of
  the exact values on 3x3 / 4x4 Ising (including beta_c, and a field h) and 3x3 Potts q=3,
  with a wrong-beta negative control.
"""

import math

import numpy as np
import pytest
import torch

import boltzkit as bk
from _stats import assert_consistent, assert_rejects, chi2_gof_pvalue
from boltzkit.domains import Reals
from boltzkit.energies import BETA_C_ISING, Energy, Ising, Potts
from boltzkit.energies.exact import enumerate_states, state_to_index
from boltzkit.errors import ConfigError, ConvergenceWarning, DomainError, IncompatibleMethodError
from boltzkit.estimators import autocorr_estimate
from boltzkit.samplers.mcmc import (LOG_Z_UNAVAILABLE, checkerboard_sweep, swendsen_wang_update,
                                    wolff_update)

GOF_ALPHA = 1e-4
METHODS = ["metropolis", "heat_bath", "swendsen_wang", "wolff"]


def abs_m(target, x):
    """|m| per state, computed here independently of the sampler module."""
    if isinstance(target, Ising):
        return x.flatten(1).double().mean(1).abs()
    q = target.q
    frac = torch.stack([(x.flatten(1) == c).double().mean(1) for c in range(q)], 1)
    return (q * frac.amax(1) - 1) / (q - 1)


_EXACT_CACHE, _ENUM_CACHE = {}, {}


def exact_means(target, beta=None):
    """Exact <U_target> and <|m|> under the Boltzmann law at inverse temperature ``beta``."""
    key = (repr(sorted(target.to_config().items())), beta)
    if key not in _EXACT_CACHE:
        _EXACT_CACHE[key] = _exact_means(target, beta)
    return _EXACT_CACHE[key]


def _exact_means(target, beta):
    law = target if beta is None else target.with_beta(beta)
    en = enumerate_states(law)
    p = en.log_probs.exp()
    x = target.domain.decode(en.states)
    u = target.energy(x).double()
    return float((p * u).sum()), float((p * abs_m(target, x)).sum())


def exact_draws(target, n, gen):
    key = repr(sorted(target.to_config().items()))
    if key not in _ENUM_CACHE:
        _ENUM_CACHE[key] = enumerate_states(target)
    en = _ENUM_CACHE[key]
    idx = torch.multinomial(en.log_probs.exp(), n, replacement=True, generator=gen)
    return target.domain.decode(en.states[idx]), en.log_probs.exp().numpy()


def gof(target, x, probs):
    counts = torch.bincount(state_to_index(target.domain.encode(x), target.domain.q),
                            minlength=probs.size)
    return chi2_gof_pvalue(counts.numpy(), probs)


UPDATES = {
    "metropolis": lambda e, x, g, s=1.0: checkerboard_sweep(e, x, generator=g, scale=s),
    "heat_bath": lambda e, x, g, s=1.0: checkerboard_sweep(e, x, generator=g, scale=s, rule="heat_bath"),
    "swendsen_wang": lambda e, x, g, s=1.0: swendsen_wang_update(e, x, generator=g, scale=s),
    "wolff": lambda e, x, g, s=1.0: wolff_update(e, x, generator=g, scale=s),
}

INVARIANCE_CASES = [(m, t) for m in METHODS for t in ("ising", "potts")] + \
                   [("metropolis", "ising_h"), ("heat_bath", "ising_h")]


def make_target(kind):
    return {"ising": Ising(L=3, beta=BETA_C_ISING), "ising_h": Ising(L=3, beta=0.4, h=0.3),
            "potts": Potts(L=3, q=3, beta=1.0)}[kind]


@pytest.mark.parametrize("method, kind", INVARIANCE_CASES)
def test_update_leaves_exact_distribution_invariant(method, kind):
    target = make_target(kind)
    gen = torch.Generator().manual_seed(11)
    x, probs = exact_draws(target, 40_000, gen)
    y, _ = UPDATES[method](target, x, gen)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert bool((y != x).any())
    p = gof(target, y, probs)
    assert p > GOF_ALPHA, f"{method} on {target.name}: chi-square p = {p:.2g}"
    # negative control: the same update for a 40% larger beta does not preserve the target
    y_wrong, _ = UPDATES[method](target.with_beta(1.4 * target.beta), x, gen)
    assert gof(target, y_wrong, probs) < GOF_ALPHA


@pytest.mark.parametrize("method", METHODS)
def test_scale_anneals_the_target(method):
    """With scale s the update leaves exp(-s U) invariant, i.e. the target at beta * s."""
    target, s = Ising(L=3, beta=0.6), 0.5
    gen = torch.Generator().manual_seed(12)
    x, probs = exact_draws(target.with_beta(s * target.beta), 40_000, gen)
    y, _ = UPDATES[method](target, x, gen, s)
    assert gof(target, y, probs) > GOF_ALPHA
    assert gof(target, UPDATES[method](target, x, gen, 1.0)[0], probs) < GOF_ALPHA


def test_per_chain_scale_equals_scalar_scale():
    target = Potts(L=4, q=3, beta=0.8)
    x = target.domain.reference(16, generator=torch.Generator().manual_seed(0))
    for rule in ("metropolis", "heat_bath"):
        a, acc_a = checkerboard_sweep(target, x, generator=torch.Generator().manual_seed(1),
                                      scale=0.3, rule=rule)
        b, acc_b = checkerboard_sweep(target, x, generator=torch.Generator().manual_seed(1),
                                      scale=torch.full((16,), 0.3), rule=rule)
        assert torch.equal(a, b) and torch.allclose(acc_a, acc_b)
    # scale 0 means uniform: heat bath then ignores the couplings entirely
    u, acc = checkerboard_sweep(target, x, generator=torch.Generator().manual_seed(2), scale=0.0,
                                rule="heat_bath")
    assert acc.shape == (16,) and bool(((acc >= 0) & (acc <= 1)).all())


E2E_CASES = [
    ("ising3_hot", Ising(L=3, beta=0.3), 0.06),
    ("ising4_crit", Ising(L=4, beta=BETA_C_ISING), 0.04),
    ("ising4_cold", Ising(L=4, beta=0.6), 0.06),
    ("potts3", Potts(L=3, q=3, beta=1.0), 0.1),
]


def _e2e_params():
    for name, target, d_beta in E2E_CASES:
        for m in METHODS:
            yield pytest.param(m, target, d_beta, id=f"{m}-{name}")
    yield pytest.param("metropolis", Ising(L=3, beta=0.4, h=0.3), 0.06, id="metropolis-ising3_field")
    yield pytest.param("heat_bath", Ising(L=3, beta=0.4, h=0.3), 0.06, id="heat_bath-ising3_field")


def _mean_and_se(trace):
    """Mean of a (steps, chains) trace with the tau-corrected standard error."""
    est = autocorr_estimate(trace)
    return float(trace.mean()), float(trace.std() * math.sqrt(est.tau / trace.size))


@pytest.mark.filterwarnings("ignore::boltzkit.errors.ConvergenceWarning")
@pytest.mark.parametrize("method, target, d_beta", list(_e2e_params()))
def test_means_match_enumeration(method, target, d_beta):
    # many short chains (cheap per sweep); the pooled tau_int estimate stays accurate, but the
    # 50 tau_int rule for a single chain is not met, hence the filtered warning
    n_chains, steps = 512, 100
    opts = {"n_flips": 2} if method == "wolff" else {}
    res = bk.sample(target, method=method, n_samples=n_chains * steps, seed=3, n_chains=n_chains,
                    burn_in=50, **opts)
    x = res.samples.view(steps, n_chains, target.L, target.L)
    u = target.energy(x.flatten(0, 1)).double().view(steps, n_chains).numpy()
    m = abs_m(target, x.flatten(0, 1)).view(steps, n_chains).numpy()
    u_exact, m_exact = exact_means(target)
    u_wrong, m_wrong = exact_means(target, target.beta + d_beta)
    for what, trace, truth, wrong in (("<U>", u, u_exact, u_wrong), ("<|m|>", m, m_exact, m_wrong)):
        est, se = _mean_and_se(trace)
        assert_consistent(est, se, truth, what=f"{method} {target.name} {what}")
        assert_rejects(est, se, wrong, what=f"{method} {target.name} {what} (beta + {d_beta})")
    # the Result's own error bar for <U> (ESS from tau_int of the energy) agrees
    val, err = res.expectation(target.energy)
    assert_consistent(val, err, u_exact, what=f"{method} Result.expectation <U>")


def test_bk_sample_end_to_end():
    # 32 steps per chain is shorter than 50 tau_int: the sampler must say so
    with pytest.warns(ConvergenceWarning, match="Run the chain"):
        res = bk.sample(Ising(L=4, beta=0.3), method="swendsen_wang", n_samples=1000, seed=0,
                        n_chains=32)
    assert res.diagnostics["tau_converged"] is False
    assert res.samples.shape == (1000, 4, 4) and res.samples.dtype == torch.float32
    assert set(res.samples.unique().tolist()) == {-1.0, 1.0}
    assert res.log_weights is None and res.log_z is None and res.log_z_stderr is None
    d = res.diagnostics
    assert d["log_z_unavailable"] == LOG_Z_UNAVAILABLE
    assert d["steps_per_chain"] == 32 and d["sweeps"] == 32 and d["burn_in"] == 100
    assert res.ess == pytest.approx(1000 / d["tau_int_energy"])
    for key in ("tau_int_abs_m", "acceptance", "wall_time_s", "ess_per_second"):
        assert math.isfinite(d[key])
    assert len(res.history["mean_energy"]) == 100 + 32 == d["total_sweeps"]
    assert res.method == "swendsen_wang" and res.config["n_chains"] == 32
    assert "log Z unavailable" in res.summary()


@pytest.mark.filterwarnings("ignore::boltzkit.errors.ConvergenceWarning")
def test_thinning_and_potts_dtype():
    res = bk.sample(Potts(L=3, q=4, beta=0.5), method="heat_bath", n_samples=50, seed=1,
                    n_chains=8, thin=3, burn_in=5)
    assert res.samples.shape == (50, 3, 3) and res.samples.dtype == torch.int64
    assert res.diagnostics["sweeps"] == 7 * 3 and len(res.history["mean_energy"]) == 5 + 21


@pytest.mark.filterwarnings("ignore::boltzkit.errors.ConvergenceWarning")
@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_samples(method):
    target = Potts(L=4, q=3, beta=0.9)
    a = bk.sample(target, method=method, n_samples=64, seed=5, n_chains=16, burn_in=10)
    b = bk.sample(target, method=method, n_samples=64, seed=5, n_chains=16, burn_in=10)
    c = bk.sample(target, method=method, n_samples=64, seed=6, n_chains=16, burn_in=10)
    assert torch.equal(a.samples, b.samples)
    assert np.array_equal(a.history["mean_energy"], b.history["mean_energy"])
    assert not torch.equal(a.samples, c.samples)


@pytest.mark.filterwarnings("ignore::boltzkit.errors.ConvergenceWarning")
def test_sample_continues_the_chain():
    s = bk.samplers.SwendsenWang(seed=0, n_chains=4, burn_in=3).fit(Ising(L=4, beta=0.4))
    r1, r2 = s.sample(8), s.sample(8)
    assert r2.diagnostics["total_sweeps"] == 3 + 2 + 2
    assert not torch.equal(r1.samples, r2.samples)


def test_registry_and_priorities():
    reg = bk.registry()
    assert reg["swendsen_wang"].priority == 5
    assert max(reg[m].priority for m in ("metropolis", "heat_bath", "wolff")) < 5
    assert all(not reg[m].provides_log_z for m in METHODS)
    plain, field = Ising(L=4, beta=0.4), Ising(L=4, beta=0.4, h=0.1)
    for m in METHODS:
        assert reg[m].incompatibility(plain) is None
        assert reg[m].incompatibility(Potts(L=3, q=3)) is None
    assert "h = 0" in reg["swendsen_wang"].incompatibility(field)
    assert "h = 0" in reg["wolff"].incompatibility(field)
    assert reg["metropolis"].incompatibility(field) is None
    assert "J >= 0" in reg["wolff"].incompatibility(Potts(L=3, q=3, beta=0.5, J=-1.0))
    assert bk.select(field).name not in ("swendsen_wang", "wolff")


def test_bad_inputs():
    field = Ising(L=4, beta=0.4, h=0.1)
    with pytest.raises(IncompatibleMethodError, match="h = 0"):
        bk.sample(field, method="swendsen_wang", n_samples=10, seed=0)
    with pytest.raises(IncompatibleMethodError, match="h = 0"):
        bk.samplers.Wolff(seed=0).fit(field)
    with pytest.raises(IncompatibleMethodError, match="h = 0"):
        swendsen_wang_update(field, field.domain.reference(2), generator=torch.Generator())
    with pytest.raises(ConfigError, match="unknown option.*n_walkers.*n_chains"):
        bk.sample(Ising(L=4), method="metropolis", n_samples=10, n_walkers=4)
    with pytest.raises(ConfigError, match="burn_in"):
        bk.samplers.Metropolis(burn_in=-1)
    with pytest.raises(ConfigError, match="n_chains"):
        bk.samplers.HeatBath(n_chains=0)
    with pytest.raises(ConfigError, match="before fit"):
        bk.samplers.Metropolis(seed=0).sample(10)
    with pytest.raises(ConfigError, match="n_samples"):
        bk.samplers.Metropolis(seed=0, burn_in=0).fit(Ising(L=3)).sample(0)
    with pytest.raises(ConfigError, match="checkpoint"):
        bk.samplers.Metropolis(seed=0).fit(Ising(L=3), checkpoint="x.pt")
    gauss = Energy.from_function(lambda x: (x**2).sum(1), Reals(2))
    with pytest.raises(IncompatibleMethodError):
        bk.samplers.Metropolis(seed=0).fit(gauss)
    ising = Ising(L=3)
    with pytest.raises(ConfigError, match="rule"):
        checkerboard_sweep(ising, ising.domain.reference(2), generator=torch.Generator(), rule="gibbs")
    with pytest.raises(DomainError, match=r"\(batch, 3, 3\)"):
        checkerboard_sweep(ising, torch.ones(3, 3), generator=torch.Generator())
    with pytest.raises(DomainError, match="int64"):
        checkerboard_sweep(Potts(L=3, q=3), torch.zeros(2, 3, 3), generator=torch.Generator())
    with pytest.raises(ConfigError, match="scale"):
        checkerboard_sweep(ising, ising.domain.reference(2), generator=torch.Generator(), scale=-1.0)


def test_checkerboard_tables_equal_direct_conditionals():
    """The site tables (indexed by 2 n_up, even entries) give each site exactly its conditional:
    heat bath p(up) = sigmoid(2 s beta (J sum_nb + h)) and Metropolis min(1, exp(-s dU)),
    computed here from the energy's own definition at every site of random states."""
    from boltzkit.kernels.lattice import _ising_site_update, lattice_model
    from boltzkit.energies.lattice import neighbour_sum

    t = bk.energies.Ising(L=6, beta=0.37, J=0.8, h=0.15)
    m = lattice_model(t)
    x = t.domain.reference(8, generator=torch.Generator().manual_seed(0))
    s = torch.full((1, 1), 0.6, dtype=torch.float64)
    field = m.beta * (m.J * neighbour_sum(x).double() + m.h)
    p_up = torch.sigmoid(2 * 0.6 * field)
    p_flip = torch.exp(-0.6 * 2 * x.double() * field).clamp(max=1.0)
    # u just below / just above the probability decides the site: the decision threshold is p
    for eps, want_up in ((-1e-9, True), (1e-9, False)):
        hb = _ising_site_update(m, x, (p_up + eps).clamp(0, 1), s, "heat_bath", None)
        assert bool(((hb > 0) == want_up)[(p_up > 1e-6) & (p_up < 1 - 1e-6)].all())
        me = _ising_site_update(m, x, (p_flip + eps).clamp(0, 1), s, "metropolis", None)
        flipped = me != x
        assert bool((flipped == want_up)[(p_flip > 1e-6) & (p_flip < 1 - 1e-6)].all())
    # negative control: the table of the opposite field is caught
    hb = _ising_site_update(m, -x, (p_up - 1e-9).clamp(0, 1), s, "heat_bath", None)
    assert not bool((hb > 0)[(p_up > 1e-6) & (p_up < 1 - 1e-6) & (neighbour_sum(x) != 0)].all())
