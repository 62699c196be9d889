"""Internal (Z-matrix) coordinates: boltzkit.energies.internal.

Oracles: pairwise distances (invariant under rigid motions), an independent dihedral
implementation (boltzkit.analysis.dihedral, mdtraj for alanine), autograd determinants of the
placement maps (including the rigid-body parametrization with ZYZ Euler angles, whose Haar
density is sin(beta)), closed-form / scipy-quadrature normalizing constants, OpenMM's own
energy, finite differences. Statistical checks carry error bars and negative controls.
"""

import json
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from _stats import assert_consistent, assert_rejects

from boltzkit.analysis import dihedral
from boltzkit.domains import Reals
from boltzkit.energies.base import Energy, PriorHint
from boltzkit.energies.internal import (InternalCoordinateEnergy, ZMatrix, angle_window_log,
                                        bond_window_log, place_atom, torus_window_log)
from boltzkit.errors import TargetError

torch.set_num_threads(1)

# a branched 8-atom molecule graph (a tree) and a graph with a ring
TREE8 = [(0, 1), (1, 2), (1, 3), (3, 4), (3, 5), (5, 6), (5, 7)]
RING7 = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 0), (2, 6)]


def _dist(x):
    p = x.reshape(x.shape[0], -1, 3)
    return (p[:, :, None] - p[:, None]).norm(dim=-1)


def _angle_np(a, b, c):
    u, v = a - b, c - b
    cos = (u * v).sum(-1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1)
    return np.arccos(np.clip(cos, -1, 1))


def _wrap(t):
    return torch.remainder(t + math.pi, 2 * math.pi) - math.pi


# ============================================================================ Z-matrix rules
@pytest.mark.parametrize("bonds,n", [(TREE8, 8), (RING7, 7)])
@pytest.mark.parametrize("mode", ["sibling", "chain"])
def test_zmatrix_reference_rules(bonds, n, mode):
    zm = ZMatrix.from_bonds(n, bonds, root=0, torsion_refs=mode)
    bset = {frozenset(b) for b in bonds}
    assert zm.n_atoms == n and zm.n_dof == 3 * n - 6 and zm.order[0] == 0
    assert sorted(zm.order.tolist()) == list(range(n))
    assert len(zm.bond_index) == n - 1 and len(zm.angle_index) == n - 2
    assert len(zm.torsion_index) == n - 3
    assert np.array_equal(np.concatenate([zm.bond_index, zm.angle_index, zm.torsion_index]),
                          np.arange(3 * n - 6))
    pos = {a: p for p, a in enumerate(zm.order.tolist())}
    for p, i in enumerate(zm.order.tolist()[1:], start=1):
        j, k, l = zm.refs[p].tolist()
        assert frozenset((i, j)) in bset and pos[j] < p          # j bonded to i
        if p >= 2:
            assert frozenset((j, k)) in bset and pos[k] < p      # k bonded to j
        if p >= 3:
            assert len({i, j, k, l}) == 4 and pos[l] < p
            # l bonded to k (a proper dihedral) or to j (a sibling offset)
            assert frozenset((k, l)) in bset or frozenset((j, l)) in bset
    # BFS: atoms appear in order of graph distance from the root
    dist = {0: 0}
    frontier = [0]
    while frontier:
        nxt = []
        for a in frontier:
            for b in bonds:
                if a in b:
                    c = b[0] + b[1] - a
                    if c not in dist:
                        dist[c] = dist[a] + 1
                        nxt.append(c)
        frontier = nxt
    d = [dist[a] for a in zm.order.tolist()]
    assert d == sorted(d)


def test_zmatrix_errors():
    with pytest.raises(TargetError, match="not connected"):
        ZMatrix.from_bonds(5, [(0, 1), (1, 2), (3, 4)])
    with pytest.raises(TargetError, match="at least 3|>= 3"):
        ZMatrix.from_bonds(2, [(0, 1)])
    with pytest.raises(TargetError, match="placed before"):
        ZMatrix([0, 1, 2, 3], [[-1, -1, -1], [0, -1, -1], [1, 0, -1], [2, 1, 3]])


# ============================================================================ maps
def test_round_trip_cartesian_internal_cartesian():
    zm = ZMatrix.from_bonds(8, TREE8)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 8, 3, generator=g, dtype=torch.float64)  # generic, non-degenerate
    q = zm.to_internal(x)
    x2 = zm.to_cartesian(q)
    assert torch.allclose(_dist(x), _dist(x2), atol=1e-12, rtol=0)   # equal up to a rigid motion
    # and a proper one (no mirror image): signed volumes agree
    a, b, c, d = 0, 1, 2, 3
    vol = lambda y: torch.linalg.det(torch.stack([y[:, b] - y[:, a], y[:, c] - y[:, a],
                                                  y[:, d] - y[:, a]], 1))
    assert torch.allclose(vol(x), vol(x2), atol=1e-12)
    # internal coordinates against independent formulas
    xn = x.numpy()
    r = np.linalg.norm(xn[:, zm.bond_atoms[:, 0]] - xn[:, zm.bond_atoms[:, 1]], axis=-1)
    th = _angle_np(*(xn[:, zm.angle_atoms[:, c]] for c in range(3)))
    ph = dihedral(x, zm.torsion_atoms).numpy()
    assert np.allclose(q[:, zm.bond_index].numpy(), r, atol=1e-12)
    assert np.allclose(q[:, zm.angle_index].numpy(), th, atol=1e-9)
    assert np.allclose(q[:, zm.torsion_index].numpy(), ph, atol=1e-12)
    # canonical frame: first atom at 0, second on +x, third in the xy-plane with y > 0
    o = zm.order
    assert torch.all(x2[:, o[0]] == 0)
    assert torch.all(x2[:, o[1], 0] > 0) and torch.all(x2[:, o[1], 1:] == 0)
    assert torch.all(x2[:, o[2], 1] > 0) and torch.all(x2[:, o[2], 2] == 0)
    # flat input works the same
    assert torch.allclose(zm.to_internal(x.reshape(16, -1)), q)


