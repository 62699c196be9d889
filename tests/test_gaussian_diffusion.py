"""Gaussian diffusion utilities against exact Gaussian oracles.

For data x0 ~ N(mu, Sigma) every quantity is closed form: x_t ~ N(sqrt(a) mu, S_t) with
S_t = a Sigma + (1 - a) I (a = abar_t), the exact noise predictor is
eps*(x, t) = sqrt(1 - a) S_t^{-1} (x - sqrt(a) mu), and E[x0 | x_t] is affine in x_t. Plugging the
exact predictor into a sampler makes every step affine-Gaussian, so the law of the sampler's
output is computed here by an independent mean/covariance recursion written from the DDPM and
DDIM papers (not from the module). The tests check

* sample moments against that exact discrete-time law (no tolerance beyond Monte-Carlo error);
* sample moments against the target N(mu, Sigma), allowing exactly the discretization gap;
* the training losses and the variational-bound term against their closed forms;
* a negative control in each test (a wrong truth must be rejected).
"""

import math

import numpy as np
import pytest
import torch

from boltzkit.errors import ConfigError
from boltzkit.nn.gaussian_diffusion import (GaussianDiffusion, beta_schedule,
                                                          space_timesteps)
from _stats import ALPHA, assert_consistent, assert_rejects, consistent

T = 1000
D = 5


def _linear_abar():
    betas = np.linspace(1e-4, 0.02, T)  # DDPM's schedule, written out independently
    return np.cumprod(1.0 - betas)


ABAR = _linear_abar()


@pytest.fixture(scope="module")
def gaussian():
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    lam = np.exp(np.linspace(np.log(0.2), np.log(3.0), D))
    sigma = (q * lam) @ q.T
    mu = rng.normal(0.0, 1.5, D)
    return mu, sigma


def _oracle(mu, sigma, parametrization="eps", v_value=None):
    """Exact predictor model(x, t) for N(mu, Sigma) data; mu may be (B, D) (conditional)."""
    cache = {}
    sig = torch.as_tensor(sigma)

    def mats(t):
        if t not in cache:
            a = ABAR[t]
            s_inv = np.linalg.inv(a * sigma + (1 - a) * np.eye(D))
            cache[t] = (a, torch.as_tensor(s_inv))
        return cache[t]

    def model(x, t):
        ti = int(t[0])
        assert bool((t == ti).all())
        a, s_inv = mats(ti)
        m = torch.as_tensor(mu, dtype=x.dtype)
        r = (x - math.sqrt(a) * m) @ s_inv.to(x.dtype)  # S^{-1}(x - sqrt(a) mu), symmetric
        eps = math.sqrt(1 - a) * r
        x0 = m + math.sqrt(a) * r @ sig.to(x.dtype)
        pred = {"eps": eps, "x0": x0, "v": math.sqrt(a) * eps - math.sqrt(1 - a) * x0}[parametrization]
        if v_value is None:
            return pred
        return torch.stack([pred, torch.full_like(pred, v_value)], dim=1)

    return model


def _exact_sampler_law(mu, sigma, n_steps, method, variance="fixed_small", eta=0.0):
    """Mean and covariance of the sampler output with the exact predictor (x_T ~ N(0, I))."""
    keep = np.unique(np.round(np.linspace(0, T - 1, n_steps)).astype(int))
    ab = ABAR[keep]
    ab_prev = np.append(1.0, ab[:-1])
    m, c = np.zeros(D), np.eye(D)
    eye = np.eye(D)
    for i in range(len(keep) - 1, -1, -1):
        a, ap = ab[i], ab_prev[i]
        beta = 1 - a / ap
        gain = math.sqrt(a) * sigma @ np.linalg.inv(a * sigma + (1 - a) * eye)  # E[x0|x]: mu + gain (x - sqrt(a) mu)
        x0_a, x0_b = gain, mu - math.sqrt(a) * gain @ mu                           # x0_hat = x0_a x + x0_b
        if method == "ancestral":
            c0, c1 = beta * math.sqrt(ap) / (1 - a), (1 - ap) * math.sqrt(1 - beta) / (1 - a)
            A, b = c0 * x0_a + c1 * eye, c0 * x0_b
            var = beta * (1 - ap) / (1 - a) if variance == "fixed_small" else beta
            var = 0.0 if i == 0 else var  # the last step returns the mean
        else:
            sig2 = eta ** 2 * (1 - ap) / (1 - a) * (1 - a / ap)
            ke = math.sqrt(max(1 - ap - sig2, 0.0)) / math.sqrt(1 - a)  # eps_hat = (x - sqrt(a) x0_hat) / sqrt(1-a)
            A = math.sqrt(ap) * x0_a + ke * (eye - math.sqrt(a) * x0_a)
            b = math.sqrt(ap) * x0_b - ke * math.sqrt(a) * x0_b
            var = 0.0 if i == 0 else sig2
        m = A @ m + b
        c = A @ c @ A.T + var * eye
    return m, c


