r"""Internal (Z-matrix) coordinates for molecular targets.

A molecule of ``N`` atoms whose energy does not change under rigid motions is described, up to
those motions, by ``3N - 6`` internal coordinates: the atoms are placed one after the other
(:class:`ZMatrix`), each at a bond length ``r`` from an already placed atom ``j``, at a bond
angle ``theta`` (``i-j-k``) and a dihedral ``phi`` (``i-j-k-l``) with respect to placed atoms
``k`` and ``l``. :class:`InternalCoordinateEnergy` turns a Cartesian target into a target on
``Reals(3N - 6)`` in these coordinates, with the same normalizing constant as the canonical
internal-coordinate partition function (rigid-body degrees of freedom integrated out).

Layout of a state ``q`` (``(B, 3N - 6)``)
-----------------------------------------
``[N - 1 bond lengths | N - 2 angles (rad) | N - 3 dihedrals (rad)]``, the ``p``-th entry of
each block belonging to the atom placed ``p``-th among those that have such a coordinate:
bond ``p`` to atom ``order[p + 1]``, angle ``p`` to ``order[p + 2]``, dihedral ``p`` to
``order[p + 3]`` (:attr:`ZMatrix.bond_index` etc. give the positions in ``q``,
:attr:`ZMatrix.bond_atoms` etc. the atoms). The canonical values returned by
:meth:`ZMatrix.to_internal` have ``r > 0``, ``theta`` in ``[0, pi]`` and ``phi`` in
``(-pi, pi]`` (the IUPAC / mdtraj sign convention of :func:`boltzkit.analysis.dihedral`).

Canonical frame (:meth:`ZMatrix.to_cartesian`): the first placed atom at the origin, the
second at ``(r_1, 0, 0)``, the third in the ``xy``-plane (``y > 0`` for ``0 < theta < pi``),
every later atom by NeRF (natural extension reference frame) placement.

Jacobian (:meth:`ZMatrix.log_jacobian`)
---------------------------------------
Write a configuration as ``x = R X(q) + t`` with ``X(q)`` the canonical frame, ``t`` in
``R^3`` and ``R`` in ``SO(3)``. Placing the atoms in order,

* atom 0: ``dx_0 = dt`` (volume 1);
* atom 1: ``x_1 = x_0 + r_1 n`` with ``n`` on the unit sphere: ``dx_1 = r_1^2 dr_1 dOmega(n)``;
* atom 2: ``x_2 = x_j + r_2 m``; describing ``m`` by its polar angle ``theta_2`` from the
  axis ``+-n`` and its azimuth ``psi`` about it: ``dx_2 = r_2^2 sin(theta_2) dr_2 dtheta_2
  dpsi``;
* atom ``i >= 3``: spherical coordinates about the local frame, ``dx_i = r_i^2 sin(theta_i)
  dr_i dtheta_i dphi_i``.

``(n, psi)`` parametrize the rotation ``R`` with the Haar measure ``dOmega dpsi`` (total
volume ``4 pi * 2 pi = 8 pi^2``), so

    ``dx = J(q) dq dt dR``,  ``log J(q) = sum_{i >= 1} 2 log r_i + sum_{i >= 2} log sin theta_i``

(atom 1 contributes ``2 log r`` only, atom 2 ``2 log r + log sin theta``, every later atom
both; dihedrals contribute nothing). For a Cartesian density ``exp(-u(x))`` invariant under
rigid motions the internal coordinates have the density ``exp(-u(x(q)) + log J(q)) / Z_q``
and ``Z_x = Z_q * 8 pi^2 * (volume of the translations)``; with a harmonic restraint of width
``s`` on the centre of geometry (``OpenMMEnergy(com_restraint=s)``) the translation factor is
``(2 pi s^2)^{3/2}`` (:meth:`InternalCoordinateEnergy.cartesian_log_z`).

Every real ``q`` (a density on all of ``R^{3N-6}``)
---------------------------------------------------
:meth:`ZMatrix.to_cartesian` is defined for every real ``q`` (negative ``r``, any ``theta``,
any ``phi``); the placement formulas are used as they are. The Cartesian structure is
unchanged (up to a rigid motion) under ``phi -> phi + 2 pi``, ``(theta, phi) -> (-theta, phi +
pi)``, ``theta -> theta + 2 pi`` and ``(r, theta, phi) -> (-r, pi - theta, phi + pi)``
(similarly for atoms 1 and 2, where the partners are global rotations), so
``exp(-u(x(q))) J(q)`` on ``R^{3N-6}`` has infinite mass. :class:`InternalCoordinateEnergy`
multiplies it by smooth **partitions of unity** ``W(q) = prod_bonds g(r) prod_angles
w(theta) prod_dihedrals h(phi - c)``. The copies of a configuration act atom by atom, so the
sum of ``W`` over all copies is a product over atoms of per-atom sums, each exactly 1; hence
the density on ``R^{3N-6}`` has exactly the normalizing constant ``Z_q`` of the canonical
domain, and wherever the windows are close to 1 (away from their edges) it equals the
canonical density:

* dihedrals: ``h(phi) = Phi((phi + pi) / a) - Phi((phi - pi) / a)`` (:func:`torus_window_log`;
  ``sum_k h(phi + 2 pi k) = 1``), width ``a = torsion_window``, centred at ``c`` (any centre
  keeps the partition property; :class:`InternalCoordinateEnergy` centres it at the
  reference structure's dihedrals by default, see ``torsion_center``);
* angles: ``w(theta) = Phi(theta / b) - Phi((theta - pi) / b)`` (:func:`angle_window_log`;
  ``sum_m w(theta + pi m) = 1``, which covers both ``theta + 2 pi k`` and the reflection
  ``-theta + 2 pi k`` because ``w(pi - theta) = w(theta)``), width ``b = angle_window``;
  inside ``(0, pi)`` it is 1 up to ``Phi(-d / b)`` at distance ``d`` from the ends;
* bonds: ``g(r) = Phi(r / c)`` (:func:`bond_window_log`; ``g(r) + g(-r) = 1``), width
  ``c = bond_window`` in the Cartesian length unit (default 0.01, i.e. 0.1 pm in nm).

The Jacobian uses ``|sin theta|`` and ``|r|``, smoothed as ``0.5 log(sin^2 theta + eps^2)``
and ``log(r^2 + eps^2)`` with ``eps = 1e-12`` so that the energy stays finite (and its
gradient bounded) at ``theta in pi Z`` and ``r = 0``, where the true density vanishes; the
change of ``Z_q`` is of order ``eps^2``. :meth:`ZMatrix.wrap` maps any ``q`` to the canonical
representative of its configuration.

Choice of the reference atoms
-----------------------------
:meth:`ZMatrix.from_bonds` orders the atoms by breadth-first search from ``root`` (bonded
neighbours with the larger subtree first, so that main chains come before side groups) and
gives atom ``i`` the references ``j`` = its BFS parent, ``k`` = the parent of ``j`` (a bonded
neighbour of ``j``). For ``l`` there are two rules (``torsion_refs``):

* ``"chain"``: ``l`` a placed neighbour of ``k`` (a proper dihedral ``i-j-k-l``); if none,
  a placed neighbour of ``j`` (a sibling), else any other placed atom;
* ``"sibling"`` (default): like "chain" for the first child of ``j``, but every later child
  ``i`` of ``j`` takes ``l`` = the first placed child (sibling) ``s`` of ``j``, so its
  dihedral ``i-j-k-s`` is the *offset* of ``i`` from ``s`` about the ``j-k`` axis. Changing
  the first child's dihedral then rotates the whole group about the bond ``j-k`` (a true
  torsion, soft), and the offsets are stiff (they encode the tetrahedral geometry and the
  chirality of ``j``). With "chain" each substituent has its own dihedral, and changing one
  alone deforms the bond angles at ``j``: every dihedral is stiff, which makes a diagonal
  (per-coordinate) prior such as :meth:`InternalCoordinateEnergy.prior_hint` useless for the
  backbone torsions. Both give valid coordinates with the same Jacobian and ``Z_q``.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Sequence

import numpy as np
import torch

from .._utils import check_choice, check_positive
from ..domains import Reals
from ..errors import ConfigError, TargetError
from ..geometry import as_atoms, dihedral_points, wrap_angle
from .._numerics import hessian_diag_fd, hessian_fd
from .base import Energy, PriorHint, scale_from_hessian

__all__ = ["ZMatrix", "InternalCoordinateEnergy", "TorusWindowedEnergy", "torus_window_log", "angle_window_log",
           "bond_window_log", "place_atom", "to_internal", "to_cartesian", "log_jacobian"]

_EPS = 1e-12   # smoothing of |r| and |sin theta| in the Jacobian (module docstring)
_TINY = 1e-30  # safe normalization of vectors that vanish at degenerate geometries
_LN2 = math.log(2.0)


# ============================================================================ windows
def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, stable at both ends and NaN-free in autograd."""
    a = x.clamp(min=-_LN2)  # branch for x > -log 2
    b = x.clamp(max=-_LN2)  # branch for x <= -log 2
    return torch.where(x > -_LN2, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(b)))


