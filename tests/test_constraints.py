"""Constraint sets, the Constrained domain, landing and batched Jacobians (no sampling)."""

import json
import math

import pytest
import torch

import boltzkit as bk
from boltzkit.constraints import (Constrained, ConstrainedTarget, affine, ball, box, flat_torus,
                                  half_space, polytope, simplex, sphere, stiefel, torus)
from boltzkit.constraints._geometry import GramSolver, batched_jacobian, project_tangent
from boltzkit.domains import Lattice, Reals
from boltzkit.energies import validate_target
from boltzkit.errors import DomainError, TargetError


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- sets
@pytest.mark.parametrize("cset", [
    sphere(3), sphere(4, radius=2.0, center=[1.0, 0.0, 0.0, -1.0]), ball(3), torus(2.0, 0.5),
    flat_torus(2), stiefel(3, 2), stiefel(3, 3), affine([[1.0, 1.0, 0.0], [0.0, 1.0, -1.0]], [1.0, 0.5]),
    half_space([1.0, 2.0], 0.5), polytope([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], [1.0, 1.0, 0.5]),
    box(0.0, 1.0, dim=3), simplex(4), simplex(3, probability=False),
    sphere(3) & half_space([0.0, 0.0, -1.0], -0.5),
], ids=lambda s: s.name)
def test_reference_lands_on_every_set(cset):
    target = bk.constrain(None, cset)
    dom = target.domain
    x = dom.reference(64, generator=_gen())
    assert x.dtype == torch.float64 and x.shape == (64, cset.dim)
    assert bool(dom.contains(x).all())
    assert float(dom.violation(x).max()) < 1e-6
    validate_target(target, needs_grad=True)  # what every sampler runs before any work
    json.dumps(target.to_config())