@pytest.mark.parametrize("mode", ["sibling", "chain"])
def test_round_trip_internal_cartesian_internal(mode):
    zm = ZMatrix.from_bonds(7, RING7 if mode == "chain" else TREE8[:6], torsion_refs=mode)
    n = zm.n_atoms
    g = torch.Generator().manual_seed(1)
    b = 32
    q = torch.cat([0.5 + torch.rand(b, n - 1, generator=g, dtype=torch.float64),
                   0.2 + (math.pi - 0.4) * torch.rand(b, n - 2, generator=g, dtype=torch.float64),
                   (2 * torch.rand(b, n - 3, generator=g, dtype=torch.float64) - 1) * math.pi], 1)
    q2 = zm.to_internal(zm.to_cartesian(q))
    assert torch.allclose(q2, q, atol=1e-10, rtol=0)
    # any real q: the structure is that of its canonical representative wrap(q)
    qa = 4.0 * torch.randn(b, 3 * n - 6, generator=g, dtype=torch.float64)
    qw = zm.wrap(qa)
    d = zm.to_internal(zm.to_cartesian(qa)) - qw
    d[:, zm.torsion_index] = _wrap(d[:, zm.torsion_index])
    assert d.abs().max() < 1e-9
    assert torch.allclose(_dist(zm.to_cartesian(qa)), _dist(zm.to_cartesian(qw)), atol=1e-10)
    assert (qw[:, zm.bond_index] >= 0).all()
    assert (qw[:, zm.angle_index] >= 0).all() and (qw[:, zm.angle_index] <= math.pi).all()
    t = qw[:, zm.torsion_index]
    assert (t > -math.pi).all() and (t <= math.pi).all()
    # negative control: a changed dihedral changes the structure
    q3 = q.clone()
    q3[:, zm.torsion_index[0]] += 0.3
    assert not torch.allclose(_dist(zm.to_cartesian(q3)), _dist(zm.to_cartesian(q)), atol=1e-3)


def test_place_atom_geometry_and_jacobian():
    g = torch.Generator().manual_seed(2)
    for trial in range(6):
        xj, xk, xl = (torch.randn(1, 3, generator=g, dtype=torch.float64) for _ in range(3))
        r = 0.5 + torch.rand(1, generator=g, dtype=torch.float64)
        th = 0.2 + 2.7 * torch.rand(1, generator=g, dtype=torch.float64)
        ph = (2 * torch.rand(1, generator=g, dtype=torch.float64) - 1) * math.pi
        xi = place_atom(xj, xk, xl, r, th, ph)
        assert torch.allclose((xi - xj).norm(), r, atol=1e-12)
        ang = _angle_np(xi.numpy(), xj.numpy(), xk.numpy())
        assert np.allclose(ang, th.numpy(), atol=1e-9)
        pos = torch.stack([xi[0], xj[0], xk[0], xl[0]])[None]
        assert torch.allclose(dihedral(pos, (0, 1, 2, 3)), ph, atol=1e-10)
        # log |det d x_i / d(r, theta, phi)| = 2 log r + log sin theta
        f = lambda v: place_atom(xj, xk, xl, v[0:1], v[1:2], v[2:3])[0]
        jac = torch.autograd.functional.jacobian(f, torch.cat([r, th, ph]))
        logdet = torch.linalg.slogdet(jac)[1]
        assert abs(float(logdet) - float(2 * torch.log(r) + torch.log(torch.sin(th)))) < 1e-10