def _moment_stats(x):
    """[(name, estimate, stderr)] for every mean and covariance entry of samples x (n, D)."""
    x = x.double().numpy()
    n = x.shape[0]
    xc = x - x.mean(0)
    out = [(f"mean[{j}]", x[:, j].mean(), x[:, j].std(ddof=1) / math.sqrt(n)) for j in range(D)]
    for j in range(D):
        for k in range(j, D):
            prod = xc[:, j] * xc[:, k]
            out.append((f"cov[{j},{k}]", prod.mean() * n / (n - 1), prod.std(ddof=1) / math.sqrt(n)))
    return out


def _values(m, c):
    return [m[j] for j in range(D)] + [c[j, k] for j in range(D) for k in range(j, D)]


def _check_all(stats, truth, bias=None):
    alpha = ALPHA / len(stats)
    bias = [0.0] * len(stats) if bias is None else bias
    for (name, est, se), tv, bv in zip(stats, truth, bias):
        assert_consistent(est, se, tv, alpha=alpha, bias=bv, what=name)


def _any_rejects(stats, wrong, bias=None):
    alpha = ALPHA / len(stats)
    bias = [0.0] * len(stats) if bias is None else bias
    return any(not consistent(est, se, tv, alpha=alpha, bias=bv)
               for (_, est, se), tv, bv in zip(stats, wrong, bias))