def test_landing_matches_closed_form_projections():
    # sphere: Gauss-Newton moves along x, so it lands on x / |x|
    dom = bk.constrain(None, sphere(5)).domain
    x = torch.randn(32, 5, generator=_gen(1), dtype=torch.float64) * 3
    assert torch.allclose(dom.land(x), x / x.norm(dim=1, keepdim=True), atol=1e-10)
    # affine: one step is the least-norm (orthogonal) projection x - A^T (A A^T)^-1 (A x - b)
    a = torch.tensor([[1.0, 2.0, 0.0, -1.0], [0.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([0.5, -1.0], dtype=torch.float64)
    dom = bk.constrain(None, affine(a, b)).domain
    x = torch.randn(16, 4, generator=_gen(2), dtype=torch.float64)
    exact = x - (a.T @ torch.linalg.solve(a @ a.T, (x @ a.T - b).T)).T
    assert torch.allclose(dom.land(x, n_iter=1), exact, atol=1e-12)
    # an inequality lands tol/10 inside the half-space a.x <= b
    dom = bk.constrain(None, half_space([0.0, 3.0], 1.5), tol=0.01).domain
    y = dom.land(torch.tensor([[0.3, 2.0], [0.1, -4.0]], dtype=torch.float64))
    assert torch.allclose(y, torch.tensor([[0.3, 0.5 - 0.001], [0.1, -4.0]], dtype=torch.float64))


def test_stiefel_and_torus_geometry():
    x = bk.constrain(None, stiefel(4, 2)).domain.reference(16, generator=_gen())
    m = x.reshape(16, 4, 2)
    eye = torch.eye(2, dtype=torch.float64).expand(16, 2, 2)
    assert torch.allclose(m.transpose(1, 2) @ m, eye, atol=1e-8)
    x = bk.constrain(None, torus(2.0, 0.5)).domain.reference(16, generator=_gen())
    rho = x[:, :2].norm(dim=1)
    tube = (rho - 2.0) ** 2 + x[:, 2] ** 2
    assert torch.allclose(tube, torch.full((16,), 0.25, dtype=torch.float64), atol=1e-8)


def test_contains_and_violation():
    dom = bk.constrain(None, sphere(3) & half_space([0.0, 0.0, -1.0], 0.0), tol=1e-3).domain
    x = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [0.0, 0.0, 1.0005], [0.0, 0.0, 1.01],
                      [float("nan"), 0.0, 1.0]], dtype=torch.float64)
    # h = (|x|^2 - 1) / 2 has unit gradient on the sphere; g = -x3
    assert dom.contains(x).tolist() == [True, False, True, False, False]
    assert dom.violation(x[:4]).tolist() == pytest.approx([0.0, 1.0, 0.00050013, 0.01005], abs=1e-7)
    assert dom.n_eq == 1 and dom.n_ineq == 1
    assert dom == dom and dom != bk.constrain(None, sphere(3)).domain


# ----------------------------------------------------------------------------- Jacobians
def test_batched_jacobian_matches_per_sample_autograd():
    x = torch.randn(7, 4, generator=_gen(3), dtype=torch.float64).requires_grad_(True)

    def c_fn(x):
        return torch.stack([(x ** 2).sum(1) - 1, torch.sin(x[:, 0]) * x[:, 3], x[:, 1] ** 3], dim=1)

    jac = batched_jacobian(c_fn(x), x)
    for i in range(7):
        ref = torch.autograd.functional.jacobian(lambda v: c_fn(v[None])[0], x[i].detach())
        assert torch.allclose(jac[i], ref, atol=1e-12)
    # Hessians by a second batched pass
    jac = batched_jacobian(c_fn(x), x, create_graph=True)
    hess = batched_jacobian(jac.reshape(7, 12), x).reshape(7, 3, 4, 4)
    ref = torch.autograd.functional.hessian(lambda v: torch.sin(v[0]) * v[3], x[2].detach())
    assert torch.allclose(hess[2, 1], ref, atol=1e-12)
    assert torch.allclose(hess[:, 0], 2 * torch.eye(4, dtype=torch.float64).expand(7, 4, 4))


def test_gram_solver_projection_and_singular_fallback():
    jac = torch.randn(5, 2, 4, generator=_gen(4), dtype=torch.float64)
    jac[3, 1] = 2 * jac[3, 0]  # linearly dependent gradients (LICQ fails) -> pseudo-inverse
    mask = torch.ones(5, 2, dtype=torch.bool)
    mask[4, 1] = False
    jac[4, 1] = 0.0
    solver = GramSolver(jac, mask)
    assert solver.n_singular == 1
    v = torch.randn(5, 4, generator=_gen(5), dtype=torch.float64)
    pv = project_tangent(v, jac, solver)
    normal = torch.einsum("bpd,bd->bp", jac, pv)
    assert torch.allclose(normal, torch.zeros(5, 2, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(project_tangent(pv, jac, solver), pv, atol=1e-10)  # idempotent
    one = GramSolver(jac[:, :1])
    assert torch.allclose(one.solve(torch.ones(5, 1, dtype=torch.float64))[:, 0],
                          1 / (jac[:, 0] ** 2).sum(1))


# ----------------------------------------------------------------------------- constrain()
def test_constrain_builds_a_target_on_a_constrained_domain():
    energy = bk.energies.Energy.from_function(lambda x: 0.5 * (x ** 2).sum(1), Reals(3), name="gauss")
    tgt = bk.constrain(energy, sphere(3), inequalities=[lambda x: -x[:, 0]])
    assert isinstance(tgt, ConstrainedTarget) and tgt.kind == "energy"
    assert isinstance(tgt.domain, Constrained) and tgt.domain.event_shape == (3,)
    assert tgt.name == "constrained(gauss)"
    x = tgt.domain.reference(8, generator=_gen())
    assert torch.allclose(tgt.energy(x), 0.5 * (x ** 2).sum(1))
    assert torch.allclose(tgt.grad_energy(x), x)
    assert bk.select(tgt).name == "olla"
    # constraining again merges the sets
    tgt2 = bk.constrain(tgt, half_space([0.0, 1.0, 0.0], 0.0))
    assert (tgt2.domain.n_eq, tgt2.domain.n_ineq) == (1, 2)
    # uniform law: zero energy and zero gradient
    u = bk.constrain(None, sphere(3))
    assert torch.equal(u.grad_energy(x), torch.zeros_like(x))
    # a float32 energy module is evaluated in its own dtype
    lin = torch.nn.Linear(3, 1)
    tgt3 = bk.constrain(lambda y: lin(y.float())[:, 0], sphere(3))
    assert tgt3.energy(x).dtype == torch.float64


def test_wrong_constraints_are_rejected_with_clear_messages():
    with pytest.raises(TargetError, match=r"returned shape \(4, 3, 3\).*\(4,\) for one constraint"):
        bk.constrain(None, dim=3, equalities=[lambda x: x[:, :, None] * x[:, None, :]])
    with pytest.raises(TargetError, match=r"returned shape \(3,\) for a batch of 4"):
        bk.constrain(None, dim=3, equalities=[lambda x: x[0]])
    with pytest.raises(TargetError, match="not differentiable"):
        bk.constrain(None, dim=2, equalities=[lambda x: torch.as_tensor(x.detach().numpy().sum(1))])
    with pytest.raises(TargetError, match="NaN or inf"):
        bk.constrain(None, dim=2, inequalities=[lambda x: torch.log(x[:, 0])])
    with pytest.raises(TargetError, match="must be floating point"):
        bk.constrain(None, dim=2, equalities=[lambda x: (x[:, 0] > 0).long()])
    with pytest.raises(TargetError, match="failed on float64 test points"):
        bk.constrain(None, dim=2, equalities=[lambda x: x @ torch.ones(3)])
    with pytest.raises(TargetError, match="callable"):
        bk.constrain(None, dim=2, equalities=[3.0])
    with pytest.raises(TargetError, match="no constraints"):
        bk.constrain(None, dim=2)
    with pytest.raises(TargetError, match="ambient dimension"):
        bk.constrain(None, equalities=[lambda x: x.sum(1)])
    with pytest.raises(TargetError, match="dimension 3"):
        bk.constrain(None, sphere(3), dim=4)
    with pytest.raises(TargetError, match="cannot intersect"):
        sphere(3) & sphere(4)
    with pytest.raises(TargetError, match="constraint sets"):
        bk.constrain(None, lambda x: x.sum(1), dim=2)
    with pytest.raises(DomainError, match="continuous base"):
        Constrained(Lattice((2, 2), 2), equalities=[lambda x: x.sum((1, 2))])
    with pytest.raises(TargetError, match="smaller than major"):
        torus(1.0, 2.0)
    with pytest.raises(TargetError, match="k <= n"):
        stiefel(2, 3)
    with pytest.raises(TargetError, match="lower < upper"):
        box([0.0, 1.0], [1.0, 1.0])


def test_domain_validate_reports_infeasible_states():
    dom = bk.constrain(None, sphere(3), tol=1e-3).domain
    with pytest.raises(DomainError, match=r"1 of 2 states.*within tol=0.001"):
        dom.validate(torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64))
    assert math.isclose(dom.to_config()["tol"], 1e-3)
