"""Shared SDE machinery: Euler-Maruyama, exact discrete path weights, lean adjoint, buffer.

Exact truths used here: Gaussian marginals of linear chains (closed form), the Brownian
reference whose time-1 law equals the target, the Girsanov closed form of the Brownian
path weight, the Gaussian log Z of an annealing endpoint, and autograd through an unrolled
Euler chain.
"""

import math

import pytest
import torch

from boltzkit.domains.particles import ParticleCloud
from boltzkit.errors import ConfigError
from boltzkit.estimators.importance import log_z_from_log_weights
from boltzkit.nn.buffers import ReplayBuffer
from boltzkit.nn.sde import (brownian_bridge_kernel, euler_maruyama, gaussian_log_prob,
                                           grad_and_hvp, lean_adjoint, path_log_weight,
                                           reversed_reference_kernel, state_space, time_grid, vjp)

from _stats import assert_consistent, assert_rejects

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_time_grid():
    t = time_grid(8)
    assert t.dtype == F64 and t.shape == (9,) and t[0] == 0 and t[-1] == 1
    assert torch.allclose(t[1:] - t[:-1], torch.full((8,), 1 / 8, dtype=F64))
    r = time_grid(8, refine_end=2.0)
    steps = r[1:] - r[:-1]
    assert bool((steps[1:] < steps[:-1]).all())  # finer near t = 1
    with pytest.raises(ConfigError, match="positive integer"):
        time_grid(0)
    with pytest.raises(ConfigError, match="refine_end"):
        time_grid(4, refine_end=0.5)


# ----------------------------------------------------------------------------- exact weights
def _linear_chain_marginals(m0, v0, ts, lam, c, g):
    """Means / variances of the Euler chain x' = x + h (-lam(t) x + c(t)) + g(t) sqrt(h) eps."""
    ms, vs = [m0], [v0]
    for k in range(len(ts) - 1):
        t, h = float(ts[k]), float(ts[k + 1] - ts[k])
        a = 1 - lam(t) * h
        ms.append(a * ms[-1] + h * c(t))
        vs.append(a * a * vs[-1] + g(t) ** 2 * h)
    return ms, vs


def test_linear_sde_path_weight_equals_log_z_exactly():
    # time-dependent linear drift and diffusion on a non-uniform grid; backward kernels = the
    # exact reversal of the chain, target = its exact time-K marginal => every log w = log Z
    d, n = 3, 64
    lam = lambda t: 0.8 + t          # noqa: E731
    c = lambda t: 0.5 - t            # noqa: E731
    g = lambda t: 1.0 + 0.5 * t      # noqa: E731
    ts = time_grid(12, refine_end=1.7)
    m0, v0 = 0.3, 0.6
    ms, vs = _linear_chain_marginals(m0, v0, ts, lam, c, g)
    t_index = {float(t): k for k, t in enumerate(ts)}

    def backward(t, t_next, x, x_next):
        k = t_index[t]
        h = t_next - t
        rho = (1 - lam(t) * h) * vs[k] / vs[k + 1]
        mean = ms[k] + rho * (x_next - ms[k + 1])
        return mean - x_next, vs[k] - rho * rho * vs[k + 1]

    x0 = m0 + math.sqrt(v0) * torch.randn(n, d, generator=gen(1), dtype=F64)
    path = euler_maruyama(lambda t, x: -lam(t) * x + c(t), g, x0, ts, generator=gen(2),
                          backward=backward)
    log_gamma = -0.5 * ((path.x - ms[-1]) ** 2).sum(-1) / vs[-1]
    lw = path_log_weight(log_gamma, path, gaussian_log_prob(x0 - m0, v0, d))
    log_z = 0.5 * d * math.log(2 * math.pi * vs[-1])
    assert torch.allclose(lw, torch.full_like(lw, log_z), atol=1e-10, rtol=0)
    # negative control: evaluating the forward kernel with g(t_{k+1}) breaks the identity
    path_bad = euler_maruyama(lambda t, x: -lam(t) * x + c(t), lambda t: g(t + 1e-1), x0, ts,
                              generator=gen(2), backward=backward)
    lw_bad = path_log_weight(-0.5 * ((path_bad.x - ms[-1]) ** 2).sum(-1) / vs[-1], path_bad,
                             gaussian_log_prob(x0 - m0, v0, d))
    assert float((lw_bad - log_z).abs().max()) > 1e-2


