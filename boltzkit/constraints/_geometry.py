"""Batched linear algebra of constraint surfaces, shared by the constrained samplers.

Conventions: states are flat, ``x`` has shape (B, D); a stack of ``P`` constraint values is
``c`` with shape (B, P); its Jacobian ``J`` has shape (B, P, D) (row ``i`` is the gradient of
``c_i``). A boolean ``mask`` (B, P) marks which constraints are active for each state;
inactive rows of ``J`` are zero and their Gram block is replaced by the identity, so every
state solves its own active system inside one batched call.
"""

from __future__ import annotations

import torch

RTOL = 1e-10  # relative pivot size below which a Gram matrix counts as singular


def batched_jacobian(c: torch.Tensor, x: torch.Tensor, *, create_graph: bool = False) -> torch.Tensor:
    """Jacobian of rowwise constraints: ``c`` (B, P) computed from ``x`` (B, D) -> (B, P, D).

    One vectorized backward pass over the P constraint outputs (``is_grads_batched``): no
    Python loop over samples or constraints. Rows of ``c`` must depend only on the same row of
    ``x`` (every batched constraint does).
    """
    b, p = c.shape
    if p == 0 or not c.requires_grad:  # no constraints, or constants (e.g. the Hessian of a linear map)
        return x.new_zeros(b, p, x.shape[1])
    eye = torch.eye(p, dtype=c.dtype, device=c.device).unsqueeze(1).expand(p, b, p)
    (jt,) = torch.autograd.grad(c, x, grad_outputs=eye, is_grads_batched=True,
                                create_graph=create_graph, retain_graph=True, allow_unused=True)
    return x.new_zeros(b, p, x.shape[1]) if jt is None else jt.transpose(0, 1)  # None: constants


class GramSolver:
    """Invert ``G = J J^T + damp I`` (identity on inactive rows) once; solve many right-hand sides.

    Falls back to the pseudo-inverse for states whose Gram matrix is singular (gradients
    linearly dependent: the LICQ condition fails there).
    """

    def __init__(self, jac: torch.Tensor, mask: "torch.Tensor | None" = None, damp: float = 0.0):
        b, p, _ = jac.shape
        self.p = p
        if p == 0:
            return
        gram = jac @ jac.transpose(1, 2)
        if mask is not None:
            gram = gram + torch.diag_embed((~mask).to(jac.dtype))
        if damp > 0:
            gram = gram + damp * torch.eye(p, dtype=jac.dtype, device=jac.device)
        if p == 1:  # one active constraint: G is a scalar (the pseudo-inverse of 0 is 0)
            g = gram[:, 0, 0]
            ok = g > 0
            safe = torch.where(ok, g, torch.ones_like(g))
            self.scalar_inv = torch.where(ok, 1.0 / safe, torch.zeros_like(g))
            self.n_singular = int((~ok).sum())
            return
        chol, info = torch.linalg.cholesky_ex(gram)
        # singular or numerically singular (a pivot below RTOL of the largest diagonal entry)
        pivots = torch.diagonal(chol, dim1=1, dim2=2) ** 2
        scale = torch.diagonal(gram, dim1=1, dim2=2).amax(1)
        self.bad = (info > 0) | ~(pivots.amin(1) > RTOL * scale)
        self.n_singular = int(self.bad.sum())
        self.inv = torch.linalg.inv_ex(gram)[0]  # small P: one inverse, reused for every rhs
        if self.n_singular:
            self.inv[self.bad] = torch.linalg.pinv(gram[self.bad], hermitian=True, rtol=RTOL)

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """G^{-1} rhs for rhs of shape (B, P) or (B, P, K)."""
        if self.p == 0:
            return rhs
        if self.p == 1:
            return rhs * (self.scalar_inv[:, None] if rhs.ndim == 2 else self.scalar_inv[:, None, None])
        if rhs.ndim == 2:
            return torch.einsum("bpq,bq->bp", self.inv, rhs)
        return self.inv @ rhs


def normal_component(jac: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """``J^T coef``: (B, P, D), (B, P) -> (B, D)."""
    return torch.einsum("bp,bpd->bd", coef, jac)


def project_tangent(v: torch.Tensor, jac: torch.Tensor, solver: GramSolver) -> torch.Tensor:
    """``Pi v = v - J^T G^{-1} J v`` for v (B, D) or (B, K, D) (K vectors per state)."""
    if v.ndim == 2:
        return v - normal_component(jac, solver.solve(torch.einsum("bpd,bd->bp", jac, v)))
    jv = torch.einsum("bpd,bkd->bpk", jac, v)
    return v - torch.einsum("bpk,bpd->bkd", solver.solve(jv), jac)


def tangent_projector(jac: torch.Tensor, solver: GramSolver) -> torch.Tensor:
    """The explicit projector Pi (B, D, D); O(D^2) memory per state, for small D only."""
    b, _, d = jac.shape
    eye = torch.eye(d, dtype=jac.dtype, device=jac.device).expand(b, d, d)
    return eye - jac.transpose(1, 2) @ solver.solve(jac)
