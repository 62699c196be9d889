r"""Molecular Boltzmann targets: OpenMM force fields and RDKit (MMFF94) torsion models.

* :class:`OpenMMEnergy` -- any ``openmm.System`` as a batched target ``u(x) = U(x) / kT`` on
  Cartesian coordinates in nm, with forces as its gradient.
* :class:`AlanineDipeptide` -- ACE-ALA-NME (22 atoms, AMBER ff96, vacuum or OBC1 implicit
  solvent) built from the files that ship inside the ``openmmtools`` wheel (no downloads).
* :func:`from_smiles` / :class:`TorsionEnergy` -- a small molecule from a SMILES string as a
  target on its rotatable torsions (MMFF94 energy with rigid bonds and angles).

Optional dependencies (``pip install 'boltzkit[molecular]'``: openmm, openmmtools, mdtraj,
rdkit) are imported lazily when a target is built; importing boltzkit never imports them.

Units and conventions
---------------------
* Energies are reduced, ``u = U / kT`` with ``kT = R T`` (``R`` from ``openmm.unit`` for the
  OpenMM targets: ``kT(300 K) = 2.494339 kJ/mol``; in kcal/mol for MMFF). Gradients are
  ``grad u = -F / kT`` (1/nm for Cartesian targets, 1/rad for torsion targets).
* Cartesian states are flat, shape ``(B, 3N)`` particle-major (atom ``i`` is
  ``x[:, 3i:3i+3]``); ``(B, N, 3)`` is accepted as well.
* **Clashes and non-finite energies**: a state whose energy or forces are not finite (e.g.
  two atoms on top of each other, NaN coordinates) gets energy ``+inf`` and gradient 0. It is
  never returned as NaN; a Metropolis step rejects it. Validation of a target on such a
  state raises a :class:`~boltzkit.errors.TargetError` naming it. Huge but finite energies
  (random coordinates give ``1e6``-``1e7`` kT) are returned as they are, unless
  ``energy_cut`` is set: then ``u > cut`` becomes ``cut + log(1 + u - cut)`` (the
  lin-log regularization of FAB, Midgley et al. 2023), which changes the density only where
  it is below ``exp(-cut)`` and keeps gradients bounded for training.
* **Translation invariance**: ``exp(-U)`` of a molecule in vacuum or implicit solvent does not
  depend on its position, so over ``R^{3N}`` it has infinite mass. :class:`OpenMMEnergy`
  returns ``U / kT`` as it is by default (``com_restraint=None``; fine for MCMC and for
  free-energy *differences*). With ``com_restraint=s`` (nm) the harmonic term
  ``|c|^2 / (2 s^2)`` on the centre of geometry ``c = mean_i x_i`` is added; it decouples
  exactly from the internal coordinates (the energy depends only on ``x - c``), so every
  internal-coordinate distribution (dihedrals, basin free energies) is unchanged, and the
  density becomes normalizable: ``Z = Z_int * (2 pi s^2 / N)^{3/2}`` times a constant.
  :class:`AlanineDipeptide` uses ``com_restraint=0.1`` by default. ``Z_int`` is not known
  in closed form, so :meth:`exact_log_z` returns None; compare basin free-energy
  differences instead (:mod:`boltzkit.analysis`).
* Second derivatives: OpenMM and RDKit give energies and gradients only. The autograd
  function behind :meth:`energy` supports double backward (Hessian-vector products, used by
  adjoint samplers such as NAAS) through a central finite difference of the gradient along
  the vector, step ``hvp_step``; one HVP costs two extra force evaluations.

Cost (this 2-core CPU, measured): alanine dipeptide vacuum on the Reference platform about
45 us per energy+force evaluation in a batch of 200, OBC1 implicit about 0.4 ms (CPU platform,
1 thread) -- Python-side state extraction dominates in vacuum; the evaluation loops over the
batch in one reused OpenMM ``Context``. ``energy(x)`` outside autograd computes the forces
too and caches them, so the usual ``energy(x)`` then ``grad_energy(x)`` of MCMC kernels costs
one OpenMM call per state. A process pool was not added: at 22 atoms the brief measured
no gain from 2 processes in vacuum and 13 % in implicit solvent.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch

from ..analysis import dihedral, signed_volume
from ..domains import Reals
from ..errors import ConfigError, MissingDependencyError, TargetError, require
from .base import Energy

__all__ = ["OpenMMEnergy", "AlanineDipeptide", "ShiftedEnergy", "TorsionEnergy", "from_smiles",
           "rotatable_torsions", "alanine_dipeptide_files", "alanine_dipeptide_system"]


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise TargetError(f"temperature must be a positive number in kelvin, got {temperature!r}")
    return float(temperature)


def _check_optional_positive(name, value) -> "float | None":
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise TargetError(f"{name} must be a positive number or None, got {value!r}")
    return float(value)


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
            raise TargetError(f"{self.name} expects a batch of shape (B, {d}){self._shape_hint()}, "
                              f"got {shape}; add a batch dimension with x[None] for one state")
        if not x.dtype.is_floating_point:
            raise TargetError(f"{self.name} needs floating-point states, got {x.dtype}")
        return x.reshape(x.shape[0], d)

    def _shape_hint(self) -> str:
        return ""

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
class _OpenMMBackend:
    """One OpenMM ``Context`` (created lazily, rebuilt after unpickling) that evaluates
    energies (kJ/mol) and forces (kJ/mol/nm) of a batch of positions (nm)."""

    def __init__(self, system, platform: str, properties: dict):
        self.system = system
        self.n_atoms = system.getNumParticles()
        self.platform = platform
        self.properties = dict(properties)
        self._context = None

    def __getstate__(self):
        mm = require("openmm", "molecular")
        return {"system_xml": mm.XmlSerializer.serialize(self.system), "platform": self.platform,
                "properties": self.properties}

    def __setstate__(self, state):
        mm = require("openmm", "molecular")
        self.__init__(mm.XmlSerializer.deserialize(state["system_xml"]), state["platform"],
                      state["properties"])

    @property
    def context(self):
        if self._context is None:
            mm = require("openmm", "molecular")
            try:
                plat = mm.Platform.getPlatformByName(self.platform)
            except Exception as exc:
                names = [mm.Platform.getPlatform(i).getName() for i in range(mm.Platform.getNumPlatforms())]
                raise ConfigError(f"OpenMM platform {self.platform!r} is not available; "
                                  f"available: {', '.join(names)}") from exc
            self._context = mm.Context(self.system, mm.VerletIntegrator(0.001), plat, self.properties)
        return self._context

    def __call__(self, pos: np.ndarray, grad: bool):
        """``pos`` (B, N, 3) nm -> energies (B,) kJ/mol and forces (B, N, 3) or None."""
        ctx = self.context
        n = pos.shape[0]
        u = np.empty(n)
        f = np.zeros_like(pos) if grad else None
        for b in range(n):
            p = pos[b]
            if not np.isfinite(p).all():
                u[b] = math.inf
                continue
            ctx.setPositions(p)
            st = ctx.getState(getEnergy=True, getForces=grad)
            e = st.getPotentialEnergy()._value  # internal units: kJ/mol (no unit conversion)
            if grad:
                fb = st.getForces(asNumpy=True)._value  # kJ/mol/nm
                if not np.isfinite(fb).all():
                    e = math.inf
                else:
                    f[b] = fb
            u[b] = e if math.isfinite(e) else math.inf
        if grad:
            f[~np.isfinite(u)] = 0.0
        return u, f


def _auto_platform(system) -> "tuple[str, dict]":
    """Reference for small systems without generalized-Born forces (lowest per-call overhead),
    else CPU (one thread for small systems: faster than two at 22 atoms)."""
    mm = require("openmm", "molecular")
    gb = any(isinstance(f, (mm.CustomGBForce, mm.GBSAOBCForce)) for f in system.getForces())
    n = system.getNumParticles()
    if not gb and n <= 200:
        return "Reference", {}
    return "CPU", ({"Threads": "1"} if n <= 200 else {})


class OpenMMEnergy(_NumpyBackedEnergy):
    r"""An ``openmm.System`` as a boltzkit target: ``u(x) = U(x) / kT`` on Cartesian coordinates.

    Parameters
    ----------
    system : openmm.System
        Built without constraints (constrained bonds make the Cartesian density singular;
        ``createSystem(..., constraints=None)``). Virtual sites are not supported.
    temperature : float
        Kelvin.
    platform : str
        "auto" (Reference for small systems without generalized Born, else CPU), or an OpenMM
        platform name ("Reference", "CPU", "CUDA", "OpenCL").
    platform_properties : dict, optional
        Passed to the ``Context`` (e.g. ``{"Threads": "1"}``, ``{"Precision": "double"}``).
    positions : array (N, 3) nm, optional
        A reference structure (used by :meth:`shifted` and by :meth:`reference_state`).
    topology : openmm.app.Topology, optional
        Kept for analysis (:attr:`mdtraj_topology`).
    com_restraint : float or None
        Width ``s`` (nm) of the harmonic restraint on the centre of geometry (module docstring).
    energy_cut : float or None
        Lin-log regularization above this reduced energy (module docstring).
    hvp_step : float
        Finite-difference step (nm) of Hessian-vector products.

    Notes
    -----
    The domain is ``Reals(3N)`` (flat, particle-major). :class:`~boltzkit.domains.ParticleCloud`
    is not used: it describes identical particles (its default networks are permutation
    equivariant), while the atoms of a molecule are distinguishable.
    """

    def __init__(self, system, temperature: float = 300.0, *, platform: str = "auto",
                 platform_properties: "dict | None" = None, positions=None, topology=None,
                 com_restraint: "float | None" = None, energy_cut: "float | None" = None,
                 hvp_step: float = 1e-4, name: "str | None" = None):
        mm = require("openmm", "molecular")
        unit = require("openmm.unit", "molecular")
        if not isinstance(system, mm.System):
            raise TargetError(f"system must be an openmm.System, got {type(system).__name__}")
        n = system.getNumParticles()
        if n < 1:
            raise TargetError("the openmm.System has no particles")
        if system.getNumConstraints() > 0:
            raise TargetError(f"the openmm.System has {system.getNumConstraints()} constraints; "
                              "Cartesian samplers need an unconstrained system: build it with "
                              "createSystem(..., constraints=None)")
        if any(system.isVirtualSite(i) for i in range(n)):
            raise TargetError("systems with virtual sites are not supported (their positions are "
                              "not free coordinates)")
        super().__init__(Reals(3 * n), name=name or "OpenMMEnergy")
        self.temperature = _check_temperature(temperature)
        self.kT = (unit.MOLAR_GAS_CONSTANT_R * self.temperature * unit.kelvin).value_in_unit(
            unit.kilojoule_per_mole)
        self.com_restraint = _check_optional_positive("com_restraint", com_restraint)
        self.energy_cut = None if energy_cut is None else float(energy_cut)
        self.hvp_step = _check_optional_positive("hvp_step", hvp_step)
        if platform == "auto":
            platform, props = _auto_platform(system)
            props.update(platform_properties or {})
        else:
            props = dict(platform_properties or {})
        self.n_atoms = n
        self.openmm_topology = topology
        self._backend_impl = _OpenMMBackend(system, platform, props)
        _ = self._backend_impl.context  # fail early on a bad platform
        self.positions = None
        if positions is not None:
            pos = np.asarray(getattr(positions, "_value", positions), dtype=np.float64)
            if pos.shape != (n, 3):
                raise TargetError(f"positions must have shape ({n}, 3) in nm, got {pos.shape}")
            self.positions = torch.from_numpy(pos.copy())

    @property
    def system(self):
        """The ``openmm.System`` (do not add forces to it: the Context is already built)."""
        return self._backend_impl.system

    @property
    def platform(self) -> str:
        return self._backend_impl.platform

    def _shape_hint(self):
        return f" or (B, {self.n_atoms}, 3)"

    def _backend(self, x, grad):
        n = x.shape[0]
        pos = x.reshape(n, self.n_atoms, 3)
        e, f = self._backend_impl(pos, grad)
        u = e / self.kT
        g = None if f is None else (-f / self.kT).reshape(n, -1)
        if self.com_restraint is not None:
            c = pos.mean(1)  # (B, 3)
            k = 1.0 / self.com_restraint ** 2
            u = u + 0.5 * k * (c * c).sum(1)
            if g is not None:
                g = g + np.tile(k * c / self.n_atoms, (1, self.n_atoms))
        if self.energy_cut is not None:
            u, g = _lin_log(u, g, self.energy_cut)
        if g is not None:
            g[~np.isfinite(u)] = 0.0
        return u, g

    def openmm_energy(self, x) -> np.ndarray:
        """Potential energies (kJ/mol) from OpenMM alone, without restraint or cut, ``(B,)``."""
        flat = self._flat(torch.as_tensor(x))
        pos = flat.detach().to("cpu", torch.float64).numpy().reshape(-1, self.n_atoms, 3)
        return self._backend_impl(pos, False)[0]

    def reference_state(self) -> torch.Tensor:
        """The reference structure as a flat batch of one, ``(1, 3N)`` float32."""
        if self.positions is None:
            raise TargetError(f"{self.name} has no reference positions; pass positions=...")
        return self.positions.reshape(1, -1).float()

    #: widest standard deviation (nm) of the harmonic prior hint along flat directions (the
    #: rotations of a molecule in vacuum, which leave the energy unchanged)
    hint_max_std: float = 0.05

    def minimized_state(self) -> torch.Tensor:
        """The reference structure relaxed to the nearest local minimum of ``u`` (``(1, 3N)``
        float64), by BFGS (scipy) on the target's own energy and gradient; cached."""
        if getattr(self, "_minimized", None) is None:
            from scipy.optimize import minimize

            x0 = self.reference_state().double().reshape(-1)

            def fun(v):
                u, g = self.energy_and_grad(torch.from_numpy(v)[None])
                return float(u[0]), g[0].numpy().astype(np.float64)

            res = minimize(fun, x0.numpy(), jac=True, method="BFGS",
                           options={"maxiter": 5000, "gtol": 1e-4})
            xm = torch.from_numpy(np.asarray(res.x, dtype=np.float64))[None]
            if not math.isfinite(float(res.fun)) or float(res.fun) > float(self.energy(x0[None])[0]):
                xm = x0[None].clone()  # never worse than the shipped structure
            self._minimized = xm
        return self._minimized.clone()

    def hessian(self, x, step: float = 1e-5) -> torch.Tensor:
        """Hessian ``(3N, 3N)`` float64 of ``u`` at one state ``x``, by central differences of
        the gradient (``6N`` gradient evaluations, one batch), symmetrized."""
        x = self._flat(torch.as_tensor(x)).double()[:1]
        d = x.shape[1]
        eye = torch.eye(d, dtype=torch.float64)
        g = self.grad_energy(torch.cat([x + step * eye, x - step * eye]))
        h = (g[:d] - g[d:]) / (2.0 * step)
        return 0.5 * (h + h.T)

    def prior_hint(self):
        """Harmonic (Laplace) frame of the reference structure, or None without positions.

        ``loc`` is :meth:`minimized_state`, ``scale`` the inverse square root of the Hessian
        there (:func:`~boltzkit.energies.base.scale_from_hessian`, flat directions such as
        rotations widened to ``hint_max_std`` nm), so the standard normal in the sampler's
        coordinates is the harmonic approximation of the basin of the reference structure:
        bond, angle and torsion directions all get their own width (about 0.001 nm for C-H
        stretches; soft collective modes are capped at ``hint_max_std`` = 0.05 nm, beyond
        which their linearization distorts bonds). Computed once and cached.
        """
        if self.positions is None:
            return None
        if getattr(self, "_hint", None) is None:
            from .base import PriorHint, scale_from_hessian

            xm = self.minimized_state()
            scale = scale_from_hessian(self.hessian(xm), max_std=self.hint_max_std)
            self._hint = PriorHint(xm.reshape(-1), scale)
        return self._hint

    def shifted(self, origin=None) -> "ShiftedEnergy":
        """The same target in coordinates relative to ``origin`` (default: the reference
        structure), ``x -> u(origin + x)``.

        Samplers whose start or prior is centred at 0 (MALA's ``init_std``, the Gaussian prior
        of NAAS, AIS) then start around the molecule instead of from an atom cloud at the
        origin. Map samples back with :meth:`ShiftedEnergy.to_absolute`.
        """
        if origin is None:
            origin = self.reference_state()
        return ShiftedEnergy(self, origin)

    def to_config(self):
        return {**super().to_config(), "type": type(self).__name__, "n_atoms": self.n_atoms,
                "temperature": self.temperature, "platform": self.platform,
                "com_restraint": self.com_restraint, "energy_cut": self.energy_cut}

    # -- analysis
    @property
    def mdtraj_topology(self):
        """The mdtraj topology (needs mdtraj and an OpenMM topology)."""
        if self.openmm_topology is None:
            raise TargetError(f"{self.name} has no topology; pass topology=...")
        if getattr(self, "_md_top", None) is None:
            md = require("mdtraj", "molecular")
            self._md_top = md.Topology.from_openmm(self.openmm_topology)
        return self._md_top

    def to_mdtraj(self, x):
        """An ``mdtraj.Trajectory`` of the states ``x`` (B, 3N) or (B, N, 3), nm."""
        md = require("mdtraj", "molecular")
        xyz = self._flat(torch.as_tensor(x)).detach().cpu().double().numpy()
        return md.Trajectory(xyz.reshape(-1, self.n_atoms, 3), self.mdtraj_topology)


