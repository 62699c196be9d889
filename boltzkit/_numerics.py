"""Finite-difference Hessians of an energy from its gradient, batched over states.

Used by the scale probe (:mod:`boltzkit.probe`, which re-exports both) and by targets that build
a prior hint from the curvature at a reference structure (:mod:`boltzkit.energies`); they sit
here, in the utilities layer, so that targets need not import the probe.
"""

from __future__ import annotations

import torch

__all__ = ["hessian_fd", "hessian_diag_fd"]


def hessian_fd(fn, x: torch.Tensor, step: "torch.Tensor | float") -> torch.Tensor:
    """Hessians ``(B, d, d)`` at the rows of ``x`` by central differences of the gradient
    (``2 d`` gradient evaluations per row, one batched call), symmetrized. ``fn(x)`` returns
    ``(energy, gradient)``; ``step``: a number or one step per row (B,)."""
    B, d = x.shape
    h = torch.as_tensor(step, dtype=x.dtype, device=x.device).reshape(-1)
    h = h.expand(B) if h.numel() == 1 else h
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    pts = torch.cat([x[:, None, :] + h[:, None, None] * eye, x[:, None, :] - h[:, None, None] * eye], 1)
    _, gr = fn(pts.reshape(B * 2 * d, d))
    gr = gr.reshape(B, 2 * d, d)
    hess = (gr[:, :d] - gr[:, d:]) / (2.0 * h[:, None, None])
    return 0.5 * (hess + hess.transpose(1, 2))


def hessian_diag_fd(fn, x, step):
    """Hessian diagonals (B, d) at the rows of ``x`` by central differences along each
    coordinate (``2 d`` gradient evaluations per row, one batched call); ``fn`` as for
    :func:`hessian_fd`, ``step`` a number."""
    B, d = x.shape
    eye = torch.eye(d, dtype=x.dtype, device=x.device) * step
    pts = torch.cat([x[:, None, :] + eye, x[:, None, :] - eye], 1).reshape(B * 2 * d, d)
    _, gr = fn(pts)
    gr = gr.reshape(B, 2 * d, d)
    return ((gr[:, :d] - gr[:, d:]) / (2.0 * step)).diagonal(dim1=1, dim2=2)
