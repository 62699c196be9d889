"""Particle systems: the ParticleCloud domain, DW-4 / Lennard-Jones energies, equivariant nets.

Exact truths: the LJ-13 Mackay icosahedron minimum -44.326801 (Cambridge Cluster Database,
pairs counted once), the LJ pair minimum -eps at r_m, DW-4 pair energies recomputed with
scipy's pdist, the projection covariance (n-1)/n of the mean-free normal, and group actions
(permutations, rotations, translations) applied exactly.
"""


import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.spatial.distance import pdist
from scipy.stats import special_ortho_group

from boltzkit.domains import ParticleCloud, Reals
from boltzkit.energies.particles import (LJ13_GLOBAL_MIN, DoubleWell4, LennardJones, MultiDoubleWell,
                                         pairwise_distances)
from boltzkit.errors import DomainError, TargetError
from boltzkit.nn.continuous_nets import EGNNLite, FourierMLP, make_control_net

F64 = torch.float64


# ----------------------------------------------------------------------------- domain
def test_particle_cloud_layout_and_reference():
    dom = ParticleCloud(5, 3)
    assert dom.event_shape == (15,) and dom.n_dof == 12 and not dom.is_discrete
    assert ParticleCloud(5, 3, mean_free=False).n_dof == 15
    x = dom.reference(20_000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (20_000, 15) and dom.as_particles(x).shape == (20_000, 5, 3)
    assert torch.equal(dom.flatten(dom.as_particles(x)), x)
    assert float(dom.center_of_mass(x).abs().max()) < 1e-6
    # standard normal of the subspace: per-coordinate variance (n - 1) / n = 0.8 (se ~ 0.003)
    var = float(x.var(0).mean())
    assert abs(var - 0.8) < 0.01
    assert abs(var - 1.0) > 0.1  # negative control: not the ambient standard normal
    assert bool(dom.contains(x).all())
    dom.validate(x[:3])


def test_particle_cloud_rejects_bad_states():
    dom = ParticleCloud(4, 2)
    x = dom.reference(3)
    shifted = x + 0.1  # centre of mass moved off zero
    assert not bool(dom.contains(shifted).any())
    assert bool(ParticleCloud(4, 2, mean_free=False).contains(shifted).all())
    with pytest.raises(DomainError, match="centre of mass"):
        dom.validate(shifted)
    assert torch.allclose(dom.project(shifted), x, atol=1e-6)
    with pytest.raises(DomainError, match="shape"):
        dom.validate(x.reshape(3, 4, 2))
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(DomainError):
        dom.validate(bad)
    for args in [(1, 2), (3, 0), (2.5, 2), (True, 2)]:
        with pytest.raises(DomainError, match="integer"):
            ParticleCloud(*args)
    assert ParticleCloud(4, 2) == ParticleCloud(4, 2) and ParticleCloud(4, 2) != ParticleCloud(2, 4)
    assert ParticleCloud(4, 2).to_config()["mean_free"] is True


# ----------------------------------------------------------------------------- energies
def test_dw4_matches_independent_pair_sum():
    e = DoubleWell4()
    assert e.domain == ParticleCloud(4, 2) and e.exact_log_z() is None
    x = 2.0 * e.domain.reference(16, generator=torch.Generator().manual_seed(1)).double()
    ref = []
    for row in x.numpy():
        r = pdist(row.reshape(4, 2)) - 4.0  # 6 unordered pairs, each once
        ref.append(np.sum(0.9 * r ** 4 - 4.0 * r ** 2))
    assert np.allclose(e.energy(x).numpy(), ref, rtol=1e-10, atol=1e-8)
    # the ordered-pair sum (each pair twice) is a different energy: must not match
    assert not np.allclose(e.energy(x).numpy(), 2 * np.asarray(ref), rtol=1e-3)
    # accepts (B, n, dim) too; the gradient is translation free
    assert torch.allclose(e.energy(x.reshape(16, 4, 2)), e.energy(x))
    g = e.grad_energy(x)
    assert torch.allclose(e.domain.center_of_mass(g), torch.zeros(16, 2, dtype=F64), atol=1e-9)
    with pytest.raises(TargetError, match="shape"):
        e.energy(torch.zeros(3, 7))
    with pytest.raises(TargetError, match="a > 0"):
        MultiDoubleWell(3, 2, a=-1.0)


def _random_orthogonal(dim, seed):
    return torch.tensor(special_ortho_group.rvs(dim, random_state=seed), dtype=F64)


@pytest.mark.parametrize("energy", [DoubleWell4(), LennardJones(6, 3)])
def test_energies_invariant_under_euclidean_group_and_permutations(energy):
    dom = energy.domain
    x = 1.5 * dom.reference(8, generator=torch.Generator().manual_seed(2)).double()
    p = dom.as_particles(x)
    rot = _random_orthogonal(dom.spatial_dim, 3)
    perm = torch.randperm(dom.n_particles, generator=torch.Generator().manual_seed(4))
    base = energy.energy(x)
    assert torch.allclose(energy.energy(dom.flatten(p @ rot.T)), base, rtol=1e-10)
    assert torch.allclose(energy.energy(dom.flatten(p[:, perm])), base, rtol=1e-10)
    if isinstance(energy, DoubleWell4):  # LJ's oscillator is centred, so also translation free
        assert torch.allclose(energy.energy(x + 0.7), base, rtol=1e-10)
    else:
        assert torch.allclose(energy.energy(dom.flatten(p + torch.tensor([0.3, -1.0, 2.0],
                                                                          dtype=F64))), base, rtol=1e-10)


def _icosahedron13(scale=1.0):
    phi = (1 + 5 ** 0.5) / 2
    v = []
    for a in (-1, 1):
        for b in (-1, 1):
            v += [(0, a, b * phi), (a, b * phi, 0), (b * phi, 0, a)]
    v = np.array([(0.0, 0.0, 0.0)] + v)
    v[1:] /= np.linalg.norm(v[1:], axis=1, keepdims=True)
    return scale * v


def test_lj13_icosahedron_global_minimum():
    lj = LennardJones(13, 3, oscillator=False)
    assert lj.pairs == "once" and lj.domain.event_shape == (39,)

    def f(z):
        x = torch.tensor(z, dtype=F64)[None].requires_grad_(True)
        e = lj.energy(x)
        (g,) = torch.autograd.grad(e.sum(), x)
        return float(e.detach()), g[0].numpy()

    res = minimize(f, _icosahedron13(1.0).ravel(), jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-10, "ftol": 1e-15, "maxiter": 2000})
    assert abs(res.fun - LJ13_GLOBAL_MIN) < 1e-5, res.fun
    assert abs(LJ13_GLOBAL_MIN - (-44.326801)) < 1e-12
    # factor-2 convention: the DEM/AS benchmark code sums over ordered pairs
    lj2 = LennardJones(13, 3, oscillator=False, pairs="ordered")
    x = torch.tensor(res.x, dtype=F64)[None]
    assert abs(float(lj2.energy(x)) - 2 * LJ13_GLOBAL_MIN) < 2e-5
    # negative control: the ideal (unrelaxed) unit icosahedron is not the minimum
    x_ideal = torch.tensor(_icosahedron13(1.0).ravel(), dtype=F64)[None]
    assert float(lj.energy(x_ideal)) > LJ13_GLOBAL_MIN + 0.1
    # oscillator term: (1/2) sum |x_i - x_bar|^2 on top of the LJ part
    lj_osc = LennardJones(13, 3)
    c = x.reshape(13, 3) - x.reshape(13, 3).mean(0)
    assert abs(float(lj_osc.energy(x)) - (res.fun + 0.5 * float((c ** 2).sum()))) < 1e-6