class ShiftedEnergy(Energy):
    """``x -> base.energy(origin + x)``: a target translated so that ``origin`` sits at 0.

    Parameters
    ----------
    base : Energy on ``Reals(d)``
    origin : Tensor ``(d,)`` or ``(1, d)`` (or ``(N, 3)`` for a molecule)
    """

    def __init__(self, base: Energy, origin):
        if not isinstance(base, Energy) or not isinstance(base.domain, Reals):
            raise TargetError("ShiftedEnergy needs an Energy on a Reals domain")
        super().__init__(base.domain, name=f"{base.name}(shifted)")
        origin = torch.as_tensor(origin).detach().reshape(-1)
        if origin.numel() != base.domain.dim or not bool(torch.isfinite(origin).all()):
            raise TargetError(f"origin must be {base.domain.dim} finite numbers, got {tuple(origin.shape)}")
        self.base = base
        self.register_buffer("origin", origin.float())
        self._last = None

    def to_absolute(self, x: torch.Tensor) -> torch.Tensor:
        """Shifted states -> coordinates of the base target (same shape as ``x``)."""
        return (x.reshape(x.shape[0], -1) + self.origin.to(x)).reshape(x.shape)

    def to_relative(self, x: torch.Tensor) -> torch.Tensor:
        """Coordinates of the base target -> shifted states."""
        return (x.reshape(x.shape[0], -1) - self.origin.to(x)).reshape(x.shape)

    def _absolute(self, x):
        # the same input tensor maps to the same absolute tensor, so a base target's
        # energy -> grad_energy cache keeps working through the shift
        last = self._last
        if last is not None and last[0] is x and last[1] == x._version:
            return last[2]
        xa = self.to_absolute(x)
        self._last = (x, x._version, xa)
        return xa

    def energy(self, x):
        if torch.is_grad_enabled() and x.requires_grad:
            return self.base.energy(self.to_absolute(x))
        return self.base.energy(self._absolute(x))

    def grad_energy(self, x):
        return self.base.grad_energy(self._absolute(x))

    def exact_log_z(self):
        return self.base.exact_log_z()

    def to_config(self):
        return {**super().to_config(), "type": "ShiftedEnergy", "base": self.base.to_config()}