@pytest.mark.parametrize("domain", [None, ParticleCloud(4, 3)])
@pytest.mark.parametrize("schedule", ["constant", "variance_exploding"])
def test_brownian_reference_equal_to_target_gives_constant_weights(domain, schedule):
    # Brownian motion from the origin whose time-1 law N(0, s^2) is the target => log w = log Z.
    # Variance-exploding noise (g^2 = v', v(t) = s^2 (1 - r^-2t) / (1 - r^-2)) telescopes exactly
    # when each Euler step uses the exact variance increment v(t_{k+1}) - v(t_k).
    s, n, r = 1.7, 200, 100.0
    dim = 5 if domain is None else domain.event_numel
    project, n_dof = (None, dim) if domain is None else state_space(domain)
    ts = time_grid(10)
    if schedule == "constant":
        var, noise_var = (lambda t: s * s * t), None
    else:
        var = lambda t: s * s * (1 - r ** (-2 * t)) / (1 - r ** -2)  # noqa: E731
        noise_var = lambda t, t1: var(t1) - var(t)  # noqa: E731
    x0 = torch.zeros(n, dim, dtype=F64)
    path = euler_maruyama(lambda t, x: torch.zeros_like(x), lambda t: s, x0, ts, generator=gen(3),
                          project=project, n_dof=n_dof, noise_var=noise_var,
                          backward=brownian_bridge_kernel(var))
    if domain is not None:  # stays on the zero-centre-of-mass subspace
        assert float(domain.center_of_mass(path.x).abs().max()) < 1e-12
    lw = path_log_weight(-0.5 * (path.x ** 2).sum(-1) / s ** 2, path)
    log_z = 0.5 * n_dof * math.log(2 * math.pi * s * s)
    assert torch.allclose(lw, torch.full_like(lw, log_z), atol=1e-10, rtol=0)
    # negative control: counting all n*dim coordinates on the subspace shifts log Z
    if domain is not None:
        assert abs(0.5 * dim * math.log(2 * math.pi * s * s) - float(lw[0])) > 1.0
    # negative control: plain Euler variances g(t_k)^2 h with the VE bridge do not telescope
    if schedule == "variance_exploding":
        g = lambda t: math.sqrt(s * s * 2 * math.log(r) * r ** (-2 * t) / (1 - r ** -2))  # noqa: E731
        p2 = euler_maruyama(lambda t, x: torch.zeros_like(x), g, x0, ts, generator=gen(3),
                            project=project, n_dof=n_dof, backward=brownian_bridge_kernel(var))
        lw2 = path_log_weight(-0.5 * (p2.x ** 2).sum(-1) / s ** 2, p2)
        assert float(lw2.std()) > 0.1


def test_brownian_weight_matches_girsanov_closed_form():
    # controlled Brownian motion from a Dirac: the generic formula must equal
    # -E(x_K) - log p_1(x_K) - sum_k [g sqrt(h) u_k . eps_k + g^2 h |u_k|^2 / 2]
    s, n, d = 1.3, 100, 2
    ts = time_grid(16, refine_end=1.5)
    us = []

    def control(t, x):
        u = torch.sin(2 * x) + t
        us.append(u)
        return u

    energy = lambda x: ((x - 1) ** 4).sum(-1) + x[:, 0]  # noqa: E731
    path = euler_maruyama(lambda t, x: s * s * control(t, x), lambda t: s,
                          torch.zeros(n, d, dtype=F64), ts, generator=gen(4), record_noise=True,
                          backward=brownian_bridge_kernel(lambda t: s * s * t))
    lw = path_log_weight(-energy(path.x), path)
    hs = (ts[1:] - ts[:-1]).tolist()
    girs = sum(s * math.sqrt(h) * (u * e).sum(-1) + 0.5 * s * s * h * (u * u).sum(-1)
               for h, u, e in zip(hs, us, path.noise))
    closed = -energy(path.x) - gaussian_log_prob(path.x, s * s, d) - girs
    assert torch.allclose(lw, closed, atol=1e-9, rtol=0)


