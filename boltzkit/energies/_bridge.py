r"""The bridge from numpy force fields (OpenMM, RDKit) to batched torch energies.

:class:`_NumpyBackedEnergy` turns a function ``x -> (U / kT, grad)`` over a numpy batch into an
:class:`~boltzkit.energies.Energy` whose ``energy`` is differentiable, twice: the double backward
(Hessian-vector products, used by adjoint samplers such as NAAS) is a central finite difference of
the gradient along the vector (step ``hvp_step``, two extra force evaluations). Non-finite energies
or forces become ``+inf`` and gradient 0; ``energy_cut`` applies the lin-log regularization of FAB
(Midgley et al. 2023). Conventions are those of :mod:`boltzkit.energies.molecular`.
"""

from __future__ import annotations

import numpy as np
import torch

from .._utils import check_positive
from ..errors import TargetError
from .base import Energy


def _check_temperature(temperature) -> float:
    return check_positive("temperature", temperature, what="a positive number in kelvin", error=TargetError)


# ============================================================================ autograd bridge
class _EnergyFunction(torch.autograd.Function):
    """``u = f(x)`` for a numpy backend ``f``; backward gives the backend's gradient."""

    @staticmethod
    def forward(ctx, x, target):
        need = ctx.needs_input_grad[0]
        u, g = target._evaluate(x, need)
        if need:
            ctx.save_for_backward(x, g)
            ctx.target = target
        return u

    @staticmethod
    def backward(ctx, grad_u):
        x, g = ctx.saved_tensors
        return grad_u[:, None] * _GradientFunction.apply(x, g, ctx.target), None


class _GradientFunction(torch.autograd.Function):
    """Identity on the precomputed gradient ``g = grad f(x)``; its backward is the
    Hessian-vector product by a central finite difference of the gradient."""

    @staticmethod
    def forward(ctx, x, g, target):
        ctx.save_for_backward(x)
        ctx.target = target
        return g.clone()

    @staticmethod
    def backward(ctx, w):
        (x,) = ctx.saved_tensors
        return ctx.target._hvp(x, w), None, None


class _NumpyBackedEnergy(Energy):
    """Energy computed outside torch, one state at a time, by :meth:`_backend`.

    Subclasses implement ``_backend(x: ndarray (B, D) float64, grad: bool) -> (u (B,), g (B, D)
    or None)`` in units of kT, returning ``+inf`` energy and zero gradient for invalid states.
    This class adds the torch autograd wrapper, a finite-difference Hessian-vector product, a
    one-entry gradient cache (``energy(x)`` then ``grad_energy(x)`` on the same tensor costs one
    backend call) and evaluation counters.
    """

    hvp_step: float = 1e-4
    _shape_hint = ""  # other accepted shapes, for the error message of a wrong batch

    def __init__(self, domain, name=None):
        super().__init__(domain, name)
        self.n_evaluations = 0  # states evaluated by the backend (energy with or without grad)
        self._cache = None

    # -- to implement
    def _backend(self, x: np.ndarray, grad: bool):  # pragma: no cover - abstract
        raise NotImplementedError

    def _flat(self, x) -> torch.Tensor:
        d = self.domain.dim
        if not isinstance(x, torch.Tensor) or x.ndim < 2 or x[0].numel() != d:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise TargetError(f"{self.name} expects a batch of shape (B, {d}){self._shape_hint}, "
                              f"got {shape}; add a batch dimension with x[None] for one state")
        if not x.dtype.is_floating_point:
            raise TargetError(f"{self.name} needs floating-point states, got {x.dtype}")
        return x.reshape(x.shape[0], d)

    # -- evaluation
    def _evaluate(self, flat: torch.Tensor, grad: bool):
        xn = flat.detach().to("cpu", torch.float64).numpy()
        u, g = self._backend(np.ascontiguousarray(xn), grad)
        self.n_evaluations += xn.shape[0]
        u_t = torch.from_numpy(np.asarray(u, dtype=np.float64)).to(flat.device, flat.dtype)
        g_t = None if g is None else torch.from_numpy(g).to(flat.device, flat.dtype)
        return u_t, g_t

    def _hvp(self, flat: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``H(x) w`` per state by ``|w| (g(x + h v) - g(x - h v)) / (2 h)``, ``v = w / |w|``."""
        xn = flat.detach().to("cpu", torch.float64).numpy()
        wn = w.detach().to("cpu", torch.float64).numpy()
        norm = np.linalg.norm(wn, axis=1, keepdims=True)
        v = np.divide(wn, norm, out=np.zeros_like(wn), where=norm > 0)
        h = self.hvp_step
        _, gp = self._backend(np.ascontiguousarray(xn + h * v), True)
        _, gm = self._backend(np.ascontiguousarray(xn - h * v), True)
        self.n_evaluations += 2 * xn.shape[0]
        hv = norm * (gp - gm) / (2.0 * h)
        hv[~np.isfinite(hv)] = 0.0
        return torch.from_numpy(hv).to(flat.device, flat.dtype)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """Reduced energy ``U(x) / kT``, shape ``(B,)``; differentiable (twice, see module doc)."""
        flat = self._flat(x)
        if torch.is_grad_enabled() and flat.requires_grad:
            return _EnergyFunction.apply(flat, self)
        u, g = self._evaluate(flat, True)
        self._cache = (x, x._version, g)  # holding x keeps its memory from being reused
        return u

    def grad_energy(self, x: torch.Tensor) -> torch.Tensor:
        """``grad_x u`` (equal to ``-F / kT``), shape of ``x``; reuses the last :meth:`energy` call
        on the same tensor."""
        c = self._cache
        if c is not None and c[0] is x and c[1] == x._version:
            return c[2].reshape(x.shape)
        _, g = self._evaluate(self._flat(x), True)
        return g.reshape(x.shape)

    def energy_and_grad(self, x: torch.Tensor):
        """``(u, grad u)`` with one backend call."""
        u, g = self._evaluate(self._flat(x), True)
        return u, g.reshape(x.shape)


def _lin_log(u: np.ndarray, g: "np.ndarray | None", cut: float):
    over = u > cut
    if over.any():
        d = u[over] - cut
        if g is not None:
            g[over] = g[over] / (1.0 + d)[:, None]
        u = u.copy()
        u[over] = cut + np.log1p(d)
    return u, g


# ============================================================================ OpenMM
