"""Prior hints (``Energy.prior_hint``): the affine frame algebra and the continuous samplers
(NAAS, PDNS, AIS, MALA) working in a target's standardized coordinates.

Exact truths: closed-form Gaussian log Z and moments of a target far from the origin with an
anisotropic, correlated covariance (a sampler with a prior at the origin and unit scale cannot
see it), and the Gaussian densities of the frame map. Every statistical check uses the
estimator's own error bar and has a negative control.
"""

import warnings

import numpy as np
import pytest
import torch

import boltzkit as bk
from boltzkit.energies.base import FramedEnergy, PriorHint, framed, scale_from_hessian
from boltzkit.energies.continuous import Gaussian
from boltzkit.errors import ConfigError, TargetError

from _stats import assert_consistent, assert_rejects

MEAN = np.array([40.0, -25.0, 10.0])
COV = np.array([[4.0, 1.2, 0.0], [1.2, 1.0, 0.1], [0.0, 0.1, 0.04]])


class HintedGaussian(Gaussian):
    """A Gaussian that declares an imperfect frame (loc and scale both off), so the samplers
    still have work to do in the standardized coordinates."""

    def __init__(self):
        super().__init__(MEAN, cov=COV)
        self.hint = PriorHint(MEAN + np.array([0.5, -0.3, 0.05]), 1.3 * np.linalg.cholesky(COV))

    def prior_hint(self):
        return self.hint


def test_frame_algebra_and_framed_energy():
    g = torch.Generator().manual_seed(0)
    for scale in (2.0, [0.5, 2.0, 3.0], [[2.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.3, -0.2, 1.5]]):
        h = PriorHint([1.0, -2.0, 0.5], scale)
        s = torch.as_tensor(scale, dtype=torch.float64)
        mat = torch.diag(s.expand(3)) if s.ndim <= 1 else s
        assert h.log_det == pytest.approx(float(torch.linalg.slogdet(mat)[1]))
        z = torch.randn(7, 3, generator=g, dtype=torch.float64)
        x = h.to_x(z)
        assert torch.allclose(x, h.loc + z @ mat.T)
        assert torch.allclose(h.to_z(x), z, atol=1e-12)
    tgt = HintedGaussian()
    fe, hint = framed(tgt)
    assert isinstance(fe, FramedEnergy) and hint is tgt.hint
    assert framed(tgt, use_hint=False) == (tgt, None)
    z = torch.randn(5, 3, generator=g)
    ga = torch.autograd.functional.jacobian(lambda v: fe.energy(v).sum(), z)
    assert torch.allclose(fe.grad_energy(z), ga, rtol=1e-4, atol=1e-4)
    # independent truth: in z the target is N(S^-1 (m - loc), S^-1 C S^-T)
    s_inv = np.linalg.inv(hint.scale.numpy())
    zg = Gaussian(s_inv @ (MEAN - hint.loc.numpy()), cov=s_inv @ COV @ s_inv.T)
    assert fe.exact_log_z() == pytest.approx(zg.exact_log_z(), abs=1e-9)
    assert torch.allclose(fe.energy(z.double()), zg.energy(z.double()), rtol=1e-6, atol=1e-6)
    # Laplace scale from a Hessian: S S^T = H^-1, flat directions floored at max_std
    hess = np.array([[4.0, 1.0], [1.0, 2.0]])
    sc = scale_from_hessian(hess, max_std=10.0).numpy()
    assert np.allclose(sc @ sc.T, np.linalg.inv(hess))
    flat = scale_from_hessian(np.diag([4.0, 0.0]), max_std=2.0).numpy()
    assert np.allclose(flat @ flat.T, np.diag([0.25, 4.0]))
    for bad in ([[1.0, 2.0], [2.0, 4.0], [0.0, 0.0]], [1.0, -1.0, 1.0], [1.0, 2.0]):
        with pytest.raises(TargetError):
            PriorHint([0.0, 0.0, 0.0], bad)
    with pytest.raises(TargetError, match="PriorHint"):
        framed(type("Bad", (Gaussian,), {"prior_hint": lambda self: (0.0, 1.0)})([0.0]))


def _check_gaussian_result(res, what):
    tgt = HintedGaussian()
    exact = tgt.exact_log_z()
    if res.log_z is not None:
        assert_consistent(res.log_z, res.log_z_stderr, exact, bias=res.log_z_stderr ** 2, what=f"{what} log Z")
        assert_rejects(res.log_z, res.log_z_stderr, exact + 0.2, bias=res.log_z_stderr ** 2, what=f"{what} log Z")
    m, se = res.expectation(lambda x: x[:, 0])
    assert_consistent(m, se, MEAN[0], what=f"{what} E[x0]")
    assert_rejects(m, se, MEAN[0] + 0.3, what=f"{what} E[x0]")
    c, sec = res.expectation(lambda x: (x[:, 0] - MEAN[0]) * (x[:, 1] - MEAN[1]))
    assert_consistent(c, sec, COV[0, 1], what=f"{what} Cov[x0, x1]")
    assert_rejects(c, sec, 0.0, what=f"{what} Cov[x0, x1]")


def test_naas_in_hint_frame():
    tgt = HintedGaussian()
    res = bk.sample(tgt, method="naas", n_samples=4000, n_steps=6, seed=0, device="cpu",
                    n_time_steps=24, prior_time_steps=16, batch_size=128, updates_per_step=8,
                    prior_updates_per_step=8)
    assert res.diagnostics["prior_hint"] is True
    _check_gaussian_result(res, "naas")
    # the option is honoured: without the hint and with an explicit unit prior (which turns
    # the scale probe off) the prior sits at the origin, 47 units away, and the weights
    # collapse (effective sample size of a few)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        off = bk.sample(tgt, method="naas", n_samples=1000, n_steps=0, seed=0, device="cpu",
                        n_time_steps=24, use_prior_hint=False, grad_clip=100.0, prior_std=1.0)
    assert off.diagnostics["prior_hint"] is False and off.ess < 20


def test_ais_and_pdns_in_hint_frame():
    tgt = HintedGaussian()
    res = bk.sample(tgt, method="ais", n_samples=3000, n_steps=30, seed=0, device="cpu")
    assert res.diagnostics["prior_hint"] is True
    _check_gaussian_result(res, "ais")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bk.sample(tgt, method="pdns", n_samples=4000, n_steps=60, seed=0, device="cpu",
                        batch_size=128, n_time_steps=30, reference_std=1.5)
    assert res.diagnostics["prior_hint"] is True
    _check_gaussian_result(res, "pdns")


def test_mala_in_hint_frame():
    tgt = HintedGaussian()
    res = bk.sample(tgt, method="mala", n_samples=64 * 150, n_steps=100, seed=0, device="cpu",
                    n_chains=64, thin=2)
    # preconditioned by the frame, the chains mix although the scales differ by 10x
    assert res.diagnostics["acceptance"] > 0.4
    m = res.samples.double().mean(0).numpy()
    se = np.sqrt(np.diag(COV) / res.ess)
    assert np.all(np.abs(m - MEAN) < 4.5 * se), (m, se)
    assert np.any(np.abs(m - (MEAN + [0.0, 0.0, 0.1])) > 4.5 * se)  # negative control
    with pytest.raises(ConfigError, match="use_prior_hint"):
        bk.sample(tgt, method="mala", use_prior_hint="yes")