def test_annealed_langevin_weights_unbiased_with_arbitrary_control():
    # ULA annealing N(0, 1) -> N(m, s^2) with a nonzero, untrained control; reverse-ULA backward
    # kernels. E[w] = Z exactly at K = 6, so log Z_hat must match the Gaussian log Z.
    d, n, m, sd = 2, 20_000, torch.tensor([1.0, -0.5], dtype=F64), 0.6
    ts = time_grid(6)
    sig = 1.2

    def grad_u(t, x):
        return (1 - t) * x + t * (x - m) / sd ** 2

    ref_drift = lambda t, x: -0.5 * sig ** 2 * grad_u(t, x)  # noqa: E731
    drift = lambda t, x: ref_drift(t, x) + sig ** 2 * (0.7 * torch.sin(3 * x) + t)  # noqa: E731
    x0 = torch.randn(n, d, generator=gen(5), dtype=F64)
    path = euler_maruyama(drift, lambda t: sig, x0, ts, generator=gen(6),
                          backward=reversed_reference_kernel(ref_drift, lambda t: sig))
    lw = path_log_weight(-0.5 * ((path.x - m) ** 2).sum(-1) / sd ** 2, path,
                         gaussian_log_prob(x0, 1.0, d))
    est = log_z_from_log_weights(lw, warn=False)
    truth = d * math.log(sd) + 0.5 * d * math.log(2 * math.pi)
    assert_consistent(est.log_z, est.stderr, truth, bias=est.stderr ** 2)
    assert_rejects(est.log_z, est.stderr, truth + 0.1, bias=est.stderr ** 2)
    # negative control: a bookkeeping slip (forgetting the source density log mu(x_0)) must
    # be detected by the same check
    lw_b = path_log_weight(-0.5 * ((path.x - m) ** 2).sum(-1) / sd ** 2, path)
    est_b = log_z_from_log_weights(lw_b, warn=False)
    assert_rejects(est_b.log_z, est_b.stderr, truth, bias=est_b.stderr ** 2)


# ----------------------------------------------------------------------------- lean adjoint
def test_lean_adjoint_matches_autograd_through_unrolled_chain():
    # quadratic E with an anisotropic Hessian; reference drift of annealed Langevin, running
    # cost = AIS work increments c_k(x) = (b_{k+1} - b_k)(E - U_0)(x), terminal cost G
    torch.manual_seed(0)
    d, n, K = 3, 5, 7
    a_mat = torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, -0.2], [0.0, -0.2, 0.5]], dtype=F64)
    mu = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    E = lambda x: 0.5 * (((x - mu) @ a_mat) * (x - mu)).sum(-1)  # noqa: E731
    U0 = lambda x: 0.5 * (x * x).sum(-1)  # noqa: E731
    G = lambda x: (x ** 3).sum(-1) / 3  # noqa: E731
    beta = lambda t: t ** 2  # noqa: E731
    sig = lambda t: 1.0 + t  # noqa: E731

    def b(t, x):
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            u = (1 - beta(t)) * U0(xg) + beta(t) * E(xg)
            (gr,) = torch.autograd.grad(u.sum(), xg, create_graph=True)
        return -0.5 * sig(t) ** 2 * gr

    ts = time_grid(K, refine_end=1.3)
    noise = torch.randn(K, n, d, dtype=F64)
    x0 = torch.randn(n, d, dtype=F64)
    # reference trajectory (frozen noise, zero control)
    xs = [x0]
    for k in range(K):
        t, h = float(ts[k]), float(ts[k + 1] - ts[k])
        xs.append((xs[-1] + h * b(t, xs[-1]) + sig(t) * math.sqrt(h) * noise[k]).detach())
    xs = torch.stack(xs)

    def cost_grad(k, x):
        db = beta(float(ts[k + 1])) - beta(float(ts[k]))
        return db * ((x - mu) @ a_mat - x)

    adj = lean_adjoint(xs, ts, lambda t, x, v: vjp(lambda y: b(t, y), x, v),
                       cost_grad=cost_grad, terminal_grad=lambda x: x ** 2)
    for k0 in range(K + 1):  # autograd of the future cost through the unrolled chain
        xk = xs[k0].clone().requires_grad_(True)
        x, J = xk, torch.zeros(n, dtype=F64)
        for k in range(k0, K):
            t, h = float(ts[k]), float(ts[k + 1] - ts[k])
            x = x + h * b(t, x) + sig(t) * math.sqrt(h) * noise[k]
            J = J + (beta(float(ts[k + 1])) - beta(t)) * (E(x) - U0(x))
        J = J + G(x)
        (ref,) = torch.autograd.grad(J.sum(), xk)
        assert torch.allclose(adj[k0], ref, atol=1e-10, rtol=1e-10), k0
    # negative control: evaluating the Jacobian at the later grid point (the continuous-time
    # shortcut) is a different discretization and must not match exactly
    adj_late = lean_adjoint(xs, ts, lambda t, x, v: vjp(lambda y: b(t + 0.15, y), x, v),
                            cost_grad=cost_grad, terminal_grad=lambda x: x ** 2)
    assert float((adj_late[0] - adj[0]).abs().max()) > 1e-3