# ============================================================================ alanine dipeptide
def alanine_dipeptide_files() -> dict:
    """Paths of the alanine-dipeptide AMBER files shipped in the openmmtools wheel
    (``prmtop``, ``crd``, ``pdb``), found without importing openmmtools."""
    import importlib.util

    spec = importlib.util.find_spec("openmmtools")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("'openmmtools' is needed for the alanine-dipeptide files but is "
                                     "not installed. Install it with: pip install 'boltzkit[molecular]'")
    d = os.path.join(list(spec.submodule_search_locations)[0], "data", "alanine-dipeptide-gbsa")
    files = {ext: os.path.join(d, f"alanine-dipeptide.{ext}") for ext in ("prmtop", "crd", "pdb")}
    missing = [p for p in files.values() if not os.path.exists(p)]
    if missing:
        raise MissingDependencyError(f"the openmmtools installation lacks {missing}; reinstall "
                                     "openmmtools (pip install --force-reinstall openmmtools)")
    return files


class AlanineDipeptide(OpenMMEnergy):
    r"""Alanine dipeptide (ACE-ALA-NME, 22 atoms) in AMBER ff96, in vacuum or OBC1 implicit solvent.

    The system is the one of ``openmmtools.testsystems.AlanineDipeptideVacuum/Implicit`` with
    ``constraints=None`` (as in FAB and bgflow), built from the prmtop/crd files in the
    openmmtools wheel; no network access. States are Cartesian coordinates in nm, flat
    ``(B, 66)`` (``(B, 22, 3)`` accepted), on ``Reals(66)``.

    Parameters
    ----------
    solvent : {"vacuum", "implicit"}
        "implicit" adds the OBC1 generalized-Born term (about 10x the cost per evaluation).
    temperature : float
        Kelvin (300 K: kT = 2.494339 kJ/mol).
    platform : str
        See :class:`OpenMMEnergy` ("auto": Reference in vacuum, CPU with one thread implicit).
    com_restraint : float or None
        Centre-of-geometry restraint width in nm (default 0.1; None for the raw, improper
        translation-invariant density). It does not change any internal-coordinate statistic.
    energy_cut : float or None
        Lin-log regularization of clash energies above this value (kT).
    coordinates : {"internal", "cartesian"}
        Where :func:`boltzkit.sample` samples the molecule (:meth:`sampling_view`).
        "internal" (default): in bonds, angles and dihedrals (:meth:`internal`), with the
        result mapped back to Cartesian states in the canonical frame and log Z converted to
        this target's (COM-restrained) Cartesian one. "cartesian": in the Cartesian harmonic
        frame of :meth:`prior_hint`. The energy itself is the same either way.

    Attributes
    ----------
    positions : Tensor (22, 3)
        The shipped extended structure (phi = psi = 180 deg), centred at the origin.
    PHI_ATOMS, PSI_ATOMS : tuple
        ``(4, 6, 8, 14)`` and ``(6, 8, 14, 16)`` (C-N-CA-C and N-CA-C-N).
    CHIRAL_ATOMS : tuple
        ``(6, 8, 14, 10)`` = (N, CA, C, CB) for :meth:`chirality`.

    Notes
    -----
    ``exact_log_z()`` is None. A reference for the (phi, psi) distribution and the basin free
    energies in vacuum at 300 K ships with the package
    (:func:`boltzkit.analysis.load_alanine_reference`). Plain MD at 300 K never visits
    phi > 0 (C7ax) in 150 ns in ff96; it is the standard mode-collapse test.

    Samplers started from the Cartesian harmonic frame (:meth:`prior_hint`) stay in C7eq /
    alpha_R; :meth:`internal` gives the same molecule in internal coordinates with phi, psi
    and the methyl rotors spread over their circle, from which NAAS and AIS visit C7ax and
    estimate log Z far better (``benchmarks/alanine_dipeptide.py``, methods ``*_ic``), so
    ``bk.sample`` samples there by default (``coordinates``).
    """

    PHI_ATOMS = (4, 6, 8, 14)
    PSI_ATOMS = (6, 8, 14, 16)
    CHIRAL_ATOMS = (6, 8, 14, 10)
    REGRESSION_KJ_MOL = {"vacuum": -88.089, "implicit": -138.970}  # shipped coordinates, openmm 8.6

    def __init__(self, solvent: str = "vacuum", temperature: float = 300.0, *,
                 platform: str = "auto", platform_properties: "dict | None" = None,
                 com_restraint: "float | None" = 0.1, energy_cut: "float | None" = None,
                 hvp_step: float = 1e-4, coordinates: str = "internal"):
        if solvent not in ("vacuum", "implicit"):
            raise TargetError(f"solvent must be 'vacuum' or 'implicit', got {solvent!r}")
        if coordinates not in ("internal", "cartesian"):
            raise TargetError(f"coordinates must be 'internal' or 'cartesian', got {coordinates!r}")
        system, topology, positions = alanine_dipeptide_system(solvent)
        positions = positions - positions.mean(0)
        super().__init__(system, temperature, platform=platform,
                         platform_properties=platform_properties, positions=positions,
                         topology=topology, com_restraint=com_restraint, energy_cut=energy_cut,
                         hvp_step=hvp_step, name=f"AlanineDipeptide({solvent}, {temperature:g} K)")
        self.solvent = solvent
        self.coordinates = coordinates
        self._view = None

    def to_config(self):
        return {**super().to_config(), "type": "AlanineDipeptide", "solvent": self.solvent,
                "coordinates": self.coordinates}

    def sampling_view(self):
        """With ``coordinates="internal"``: sample :meth:`internal` (built once) and return
        Cartesian states (``to_cartesian``: canonical frame, centred) with the Cartesian log Z
        (``cartesian_log_z``). NAAS defaults there to the benchmark's setting (K = 256 time
        steps, 40 training steps of 64 trajectories, lr 3e-4: about 8 CPU-minutes; longer
        training did not raise the ESS, ``benchmarks/results/alanine_dipeptide.json``).
        None with ``coordinates="cartesian"``."""
        from .base import SamplingView

        if self.coordinates == "cartesian":
            return None
        if self._view is None:
            ic = self.internal()
            log_z = None if self.com_restraint is None else ic.cartesian_log_z
            self._view = SamplingView(
                ic, ic.to_cartesian, log_z,
                method_options={"naas": {"n_time_steps": 256, "n_steps": 40, "batch_size": 64, "lr": 3e-4}},
                description="internal coordinates (bonds, angles, dihedrals; phi, psi and the "
                            "methyl rotors spread over their circle), mapped back to Cartesian")
        return self._view

    # -- analysis
    def internal(self, **kw):
        """This molecule in internal coordinates
        (:class:`~boltzkit.energies.internal.InternalCoordinateEnergy`, on ``Reals(60)``), with
        the full harmonic prior hint in which phi, psi and the three methyl rotors are spread
        over their circle (``soft_std`` 1 rad), so samplers started from it reach C7ax and
        alpha_R. Map samples back with ``.to_cartesian(q)`` (then :meth:`phi_psi`).

        >>> ic = AlanineDipeptide().internal()          # doctest: +SKIP
        >>> res = bk.sample(ic, n_time_steps=256)        # doctest: +SKIP
        >>> phi, psi = ic.cartesian_energy.phi_psi(ic.to_cartesian(res.samples))  # doctest: +SKIP
        """
        from .internal import InternalCoordinateEnergy

        opts = {"hint": "full", "soft_torsions": (self.PHI_ATOMS, self.PSI_ATOMS), **kw}
        return InternalCoordinateEnergy(self, **opts)

    BASIN_CENTRES_DEG = {"alpha_R": (-75.0, -25.0), "C7ax": (70.0, -60.0)}  # C7eq: minimized_state

    def basin(self, name: str, *, wall: float = 50.0, wall_width: float = 0.2) -> "BasinEnergy":
        """This molecule confined to one Ramachandran basin (the boxes of
        :func:`boltzkit.analysis.alanine_basin`), in internal coordinates.

        ``u_q`` plus a wall on the (phi, psi) distance outside the basin (:class:`BasinEnergy`:
        slope ``wall`` kT/rad beyond ``wall_width`` rad, quadratic within).
        The internal coordinates are built around the basin's own structure
        (:meth:`basin_structure`): the prior hint is the harmonic frame there and the dihedral
        windows are centred on it (a basin across a window's seam would be split between two
        copies 2 pi apart and half missed). The energy's log Z is the basin's plus the thin
        layer the wall lets through; :meth:`BasinEnergy.log_z_inside` removes that layer
        exactly, so basin free energies follow from one sampler run per basin,
        ``dF(A) = -(log Z_A - log Z_C7eq)``, without ever crossing a barrier:

        >>> be = ala.basin("C7ax")                                           # doctest: +SKIP
        >>> res = bk.sample(be, method="ais", n_steps=1000, resample_ess=0.5)  # doctest: +SKIP
        >>> log_z, err = be.log_z_inside(res)                                # doctest: +SKIP
        """
        from ..analysis import ALANINE_BASINS

        if name not in ALANINE_BASINS:
            raise TargetError(f"basin must be one of {ALANINE_BASINS}, got {name!r}")
        return BasinEnergy(self.internal(reference=self.basin_structure(name)), name, wall=wall,
                           wall_width=wall_width)

    def basin_structure(self, name: str) -> torch.Tensor:
        """A representative structure of a Ramachandran basin (``(1, 3N)`` float64, cached):
        :meth:`minimized_state` for C7eq; for the others the structure minimized (BFGS in
        internal coordinates) with phi and psi held at the basin centre
        (``BASIN_CENTRES_DEG``). Held rather than free, because a basin need not hold a
        local minimum of its own (in vacuum, alpha_R relaxes towards C7eq)."""
        cache = self.__dict__.setdefault("_basin_structures", {})
        if name not in cache:
            if name not in self.BASIN_CENTRES_DEG:
                cache[name] = self.minimized_state()
            else:
                cache[name] = self._held_minimum(self.BASIN_CENTRES_DEG[name])
        return cache[name].clone()

    def _held_minimum(self, phi_psi_deg) -> torch.Tensor:
        from scipy.optimize import minimize

        ic = self.internal(hint="diagonal", soft_barrier=None)
        q = ic.to_internal(self.minimized_state()).double()
        idx, sign, offset = _backbone_torsions(ic, q[0])
        for i, s, o, target in zip(idx, sign, offset, phi_psi_deg):  # backbone angle = target
            q[0, i] = s * (math.radians(target) - o)
        free = torch.ones(q.shape[1], dtype=torch.bool)
        free[list(idx)] = False

        def fun(v):
            qq = q.clone()
            qq[0, free] = torch.from_numpy(v)
            u, g = ic.energy_and_grad(qq)
            return float(u[0]), g[0, free].numpy().astype(np.float64)

        res = minimize(fun, q[0, free].numpy(), jac=True, method="BFGS",
                       options={"maxiter": 5000, "gtol": 1e-4})
        q[0, free] = torch.from_numpy(np.asarray(res.x, dtype=np.float64))
        return ic.to_cartesian(q).reshape(1, -1)

    def phi_psi(self, x) -> "tuple[np.ndarray, np.ndarray]":
        """Backbone dihedrals (radians, ``(-pi, pi]``) of the states ``x`` computed by mdtraj.

        Returns
        -------
        phi, psi : ndarray ``(B,)`` float64
        """
        md = require("mdtraj", "molecular")
        ang = md.compute_dihedrals(self.to_mdtraj(x), [self.PHI_ATOMS, self.PSI_ATOMS])
        ang = ang.astype(np.float64)
        return ang[:, 0], ang[:, 1]

    def phi_psi_torch(self, x) -> "tuple[torch.Tensor, torch.Tensor]":
        """Differentiable torch version of :meth:`phi_psi` (same angles, any dtype/device)."""
        ang = dihedral(self._flat(torch.as_tensor(x)), [self.PHI_ATOMS, self.PSI_ATOMS])
        return ang[:, 0], ang[:, 1]

    def chirality(self, x) -> torch.Tensor:
        """Signed volume (N - CA) . [(C - CA) x (CB - CA)] (nm^3): > 0 for L-alanine, < 0 for D."""
        return signed_volume(self._flat(torch.as_tensor(x)), self.CHIRAL_ATOMS)

    def is_l(self, x) -> torch.Tensor:
        """Boolean ``(B,)``: which states have L chirality at the alpha carbon."""
        return self.chirality(x) > 0

    def plot_ramachandran(self, x, log_weights=None, **kw):
        """Ramachandran free-energy map of the states ``x`` (see :func:`boltzkit.analysis.plot_ramachandran`)."""
        from ..analysis import plot_ramachandran

        phi, psi = self.phi_psi(x)
        return plot_ramachandran(phi, psi, log_weights, **kw)


