"""Constrained targets: exp(-f) with respect to the surface measure of a constraint set.

    Sigma = { x : h_i(x) = 0 (i = 1..m),  g_j(x) <= 0 (j = 1..l) }

:class:`Constrained` is the domain (a base domain plus the constraints), and
:class:`ConstrainedTarget` the energy target on it: its density is ``exp(-f(x))`` with respect
to the surface (Hausdorff) measure of ``{h = 0}`` restricted to ``{g <= 0}`` -- or Lebesgue
measure restricted to ``{g <= 0}`` when there are no equalities. Build one with
:func:`constrain`.

Constraints are batched torch callables: ``(B, *event_shape) -> (B,)`` for one constraint or
``(B, k)`` for k of them. They receive float64 tensors. Jacobians and curvatures come from
autograd, vectorized over the batch and the constraints.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from .._utils import check_positive, torch_generator
from ..domains.base import Domain, Reals
from ..energies.base import Energy
from ..errors import DomainError, TargetError
from ._geometry import GramSolver, batched_jacobian, normal_component
from .sets import ConstraintSet

ConstraintFn = Callable[[torch.Tensor], torch.Tensor]
_N_PROBE = 4


def _fn_name(fn) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def _as_tuple(fns, what: str) -> tuple:
    if fns is None:
        return ()
    if callable(fns):
        fns = [fns]
    try:
        fns = tuple(fns)
    except TypeError:
        raise TargetError(f"{what} must be a list of callables, got {type(fns).__name__}") from None
    for fn in fns:
        if not callable(fn):
            raise TargetError(f"every entry of {what} must be a callable x (B, d) -> (B,) or (B, k); "
                              f"got {type(fn).__name__}")
    return fns


class Constrained(Domain):
    """A base domain restricted to ``{h(x) = 0, g(x) <= 0}``.

    Parameters
    ----------
    base : Domain
        A continuous domain (e.g. ``Reals(d)``) that holds the ambient states.
    equalities, inequalities : sequence of callables
        Batched constraint functions ``(B, *event_shape) -> (B,)`` or ``(B, k)``.
        Feasible means ``h(x) = 0`` and ``g(x) <= 0``.
    tol : float
        Feasibility tolerance of :meth:`contains`: ``max(|h|, max(g, 0)) <= tol``.
    n_land : int
        Gauss-Newton iterations that :meth:`reference` uses to move base draws onto the set.

    Notes
    -----
    States are float64. :meth:`reference` returns base draws moved towards the set (not
    guaranteed feasible: samplers check with :meth:`contains`). Two ``Constrained`` domains
    are equal only if they are the same object (constraints are arbitrary callables).
    """

    is_discrete = False

    def __init__(self, base: Domain, equalities: Iterable[ConstraintFn] = (),
                 inequalities: Iterable[ConstraintFn] = (), *, tol: float = 0.05, n_land: int = 50):
        if not isinstance(base, Domain):
            raise DomainError(f"base must be a boltzkit Domain such as Reals(d), got {type(base).__name__}")
        if base.is_discrete:
            raise DomainError(f"constraints need a continuous base domain, got {base!r}; "
                              "use Reals(d)")
        if isinstance(base, Constrained):
            raise DomainError("base is already Constrained; pass all constraints to one Constrained "
                              "(bk.constrain merges them)")
        check_positive("tol", tol, error=DomainError)
        if int(n_land) != n_land or n_land < 0:
            raise DomainError(f"n_land must be a non-negative integer, got {n_land!r}")
        self.base = base
        self.event_shape = tuple(base.event_shape)
        self.dtype = torch.float64
        self.tol = float(tol)
        self.n_land = int(n_land)
        self.equalities = _as_tuple(equalities, "equalities")
        self.inequalities = _as_tuple(inequalities, "inequalities")
        if not self.equalities and not self.inequalities:
            raise TargetError("no constraints given: pass equalities=[...] and/or inequalities=[...] "
                              "(or a ready-made set such as bk.constraints.sphere(3))")
        self.n_eq = sum(self._probe(self.equalities, "equality"))
        self.n_ineq = sum(self._probe(self.inequalities, "inequality"))

    # ------------------------------------------------------------------ checks
    def _probe(self, fns, kind: str) -> list[int]:
        """Evaluate each constraint on a few base draws: shape, dtype, finiteness, gradient."""
        x = self.base.reference(_N_PROBE, generator=torch_generator(0)).to(torch.float64)
        sizes = []
        for fn in fns:
            name = _fn_name(fn)
            xr = x.clone().requires_grad_(True)
            try:
                with torch.enable_grad():
                    out = fn(xr)
            except Exception as exc:  # report what the user's function raised
                raise TargetError(f"{kind} constraint {name!r} failed on float64 test points of shape "
                                  f"{tuple(x.shape)}: {type(exc).__name__}: {exc}. Constraints must "
                                  "accept a batch (B, *event_shape) of float64 states.") from exc
            if not isinstance(out, torch.Tensor):
                raise TargetError(f"{kind} constraint {name!r} returned {type(out).__name__}; it must "
                                  "return a torch.Tensor of shape (B,) or (B, k)")
            if out.ndim not in (1, 2) or out.shape[0] != _N_PROBE or (out.ndim == 2 and out.shape[1] < 1):
                raise TargetError(f"{kind} constraint {name!r} returned shape {tuple(out.shape)} for a "
                                  f"batch of {_N_PROBE}; it must return ({_N_PROBE},) for one constraint "
                                  f"or ({_N_PROBE}, k) for k constraints (reduce over the event "
                                  "dimensions, keep the batch dimension first)")
            if not out.dtype.is_floating_point:
                raise TargetError(f"{kind} constraint {name!r} returned dtype {out.dtype}; it must be "
                                  "floating point")
            if not bool(torch.isfinite(out).all()):
                raise TargetError(f"{kind} constraint {name!r} returned NaN or inf on test points; it "
                                  "must be finite (and differentiable) on the whole base domain")
            if not out.requires_grad:
                raise TargetError(f"{kind} constraint {name!r} is not differentiable by autograd (its "
                                  "output does not depend on x through torch operations); write it "
                                  "with torch ops on the input tensor")
            sizes.append(1 if out.ndim == 1 else int(out.shape[1]))
        return sizes

    # ------------------------------------------------------------------ values
    def flatten(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *event_shape) -> (B, D) float64."""
        return x.reshape(x.shape[0], -1).to(torch.float64)

    def unflatten(self, xf: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, *event_shape)."""
        return xf.reshape(xf.shape[0], *self.event_shape)

    def _stack(self, fns, xf: torch.Tensor) -> torch.Tensor:
        x = self.unflatten(xf)
        if not fns:
            return xf.new_zeros(xf.shape[0], 0)
        return torch.cat([fn(x).reshape(xf.shape[0], -1) for fn in fns], dim=1)

    def values_flat(self, xf: torch.Tensor) -> torch.Tensor:
        """All constraint values [h, g] (B, m + l) of flat float64 states (B, D)."""
        return torch.cat([self._stack(self.equalities, xf), self._stack(self.inequalities, xf)], dim=1)

    def violation_from_values(self, c_all: torch.Tensor) -> torch.Tensor:
        """max(|h|, max(g, 0)) per state from stacked values (B, m + l) -> (B,)."""
        v = torch.cat([c_all[:, :self.n_eq].abs(), c_all[:, self.n_eq:].clamp_min(0)], dim=1)
        return v.amax(dim=1)

    def violation(self, x: torch.Tensor) -> torch.Tensor:
        """Constraint violation max(|h|, max(g, 0)) per state, shape (B,)."""
        with torch.no_grad():
            return self.violation_from_values(self.values_flat(self.flatten(x)))

    def contains(self, x: torch.Tensor) -> torch.Tensor:
        xf = self.flatten(x)
        ok = torch.isfinite(xf).all(dim=1)
        viol = self.violation(torch.where(ok[:, None], xf, torch.zeros_like(xf)))
        return ok & (viol <= self.tol)

    def _range_hint(self) -> str:
        return (f"states must satisfy the constraints within tol={self.tol:g} "
                "(max(|h(x)|, max(g(x), 0)) <= tol)")

    # ------------------------------------------------------------------ landing
    def active_system(self, xf: torch.Tensor, margin: float = 0.0):
        """Evaluate the constraints and select the active ones, the landing targets of OLLA.

        Equalities are always active (value h). An inequality is active where g >= 0 (violated
        or on the boundary), with value ``g + margin`` so that landing aims slightly inside.
        Only inequality columns active for at least one state are kept, and only they are
        evaluated with autograd (inactive inequalities cost one forward pass, no backward).

        Parameters
        ----------
        xf : (B, D) flat float64 states (may require grad).
        margin : float

        Returns
        -------
        c : (B, P) active values (zero where inactive), differentiable in ``xf``.
        mask : bool (B, P), which entries are active.
        cols : long (P,), the columns of ``values_flat`` that ``c`` holds.
        c_all : (B, m + l) detached values of every constraint.
        """
        m = self.n_eq
        h = self._stack(self.equalities, xf)
        with torch.no_grad():
            g0 = self._stack(self.inequalities, xf)
        act = g0 >= 0
        keep = act.any(dim=0)
        cols = torch.cat([torch.arange(m, device=xf.device), m + keep.nonzero().flatten()])
        a = act[:, keep]
        g_act = (self._stack(self.inequalities, xf)[:, keep] if bool(keep.any())
                 else xf.new_zeros(xf.shape[0], 0))
        c = torch.cat([h, torch.where(a, g_act + margin, torch.zeros_like(g_act))], dim=1)
        mask = torch.cat([torch.ones_like(h, dtype=torch.bool), a], dim=1)
        return c, mask, cols, torch.cat([h.detach(), g0], dim=1)

    def values_cols(self, xf: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Constraint values at ``cols`` of ``values_flat`` (inequalities only evaluated if needed)."""
        if cols.numel() == 0 or int(cols.max()) < self.n_eq:
            return self._stack(self.equalities, xf)[:, cols]
        return self.values_flat(xf)[:, cols]

    def land(self, x: torch.Tensor, *, n_iter: "int | None" = None, margin: "float | None" = None) -> torch.Tensor:
        """Move states onto the set by Gauss-Newton (least-norm) steps ``x -= J^T G^{-1} c``.

        Uses the active set of :meth:`active_system` (equalities and violated inequalities,
        aimed ``margin`` inside; default ``tol / 10``). Stops when all states are feasible to
        ``1e-6 * tol`` or after ``n_iter`` (default ``self.n_land``) iterations. Rows that
        become non-finite keep their previous value. Returns flat-shaped states like ``x``.
        """
        n_iter = self.n_land if n_iter is None else int(n_iter)
        margin = self.tol / 10 if margin is None else float(margin)
        shape = x.shape
        xf = self.flatten(x).detach().clone()
        for _ in range(n_iter):
            with torch.enable_grad():
                xr = xf.requires_grad_(True)
                c, mask, _, c_all = self.active_system(xr, margin)
                if bool((self.violation_from_values(c_all) <= 1e-6 * self.tol).all()):
                    break
                jac = batched_jacobian(c, xr) * mask[..., None]
            xf = xf.detach()
            new = xf - normal_component(jac, GramSolver(jac, mask).solve(c.detach() * mask))
            ok = torch.isfinite(new).all(dim=1, keepdim=True)
            xf = torch.where(ok, new, xf)
        return xf.detach().reshape(shape).to(torch.float64)

    def reference(self, n, *, generator=None, device="cpu"):
        """Base draws moved towards the set by :meth:`land` (not necessarily feasible)."""
        return self.land(self.base.reference(n, generator=generator, device=device).to(torch.float64))

    # ------------------------------------------------------------------ identity
    def to_config(self) -> dict:
        return {"type": "Constrained", "base": self.base.to_config(),
                "equalities": [_fn_name(f) for f in self.equalities],
                "inequalities": [_fn_name(f) for f in self.inequalities],
                "n_eq": self.n_eq, "n_ineq": self.n_ineq, "tol": self.tol}

    def __eq__(self, other) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self):
        return (f"Constrained({self.base!r}, equalities={self.n_eq}, inequalities={self.n_ineq}, "
                f"tol={self.tol:g})")


