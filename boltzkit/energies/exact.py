r"""Exact ground truths for lattice models: log Z, mean energies and exact distributions.

Conventions (identical to :mod:`boltzkit.energies.lattice`): an ``L x M`` periodic lattice
where every site is bonded to its right and lower neighbour through ``roll``, so the torus
has ``2 L M`` bonds (for a side of length 2 the same pair is counted twice, for length 1 a
site is bonded to itself; the transfer matrix and the enumerations below follow ``roll`` in
these cases too). Couplings are reduced (in units of kT):

* Ising: ``U(s) = -K sum_<ij> s_i s_j - H sum_i s_i`` with ``K = beta J``, ``H = beta h``;
* Potts: ``U(x) = -K sum_<ij> delta(x_i, x_j)`` with ``K = beta J``.

Every ``log Z`` is the natural log of ``sum_x exp(-U(x))`` in float64, computed in log space.
Every mean energy is the mean of that reduced energy ``<U>`` (total, in kT, the mean of
``Energy.energy``); per-site functions divide by the number of sites.

Methods
-------
* Kaufman (1949) closed form for the zero-field Ising torus, any size.
* Row transfer matrix ``T_ab = exp(inter(a, b) + intra(a)/2 + intra(b)/2)`` (symmetric
  splitting), ``Z = sum_i lambda_i^M`` from ``eigvalsh``; signs of eigenvalues are kept.
* The same transfer matrix block-diagonalized by the row's cyclic translations (momentum
  sectors, :func:`potts_log_z_momentum`): ``q**width / width``-sized blocks, so a 3-state
  Potts torus of width 8 (6561 row states) takes about 2 CPU-seconds instead of minutes.
* Brute-force enumeration of the density of states (tests; up to ~25 sites for Ising).
* Onsager's infinite-lattice free energy and energy per site.
* :func:`enumerate_states` / :func:`exact_marginal_pmf`: exact distributions of any small
  energy on a categorical domain, evaluated through the energy's own ``energy`` method.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch
from scipy import integrate, special

from ..domains import Categorical
from ..errors import IncompatibleMethodError, TargetError
from .lattice import BETA_C_ISING as K_C_ISING, _check_q  # K_c = ln(1 + sqrt 2) / 2
MAX_TRANSFER_DIM = 4096          # largest row-state space for the transfer matrix (q**width)
MAX_MOMENTUM_DIM = 6561          # largest q**width for the momentum-sector transfer matrix (~2 s)
MAX_ENUMERATE_STATES = 2**26     # largest brute-force density-of-states enumeration
_CHUNK = 2**17

__all__ = [
    "K_C_ISING", "ising_log_z", "ising_log_z_kaufman", "ising_log_z_transfer",
    "ising_log_z_enumerate", "ising_mean_energy", "onsager_free_energy_per_site",
    "onsager_energy_per_site", "potts_log_z", "potts_log_z_transfer", "potts_log_z_momentum", "potts_log_z_enumerate",
    "potts_mean_energy", "Enumeration", "enumerate_states", "iter_states",
    "exact_marginal_pmf", "state_to_index", "ThermoCurve", "ising_curve", "potts_curve",
    "ising_curve_enumerate",
]


# ---------------------------------------------------------------------------- argument checks
def _check_size(L, M) -> tuple[int, int]:
    for nm, v in (("L", L), ("M", M)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise TargetError(f"lattice side {nm} must be a positive integer, got {v!r}")
    return int(L), int(M)


def _check_real(name: str, v) -> float:
    v = float(v)
    if not math.isfinite(v):
        raise TargetError(f"{name} must be a finite number, got {v!r}")
    return v


def _signed_logsumexp(log_abs, signs) -> tuple[float, float]:
    """log|sum_i s_i exp(a_i)| and its sign, ignoring zero terms (a_i = -inf or s_i = 0).

    Max-shift plus an exactly rounded sum (``math.fsum``); written out because
    ``scipy.special.logsumexp(..., b=signs, return_sign=True)`` (scipy 1.17) returned NaN
    on some sign-mixed inputs met here.
    """
    log_abs, signs = np.asarray(log_abs, float).ravel(), np.asarray(signs, float).ravel()
    keep = np.isfinite(log_abs) & (signs != 0)
    if not keep.any():
        return -math.inf, 0.0
    a, b = log_abs[keep], signs[keep]
    shift = float(a.max())
    total = math.fsum(b * np.exp(a - shift))
    if total == 0.0:
        return -math.inf, 0.0
    return shift + math.log(abs(total)), math.copysign(1.0, total)


# ---------------------------------------------------------------------------- Kaufman
_K_MAX_KAUFMAN = 300.0  # sinh(2K) overflows float64 near K = 355


def _kaufman_parts(L: int, M: int, K: float):
    """Per-factor pieces of Kaufman's formula for K > 0.

    Returns x (2L,) = M gamma_k / 2 and dx/dK (2L,), with gamma_0 signed.
    """
    s = math.sinh(2.0 * K)
    # cosh(gamma_k) = cosh 2K coth 2K - cos(pi k / L) = 1 + y_k, written without cancellation
    y = (s - 1.0) * ((s - 1.0) / s) + 2.0 * np.sin(np.pi * np.arange(2 * L) / (2 * L)) ** 2
    gamma = np.log1p(y + np.sqrt(y) * np.sqrt(y + 2.0))
    log_tanh = math.log(-math.expm1(-2.0 * K)) - math.log1p(math.exp(-2.0 * K))
    gamma[0] = 2.0 * K + log_tanh                      # signed: < 0 for K < K_c
    # derivatives: sinh(gamma) gamma' = d/dK [cosh 2K coth 2K]; gamma_0' = 2 + 2 / sinh 2K
    dc = 2.0 * math.cosh(2.0 * K) * (s - 1.0) * (s + 1.0) / s**2
    with np.errstate(divide="ignore", invalid="ignore"):
        dgamma = dc / np.sinh(gamma)
    dgamma[0] = 2.0 + 2.0 / s
    return 0.5 * M * gamma, 0.5 * M * dgamma


def _log_abs_2sinh(x):
    ax = np.abs(x)
    with np.errstate(divide="ignore"):
        return ax + np.log(-np.expm1(-2.0 * ax))


def _kaufman_terms(x):
    """(sign, log|.|) per factor for the four products Z_1..Z_4 (rows), each of length L."""
    odd, even = x[1::2], x[0::2]
    log_f = np.stack([np.logaddexp(odd, -odd), _log_abs_2sinh(odd), np.logaddexp(even, -even),
                      _log_abs_2sinh(even)])
    sign_f = np.stack([np.ones_like(odd), np.sign(odd), np.ones_like(even), np.sign(even)])
    return log_f, sign_f


def ising_log_z_kaufman(L: int, M: int, K: float) -> float:
    r"""Exact log Z of the zero-field Ising model on an ``L x M`` torus (Kaufman 1949).

    .. math::
        Z = \tfrac12 (2\sinh 2K)^{LM/2} \sum_{i=1}^4 Z_i,\quad
        Z_{1,2} = \prod_{r=0}^{L-1} 2\{\cosh,\sinh\}(M\gamma_{2r+1}/2),\quad
        Z_{3,4} = \prod_{r=0}^{L-1} 2\{\cosh,\sinh\}(M\gamma_{2r}/2),

    with :math:`\cosh\gamma_k = \cosh 2K \coth 2K - \cos(\pi k/L)` and the signed
    :math:`\gamma_0 = 2K + \ln\tanh K`. Evaluated in log space (no overflow at 256 x 256 or
    larger) with a signed log-sum-exp of the four products. Any sides ``L, M >= 1``;
    ``0 <= K <= 300`` (module conventions).
    """
    L, M = _check_size(L, M)
    K = _check_real("K", K)
    if K < 0:
        raise TargetError(f"Kaufman's formula needs K >= 0 (ferromagnet), got K = {K}; "
                          "use ising_log_z, which maps K < 0 on even tori by a sublattice flip")
    if K > _K_MAX_KAUFMAN:
        raise TargetError(f"K = {K} is too large for float64 (sinh 2K overflows); use K <= "
                          f"{_K_MAX_KAUFMAN:g} (log Z is then 2 L M K + log 2 to machine precision)")
    if K == 0.0:
        return L * M * math.log(2.0)
    x, _ = _kaufman_parts(L, M, K)
    log_f, sign_f = _kaufman_terms(x)
    log_sum, sign = _signed_logsumexp(log_f.sum(1), sign_f.prod(1))
    if sign <= 0:  # pragma: no cover - Z > 0 always; guards against a broken edit
        raise ArithmeticError("Kaufman sum is not positive")
    log_pref = 0.5 * L * M * (2.0 * K + math.log(-math.expm1(-4.0 * K))) - math.log(2.0)
    return float(log_pref + log_sum)


def _kaufman_dlogz_dk(L: int, M: int, K: float) -> float:
    """d log Z / dK from Kaufman's formula (analytic), for K > 0.

    d log Z/dK = L M coth 2K + sum_i (Z_i / sum Z) d log Z_i/dK with
    d log Z_i/dK = sum_r (f_i'/f_i)(x_r) dx_r/dK, (2cosh)'/2cosh = tanh, (2sinh)'/2sinh = coth.
    A factor 2 sinh(x_0) that is exactly zero (gamma_0 = 0 at K = K_c) is handled apart.
    """
    x, dx = _kaufman_parts(L, M, K)
    log_f, sign_f = _kaufman_terms(x)
    log_zi, sign_zi = log_f.sum(1), sign_f.prod(1)
    log_sum, _ = _signed_logsumexp(log_zi, sign_zi)
    deriv = 0.0
    for i in range(4):
        xs, dxs = (x[1::2], dx[1::2]) if i < 2 else (x[0::2], dx[0::2])  # odd or even factors
        is_sinh = i % 2 == 1
        zero = xs == 0.0
        if is_sinh and zero.any():
            # Z_i = 0; d Z_i/dK keeps only the zero factor differentiated: 2 cosh(0) x_j'
            if zero.sum() == 1:
                rest = ~zero
                deriv += (sign_f[i][rest].prod() * 2.0 * float(dxs[zero][0])
                          * math.exp(log_f[i][rest].sum() - log_sum))
            continue
        ratio = 1.0 / np.tanh(xs) if is_sinh else np.tanh(xs)
        deriv += sign_zi[i] * math.exp(log_zi[i] - log_sum) * math.fsum(ratio * dxs)
    return float(L * M / math.tanh(2.0 * K) + deriv)


# ---------------------------------------------------------------------------- transfer matrix
def _digits(idx: np.ndarray, q: int, width: int) -> np.ndarray:
    """Base-q digits (len(idx), width) of the integers ``idx``, first site most significant."""
    return (idx[:, None] // q ** np.arange(width - 1, -1, -1, dtype=np.int64)) % q


def _transfer_log_z(gens: list[np.ndarray], coefs: list[float], M: int,
                    grad: bool = False):
    """log Z = log Tr exp(sum_j c_j G_j)^M for symmetric generator matrices G_j.

    With ``grad=True`` also returns d log Z / d c_j (Hellmann-Feynman on the eigenbasis:
    dZ/dc = M Tr(T^{M-1} (T o G)), which is basis independent under degeneracy).
    The eigen-decomposition runs in float64 torch, so it obeys ``torch.set_num_threads``.
    """
    gens = [torch.as_tensor(g, dtype=torch.float64) for g in gens]
    log_t = sum(c * g for c, g in zip(coefs, gens))
    shift = float(log_t.max())
    t = torch.exp(log_t - shift)
    if grad:
        lam, vec = torch.linalg.eigh(t)
    else:
        lam = torch.linalg.eigvalsh(t)
    lam_max = float(lam[-1])  # Perron-Frobenius: the largest eigenvalue is positive and dominant
    r = lam / lam_max
    z_rel = float(torch.sum(r**M))
    log_z = M * (shift + math.log(lam_max)) + math.log(z_rel)
    if not grad:
        return log_z
    w = r ** (M - 1)
    d = []
    for g in gens:
        qd = (((t * g) @ vec) * vec).sum(0)
        d.append(float(M * torch.sum(w * qd) / (lam_max * z_rel)))
    return log_z, d


def _transfer_sides(L: int, M: int, q: int, what: str, limit: int = MAX_TRANSFER_DIM):
    """``(width, length) = (min(L, M), max(L, M))``, once ``q**width`` is within ``limit``."""
    width = min(L, M)
    if q**width > limit:
        raise TargetError(f"{what}: the row transfer matrix has q**width = {q}**{width} = "
                          f"{q**width} states, above the limit {limit}; use a narrower lattice "
                          "(width = min(L, M))")
    return width, max(L, M)


def _ising_generators(width: int, with_field: bool):
    s = 2.0 * _digits(np.arange(2**width), 2, width) - 1.0
    intra = np.sum(s * np.roll(s, 1, axis=1), axis=1)
    g_k = s @ s.T + 0.5 * (intra[:, None] + intra[None, :])
    if not with_field:
        return [g_k]
    mag = s.sum(1)
    return [g_k, 0.5 * (mag[:, None] + mag[None, :])]


def ising_log_z_transfer(L: int, M: int, K: float, H: float = 0.0) -> float:
    """Exact log Z of the Ising model on an ``L x M`` torus by the row transfer matrix, for any
    coupling ``K`` (either sign) and field ``H`` (module conventions). The row width is
    ``min(L, M)`` (at most 12, 4096 row states)."""
    L, M = _check_size(L, M)
    K, H = _check_real("K", K), _check_real("H", H)
    width, length = _transfer_sides(L, M, 2, "ising_log_z_transfer")
    gens = _ising_generators(width, H != 0.0)
    return _transfer_log_z(gens, [K, H][:len(gens)], length)


def _potts_generators(q: int, width: int):
    d = _digits(np.arange(q**width), q, width)
    onehot = (d[:, :, None] == np.arange(q)).reshape(len(d), -1).astype(float)
    intra = np.sum(d == np.roll(d, 1, axis=1), axis=1).astype(float)
    return [onehot @ onehot.T + 0.5 * (intra[:, None] + intra[None, :])]


def potts_log_z_transfer(L: int, M: int, q: int, K: float) -> float:
    """Exact log Z of the q-state Potts model on an ``L x M`` torus (row transfer matrix), for
    any coupling ``K`` (either sign; module conventions). Needs ``q ** min(L, M) <= 4096``."""
    L, M = _check_size(L, M)
    q, K = _check_q(q), _check_real("K", K)
    width, length = _transfer_sides(L, M, q, "potts_log_z_transfer")
    return _transfer_log_z(_potts_generators(q, width), [K], length)


@lru_cache(maxsize=64)
def potts_log_z_momentum(L: int, M: int, q: int, K: float) -> float:
    r"""Exact log Z of the q-state Potts torus from the row transfer matrix split into momentum
    sectors (the same ``T`` as :func:`potts_log_z_transfer`, far cheaper for wide rows).

    The cyclic shift ``S`` of a row commutes with ``T``. For each orbit representative ``r``
    (period ``p_r``) and momentum ``k`` with ``k p_r = 0 (mod w)``, the states
    ``sum_j e^{-2 pi i k j / w} S^j r`` span sector ``k``, where
    ``H_k(r, r') = sqrt(p_r p_r') / w * sum_m e^{-2 pi i k m / w} T(r, S^m r')`` (an FFT over
    ``m``); ``Z = sum_k sum_i lambda_{k,i}^M``. Sectors ``k`` and ``w - k`` are complex
    conjugates and share their eigenvalues. Needs ``q ** min(L, M) <= MAX_MOMENTUM_DIM``.
    """
    L, M = _check_size(L, M)
    q, K = _check_q(q), _check_real("K", K)
    w, n = _transfer_sides(L, M, q, "potts_log_z_momentum", MAX_MOMENTUM_DIM)
    digits = _digits(np.arange(q**w), q, w)
    place = q ** np.arange(w - 1, -1, -1)
    shifted = np.stack([np.roll(digits, m, axis=1) @ place for m in range(w)], 1)  # index of S^m r
    reps = np.nonzero(shifted.min(1) == np.arange(len(digits)))[0]  # smallest index of each orbit
    period = np.array([1 + int(np.argmax(shifted[r, 1:] == r)) if (shifted[r, 1:] == r).any() else w
                       for r in reps])
    d = torch.as_tensor(digits[reps])
    intra = (d == torch.roll(d, 1, 1)).sum(1).double()
    d_sh = torch.stack([torch.roll(d, m, 1) for m in range(w)], 1)  # (R, w, w): S^m r'
    inter = (d[:, None, None, :] == d_sh[None]).sum(-1).double()  # (R, R', m)
    log_t = K * (inter + 0.5 * intra[:, None, None] + 0.5 * intra[None, :, None])
    shift = float(log_t.max())
    f = torch.fft.fft(torch.exp(log_t - shift), dim=2)
    sp = torch.as_tensor(period, dtype=torch.float64).sqrt()
    logs, signs = [], []
    for k in range(w // 2 + 1):
        keep = torch.as_tensor((k * period) % w == 0)
        h = f[:, :, k][keep][:, keep] * (sp[keep][:, None] * sp[keep][None, :] / w)
        real = (2 * k) % w == 0
        lam = torch.linalg.eigvalsh(h.real if real else h)
        mult = 1 if real else 2
        logs.append((n * torch.log(lam.abs())).repeat(mult))
        signs.append((torch.sign(lam) ** n).repeat(mult))
    log_abs, sgn = torch.cat(logs), torch.cat(signs)
    top = float(log_abs.max())
    return n * shift + top + math.log(float((sgn * torch.exp(log_abs - top)).sum()))


# ---------------------------------------------------------------------------- enumeration
def _count_states(L: int, M: int, q: int, size: int, key, what: str) -> np.ndarray:
    """``counts[k]``: how many of the q**(L M) states ``x`` (int8 ``(b, L, M)`` chunks) have
    ``key(x) = k`` (an integer in ``[0, size)``)."""
    n = L * M
    if q**n > MAX_ENUMERATE_STATES:
        raise IncompatibleMethodError(
            f"{what}: brute force would visit {q**n:.3g} states, above the limit "
            f"{MAX_ENUMERATE_STATES:.3g}; use the transfer matrix or Kaufman's formula")
    counts = np.zeros(size, dtype=np.int64)
    for start in range(0, q**n, _CHUNK):
        idx = np.arange(start, min(start + _CHUNK, q**n), dtype=np.int64)
        counts += np.bincount(key(_digits(idx, q, n).astype(np.int8).reshape(-1, L, M)), minlength=size)
    return counts


def _equal_bonds(x: np.ndarray) -> np.ndarray:
    """Number of bonds (of the torus's 2 L M) joining equal sites, per state of ``x`` (b, L, M)."""
    return (x == np.roll(x, 1, axis=1)).sum((1, 2)) + (x == np.roll(x, 1, axis=2)).sum((1, 2))


@lru_cache(maxsize=16)
def _ising_dos(L: int, M: int):
    """Density of states of the Ising torus: counts[b + 2N, m + N] of (bond sum b, magnetization m).

    Counted over digits ``d = (s + 1) / 2``: ``b + 2N = 2 (equal bonds)``, ``m + N = 2 sum d``."""
    n = L * M
    nb = 2 * n
    counts = _count_states(L, M, 2, (2 * nb + 1) * (2 * n + 1),
                           lambda d: 2 * _equal_bonds(d) * (2 * n + 1) + 2 * d.sum((1, 2)),
                           "ising_log_z_enumerate")
    b_vals = np.arange(-nb, nb + 1, dtype=float)
    m_vals = np.arange(-n, n + 1, dtype=float)
    return b_vals, m_vals, counts.reshape(2 * nb + 1, 2 * n + 1)


def _enum_stats(dos, K, H=0.0):
    """(log Z, <b>, <m>) from a density of states ``dos = (b, m, counts[i, j] of (b[i], m[j]))``
    under the weight ``exp(K b + H m)``: for :func:`_ising_dos` the bond sum and the magnetization,
    for :func:`_potts_dos` the satisfied bonds (and m = 0)."""
    b, m, c = dos
    nz = c > 0
    bonds = np.broadcast_to(b[:, None], c.shape)[nz]
    mag = np.broadcast_to(m[None, :], c.shape)[nz]
    logw = np.log(c[nz]) + K * bonds + H * mag
    log_z = float(special.logsumexp(logw))
    p = np.exp(logw - log_z)
    return log_z, float(p @ bonds), float(p @ mag)


def ising_log_z_enumerate(L: int, M: int, K: float, H: float = 0.0) -> float:
    """Exact log Z of the Ising torus by visiting all 2**(L M) states (tests; up to ~5 x 5).

    The density of states in (bond sum, magnetization) is computed once per lattice and
    cached, so further (K, H) values are cheap.
    """
    L, M = _check_size(L, M)
    return _enum_stats(_ising_dos(L, M), _check_real("K", K), _check_real("H", H))[0]


@lru_cache(maxsize=16)
def _potts_dos(L: int, M: int, q: int):
    """counts[b, 0] of the number of satisfied bonds b in 0..2N on the Potts torus (one
    magnetization column, 0, so that it reads like :func:`_ising_dos`)."""
    n = L * M
    counts = _count_states(L, M, q, 2 * n + 1, _equal_bonds, "potts_log_z_enumerate")
    return np.arange(2 * n + 1, dtype=float), np.zeros(1), counts[:, None]


def potts_log_z_enumerate(L: int, M: int, q: int, K: float) -> float:
    """Exact log Z of the q-state Potts torus by visiting all q**(L M) states (tests only)."""
    L, M = _check_size(L, M)
    return _enum_stats(_potts_dos(L, M, _check_q(q)), _check_real("K", K))[0]


# ---------------------------------------------------------------------------- dispatch
def _kaufman_applies(L: int, M: int, K: float, H: float) -> bool:
    """Whether Kaufman's formula gives this case: zero field, ``K`` within float64 range, and
    ``K >= 0`` or a torus with even sides (bipartite: the sublattice flip maps ``K`` to ``-K``)."""
    return H == 0.0 and (K >= 0 or (L % 2 == 0 and M % 2 == 0)) and abs(K) <= _K_MAX_KAUFMAN


def ising_log_z(L: int, M: int, K: float, H: float = 0.0) -> "float | None":
    """Exact log Z of the Ising model on an ``L x M`` torus, or None when none is tractable.

    Kaufman's formula when ``H == 0`` (for ``K < 0`` on tori with even sides, through the
    sublattice flip ``Z(-K) = Z(K)``); otherwise the row transfer matrix when
    ``min(L, M) <= 12``; otherwise None.
    """
    L, M = _check_size(L, M)
    K, H = _check_real("K", K), _check_real("H", H)
    if _kaufman_applies(L, M, K, H):
        return ising_log_z_kaufman(L, M, abs(K))
    if 2 ** min(L, M) <= MAX_TRANSFER_DIM:
        return ising_log_z_transfer(L, M, K, H)
    return None


def ising_mean_energy(L: int, M: int, K: float, H: float = 0.0) -> "float | None":
    r"""Exact mean reduced energy :math:`\langle U\rangle` of the Ising torus, in kT.

    ``U = -K sum_<ij> s_i s_j - H sum_i s_i`` is what ``Ising.energy`` returns, so this is
    the exact mean of ``energy(x)`` under the Boltzmann distribution (a total, not per
    site): :math:`\langle U\rangle = -K\,\partial_K \log Z - H\,\partial_H \log Z
    = -\beta\, \partial_\beta \log Z`. Analytic derivative of Kaufman's formula when
    ``H == 0``, Hellmann-Feynman on the transfer matrix when ``min(L, M) <= 12``, else None.
    """
    L, M = _check_size(L, M)
    K, H = _check_real("K", K), _check_real("H", H)
    if H == 0.0 and K == 0.0:
        return 0.0
    if _kaufman_applies(L, M, K, H):
        return -abs(K) * _kaufman_dlogz_dk(L, M, abs(K))
    if 2 ** min(L, M) <= MAX_TRANSFER_DIM:
        gens = _ising_generators(min(L, M), True)
        _, (dk, dh) = _transfer_log_z(gens, [K, H], max(L, M), grad=True)
        return -K * dk - H * dh
    return None


def potts_log_z(L: int, M: int, q: int, K: float) -> "float | None":
    """Exact log Z of the q-state Potts torus, or None when none is tractable.

    Transfer matrix in momentum sectors when ``q ** min(L, M) <= 6561`` (the dense
    :func:`potts_log_z_transfer`'s limit 4096 is lower); for ``q == 2`` on larger lattices the exact identity
    ``Z_Potts(K) = exp(K N_bonds / 2) Z_Ising(K / 2)`` with Kaufman; else None.
    """
    L, M = _check_size(L, M)
    q, K = _check_q(q), _check_real("K", K)
    if q ** min(L, M) <= MAX_MOMENTUM_DIM:
        return potts_log_z_momentum(L, M, q, K)
    if q == 2:
        z_ising = ising_log_z(L, M, K / 2.0)
        return None if z_ising is None else K * (2 * L * M) / 2.0 + z_ising
    return None


def potts_mean_energy(L: int, M: int, q: int, K: float) -> "float | None":
    r"""Exact mean reduced energy :math:`\langle U\rangle = -K \langle\sum\delta\rangle` (kT) of the Potts torus.

    Transfer matrix (Hellmann-Feynman) when ``q ** min(L, M) <= 4096``, else None.
    """
    L, M = _check_size(L, M)
    q, K = _check_q(q), _check_real("K", K)
    if q ** min(L, M) > MAX_TRANSFER_DIM:
        return None
    _, (dk,) = _transfer_log_z(_potts_generators(q, min(L, M)), [K], max(L, M), grad=True)
    return -K * dk


# ---------------------------------------------------------------------------- Onsager
def _onsager_kappa(K: float) -> float:
    c = math.cosh(2.0 * K)
    return min(1.0, 2.0 * math.sinh(2.0 * abs(K)) / (c * c))


def onsager_free_energy_per_site(K: float) -> float:
    r"""Onsager's :math:`-\beta f = \lim \log Z / N` of the zero-field square-lattice Ising model.

    .. math::
        -\beta f = \ln(2\cosh 2K) + \frac1\pi \int_0^{\pi/2}
        \ln\frac{1 + \sqrt{1 - \kappa^2 \sin^2\phi}}{2}\, d\phi,
        \qquad \kappa = \frac{2\sinh 2K}{\cosh^2 2K}

    (scipy ``quad``). Even in K (the infinite square lattice is bipartite).
    """
    K = abs(_check_real("K", K))
    kappa = _onsager_kappa(K)

    def integrand(phi):
        return math.log(0.5 * (1.0 + math.sqrt(max(0.0, 1.0 - (kappa * math.sin(phi)) ** 2))))

    val, _ = integrate.quad(integrand, 0.0, 0.5 * math.pi, epsabs=1e-15, epsrel=1e-13, limit=200)
    return float(math.log(2.0 * math.cosh(2.0 * K)) + val / math.pi)


def onsager_energy_per_site(K: float) -> float:
    r"""Mean reduced energy per site :math:`\langle U\rangle / N` (kT) of the infinite Ising lattice.

    .. math::
        \langle U\rangle/N = -K \coth 2K \left[1 + \frac2\pi (2\tanh^2 2K - 1)\,
        \mathrm{K}(\kappa)\right]

    with :math:`\mathrm{K}` the complete elliptic integral of the first kind (scipy ``ellipk``
    takes ``m = kappa**2``). The energy per site in units of J is this value divided by K;
    at the critical point it is :math:`-\sqrt2`.
    """
    K = _check_real("K", K)
    if K == 0.0:
        return 0.0
    a = abs(K)
    kappa = _onsager_kappa(a)
    slope = 2.0 * math.tanh(2.0 * a) ** 2 - 1.0
    ell = 0.0 if slope == 0.0 or kappa >= 1.0 else slope * float(special.ellipk(kappa**2))
    return float(-a / math.tanh(2.0 * a) * (1.0 + 2.0 / math.pi * ell))


# ---------------------------------------------------------------------------- any categorical energy
class Enumeration(NamedTuple):
    """All states of a small categorical target with their exact probabilities.

    ``states`` (S, *event_shape) int64 index representation on CPU, in :func:`state_to_index`
    order (row ``i`` is the state of index ``i``); ``energies`` and ``log_probs`` (S,)
    float64; ``log_z`` the exact log normalizing constant.
    """

    states: torch.Tensor
    energies: torch.Tensor
    log_probs: torch.Tensor
    log_z: float


def _categorical_domain(energy) -> Categorical:
    dom = getattr(energy, "domain", None)
    if not isinstance(dom, Categorical):
        raise IncompatibleMethodError(
            f"exact enumeration needs an energy on a categorical domain (Lattice, Sequence), "
            f"got domain {dom!r}")
    return dom


def _check_state_count(dom: Categorical, max_states: int) -> int:
    log_s = dom.log_size()
    if log_s > math.log(max_states) + 1e-9:
        raise IncompatibleMethodError(
            f"{dom!r} has q**n_sites = {dom.q}**{dom.n_sites} = {math.exp(log_s):.4g} states, "
            f"more than max_states = {max_states}; enumerate a smaller system or raise max_states")
    return dom.q**dom.n_sites


def state_to_index(x: torch.Tensor, q: int) -> torch.Tensor:
    """Integer index (B,) of index-representation states x (B, *event_shape).

    Sites are read in C order with the first site most significant, the order used by
    :func:`iter_states` and :func:`enumerate_states`; use it to histogram samples
    (``torch.bincount(state_to_index(domain.encode(x), q), minlength=q**n)``).
    """
    flat = x.reshape(x.shape[0], -1).long()
    n = flat.shape[1]
    if n * math.log(q) >= 63 * math.log(2):
        raise IncompatibleMethodError(f"q**n_sites = {q}**{n} does not fit in int64")
    powers = q ** torch.arange(n - 1, -1, -1, device=flat.device, dtype=torch.int64)
    return (flat * powers).sum(1)


def iter_states(domain: Categorical, *, batch_size: int = 2**16, max_states: int = 2**26,
                device: "torch.device | str" = "cpu") -> Iterator[torch.Tensor]:
    """Yield every state of a categorical domain in index order, as int64 batches (b, *event_shape)."""
    if not isinstance(domain, Categorical):
        raise IncompatibleMethodError(f"iter_states needs a categorical domain, got {domain!r}")
    total = _check_state_count(domain, max_states)
    n, q = domain.n_sites, domain.q
    powers = q ** torch.arange(n - 1, -1, -1, device=device, dtype=torch.int64)
    for start in range(0, total, batch_size):
        idx = torch.arange(start, min(start + batch_size, total), device=device, dtype=torch.int64)
        yield ((idx[:, None] // powers) % q).reshape(-1, *domain.event_shape)


def _enumerated_energies(energy, max_states: int, batch_size: int, dtype):
    """Every state of ``energy``'s categorical domain in index order, in batches on the energy's
    device: ``(idx, x, u)``, the index states, the physical states (cast to ``dtype`` when
    floating) and their energies (float64 on CPU)."""
    dom = _categorical_domain(energy)
    dev = energy.device if isinstance(energy, torch.nn.Module) else torch.device("cpu")
    for idx in iter_states(dom, batch_size=batch_size, max_states=max_states, device=dev):
        x = dom.decode(idx)
        if dtype is not None and x.dtype.is_floating_point:
            x = x.to(dtype)
        with torch.no_grad():
            u = energy.energy(x)
        if tuple(u.shape) != (idx.shape[0],):
            raise TargetError(f"{getattr(energy, 'name', 'energy')}.energy returned shape "
                              f"{tuple(u.shape)} for a batch of {idx.shape[0]}; it must be (B,)")
        yield idx, x, u.detach().to("cpu", torch.float64)


def enumerate_states(energy, max_states: int = 2**22, *, batch_size: int = 2**16,
                     dtype: "torch.dtype | None" = None) -> Enumeration:
    """Exact Boltzmann distribution (an :class:`Enumeration`) of a small energy on a categorical
    domain, by enumeration.

    Every state is evaluated through ``energy.energy(energy.domain.decode(idx))`` in batches
    on the energy's device; log-probabilities and log Z are computed in float64.

    Parameters
    ----------
    energy : Energy
        Target on a :class:`~boltzkit.domains.Categorical` domain (Ising, Potts, Sequence ...).
    max_states : int
        Refuse (``IncompatibleMethodError`` naming the size) above this many states; the
        states are stored, so memory is ``S * n_sites * 8`` bytes.
    batch_size : int
        States per call of ``energy.energy``.
    dtype : torch.dtype, optional
        Cast floating physical states (e.g. Ising spins) to this dtype before the energy
        call; ``torch.float64`` makes float-valued energies exact to double precision.
    """
    states, us = zip(*[(idx.cpu(), u) for idx, _, u in
                       _enumerated_energies(energy, max_states, batch_size, dtype)])
    u = torch.cat(us)
    if not bool(torch.isfinite(u).all()):
        raise TargetError(f"{getattr(energy, 'name', 'energy')} returned non-finite energies "
                          "during enumeration")
    log_z = float(torch.logsumexp(-u, 0))
    return Enumeration(torch.cat(states), u, -u - log_z, log_z)


def exact_marginal_pmf(energy, statistic: "Callable[[torch.Tensor], torch.Tensor] | str",
                       *, max_states: int = 2**26, batch_size: int = 2**16,
                       dtype: "torch.dtype | None" = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact pmf of a discrete statistic of the Boltzmann distribution, by enumeration.

    States are streamed (not stored), so ``max_states`` can exceed that of
    :func:`enumerate_states`.

    Parameters
    ----------
    energy : Energy
        Target on a categorical domain.
    statistic : callable or "energy"
        Maps a batch of *physical* states (what ``energy.energy`` reads, shape
        (B, *event_shape)) to (B,) values, e.g. ``lambda x: x.flatten(1).sum(1).abs()`` for
        ``|M|`` of an Ising model; ``"energy"`` uses ``energy.energy`` itself. Values are
        grouped by exact equality (round them first if needed).
    max_states, batch_size, dtype
        As in :func:`enumerate_states`.

    Returns
    -------
    values, probs : numpy.ndarray
        Sorted distinct values (float64) and their exact probabilities (float64, sum 1).
    """
    vals, logws = [], []
    for idx, x, u in _enumerated_energies(energy, max_states, batch_size, dtype):
        if isinstance(statistic, str):
            if statistic != "energy":
                raise TargetError(f"statistic must be a callable or 'energy', got {statistic!r}")
            v = u
        else:
            with torch.no_grad():
                v = torch.as_tensor(statistic(x)).detach().to("cpu", torch.float64).reshape(-1)
            if v.shape[0] != idx.shape[0]:
                raise TargetError(f"statistic returned {v.shape[0]} values for a batch of "
                                  f"{idx.shape[0]} states; it must return one value per state")
        uniq, inv = torch.unique(v, return_inverse=True)
        vals.append(uniq)
        logws.append(_group_logsumexp(-u, inv, len(uniq)))
    uniq, inv = torch.unique(torch.cat(vals), return_inverse=True)
    logw = _group_logsumexp(torch.cat(logws), inv, len(uniq))
    probs = torch.exp(logw - torch.logsumexp(logw, 0))
    return uniq.numpy(), probs.numpy()


def _group_logsumexp(a: torch.Tensor, group: torch.Tensor, n: int) -> torch.Tensor:
    """logsumexp of ``a`` within each of ``n`` groups (float64)."""
    mx = torch.full((n,), -math.inf, dtype=a.dtype).scatter_reduce(0, group, a, "amax")
    s = torch.zeros(n, dtype=a.dtype).index_add_(0, group, torch.exp(a - mx[group]))
    return torch.log(s) + mx


# ---------------------------------------------------------------------------- curves over beta
class ThermoCurve(NamedTuple):
    """Exact finite-lattice thermodynamic curves at inverse temperatures ``beta``.

    ``energy``: mean energy per site ``<E>/N`` in units of J (``E = -J sum_<ij> s_i s_j`` for
    Ising, ``-J sum_<ij> delta`` for Potts; the reduced energy ``Energy.energy`` is ``beta E``);
    ``heat_capacity``: ``C/N = beta^2 Var(E) / N`` (k_B = 1); ``log_z``: natural log Z.
    """

    beta: np.ndarray
    log_z: np.ndarray
    energy: np.ndarray
    heat_capacity: np.ndarray


_CURVE_H = 1e-3  # step in K of the Richardson difference of the analytic d log Z / dK


def _second_derivative(f1, K: float, h: float = _CURVE_H) -> float:
    """d^2 log Z / dK^2 from the first derivative ``f1``: 4th-order central differences, or a
    2nd-order forward stencil near K = 0 (where f1 is not evaluated at negative K)."""
    if K >= 2.0 * h:
        return (8.0 * (f1(K + h) - f1(K - h)) - (f1(K + 2 * h) - f1(K - 2 * h))) / (12.0 * h)
    return (-3.0 * f1(K) + 4.0 * f1(K + h) - f1(K + 2 * h)) / (2.0 * h)


def _curve(betas, J, n_sites, log_z_fn, f1) -> ThermoCurve:
    b = np.atleast_1d(np.asarray(betas, dtype=np.float64))
    if not np.isfinite(b).all() or (b < 0).any():
        raise TargetError("betas must be finite and >= 0")
    J = _check_real("J", J)
    if J <= 0:
        raise TargetError(f"J must be > 0 (ferromagnet) for the exact curves, got {J}")
    lz, e, c = (np.empty_like(b) for _ in range(3))
    for i, beta in enumerate(b):
        K = beta * J
        lz[i] = log_z_fn(K)
        e[i] = -J * f1(K) / n_sites
        c[i] = K * K * _second_derivative(f1, K) / n_sites
    return ThermoCurve(b, lz, e, c)


def ising_curve(L: int, betas, J: float = 1.0, M: "int | None" = None) -> ThermoCurve:
    """Exact ``log Z``, energy and heat capacity per site of the zero-field Ising torus
    ``L x M`` (default square) over ``betas``: the analytic ``d log Z / dK`` of Kaufman's
    formula and its Richardson-extrapolated central difference (4th order, step 1e-3 in K;
    relative error below 1e-8 on the lattices tested)."""
    L, M = _check_size(L, L if M is None else M)

    def f1(K):
        return 0.0 if K == 0.0 else _kaufman_dlogz_dk(L, M, K)

    return _curve(betas, J, L * M, lambda K: ising_log_z_kaufman(L, M, K), f1)


def potts_curve(L: int, q: int, betas, J: float = 1.0, M: "int | None" = None) -> ThermoCurve:
    """Exact curves of the q-state Potts torus (``E = -J sum delta``): transfer matrix
    (Hellmann-Feynman derivative) when ``q ** min(L, M) <= 4096``, Kaufman through the
    ``q = 2`` identity otherwise; raises when neither applies."""
    L, M = _check_size(L, L if M is None else M)
    q = _check_q(q)
    if q ** min(L, M) <= MAX_TRANSFER_DIM:
        gens = _potts_generators(q, min(L, M))

        def f1(K):
            return _transfer_log_z(gens, [K], max(L, M), grad=True)[1][0]

        return _curve(betas, J, L * M, lambda K: potts_log_z_transfer(L, M, q, K), f1)
    if q == 2:  # Z_P(K) = exp(K N_b / 2) Z_I(K / 2)
        nb = 2 * L * M

        def f1(K):
            return 0.5 * nb + (0.0 if K == 0 else 0.5 * _kaufman_dlogz_dk(L, M, 0.5 * K))

        return _curve(betas, J, L * M, lambda K: 0.5 * K * nb + ising_log_z_kaufman(L, M, 0.5 * K), f1)
    raise TargetError(f"no exact Potts curve for q = {q} on {L} x {M}: the transfer matrix needs "
                      f"q**min(L, M) <= {MAX_TRANSFER_DIM}")


def ising_curve_enumerate(L: int, betas, J: float = 1.0, M: "int | None" = None) -> ThermoCurve:
    """The same curves by brute-force enumeration of the density of states (tests, <= 5 x 5)."""
    L, M = _check_size(L, L if M is None else M)
    bvals, _, counts = _ising_dos(L, M)
    c = counts.sum(1)
    nz = c > 0
    b = np.atleast_1d(np.asarray(betas, dtype=np.float64))
    lz, e, cap = (np.empty_like(b) for _ in range(3))
    for i, beta in enumerate(b):
        logw = np.log(c[nz]) + beta * J * bvals[nz]
        lz[i] = special.logsumexp(logw)
        p = np.exp(logw - lz[i])
        m1 = p @ bvals[nz]
        var = p @ (bvals[nz] - m1) ** 2
        e[i] = -J * m1 / (L * M)
        cap[i] = (beta * J) ** 2 * var / (L * M)
    return ThermoCurve(b, lz, e, cap)