def _wrap(a):
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


def _backbone_torsions(ic, q0):
    """Where phi and psi sit in the internal coordinates ``q`` of ``ic`` (an
    :meth:`AlanineDipeptide.internal`) and how they read: ``(index, sign, offset)``, each a pair,
    with ``phi = sign[0] q[index[0]] + offset[0]`` (mod 2 pi), likewise psi. Read off by
    turning each coordinate a little at the state ``q0`` (``(n_dof,)``)."""
    ala = ic.cartesian_energy
    index = tuple(ic.zmatrix.find_torsion(a) for a in (ala.PHI_ATOMS, ala.PSI_ATOMS))
    sign, offset = [], []
    for k, i in enumerate(index):
        q = torch.stack([q0, q0]).clone()
        q[1, i] += 0.1
        a = ala.phi_psi_torch(ic.to_cartesian(q))[k]
        s = 1.0 if float(_wrap(a[1] - a[0])) > 0 else -1.0
        sign.append(s)
        offset.append(float(a[0]) - s * float(q0[i]))
    return index, sign, offset


def _arc_offset(a, arc_deg):
    """Signed distance (rad) of the angles ``a`` from the arc ``arc_deg = (lo, hi)`` (degrees):
    positive outside (how far out), negative inside (how deep in)."""
    lo, hi = (math.radians(v) for v in arc_deg)
    return _wrap(a - 0.5 * (lo + hi)).abs() - 0.5 * (hi - lo)


