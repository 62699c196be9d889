"""Tests of discrete ASBS and the cyclic (uniform) reference CTMC it is built on.

Ground truths: matrix exponentials of the single-site generator (scipy), quadrature of the
noise rate, brute-force energy differences, and exact enumeration of small lattices
(``boltzkit.energies.exact``). Statistical checks use the estimator's own error bar and each
has a negative control.
"""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, linalg

import boltzkit as bk
from boltzkit.domains import Lattice, Sequence
from boltzkit.energies import Energy, Gaussian, Ising, Potts
from boltzkit.energies.exact import enumerate_states, exact_marginal_pmf
from boltzkit.errors import ConfigError, IncompatibleMethodError, TrainingDivergedError
from boltzkit.nn.cyclic import (bridge_probs, cyclic_rollout, make_noise, sample_bridge,
                                              sample_source, shift_index, source_log_terminal,
                                              source_log_terminal_score, step_probs, tau_leap_step,
                                              transition_log_prob)
from boltzkit.samplers.discrete_asbs import (DiscreteASBS, bregman_divergence, controller_tm_target,
                                             corrector_tm_target, log_discrete_score, resolve_source)

from _stats import assert_consistent, assert_rejects, chi2_gof_pvalue, z_limit

FAST = dict(batch_size=128, n_replicates=4, buffer_size=256, resample_every=10, n_time_steps=20,
            hidden=16, n_layers=1, sample_batch_size=4000)


def _fit(target, seed=0, **opts):
    return DiscreteASBS(device="cpu", seed=seed, progress=False, **{**FAST, **opts}).fit(target)


def _generator(q):
    """Single-site generator of the reference at unit rate: gamma / q to each other value."""
    return (np.ones((q, q)) - q * np.eye(q)) / q


def _rate_integral(g, alpha, s, t):
    return integrate.quad(lambda u: g / (alpha + u), s, t, epsabs=1e-13, epsrel=1e-13)[0]


# ---------------------------------------------------------------------------- closed forms
def test_noise_integrals_match_quadrature():
    for kind, g, alpha in (("log_linear", 1.0, 0.05), ("log_linear", 0.25, 0.5), ("const", 3.0, 0.0)):
        noise = make_noise(kind, g, alpha)
        for s, t in ((0.0, 1.0), (0.2, 0.7), (0.01, 0.011)):
            exact = (_rate_integral(g, alpha, s, t) if kind == "log_linear" else g * (t - s))
            assert float(noise.integral(s, t)) == pytest.approx(exact, rel=1e-12, abs=1e-15)
            mid = 0.5 * (s + t)
            assert float(noise.rate(mid)) == pytest.approx(g / (alpha + mid) if kind == "log_linear" else g)


