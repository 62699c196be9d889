r"""Any ``openmm.System`` as a batched boltzkit target (:class:`OpenMMEnergy`), and
:class:`ShiftedEnergy` (a target seen from a reference structure). Units, clashes, the
centre-of-geometry restraint and the cost are described in :mod:`boltzkit.energies.molecular`.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from .._utils import check_choice, check_positive
from ..domains import Reals
from ..errors import ConfigError, TargetError, require
from .._numerics import hessian_fd
from .base import Energy, PriorHint, scale_from_hessian
from ._bridge import _check_temperature, _lin_log, _NumpyBackedEnergy


class _OpenMMBackend:
    """One OpenMM ``Context`` (created lazily, rebuilt after unpickling) that evaluates
    energies (kJ/mol) and forces (kJ/mol/nm) of a batch of positions (nm)."""

    def __init__(self, system, platform: str, properties: dict):
        self.system = system
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
        """``pos`` (B, N, 3) nm -> energies (B,) kJ/mol and forces (B, N, 3) or None.

        One ``setPositions``/``getState`` per state in the reused Context. The energy and the
        forces are read through the SWIG accessors that the public ``State`` methods wrap
        (no unit objects, forces copied straight into the output array): 2.5x fewer seconds
        per state than ``getForces(asNumpy=True)`` at 22 atoms (``docs/performance.md``); the
        public methods are the fallback where those accessors are missing."""
        ctx = self.context
        n = pos.shape[0]
        u = np.full(n, math.inf)  # stays for states with non-finite positions
        f = np.zeros_like(pos) if grad else None
        fast = _fast_state_readers()
        for b in np.flatnonzero(np.isfinite(pos).reshape(n, -1).all(1)):
            ctx.setPositions(pos[b])
            st = ctx.getState(getEnergy=True, getForces=grad)
            if fast is not None:
                e = fast[0](st)  # kJ/mol
                if grad:
                    fast[1](st, fast[2], f[b])  # kJ/mol/nm, written in place
            else:
                e = st.getPotentialEnergy()._value  # internal units: kJ/mol (no unit conversion)
                if grad:
                    f[b] = st.getForces(asNumpy=True)._value  # kJ/mol/nm
            u[b] = e if math.isfinite(e) else math.inf
        if grad:
            u[~np.isfinite(f).reshape(n, -1).all(1)] = math.inf
            f[~np.isfinite(u)] = 0.0
        return u, f


@functools.lru_cache(maxsize=None)
def _fast_state_readers():
    """``(energy(state) -> float kJ/mol, fill(state, kind, out (N, 3) float64), forces kind)``
    from OpenMM's SWIG layer, or None when this OpenMM does not expose them."""
    mm = require("openmm", "molecular")
    low = getattr(mm, "_openmm", None)
    energy = getattr(low, "State_getPotentialEnergy", None)
    fill = getattr(mm.State, "_getVectorAsNumpy", None)
    kind = getattr(mm.State, "Forces", None)
    return None if None in (energy, fill, kind) else (energy, fill, kind)


# ============================================================================ torch force field
#: 1 / (4 pi eps_0) in kJ nm / (mol e^2), OpenMM 8's value (its energies agree to 1e-12 kJ/mol;
#: the older rounded 138.935456 is off by 2e-6 kJ/mol on alanine dipeptide)
ONE_4PI_EPS0 = 138.93545764438198