class BasinEnergy(Energy):
    r"""Alanine dipeptide in internal coordinates confined to one basin by a flat-bottom wall on
    (phi, psi); see :meth:`AlanineDipeptide.basin`. The basin boxes are those of
    :func:`boltzkit.analysis.alanine_basin` (C7eq is everything outside alpha_R and C7ax).

    The wall is ``k (sqrt(d^2 + w^2) - w)`` with ``d`` the (phi, psi) distance (rad) outside
    the box, ``k = wall`` (kT/rad) and ``w = wall_width`` (rad): quadratic (stiffness
    ``k / w``) within ``w`` of the box, linear beyond. A bounded slope keeps explicit
    (unadjusted) Langevin steps stable where a stiff quadratic wall makes them explode; the
    layer the wall lets through is removed exactly by :meth:`log_z_inside`.
    """

    def __init__(self, ic, basin: str, *, wall: float = 50.0, wall_width: float = 0.2):
        for nm, v in (("wall", wall), ("wall_width", wall_width)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise TargetError(f"{nm} must be a positive number, got {v!r}")
        super().__init__(ic.domain, name=f"{ic.cartesian_energy.name}[{basin}]")
        self.ic, self.basin = ic, basin
        self.wall_k, self.wall_width = float(wall), float(wall_width)
        self.index, self.sign, self.offset = _backbone_torsions(ic, ic.prior_hint().loc)

    def angles(self, q):
        """(phi, psi) in radians, ``(-pi, pi]``, of internal-coordinate states ``q``."""
        return tuple(_wrap(self.sign[k] * q[:, i] + self.offset[k]) for k, i in enumerate(self.index))

    def outside(self, q):
        """Distance (rad) of each state's (phi, psi) outside the basin box."""
        from ..analysis import ALPHA_R_PHI, ALPHA_R_PSI, C7AX_PHI

        phi, psi = self.angles(q)
        ax_phi, r_phi, r_psi = (_arc_offset(phi, C7AX_PHI), _arc_offset(phi, ALPHA_R_PHI),
                                _arc_offset(psi, ALPHA_R_PSI))
        if self.basin == "C7ax":
            return ax_phi.clamp(min=0.0)
        if self.basin == "alpha_R":
            return torch.hypot(r_phi.clamp(min=0.0), r_psi.clamp(min=0.0))
        # C7eq: depth inside the C7ax arc, plus the smaller depth inside the alpha_R box
        return (-ax_phi).clamp(min=0.0) + torch.minimum((-r_phi).clamp(min=0.0),
                                                        (-r_psi).clamp(min=0.0))

    def inside(self, q) -> torch.Tensor:
        """Boolean ``(B,)``: the states in the basin box (where the wall is off)."""
        return self.outside(torch.as_tensor(q).double()) == 0

    def wall(self, q):
        d, w = self.outside(q.double()), self.wall_width
        return self.wall_k * (torch.sqrt(d * d + w * w) - w)

    def log_z_inside(self, result) -> "tuple[float, float]":
        """``(log Z_A, stderr)`` of the basin itself from a sampler's ``result`` on this
        energy: its log Z plus the log of the weighted fraction of samples inside the box
        (:meth:`~boltzkit.result.Result.log_z_of`), which removes the layer beyond the wall."""
        return result.log_z_of(self.inside)

    def energy(self, q):
        return self.ic.energy(q) + self.wall(q).to(q.dtype)

    def grad_energy(self, q):
        with torch.enable_grad():
            qq = q.detach().double().requires_grad_(True)
            (g,) = torch.autograd.grad(self.wall(qq).sum(), qq)
        return self.ic.grad_energy(q) + g.to(q.dtype)

    def prior_hint(self):
        return self.ic.prior_hint()

    def to_cartesian(self, q):
        return self.ic.to_cartesian(q)

    def to_config(self):
        return {**self.ic.to_config(), "type": "AlanineDipeptideBasin", "basin": self.basin,
                "wall": self.wall_k, "wall_width": self.wall_width}


def alanine_dipeptide_system(solvent: str = "vacuum"):
    """Unconstrained alanine-dipeptide ``(system, openmm topology, positions (22, 3) nm ndarray)``
    from the openmmtools data files (a fresh System each call; safe to add forces to it)."""
    app = require("openmm.app", "molecular")
    files = alanine_dipeptide_files()
    prmtop = app.AmberPrmtopFile(files["prmtop"])
    system = prmtop.createSystem(implicitSolvent=None if solvent == "vacuum" else app.OBC1,
                                 constraints=None, nonbondedCutoff=None)
    crd = app.AmberInpcrdFile(files["crd"])
    pos = np.asarray(crd.getPositions(asNumpy=True)._value, dtype=np.float64)  # nm
    return system, prmtop.topology, pos


# ============================================================================ RDKit torsions
def _kcal_per_mol_kT(temperature: float) -> float:
    from scipy import constants

    return constants.R * temperature / 4184.0  # kcal/mol


def _moving_atoms(mol, j: int, k: int) -> np.ndarray:
    """Atoms on the ``k`` side of bond ``j-k`` (the bond must not be in a ring)."""
    n = mol.GetNumAtoms()
    seen = np.zeros(n, dtype=bool)
    seen[k] = True
    stack = [k]
    while stack:
        a = stack.pop()
        for nb in mol.GetAtomWithIdx(a).GetNeighbors():
            b = nb.GetIdx()
            if (a == k and b == j) or seen[b]:
                continue
            if b == j:
                raise TargetError(f"bond {j}-{k} is in a ring; ring torsions cannot be rotated rigidly")
            seen[b] = True
            stack.append(b)
    return seen


def _dihedral_np(x: np.ndarray, t) -> np.ndarray:
    """Dihedral (radians) of atoms ``t`` in a batch ``x`` (B, N, 3)."""
    a, b, c, d = (x[:, i, :] for i in t)
    b1, b2, b3 = b - a, c - b, d - c
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    y = np.linalg.norm(b2, axis=-1) * (b1 * n2).sum(-1)
    return np.arctan2(y, (n1 * n2).sum(-1))


def _rotate(x: np.ndarray, mask: np.ndarray, origin: np.ndarray, axis: np.ndarray,
            angle: np.ndarray) -> None:
    """In place: rotate atoms ``mask`` of each state about ``axis`` (B, 3, unit) through
    ``origin`` (B, 3) by ``angle`` (B,) (right-hand rule), Rodrigues' formula."""
    p = x[:, mask, :] - origin[:, None, :]
    k = axis[:, None, :]
    c, s = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    rot = p * c + np.cross(k, p) * s + k * (k * p).sum(-1, keepdims=True) * (1.0 - c)
    x[:, mask, :] = rot + origin[:, None, :]


class _MMFFBackend:
    """MMFF94 force field of one molecule (rebuilt lazily after unpickling)."""

    def __init__(self, molblock: str, variant: str):
        self.molblock, self.variant = molblock, variant
        self._ff = None

    def __getstate__(self):
        return {"molblock": self.molblock, "variant": self.variant}

    def __setstate__(self, state):
        self.__init__(state["molblock"], state["variant"])

    @property
    def ff(self):
        if self._ff is None:
            Chem = require("rdkit.Chem", "molecular")
            AllChem = require("rdkit.Chem.AllChem", "molecular")
            self.mol = Chem.MolFromMolBlock(self.molblock, removeHs=False)
            props = AllChem.MMFFGetMoleculeProperties(self.mol, mmffVariant=self.variant)
            if props is None:
                raise TargetError(f"MMFF ({self.variant}) has no parameters for this molecule")
            self._ff = AllChem.MMFFGetMoleculeForceField(self.mol, props)
        return self._ff


class TorsionEnergy(_NumpyBackedEnergy):
    r"""MMFF94 energy of a molecule as a function of its rotatable torsions (rigid bonds and angles).

    A state is the vector of ``k`` torsion angles ``theta`` (radians); the conformer is the
    rigid template (an MMFF-minimized conformer) with each torsion set to ``theta_t`` by
    rotating the atoms on the ``l`` side of bond ``j-k``; ``u(theta) = E_MMFF(x(theta)) / kT``.

    Domain and periodicity: ``Reals(k)`` with **periodic meaning** -- ``u`` is 2 pi-periodic in
    every coordinate, so the target is a density on the torus ``[-pi, pi)^k``; on ``R^k`` it
    has infinite mass (``exact_log_z()`` is None). Wrap samples with :meth:`wrap` before
    histogramming. This torsion-space density is *not* the marginal of the Cartesian
    Boltzmann distribution (no bond/angle fluctuations, no metric/Jacobian factor); it is the
    conditional density at the rigid template geometry.

    Gradient: exact chain rule, ``du/dtheta_t = sum_{a moving} grad_a E . (e_t x (x_a - x_k))
    / kT`` with ``e_t`` the unit bond axis (RDKit gives Cartesian MMFF gradients). Evaluation
    loops over the batch in Python (RDKit evaluates one conformer per call, 30-170 us for
    20-70 atoms); the torsion rotations themselves are vectorized over the batch.

    Parameters
    ----------
    molblock : str
        Mol block of the molecule with explicit hydrogens and the template conformer (Angstrom).
    torsions : sequence of (i, j, k, l)
    temperature : float
        Kelvin (kT(300 K) = 0.596 kcal/mol).
    variant : "MMFF94" or "MMFF94s"
    """

    hvp_step = 1e-5  # rad

    def __init__(self, molblock: str, torsions: Sequence[Sequence[int]], temperature: float = 300.0,
                 *, variant: str = "MMFF94", smiles: "str | None" = None, name: "str | None" = None):
        Chem = require("rdkit.Chem", "molecular")
        if variant not in ("MMFF94", "MMFF94s"):
            raise TargetError(f"variant must be 'MMFF94' or 'MMFF94s', got {variant!r}")
        mol = Chem.MolFromMolBlock(molblock, removeHs=False)
        if mol is None or mol.GetNumConformers() != 1:
            raise TargetError("molblock must describe one molecule with one 3-D conformer")
        tors = np.asarray(torsions, dtype=np.int64).reshape(-1, 4)
        if tors.shape[0] == 0:
            raise TargetError("the molecule has no rotatable torsions; there is nothing to sample")
        n = mol.GetNumAtoms()
        if tors.min() < 0 or tors.max() >= n:
            raise TargetError(f"torsion atom indices must be in [0, {n})")
        for i, j, k, l in tors:
            for a, b in ((i, j), (j, k), (k, l)):
                if mol.GetBondBetweenAtoms(int(a), int(b)) is None:
                    raise TargetError(f"torsion {(i, j, k, l)}: atoms {a} and {b} are not bonded")
        super().__init__(Reals(len(tors)), name=name or f"Torsions({smiles or 'molecule'})")
        self.temperature = _check_temperature(temperature)
        self.kT = _kcal_per_mol_kT(self.temperature)
        self.smiles, self.variant = smiles, variant
        self.torsions = tors
        self.n_atoms = n
        self._masks = np.stack([_moving_atoms(mol, int(j), int(k)) for _, j, k, _ in tors])
        self.template = np.asarray(mol.GetConformer().GetPositions(), dtype=np.float64)  # Angstrom
        self.theta0 = np.array([_dihedral_np(self.template[None], t)[0] for t in tors])
        self._mmff = _MMFFBackend(molblock, variant)

    @property
    def molblock(self) -> str:
        return self._mmff.molblock

    def wrap(self, theta: torch.Tensor) -> torch.Tensor:
        """Angles mapped to ``[-pi, pi)``."""
        return torch.remainder(theta + math.pi, 2 * math.pi) - math.pi

    def reference_state(self) -> torch.Tensor:
        """The torsions of the minimized template conformer, ``(1, k)`` float32."""
        return torch.from_numpy(self.theta0).float()[None]

    def conformers(self, theta) -> np.ndarray:
        """Cartesian coordinates (Angstrom) ``(B, N, 3)`` of the torsion states ``theta`` (B, k)."""
        th = self._flat(torch.as_tensor(theta)).detach().cpu().double().numpy()
        return self._build(th)

    def _build(self, th: np.ndarray) -> np.ndarray:
        b = th.shape[0]
        x = np.repeat(self.template[None], b, axis=0)
        for t, (_, j, k, _) in enumerate(self.torsions):
            delta = th[:, t] - _dihedral_np(x, self.torsions[t])
            axis = x[:, k] - x[:, j]
            axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
            _rotate(x, self._masks[t], x[:, k], axis, delta)
        return x

    def mmff_energy(self, theta) -> np.ndarray:
        """MMFF energies (kcal/mol) of the torsion states, ``(B,)``."""
        x = self.conformers(theta)
        ff = self._mmff.ff
        return np.array([ff.CalcEnergy(xi.ravel().tolist()) for xi in x])

    def _backend(self, th, grad):
        b = th.shape[0]
        u = np.full(b, math.inf)
        g = np.zeros_like(th) if grad else None
        ok = np.isfinite(th).all(1)
        if not ok.any():
            return u, g
        x = self._build(np.where(ok[:, None], th, 0.0))
        ff = self._mmff.ff
        gx = np.zeros_like(x) if grad else None
        for i in np.flatnonzero(ok):
            flat = x[i].ravel().tolist()
            u[i] = ff.CalcEnergy(flat)
            if grad:
                gx[i] = np.asarray(ff.CalcGrad(flat)).reshape(-1, 3)
        u[~np.isfinite(u)] = math.inf
        if grad:
            for t, (_, j, k, _) in enumerate(self.torsions):
                axis = x[:, k] - x[:, j]
                axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
                m = self._masks[t]
                lever = np.cross(axis[:, None, :], x[:, m, :] - x[:, k][:, None, :])
                g[:, t] = (gx[:, m, :] * lever).sum((1, 2))
            g /= self.kT
            g[~np.isfinite(u) | ~np.isfinite(g).all(1)] = 0.0
        return u / self.kT, g

    def to_config(self):
        return {**super().to_config(), "type": "TorsionEnergy", "smiles": self.smiles,
                "torsions": self.torsions.tolist(), "temperature": self.temperature,
                "variant": self.variant}


def rotatable_torsions(mol) -> list:
    """One ``(i, j, k, l)`` per rotatable bond (RDKit's Lipinski rotatable-bond SMARTS on the
    heavy atoms: single, non-ring bonds between non-terminal atoms, no triple-bond ends; amide
    C-N bonds are included), ``i``/``l`` the lowest-index heavy neighbours."""
    Chem = require("rdkit.Chem", "molecular")
    Lipinski = require("rdkit.Chem.Lipinski", "molecular")
    heavy = Chem.RemoveHs(mol)
    out = []
    for j, k in heavy.GetSubstructMatches(Lipinski.RotatableBondSmarts):
        i = min(a.GetIdx() for a in heavy.GetAtomWithIdx(j).GetNeighbors() if a.GetIdx() != k)
        l = min(a.GetIdx() for a in heavy.GetAtomWithIdx(k).GetNeighbors() if a.GetIdx() != j)
        out.append((i, j, k, l))
    return out


def from_smiles(smiles: str, temperature: float = 300.0, *, torsions=None, n_conformers: int = 10,
                seed: int = 0, variant: str = "MMFF94", max_iters: int = 2000) -> TorsionEnergy:
    """A torsion-space Boltzmann target of a small molecule from its SMILES string.

    Embeds ``n_conformers`` ETKDGv3 conformers (``randomSeed=seed``), minimizes them with MMFF
    and keeps the lowest-energy one as the rigid template of a :class:`TorsionEnergy`.

    Parameters
    ----------
    smiles : str
    temperature : float
        Kelvin.
    torsions : sequence of (i, j, k, l), optional
        Atom indices (hydrogens are appended after the heavy atoms of the SMILES); default
        :func:`rotatable_torsions`.
    n_conformers, seed, max_iters : conformer search settings.
    variant : "MMFF94" or "MMFF94s"

    Examples
    --------
    >>> target = from_smiles("CC(=O)N[C@@H](C)C(=O)NC")   # capped alanine: 4 torsions
    >>> target.domain, target.energy(target.reference_state())
    """
    Chem = require("rdkit.Chem", "molecular")
    AllChem = require("rdkit.Chem.AllChem", "molecular")
    if not isinstance(smiles, str):
        raise TargetError(f"smiles must be a string, got {type(smiles).__name__}")
    base = Chem.MolFromSmiles(smiles)
    if base is None:
        raise TargetError(f"RDKit cannot parse the SMILES {smiles!r}")
    if isinstance(n_conformers, bool) or not isinstance(n_conformers, int) or n_conformers < 1:
        raise TargetError(f"n_conformers must be a positive integer, got {n_conformers!r}")
    mol = Chem.AddHs(base)
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    cids = list(AllChem.EmbedMultipleConfs(mol, n_conformers, params))
    if not cids:
        raise TargetError(f"RDKit could not embed a 3-D conformer of {smiles!r}")
    res = AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=int(max_iters), mmffVariant=variant)
    energies = [e if conv == 0 else e + 1e6 for conv, e in res]  # prefer converged minima
    best = cids[int(np.argmin(energies))]
    single = Chem.Mol(mol, confId=best)
    keep = Chem.Mol(single)
    keep.RemoveAllConformers()
    keep.AddConformer(single.GetConformer(best), assignId=True)
    tors = rotatable_torsions(keep) if torsions is None else torsions
    return TorsionEnergy(Chem.MolToMolBlock(keep), tors, temperature, variant=variant,
                         smiles=smiles, name=f"Torsions({smiles})")