def test_log_jacobian_of_the_full_rigid_body_parametrization():
    """x = R(alpha, beta, gamma) X(q) + t: |det dx/d(t, alpha, beta, gamma, q)| must be
    J(q) sin(beta) (ZYZ Euler angles: Haar measure sin(beta), volume 8 pi^2). This pins the
    factors of atoms 1 and 2 (2 log r_1; 2 log r_2 + log sin theta_2)."""
    zm = ZMatrix.from_bonds(5, [(0, 1), (1, 2), (1, 3), (3, 4)])
    g = torch.Generator().manual_seed(3)

    def rz(a):
        c, s = torch.cos(a), torch.sin(a)
        z, o = torch.zeros_like(a), torch.ones_like(a)
        return torch.stack([torch.stack([c, -s, z]), torch.stack([s, c, z]), torch.stack([z, z, o])])

    def ry(a):
        c, s = torch.cos(a), torch.sin(a)
        z, o = torch.zeros_like(a), torch.ones_like(a)
        return torch.stack([torch.stack([c, z, s]), torch.stack([z, o, z]), torch.stack([-s, z, c])])

    def full(v):
        t, (al, be, ga), q = v[:3], v[3:6], v[6:]
        rot = rz(al) @ ry(be) @ rz(ga)
        return (zm.to_cartesian(q[None])[0] @ rot.T + t).reshape(-1)

    for trial in range(3):
        q = torch.cat([0.8 + torch.rand(4, generator=g, dtype=torch.float64),
                       0.3 + 2.5 * torch.rand(3, generator=g, dtype=torch.float64),
                       (2 * torch.rand(2, generator=g, dtype=torch.float64) - 1) * math.pi])
        eul = torch.tensor([0.3, 0.4 + 2 * torch.rand(1, generator=g).item(), -1.1], dtype=torch.float64)
        v = torch.cat([torch.randn(3, generator=g, dtype=torch.float64), eul, q])
        jac = torch.autograd.functional.jacobian(full, v)
        assert jac.shape == (15, 15)
        logdet = float(torch.linalg.slogdet(jac)[1])
        expect = float(zm.log_jacobian(q[None])[0]) + math.log(math.sin(float(eul[1])))
        assert abs(logdet - expect) < 1e-9
        # independent closed form of log J for this tree
        r, th = q[:4], q[4:7]
        assert abs(expect - math.log(math.sin(float(eul[1])))
                   - float(2 * torch.log(r).sum() + torch.log(torch.sin(th)).sum())) < 1e-12
        # negative control: treating atom 2 like atom 1 (no sin theta_2) is wrong
        assert abs(logdet - (expect - math.log(math.sin(float(th[0]))))) > 1e-3


# ============================================================================ windows
def test_windows_are_partitions_of_unity():
    t = torch.linspace(-12.0, 12.0, 4001, dtype=torch.float64)
    for width in (0.2, 0.5, 1.5):
        s = sum(torch.exp(torus_window_log(t + 2 * math.pi * k, width)) for k in range(-8, 9))
        assert (s - 1).abs().max() < 1e-12
        # angle window: period pi, symmetric about pi/2
        w = sum(torch.exp(angle_window_log(t + math.pi * m, width)) for m in range(-12, 13))
        assert (w - 1).abs().max() < 1e-12
        assert torch.allclose(angle_window_log(math.pi - t, width), angle_window_log(t, width),
                              atol=1e-10)
        r = torch.linspace(-1, 1, 201, dtype=torch.float64)
        assert torch.allclose(torch.exp(bond_window_log(r, width)) + torch.exp(bond_window_log(-r, width)),
                              torch.ones_like(r), atol=1e-14)
    # negative control: a Gaussian bump of the same width is no partition of unity
    bump = sum(torch.exp(-0.5 * ((t + 2 * math.pi * k) / 2.0) ** 2) for k in range(-8, 9))
    assert (bump - 1).abs().max() > 0.1
    # finite values and gradients far away
    far = torch.tensor([-1e4, -50.0, 0.0, 50.0, 1e4], dtype=torch.float64, requires_grad=True)
    for fn in (torus_window_log, angle_window_log, bond_window_log):
        v = fn(far, 0.3)
        (gr,) = torch.autograd.grad(v.sum(), far)
        assert torch.isfinite(v).all() and torch.isfinite(gr).all()
    lw = torus_window_log(torch.tensor([0.0, math.pi, 3 * math.pi], dtype=torch.float64), 0.5)
    assert abs(float(lw[0])) < 1e-8 and abs(float(lw[1]) - math.log(0.5)) < 1e-12
    assert abs(float(lw[2]) - float(stats.norm.logcdf(-2 * math.pi / 0.5) + math.log1p(
        -stats.norm.cdf(-4 * math.pi / 0.5) / stats.norm.cdf(-2 * math.pi / 0.5)))) < 1e-8


def test_torus_windowed_energy_samples_one_period_of_a_periodic_target():
    import boltzkit as bk
    from boltzkit.energies.internal import TorusWindowedEnergy

    kappa, mu = torch.tensor([2.0, 0.5], dtype=torch.float64), torch.tensor([2.5, -1.0], dtype=torch.float64)
    vm = Energy.from_function(lambda x: -(kappa.to(x) * torch.cos(x - mu.to(x))).sum(-1), Reals(2))
    exact = float(torch.log(2 * math.pi * torch.special.i0(kappa)).sum())  # von Mises on the torus
    w = TorusWindowedEnergy(vm, mu)
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    fd = torch.stack([(w.energy(x + 1e-6 * e) - w.energy(x - 1e-6 * e)) / 2e-6
                      for e in torch.eye(2, dtype=torch.float64)], 1)
    torch.testing.assert_close(w.grad_energy(x), fd, rtol=1e-6, atol=1e-6)
    res = bk.sample(w, method="ais", n_samples=1000, seed=0, device="cpu", progress=False)
    assert res.diagnostics["prior_hint"] and res.diagnostics["reliable"]
    assert_consistent(res.log_z, res.log_z_stderr, exact, bias=res.log_z_stderr ** 2)
    assert_rejects(res.log_z, res.log_z_stderr, exact + math.log(2.0))  # two periods' mass
    with pytest.raises(TargetError, match="Reals"):
        TorusWindowedEnergy(bk.energies.Ising(L=3, beta=0.3), [0.0])