class TorchForceField:
    r"""The potential energy of an ``openmm.System`` in torch, batched, for the force types a
    small molecule in vacuum uses: ``HarmonicBondForce`` ``k (r - r_0)^2 / 2``,
    ``HarmonicAngleForce`` ``k (theta - theta_0)^2 / 2``, ``PeriodicTorsionForce``
    ``k (1 + cos(n phi - phase))``, ``NonbondedForce`` without cutoff (Coulomb
    ``q_i q_j / (4 pi eps_0 r)`` plus Lennard-Jones ``4 eps ((s/r)^12 - (s/r)^6)`` with
    Lorentz-Berthelot mixing over all pairs, the exceptions' own parameters in place of the
    mixed ones for the excluded and 1-4 pairs) and ``CMMotionRemover`` (no energy).

    :meth:`unsupported` says why a System has more than these (constraints, virtual sites,
    parameter offsets); :class:`OpenMMEnergy` evaluates the others here as its ``backend``
    "torch" (when, and what it costs: see there), with exact second derivatives by autograd.
    Agreement with OpenMM's Reference platform is tested to 1e-6 kJ/mol on energies and 1e-5
    relative on forces (``tests/test_molecular.py``).
    """

    def __init__(self, system):
        mm = require("openmm", "molecular")
        why = self.unsupported(system)
        if why:
            raise TargetError(f"TorchForceField cannot evaluate this System: {why}; use the "
                              "OpenMM backend (OpenMMEnergy(..., backend='openmm'))")
        n = system.getNumParticles()
        bonds, angles, tors = [], [], []
        pairs = {}
        # rows of atom indices then parameters (quantities as plain numbers in OpenMM's units)
        listed = {mm.HarmonicBondForce: ("Bond", bonds), mm.HarmonicAngleForce: ("Angle", angles),
                  mm.PeriodicTorsionForce: ("Torsion", tors)}
        for force in system.getForces():
            if type(force) in listed:
                kind, rows = listed[type(force)]
                get = getattr(force, f"get{kind}Parameters")
                rows.extend(tuple(getattr(v, "_value", v) for v in get(i))
                            for i in range(getattr(force, f"getNum{kind}s")()))
            elif isinstance(force, mm.NonbondedForce):
                par = [force.getParticleParameters(i) for i in range(n)]
                q, sg, ep = ([p[c]._value for p in par] for c in range(3))  # charge, sigma, epsilon
                for i in range(n):
                    for j in range(i + 1, n):
                        pairs[(i, j)] = (q[i] * q[j], 0.5 * (sg[i] + sg[j]), math.sqrt(ep[i] * ep[j]))
                for e in range(force.getNumExceptions()):
                    a, b, qq, s, eps = force.getExceptionParameters(e)
                    pairs[(min(a, b), max(a, b))] = (qq._value, s._value, eps._value)
        pairs = {k: v for k, v in pairs.items() if v[0] != 0.0 or v[2] != 0.0}
        self.n_atoms = n
        f64 = torch.float64

        def diff(rows, a, b):
            """``(N, len(rows))`` matrix ``M`` with ``(X M)[:, m] = x_{rows[m][a]} - x_{rows[m][b]}``."""
            m = torch.zeros(n, len(rows), dtype=f64)
            for c, r in enumerate(rows):
                m[r[a], c] += 1.0
                m[r[b], c] -= 1.0
            return m

        # atom-pair differences as products with fixed +-1 matrices: a small dense matmul (and
        # its transpose in backward) instead of gathers whose backward is a scatter-add
        self._cpu = {
            "bond": diff(bonds, 0, 1), "bond_par": torch.tensor([b[2:] for b in bonds], dtype=f64).reshape(-1, 2),
            "angle_u": diff(angles, 0, 1), "angle_v": diff(angles, 2, 1),
            "angle_par": torch.tensor([a[3:] for a in angles], dtype=f64).reshape(-1, 2),
            "tors_1": diff(tors, 1, 0), "tors_2": diff(tors, 2, 1), "tors_3": diff(tors, 3, 2),
            "tors_par": torch.tensor([t[4:] for t in tors], dtype=f64).reshape(-1, 3),
            "pair": diff(list(pairs), 0, 1),
            "pair_par": torch.tensor(list(pairs.values()), dtype=f64).reshape(-1, 3),
        }
        self._on = {}

    @staticmethod
    def unsupported(system) -> str:
        """Why :class:`TorchForceField` cannot evaluate ``system`` ("" when it can)."""
        mm = require("openmm", "molecular")
        if system.getNumConstraints() > 0:
            return "it has constraints"
        if any(system.isVirtualSite(i) for i in range(system.getNumParticles())):
            return "it has virtual sites"
        plain = (mm.HarmonicBondForce, mm.HarmonicAngleForce, mm.PeriodicTorsionForce, mm.CMMotionRemover)
        for force in system.getForces():
            if type(force) in plain:
                continue
            if type(force) is mm.NonbondedForce:
                if force.getNonbondedMethod() != mm.NonbondedForce.NoCutoff:
                    return "its NonbondedForce uses a cutoff or periodic boundaries"
                if force.getNumParticleParameterOffsets() or force.getNumExceptionParameterOffsets():
                    return "its NonbondedForce has parameter offsets"
                continue
            return f"it has a {type(force).__name__}"
        return ""

    def _tables(self, device):
        key = str(device)
        if key not in self._on:
            self._on[key] = {k: v.to(device) for k, v in self._cpu.items()}
        return self._on[key]

    def __call__(self, pos: torch.Tensor) -> torch.Tensor:
        """Potential energies (kJ/mol, ``(B,)``) of positions ``pos`` (``(B, N, 3)`` nm), in the
        dtype of ``pos`` (use float64 for OpenMM's accuracy); differentiable, twice.

        Vectors are held as ``(B, 3, M)`` (components first), so dot and cross products are
        elementwise operations on ``(B, M)`` slices (``torch.cross`` is several times slower on
        CPU at these sizes)."""
        t = self._tables(pos.device)
        dt = pos.dtype
        xt = pos.transpose(1, 2)  # (B, 3, N)
        e = pos.new_zeros(pos.shape[0])
        d = xt @ t["bond"].to(dt)
        r0, k = t["bond_par"].to(dt).unbind(1)
        e = e + (0.5 * k * (torch.sqrt(_dot(d, d)) - r0) ** 2).sum(1)
        u, v = xt @ t["angle_u"].to(dt), xt @ t["angle_v"].to(dt)
        c = _cross(u, v)
        theta = torch.atan2(torch.sqrt(_dot(c, c)), _dot(u, v))
        t0, k = t["angle_par"].to(dt).unbind(1)
        e = e + (0.5 * k * (theta - t0) ** 2).sum(1)
        b1, b2, b3 = (xt @ t[k].to(dt) for k in ("tors_1", "tors_2", "tors_3"))
        n1, n2 = _cross(b1, b2), _cross(b2, b3)
        phi = torch.atan2(torch.sqrt(_dot(b2, b2)) * _dot(b1, n2), _dot(n1, n2))  # as geometry.dihedral
        per, phase, k = t["tors_par"].to(dt).unbind(1)
        e = e + (k * (1.0 + torch.cos(per * phi - phase))).sum(1)
        d = xt @ t["pair"].to(dt)
        r2 = _dot(d, d)
        qq, s, eps = t["pair_par"].to(dt).unbind(1)
        s6 = (s * s / r2) ** 3
        e = e + (ONE_4PI_EPS0 * qq * torch.rsqrt(r2) + 4.0 * eps * (s6 * s6 - s6)).sum(1)
        return e


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dot products of ``(B, 3, M)`` vector batches -> ``(B, M)``."""
    return a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1] + a[:, 2] * b[:, 2]


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cross products of ``(B, 3, M)`` vector batches."""
    ax, ay, az = a.unbind(1)
    bx, by, bz = b.unbind(1)
    return torch.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx], 1)


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
        Finite-difference step (nm) of Hessian-vector products (OpenMM backend).
    backend : {"auto", "openmm", "torch"}
        Who evaluates the force field. "openmm": the ``Context`` on ``platform``, one call per
        state (states on another device go through the host). "torch": :class:`TorchForceField`
        (bonds, angles, torsions and nonbonded forces without cutoff only), vectorized over the
        batch on the states' device, with exact second derivatives. "auto" (default): OpenMM
        for CPU states (on this CPU OpenMM's Reference platform is 2-3x faster per state than
        the torch force field at every batch size tried, ``docs/performance.md``), the torch
        force field for states on an accelerator when the System allows it (no host round
        trip). The two agree to float64 rounding (:meth:`openmm_energy` always asks OpenMM).

    Notes
    -----
    The domain is ``Reals(3N)`` (flat, particle-major). :class:`~boltzkit.domains.ParticleCloud`
    is not used: it describes identical particles (its default networks are permutation
    equivariant), while the atoms of a molecule are distinguishable.
    """

    def __init__(self, system, temperature: float = 300.0, *, platform: str = "auto",
                 platform_properties: "dict | None" = None, positions=None, topology=None,
                 com_restraint: "float | None" = None, energy_cut: "float | None" = None,
                 hvp_step: float = 1e-4, backend: str = "auto", name: "str | None" = None):
        mm = require("openmm", "molecular")
        check_choice("backend", backend, ("auto", "openmm", "torch"))
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
        self.com_restraint = check_positive("com_restraint", com_restraint, allow_none=True, error=TargetError)
        self.energy_cut = None if energy_cut is None else float(energy_cut)
        self.hvp_step = check_positive("hvp_step", hvp_step, allow_none=True, error=TargetError)
        why = TorchForceField.unsupported(system)
        if backend == "torch" and why:
            raise ConfigError(f"backend='torch' cannot evaluate this System: {why}; use "
                              "backend='openmm'")
        self._ff = TorchForceField(system) if (backend == "torch" or (backend == "auto" and not why)) else None
        self._backend_choice = backend
        props = {}
        if platform == "auto":
            platform, props = _auto_platform(system)
        props = {**props, **(platform_properties or {})}
        self.n_atoms = n
        self._shape_hint = f" or (B, {n}, 3)"
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

    @property
    def backend(self) -> str:
        """The ``backend`` option: "auto", "openmm" or "torch"."""
        return self._backend_choice

    def _torch_for(self, flat: torch.Tensor) -> bool:
        """Whether these states are evaluated by :class:`TorchForceField` (``backend``)."""
        return self._ff is not None and (self._backend_choice == "torch" or flat.device.type != "cpu")

    # -- torch backend: same conventions as _backend (restraint, cut, +inf and zero gradient)
    def _torch_u(self, flat: torch.Tensor) -> torch.Tensor:
        pos = flat.reshape(flat.shape[0], self.n_atoms, 3)
        u = self._ff(pos) / self.kT
        if self.com_restraint is not None:
            c = pos.mean(1)
            u = u + (0.5 / self.com_restraint ** 2) * (c * c).sum(1)
        if self.energy_cut is not None:
            cut = self.energy_cut
            u = torch.where(u > cut, cut + torch.log1p((u - cut).clamp_min(0.0)), u)
        return u

    def _evaluate(self, flat: torch.Tensor, grad: bool):
        if not self._torch_for(flat):
            return super()._evaluate(flat, grad)
        x = flat.detach().to(torch.float64)
        self.n_evaluations += x.shape[0]
        with torch.enable_grad():
            xr = x.requires_grad_(grad)
            u = self._torch_u(xr)
            g = torch.autograd.grad(u.sum(), xr)[0] if grad else None
        u = u.detach()
        bad = ~torch.isfinite(u)
        if g is not None:
            bad = bad | ~torch.isfinite(g).all(1)
            g = torch.where(bad[:, None], torch.zeros_like(g), g).to(flat.dtype)
        u = torch.where(bad, torch.full_like(u, math.inf), u)
        return u.to(flat.dtype), g

    def _hvp(self, flat: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if not self._torch_for(flat):
            return super()._hvp(flat, w)
        self.n_evaluations += flat.shape[0]
        with torch.enable_grad():
            xr = flat.detach().to(torch.float64).requires_grad_(True)
            (g,) = torch.autograd.grad(self._torch_u(xr).sum(), xr, create_graph=True)
            (hv,) = torch.autograd.grad(g, xr, grad_outputs=w.detach().to(torch.float64))
        return torch.where(torch.isfinite(hv), hv, torch.zeros_like(hv)).to(flat.dtype)

    def _backend(self, x, grad):
        n = x.shape[0]
        pos = x.reshape(n, self.n_atoms, 3)
        e, f = self._backend_impl(pos, grad)
        u = e / self.kT
        g = None if f is None else (-f / self.kT).reshape(n, -1)
        if self.com_restraint is not None:
            c = pos.mean(1)  # (B, 3)
            k = 1.0 / self.com_restraint ** 2
            ok = np.isfinite(u)  # a state the backend set to +inf stays there (NaN input: NaN centre)
            u = np.where(ok, u + 0.5 * k * (c * c).sum(1), u)
            if g is not None:
                g = np.where(ok[:, None], g + np.tile(k * c / self.n_atoms, (1, self.n_atoms)), g)
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
            x0 = self.reference_state().double().reshape(-1)
            res = _bfgs(self.energy_and_grad, x0)
            xm = torch.from_numpy(np.asarray(res.x, dtype=np.float64))[None]
            if not math.isfinite(float(res.fun)) or float(res.fun) > float(self.energy(x0[None])[0]):
                xm = x0[None].clone()  # never worse than the shipped structure
            self._minimized = xm
        return self._minimized.clone()

    def hessian(self, x, step: float = 1e-5) -> torch.Tensor:
        """Hessian ``(3N, 3N)`` float64 of ``u`` at one state ``x``, by central differences of
        the gradient (``6N`` gradient evaluations, one batch), symmetrized."""
        x = self._flat(torch.as_tensor(x)).double()[:1]
        return hessian_fd(lambda z: (None, self.grad_energy(z)), x, step)[0]

    def prior_hint(self):
        """Harmonic (Laplace) frame of the reference structure, or None without positions.

        ``loc`` is :meth:`minimized_state`, ``scale`` the inverse square root of the Hessian
        there (:func:`~boltzkit.energies.base.scale_from_hessian`), so the standard normal in
        the sampler's coordinates is the harmonic approximation of the basin of the reference
        structure: bond, angle and torsion directions all get their own width (about 0.001 nm
        for C-H stretches); flat and soft collective modes (rotations) are capped at
        ``hint_max_std`` (0.05 nm, beyond which their linearization distorts bonds). Cached.
        """
        if self.positions is None:
            return None
        if getattr(self, "_hint", None) is None:
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
                "temperature": self.temperature, "platform": self.platform, "backend": self.backend,
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


def _bfgs(energy_and_grad, x0: torch.Tensor):
    """scipy's BFGS result for the energy whose ``energy_and_grad`` maps a batch of one
    ``(1, d)`` to ``(u, grad u)``, started at ``x0`` ``(d,)`` float64."""
    from scipy.optimize import minimize

    def fun(v):
        u, g = energy_and_grad(torch.from_numpy(v)[None])
        return float(u[0]), g[0].numpy().astype(np.float64)

    return minimize(fun, x0.numpy(), jac=True, method="BFGS", options={"maxiter": 5000, "gtol": 1e-4})


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

    def to_absolute(self, x: torch.Tensor) -> torch.Tensor:
        """Shifted states -> coordinates of the base target (same shape as ``x``)."""
        return (x.reshape(x.shape[0], -1) + self.origin.to(x)).reshape(x.shape)

    def energy(self, x):
        return self.base.energy(self._mapped(x, self.to_absolute))

    def grad_energy(self, x):
        return self.base.grad_energy(self._mapped(x, self.to_absolute))

    def exact_log_z(self):
        return self.base.exact_log_z()

    def to_config(self):
        return {**super().to_config(), "type": "ShiftedEnergy", "base": self.base.to_config()}


# ============================================================================ alanine dipeptide
