"""Continuous targets on ``Reals(d)`` with exact normalizing constants and exact samplers.

* :class:`Gaussian` -- ``U(x) = 1/2 (x - m)^T Sigma^{-1} (x - m)``,
  ``log Z = (d/2) log 2 pi + 1/2 log det Sigma``.
* :class:`GaussianMixture` -- ``U(x) = -log sum_k w_k N(x; m_k, diag s_k^2)`` with positive
  weights that need not sum to one, so ``log Z = log sum_k w_k``. :meth:`GaussianMixture.gmm40`
  builds the 40-mode 2-D benchmark of the FAB paper (Midgley et al., arXiv:2208.01893).
* :class:`ManyWell` -- ``d/2`` independent copies of the 2-D double well
  ``x1^4 - 6 x1^2 - x1/2 + x2^2/2`` (FAB); ``log Z`` by 1-D quadrature, ``2^(d/2)`` modes.

Every parameter is a registered float64 buffer, so ``energy.to(device)`` moves it. Energies
are evaluated in the dtype of the input (float32 states by default, float64 states give
float64 energies); gradients are analytic; exact samples are float32 (the domain dtype).
Exact ``log Z`` values are computed in float64 from the constructor arguments.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..domains import Reals
from ..errors import TargetError
from .base import Energy

LOG_2PI = math.log(2.0 * math.pi)

# GMM-40 component means: FAB's own instance (lollcat/fab-torch, experiments/gmm/run.py and
# fab/target_distributions/gmm.py). FAB calls torch.manual_seed(0) and then draws, as the first
# use of the global torch RNG, ``locs = (torch.rand((40, 2)) - 0.5) * 2 * 40`` in float32; the
# component scale_tril is diag(softplus(log_var_scaling = 1)) and the mixture weights are
# Categorical(ones(40)), i.e. 1/40 each. The float32 values are frozen here as exact float
# literals (torch's CPU Mersenne-Twister stream is stable across versions; a test re-draws them).
GMM40_MEANS = (
    (-0.2994728088378906, 21.457744598388672), (-32.92180633544922, -29.43756103515625),
    (-15.406174659729004, 10.72629451751709), (-0.7925271987915039, 31.715579986572266),
    (-3.5497617721557617, 10.584502220153809), (-12.088522911071777, -7.862615585327148),
    (-38.21393966674805, -26.491283416748047), (-16.488924026489258, 1.4817428588867188),
    (15.813407897949219, 24.000911712646484), (-27.117643356323242, -17.418514251708984),
    (14.528684616088867, 33.215518951416016), (-8.232007026672363, 29.932470321655273),
    (-6.447334289550781, 4.2325639724731445), (36.21904754638672, -37.106815338134766),
    (-25.1815185546875, -10.126609802246094), (-15.591998100280762, 34.56003189086914),
    (-25.92718505859375, -18.413314819335938), (-27.94561767578125, -37.462440490722656),
    (-23.349618911743164, 34.3839225769043), (17.848735809326172, 19.38690185546875),
    (2.1036624908447266, -20.507339477539062), (6.767387390136719, -37.3477897644043),
    (-28.90264892578125, -20.621200561523438), (25.237518310546875, 23.452850341796875),
    (-17.73980140686035, -1.4432954788208008), (25.582427978515625, 39.765323638916016),
    (15.875287055969238, 5.403714179992676), (26.819454193115234, -23.552093505859375),
    (7.453761100769043, -31.01222038269043), (-27.723445892333984, -20.663341522216797),
    (18.098922729492188, 16.086416244506836), (-23.69409942626953, 12.084283828735352),
    (21.958881378173828, -5.048694610595703), (1.527261734008789, 9.2681884765625),
    (24.8150634765625, 38.40776443481445), (-30.82494354248047, -14.65878963470459),
    (15.720396041870117, 33.14197540283203), (34.808292388916016, 35.29426956176758),
    (7.9605817794799805, -34.78330612182617), (3.6796998977661133, -25.024213790893555),
)
GMM40_STD = math.log1p(math.e)  # softplus(1) = 1.3132616875..., a per-axis standard deviation


def _as_f64(value, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value,
                         dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TargetError(f"{name} must be an array of numbers, got {type(value).__name__}") from exc
    if not np.isfinite(arr).all():
        raise TargetError(f"{name} contains NaN or infinite entries; all entries must be finite")
    return arr


def _check_batch(x: torch.Tensor, dim: int, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != dim:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise TargetError(f"{name} expects a batch of shape (B, {dim}), got {shape}; "
                          "add a batch dimension with x[None] for a single point")


class Gaussian(Energy):
    r"""Multivariate normal target ``U(x) = 1/2 (x - m)^T Sigma^{-1} (x - m)``.

    Parameters
    ----------
    mean : array-like (d,)
        Mean vector m.
    cov : array-like (d, d), optional
        Symmetric positive-definite covariance Sigma.
    std : float or array-like (d,), optional
        Per-axis standard deviations (diagonal covariance). Give ``cov`` or ``std``, not both;
        with neither the covariance is the identity.
    """

    def __init__(self, mean, cov=None, std=None):
        m = _as_f64(mean, "mean")
        if m.ndim != 1 or m.size < 1:
            raise TargetError(f"mean must be a 1-D array (d,), got shape {m.shape}")
        d = m.size
        if cov is not None and std is not None:
            raise TargetError("give either cov (full covariance) or std (per-axis standard "
                              "deviations), not both")
        if cov is not None:
            c = _as_f64(cov, "cov")
            if c.shape != (d, d):
                raise TargetError(f"cov must have shape ({d}, {d}) to match mean, got {c.shape}")
            if not np.allclose(c, c.T, rtol=1e-10, atol=1e-12):
                raise TargetError("cov must be symmetric; symmetrize it with (cov + cov.T) / 2")
            try:
                chol = np.linalg.cholesky(c)
            except np.linalg.LinAlgError as exc:
                raise TargetError("cov is not positive definite; check its eigenvalues "
                                  "(all must be > 0)") from exc
        else:
            s = _as_f64(1.0 if std is None else std, "std")
            if s.ndim == 0:
                s = np.full(d, float(s))
            if s.shape != (d,):
                raise TargetError(f"std must be a scalar or have shape ({d},) to match mean, "
                                  f"got shape {s.shape}")
            if (s <= 0).any():
                raise TargetError(f"std must be positive, got {s.tolist()}")
            chol = np.diag(s)
        super().__init__(Reals(d), name=f"Gaussian(d={d})")
        self.dim = d
        self.diagonal = cov is None
        self._log_z = 0.5 * d * LOG_2PI + float(np.log(np.diag(chol)).sum())
        self.register_buffer("mean", torch.tensor(m, dtype=torch.float64))
        self.register_buffer("scale_tril", torch.tensor(chol, dtype=torch.float64))
        # inverse Cholesky factor: z = L^{-1} (x - m) whitens x
        self.register_buffer("inv_scale_tril",
                             torch.tensor(np.linalg.inv(chol), dtype=torch.float64))

    @property
    def covariance(self) -> torch.Tensor:
        return self.scale_tril @ self.scale_tril.T

    def _whiten(self, x):
        _check_batch(x, self.dim, self.name)
        return (x - self.mean.to(x.dtype)) @ self.inv_scale_tril.to(x.dtype).T

    def energy(self, x):
        z = self._whiten(x)
        return 0.5 * (z * z).sum(-1)

    def grad_energy(self, x):
        return self._whiten(x) @ self.inv_scale_tril.to(x.dtype)

    def sample_exact(self, n: int, *, generator: "torch.Generator | None" = None) -> torch.Tensor:
        """``n`` independent exact draws (float32, on the energy's device)."""
        eps = torch.randn(int(n), self.dim, generator=generator, device=self.mean.device)
        return (self.mean + eps.to(self.mean.dtype) @ self.scale_tril.T).float()

    def to_config(self):
        return {**super().to_config(), "type": "Gaussian", "dim": self.dim,
                "mean": self.mean.tolist(), "scale_tril": self.scale_tril.tolist()}


class GaussianMixture(Energy):
    r"""Mixture of diagonal Gaussians, ``U(x) = -log sum_k w_k N(x; m_k, diag s_k^2)``.

    The weights need only be positive; ``exact_log_z() = log sum_k w_k``.

    Parameters
    ----------
    means : array-like (K, d)
    stds : float, array-like (K,) or (K, d)
        Standard deviations, per component or per component and axis.
    weights : array-like (K,), optional
        Positive component weights (default: 1/K each, so log Z = 0).
    """

    def __init__(self, means, stds=1.0, weights=None, *, name: "str | None" = None):
        m = _as_f64(means, "means")
        if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
            raise TargetError(f"means must have shape (K, d) (components x dimension), got "
                              f"shape {m.shape}; for one component in d dimensions use means[None]")
        k, d = m.shape
        s = _as_f64(stds, "stds")
        if s.ndim == 0:
            s = np.full((k, d), float(s))
        elif s.shape == (k,):
            s = np.repeat(s[:, None], d, axis=1)
        elif s.shape != (k, d):
            raise TargetError(f"stds must be a scalar or have shape ({k},) or ({k}, {d}) to match "
                              f"means of shape {m.shape}, got shape {s.shape}")
        if (s <= 0).any():
            raise TargetError("stds must be positive (they are standard deviations, not log-scales)")
        w = np.full(k, 1.0 / k) if weights is None else _as_f64(weights, "weights")
        if w.shape != (k,):
            raise TargetError(f"weights must have shape ({k},) (one per component), got {w.shape}")
        if (w <= 0).any():
            raise TargetError(f"weights must be positive, got minimum {w.min():g}; drop components "
                              "with zero weight instead")
        super().__init__(Reals(d), name=name or f"GaussianMixture(K={k}, d={d})")
        self.n_components, self.dim = k, d
        self._log_z = float(np.log(w.sum()))
        self.register_buffer("means", torch.tensor(m, dtype=torch.float64))
        self.register_buffer("stds", torch.tensor(s, dtype=torch.float64))
        self.register_buffer("weights", torch.tensor(w, dtype=torch.float64))
        # per-component constant: log w_k - sum_j log s_kj - (d/2) log 2 pi
        const = np.log(w) - np.log(s).sum(1) - 0.5 * d * LOG_2PI
        self.register_buffer("log_norm", torch.tensor(const, dtype=torch.float64))

    @classmethod
    def gmm40(cls) -> "GaussianMixture":
        """FAB's 40-mode 2-D benchmark instance: equal weights summing to one (log Z = 0),
        means in [-40, 40]^2 drawn by fab-torch after ``torch.manual_seed(0)`` (the frozen
        table :data:`GMM40_MEANS`), per-axis std softplus(1). A few means lie within two
        standard deviations of each other, as in FAB's instance."""
        return cls(GMM40_MEANS, GMM40_STD, np.full(40, 1.0 / 40), name="GMM40")

    def _component_log_probs(self, x):
        """(B, K): log w_k + log N(x; m_k, diag s_k^2)."""
        _check_batch(x, self.dim, self.name)
        z = (x[:, None, :] - self.means.to(x.dtype)) / self.stds.to(x.dtype)
        return self.log_norm.to(x.dtype) - 0.5 * (z * z).sum(-1)

    def energy(self, x):
        return -torch.logsumexp(self._component_log_probs(x), dim=1)

    def grad_energy(self, x):
        r = torch.softmax(self._component_log_probs(x), dim=1)  # responsibilities (B, K)
        prec_diff = (x[:, None, :] - self.means.to(x.dtype)) / self.stds.to(x.dtype) ** 2
        return (r[:, :, None] * prec_diff).sum(1)

    def mode_assignment(self, x: torch.Tensor) -> torch.Tensor:
        """Index (B,) of the component with the largest responsibility for each point.

        With equal weights and stds (GMM-40) this is the nearest mean.
        """
        return self._component_log_probs(x).argmax(dim=1)

    def mode_probabilities(self) -> torch.Tensor:
        """Exact mass of each component, w_k / sum w (K,)."""
        return self.weights / self.weights.sum()

    def sample_exact(self, n: int, *, generator: "torch.Generator | None" = None) -> torch.Tensor:
        """``n`` independent exact draws (float32, on the energy's device)."""
        comp = torch.multinomial(self.weights, int(n), replacement=True, generator=generator)
        eps = torch.randn(int(n), self.dim, generator=generator, device=self.means.device)
        return (self.means[comp] + self.stds[comp] * eps.to(self.stds.dtype)).float()

    def to_config(self):
        return {**super().to_config(), "type": "GaussianMixture", "dim": self.dim,
                "n_components": self.n_components, "log_z": self._log_z}


# ------------------------------------------------------------------------------ Many-Well
_DW_QUARTIC, _DW_QUADRATIC, _DW_LINEAR = 1.0, -6.0, -0.5  # x^4 - 6 x^2 - 0.5 x


def _double_well_1d(x):
    return _DW_QUARTIC * x ** 4 + _DW_QUADRATIC * x ** 2 + _DW_LINEAR * x


@functools.lru_cache(maxsize=1)
def _double_well_tables():
    """log Z of exp(-(x^4 - 6x^2 - x/2)) by quadrature, the barrier top, and an inverse-CDF grid."""
    from scipy import integrate

    crit = np.sort(np.roots([4 * _DW_QUARTIC, 0.0, 2 * _DW_QUADRATIC, _DW_LINEAR]).real)
    u_min = float(min(_double_well_1d(crit[0]), _double_well_1d(crit[2])))
    barrier = float(crit[1])  # local maximum between the two wells (~ -0.0417)
    integrand = lambda t: math.exp(-(_double_well_1d(t) - u_min))  # noqa: E731
    # the integrand is below e^-140 outside [-5, 5]
    val, _ = integrate.quad(integrand, -6.0, 6.0, points=[crit[0], barrier, crit[2]],
                            limit=200, epsabs=0.0, epsrel=1e-13)
    log_z1 = math.log(val) - u_min
    grid = np.linspace(-5.0, 5.0, 200_001)
    dens = np.exp(-(_double_well_1d(grid) - u_min))
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]))])
    cdf /= cdf[-1]
    return log_z1, barrier, grid, cdf