# ---------------------------------------------------------------------------- schedules
def test_schedules_and_respacing_are_exact():
    lin = beta_schedule("linear", T)
    assert lin[0] == pytest.approx(1e-4) and lin[-1] == pytest.approx(0.02)
    assert beta_schedule("linear", 100)[-1] == pytest.approx(0.2)  # scaled by 1000 / T
    cos = beta_schedule("cosine", T)
    f = lambda s: math.cos((s / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert np.cumprod(1 - cos)[499] == pytest.approx(f(500) / f(0), rel=1e-9)
    proc = GaussianDiffusion(lin)
    np.testing.assert_allclose(proc.alphas_cumprod, ABAR, rtol=1e-12)
    sub = proc.respaced(50)
    keep = space_timesteps(T, 50)
    assert keep[0] == 0 and keep[-1] == T - 1 and len(keep) == 50
    np.testing.assert_allclose(sub.alphas_cumprod, ABAR[keep], rtol=1e-12)  # same marginals
    np.testing.assert_array_equal(sub.timestep_map, keep)
    with pytest.raises(AssertionError):  # negative control: a shifted grid has other marginals
        np.testing.assert_allclose(sub.alphas_cumprod, ABAR[np.minimum(keep + 5, T - 1)], rtol=1e-6)


# ---------------------------------------------------------------------------- losses
@pytest.mark.parametrize("parametrization", ["eps", "x0", "v"])
def test_training_mse_of_the_exact_predictor(gaussian, parametrization):
    mu, sigma = gaussian
    proc = GaussianDiffusion(beta_schedule("linear", T), parametrization=parametrization)
    gen = torch.Generator().manual_seed(1)
    n = 20000
    L = np.linalg.cholesky(sigma)
    model = _oracle(mu, sigma, parametrization)
    for ti in (30, 400, 950):
        x0 = torch.as_tensor(mu + torch.randn(n, D, generator=gen, dtype=torch.float64).numpy() @ L.T)
        t = torch.full((n,), ti, dtype=torch.long)
        noise = torch.randn(n, D, generator=gen, dtype=torch.float64)
        mse = proc.training_losses(model, x0, t, noise)["mse"].numpy()
        a = ABAR[ti]
        post_cov = sigma - a * sigma @ np.linalg.inv(a * sigma + (1 - a) * np.eye(D)) @ sigma
        tr = np.trace(post_cov) / D  # E|x0 - E[x0|x_t]|^2 / D
        exact = {"eps": a / (1 - a) * tr, "x0": tr, "v": tr / (1 - a)}[parametrization]
        se = mse.std(ddof=1) / math.sqrt(n)
        assert_consistent(mse.mean(), se, exact, what=f"{parametrization} mse at t={ti}")
        assert_rejects(mse.mean(), se, 1.1 * exact, what=f"{parametrization} mse at t={ti}")


def test_vb_term_closed_form_at_the_variance_end_points(gaussian):
    mu, sigma = gaussian
    proc = GaussianDiffusion(beta_schedule("linear", T), variance="learned_range")
    gen = torch.Generator().manual_seed(2)
    n = 20000
    L = np.linalg.cholesky(sigma)
    for ti in (0, 200, 700):
        a, ap = ABAR[ti], (ABAR[ti - 1] if ti > 0 else 1.0)
        beta = 1 - a / ap
        post = beta * (1 - ap) / (1 - a) if ti > 0 else None
        post_clip = post if ti > 0 else (1 - ABAR[1] / ABAR[0]) * (1 - ABAR[0]) / (1 - ABAR[1])
        c0 = beta * math.sqrt(ap) / (1 - a)
        post_cov = sigma - a * sigma @ np.linalg.inv(a * sigma + (1 - a) * np.eye(D)) @ sigma
        err2 = c0 ** 2 * np.trace(post_cov) / D  # E|q_mean - p_mean|^2 / D
        for v, var in ((-1.0, post_clip), (1.0, beta)):
            x0 = torch.as_tensor(mu + torch.randn(n, D, generator=gen, dtype=torch.float64).numpy() @ L.T)
            t = torch.full((n,), ti, dtype=torch.long)
            noise = torch.randn(n, D, generator=gen, dtype=torch.float64)
            vb = proc.training_losses(_oracle(mu, sigma, "eps", v_value=v), x0, t, noise)["vb"].numpy()
            if ti == 0:  # Gaussian NLL of x0 under N(x0_hat, var)
                exact = 0.5 * (math.log(2 * math.pi * var) + err2 / var)
            else:
                exact = 0.5 * (math.log(var / post) + post / var - 1 + err2 / var)
            se = vb.std(ddof=1) / math.sqrt(n)
            assert_consistent(vb.mean(), se, exact, what=f"vb at t={ti}, v={v}")
            wrong = exact + max(0.2 * abs(exact), 20 * se)
            assert_rejects(vb.mean(), se, wrong, what=f"vb at t={ti}, v={v}")


# ---------------------------------------------------------------------------- samplers
CASES = [  # method, steps, parametrization, variance, eta, wrong-law variant for the control
    ("ancestral", 100, "eps", "fixed_small", 0.0, ("ancestral", "fixed_large", 0.0)),
    ("ancestral", 100, "x0", "fixed_large", 0.0, ("ancestral", "fixed_small", 0.0)),
    ("ancestral", 200, "v", "fixed_small", 0.0, ("ancestral", "fixed_large", 0.0)),
    ("ddim", 100, "v", "fixed_small", 0.0, ("ancestral", "fixed_small", 0.0)),
    ("ddim", 50, "eps", "fixed_small", 1.0, ("ddim", "fixed_small", 0.0)),
]


@pytest.mark.parametrize("method,steps,parametrization,variance,eta,wrong", CASES)
def test_sampler_with_exact_predictor_matches_gaussian(gaussian, method, steps, parametrization,
                                                       variance, eta, wrong):
    mu, sigma = gaussian
    proc = GaussianDiffusion(beta_schedule("linear", T), parametrization=parametrization, variance=variance)
    n = 10000
    x = proc.sample(_oracle(mu, sigma, parametrization), (n, D), method=method, n_steps=steps, eta=eta,
                    generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    stats = _moment_stats(x)
    m, c = _exact_sampler_law(mu, sigma, steps, method, variance, eta)
    # 1. exactly the law of the discrete sampler
    _check_all(stats, _values(m, c))
    # 2. the target N(mu, Sigma), up to the sampler's own discretization gap
    truth = _values(mu, sigma)
    gap = [abs(u - w) for u, w in zip(_values(m, c), truth)]
    _check_all(stats, truth, bias=gap)
    # negative controls: another sampler's law, and a 10% wider target
    wm, wc = _exact_sampler_law(mu, sigma, steps, wrong[0], wrong[1], wrong[2])
    assert _any_rejects(stats, _values(wm, wc)), "the wrong sampler law was not rejected"
    assert _any_rejects(stats, _values(mu, 1.1 * sigma), bias=gap), "a wrong covariance was not rejected"


def test_learned_range_end_points_equal_the_fixed_variances(gaussian):
    mu, sigma = gaussian
    betas = beta_schedule("linear", T)

    def draw(variance, v_value=None):
        return GaussianDiffusion(betas, variance=variance).sample(
            _oracle(mu, sigma, v_value=v_value), (500, D), n_steps=20,
            generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    large, small = draw("learned_range", 1.0), draw("learned_range", -1.0)
    np.testing.assert_allclose(large.numpy(), draw("fixed_large").numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(small.numpy(), draw("fixed_small").numpy(), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(large, small)  # negative control: the end points differ


def test_conditional_gaussian_oracle():
    """x | y ~ N(A y + b, Sigma): each row carries its own condition through the closure."""
    rng = np.random.default_rng(7)
    A, b = rng.normal(size=(D, 2)), rng.normal(size=D)
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    sigma = (q * np.linspace(0.3, 1.5, D)) @ q.T
    ys = np.array([[0.0, 0.0], [1.5, -1.0], [-2.0, 0.5]])
    n_per = 4000
    rows_mu = np.repeat(ys @ A.T + b, n_per, axis=0)  # (3 n, D) conditional means, rows grouped
    proc = GaussianDiffusion(beta_schedule("linear", T))
    x = proc.sample(_oracle(rows_mu, sigma), (len(rows_mu), D), n_steps=100,
                    generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    for g, y in enumerate(ys):
        stats = _moment_stats(x[g * n_per:(g + 1) * n_per])
        m, c = _exact_sampler_law(A @ y + b, sigma, 100, "ancestral")
        _check_all(stats, _values(m, c))
        truth = _values(A @ y + b, sigma)
        _check_all(stats, truth, bias=[abs(u - w) for u, w in zip(_values(m, c), truth)])
        # negative control: the law of another condition
        other = ys[(g + 1) % len(ys)]
        wm, wc = _exact_sampler_law(A @ other + b, sigma, 100, "ancestral")
        assert _any_rejects(stats, _values(wm, wc))


def test_bad_input_is_refused():
    with pytest.raises(ConfigError, match="schedule"):
        beta_schedule("quadratic", 100)
    with pytest.raises(ConfigError, match="n_timesteps >= 20"):
        beta_schedule("linear", 10)
    with pytest.raises(ConfigError, match="parametrization"):
        GaussianDiffusion(beta_schedule("cosine", 10), parametrization="score")
    with pytest.raises(ConfigError, match="variance"):
        GaussianDiffusion(beta_schedule("cosine", 10), variance="learned")
    proc = GaussianDiffusion(beta_schedule("cosine", 10), variance="learned_range")
    with pytest.raises(ConfigError, match=r"expected \(4, 2, 3\)"):
        proc.sample(lambda x, t: x, (4, 3))
    with pytest.raises(ConfigError, match="sampling steps"):
        proc.respaced(11)
    with pytest.raises(ConfigError, match="sampler"):
        proc.sample(lambda x, t: torch.stack([x, x], 1), (4, 3), method="euler")


@pytest.mark.parametrize("grad_clip", ["x", float("inf"), float("nan"), 0.0, -1.0])
def test_shared_training_options_refuse_a_bad_grad_clip(grad_clip):
    """``check_training_options`` (every trained model's lr/EMA/clip check) names a non-numeric or
    non-finite grad_clip as a ConfigError, as it does a non-positive one."""
    from boltzkit.bio.spatial.stem import StemConfig
    from boltzkit.samplers.mdns import MDNSConfig

    for config in (StemConfig, MDNSConfig):
        with pytest.raises(ConfigError, match="grad_clip"):
            config(grad_clip=grad_clip)
    StemConfig(grad_clip=None), MDNSConfig(grad_clip=2.5)  # accepted