@pytest.mark.parametrize("q", [2, 3, 5])
def test_kernel_matches_matrix_exponential(q):
    """p^r_{t|s} = B^D C^{d_H}: single site against expm(Gamma Q), three sites against kron."""
    g, alpha, s, t = 1.0, 0.3, 0.1, 0.8
    gamma = _rate_integral(g, alpha, s, t)
    p1 = linalg.expm(gamma * _generator(q))  # single-site kernel, exact
    x = torch.arange(q).repeat_interleave(q).view(-1, 1)
    y = torch.arange(q).repeat(q).view(-1, 1)
    ours = transition_log_prob(x, y, make_noise("log_linear", g, alpha).integral(s, t), q).exp()
    np.testing.assert_allclose(ours.numpy(), p1.reshape(-1), rtol=1e-12, atol=1e-15)
    # three sites: the kernel is the Kronecker product of the single-site kernels
    p3 = np.kron(np.kron(p1, p1), p1)
    states = torch.cartesian_prod(*[torch.arange(q)] * 3)
    xs, ys = states.repeat_interleave(q**3, 0), states.repeat(q**3, 1)
    ours3 = transition_log_prob(xs, ys, torch.tensor(gamma, dtype=torch.float64), q).exp().view(q**3, q**3)
    np.testing.assert_allclose(ours3.numpy(), p3, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("q", [2, 3])
def test_bridge_marginals_match_brute_force(q):
    """p(x_t = n | x0, x1) = p_{t|0}(n | x0) p_{1|t}(x1 | n) / p_{1|0}(x1 | x0), from expm."""
    g, alpha, t0, t = 1.0, 0.05, 0.02, 0.4
    noise = make_noise("log_linear", g, alpha)
    k0t = linalg.expm(_rate_integral(g, alpha, t0, t) * _generator(q))
    kt1 = linalg.expm(_rate_integral(g, alpha, t, 1.0) * _generator(q))
    k01 = k0t @ kt1
    x0 = torch.arange(q).repeat_interleave(q).view(-1, 1)  # every (x0, x1) pair, D = 1
    x1 = torch.arange(q).repeat(q).view(-1, 1)
    ours = bridge_probs(x0, x1, noise.integral(t0, t).expand(q * q), noise.integral(t, 1.0).expand(q * q), q)
    for row, (a, b) in enumerate(zip(x0.flatten().tolist(), x1.flatten().tolist())):
        brute = k0t[a, :] * kt1[:, b] / k01[a, b]
        np.testing.assert_allclose(ours[row, 0].numpy(), brute, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(ours.sum(-1).numpy(), 1.0, rtol=0, atol=1e-14)
    # end points pin the bridge
    at0 = bridge_probs(x0, x1, torch.zeros(q * q), noise.integral(t0, 1.0).expand(q * q), q)
    at1 = bridge_probs(x0, x1, noise.integral(t0, 1.0).expand(q * q), torch.zeros(q * q), q)
    assert torch.equal(at0.argmax(-1), x0) and torch.equal(at1.argmax(-1), x1)
    np.testing.assert_allclose(at0.max(-1).values.numpy(), 1.0, atol=1e-14)


def test_bridge_sampling_frequencies():
    q, n = 3, 30_000
    noise = make_noise("log_linear", 1.0, 0.05)
    x0 = torch.tensor([[0, 1]]).repeat(n, 1)
    x1 = torch.tensor([[2, 1]]).repeat(n, 1)
    g0t, gt1 = noise.integral(0.0, 0.3).expand(n), noise.integral(0.3, 1.0).expand(n)
    xt = sample_bridge(x0, x1, g0t, gt1, q, generator=torch.Generator().manual_seed(0))
    probs = bridge_probs(x0[:1], x1[:1], g0t[:1], gt1[:1], q)[0]  # (2, q)
    joint = torch.outer(probs[0], probs[1]).flatten().numpy()
    counts = np.bincount((xt[:, 0] * q + xt[:, 1]).numpy(), minlength=q * q)
    assert chi2_gof_pvalue(counts, joint) > 1e-4
    wrong = torch.outer(probs[1], probs[0]).flatten().numpy()  # sites swapped
    assert chi2_gof_pvalue(counts, wrong) < 1e-4


def test_shift_index_is_the_group_translation():
    q = 4
    x_from, x_to = torch.tensor([[0, 3, 1]]), torch.tensor([[2, 3, 0]])
    idx = shift_index(x_from, x_to, q)[0]
    for d in range(3):
        for n in range(q):
            assert int(idx[d, n]) == (n + int(x_to[0, d]) - int(x_from[0, d])) % q
    assert torch.equal(idx.gather(-1, x_from[0].unsqueeze(-1)).squeeze(-1), x_to[0])


def test_target_matching_fixed_points_on_the_exact_bridge():
    """The TM regression targets average to the exact Schrodinger-bridge controller / corrector.

    Two sites, q = 3, a random target pi. The bridge between the uniform law and pi is found by
    Sinkhorn with expm kernels: P*(x0, x1) = a(x0) K(x0, x1) b(x1). Then, by enumeration,
    E[exp(controller target) | x_t] = h_t(x_t^{d<-n}) / h_t(x_t) with h_t = K_{t,1} b, and
    E[exp(corrector target) | x_1] = phihat(x_1^{d<-n}) / phihat(x_1) with phihat = K^T a.
    """
    q, d, t = 3, 2, 0.35
    g, alpha = 1.0, 0.5  # a reference with memory, so that the corrector matters
    site = lambda s_, t_: linalg.expm(_rate_integral(g, alpha, s_, t_) * _generator(q))  # noqa: E731
    k0t, kt1 = np.kron(site(0, t), site(0, t)), np.kron(site(t, 1), site(t, 1))
    k01 = k0t @ kt1
    states = torch.cartesian_prod(torch.arange(q), torch.arange(q))  # index = 3 x_0 + x_1
    pi = np.random.default_rng(0).dirichlet(np.ones(q**d))
    a, b = np.ones(q**d), np.ones(q**d)
    for _ in range(2000):
        a = (1.0 / q**d) / (k01 @ b)
        b = pi / (k01.T @ a)
    joint01 = a[:, None] * k01 * b[None, :]
    np.testing.assert_allclose(joint01.sum(0), pi, atol=1e-12)

    def index(x):  # flat index of states (B, 2)
        return (x[..., 0] * q + x[..., 1]).long()

    def moved(x):  # (S, d, q) flat index of x^{d<-n}
        out = torch.empty(x.shape[0], d, q, dtype=torch.long)
        for site_ in range(d):
            for n in range(q):
                y = x.clone()
                y[:, site_] = n
                out[:, site_, n] = index(y)
        return out

    nb = torch.as_tensor(moved(states))
    log_b = torch.as_tensor(np.log(b))
    terminal = log_b[nb] - log_b[index(states)][:, None, None]  # log score(x1) - log phihat(x1)
    # controller: sum over (x0, x1, xt) of P*(x0, x1) bridge(xt | x0, x1) exp(target) / P*(xt)
    s_ = q**d
    x0, x1, xt = (states.repeat_interleave(s_ * s_, 0), states.repeat_interleave(s_, 0).repeat(s_, 1),
                  states.repeat(s_ * s_, 1))
    i0, i1, it = index(x0), index(x1), index(xt)
    p = torch.as_tensor(joint01)[i0, i1] * torch.as_tensor(k0t)[i0, it] * torch.as_tensor(kt1)[it, i1] \
        / torch.as_tensor(k01)[i0, i1]
    rate = controller_tm_target(terminal[i1], x1, xt, q).exp()
    num = torch.zeros(s_, d, q, dtype=torch.float64).index_add_(0, it, p[:, None, None] * rate)
    den = torch.zeros(s_, dtype=torch.float64).index_add_(0, it, p)
    h = torch.as_tensor(kt1 @ b)
    optimal = h[nb] / h[:, None, None]
    np.testing.assert_allclose((num / den[:, None, None]).numpy(), optimal.numpy(), rtol=1e-9)
    # negative control: reading the terminal target without the translation is wrong
    rate_wrong = terminal[i1].exp()
    num_wrong = torch.zeros(s_, d, q, dtype=torch.float64).index_add_(0, it, p[:, None, None] * rate_wrong)
    assert float((num_wrong / den[:, None, None] - optimal).abs().max()) > 0.05
    # corrector: log phi_0 = log h_0 ratio; sum over (x0, x1) of P*(x0 | x1) exp(target)
    h0 = torch.as_tensor(k01 @ b)
    log_phi0 = (h0[nb] / h0[:, None, None]).log()
    x0, x1 = states.repeat_interleave(s_, 0), states.repeat(s_, 1)
    i0, i1 = index(x0), index(x1)
    w = torch.as_tensor(joint01)[i0, i1] / torch.as_tensor(pi)[i1]
    rate = corrector_tm_target(log_phi0[i0], x0, x1, q).exp()
    got = torch.zeros(s_, d, q, dtype=torch.float64).index_add_(0, i1, w[:, None, None] * rate)
    phihat = torch.as_tensor(k01.T @ a)
    np.testing.assert_allclose(got.numpy(), (phihat[nb] / phihat[:, None, None]).numpy(), rtol=1e-9)


# ---------------------------------------------------------------------------- tau-leaping
def test_tau_leap_step_samples_its_stated_probabilities():
    """Empirical law of one step = step_probs (chi-square), log ratio = log p^r - log p^u."""
    q, n = 3, 40_000
    x = torch.tensor([[0, 2]]).repeat(n, 1)
    log_phi = torch.tensor([[[0.0, 1.0, -1.0], [4.0, 5.0, 0.0]]]).repeat(n, 1, 1)  # site 2 capped
    gamma = torch.tensor(0.4)
    x_new, log_ratio, capped = tau_leap_step(x, log_phi, gamma, q, generator=torch.Generator().manual_seed(1))
    probs, capped1 = step_probs(x[:1], log_phi[:1], gamma, q)
    assert capped1.tolist() == [[False, True]] and bool(capped.all(0)[1])
    assert float(probs[0, 1].sum()) == pytest.approx(1.0, abs=1e-14)
    assert float(probs[0, 1, 2]) == pytest.approx(0.01)  # stay probability 1 - max_jump
    joint = torch.outer(probs[0, 0], probs[0, 1]).flatten().numpy()
    counts = np.bincount((x_new[:, 0] * q + x_new[:, 1]).numpy(), minlength=q * q)
    assert chi2_gof_pvalue(counts, joint) > 1e-4
    ref = torch.full((q,), -math.expm1(-0.4) / q, dtype=torch.float64)  # reference kernel at site 2
    ref[2] = 1.0 - 2 * ref[0]
    assert chi2_gof_pvalue(counts, torch.outer(probs[0, 0], ref).flatten().numpy()) < 1e-4
    log_pu = probs[0, 0][x_new[:, 0]].log() + probs[0, 1][x_new[:, 1]].log()
    expected = transition_log_prob(x, x_new, gamma, q) - log_pu
    np.testing.assert_allclose(log_ratio.numpy(), expected.numpy(), rtol=0, atol=1e-12)


def test_phi_one_is_the_reference_and_weight_is_exact():
    """With log phi = 0 every step is the reference kernel: log w = -U(x1) + D log q exactly."""
    target = Potts(L=3, q=3, beta=0.8)
    noise = make_noise("log_linear", 1.0, 0.05)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 3, (500, 9), generator=gen)
    zero = lambda x, t: torch.zeros(x.shape[0], 9, 3)  # noqa: E731
    path = cyclic_rollout(zero, x0, torch.linspace(0, 1, 11, dtype=torch.float64), noise, 3, generator=gen)
    assert path.n_capped == 0 and float(path.n_jumps.mean()) > 1.0
    assert float(path.log_ratio.abs().max()) < 1e-12
    # the untrained sampler's controller is exactly the reference
    fresh = DiscreteASBS(device="cpu", seed=3, progress=False, source="uniform", **FAST)
    fresh._attach(target)
    fresh._setup(fresh.target)
    p, lw = fresh.sample_paths(300)
    u = target.energy(p.x1.view(-1, 3, 3)).double()
    np.testing.assert_allclose(lw.numpy(), (-u + 9 * math.log(3)).numpy(), rtol=0, atol=1e-10)


def _z_ratio_checks(lw, log_z, log_size, what):
    """mean(w) / Z = 1 within its error bar; rejects a 10% error and a missing D log q."""
    ratio = torch.exp(lw - log_z).numpy()  # Z_hat / Z per path
    est, se = ratio.mean(), ratio.std(ddof=1) / math.sqrt(ratio.size)
    assert se < 0.02, f"{what}: weights too noisy for a meaningful test (se {se:.3f})"
    assert_consistent(est, se, 1.0, what=what)
    assert_rejects(est, se, 0.9, what=what)
    assert_rejects(est, se, math.exp(-log_size), what=what + " without D log q")


def test_weights_unbiased_for_random_network():
    """E[w] = Z exactly for an untrained, randomly perturbed controller network."""
    target = Ising(L=3, beta=0.1)
    sampler = DiscreteASBS(device="cpu", seed=0, progress=False, n_time_steps=6, net="transformer",
                           hidden=16, n_layers=1, sample_batch_size=6000, source="uniform")
    sampler._attach(target)
    sampler._setup(sampler.target)
    net = sampler.ema_controller.shadow
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():  # random output layer and time modulation
        for p in list(net.net.head.parameters()) + list(net.net.time.film.parameters()):
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    path, lw = sampler.sample_paths(12_000)
    assert float(path.log_ratio.std()) > 0.3, "the proposal is too close to the reference"
    _z_ratio_checks(lw, target.exact_log_z(), 9 * math.log(2), "Z_hat / Z (random network)")


def test_weights_unbiased_with_capped_rows():
    """Capped tau-leaping rows (jump probability scaled down) keep E[w] = Z."""
    target = Potts(L=3, q=3, beta=0.15)
    noise = make_noise("log_linear", 1.0, 0.05)
    times = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    table = 0.3 * torch.randn(9, 3, 3, generator=gen)  # log phi by (site, own value, target value)

    def controller(x, t):
        return table[torch.arange(9), x] * (1.0 - t).view(-1, 1, 1)

    n = 20_000
    x0 = torch.randint(0, 3, (n, 9), generator=gen)
    path = cyclic_rollout(controller, x0, times, noise, 3, generator=gen, max_jump=0.6)
    assert path.n_capped > 0.2 * n * 9, "too few capped rows to test the capping"
    lw = -target.energy(path.x1.view(n, 3, 3)).double() + 9 * math.log(3) + path.log_ratio
    _z_ratio_checks(lw, target.exact_log_z(), 9 * math.log(3), "Z_hat / Z (capped rows)")


# ---------------------------------------------------------------------------- delta source
@pytest.mark.parametrize("q", [2, 3])
def test_delta_source_terminal_law_matches_matrix_exponential(q):
    """p^r_1 from the delta source = mixture over constant x_0 of the kron(expm) kernel rows."""
    d, g, alpha, t0 = 3, 1.0, 0.5, 0.01
    gamma = _rate_integral(g, alpha, t0, 1.0)
    k = linalg.expm(gamma * _generator(q))
    k3 = np.kron(np.kron(k, k), k)
    const = [c * (q**2 + q + 1) for c in range(q)]  # flat indices of (c, c, c)
    brute = k3[const].mean(0)
    states = torch.cartesian_prod(*[torch.arange(q)] * d)
    ours = source_log_terminal("delta", states, make_noise("log_linear", g, alpha).integral(t0, 1.0), q)
    np.testing.assert_allclose(ours.exp().numpy(), brute, rtol=1e-12)
    uniform = source_log_terminal("uniform", states, gamma, q)
    np.testing.assert_allclose(uniform.exp().numpy(), q**-d, rtol=1e-14)
    assert float((ours.exp() - uniform.exp()).abs().max()) > 0.01  # the two laws differ here
    x0 = sample_source("delta", 3000, d, q, generator=torch.Generator().manual_seed(0))
    assert bool((x0 == x0[:, :1]).all())  # constant configurations
    assert chi2_gof_pvalue(np.bincount(x0[:, 0].numpy(), minlength=q), np.full(q, 1 / q)) > 1e-4


def test_source_resolution():
    assert resolve_source(Ising(L=3, beta=0.4)) == ("delta", 0.5)
    assert resolve_source(Ising(L=3, beta=0.4, h=0.1)) == ("uniform", 0.05)
    assert resolve_source(Potts(L=3, q=3, beta=1.0)) == ("delta", 0.5)
    assert resolve_source(Potts(L=3, q=3, beta=1.0), corrector_loss="tm") == ("uniform", 0.05)
    generic = Energy.from_function(lambda x: x.double().sum(1), Sequence(4, "AC"), name="lin")
    assert resolve_source(generic) == ("uniform", 0.05)
    assert resolve_source(generic, "delta", noise_alpha=0.2) == ("delta", 0.2)


def test_delta_source_terminal_score_matches_differences():
    q, d, gamma = 3, 5, torch.tensor(0.9, dtype=torch.float64)
    x = torch.randint(0, q, (6, d), generator=torch.Generator().manual_seed(1))
    score = source_log_terminal_score("delta", x, gamma, q)
    base = source_log_terminal("delta", x, gamma, q)
    for site in range(d):
        for n in range(q):
            y = x.clone()
            y[:, site] = n
            np.testing.assert_allclose(score[:, site, n].numpy(),
                                       (source_log_terminal("delta", y, gamma, q) - base).numpy(), atol=1e-12)
    assert float(score.abs().max()) > 0.1
    assert float(source_log_terminal_score("uniform", x, gamma, q).abs().max()) == 0.0


def test_closed_form_corrector_is_the_exact_bridge_for_the_delta_source():
    """Delta source + a target invariant under x -> x + c: the h-transform of the reference
    with terminal h_1 = pi / p^r_1 (controller target = score of pi minus score of p^r_1) ends
    exactly at pi, with constant path weights. Negative controls: h_1 = pi (no corrector), and
    a target with a field (not shift invariant)."""
    q, d, g, alpha = 3, 3, 1.0, 0.5
    gamma = _rate_integral(g, alpha, 0.0, 1.0)
    k = linalg.expm(gamma * _generator(q))
    k3 = np.kron(np.kron(k, k), k)
    states = torch.cartesian_prod(*[torch.arange(q)] * d)
    p1 = source_log_terminal("delta", states, torch.tensor(gamma, dtype=torch.float64), q).exp().numpy()
    const = [c * (q**2 + q + 1) for c in range(q)]

    def end_law(pi, h1):
        h0 = k3[const] @ h1  # h_0 at the q source states
        return (k3[const] / h0[:, None]).mean(0) * h1, h0

    ring = (states == torch.roll(states, 1, 1)).double().sum(1).numpy()  # Potts ring, shift invariant
    field = 0.7 * (states == 0).double().sum(1).numpy()
    for log_pi, invariant in ((0.9 * ring, True), (0.9 * ring + field, False)):
        pi = np.exp(log_pi) / np.exp(log_pi).sum()
        law, h0 = end_law(pi, pi / p1)
        if invariant:
            np.testing.assert_allclose(law, pi, rtol=1e-10)
            np.testing.assert_allclose(h0, h0[0], rtol=1e-12)  # constant weights h_0(x_0)
            wrong, _ = end_law(pi, pi)
            assert float(np.abs(wrong - pi).max()) > 1e-2
        else:
            assert float(np.abs(law - pi).max()) > 1e-3


def test_delta_source_weights_unbiased_for_random_network():
    """E[w] = Z for an untrained, randomly perturbed controller started from the delta source;
    the uniform source's normalizer (D log q) in its place is rejected."""
    target = Potts(L=3, q=3, beta=0.3)
    sampler = DiscreteASBS(device="cpu", seed=0, progress=False, n_time_steps=6, net="cnn", hidden=16,
                           n_layers=1, sample_batch_size=6000, source="delta", noise_alpha=0.5)
    sampler._attach(target)
    sampler._setup(sampler.target)
    net = sampler.ema_controller.shadow
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in list(net.net.head.parameters()) + list(net.net.time.film.parameters()):
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    path, lw = sampler.sample_paths(12_000)
    assert bool((path.x0 == path.x0[:, :1]).all())
    assert float(path.log_ratio.std()) > 0.3, "the proposal is too close to the reference"
    exact = target.exact_log_z()
    _z_ratio_checks(lw, exact, 9 * math.log(3), "Z_hat / Z (delta source)")
    gamma = sampler.noise.integral(0.0, 1.0)
    log_p1 = source_log_terminal("delta", path.x1, gamma, 3)
    wrong = torch.exp(lw + log_p1 + 9 * math.log(3) - exact).numpy()  # uniform normalizer instead
    assert_rejects(wrong.mean(), wrong.std(ddof=1) / math.sqrt(wrong.size), 1.0,
                   what="Z_hat / Z with the uniform source's p^r_1")


DELTA_RECIPES = {
    # the paper's ordered-phase setting: reference with memory, corrector by denoising matching
    "dm": dict(n_stages=2, controller_steps=120, corrector_steps=30, corrector_loss="dm"),
    # the closed-form corrector (exact for this shift-invariant target), controller only
    "closed_form": dict(controller_steps=300, corrector_loss="closed_form"),
}


@pytest.fixture(scope="module", params=list(DELTA_RECIPES))
def ising3_delta(request):
    target = Ising(L=3, beta=0.6)
    sampler = _fit(target, source="delta", noise_alpha=0.5, warmup_steps=100, **DELTA_RECIPES[request.param])
    return target, sampler, sampler.sample(6000)


def test_delta_source_trained_log_z_and_modes(ising3_delta):
    target, sampler, res = ising3_delta
    exact = target.exact_log_z()
    assert res.diagnostics["source"] == "delta" and sampler.step == 300
    _check_log_z(res, exact, exact - math.log(2), "Ising 3x3 beta=0.6 log Z, delta source (one mode)")
    _check_log_z(res, exact, Ising(L=3, beta=0.63).exact_log_z(), "Ising 3x3 log Z (delta) vs beta=0.63")
    # the reference remembers x_0 here (Gamma = log 3), which caps the ESS of exact weights well
    # below 1 even at the exact bridge; still far above the untrained proposal's
    assert res.ess / res.n_samples > max(0.15, 20 * _uniform_ess_frac(target))
    frac_up, se = res.expectation(lambda x: (x.flatten(1).sum(1) > 0).double())
    assert_consistent(frac_up, se, 0.5, what="P(M > 0), delta source")
    assert_rejects(frac_up, se, 0.75, what="P(M > 0), delta source")


# ---------------------------------------------------------------------------- target pieces
@pytest.mark.parametrize("target", [Ising(L=3, beta=0.4, h=0.3), Ising(L=4, beta=0.7, J=-1.0),
                                    Potts(L=3, q=3, beta=0.9), Potts(L=4, q=4, beta=1.1, J=0.5)])
def test_discrete_score_matches_energy_differences(target):
    dom = target.domain
    x = torch.randint(0, dom.q, (7, dom.n_sites), generator=torch.Generator().manual_seed(0))
    closed = log_discrete_score(target, x)
    generic = log_discrete_score(Energy.from_function(target.energy, dom), x)  # brute force path
    np.testing.assert_allclose(closed.numpy(), generic.numpy(), rtol=0, atol=1e-10)
    u = target.energy(dom.decode(x.view(-1, *dom.event_shape))).double()
    for b, d, n in ((0, 0, 1), (3, 5, dom.q - 1), (6, dom.n_sites - 1, 0)):
        y = x[b].clone()
        y[d] = n
        u_y = target.energy(dom.decode(y.view(1, *dom.event_shape))).double()[0]
        assert float(closed[b, d, n]) == pytest.approx(float(u[b] - u_y), abs=1e-10)
    assert float(closed.gather(-1, x.unsqueeze(-1)).abs().max()) == 0.0


def test_bregman_divergences():
    la = torch.tensor([-1.0, 0.0, 2.0])
    lb = torch.tensor([0.5, 0.0, 1.0])
    a, b = la.exp(), lb.exp()
    torch.testing.assert_close(bregman_divergence(la, lb), a * torch.log(a / b) - a + b)
    torch.testing.assert_close(bregman_divergence(la, lb, "-logt"), a / b - torch.log(a / b) - 1)
    torch.testing.assert_close(bregman_divergence(la, lb, "t2"), (a - b) ** 2)
    assert float(bregman_divergence(la, la).abs().max()) < 1e-6
    with pytest.raises(ConfigError, match="Bregman"):
        bregman_divergence(la, lb, "kl")


# ---------------------------------------------------------------------------- trained samplers
def _check_log_z(res, exact, wrong, what):
    """log Z within its error bar (+ a Jensen bias budget), and power against ``wrong``
    (None: exact + 5 tolerances)."""
    bias = res.log_z_stderr**2 + 2e-3
    assert_consistent(res.log_z, res.log_z_stderr, exact, bias=bias, what=what)
    tol = z_limit() * res.log_z_stderr + bias
    wrong = exact + 5 * tol if wrong is None else wrong
    assert abs(wrong - exact) > 3 * tol, "negative control too close to the truth"
    assert_rejects(res.log_z, res.log_z_stderr, wrong, bias=bias, what=what)


def _check_histogram(res, target, statistic, wrong_target, what, seed=0):
    """Weight-resampled histogram of a statistic vs its exact pmf (chi-square), with power."""
    m = max(200, int(res.ess / 20))
    vals = torch.as_tensor(statistic(res.resample(m, seed=seed))).double().numpy()
    for tgt, should_pass in ((target, True), (wrong_target, False)):
        support, probs = exact_marginal_pmf(tgt, statistic)
        assert np.isin(vals, support).all(), f"{what}: sampled values outside the exact support"
        p = chi2_gof_pvalue(np.array([(vals == v).sum() for v in support]), probs)
        if should_pass:
            assert p > 1e-4, f"{what}: chi-square p = {p:.2g} against the exact distribution"
        else:
            assert p < 1e-4, f"{what}: negative control not rejected (p = {p:.2g})"


@pytest.fixture(scope="module")
def ising3():
    target = Ising(L=3, beta=0.6)  # ordered phase: two modes
    sampler = _fit(target, controller_steps=200, warmup_steps=100, source="uniform")
    return target, sampler, sampler.sample(6000)


@pytest.fixture(scope="module")
def potts3():
    target = Potts(L=3, q=3, beta=0.8)  # defaults: delta source, closed-form corrector
    sampler = _fit(target, controller_steps=200, warmup_steps=100)
    return target, sampler, sampler.sample(6000)


def _uniform_ess_frac(target):
    p = enumerate_states(target).log_probs.exp()
    return 1.0 / (p.numel() * float((p**2).sum()))


def test_ising3_log_z_ess_and_training(ising3):
    target, sampler, res = ising3
    exact = target.exact_log_z()
    _check_log_z(res, exact, exact - math.log(2), "Ising 3x3 beta=0.6 log Z (one mode)")
    _check_log_z(res, exact, Ising(L=3, beta=0.63).exact_log_z(), "Ising 3x3 log Z vs beta=0.63")
    # training beats the reference proposal (uniform x_1; ESS 0.005 here) by a wide margin
    assert res.ess / res.n_samples > max(0.25, 20 * _uniform_ess_frac(target))
    assert set(sampler.history) >= {"loss", "ess_frac", "log_z", "capped_frac", "energy_scale"}
    assert sampler.history["energy_scale"][0] == pytest.approx(0.3) and sampler.energy_scale() == 1.0
    assert res.diagnostics["nfe_per_sample"] == 20 and res.diagnostics["train_energy_evals"] > 0


def test_ising3_magnetization_histogram(ising3):
    target, _, res = ising3
    abs_m = lambda x: x.flatten(1).sum(1).abs()  # noqa: E731
    _check_histogram(res, target, abs_m, Ising(L=3, beta=0.3), "Ising 3x3 |M|")
    # both ordered states are populated (no mode collapse)
    frac_up, se = res.expectation(lambda x: (x.flatten(1).sum(1) > 0).double())
    assert_consistent(frac_up, se, 0.5, what="P(M > 0)")
    assert_rejects(frac_up, se, 0.75, what="P(M > 0)")


def test_potts3_log_z_and_energy_histogram(potts3):
    target, sampler, res = potts3
    assert sampler.source == "delta" and sampler.noise_alpha == 0.5
    exact = target.exact_log_z()
    _check_log_z(res, exact, Potts(L=3, q=3, beta=0.85).exact_log_z(), "Potts 3x3 log Z")
    assert res.ess / res.n_samples > max(0.25, 20 * _uniform_ess_frac(target))
    energy = lambda x: torch.round(target.energy(x) * 1e4).double() / 1e4  # noqa: E731
    _check_histogram(res, target, energy, Potts(L=3, q=3, beta=0.5), "Potts 3x3 energy")


def test_clock_energy_generic_score():
    """A generic categorical energy (4-state clock model): brute-force discrete score."""
    dom = Lattice((3, 3), 4)

    def clock(x):
        c = lambda a, b: torch.cos(0.5 * math.pi * (a - b).double())  # noqa: E731
        return -0.4 * (c(x, torch.roll(x, 1, 1)) + c(x, torch.roll(x, 1, 2))).flatten(1).sum(1)

    target = Energy.from_function(clock, dom, name="clock")
    sampler = _fit(target, controller_steps=60, warmup_steps=30)
    # every refresh: one energy per trajectory and 1 + D (q - 1) per discrete score
    assert sampler.n_energy_evals == sampler.n_score_evals * (2 + 9 * 3) > 0
    res = sampler.sample(4000)
    exact = enumerate_states(target).log_z
    _check_log_z(res, exact, None, "clock 3x3 log Z")
    assert res.ess / res.n_samples > 2 * _uniform_ess_frac(target)


@pytest.mark.parametrize("losses", [("tm", "tm"), ("dm", "dm")])
def test_corrector_alternation(losses):
    """Controller / corrector phases alternate on fresh buffers; weights stay exact."""
    target = Ising(L=3, beta=0.2)
    ctrl, corr = losses
    sampler = _fit(target, n_stages=2, controller_steps=10, corrector_steps=5, controller_loss=ctrl,
                   corrector_loss=corr, warmup_steps=0, noise_alpha=0.5, resample_every=4)
    assert sampler.step == 30
    phase = np.asarray(sampler.history["phase"])
    assert phase[:10].sum() == 0 and phase[10:15].all() and phase[15:25].sum() == 0 and phase[25:].all()
    assert sampler.phase(22) == (1, "controller", 7, 10)
    assert len(sampler.buffer) <= sampler.config.buffer_size
    assert (sampler.n_score_evals > 0) == (ctrl == "tm")
    x = torch.randint(0, 2, (4, 9))
    with torch.no_grad():
        assert float(sampler.corrector(x).abs().max()) > 0  # trained (it starts at exactly 0)
    assert all(map(math.isfinite, sampler.history["loss"]))
    res = sampler.sample(4000)
    exact = target.exact_log_z()
    _check_log_z(res, exact, None, f"Ising 3x3 log Z ({ctrl}/{corr})")


# ---------------------------------------------------------------------------- plumbing
TINY = dict(n_stages=1, controller_steps=3, corrector_steps=3, corrector_loss="tm", warmup_steps=3,
            batch_size=8, buffer_size=16,
            n_replicates=2, resample_every=2, n_time_steps=4, hidden=8, n_layers=1, n_heads=1)


@pytest.mark.filterwarnings("ignore::boltzkit.errors.UnreliableEstimateWarning")  # tiny runs
def test_same_seed_same_result_and_checkpoint_resume(tmp_path):
    target = Ising(L=3, beta=0.4)
    runs = [DiscreteASBS(device="cpu", seed=5, progress=False, **TINY).fit(target) for _ in range(2)]
    a, b = (r.sample(64) for r in runs)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.log_weights, b.log_weights)
    # interrupted after 4 steps (mid corrector phase) and resumed = uninterrupted
    ckpt = tmp_path / "dasbs.pt"
    DiscreteASBS(device="cpu", seed=5, progress=False, **TINY).fit(target, n_steps=4, checkpoint=ckpt)
    resumed = DiscreteASBS(device="cpu", seed=5, progress=False, **TINY).fit(target, checkpoint=ckpt)
    assert resumed.step == 6
    c = resumed.sample(64)
    assert torch.equal(a.samples, c.samples) and torch.equal(a.log_weights, c.log_weights)
    assert runs[0].history["loss"] == resumed.history["loss"]