class ManyWell(Energy):
    r"""Many-Well target: ``d/2`` independent 2-D double wells (FAB's ``ManyWellEnergy``).

    ``U(x) = sum_i [x_{2i}^4 - 6 x_{2i}^2 - x_{2i}/2 + x_{2i+1}^2 / 2]`` (0-based indices: the
    even coordinates carry the quartic double well, the odd ones a unit Gaussian). Exact
    ``log Z = (d/2) (log Z_1 + log(2 pi)/2)`` with ``Z_1`` from 1-D quadrature; the right well
    holds probability ~0.8443 per pair, so there are ``2^(d/2)`` modes of unequal mass.
    """

    def __init__(self, dim: int = 32):
        if isinstance(dim, bool) or int(dim) != dim or dim < 2 or int(dim) % 2:
            raise TargetError(f"ManyWell needs an even dimension >= 2 (pairs of coordinates), "
                              f"got dim={dim!r}")
        dim = int(dim)
        super().__init__(Reals(dim), name=f"ManyWell(d={dim})")
        self.dim, self.n_wells = dim, dim // 2
        log_z1, barrier, grid, cdf = _double_well_tables()
        self._log_z = self.n_wells * (log_z1 + 0.5 * LOG_2PI)
        self.barrier = barrier
        self.register_buffer("_icdf_grid", torch.tensor(grid, dtype=torch.float64), persistent=False)
        self.register_buffer("_icdf_cdf", torch.tensor(cdf, dtype=torch.float64), persistent=False)

    def energy(self, x):
        _check_batch(x, self.dim, self.name)
        a, b = x[:, 0::2], x[:, 1::2]
        return (_double_well_1d(a) + 0.5 * b * b).sum(-1)

    def grad_energy(self, x):
        _check_batch(x, self.dim, self.name)
        g = torch.empty_like(x)
        a = x[:, 0::2]
        g[:, 0::2] = 4 * _DW_QUARTIC * a ** 3 + 2 * _DW_QUADRATIC * a + _DW_LINEAR
        g[:, 1::2] = x[:, 1::2]
        return g

    def mode_assignment(self, x: torch.Tensor) -> torch.Tensor:
        """Integer code (B,) of the well each pair sits in: bit i set when x_{2i} is right of
        the barrier top. Valid up to d = 126 (int64)."""
        _check_batch(x, self.dim, self.name)
        if self.n_wells > 62:
            raise TargetError("mode_assignment encodes wells as int64 bits; it supports d <= 124")
        bits = (x[:, 0::2] > self.barrier).long()
        return (bits << torch.arange(self.n_wells, device=x.device)).sum(1)

    def sample_exact(self, n: int, *, generator: "torch.Generator | None" = None) -> torch.Tensor:
        """``n`` exact draws: inverse CDF on a 2e5-point grid for the quartic coordinates (cells
        of width 5e-5, piecewise-uniform within a cell), N(0, 1) for the others."""
        n = int(n)
        dev = self._icdf_cdf.device
        u = torch.rand(n, self.n_wells, generator=generator, device=dev, dtype=torch.float64)
        cdf, grid = self._icdf_cdf.double(), self._icdf_grid.double()
        hi = torch.searchsorted(cdf, u, right=True).clamp(1, cdf.numel() - 1)
        c0, c1 = cdf[hi - 1], cdf[hi]
        a = grid[hi - 1] + (u - c0) / (c1 - c0) * (grid[hi] - grid[hi - 1])
        b = torch.randn(n, self.n_wells, generator=generator, device=dev)
        x = torch.empty(n, self.dim, device=dev)
        x[:, 0::2] = a.float()
        x[:, 1::2] = b
        return x

    def to_config(self):
        return {**super().to_config(), "type": "ManyWell", "dim": self.dim}