def test_grad_and_hvp_quadratic():
    a_mat = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=F64)
    x = torch.randn(4, 2, dtype=F64)
    v = torch.randn(4, 2, dtype=F64)
    g, hv = grad_and_hvp(lambda y: 0.5 * ((y @ a_mat) * y).sum(-1), x, v)
    assert torch.allclose(g, x @ a_mat) and torch.allclose(hv, v @ a_mat)
    g2, hv2 = grad_and_hvp(lambda y: 0.5 * ((y @ a_mat) * y).sum(-1), x, lambda gr: gr)
    assert torch.allclose(hv2, (x @ a_mat) @ a_mat)


# ----------------------------------------------------------------------------- integrator
def test_em_reproducible_and_recorded():
    ts = time_grid(5)
    dom = ParticleCloud(3, 2)
    project, n_dof = state_space(dom)
    assert n_dof == 4 and state_space(type("R", (), {"event_numel": 3})())[1] == 3
    x0 = dom.reference(7, generator=gen(0))
    run = lambda: euler_maruyama(lambda t, x: -x + 1.0, lambda t: 0.5, x0, ts,  # noqa: E731
                                 generator=gen(9), project=project, n_dof=n_dof, record=True,
                                 record_noise=True)
    p1, p2 = run(), run()
    assert torch.equal(p1.x, p2.x) and torch.equal(p1.log_fwd, p2.log_fwd)
    assert p1.xs.shape == (6, 7, 6) and p1.noise.shape == (5, 7, 6) and p1.log_bwd is None
    assert float(dom.center_of_mass(p1.xs.reshape(-1, 6)).abs().max()) < 1e-5  # drift projected
    p3 = euler_maruyama(lambda t, x: -x + 1.0, lambda t: 0.5, x0, ts, generator=gen(10),
                        project=project, n_dof=n_dof)
    assert not torch.equal(p1.x, p3.x)


def test_em_bad_inputs():
    x0 = torch.zeros(3, 2)
    f, g = (lambda t, x: x), (lambda t: 1.0)
    with pytest.raises(ConfigError, match="strictly increasing"):
        euler_maruyama(f, g, x0, torch.tensor([0.0, 0.5, 0.5, 1.0]), generator=gen())
    with pytest.raises(ConfigError, match="1-D tensor"):
        euler_maruyama(f, g, x0, [0.0, 1.0], generator=gen())
    with pytest.raises(ConfigError, match=r"\(batch, dim\)"):
        euler_maruyama(f, g, torch.zeros(2), time_grid(2), generator=gen())
    with pytest.raises(ConfigError, match="diffusion"):
        euler_maruyama(f, lambda t: 0.0, x0, time_grid(2), generator=gen())
    path = euler_maruyama(f, g, x0, time_grid(2), generator=gen())
    with pytest.raises(ConfigError, match="backward"):
        path_log_weight(torch.zeros(3), path)


# ----------------------------------------------------------------------------- replay buffer
def test_tensor_replay_buffer_ring_and_state():
    buf = ReplayBuffer(5, replace=True)
    buf.add(t=torch.arange(3.0), x=torch.arange(6.0).reshape(3, 2))
    buf.add(t=torch.arange(3.0, 7.0), x=torch.arange(6.0, 14.0).reshape(4, 2))
    assert len(buf) == 5
    kept = sorted(buf.get()["t"].tolist())
    assert kept == [2.0, 3.0, 4.0, 5.0, 6.0]  # oldest two dropped
    rows = buf.get()
    assert torch.equal(rows["x"][:, 0], 2 * rows["t"])  # rows stay aligned
    b = buf.sample(50, generator=gen(0))
    assert b["x"].shape == (50, 2) and set(b["t"].tolist()) <= set(kept)
    state = buf.state_dict()
    buf2 = ReplayBuffer(1, replace=True)
    buf2.load_state_dict(state)
    assert torch.equal(buf2.sample(9, generator=gen(3))["t"], buf.sample(9, generator=gen(3))["t"])
    buf.add(t=torch.arange(20.0), x=torch.zeros(20, 2))  # more than capacity: newest kept
    assert sorted(buf.get()["t"].tolist()) == [15.0, 16.0, 17.0, 18.0, 19.0]
    with pytest.raises(ConfigError, match="fields"):
        buf.add(t=torch.zeros(2))
    with pytest.raises(ConfigError, match="leading"):
        buf.add(t=torch.zeros(2), x=torch.zeros(3, 2))
    with pytest.raises(ConfigError, match="row shape"):
        buf.add(t=torch.zeros(2), x=torch.zeros(2, 3))
    with pytest.raises(ConfigError, match="empty"):
        ReplayBuffer(3, replace=True).sample(2, generator=gen())
    with pytest.raises(ConfigError, match="capacity"):
        ReplayBuffer(0)