def test_windows_preserve_integrals_by_quadrature():
    f = lambda t: math.exp(math.cos(t) + 0.5 * math.sin(2 * t) - 0.3 * math.sin(t))
    period = integrate.quad(f, -math.pi, math.pi, epsabs=0, epsrel=1e-12)[0]
    for width, centre in ((0.5, 0.0), (0.2, 2.5), (1.0, -1.0)):
        h = lambda t: math.exp(float(torus_window_log(torch.tensor(t - centre, dtype=torch.float64), width)))
        lim = centre + math.pi + 12 * width
        pts = [centre - math.pi, centre + math.pi]
        full = integrate.quad(lambda t: f(t) * h(t), 2 * centre - lim, lim, points=pts, limit=400,
                              epsabs=0, epsrel=1e-11)[0]
        assert abs(full / period - 1) < 1e-9
    # angle window: int_R |sin t| e^{2 cos t} w(t) dt = int_0^pi sin t e^{2 cos t} dt = sinh 2
    w = lambda t: math.exp(float(angle_window_log(torch.tensor(t, dtype=torch.float64), 0.1)))
    val = integrate.quad(lambda t: abs(math.sin(t)) * math.exp(2 * math.cos(t)) * w(t), -2, math.pi + 2,
                         points=[0.0, math.pi], limit=400, epsabs=0, epsrel=1e-11)[0]
    assert abs(val / math.sinh(2.0) - 1) < 1e-9
    # negative control: without the window the same range holds more mass
    val0 = integrate.quad(lambda t: abs(math.sin(t)) * math.exp(2 * math.cos(t)), -2, math.pi + 2,
                          points=[0.0, math.pi], limit=400)[0]
    assert val0 / math.sinh(2.0) - 1 > 0.1


# ============================================================================ exact log Z
K_SPRING, R0 = 40.0, 1.0
SPRING_BONDS = [(0, 1), (1, 2), (1, 3), (3, 4)]   # a branched 5-atom tree


def _spring_energy(n, bonds):
    def u(x):
        p = x.reshape(x.shape[0], n, 3)
        out = 0.0
        for i, j in bonds:
            out = out + 0.5 * K_SPRING * ((p[:, i] - p[:, j]).norm(dim=-1) - R0) ** 2
        return out
    return Energy.from_function(u, Reals(3 * n), name="springs")


def test_log_z_of_harmonic_springs_by_importance_sampling():
    n, bonds = 5, SPRING_BONDS
    ic = InternalCoordinateEnergy(_spring_energy(n, bonds), ZMatrix.from_bonds(n, bonds))
    assert ic.domain.dim == 9 and ic.prior_hint() is None and ic.exact_log_z() is None
    json.dumps(ic.to_config())
    # truth 1 (Cartesian, independent of any Jacobian convention): the bond vectors of a tree
    # are independent, Z_x / V = prod_bonds 4 pi I with I = int_0^inf r^2 exp(-k/2 (r-r0)^2) dr;
    # Z_q = Z_x / (V 8 pi^2)
    bond_int = integrate.quad(lambda r: r * r * math.exp(-0.5 * K_SPRING * (r - R0) ** 2), 0, np.inf,
                              epsabs=0, epsrel=1e-13)[0]
    truth = (n - 1) * math.log(4 * math.pi * bond_int) - math.log(8 * math.pi ** 2)
    # truth 2 (factorized in q): bonds, log 2 per angle (int_0^pi sin), log 2 pi per dihedral
    factorized = (n - 1) * math.log(bond_int) + (n - 2) * math.log(2) + (n - 3) * math.log(2 * math.pi)
    assert abs(truth - factorized) < 1e-12

    g = torch.Generator().manual_seed(1)
    m = 200_000
    loc = torch.tensor([R0] * (n - 1) + [math.pi / 2] * (n - 2) + [0.0] * (n - 3), dtype=torch.float64)
    sc = torch.tensor([0.25] * (n - 1) + [0.9] * (n - 2) + [2.2] * (n - 3), dtype=torch.float64)
    q = loc + sc * torch.randn(m, 3 * n - 6, generator=g, dtype=torch.float64)
    log_prop = (-0.5 * ((q - loc) / sc) ** 2 - torch.log(sc) - 0.5 * math.log(2 * math.pi)).sum(1)

    def estimate(u):
        lw = -u - log_prop
        mx = lw.max()
        w = torch.exp(lw - mx)
        return float(mx + torch.log(w.mean())), float(w.std() / w.mean() / math.sqrt(m))

    with torch.no_grad():
        u = ic.energy(q)
    est, se = estimate(u)
    assert se < 0.01
    assert_consistent(est, se, truth)
    assert_rejects(est, se, truth + 0.1)
    # negative control: without the dihedral window the density on R^9 has infinite mass
    tors = q[:, ic.zmatrix.torsion_index]
    est0, se0 = estimate(u + torus_window_log(tors - ic.torsion_center, 0.5).sum(1))
    assert_rejects(est0, se0, truth)
    # Cartesian log Z: none for a free molecule; with a COM restraint of width s,
    # Z_x = (2 pi s^2)^{3/2} prod_bonds 4 pi I (integrate the centre, then the bond vectors)
    assert ic.cartesian_log_z(truth) is None
    ic.cartesian_energy.com_restraint = 0.2
    exact_x = 1.5 * math.log(2 * math.pi * 0.2 ** 2) + (n - 1) * math.log(4 * math.pi * bond_int)
    assert abs(ic.cartesian_log_z(truth) - exact_x) < 1e-12