def _log_ndtr_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``log(Phi(a) - Phi(b))`` for ``a > b`` (standard normal CDF), evaluated in the lower
    tail (``Phi(a) - Phi(b) = Phi(-b) - Phi(-a)``) so it is accurate far from the window."""
    flip = (a + b) > 0
    hi = torch.where(flip, -b, a)
    lo = torch.where(flip, -a, b)
    lhi = torch.special.log_ndtr(hi)
    return lhi + _log1mexp(torch.special.log_ndtr(lo) - lhi)


def torus_window_log(theta: torch.Tensor, width: float = 0.5) -> torch.Tensor:
    r"""``log h(theta)`` of the periodic partition of unity
    ``h(theta) = Phi((theta + pi) / width) - Phi((theta - pi) / width)``.

    ``sum_k h(theta + 2 pi k) = 1`` for every ``theta`` (the sum telescopes), so for a
    ``2 pi``-periodic ``f``, ``int_R f h = int_{-pi}^{pi} f``: a periodic density times ``h``
    is a normalizable density on ``R`` with the mass of one period. ``h`` is about 1 inside
    ``(-pi, pi)`` (``1/2`` at ``+-pi``) and decays like a Gaussian of std ``width`` outside.
    Elementwise; finite for every real ``theta``.
    """
    w = check_positive("width", width)
    t = torch.as_tensor(theta)
    return _log_ndtr_diff((t + math.pi) / w, (t - math.pi) / w)


def angle_window_log(theta: torch.Tensor, width: float = 0.1) -> torch.Tensor:
    r"""``log w(theta)`` of the bond-angle partition of unity
    ``w(theta) = Phi(theta / width) - Phi((theta - pi) / width)``.

    ``sum_m w(theta + pi m) = 1`` and ``w(pi - theta) = w(theta)``, so the copies
    ``theta + 2 pi k`` and ``-theta + 2 pi k`` of an angle (which give the same position of an
    atom, with the dihedral shifted by ``pi`` for the reflected ones) carry total weight 1.
    About 1 inside ``(0, pi)``, 1/2 at its ends. Elementwise; finite for every real ``theta``.
    """
    w = check_positive("width", width)
    t = torch.as_tensor(theta)
    return _log_ndtr_diff(t / w, (t - math.pi) / w)


def bond_window_log(r: torch.Tensor, width: float = 0.01) -> torch.Tensor:
    r"""``log g(r)``, ``g(r) = Phi(r / width)``: ``g(r) + g(-r) = 1`` (a bond of length ``-r``
    places the atom where ``r`` does with the angle and dihedral reflected). Elementwise."""
    w = check_positive("width", width)
    return torch.special.log_ndtr(torch.as_tensor(r) / w)


class TorusWindowedEnergy(Energy):
    r"""A ``2 pi``-periodic energy on ``Reals(k)`` made normalizable with the mass of one period:
    ``u_w(theta) = u(theta) - sum_t log h(theta_t - c_t)`` (:func:`torus_window_log`).

    ``exp(-u)`` has infinite mass on ``R^k``; ``exp(-u_w)`` has exactly ``Z`` of the torus
    ``[c - pi, c + pi)^k`` (the window's copies sum to 1), and equals ``exp(-u)`` there up to
    the window's soft edges at ``c +- pi``. Its samples, wrapped, are samples of the torus
    density; its log Z is the torus's. Put ``c`` at a minimum: the edges then fall on the
    barriers, where the window's slope costs little.
    """

    def __init__(self, base: Energy, center, width: float = 0.5):
        dom = getattr(base, "domain", None)
        if not isinstance(dom, Reals):
            raise TargetError(f"a torus window needs a target on Reals(k), got {dom!r}")
        c = torch.as_tensor(center, dtype=torch.float64).detach().reshape(-1)
        if c.numel() != dom.dim or not bool(torch.isfinite(c).all()):
            raise ConfigError(f"center must be {dom.dim} finite angles, got {tuple(c.shape)}")
        super().__init__(dom, name=f"{getattr(base, 'name', type(base).__name__)}(torus window)")
        self.base, self.width = base, check_positive("width", width)
        self.register_buffer("center", c)

    def prior_hint(self) -> PriorHint:
        """One period about ``c``: the uniform law's width ``pi / sqrt(3)`` per angle."""
        return PriorHint(self.center, torch.full_like(self.center, math.pi / math.sqrt(3.0)))

    def _log_window(self, x):
        return torus_window_log(x - self.center.to(x), self.width).sum(-1)

    def energy(self, x):
        return self.base.energy(x) - self._log_window(x)

    def grad_energy(self, x):
        with torch.enable_grad():
            t = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self._log_window(t).sum(), t)
        return self.base.grad_energy(x) - g

    def to_config(self):
        cfg = self.base.to_config() if hasattr(self.base, "to_config") else {}
        return {**cfg, "torus_window": {"center": self.center.tolist(), "width": self.width}}


