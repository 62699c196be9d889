"""Energies: unnormalized Boltzmann targets ``p(x) = exp(-U(x)) / Z`` on a domain.

``U`` is in units of kT (temperature folded in, pymbar's reduced potential). Every energy
is batched: ``energy(x)`` maps ``(B, *event_shape)`` to ``(B,)``.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..domains import Domain
from ..errors import TargetError


class Energy(torch.nn.Module):
    """Base class of every energy target.

    Subclasses implement :meth:`energy` and may override :meth:`grad_energy` (autograd by
    default) and :meth:`exact_log_z` (None when no exact value is known).
    """

    kind = "energy"

    def __init__(self, domain: Domain, name: "str | None" = None):
        super().__init__()
        if not isinstance(domain, Domain):
            raise TargetError(f"domain must be a boltzkit Domain (Reals, Lattice, Sequence), "
                              f"got {type(domain).__name__}")
        self.domain = domain
        self.name = name or type(self).__name__

    # -- the model
    def energy(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.energy(x)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalized log density, ``-energy(x)``."""
        return -self.energy(x)

    def grad_energy(self, x: torch.Tensor) -> torch.Tensor:
        """Gradient of the energy with respect to x (autograd)."""
        if self.domain.is_discrete:
            raise TargetError(f"{self.name} lives on a discrete domain; it has no gradient")
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.energy(x).sum(), x)
        return g

    def exact_log_z(self) -> "float | None":
        """Exact log normalizing constant, or None where none is known."""
        return None

    def to_config(self) -> dict:
        """JSON-able description, stored in Result.config."""
        return {"name": self.name, "domain": self.domain.to_config()}

    @property
    def device(self) -> torch.device:
        for t in list(self.parameters()) + list(self.buffers()):
            return t.device
        return torch.device("cpu")

    # -- constructors
    @staticmethod
    def from_function(fn: Callable[[torch.Tensor], torch.Tensor], domain: Domain, *,
                      name: "str | None" = None, log_z: "float | None" = None) -> "Energy":
        """Wrap a user callable ``fn(x) -> (B,)`` (energy in kT) as an :class:`Energy`."""
        if not callable(fn):
            raise TargetError(f"fn must be callable, got {type(fn).__name__}")
        return FunctionEnergy(fn, domain, name=name, log_z=log_z)

    def __repr__(self):
        return f"{self.name}(domain={self.domain!r})"


class FunctionEnergy(Energy):
    def __init__(self, fn, domain, *, name=None, log_z=None):
        super().__init__(domain, name or getattr(fn, "__name__", "FunctionEnergy"))
        self._fn = fn
        self._log_z = log_z

    def energy(self, x):
        return self._fn(x)

    def exact_log_z(self):
        return self._log_z


def check_energy_values(u: torch.Tensor, batch: int, *, name: str = "energy",
                        allow_inf: bool = False) -> torch.Tensor:
    """Validate an energy evaluation: shape (B,), floating dtype, finite values."""
    if not isinstance(u, torch.Tensor):
        raise TargetError(f"{name} must return a torch.Tensor, got {type(u).__name__}")
    if tuple(u.shape) != (batch,):
        raise TargetError(f"{name} returned shape {tuple(u.shape)} for a batch of {batch}; "
                          f"it must return one value per state, shape ({batch},). "
                          "Reduce over the event dimensions (e.g. .sum(dim=-1)).")
    if not u.dtype.is_floating_point:
        raise TargetError(f"{name} returned dtype {u.dtype}; it must be floating point. "
                          "Cast with .float() or .double().")
    bad = torch.isnan(u) if allow_inf else ~torch.isfinite(u)
    if bool(bad.any()):
        idx = bad.nonzero().flatten()
        kind = "NaN" if allow_inf else "NaN or infinite"
        raise TargetError(f"{name} returned {int(idx.numel())} {kind} values out of {batch} "
                          f"(first at batch index {int(idx[0])}); the energy must be finite on "
                          "the domain. Check for overflow or log of non-positive numbers.")
    return u


def validate_target(target, *, n: int = 8, seed: int = 0, needs_grad: bool = False,
                    device: "torch.device | str" = "cpu") -> None:
    """Boundary check run before any work: evaluate the target on reference draws."""
    from .._utils import torch_generator

    kind = getattr(target, "kind", None)
    if kind is None or not hasattr(target, "domain"):
        raise TargetError(f"{type(target).__name__} is not a boltzkit target: it needs a "
                          "`domain` and a `kind`. Wrap a callable with "
                          "bk.energies.Energy.from_function(fn, domain=...)")
    if kind != "energy":
        return
    x = target.domain.reference(n, generator=torch_generator(seed, device), device=device)
    with torch.no_grad():
        u = target.energy(x)
    check_energy_values(u, n, name=f"{target.name}.energy")
    if needs_grad:
        g = target.grad_energy(x)
        if tuple(g.shape) != tuple(x.shape) or not bool(torch.isfinite(g).all()):
            raise TargetError(f"{target.name}.grad_energy returned shape {tuple(g.shape)} "
                              f"(expected {tuple(x.shape)}) or non-finite values")