def test_energy_gradient_and_finiteness_on_toy():
    n, bonds = 5, SPRING_BONDS
    ic = InternalCoordinateEnergy(_spring_energy(n, bonds), ZMatrix.from_bonds(n, bonds),
                                  reference=torch.tensor([[0, 0, 0], [1, 0, 0], [1.3, 0.95, 0],
                                                          [1.4, -0.5, 0.8], [2.2, -0.9, 1.3]],
                                                         dtype=torch.float64))
    g = torch.Generator().manual_seed(4)
    q = 3.0 * torch.randn(64, 9, generator=g, dtype=torch.float64)
    q[0] = 0.0                    # every bond 0, every angle 0
    q[1, ic.zmatrix.angle_index] = math.pi
    u = ic.energy(q)
    assert torch.isfinite(u).all()
    gr = ic.grad_energy(q)
    assert torch.isfinite(gr).all()
    # gradient against central differences at generic points
    qq = q[2:10]
    v = torch.randn(qq.shape, generator=g, dtype=torch.float64)
    h = 1e-6
    fd = (ic.energy(qq + h * v) - ic.energy(qq - h * v)) / (2 * h)
    assert torch.allclose((ic.grad_energy(qq) * v).sum(1), fd, rtol=1e-6, atol=1e-5)
    # float32 in, float32 out
    assert ic.energy(qq.float()).dtype == torch.float32
    # the hint: loc is the reference, scales positive, torsions at most torsion_std
    hint = ic.prior_hint()
    assert isinstance(hint, PriorHint) and hint.dim == 9 and (hint.scale > 0).all()
    assert (hint.scale[ic.zmatrix.torsion_index] <= 1.0 + 1e-12).all()
    assert abs(float(hint.scale[0]) - 1 / math.sqrt(K_SPRING + 2 / float(hint.loc[0]) ** 2)) < 1e-4


# ============================================================================ alanine dipeptide
@pytest.fixture(scope="module")
def ala_ic():
    pytest.importorskip("openmm")
    pytest.importorskip("mdtraj")
    from boltzkit.energies.molecular import AlanineDipeptide

    try:
        ala = AlanineDipeptide("vacuum")
    except ImportError as exc:  # openmmtools data files missing
        pytest.skip(str(exc))
    return ala, InternalCoordinateEnergy(ala)


def test_alanine_energy_matches_openmm(ala_ic):
    ala, ic = ala_ic
    xm = ala.minimized_state()
    q0 = ic.to_internal(xm)
    assert q0.shape == (1, 60) and ic.domain.dim == 60
    u = ic.energy(q0)
    assert torch.isfinite(u).all()
    # the Cartesian part is OpenMM's U / kT (rigid-motion invariant; centring removes the
    # COM restraint)
    extra = -ic.log_jacobian(q0) - ic.zmatrix.log_window(q0, torsion_center=ic.torsion_center)
    u_omm = ala.openmm_energy(xm)[0] / ala.kT
    assert abs(float(u[0] - extra[0]) - u_omm) < 1e-7
    assert torch.allclose(_dist(ic.to_cartesian(q0)), _dist(xm), atol=1e-10)
    json.dumps(ic.to_config())


def test_alanine_gradient_against_finite_differences(ala_ic):
    ala, ic = ala_ic
    hint = ic.prior_hint()
    g = torch.Generator().manual_seed(5)
    q = hint.loc[None] + 0.5 * hint.scale * torch.randn(4, 60, generator=g, dtype=torch.float64)
    n0 = ala.n_evaluations
    u = ic.energy(q)
    gr = ic.grad_energy(q)
    assert ala.n_evaluations - n0 == 4      # the gradient reused the energy call's forces
    assert torch.isfinite(u).all() and torch.isfinite(gr).all()
    v = hint.scale * torch.randn(4, 60, generator=g, dtype=torch.float64)
    h = 1e-4
    fd = (ic.energy(q + h * v) - ic.energy(q - h * v)) / (2 * h)
    dd = (gr * v).sum(1)
    assert torch.allclose(dd, fd, rtol=1e-4, atol=1e-4), (dd, fd)
    # autograd path (differentiable twice: Hessian-vector products)
    qq = q.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(ic.energy(qq).sum(), qq, create_graph=True)
    assert torch.allclose(g1, gr, rtol=1e-8, atol=1e-8)
    (hv,) = torch.autograd.grad((g1 * v).sum(), qq)
    assert torch.isfinite(hv).all()


