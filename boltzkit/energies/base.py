"""Energies: unnormalized Boltzmann targets ``p(x) = exp(-U(x)) / Z`` on a domain.

``U`` is in units of kT (temperature folded in, pymbar's reduced potential). Every energy
is batched: ``energy(x)`` maps ``(B, *event_shape)`` to ``(B,)``.

Prior hints (:meth:`Energy.prior_hint`, :class:`PriorHint`, :class:`FramedEnergy`): where a
continuous target's mass sits and how wide it is; molecules
(:class:`~boltzkit.energies.molecular.OpenMMEnergy`) give the harmonic frame of their
minimized structure.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from .._utils import module_device, torch_generator
from ..domains import Domain
from ..errors import NonFiniteEnergyError, TargetError


class Energy(torch.nn.Module):
    """Base class of every energy target.

    Subclasses implement :meth:`energy` and may override :meth:`grad_energy` (autograd by
    default) and :meth:`exact_log_z` (None when no exact value is known).
    """

    kind = "energy"

    #: the exact log normalizing constant, for subclasses that know it when they are built
    #: (they set it in their constructor); what :meth:`exact_log_z` returns unless overridden
    _log_z: float | None = None

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
        return self._log_z

    def prior_hint(self) -> "PriorHint | None":
        """The natural frame of a continuous target, or None (the default: no hint).

        A target on ``Reals(d)`` may return a :class:`PriorHint` ``(loc, scale)``: where its
        mass sits and how wide it is along each direction (e.g. a molecule's minimized
        structure and the inverse square root of its Hessian there). Continuous samplers that
        honour hints (NAAS, PDNS, MALA, AIS; option ``use_prior_hint=True`` by default) then
        work in the standardized coordinates ``z = scale^{-1} (x - loc)``: their Gaussian
        prior / reference / chain start ``N(0, s^2 I)`` in ``z`` is ``N(loc, s^2 scale
        scale^T)`` in ``x``, their length options (``prior_std``, ``init_std``,
        ``reference_std``, ``target_scale``) are in units of the hint's scale, and they return
        samples, log-weights and log Z in the target's own coordinates ``x``. See
        :class:`PriorHint` and :class:`FramedEnergy`.
        """
        return None

    def sampling_view(self) -> "SamplingView | None":
        """Other coordinates in which :func:`boltzkit.sample` should sample this target, or
        None (the default: sample it as it is).

        A target whose natural sampling coordinates differ from its states (a molecule: bonds,
        angles and dihedrals instead of Cartesian positions) returns a :class:`SamplingView`;
        ``bk.sample`` then chooses and runs the method on ``view.target`` and maps the result
        back (:meth:`SamplingView.pull_back`), so the caller still gets this target's states.
        """
        return None

    #: ``"module:function"`` that draws this target's samples on a matplotlib axis,
    #: ``fn(ax, samples, weights, config)``; stored in the config so a saved Result keeps it
    #: (:func:`boltzkit.plot.plot_result`). None: the generic histogram.
    sample_plot: "str | None" = None

    def to_config(self) -> dict:
        """JSON-able description, stored in Result.config."""
        cfg = {"name": self.name, "domain": self.domain.to_config()}
        if self.sample_plot:
            cfg["sample_plot"] = self.sample_plot
        return cfg

    @property
    def device(self) -> torch.device:
        return module_device(self)

    def _mapped(self, z: torch.Tensor, fn: Callable) -> torch.Tensor:
        """``fn(z)``, the same output tensor again while the same input tensor ``z`` (same
        version) comes back: a target that maps its states before evaluating a base target
        (:class:`FramedEnergy`, ``ShiftedEnergy``) keeps the base's ``energy`` ->
        ``grad_energy`` cache working. Not cached when ``z`` is being differentiated."""
        if torch.is_grad_enabled() and z.requires_grad:
            return fn(z)
        last = getattr(self, "_map_cache", None)
        if last is not None and last[0] is z and last[1] == z._version:
            return last[2]
        x = fn(z)
        self._map_cache = (z, z._version, x)
        return x

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


@dataclass(frozen=True)
class SamplingView:
    """The coordinates in which ``bk.sample`` samples a target (:meth:`Energy.sampling_view`).

    Attributes
    ----------
    target : Energy
        The same distribution in the sampling coordinates.
    to_target : callable
        Maps a batch of samples of ``target`` to states of the original target.
    log_z_to_target : callable or None
        Maps ``log Z`` of ``target`` to ``log Z`` of the original target; None where the
        original has none (the pulled-back Result then reports ``log_z = None`` and keeps the
        view's value in ``diagnostics["log_z_view"]``).
    method_options : dict
        Default options per method name in these coordinates (the caller's options win).
    description : str
        One line for ``bk.explain`` and ``Result.diagnostics["coordinates"]``.

    Samples pulled back this way are weighted samples of the original target for every
    statistic that the map preserves (for internal coordinates: everything invariant under
    rigid motions); the log-weights are those of the view.
    """

    target: "Energy"
    to_target: Callable
    log_z_to_target: "Callable | None" = None
    method_options: dict = field(default_factory=dict)
    description: str = ""

    def pull_back(self, res, original):
        """The :class:`~boltzkit.result.Result` ``res`` of ``self.target`` as one of
        ``original``: samples mapped by ``to_target``, log Z converted (or None), the view's
        own log Z and its coordinates in ``diagnostics``."""
        with torch.no_grad():
            x = self.to_target(res.samples)
        x = torch.as_tensor(x).detach().to("cpu", res.samples.dtype)
        log_z = None
        if res.log_z is not None and self.log_z_to_target is not None:
            log_z = self.log_z_to_target(res.log_z)
        log_z_se = None if log_z is None else res.log_z_stderr
        diag = {**res.diagnostics, "coordinates": self.description, "log_z_view": res.log_z}
        if log_z is None and "log_z_unavailable" not in diag:
            diag["log_z_unavailable"] = ("the target's own coordinates have no finite normalizing "
                                         "constant; diagnostics['log_z_view'] is log Z in the "
                                         "sampling coordinates")
        target = original.to_config() if hasattr(original, "to_config") else res.target
        return dataclasses.replace(res, samples=x, log_z=log_z, log_z_stderr=log_z_se,
                                   diagnostics=diag, target=target)


class PriorHint:
    r"""An affine frame ``x = loc + scale z`` declared by a target (:meth:`Energy.prior_hint`).

    Parameters
    ----------
    loc : Tensor ``(d,)`` (or anything of ``d`` numbers)
        Where the target's mass sits (a reference structure, a mode, the mean).
    scale : float, Tensor ``(d,)`` or Tensor ``(d, d)``
        Its width: a number (isotropic), per-coordinate standard deviations, or an invertible
        matrix ``S`` whose ``S S^T`` is a covariance of the target's main basin (for example
        the inverse Hessian at a minimum, :func:`scale_from_hessian`).

    The map has the constant Jacobian ``|det S|``, so a density ``q_z`` in ``z`` is
    ``q_z(z) / |det S|`` in ``x``; for importance weights ``log w_x = log w_z + log|det S|``
    and ``log Z_x = log Z_z + log|det S|`` (:attr:`log_det`).
    """

    def __init__(self, loc, scale=1.0):
        loc = torch.as_tensor(loc, dtype=torch.float64).detach().reshape(-1).cpu()
        d = loc.numel()
        if d < 1 or not bool(torch.isfinite(loc).all()):
            raise TargetError("PriorHint.loc must be a non-empty vector of finite numbers")
        sc = torch.as_tensor(scale, dtype=torch.float64).detach().cpu()
        if sc.ndim == 0:
            sc = sc.reshape(1).expand(d).clone()
        if sc.ndim == 1:
            if sc.numel() != d or not bool(torch.isfinite(sc).all()) or not bool((sc > 0).all()):
                raise TargetError(f"PriorHint.scale must be a positive number, {d} positive numbers "
                                  f"or a ({d}, {d}) invertible matrix, got shape {tuple(sc.shape)}")
            log_det = float(sc.log().sum())
        elif sc.shape == (d, d) and bool(torch.isfinite(sc).all()):
            sign, log_det = torch.linalg.slogdet(sc)
            if float(sign) == 0.0 or not math.isfinite(float(log_det)):
                raise TargetError("PriorHint.scale matrix is singular; floor its small eigenvalues")
            log_det = float(log_det)
        else:
            raise TargetError(f"PriorHint.scale must be a number, a ({d},) vector or a ({d}, {d}) "
                              f"matrix, got shape {tuple(sc.shape)}")
        self.loc, self.scale, self.dim, self.log_det = loc, sc, d, log_det

    @property
    def is_diagonal(self) -> bool:
        return self.scale.ndim == 1

    def to_x(self, z: torch.Tensor) -> torch.Tensor:
        """Standardized states ``z`` (B, d) -> target coordinates ``x = loc + S z``."""
        loc, s = self.loc.to(z), self.scale.to(z)
        return loc + (z * s if s.ndim == 1 else z @ s.T)

    def to_z(self, x: torch.Tensor) -> torch.Tensor:
        """Target coordinates ``x`` (B, d) -> ``z = S^{-1} (x - loc)``."""
        r = (x - self.loc.to(x)).to(torch.float64)
        s = self.scale.to(r.device)
        z = r / s if s.ndim == 1 else torch.linalg.solve(s, r.T).T
        return z.to(x.dtype)

    def grad_to_z(self, g_x: torch.Tensor) -> torch.Tensor:
        """A gradient in ``x`` -> the gradient in ``z`` (``S^T g``), batched (B, d)."""
        s = self.scale.to(g_x)
        return g_x * s if s.ndim == 1 else g_x @ s

    def to_config(self) -> dict:
        return {"dim": self.dim, "log_det": self.log_det,
                "scale": "diagonal" if self.is_diagonal else "matrix"}


def scale_from_hessian(hessian, *, max_std: float, min_std: float = 0.0) -> torch.Tensor:
    """``S = V diag(lambda)^{-1/2}`` from a symmetric Hessian ``H = V diag(lambda) V^T``.

    ``S S^T`` is the harmonic (Laplace) covariance ``H^{-1}``; eigenvalues are taken in
    absolute value and clipped to ``[1/max_std^2, 1/min_std^2]`` so that flat or unstable
    directions (rotations of a molecule, saddles) get the finite width ``max_std``.

    Returns
    -------
    Tensor ``(d, d)`` float64, usable as :class:`PriorHint` ``scale``.
    """
    h = torch.as_tensor(hessian, dtype=torch.float64)
    h = 0.5 * (h + h.T)
    lam, vec = torch.linalg.eigh(h)
    lo = 1.0 / float(max_std) ** 2
    hi = math.inf if not min_std else 1.0 / float(min_std) ** 2
    lam = lam.abs().clamp(lo, hi)
    return vec * lam.rsqrt()[None, :]


class FramedEnergy(Energy):
    """A target seen in the standardized coordinates of a :class:`PriorHint`:
    ``u_z(z) = u(loc + S z)``.

    Used by the continuous samplers; energies and gradients are those of ``base`` (one base
    evaluation each; ``energy(z)`` then ``grad_energy(z)`` on the same tensor reuses the base
    target's cache), differentiable twice where ``base`` is. ``exact_log_z`` is
    ``log Z - log|det S|``.
    """

    def __init__(self, base: Energy, hint: PriorHint):
        dom = getattr(base, "domain", None)
        if not isinstance(dom, Domain) or dom.is_discrete or getattr(dom, "dim", None) != hint.dim:
            raise TargetError(f"a PriorHint of dimension {hint.dim} needs a continuous target of "
                              f"the same dimension, got {dom!r}")
        super().__init__(dom, name=getattr(base, "name", type(base).__name__))
        self.base, self.hint = base, hint

    def energy(self, z):
        return self.base.energy(self._mapped(z, self.hint.to_x))

    def grad_energy(self, z):
        return self.hint.grad_to_z(self.base.grad_energy(self._mapped(z, self.hint.to_x)))

    def exact_log_z(self):
        lz = self.base.exact_log_z()
        return None if lz is None else lz - self.hint.log_det

    def to_config(self):
        cfg = self.base.to_config() if hasattr(self.base, "to_config") else {}
        return {**cfg, "frame": self.hint.to_config()}


def framed(target, use_hint: bool = True) -> "tuple[Energy, PriorHint | None]":
    """``(target in its hint's frame, hint)``, or ``(target, None)`` when ``use_hint`` is False
    or the target gives no hint (the helper continuous samplers call)."""
    hint_fn = getattr(target, "prior_hint", None)
    hint = hint_fn() if (use_hint and callable(hint_fn)) else None
    if hint is None:
        return target, None
    if not isinstance(hint, PriorHint):
        raise TargetError(f"{getattr(target, 'name', target)}.prior_hint() must return a PriorHint "
                          f"or None, got {type(hint).__name__}")
    return FramedEnergy(target, hint), hint


class FunctionEnergy(Energy):
    def __init__(self, fn, domain, *, name=None, log_z=None):
        super().__init__(domain, name or getattr(fn, "__name__", "FunctionEnergy"))
        self._fn = fn
        self._log_z = log_z

    def energy(self, x):
        return self._fn(x)


def check_energy_values(u: torch.Tensor, batch: int, *, name: str = "energy") -> torch.Tensor:
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
    bad = ~torch.isfinite(u)
    if bool(bad.any()):
        idx = bad.nonzero().flatten()
        raise NonFiniteEnergyError(f"{name} returned {int(idx.numel())} NaN or infinite values out of "
                                   f"{batch} (first at batch index {int(idx[0])}); the energy must be "
                                   "finite on the domain. Check for overflow or log of non-positive numbers.")
    return u


def index_energy(energy, x: torch.Tensor) -> torch.Tensor:
    """float64 energies (B,) of ``energy`` (on a categorical domain) at flat index configurations
    ``x`` (B, D), checked with :func:`check_energy_values`."""
    u = energy.energy(energy.domain.decode_flat(x))
    return check_energy_values(u, x.shape[0], name=f"{energy.name}.energy").to(torch.float64)


def validate_target(target, *, n: int = 8, seed: int = 0, needs_grad: bool = False,
                    device: "torch.device | str" = "cpu") -> None:
    """Boundary check run before any work: evaluate the target on reference draws."""
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