def test_lj_pair_minimum_and_bad_args():
    lj = LennardJones(2, 3, oscillator=False, epsilon=1.5, r_m=1.2)
    x = torch.tensor([[0.0, 0.0, 0.6, 0.0, 0.0, -0.6]], dtype=F64)
    assert abs(float(lj.energy(x)) + 1.5) < 1e-9
    d = pairwise_distances(x, 2, 3)
    assert d.shape == (1, 1) and abs(float(d) - 1.2) < 1e-9
    with pytest.raises(TargetError, match="pairs"):
        LennardJones(pairs="twice")
    with pytest.raises(TargetError, match="epsilon"):
        LennardJones(epsilon=0.0)
    with pytest.raises(TargetError, match="finite"):
        LennardJones(oscillator_scale=float("nan"))


# ----------------------------------------------------------------------------- networks
@torch.no_grad()
def test_egnn_equivariance_and_mean_free():
    torch.manual_seed(0)
    n, d = 5, 3
    net = EGNNLite(n, d, hidden=16, n_layers=2, zero_init=False).double()
    dom = ParticleCloud(n, d)
    x = dom.reference(4, generator=torch.Generator().manual_seed(5)).double()
    t = torch.tensor([0.1, 0.5, 0.7, 1.0], dtype=F64)
    out = net(t, x)
    assert out.shape == (4, n * d)
    assert float(dom.center_of_mass(out).abs().max()) < 1e-12  # mean-free output
    assert float(out.abs().max()) > 1e-3                        # and not trivially zero
    p, o = dom.as_particles(x), dom.as_particles(out)
    rot = _random_orthogonal(d, 6)
    refl = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=F64))
    for q in (rot, refl @ rot):
        assert torch.allclose(dom.as_particles(net(t, dom.flatten(p @ q.T))), o @ q.T, atol=1e-10)
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert torch.allclose(dom.as_particles(net(t, dom.flatten(p[:, perm]))), o[:, perm], atol=1e-10)
    shift = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    assert torch.allclose(net(t, dom.flatten(p + shift)), out, atol=1e-10)
    # negative control: a plain MLP is not permutation equivariant
    mlp = FourierMLP(n * d, 16, 2, zero_init=False).double()
    m1 = dom.as_particles(mlp(t, dom.flatten(p[:, perm])))
    assert not torch.allclose(m1, dom.as_particles(mlp(t, x))[:, perm], atol=1e-4)