class ConstrainedTarget(Energy):
    """Density ``exp(-f)`` w.r.t. the surface measure of a :class:`Constrained` domain.

    ``base`` is the energy ``f``: a boltzkit :class:`~boltzkit.energies.Energy`, a batched
    callable ``(B, *event_shape) -> (B,)``, or None for the uniform law (f = 0).
    """

    def __init__(self, base, domain: Constrained, name: "str | None" = None):
        if not isinstance(domain, Constrained):
            raise TargetError(f"domain must be Constrained, got {type(domain).__name__}")
        if base is not None and not callable(base) and not isinstance(base, Energy):
            raise TargetError(f"energy must be a boltzkit Energy, a callable x -> (B,) or None, "
                              f"got {type(base).__name__}")
        default = "uniform" if base is None else getattr(base, "name", None) or _fn_name(base)
        super().__init__(domain, name or f"constrained({default})")
        module = isinstance(base, torch.nn.Module)
        self.base = base if module else None  # a registered submodule: .to(device) moves it
        self._fn = None if module else base

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        if self.base is None and self._fn is None:
            return x.reshape(x.shape[0], -1).sum(dim=1) * 0.0  # uniform; keeps the graph
        if self.base is not None:
            dt = next((t.dtype for t in [*self.base.parameters(), *self.base.buffers()]
                       if t.dtype.is_floating_point), None)
            fn = self.base.energy if hasattr(self.base, "energy") else self.base
            return fn(x if dt is None else x.to(dt)).to(x.dtype)
        return self._fn(x).to(x.dtype)

    def grad_energy(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.energy(x).sum(), x, allow_unused=True)
        return torch.zeros_like(x) if g is None else g

    def to_config(self) -> dict:
        cfg = super().to_config()
        cfg["energy"] = (self.base.to_config() if hasattr(self.base, "to_config")
                         else {"name": "uniform" if self._fn is None else _fn_name(self._fn)})
        return cfg