def test_alanine_backbone_torsions(ala_ic):
    ala, ic = ala_ic
    zm = ic.zmatrix
    t_phi, t_psi = zm.find_torsion(ala.PHI_ATOMS), zm.find_torsion(ala.PSI_ATOMS)
    assert t_phi is not None and t_psi is not None
    q0 = ic.prior_hint().loc[None].clone()
    phi0, psi0 = ala.phi_psi(ic.to_cartesian(q0))
    assert abs(phi0[0] - float(q0[0, t_phi])) < 1e-5 and abs(psi0[0] - float(q0[0, t_psi])) < 1e-5
    # set (phi, psi) to given values (one given beyond pi): mdtraj reads them back
    targets = [(-1.3, 2.0), (1.0, -0.6), (-2.9, 3.5)]
    q = q0.repeat(len(targets), 1)
    for b, (p, s) in enumerate(targets):
        q[b, t_phi], q[b, t_psi] = p, s
    phi, psi = ala.phi_psi(ic.to_cartesian(q))
    want = _wrap(torch.tensor(targets, dtype=torch.float64))
    assert np.allclose(phi, want[:, 0].numpy(), atol=1e-5)
    assert np.allclose(psi, want[:, 1].numpy(), atol=1e-5)
    # rotating the backbone moves whole groups: the alpha carbon stays L, bonds unchanged
    assert bool(ala.is_l(ic.to_cartesian(q)).all())
    assert torch.isfinite(ic.energy(q)).all()


def test_alanine_prior_hint_scales(ala_ic):
    ala, ic = ala_ic
    hint = ic.prior_hint()
    zm = ic.zmatrix
    s = hint.scale
    assert hint.dim == 60 and hint.is_diagonal and (s > 0).all()
    bonds = s[zm.bond_index]
    assert (bonds > 1e-3).all() and (bonds < 1e-2).all()          # nm
    angles = s[zm.angle_index]
    assert (angles > 0.01).all() and (angles < 0.2).all()          # rad
    assert (s[zm.torsion_index] <= ic.torsion_std + 1e-12).all()
    # backbone torsions are soft coordinates with the sibling rule
    assert float(s[zm.find_torsion(ala.PHI_ATOMS)]) > 0.1
    assert float(s[zm.find_torsion(ala.PSI_ATOMS)]) > 0.1
    # loc is the minimized structure's canonical q
    assert torch.allclose(hint.loc, ic.to_internal(ala.minimized_state())[0])


def test_alanine_full_hint_spreads_the_soft_torsions(ala_ic):
    """``AlanineDipeptide.internal()``: phi, psi and the three methyl rotors are soft (phi is
    given; the others are found by their rigid scans, which stay below 20 kT); the full hint
    keeps the stiff couplings (its covariance of the stiff block is the inverse of the stiff
    Hessian block) and draws phi > 0 (C7ax / alpha_L side) often, the diagonal hint never."""
    ala, _ = ala_ic
    ic = ala.internal()
    hint = ic.prior_hint()
    zm = ic.zmatrix
    expect = {zm.find_torsion(q) for q in ((4, 6, 8, 14), (6, 8, 14, 16), (0, 1, 4, 6),
                                           (6, 8, 10, 11), (14, 16, 18, 19))}
    assert set(ic.soft_index) == expect
    cov = hint.scale @ hint.scale.T
    soft = sorted(expect)
    stiff = [i for i in range(cov.shape[0]) if i not in expect]
    np.testing.assert_allclose(cov[soft][:, soft], np.eye(5) * 1.0 ** 2, atol=1e-9)
    assert float(cov[soft][:, stiff].abs().max()) < 1e-9
    h = ic.hessian(hint.loc[None])
    np.testing.assert_allclose(cov[stiff][:, stiff], torch.linalg.inv(h[stiff][:, stiff]),
                               rtol=1e-6, atol=1e-12)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4000, hint.dim, generator=g, dtype=torch.float64)
    phi = {}
    for name, hh in (("full", hint), ("diagonal", ala_ic[1].prior_hint())):
        phi[name], _ = ala.phi_psi(ic.to_cartesian(hh.to_x(z)))
    frac = float((phi["full"] > 0).mean())
    # phi is one soft coordinate, N(phi_0, 1) around the minimum's phi_0 (the covariance checks
    # above), so P(phi > 0) is the wrapped normal's mass on (0, pi) (phi_0 ~ -2.6 rad: most of
    # it is the tail wrapped past -pi). The exact value, not a bound: the Hessian's five soft
    # eigenvalues are equal, so which basis of that subspace eigh returns -- and hence which
    # 4000 draws -- depends on float rounding; 4 binomial standard errors cover any of them.
    phi0 = float(ala.phi_psi(ic.to_cartesian(hint.loc[None]))[0][0])
    nd = torch.distributions.Normal(0.0, 1.0)
    exact = sum(float(nd.cdf(torch.tensor(math.pi + 2 * math.pi * k - phi0))
                      - nd.cdf(torch.tensor(2 * math.pi * k - phi0))) for k in range(-3, 4))
    se = math.sqrt(exact * (1 - exact) / z.shape[0])
    assert abs(frac - exact) < 4 * se, (frac, exact, se)
    assert abs(frac - 0.12) > 4 * se  # negative control: the unwrapped guess N(-1.45, 1) is rejected
    assert float((phi["diagonal"] > 0).mean()) < 0.01  # negative control: the local frame stays put