def test_networks_start_at_zero_and_pick_by_domain():
    torch.manual_seed(0)
    x = torch.randn(6, 8)
    for net in (FourierMLP(8), EGNNLite(4, 2)):
        out = net(0.3, x)
        assert out.shape == (6, 8) and float(out.detach().abs().max()) == 0.0
        (out * torch.randn(6, 8)).sum().backward()  # gradients reach the zero-initialized layer
        assert any(p.grad is not None and float(p.grad.abs().max()) > 0 for p in net.parameters())
    assert isinstance(make_control_net(ParticleCloud(4, 2)), EGNNLite)
    assert isinstance(make_control_net(Reals(3)), FourierMLP)
    # a scalar time and a per-sample time agree
    net = FourierMLP(3, zero_init=False)
    y = torch.randn(5, 3)
    assert torch.allclose(net(0.25, y), net(torch.full((5,), 0.25), y))


def test_naas_defaults_on_a_particle_system_say_the_reference_diverged_and_how_to_set_its_scale():
    # no scale probe for particle clouds: with prior_std = target_scale = 1 NAAS's reference
    # steps explode on DW-4 within the first training step. That is the sampler's fault and
    # must read so (it was a NonFiniteEnergyError calling it "a fault of the energy")
    import boltzkit as bk

    with pytest.raises(bk.errors.TrainingDivergedError) as info:
        bk.sample(DoubleWell4(), method="naas", n_steps=2, seed=0, progress=False)
    msg = str(info.value)
    assert "reference diverged" in msg and "prior_std" in msg and "target_scale" in msg
    assert "fault of the energy" not in msg