@pytest.mark.filterwarnings("ignore::boltzkit.errors.UnreliableEstimateWarning")  # tiny runs
def test_registry_and_bk_sample():
    target = Ising(L=3, beta=0.3)
    assert bk.select(target).name == "mdns"  # by priority; on a CPU within a budget, lattice SMC
    assert bk.explain(target, file=open("/dev/null", "w"), device="cpu").startswith("boltzkit would use 'smc'")
    res = bk.sample(target, method="discrete_asbs", n_samples=500, seed=0, device="cpu", **TINY)
    assert res.method == "discrete_asbs" and res.samples.shape == (500, 3, 3)
    assert set(res.samples.unique().tolist()) <= {-1.0, 1.0}
    assert res.log_z is not None and res.log_weights.dtype == torch.float64
    # a convolutional backbone, and an open sequence domain (absolute positions)
    res = bk.sample(target, method="discrete_asbs", n_samples=200, seed=0, device="cpu",
                    **{**TINY, "net": "cnn"})
    assert torch.isfinite(res.log_weights).all()
    seq = Energy.from_function(lambda x: -0.5 * (x[:, 1:] == x[:, :-1]).double().sum(1),
                               Sequence(5, "ACG"), name="chain")
    res = bk.sample(seq, method="discrete_asbs", n_samples=4000, seed=0, device="cpu", **TINY)
    assert res.samples.shape == (4000, 5)
    _check_log_z(res, enumerate_states(seq).log_z, None, "sequence log Z")