def test_naas_in_internal_coordinates_returns_valid_conformations(ala_ic):
    """``bk.sample(AlanineDipeptide())`` samples in internal coordinates (its sampling view)
    and returns Cartesian conformations: a short NAAS run gives finite weights, L-chiral
    structures with finite energies, and the Cartesian log Z of the COM-restrained molecule."""
    import boltzkit as bk

    ala, _ = ala_ic
    assert "internal coordinates" in bk.explain(ala)
    opts = dict(n_samples=64, n_steps=1, n_time_steps=8, batch_size=16, prior_time_steps=4,
                updates_per_step=2, prior_updates_per_step=2, lr=3e-4, seed=0, progress=False)
    res = bk.sample(ala, method="naas", **opts)
    assert res.samples.shape == (64, 66) and np.isfinite(res.log_weights.numpy()).all()
    assert res.target["type"] == "AlanineDipeptide" and "internal" in res.diagnostics["coordinates"]
    x = res.samples
    assert bool(ala.is_l(x).all())
    assert np.isfinite(ala.openmm_energy(x)).all()
    assert float(x.double().reshape(64, 22, 3).mean(1).abs().max()) < 1e-5  # canonical frame
    ic = ala.sampling_view().target
    assert res.log_z == pytest.approx(ic.cartesian_log_z(res.diagnostics["log_z_view"]), abs=1e-12)
    # the same run on the view itself gives the same numbers (the view only maps them back)
    res_q = bk.sample(ic, method="naas", **opts)
    torch.testing.assert_close(ic.to_cartesian(res_q.samples).to(x.dtype), x)
    assert res_q.log_z == res.diagnostics["log_z_view"]
    # coordinates="cartesian" opts out of the view
    AlanineDipeptide = type(ala)
    cart = AlanineDipeptide("vacuum", coordinates="cartesian")
    assert cart.sampling_view() is None and "internal" not in bk.explain(cart)
    with pytest.raises(TargetError, match="coordinates must be"):
        AlanineDipeptide("vacuum", coordinates="torsion")


def test_bk_sample_through_a_sampling_view_returns_cartesian_states_and_their_log_z():
    """A Cartesian target that asks to be sampled in internal coordinates
    (``Energy.sampling_view``): ``bk.sample`` runs AIS on the view and returns Cartesian states
    and the Cartesian log Z, exact for a spring tree whose centre is restrained with width s:
    ``Z_x = (2 pi s^2)^{3/2} prod_bonds 4 pi I``."""
    import boltzkit as bk
    from boltzkit.energies import SamplingView

    n, bonds, s = 5, SPRING_BONDS, 0.2
    springs = _spring_energy(n, bonds)

    def u(x):
        c = x.reshape(x.shape[0], n, 3).mean(1)
        return springs.energy(x) + 0.5 * (c * c).sum(1) / s ** 2

    cart = Energy.from_function(u, Reals(3 * n), name="restrained springs")
    cart.com_restraint = s
    ref = torch.tensor([[0, 0, 0], [1, 0, 0], [1.3, 0.95, 0], [1.4, -0.5, 0.8], [2.2, -0.9, 1.3]],
                       dtype=torch.float64)
    ic = InternalCoordinateEnergy(cart, ZMatrix.from_bonds(n, bonds), reference=ref)
    cart.sampling_view = lambda: SamplingView(ic, ic.to_cartesian, ic.cartesian_log_z,
                                              description="internal coordinates")
    assert "internal coordinates" in bk.explain(cart)
    res = bk.sample(cart, method="ais", n_samples=4000, n_steps=400, seed=0, progress=False)
    assert res.samples.shape == (4000, 3 * n)
    assert res.diagnostics["coordinates"] == "internal coordinates"
    bond_int = integrate.quad(lambda r: r * r * math.exp(-0.5 * K_SPRING * (r - R0) ** 2), 0, np.inf,
                              epsabs=0, epsrel=1e-13)[0]
    exact_x = 1.5 * math.log(2 * math.pi * s * s) + (n - 1) * math.log(4 * math.pi * bond_int)
    assert res.log_z_stderr < 0.03
    assert_consistent(res.log_z, res.log_z_stderr, exact_x)
    assert_rejects(res.log_z, res.log_z_stderr, exact_x + 0.15)
    assert res.diagnostics["log_z_view"] == pytest.approx(
        res.log_z - math.log(8 * math.pi ** 2) - 1.5 * math.log(2 * math.pi * s * s), abs=1e-12)
    # the states are Cartesian: weighted mean bond length against quadrature
    r_mean = integrate.quad(lambda r: r ** 3 * math.exp(-0.5 * K_SPRING * (r - R0) ** 2), 0, np.inf,
                            epsabs=0, epsrel=1e-13)[0] / bond_int
    p = res.samples.double().reshape(-1, n, 3)
    r = (p[:, 0] - p[:, 1]).norm(dim=-1)
    w = torch.softmax(res.log_weights, 0)
    est = float((w * r).sum())
    se = float(torch.sqrt((w * w * (r - est) ** 2).sum()))
    assert_consistent(est, se, r_mean)
    assert_rejects(est, se, r_mean + 0.02)
    # without a Cartesian log Z the Result says so and keeps the view's
    cart.sampling_view = lambda: SamplingView(ic, ic.to_cartesian, None, description="ic")
    res2 = bk.sample(cart, method="ais", n_samples=200, n_steps=10, seed=0, progress=False)
    assert res2.log_z is None and res2.diagnostics["log_z_view"] is not None
    assert "log_z_unavailable" in res2.diagnostics