def constrain(energy=None, *sets, equalities: Iterable[ConstraintFn] = (),
              inequalities: Iterable[ConstraintFn] = (), dim: "int | None" = None,
              tol: float = 0.05, name: "str | None" = None) -> ConstrainedTarget:
    """Restrict an energy to ``{h(x) = 0, g(x) <= 0}``.

    The result has density ``exp(-energy(x))`` with respect to the surface measure of the
    constraint set (Lebesgue measure on ``{g <= 0}`` when there are no equalities), and
    ``bk.sample`` samples it with OLLA.

    Parameters
    ----------
    energy : Energy, callable or None
        ``f`` in units of kT: a boltzkit Energy, a batched callable ``(B, d) -> (B,)``, or
        None for the uniform law on the set.
    *sets : ConstraintSet
        Ready-made sets from :mod:`boltzkit.constraints` (``sphere(3)``, ``box(...)``, ...);
        they are intersected with each other and with the explicit constraints.
    equalities, inequalities : sequence of callables
        Batched constraints, as in :class:`Constrained`.
    dim : int, optional
        Ambient dimension when ``energy`` is not an Energy and no set fixes it.
    tol : float
        Feasibility tolerance of the domain's ``contains``.
    name : str, optional

    Returns
    -------
    ConstrainedTarget

    Examples
    --------
    >>> import torch, boltzkit as bk
    >>> kappa = 5.0
    >>> vmf = bk.constrain(lambda x: -kappa * x[:, 2], bk.constraints.sphere(3))
    >>> res = bk.sample(vmf, n_samples=2000, seed=0)          # doctest: +SKIP
    """
    eqs, ineqs = list(_as_tuple(equalities, "equalities")), list(_as_tuple(inequalities, "inequalities"))
    dims = {}
    base_domain = energy.domain if isinstance(energy, Energy) else None
    if isinstance(energy, ConstrainedTarget):  # constrain again: merge the constraints
        eqs, ineqs = list(base_domain.equalities) + eqs, list(base_domain.inequalities) + ineqs
        base_domain = base_domain.base
        energy = energy.base if energy.base is not None else energy._fn
    for s in sets:
        if not isinstance(s, ConstraintSet):
            raise TargetError(f"positional arguments after the energy must be constraint sets such as "
                              f"bk.constraints.sphere(3), got {type(s).__name__}; pass constraint "
                              "functions as equalities=[...] or inequalities=[...]")
        eqs += list(s.equalities)
        ineqs += list(s.inequalities)
        if s.dim is not None:
            dims[s.name] = s.dim
    if base_domain is None:
        claims = {**dims, **({"dim=": int(dim)} if dim is not None else {})}
        if not claims:
            raise TargetError("cannot tell the ambient dimension: pass dim=d, an Energy on Reals(d), "
                              "or a constraint set with a dimension such as sphere(3)")
        if len(set(claims.values())) > 1:
            raise TargetError("the dimensions disagree: " + ", ".join(f"{k} has dimension {v}"
                                                                    for k, v in claims.items()))
        base_domain = Reals(next(iter(claims.values())))
    numel = base_domain.event_numel
    for nm, d in dims.items():
        if d != numel:
            raise TargetError(f"constraint set {nm} lives in dimension {d} but the states have "
                              f"{numel} entries ({base_domain!r})")
    if dim is not None and int(dim) != numel:
        raise TargetError(f"dim={dim} does not match the energy's domain {base_domain!r}")
    return ConstrainedTarget(energy, Constrained(base_domain, eqs, ineqs, tol=tol), name=name)