def test_bad_inputs():
    with pytest.raises(ConfigError, match="unknown option"):
        DiscreteASBS(n_stage=3)
    with pytest.raises(ConfigError, match="buffer_size"):
        DiscreteASBS(batch_size=64, buffer_size=32)
    with pytest.raises(ConfigError, match="corrector_loss"):
        DiscreteASBS(corrector_loss="xx")
    with pytest.raises(ConfigError, match="t0"):
        DiscreteASBS(t0=1.0)
    with pytest.raises(ConfigError, match="max_jump"):
        DiscreteASBS(max_jump=1.0)
    with pytest.raises(ConfigError, match="source"):
        DiscreteASBS(source="dirac")
    with pytest.raises(ConfigError, match="corrector_loss='closed_form'"):
        DiscreteASBS(source="delta", corrector_loss="tm")
    with pytest.raises(ConfigError, match="closed_form"):
        DiscreteASBS(corrector_loss="exact")
    with pytest.raises(IncompatibleMethodError):
        bk.sample(Gaussian([0.0, 0.0]), method="discrete_asbs", n_samples=10)
    sampler = DiscreteASBS(device="cpu", seed=0, progress=False, **TINY)
    with pytest.raises(ConfigError, match="before fit"):
        sampler.sample(10)
    target = Ising(L=3, beta=0.3)
    sampler.fit(target)
    with torch.no_grad():
        next(sampler.ema_controller.shadow.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDivergedError):
        sampler.sample(10)