def test_alanine_basin_energy_confines_phi_psi(ala_ic):
    """``AlanineDipeptide.basin(b)``: the torsion coordinates read as mdtraj's phi/psi, the
    prior hint sits in the basin (at the basin's own structure: phi/psi held at the centre, the
    rest relaxed, L-chiral), the energy is the molecule's inside the box and rises by the
    flat-bottom wall outside, with the wall's gradient matching finite differences and bounded
    by its slope (so explicit Langevin steps stay stable)."""
    from boltzkit.analysis import ALANINE_BASINS, alanine_basin

    ala, _ = ala_ic
    g = torch.Generator().manual_seed(5)
    for k, name in enumerate(ALANINE_BASINS):
        be = ala.basin(name)
        xb = ala.basin_structure(name)
        assert bool(ala.is_l(xb)[0]) and float(ala.energy(xb)[0]) < float(ala.energy(ala.reference_state())[0])
        if name in ala.BASIN_CENTRES_DEG:
            np.testing.assert_allclose(np.degrees([a[0] for a in ala.phi_psi(xb)]),
                                       ala.BASIN_CENTRES_DEG[name], atol=1e-3)
        far = be.prior_hint().to_x(3 * torch.randn(256, be.domain.dim, generator=g, dtype=torch.float64))
        gw = be.grad_energy(far) - be.ic.grad_energy(far)
        assert float(gw.norm(dim=1).max()) <= 2 * be.wall_k + 1e-6
        hint = be.prior_hint()
        q = hint.to_x(torch.randn(64, hint.dim, generator=g, dtype=torch.float64))
        phi, psi = ala.phi_psi(be.to_cartesian(q))
        mine = [a.numpy() for a in be.angles(q)]
        for ours, theirs in zip(mine, (phi, psi)):
            np.testing.assert_allclose(np.angle(np.exp(1j * (ours - theirs))), 0.0, atol=1e-5)
        lab = alanine_basin(phi, psi)
        assert alanine_basin(*[a.numpy() for a in be.angles(hint.loc[None])])[0] == k
        out = be.outside(q)
        assert bool(((out == 0) == torch.as_tensor(lab == k)).all())  # the wall is off exactly inside
        u, u0 = be.energy(q), be.ic.energy(q)
        assert torch.allclose(u[out == 0], u0[out == 0]) and bool((u[out > 0] > u0[out > 0]).all())
        # the wall's gradient against central differences, away from the box edges
        sel = (out > 0.05).nonzero().ravel()[:4]
        if sel.numel():
            v = torch.randn(sel.numel(), hint.dim, generator=g, dtype=torch.float64)
            h = 1e-6
            fd = (be.wall(q[sel] + h * v) - be.wall(q[sel] - h * v)) / (2 * h)
            gw = be.grad_energy(q[sel]) - be.ic.grad_energy(q[sel])
            np.testing.assert_allclose((gw * v).sum(1).numpy(), fd.numpy(), rtol=1e-5, atol=1e-6)
    # the phi/psi windows (partitions of unity) are centred on the basin, so the whole box lies
    # on one copy of the circle: the window is 1 over the box (not so for the reference-centred
    # windows, where part of alpha_R sits across the seam)
    be, ic0 = ala.basin("alpha_R"), ala.internal()
    corners = torch.tensor([(a, b) for a in (-119.0, -1.0) for b in (-119.0, 49.0)]) * math.pi / 180
    q = be.prior_hint().loc.repeat(len(corners), 1)
    for k, i in enumerate(be.index):
        q[:, i] = q[:, i] + be.sign[k] * (corners[:, k] - be.angles(q[:1])[k][0])
    assert bool(be.outside(q).abs().max() < 1e-9)
    lw = lambda e: e.zmatrix.log_window(q, torsion_window=e.torsion_window, angle_window=e.angle_window,  # noqa: E731
                                        bond_window=e.bond_window, torsion_center=e.torsion_center)
    assert float(lw(be.ic).min()) > -0.01  # (bond and angle windows add ~1e-3)
    assert float(lw(ic0).min()) < -1.0
    with pytest.raises(TargetError, match="basin must be one of"):
        ala.basin("beta")


@pytest.mark.parametrize("hint", ["diagonal", "full"])
def test_three_atoms_have_no_torsions_to_scan(hint):
    """A 3-atom molecule (two bonds, one angle, no dihedral) with a reference structure: the
    rigid torsion scan has nothing to turn, and the harmonic frame still comes out."""
    n, bonds = 3, [(0, 1), (1, 2)]
    ref = torch.tensor([[0, 0, 0], [1, 0, 0], [1.3, 0.95, 0]], dtype=torch.float64)
    ic = InternalCoordinateEnergy(_spring_energy(n, bonds), ZMatrix.from_bonds(n, bonds), reference=ref,
                                  hint=hint)
    assert ic.domain.dim == 3 and ic.soft_torsions() == []
    h = ic.prior_hint()
    assert h is not None and bool(torch.isfinite(torch.as_tensor(h.loc)).all())