# ============================================================================ geometry
def _safe_unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.sqrt((v * v).sum(-1, keepdim=True) + _TINY)


def place_atom(xj: torch.Tensor, xk: torch.Tensor, xl: torch.Tensor, r: torch.Tensor,
               theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    r"""NeRF placement of an atom ``i`` from three placed atoms (batched, differentiable).

    Returns ``x_i`` (``(B, 3)``) with ``|x_i - x_j| = r``, angle ``i-j-k`` equal to ``theta``
    and dihedral ``i-j-k-l`` (= ``l-k-j-i``) equal to ``phi`` (IUPAC sign, as
    :func:`boltzkit.analysis.dihedral`), for ``r > 0`` and ``theta`` in ``(0, pi)``; any real
    values are accepted (module docstring). ``xj, xk, xl``: ``(B, 3)``; ``r, theta, phi``:
    ``(B,)``. Local volume element: ``|det dx_i / d(r, theta, phi)| = r^2 |sin theta|``.
    """
    bc = _safe_unit(xj - xk)
    n = _safe_unit(torch.cross(xk - xl, bc, dim=-1))
    m = torch.cross(n, bc, dim=-1)
    st = torch.sin(theta)
    d = (-torch.cos(theta))[:, None] * bc + (st * torch.cos(phi))[:, None] * m \
        + (st * torch.sin(phi))[:, None] * n
    return xj + r[:, None] * d


# ============================================================================ Z-matrix
class ZMatrix:
    r"""A placement order of ``N`` atoms with the reference atoms of each (module docstring).

    Parameters
    ----------
    order : sequence of N ints
        A permutation of ``range(N)``: ``order[p]`` is the atom placed ``p``-th.
    refs : array ``(N, 3)`` of ints
        ``refs[p] = (j, k, l)``: the references of atom ``order[p]`` (bond partner, angle
        partner, dihedral partner), all placed before it and distinct; ``-1`` where unused
        (``p = 0``: all; ``p = 1``: ``k`` and ``l``; ``p = 2``: ``l``).

    Attributes
    ----------
    n_atoms, n_dof : int
        ``N`` and ``3N - 6``.
    order : ndarray ``(N,)``; refs : ndarray ``(N, 3)``
    bond_index, angle_index, torsion_index : ndarray
        Positions in ``q`` of the ``N - 1`` bond lengths, ``N - 2`` angles and ``N - 3``
        dihedrals (``arange(0, N-1)``, ``arange(N-1, 2N-3)``, ``arange(2N-3, 3N-6)``).
    bond_atoms ``(N-1, 2)``, angle_atoms ``(N-2, 3)``, torsion_atoms ``(N-3, 4)`` : ndarray
        The atoms ``(i, j)``, ``(i, j, k)``, ``(i, j, k, l)`` of each coordinate.

    Build one with :meth:`from_bonds` or :meth:`from_mdtraj`.
    """

    def __init__(self, order, refs):
        order = np.asarray(order, dtype=np.int64).reshape(-1)
        refs = np.asarray(refs, dtype=np.int64)
        n = order.size
        if n < 3:
            raise TargetError(f"internal coordinates need at least 3 atoms (3N - 6 > 0), got {n}")
        if sorted(order.tolist()) != list(range(n)):
            raise TargetError("ZMatrix order must be a permutation of range(n_atoms)")
        if refs.shape != (n, 3):
            raise TargetError(f"ZMatrix refs must have shape ({n}, 3), got {refs.shape}")
        placed = set()
        for p, i in enumerate(order.tolist()):
            need = min(p, 3)
            r = refs[p].tolist()
            used, unused = r[:need], r[need:]
            if any(a != -1 for a in unused):
                raise TargetError(f"atom {i} (placed {p}-th) has {need} references; set the others "
                                  f"to -1, got {tuple(r)}")
            if len(set(used)) != len(used) or any(a not in placed for a in used):
                raise TargetError(f"the references {tuple(used)} of atom {i} (placed {p}-th) must be "
                                  "distinct atoms placed before it")
            placed.add(i)
        self.order, self.refs, self.n_atoms, self.n_dof = order, refs, n, 3 * n - 6
        self.bond_index = np.arange(0, n - 1)
        self.angle_index = np.arange(n - 1, 2 * n - 3)
        self.torsion_index = np.arange(2 * n - 3, 3 * n - 6)
        self.bond_atoms = np.stack([order[1:], refs[1:, 0]], 1)
        self.angle_atoms = np.stack([order[2:], refs[2:, 0], refs[2:, 1]], 1)
        self.torsion_atoms = np.concatenate([order[3:, None], refs[3:]], 1)

    # -- constructors
    @classmethod
    def from_bonds(cls, n_atoms: int, bonds: Sequence[Sequence[int]], root: int = 0, *,
                   torsion_refs: str = "sibling") -> "ZMatrix":
        """Z-matrix of a connected bond graph by breadth-first search from ``root``.

        Parameters
        ----------
        n_atoms : int
        bonds : sequence of (i, j)
        root : int
            The first atom placed (the origin of the canonical frame).
        torsion_refs : {"sibling", "chain"}
            How the dihedral partner ``l`` is chosen (module docstring).
        """
        if isinstance(n_atoms, bool) or int(n_atoms) != n_atoms or n_atoms < 3:
            raise TargetError(f"n_atoms must be an integer >= 3, got {n_atoms!r}")
        n = int(n_atoms)
        check_choice("torsion_refs", torsion_refs, ("sibling", "chain"))
        if int(root) != root or not 0 <= root < n:
            raise TargetError(f"root must be an atom index in [0, {n}), got {root!r}")
        nbr = [set() for _ in range(n)]
        for b in bonds:
            i, j = (int(v) for v in b)
            if not (0 <= i < n and 0 <= j < n) or i == j:
                raise TargetError(f"bond {tuple(b)}: atom indices must be distinct and in [0, {n})")
            nbr[i].add(j)
            nbr[j].add(i)

        def bfs(key):
            parent, seq, seen = {root: -1}, [root], {root}
            queue = deque([root])
            while queue:
                a = queue.popleft()
                for b in sorted(nbr[a] - seen, key=key):
                    seen.add(b)
                    parent[b] = a
                    seq.append(b)
                    queue.append(b)
            return seq, parent

        seq, parent = bfs(lambda b: b)
        if len(seq) != n:
            missing = sorted(set(range(n)) - set(seq))
            raise TargetError(f"the bond graph is not connected: atoms {missing[:10]} cannot be "
                              f"reached from atom {root}; internal coordinates need one molecule "
                              "(add the missing bonds)")
        size = {a: 1 for a in seq}
        for a in reversed(seq[1:]):
            size[parent[a]] += size[a]
        seq, parent = bfs(lambda b: (-size[b], b))  # larger branches first

        pos = {a: p for p, a in enumerate(seq)}
        refs = np.full((n, 3), -1, dtype=np.int64)
        for p, i in enumerate(seq[1:], 1):
            j = parent[i]
            refs[p, 0] = j
            if p == 1:
                continue
            placed = set(seq[:p])
            cand = [a for a in nbr[j] if a in placed and a != i]
            k = parent[j] if parent[j] >= 0 else min(cand, key=pos.get)
            refs[p, 1] = k
            if p == 2:
                continue
            sib = sorted((a for a in nbr[j] if a in placed and a not in (i, k)), key=pos.get)
            via_k = sorted((a for a in nbr[k] if a in placed and a not in (i, j)),
                           key=lambda a: (a != parent[k], pos[a]))
            rest = sorted((a for a in placed if a not in (i, j, k)), key=pos.get)
            first = (sib, via_k) if torsion_refs == "sibling" else (via_k, sib)
            refs[p, 2] = next(iter(first[0] or first[1] or rest))
        zm = cls(seq, refs)
        zm.bonds = sorted({(min(a, b), max(a, b)) for a in range(n) for b in nbr[a]})
        zm.torsion_refs = torsion_refs
        return zm

    @classmethod
    def from_mdtraj(cls, topology, root: int = 0, *, torsion_refs: str = "sibling") -> "ZMatrix":
        """Z-matrix from the bonds of an ``mdtraj.Topology`` (an ``openmm.app.Topology`` is
        accepted too)."""
        bonds = getattr(topology, "bonds", None)
        if callable(bonds):  # openmm.app.Topology
            n, bonds = topology.getNumAtoms(), bonds()
        elif bonds is not None and hasattr(topology, "n_atoms"):
            n = topology.n_atoms
        else:
            raise TargetError(f"expected an mdtraj or OpenMM Topology, got {type(topology).__name__}")
        pairs = [(b[0].index, b[1].index) for b in bonds]
        if not pairs:
            raise TargetError("the topology has no bonds; load it from a file that lists them "
                              "(PDB with CONECT records, prmtop, ...) or use ZMatrix.from_bonds")
        return cls.from_bonds(n, pairs, root, torsion_refs=torsion_refs)

    def to_config(self) -> dict:
        return {"n_atoms": self.n_atoms, "order": self.order.tolist(), "refs": self.refs.tolist(),
                "torsion_refs": getattr(self, "torsion_refs", None)}

    def __repr__(self):
        return f"ZMatrix(n_atoms={self.n_atoms}, n_dof={self.n_dof})"

    def find_torsion(self, atoms: Sequence[int]) -> "int | None":
        """Position in ``q`` of the dihedral over the four ``atoms`` (in either direction), or
        None when the Z-matrix has no such coordinate."""
        a = tuple(int(v) for v in atoms)
        for t, quad in enumerate(self.torsion_atoms.tolist()):
            if tuple(quad) in (a, a[::-1]):
                return int(self.torsion_index[t])
        return None

    # -- maps
    def _atoms(self, x: torch.Tensor) -> torch.Tensor:
        p, n = as_atoms(x), self.n_atoms
        if p.shape[1] != n:
            raise TargetError(f"Cartesian states must have shape (B, {3 * n}) or (B, {n}, 3), got "
                              f"{tuple(torch.as_tensor(x).shape)}")
        return p

    def _q(self, q: torch.Tensor) -> torch.Tensor:
        q = torch.as_tensor(q)
        if q.ndim != 2 or q.shape[1] != self.n_dof:
            raise TargetError(f"internal coordinates must have shape (B, {self.n_dof}), got "
                              f"{tuple(q.shape)}; add a batch dimension with q[None] for one state")
        if not q.dtype.is_floating_point:
            raise TargetError(f"internal coordinates must be floating point, got {q.dtype}")
        return q

    def split(self, q: torch.Tensor):
        """``(bonds (B, N-1), angles (B, N-2), torsions (B, N-3))`` views of ``q``."""
        q = self._q(q)
        n = self.n_atoms
        return q[:, :n - 1], q[:, n - 1:2 * n - 3], q[:, 2 * n - 3:]

    def to_internal(self, x: torch.Tensor) -> torch.Tensor:
        """Cartesian ``x`` (``(B, N, 3)`` or ``(B, 3N)``) -> canonical ``q`` (``(B, 3N - 6)``):
        ``r > 0``, angles in ``[0, pi]``, dihedrals in ``(-pi, pi]``. Vectorized over atoms
        and batch; differentiable (away from degenerate geometries)."""
        p = self._atoms(x)
        ba, aa, ta = (torch.as_tensor(v, device=p.device) for v in
                      (self.bond_atoms, self.angle_atoms, self.torsion_atoms))
        r = (p[:, ba[:, 0]] - p[:, ba[:, 1]]).norm(dim=-1)
        u = p[:, aa[:, 0]] - p[:, aa[:, 1]]
        v = p[:, aa[:, 2]] - p[:, aa[:, 1]]
        theta = torch.atan2(torch.cross(u, v, dim=-1).norm(dim=-1), (u * v).sum(-1))
        phi = dihedral_points(*(p[:, ta[:, c]] for c in range(4)))
        return torch.cat([r, theta, phi], dim=1)

    def _levels(self):
        """Placement schedule of the atoms ``p >= 3`` by dependency level (cached): atoms whose
        three references are all placed earlier go together, so :meth:`to_cartesian` places a
        whole level in one batched NeRF step (alanine dipeptide: 7 levels for 19 atoms).

        Returns ``(levels, slot, perm)``: per level ``(ref_slots (3m,), count m)``, where
        ``ref_slots`` index the growing stack of placed atoms (``j`` refs, then ``k``, then
        ``l``); ``perm`` (``N - 3``,) the placement positions ``p - 3`` in level order; ``slot``
        ``(N,)`` the stack slot of each atom (for the final reordering)."""
        if getattr(self, "_level_cache", None) is None:
            order, refs = self.order.tolist(), self.refs.tolist()
            depth = {order[0]: 0, order[1]: 1, order[2]: 2}
            for p in range(3, self.n_atoms):
                depth[order[p]] = 1 + max(depth[a] for a in refs[p])
            slot = {order[0]: 0, order[1]: 1, order[2]: 2}
            levels, perm = [], []
            for d in sorted({depth[order[p]] for p in range(3, self.n_atoms)}):
                ps = [p for p in range(3, self.n_atoms) if depth[order[p]] == d]
                ref_slots = [slot[refs[p][c]] for c in range(3) for p in ps]
                for p in ps:
                    slot[order[p]] = len(slot)
                levels.append((torch.tensor(ref_slots, dtype=torch.long), len(ps)))
                perm.extend(p - 3 for p in ps)
            self._level_cache = (levels, torch.tensor(perm, dtype=torch.long),
                                 torch.tensor([slot[i] for i in range(self.n_atoms)], dtype=torch.long))
        return self._level_cache

    def to_cartesian(self, q: torch.Tensor) -> torch.Tensor:
        """Internal coordinates ``q`` (``(B, 3N - 6)``) -> Cartesian ``(B, N, 3)`` in the
        canonical frame (module docstring). Defined for every real ``q``; vectorized over the
        batch and over the atoms of each dependency level (:meth:`_levels`; the per-atom
        arithmetic is that of :func:`place_atom`); differentiable (twice)."""
        r, th, ph = self.split(q)
        bsz, dev = r.shape[0], r.device
        order, refs = self.order.tolist(), self.refs.tolist()
        zero = r.new_zeros(bsz)
        x0 = r.new_zeros(bsz, 3)
        r1 = r[:, 0]
        x1 = torch.stack([r1, zero, zero], dim=1)
        # atom 2: x_j + r (cos theta u + sin theta e_y), u the unit vector from j to k (on +-x)
        j = refs[2][0]
        sgn = torch.where(r1 >= 0, 1.0, -1.0).to(r) * (1.0 if j == order[0] else -1.0)
        x2 = (x0 if j == order[0] else x1) + r[:, 1, None] * torch.stack(
            [torch.cos(th[:, 0]) * sgn, torch.sin(th[:, 0]), zero], dim=1)
        placed = torch.stack([x0, x1, x2], dim=1)  # (B, placed, 3), in placement-level order
        # atoms p >= 3 (none when N = 3: no levels, and slot is then the inverse of order)
        levels, perm, slot = self._levels()
        perm = perm.to(dev)
        # the NeRF coefficients of every atom p >= 3 at once, in level order, split by level
        # (few autograd nodes: the double backward of NAAS's adjoint pays per node)
        rr, tt, pp = r[:, 2:][:, perm], th[:, 1:][:, perm], ph[:, perm]
        st = torch.sin(tt)
        coef = torch.stack([-torch.cos(tt), st * torch.cos(pp), st * torch.sin(pp)], dim=-1)
        sizes = [m for _, m in levels]
        for (ref_slots, m), c, rl in zip(levels, coef.split(sizes, dim=1),
                                         rr.unsqueeze(-1).split(sizes, dim=1)):
            xj, xk, xl = placed.index_select(1, ref_slots.to(dev)).unflatten(1, (3, m)).unbind(1)
            bc = _safe_unit(xj - xk)
            nv = _safe_unit(torch.cross(xk - xl, bc, dim=-1))
            mv = torch.cross(nv, bc, dim=-1)
            d = (torch.stack([bc, mv, nv], dim=-1) @ c.unsqueeze(-1)).squeeze(-1)
            placed = torch.cat([placed, xj + rl * d], dim=1)
        return placed.index_select(1, slot.to(dev))

    def log_jacobian(self, q: torch.Tensor) -> torch.Tensor:
        r"""``log J(q) = sum_{i>=1} 2 log|r_i| + sum_{i>=2} log|sin theta_i|`` (``(B,)``),
        smoothed at ``r = 0`` and ``sin theta = 0`` (``eps = 1e-12``, module docstring): the
        density of the internal coordinates of ``exp(-u(x))`` with the six rigid-body degrees
        of freedom integrated out is ``exp(-u(x(q)) + log J(q))`` (times ``8 pi^2`` and the
        translation volume)."""
        r, th, _ = self.split(q)
        return torch.log(r * r + _EPS ** 2).sum(1) + 0.5 * torch.log(
            torch.sin(th) ** 2 + _EPS ** 2).sum(1)

    def log_window(self, q: torch.Tensor, *, torsion_window: float = 0.5,
                   angle_window: float = 0.1, bond_window: float = 0.01,
                   torsion_center=None) -> torch.Tensor:
        """``log W(q)`` (``(B,)``): the partitions of unity over bonds, angles and dihedrals
        that make the density on ``R^{3N-6}`` have the canonical ``Z_q`` (module docstring).

        ``torsion_center`` (``(N - 3,)``, default 0): the dihedral windows are
        ``h(phi - c)``, centred at ``c`` (a shift keeps ``sum_k h(phi - c + 2 pi k) = 1``)."""
        r, th, ph = self.split(q)
        if torsion_center is not None:
            ph = ph - torch.as_tensor(torsion_center).to(ph)
        aw, tw = check_positive("angle_window", angle_window), check_positive("torsion_window", torsion_window)
        # angle_window_log and torus_window_log in one call (half the autograd nodes, which
        # NAAS's double backward pays for one by one); the same elementwise arithmetic
        both = _log_ndtr_diff(torch.cat([th / aw, (ph + math.pi) / tw], dim=1),
                              torch.cat([(th - math.pi) / aw, (ph - math.pi) / tw], dim=1))
        ang, tor = both.split([th.shape[1], ph.shape[1]], dim=1)
        return bond_window_log(r, bond_window).sum(1) + ang.sum(1) + tor.sum(1)

    def wrap(self, q: torch.Tensor) -> torch.Tensor:
        """The canonical representative of ``q``: ``r >= 0``, angles in ``[0, pi]``, dihedrals
        in ``(-pi, pi]``; ``to_cartesian(wrap(q))`` equals ``to_cartesian(q)`` up to a rigid
        motion and ``to_internal(to_cartesian(q)) == wrap(q)``."""
        r, th, ph = (t.clone() for t in self.split(q))
        pi = math.pi
        # atom 1: r1 -> |r1| is a global rotation
        r[:, 0] = r[:, 0].abs()
        # atom 2: (r, theta) ~ (-r, theta + pi); theta ~ -theta (rotation about x); period 2 pi
        t2 = torch.where(r[:, 1] < 0, th[:, 0] + pi, th[:, 0])
        r[:, 1] = r[:, 1].abs()
        th[:, 0] = wrap_angle(t2).abs()
        # atoms >= 3: (r, theta, phi) ~ (-r, pi - theta, phi + pi); (theta, phi) ~ (-theta, phi + pi)
        neg = r[:, 2:] < 0
        t = wrap_angle(torch.where(neg, pi - th[:, 1:], th[:, 1:]))
        f = torch.where(neg, ph + pi, ph)
        f = torch.where(t < 0, f + pi, f)
        r[:, 2:] = r[:, 2:].abs()
        th[:, 1:] = t.abs()
        return torch.cat([r, th, wrap_angle(f)], dim=1)


def to_internal(x: torch.Tensor, zmatrix: ZMatrix) -> torch.Tensor:
    """Module-level alias of :meth:`ZMatrix.to_internal`."""
    return zmatrix.to_internal(x)


def to_cartesian(q: torch.Tensor, zmatrix: ZMatrix) -> torch.Tensor:
    """Module-level alias of :meth:`ZMatrix.to_cartesian`."""
    return zmatrix.to_cartesian(q)


def log_jacobian(q: torch.Tensor, zmatrix: ZMatrix) -> torch.Tensor:
    """Module-level alias of :meth:`ZMatrix.log_jacobian`."""
    return zmatrix.log_jacobian(q)


# ============================================================================ the target
class InternalCoordinateEnergy(Energy):
    r"""A Cartesian molecular target seen in internal coordinates, on ``Reals(3N - 6)``.

    ``u_q(q) = u_x(x(q)) - log J(q) - log W(q)`` with ``x(q)`` the canonical-frame structure
    (:meth:`ZMatrix.to_cartesian`) moved so that its centre of geometry is at the origin, ``J``
    the Jacobian and ``W`` the partitions of unity (module docstring): ``exp(-u_q)`` has on all of
    ``R^{3N-6}`` exactly the canonical ``Z_q = int exp(-u_x(x(q))) J(q) dq`` over ``r > 0, theta
    in (0, pi), phi in (-pi, pi]``. Dihedrals are used as they are; :meth:`wrap` gives canonical values.

    Parameters
    ----------
    cartesian_energy : Energy on ``Reals(3N)``
        Flat Cartesian states (``OpenMMEnergy``, :class:`~boltzkit.energies.molecular.AlanineDipeptide`
        or any target). It must be invariant under rotations and translations, except for a
        restraint on the centre of geometry (``com_restraint``), which the centring removes
        exactly: ``u_x`` at the centred structure is the internal energy ``U / kT``.
    zmatrix : ZMatrix, optional
        Default: :meth:`ZMatrix.from_mdtraj` of ``cartesian_energy.mdtraj_topology``.
    reference : Cartesian structure ``(N, 3)``, ``(1, 3N)`` or ``(3N,)``, optional
        Centre of :meth:`prior_hint`; default ``cartesian_energy.minimized_state()`` (else its
        ``reference_state()``; else no hint).
    torsion_window, angle_window : float
        Widths (rad) of the dihedral and angle partitions of unity.
    torsion_center : "reference", None or ``(N - 3,)`` numbers
        Centres ``c`` of the dihedral windows ``h(phi - c)`` (any centre keeps ``Z_q``).
        "reference" (default): the dihedrals of the reference structure, so that each window
        edge ``c +- pi`` lies as far as possible from the reference basin (a dihedral near
        ``+-pi``, e.g. a trans peptide bond, would otherwise be split into two half-modes at
        ``+pi`` and ``-pi``); 0 when there is no reference. None: 0, the plain
        :func:`torus_window_log` of ``q``.
    bond_window : float
        Width of the bond-length partition (Cartesian length unit; 0.01 nm by default).
    torsion_std : float
        Width (rad) of the dihedrals in :meth:`prior_hint`, unless their curvature is stiffer.
    max_std : float
        Cap of the bond and angle widths in :meth:`prior_hint` (flat or concave directions).
    center : bool
        Evaluate ``u_x`` at the centred structure (default True; see above).
    hessian_step : float
        Finite-difference step of the curvatures in :meth:`prior_hint`.
    hint : "diagonal" or "full"
        Form of :meth:`prior_hint` (per-coordinate widths, or the full harmonic frame with
        soft dihedrals spread over the circle).
    soft_torsions : sequence of atom quadruples
        Dihedrals to treat as soft in the full hint (e.g. a peptide's phi and psi).
    soft_barrier : float or None
        Dihedrals whose rigid scan stays below this many kT are soft too (None: only the
        given ones).
    soft_std : float
        Width (rad) of the soft dihedrals in the full hint. The default 1 rad puts about an
        eighth of a backbone dihedral's prior mass across its barrier; on alanine dipeptide,
        untrained NAAS (K = 256) from it has ESS 53/2048, against 4-11 at 1.5 rad (too many
        clashes) and 12 at 0.7 rad (too few crossings).

    Notes
    -----
    Computation is in float64 (energies are returned in the dtype of ``q``). ``energy(q)``
    then ``grad_energy(q)`` on the same tensor reuses the Cartesian target's gradient cache (one
    force evaluation); gradients are exact (chain rule through the NeRF map), and the energy is
    differentiable twice where the Cartesian target is.
    """

    def __init__(self, cartesian_energy: Energy, zmatrix: "ZMatrix | None" = None, *,
                 reference=None, torsion_window: float = 0.5, angle_window: float = 0.1,
                 bond_window: float = 0.01, torsion_center="reference", torsion_std: float = 1.0,
                 max_std: float = 0.5, center: bool = True, hessian_step: float = 1e-5,
                 hint: str = "diagonal", soft_torsions=(), soft_barrier: "float | None" = 20.0,
                 soft_std: float = 1.0, name: "str | None" = None):
        if not isinstance(cartesian_energy, Energy) or not isinstance(cartesian_energy.domain, Reals) \
                or cartesian_energy.domain.dim % 3 != 0:
            raise TargetError("InternalCoordinateEnergy needs a Cartesian Energy on Reals(3N), got "
                              f"{type(cartesian_energy).__name__} on "
                              f"{getattr(cartesian_energy, 'domain', None)!r}")
        n = cartesian_energy.domain.dim // 3
        if zmatrix is None:
            try:
                top = cartesian_energy.mdtraj_topology
            except (AttributeError, TargetError) as exc:
                raise TargetError(f"{cartesian_energy.name} has no topology; pass zmatrix="
                                  "ZMatrix.from_bonds(n_atoms, bonds)") from exc
            zmatrix = ZMatrix.from_mdtraj(top() if callable(top) else top)
        if not isinstance(zmatrix, ZMatrix) or zmatrix.n_atoms != n:
            raise TargetError(f"zmatrix must be a ZMatrix over the {n} atoms of the Cartesian "
                              f"target, got {zmatrix!r}")
        widths = dict(torsion_window=torsion_window, angle_window=angle_window, bond_window=bond_window,
                      torsion_std=torsion_std, max_std=max_std, hessian_step=hessian_step)
        for key, value in widths.items():
            setattr(self, key, check_positive(key, value))
        check_choice("hint", hint, ("diagonal", "full"))
        self.hint = hint
        self.soft_std = check_positive("soft_std", soft_std)
        self.soft_barrier = None if soft_barrier is None else check_positive("soft_barrier", soft_barrier)
        super().__init__(Reals(zmatrix.n_dof),
                         name=name or f"InternalCoordinates({cartesian_energy.name})")
        self.cartesian_energy = cartesian_energy
        self.zmatrix = zmatrix
        self.n_atoms = n
        self.center = bool(center)
        self._reference = None
        if reference is not None:
            ref = torch.as_tensor(reference, dtype=torch.float64).detach().reshape(1, -1)
            if ref.shape[1] != 3 * n or not bool(torch.isfinite(ref).all()):
                raise TargetError(f"reference must be a Cartesian structure of {3 * n} finite "
                                  f"numbers, got shape {tuple(torch.as_tensor(reference).shape)}")
            self._reference = ref
        self._hint = None
        self._last = None
        nt = zmatrix.n_atoms - 3
        tc = torch.zeros(nt, dtype=torch.float64)
        if isinstance(torsion_center, str):
            if torsion_center != "reference":
                raise ConfigError(f"torsion_center must be 'reference', None or {nt} numbers, "
                                  f"got {torsion_center!r}")
            ref = self.reference_structure()
            if ref is not None:
                tc = zmatrix.to_internal(ref)[0, torch.as_tensor(zmatrix.torsion_index)]
        elif torsion_center is not None:
            tc = torch.as_tensor(torsion_center, dtype=torch.float64).detach().reshape(-1)
            if tc.numel() != nt or not bool(torch.isfinite(tc).all()):
                raise ConfigError(f"torsion_center must have {nt} finite values (one per dihedral), "
                                  f"got shape {tuple(tc.shape)}")
        self.torsion_center = tc.clone()
        self._soft_given = []
        for quad in soft_torsions:
            pos = zmatrix.find_torsion(quad)
            if pos is None:
                raise ConfigError(f"soft torsion {tuple(quad)} is not a dihedral coordinate of the "
                                  "Z-matrix; pass four atoms i-j-k-l of one of zmatrix.torsion_atoms")
            self._soft_given.append(pos)

    # -- coordinate maps
    def _q64(self, q) -> torch.Tensor:
        return self.zmatrix._q(q).to(torch.float64)

    def _cartesian64(self, q64: torch.Tensor) -> torch.Tensor:
        x = self.zmatrix.to_cartesian(q64)
        if self.center:
            x = x - x.mean(1, keepdim=True)
        return x.reshape(x.shape[0], -1)

    def to_cartesian(self, q: torch.Tensor) -> torch.Tensor:
        """Flat Cartesian states ``(B, 3N)`` (float64) of ``q``, centred at the origin when
        ``center`` is set: exactly the structures the Cartesian energy is evaluated at. (Any
        real ``q`` is valid; wrapping dihedrals does not change the structure.)"""
        with torch.no_grad():
            return self._cartesian64(self._q64(q))

    def to_internal(self, x: torch.Tensor) -> torch.Tensor:
        """Cartesian states (``(B, 3N)`` or ``(B, N, 3)``) -> canonical ``q`` ``(B, 3N - 6)``."""
        return self.zmatrix.to_internal(x)

    def wrap(self, q: torch.Tensor) -> torch.Tensor:
        """Canonical representative of ``q`` (:meth:`ZMatrix.wrap`; dihedrals in ``(-pi, pi]``)."""
        return self.zmatrix.wrap(q)

    def log_jacobian(self, q: torch.Tensor) -> torch.Tensor:
        return self.zmatrix.log_jacobian(q)

    def _extra(self, q64):
        """``-log J(q) - log W(q)``."""
        return -self.zmatrix.log_jacobian(q64) - self.zmatrix.log_window(
            q64, torsion_window=self.torsion_window, angle_window=self.angle_window,
            bond_window=self.bond_window, torsion_center=self.torsion_center)

    # -- energy
    def energy(self, q: torch.Tensor) -> torch.Tensor:
        """``u_q(q)`` in kT, ``(B,)``, in the dtype of ``q``; differentiable."""
        q64 = self._q64(q)
        x = self._cartesian64(q64)
        u = self.cartesian_energy.energy(x).to(torch.float64) + self._extra(q64)
        u = torch.where(torch.isnan(u), torch.full_like(u, math.inf), u)
        if not (torch.is_grad_enabled() and q.requires_grad):
            self._last = (q, q._version, x)  # x is the tensor the Cartesian target cached
        return u.to(q.dtype)

    def grad_energy(self, q: torch.Tensor) -> torch.Tensor:
        """``grad_q u_q`` (chain rule through the NeRF map), shape and dtype of ``q``."""
        q64 = self._q64(q).detach()
        last = self._last
        x_cached = last[2] if (last is not None and last[0] is q and last[1] == q._version) else None
        with torch.enable_grad():
            qq = q64.clone().requires_grad_(True)
            x = self._cartesian64(qq)
            xin = x.detach() if x_cached is None else x_cached
            gx = self.cartesian_energy.grad_energy(xin).reshape(x.shape).to(torch.float64)
            gx = torch.where(torch.isfinite(gx), gx, torch.zeros_like(gx))
            total = (x * gx).sum() + self._extra(qq).sum()
            (g,) = torch.autograd.grad(total, qq)
        return g.to(q.dtype)

    def energy_and_grad(self, q: torch.Tensor):
        """``(u_q, grad u_q)`` with one evaluation of the Cartesian target."""
        with torch.no_grad():
            u = self.energy(q)
        return u, self.grad_energy(q)

    def cartesian_log_z(self, log_z_q: float) -> "float | None":
        r"""``log Z_x`` of the Cartesian target from ``log Z_q`` of this one, when the Cartesian
        target restrains its centre of geometry with width ``s`` (``com_restraint``):
        ``log Z_x = log Z_q + log(8 pi^2) + 1.5 log(2 pi s^2)``. None otherwise (a free
        molecule has infinite Cartesian mass)."""
        s = getattr(self.cartesian_energy, "com_restraint", None)
        if s is None or not self.center:
            return None
        return float(log_z_q) + math.log(8 * math.pi ** 2) + 1.5 * math.log(2 * math.pi * s * s)

    # -- prior hint
    def reference_structure(self) -> "torch.Tensor | None":
        """The Cartesian reference ``(1, 3N)`` float64 (see ``reference``), or None."""
        if self._reference is not None:
            return self._reference.clone()
        for attr in ("minimized_state", "reference_state"):
            fn = getattr(self.cartesian_energy, attr, None)
            if callable(fn):
                try:
                    return torch.as_tensor(fn(), dtype=torch.float64).detach().reshape(1, -1)
                except TargetError:
                    continue
        return None

    def _grad64(self, q: torch.Tensor):
        # (energy, gradient) in the form the finite-difference Hessians of boltzkit.probe read
        return None, self.grad_energy(q).to(torch.float64)

    def curvature(self, q0: torch.Tensor) -> torch.Tensor:
        """Diagonal of the Hessian of ``u_q`` at one state ``q0`` (``(d,)`` float64), by central
        differences of the gradient (``2 d`` gradient evaluations in one batch)."""
        return hessian_diag_fd(self._grad64, self._q64(q0)[:1], self.hessian_step)[0]

    def hessian(self, q0: torch.Tensor) -> torch.Tensor:
        """Hessian ``(d, d)`` float64 of ``u_q`` at one state ``q0``, by central differences of
        the gradient (``2 d`` gradient evaluations in one batch), symmetrized."""
        return hessian_fd(self._grad64, self._q64(q0)[:1], self.hessian_step)[0]

    def soft_torsions(self, q0: "torch.Tensor | None" = None) -> "list[int]":
        """Positions in ``q`` of the soft dihedrals: those given as ``soft_torsions`` and those
        whose rigid scan (the dihedral alone turned through 72 angles, every other coordinate
        at ``q0``) stays below ``soft_barrier`` kT above the reference -- free rotors such as
        methyl groups. A rigid scan misses torsions that need other coordinates to move
        along (a peptide's phi clashes when turned alone), hence ``soft_torsions``."""
        if q0 is None:
            ref = self.reference_structure()
            if ref is None:
                return sorted(set(self._soft_given))
            q0 = self.zmatrix.to_internal(ref)
        q0 = self._q64(q0)[:1]
        found = set(self._soft_given)
        if self.soft_barrier is not None and len(self.zmatrix.torsion_index):  # 3 atoms: none
            grid = torch.linspace(-math.pi, math.pi, 73, dtype=torch.float64)[:-1]
            tors = [int(t) for t in self.zmatrix.torsion_index]
            qs = q0.repeat(len(tors), grid.numel(), 1)  # (torsion, grid point, d)
            qs[torch.arange(len(tors)), :, tors] += grid  # turn torsion a alone in block a
            with torch.no_grad():
                u = self.energy(qs.flatten(0, 1)).to(torch.float64).reshape(len(tors), -1)
                u0 = self.energy(q0).to(torch.float64)
            barrier = torch.nan_to_num(u - u0, nan=math.inf).max(1).values
            found |= {t for t, b in zip(tors, barrier.tolist()) if b < self.soft_barrier}
        return sorted(found)

    def prior_hint(self) -> "PriorHint | None":
        r"""Harmonic frame of the reference structure in internal coordinates (cached).

        ``loc`` = canonical ``q`` of :meth:`reference_structure`.

        ``hint="diagonal"``: ``scale`` per coordinate, bonds and angles ``1 / sqrt(H_ii)`` with
        ``H_ii`` the curvature of ``u_q`` along the coordinate (:meth:`curvature`), capped at
        ``max_std`` (also where ``H_ii <= 0``); dihedrals ``min(torsion_std, 1 / sqrt(H_ii))``.

        ``hint="full"``: the Gaussian with precision ``P`` = the full Hessian ``H`` of ``u_q``
        (:meth:`hessian`), except that each soft dihedral (:meth:`soft_torsions`) is decoupled
        from the rest and given the width ``soft_std``: ``P_ts = 0``, ``P_tt = 1/soft_std^2``.
        Bonds and angles keep their couplings (a methyl group's three H-C-H angles move
        together), and the backbone and rotor torsions are spread over their circle so that a
        sampler started from this frame meets the other basins. Flat directions are capped at
        ``max(max_std, soft_std)`` (:func:`~boltzkit.energies.base.scale_from_hessian`).

        None when there is no reference structure.
        """
        if self._hint is None:
            ref = self.reference_structure()
            if ref is None:
                return None
            q0 = self.zmatrix.to_internal(ref)
            if self.hint == "full":
                prec = self.hessian(q0)
                soft = self.soft_torsions(q0)
                prec[soft, :] = 0.0
                prec[:, soft] = 0.0
                prec[soft, soft] = self.soft_std ** -2
                scale = scale_from_hessian(prec, max_std=max(self.max_std, self.soft_std))
                self.soft_index = soft
            else:
                hdiag = self.curvature(q0)
                std = torch.where(hdiag > 0, hdiag.clamp_min(1e-300).rsqrt(), torch.full_like(hdiag, math.inf))
                cap = torch.full_like(std, self.max_std)
                cap[torch.as_tensor(self.zmatrix.torsion_index)] = self.torsion_std
                scale = torch.minimum(std, cap)
            self._hint = PriorHint(q0.reshape(-1), scale)
        return self._hint

    def to_config(self):
        cart = self.cartesian_energy
        return {**super().to_config(), "type": "InternalCoordinateEnergy",
                "cartesian": cart.to_config() if hasattr(cart, "to_config") else {},
                "zmatrix": self.zmatrix.to_config(), "torsion_window": self.torsion_window,
                "angle_window": self.angle_window, "bond_window": self.bond_window,
                "torsion_center": self.torsion_center.tolist(), "torsion_std": self.torsion_std,
                "max_std": self.max_std, "center": self.center, "hint": self.hint,
                "soft_torsions": sorted(self._soft_given), "soft_barrier": self.soft_barrier,
                "soft_std": self.soft_std}
