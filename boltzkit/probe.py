r"""Scale probe: where a continuous target's mass sits and how wide it is, before a sampler runs.

Sources
-------
The construction is the multi-start Laplace picture used to set up samplers by hand: local
minima from several starts (multi-start quasi-Newton, Nocedal & Wright, "Numerical
Optimization", 2nd ed., ch. 7: L-BFGS with a backtracking Armijo line search), the curvature
at each minimum (the Laplace / harmonic approximation, ``N(m_i, H_i^{-1})``), and the spread
of the minima. The covering Gaussian is the moment match of the equal-weight mixture of those
Laplace Gaussians.

Objective
---------
Find distinct local minima ``m_1..m_M`` of ``U`` (batched L-BFGS from broad starts, then a
Newton polish with a finite-difference Hessian ``H_i``), and return the affine frame
``x = c + S z`` with

    c = mean_i m_i,        S S^T = C = Cov_i(m_i) + mean_i H_i^{-1}

(``H_i`` eigenvalues taken in absolute value and clipped to ``[1/max_width^2, 1/min_width^2]``).
``N(c, C)`` covers every minimum found, with the right width along every direction: for a
Gaussian target it is the target itself, for a mixture it spans the box of its modes. The frame
is returned as a :class:`~boltzkit.energies.base.PriorHint` (:meth:`ScaleProbe.hint`), so the
continuous samplers use it exactly as a target-given hint. In the frame the narrowest local
width is :attr:`ScaleProbe.narrowest_width` (NAAS ``target_scale``; PDNS would use it the same
way), and :attr:`ScaleProbe.mala_step_size` is a MALA step for it.

Mass off the minima's axes: descents from broad starts stop at their first point in the typical
energy band ``U <= U_min + d/2 + 2 sqrt(d/2)`` (inside the 99.9 % ellipsoid of a Gaussian, so a
Gaussian or a mixture of them is left as it is). On a curved ridge (Haario's banana: its arms lie
tens of local widths off the minimum's axes) most band points fall outside the covering
Gaussian; then ``c`` and ``C`` are the moments of minima and band points together, widened 1.5x
(``extra["band_widened"]``).

Use by the samplers
-------------------
Where the user gives no scale (``init_std`` / ``prior_std`` / ``target_scale`` left at None)
and the target gives no :meth:`~boltzkit.energies.Energy.prior_hint`, AIS/SMC, MALA and NAAS
call :func:`probe_frame` and run in its frame with a unit-width reference (AIS ``init_std``,
MALA start), MALA's step :attr:`ScaleProbe.mala_step_size`, NAAS ``target_scale`` =
:attr:`ScaleProbe.narrowest_width` (its diffusion schedule and Euler steps follow from the two
widths). A target's hint or any explicit option wins. PDNS (continuous) needs the same three
numbers: run it on ``probe_frame(target)[0]`` (samples map back with ``hint.to_x`` and
``log Z_x = log Z_z + hint.log_det``) with ``reference_std = 1``; its noise schedule's smallest
level should be about ``narrowest_width`` (``noise_ratio ~ 1 / narrowest_width``).

Starts
------
* Without a hint: round 1 draws ``x0 = r xi``, ``xi ~ N(0, I)``, with radii ``r`` log-spaced
  over ``radii`` (default 0.1 .. 100, so modes in a box of +-50 and widths from 1e-3 to 1e2
  are reached without any scale given). Later rounds draw from the covering Gaussian of the
  minima found so far, widened by ``widen``, until a round adds fewer than ``min_new`` of its
  starts as new minima or ``max_rounds`` is reached. A minimum farther from the origin than
  every start so far means the target is larger than that box: the next round starts again
  from the origin, out to three times that minimum's distance (so a narrow mode on the far
  side of a wide one is reached: FAB's mixture in units 1000x smaller keeps 35 of its 36
  distinct minima, where the first box alone found 1-2).
* With a target's :meth:`~boltzkit.energies.Energy.prior_hint` (``use_prior_hint=True``) the
  probe runs in the hint's standardized coordinates and returns its frame composed with the
  hint's.

Cost
----
Every energy-and-gradient evaluation of one state is counted (``n_evaluations``): L-BFGS
iterations and line-search trials, plus ``2 d`` gradients per finite-difference Hessian
(``n_hessians`` distinct minima at most; the others share their mean curvature). Typical
totals: a few thousand to a few tens of thousands of states.

Failure modes
-------------
* Modes that no start descends into are not in the frame. Basins of attraction follow the
  dominant component of the tails, so a mode much narrower than a distant wide one has a
  small basin: in 2-D, a width-0.5 mode at distance 55 from a width-2 mode was found from
  1 of 4 seeds with the defaults. Equal-shape modes (GMM-40: 34 of its 36 distinct minima
  with 3,300 evaluations) are found reliably. More ``n_starts`` or ``max_rounds`` help, and
  samplers must still check coverage.
* A flat direction (no confinement, rotations of a molecule in vacuum) has no curvature; its
  width is clipped to ``max_width``. Where the minima keep spreading to the end of the search
  (a periodic or flat direction: infinite mass on ``Reals(d)``) the probe says so
  (``receding``) and :func:`probe_frame` refuses the target.
  A target without any minimum (energy unbounded below within the search radius) raises
  :class:`~boltzkit.errors.TargetError`.
* Power-law tails (Cauchy, Student t) hold mass that no Gaussian frame reaches: the energy is
  evaluated at 10 and 100 covering widths past the typical radius along 16 directions, and
  where it rises by less than ``3 (d + 2) log 10`` kT along one of them
  (:attr:`ScaleProbe.heavy_tail`) :func:`probe_frame` warns and
  :meth:`~boltzkit.result.Result.trust` does not trust the result.
* Non-smooth energies or energies computed in float32 make the finite-difference Hessian
  noisy; the probe evaluates in float64 (``dtype``).
* Minima are found by descent, so saddles with zero gradient at a start are possible but
  have measure zero; their negative curvature is taken in absolute value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ._numerics import hessian_diag_fd, hessian_fd
from .errors import ConfigError, TargetError

__all__ = ["ScaleProbe", "probe_scale", "probe_frame", "minimize", "hessian_fd", "hessian_diag_fd"]

DEFAULT_RADII = (0.1, 100.0)
#: what to do about a power-law tail (the probe's warning and Result.next_step)
HEAVY_TAIL_NEXT = ("map the heavy-tailed coordinate (e.g. sample log r for a radius) or give the target a "
                   "prior_hint() as wide as its tail")
HEAVY_TAIL = ("heavy tails: the energy rises only logarithmically far out along some direction (a power "
              "law), so the Gaussian reference misses the tail's mass and log Z comes out low. "
              + HEAVY_TAIL_NEXT[0].upper() + HEAVY_TAIL_NEXT[1:])


# ============================================================================ evaluation
class _Counted:
    """Energy and gradient of a target on float64 states, counting the states evaluated."""

    def __init__(self, energy):
        self.energy = energy
        self.n = 0

    def __call__(self, x: torch.Tensor):
        with torch.no_grad():
            u = self.energy.energy(x)
            g = self.energy.grad_energy(x)
        self.n += x.shape[0]
        u = torch.as_tensor(u).to(x.dtype).reshape(-1)
        g = torch.as_tensor(g).to(x.dtype).reshape(x.shape)
        bad = ~torch.isfinite(u) | ~torch.isfinite(g).all(-1)
        u = torch.where(bad, torch.full_like(u, math.inf), u)
        g = torch.where(bad[:, None], torch.zeros_like(g), g)
        return u, g


def _two_loop(g, S, Y, rho, gamma):
    """L-BFGS direction ``-H g`` per row from histories ``S, Y`` (B, m, d) (newest last;
    unfilled slots have rho = 0 and contribute nothing)."""
    q = g.clone()
    m = S.shape[1]
    alpha = torch.zeros(g.shape[0], m, dtype=g.dtype, device=g.device)
    for i in range(m - 1, -1, -1):
        a = rho[:, i] * (S[:, i] * q).sum(-1)
        alpha[:, i] = a
        q = q - a[:, None] * Y[:, i]
    r = gamma[:, None] * q
    for i in range(m):
        b = rho[:, i] * (Y[:, i] * r).sum(-1)
        r = r + (alpha[:, i] - b)[:, None] * S[:, i]
    return -r


def minimize(fn, x0: torch.Tensor, *, max_iter: int = 400, memory: int = 20, tol: float = 1e-9,
             max_backtracks: int = 40, newton: bool = False, curvature_range=(1e-6, 1e12),
             stop_below: "float | None" = None):
    """Batched L-BFGS (or saddle-free Newton) with Armijo backtracking, one independent
    minimization per row.

    Parameters
    ----------
    fn : callable
        ``x (B, d) -> (U (B,), grad U (B, d))``; non-finite energies count as +inf.
    x0 : Tensor (B, d)
    max_iter, memory, max_backtracks : iteration limits and L-BFGS history length.
    newton : use the finite-difference Hessian (``2 d`` gradients per iteration) with its
        eigenvalues taken in absolute value and clipped to ``curvature_range`` instead of the
        L-BFGS approximation: one step on a quadratic whatever its conditioning (L-BFGS
        needs hundreds of iterations at condition number 1e6), for small ``d``.
    tol : float
        A row stops when its estimated Newton decrement ``-g . p`` (in units of kT, so it
        does not depend on the target's length scale) falls below ``tol``.
    stop_below : float, optional
        A row also stops (not converged) at its first iterate with energy at most this.

    Returns
    -------
    x, u, g : the final rows, their energies and gradients
    converged : bool Tensor (B,)
    gamma : Tensor (B,) the last L-BFGS curvature scale ``s.y / y.y`` (a squared length).
    """
    x = x0.clone()
    B, d = x.shape
    u, g = fn(x)
    m = max(1, min(int(memory), d))
    S = torch.zeros(B, m, d, dtype=x.dtype, device=x.device)
    Y = torch.zeros_like(S)
    rho = torch.zeros(B, m, dtype=x.dtype, device=x.device)
    gamma = 1.0 / g.norm(dim=-1).clamp_min(1e-300)  # first step has unit length
    active = torch.isfinite(u)
    if stop_below is not None:
        active &= ~(u <= stop_below)
    converged = torch.zeros(B, dtype=torch.bool, device=x.device)
    n_pairs = torch.zeros(B, dtype=torch.long, device=x.device)
    for _ in range(int(max_iter)):
        idx = active.nonzero().flatten()
        if idx.numel() == 0:
            break
        xa, ua, ga = x[idx], u[idx], g[idx]
        if newton:
            step = 1e-3 * gamma[idx].clamp(1.0 / curvature_range[1], 1.0 / curvature_range[0]).sqrt()
            p = -(_inv_psd(hessian_fd(fn, xa, step), *curvature_range) @ ga[:, :, None])[:, :, 0]
        else:
            p = _two_loop(ga, S[idx], Y[idx], rho[idx], gamma[idx])
        slope = (ga * p).sum(-1)
        bad = ~(slope < 0) | ~torch.isfinite(slope)
        if bool(bad.any()):  # not a descent direction: restart from steepest descent
            p = torch.where(bad[:, None], -gamma[idx, None] * ga, p)
            slope = (ga * p).sum(-1)
            rho[idx[bad]] = 0.0
            n_pairs[idx[bad]] = 0
        done = (-slope < tol) & ((n_pairs[idx] > 0) | newton)
        converged[idx[done]] = True
        active[idx[done]] = False
        keep = ~done
        idx, xa, ua, ga, p, slope = idx[keep], xa[keep], ua[keep], ga[keep], p[keep], slope[keep]
        if idx.numel() == 0:
            break
        # Armijo backtracking, only the rows still searching are evaluated
        t = torch.ones(idx.numel(), dtype=x.dtype, device=x.device)
        xn, un, gn = xa.clone(), ua.clone(), ga.clone()
        ok = torch.zeros(idx.numel(), dtype=torch.bool, device=x.device)
        for _ in range(int(max_backtracks)):
            todo = (~ok).nonzero().flatten()
            if todo.numel() == 0:
                break
            xt = xa[todo] + t[todo, None] * p[todo]
            ut, gt = fn(xt)
            acc = torch.isfinite(ut) & (ut <= ua[todo] + 1e-4 * t[todo] * slope[todo])
            xn[todo[acc]], un[todo[acc]], gn[todo[acc]] = xt[acc], ut[acc], gt[acc]
            ok[todo[acc]] = True
            t[todo[~acc]] *= 0.2
        stuck = ~ok  # no decrease at any step length: a minimum to rounding precision
        converged[idx[stuck]] = True
        active[idx[stuck]] = False
        idx, xa, ga, xn, un, gn = idx[ok], xa[ok], ga[ok], xn[ok], un[ok], gn[ok]
        s, yv = xn - xa, gn - ga
        sy = (s * yv).sum(-1)
        good = sy > 1e-12 * s.norm(dim=-1) * yv.norm(dim=-1)
        gi = idx[good]
        if gi.numel():
            S[gi] = torch.roll(S[gi], -1, dims=1)
            Y[gi] = torch.roll(Y[gi], -1, dims=1)
            rho[gi] = torch.roll(rho[gi], -1, dims=1)
            S[gi, -1], Y[gi, -1] = s[good], yv[good]
            rho[gi, -1] = 1.0 / sy[good]
            gamma[gi] = sy[good] / (yv[good] * yv[good]).sum(-1)
            n_pairs[gi] += 1
        x[idx], u[idx], g[idx] = xn, un, gn
        if stop_below is not None:
            active[idx[un <= stop_below]] = False
    return x, u, g, converged, gamma


def _sqrt_psd(c: torch.Tensor) -> torch.Tensor:
    lam, vec = torch.linalg.eigh(0.5 * (c + c.T))
    return (vec * lam.clamp_min(0.0).sqrt()[None, :]) @ vec.T


def _inv_psd(h: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``|H|^{-1}`` with eigenvalues clipped to ``[lo, hi]`` (batched (..., d, d))."""
    lam, vec = torch.linalg.eigh(0.5 * (h + h.transpose(-1, -2)))
    lam = lam.abs().clamp(lo, hi)
    return (vec / lam[..., None, :]) @ vec.transpose(-1, -2)


# ============================================================================ result
@dataclass(frozen=True)
class ScaleProbe:
    """What :func:`probe_scale` found (all tensors float64, in the target's coordinates).

    Attributes
    ----------
    centre : (d,) centre ``c`` of the covering Gaussian (mean of the minima).
    scale : (d, d) frame matrix ``S`` (``S S^T = C``), or (d,) per-coordinate widths when the
        probe ran diagonal (``d > full_max_dim``).
    minima : (M, d) distinct local minima, lowest energy first.
    minima_energy : (M,) their energies.
    minima_widths : (M, d) per-coordinate harmonic widths ``sqrt(diag H_i^{-1})`` at each minimum.
    local_cov : (d, d) or (d,) mean harmonic covariance ``mean_i H_i^{-1}`` (diagonal when
        diagonal).
    laplace_log_z : log of the sum over minima of their harmonic (Laplace) masses, a rough
        log Z (it ignores anharmonicity and minima not found).
    narrowest_width : smallest harmonic width in the frame's units (1 for a Gaussian target,
        local width / spread for a mixture): NAAS ``target_scale``; PDNS can use it likewise.
    mala_step_size : MALA step ``h`` for chains in the frame (``0.5 w^2 d^(-1/3)``, ``w`` =
        ``narrowest_width``).
    n_evaluations : energy-and-gradient evaluations (states) the probe spent.
    n_starts, n_converged, rounds : starts used, how many converged, search rounds.
    hint_used : the probe ran in the frame of the target's own prior hint.
    receding : the search ended at its limits with its minima still spreading (each round
        found them farther out): the energy does not confine the states, e.g. a periodic
        coordinate or a flat direction, so its mass on ``Reals(d)`` is infinite.
        :func:`probe_frame` refuses such a target.
    """

    centre: torch.Tensor
    scale: torch.Tensor
    minima: torch.Tensor
    minima_energy: torch.Tensor
    minima_widths: torch.Tensor
    local_cov: torch.Tensor
    laplace_log_z: float
    narrowest_width: float
    mala_step_size: float
    n_evaluations: int
    n_starts: int
    n_converged: int
    rounds: int
    hint_used: bool = False
    receding: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.centre.numel())

    @property
    def n_minima(self) -> int:
        return int(self.minima.shape[0])

    @property
    def heavy_tail(self) -> bool:
        """The energy rises along some direction no faster than a power law ``|x|^-(d + nu)``
        with ``nu <= 2 d + 6`` (from 10 to 100 covering widths past the typical radius, by less
        than ``3 (d + 2) log 10`` kT): a Gaussian reference misses the tail's mass."""
        rise = self.extra.get("tail_growth", math.inf)
        return bool(rise < 3.0 * (self.dim + 2) * math.log(10.0))

    def covariance(self) -> torch.Tensor:
        """``C = S S^T`` (d, d)."""
        s = self.scale
        return torch.diag(s * s) if s.ndim == 1 else s @ s.T

    def widths(self) -> torch.Tensor:
        """Per-coordinate standard deviation of the covering Gaussian, ``sqrt(diag C)`` (d,)."""
        return self.covariance().diagonal().sqrt()

    def hint(self):
        """The frame ``x = centre + S z`` as a :class:`~boltzkit.energies.base.PriorHint`."""
        from .energies.base import PriorHint

        return PriorHint(self.centre, self.scale)

    def to_z(self, x: torch.Tensor) -> torch.Tensor:
        return self.hint().to_z(x)

    def summary(self) -> dict:
        """JSON-able numbers (what samplers store in ``Result.diagnostics["scale_probe"]``)."""
        w = self.widths()
        lw = self.minima_widths
        return {"n_evaluations": int(self.n_evaluations), "n_minima": self.n_minima,
                "n_starts": int(self.n_starts), "n_converged": int(self.n_converged),
                "rounds": int(self.rounds), "hint_used": bool(self.hint_used),
                "receding": bool(self.receding),
                "prior_width_min": float(w.min()), "prior_width_max": float(w.max()),
                "local_width_min": float(lw.min()), "local_width_max": float(lw.max()),
                "minima_box_min": self.minima.min(0).values.tolist() if self.dim <= 8 else None,
                "minima_box_max": self.minima.max(0).values.tolist() if self.dim <= 8 else None,
                "narrowest_width": float(self.narrowest_width),
                "band_widened": bool(self.extra.get("band_widened", False)),
                "tail_growth": float(self.extra.get("tail_growth", math.inf)),
                "heavy_tail": self.heavy_tail,
                "mala_step_size": float(self.mala_step_size),
                "laplace_log_z": float(self.laplace_log_z)}


# ============================================================================ the probe
def probe_scale(target, *, n_starts: int = 64, max_rounds: int = 6, min_new: float = 0.05,
                radii=DEFAULT_RADII, widen: float = 1.5, n_hessians: int = 8,
                full_max_dim: int = 128, newton_max_dim: int = 16, polish_iter: int = 4,
                max_evaluations: int = 100_000, min_width: float = 1e-6, max_width: float = 1e3,
                max_iter: int = 400, use_prior_hint: bool = True,
                generator: "torch.Generator | None" = None, seed: int = 0,
                dtype=torch.float64) -> ScaleProbe:
    """Find the scale of a continuous target: minima, their widths, and a covering frame.

    Parameters
    ----------
    target : Energy on ``Reals(d)`` with ``energy`` and ``grad_energy``.
    n_starts : starts per round.
    max_rounds : search rounds (round 1 broad, later rounds from the covering Gaussian).
    min_new : stop when a round adds fewer than this fraction of its starts as new minima.
    radii : (smallest, largest) radius of the round-1 starts ``r xi``, log-spaced.
    widen : later rounds start from ``N(c, widen^2 C)``.
    n_hessians : distinct minima (lowest energy first) that get their own Hessian.
    full_max_dim : above this dimension only Hessian diagonals and per-coordinate spreads are
        used (``scale`` is then a (d,) vector).
    max_evaluations : no new round starts once this many states were evaluated.
    newton_max_dim : up to this dimension the descent is saddle-free Newton with a
        finite-difference Hessian (exact on quadratics at any conditioning); above it, L-BFGS
        followed (up to ``full_max_dim``) by ``polish_iter`` Newton iterations.
    min_width, max_width : clip of the harmonic widths (flat directions get ``max_width``).
    max_iter : descent iterations per start (L-BFGS at most 100 where Newton polishes).
    use_prior_hint : run in the frame of the target's own prior hint when it gives one.
    generator, seed : source of the random starts (``generator`` wins).
    dtype : evaluation dtype (float64 keeps the finite differences accurate).

    Returns
    -------
    ScaleProbe
    """
    from .domains import Reals
    from .energies.base import framed

    dom = getattr(target, "domain", None)
    if not isinstance(dom, Reals):
        raise TargetError(f"the scale probe needs a continuous target on Reals(d), got {dom!r}")
    for nm, v in (("n_starts", n_starts), ("max_rounds", max_rounds), ("n_hessians", n_hessians),
                  ("max_iter", max_iter)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{nm} must be a positive integer, got {v!r}")
    lo_r, hi_r = (float(r) for r in radii)
    if not (0 < lo_r <= hi_r and math.isfinite(hi_r)):
        raise ConfigError(f"radii must be (smallest, largest) with 0 < smallest <= largest, got {radii!r}")
    if not (0 < min_width < max_width):
        raise ConfigError(f"need 0 < min_width < max_width, got {min_width!r}, {max_width!r}")
    work, frame = framed(target, use_prior_hint)
    d = dom.dim
    dev = getattr(target, "device", torch.device("cpu"))
    dev = dev if isinstance(dev, torch.device) else torch.device("cpu")
    if generator is None:
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
    fn = _Counted(work)
    full = d <= full_max_dim
    lo_l, hi_l = 1.0 / max_width ** 2, 1.0 / min_width ** 2

    found_x, found_u, found_gamma = [], [], []
    total_starts = total_conv = 0
    reps = None
    metric_cov = None  # (d,) or (d, d) local covariance used to tell minima apart
    reach = far = 0.0  # the farthest start, and the farthest minimum, from the origin so far
    extents = []  # per round: the farthest distinct minimum from their mean
    for rnd in range(int(max_rounds)):
        if rnd == 0 or (frame is None and far > reach):
            # round 1, or a minimum beyond every start so far: the target is larger than the
            # search box, so search again out to three times that minimum's distance
            r0, r1 = (lo_r, hi_r) if rnd == 0 else (reach / math.sqrt(d), 3.0 * far / math.sqrt(d))
            r = torch.logspace(math.log10(r0), math.log10(r1), n_starts, dtype=dtype).to(dev)
            if frame is not None:  # in a hint's frame the target is near N(0, I)
                r = torch.ones(n_starts, dtype=dtype, device=dev)
            x0 = r[:, None] * _randn(generator, (n_starts, d), dev, dtype)
        else:
            # half from the widened covering Gaussian, half uniform in the widened box of the
            # minima found (which reaches the sparse corners of a mixture's box)
            c, sq = _covering(reps, metric_cov, full)
            n1 = n_starts // 2
            z = _randn(generator, (n1, d), dev, dtype)
            lo_b, hi_b = reps.min(0).values, reps.max(0).values
            loc_w = metric_cov.diagonal().sqrt() if full else metric_cov.sqrt()
            mid, half = 0.5 * (lo_b + hi_b), 0.5 * widen * (hi_b - lo_b) + 3.0 * loc_w
            uni = torch.rand(n_starts - n1, d, generator=generator, dtype=torch.float64,
                             device=generator.device).to(dev, dtype)
            x0 = torch.cat([c + widen * (z @ sq.T if full else z * sq), mid + half * (2 * uni - 1)])
        u0, _ = fn(x0)
        fin = torch.isfinite(u0)
        shrink = 0
        while not bool(fin.any()) and shrink < 4:  # e.g. a molecule that overlaps far out
            x0 = 0.1 * x0
            u0, _ = fn(x0)
            fin, shrink = torch.isfinite(u0), shrink + 1
        x0 = x0[fin]
        if x0.shape[0] == 0:
            raise TargetError(f"{getattr(target, 'name', target)}: the energy is not finite at any "
                              "probe start; give the target a prior_hint() or pass init_std")
        reach = max(reach, float(x0.norm(dim=-1).max()))
        polish = newton_max_dim < d <= full_max_dim
        x, u, g, conv, gamma = minimize(fn, x0, max_iter=min(max_iter, 100) if polish else max_iter,
                                        newton=d <= newton_max_dim, curvature_range=(lo_l, hi_l))
        if polish:  # a few Newton steps finish ill-conditioned L-BFGS
            fin = torch.isfinite(u)
            xf, uf, gf, cf, _ = minimize(fn, x[fin], max_iter=polish_iter, newton=True,
                                         curvature_range=(lo_l, hi_l))
            x[fin], u[fin], g[fin], conv[fin] = xf, uf, gf, cf | conv[fin]
        total_starts += x0.shape[0]
        total_conv += int(conv.sum())
        keep = torch.isfinite(u)
        if not bool(conv.any()) and rnd == 0:
            # no start reached a minimum: the energy may be unbounded below
            if bool((u[keep] < -1e12).any()) or not bool(keep.any()):
                raise TargetError(f"{getattr(target, 'name', target)}: no local minimum found "
                                  "(the energy decreases without bound); it is not normalizable")
        found_x.append(x[keep])
        found_u.append(u[keep])
        found_gamma.append(gamma[keep])
        allx, allu = torch.cat(found_x), torch.cat(found_u)
        if metric_cov is None:
            best = int(allu.argmin())
            gam = torch.cat(found_gamma)[best].clamp(min_width ** 2, max_width ** 2)
            h0 = hessian_fd(fn, allx[best:best + 1], 1e-3 * gam.sqrt())[0]
            metric_cov = _inv_psd(h0, lo_l, hi_l)
            if not full:
                metric_cov = metric_cov.diagonal().clone()
        n_before = 0 if reps is None else reps.shape[0]
        reps, rep_u = _distinct(allx, allu, metric_cov, full)
        extents.append(float((reps - reps.mean(0)).norm(dim=-1).max()))
        n_new = reps.shape[0] - n_before
        far = float(reps.norm(dim=-1).max())
        done = rnd > 0 and n_new < min_new * n_starts and not (frame is None and far > reach)
        if done or fn.n >= max_evaluations:
            break
    # a search stopped by its limits while each of its last two rounds spread the minima 1.3x
    # wider: they recede as far as it looks (periodic or flat directions: 1.5-6x per round;
    # GMM-40, many-well-32 and mixtures at any scale end at most 1.0x wider)
    receding = not done and len(extents) > 2 and all(
        b > 1.3 * a for a, b in zip(extents[-3:-1], extents[-2:]))
    # curvature at the lowest distinct minima; Newton polish there
    nh = min(int(n_hessians), reps.shape[0])
    step = 1e-3 * metric_cov.diagonal().sqrt().min() if full else 1e-3 * metric_cov.sqrt().min()
    hess = hessian_fd(fn, reps[:nh], step) if full else hessian_diag_fd(fn, reps[:nh], step)
    covs = []
    for i in range(nh):
        if full:
            ci = _inv_psd(hess[i], lo_l, hi_l)
            _, gi = fn(reps[i:i + 1])
            lam = torch.linalg.eigvalsh(0.5 * (hess[i] + hess[i].T))
            if bool((lam > 0).all()):  # a true minimum: one Newton step to its bottom
                xn = reps[i] - torch.linalg.solve(hess[i], gi[0])
                un, _ = fn(xn[None])
                if bool(torch.isfinite(un).all()) and float(un[0]) <= float(rep_u[i]):
                    reps[i], rep_u[i] = xn, un[0]
        else:
            ci = 1.0 / hess[i].abs().clamp(lo_l, hi_l)
        covs.append(ci)
    covs = torch.stack(covs)
    mean_cov = covs.mean(0)
    local = torch.cat([covs, mean_cov.expand(reps.shape[0] - nh, *mean_cov.shape)])
    widths = local.diagonal(dim1=1, dim2=2).sqrt() if full else local.sqrt()
    c, sq = _covering(reps, mean_cov, full)
    # the band and tail checks draw from their own stream: the caller's is left as it was
    check_gen = torch.Generator(device=generator.device).manual_seed(generator.initial_seed() + 104729)
    c, sq, checks = _cover_band(fn, reps, rep_u, mean_cov, c, sq, full, check_gen, dtype, n_starts=n_starts,
                                radii=(lo_r, max(hi_r, reach / math.sqrt(d))), frame=frame)
    checks["tail_growth"] = _tail_growth(fn, reps[int(rep_u.argmin())], sq, full, check_gen, dtype)
    # Laplace masses: -U_i + 1/2 log det(2 pi H_i^{-1})
    logdet = torch.linalg.slogdet(local)[1] if full else local.log().sum(-1)
    laplace = float(torch.logsumexp(-rep_u + 0.5 * logdet + 0.5 * d * math.log(2 * math.pi), 0))
    # narrowest harmonic width in the frame: smallest eigenvalue of S^-1 Sigma S^-T
    if full:
        sinv = torch.linalg.pinv(sq)
        narrow = float(torch.linalg.eigvalsh(sinv @ mean_cov @ sinv.T).clamp_min(0).min().sqrt())
    else:
        narrow = float((mean_cov.sqrt() / sq).min())
    narrow = min(max(narrow, 1e-12), 1.0)
    mala_h = 0.5 * narrow ** 2 * d ** (-1.0 / 3.0)
    log_det_add = 0.0
    if frame is not None:  # compose with the hint: x = loc + S_h (c + S z)
        reps = frame.to_x(reps.to(torch.float64))
        c = frame.to_x(c[None].to(torch.float64))[0]
        sh = frame.scale.to(dev, dtype)
        sh_m = torch.diag(sh) if sh.ndim == 1 else sh
        sq = sh_m @ (sq if full else torch.diag(sq))
        mean_cov = sh_m @ (mean_cov if full else torch.diag(mean_cov)) @ sh_m.T
        local = sh_m @ (local if full else torch.diag_embed(local)) @ sh_m.T
        widths = local.diagonal(dim1=1, dim2=2).sqrt()
        log_det_add = frame.log_det
    order = torch.argsort(rep_u)
    return ScaleProbe(centre=c.detach().cpu().double(), scale=sq.detach().cpu().double(),
                      minima=reps[order].detach().cpu().double(),
                      minima_energy=rep_u[order].detach().cpu().double(),
                      minima_widths=widths[order].detach().cpu().double(),
                      local_cov=mean_cov.detach().cpu().double(),
                      laplace_log_z=laplace + log_det_add, narrowest_width=narrow,
                      mala_step_size=mala_h, n_evaluations=int(fn.n), n_starts=total_starts,
                      n_converged=total_conv, rounds=rnd + 1, hint_used=frame is not None,
                      receding=receding,
                      extra={"lbfgs_gamma_median": float(torch.cat(found_gamma).median()),
                             "extents": extents, **checks})


def _randn(gen, shape, device, dtype) -> torch.Tensor:
    """Standard normals drawn in float64 on the generator's device (the same numbers on any
    device), then moved to ``device`` and ``dtype``."""
    return torch.randn(*shape, generator=gen, dtype=torch.float64, device=gen.device).to(device, dtype)


def _cover_band(fn, reps, rep_u, local_cov, c, sq, full, gen, dtype, *, n_starts: int, radii, frame,
                outside_limit: float = 0.1):
    """Where the mass lies that the Laplace picture misses. Descents from broad starts stop at
    their first point in the typical energy band ``U <= U_min + d/2 + 2 sqrt(d/2)`` (for a
    Gaussian that is inside its 99.9 % ellipsoid, so it adds nothing); a curved ridge (a
    banana's arms lie tens of local widths off its minimum's axes) or a long anharmonic arm
    is entered far from the minimum. When more than ``outside_limit`` of the band points lie
    outside the covering Gaussian's 99.9 % ellipsoid, the covering becomes the moments of
    minima and band points together, widened 1.5x. Returns ``(c, sq, summary)``."""
    from scipy.stats import chi2

    d, dev = reps.shape[1], reps.device
    band = float(rep_u.min()) + 0.5 * d + 2.0 * math.sqrt(0.5 * d)
    r = torch.logspace(math.log10(radii[0]), math.log10(radii[1]), n_starts, dtype=dtype).to(dev)
    if frame is not None:
        r = torch.full((n_starts,), 3.0, dtype=dtype, device=dev)
    x, u, *_ = minimize(fn, r[:, None] * _randn(gen, (n_starts, d), dev, dtype), newton=False, stop_below=band)
    pts = x[u <= band]
    if pts.shape[0] == 0:
        return c, sq, {"band_points": 0, "band_outside_fraction": 0.0, "band_widened": False}
    zz = torch.linalg.solve(sq, (pts - c).T).T if full else (pts - c) / sq
    frac = float(((zz * zz).sum(-1) > float(chi2.ppf(0.999, d))).double().mean())
    wide = frac > outside_limit
    if wide:  # widened by 1.5: the band stops short of the arms' tails
        c, sq = _covering(torch.cat([reps, pts]), local_cov, full)
        sq = 1.5 * sq
    return c, sq, {"band_points": int(pts.shape[0]), "band_outside_fraction": frac, "band_widened": wide}


def _tail_growth(fn, m, sq, full, gen, dtype, *, n_dirs: int = 16, radii=(10.0, 100.0)) -> float:
    """The smallest rise of the energy from ``radii[0] sqrt(d)`` to ``radii[1] sqrt(d)``
    covering widths out of the lowest minimum, over ``n_dirs`` random directions (a non-finite
    energy far out counts as an infinite rise). A Gaussian rises by ``d (r_1^2 - r_0^2) / 2``
    (thousands); a power-law tail ``|x|^-(d + nu)`` only by ``(d + nu) log(r_1 / r_0)``."""
    d = m.numel()
    e = _randn(gen, (n_dirs, d), m.device, dtype)
    e = math.sqrt(d) * e / e.norm(dim=-1, keepdim=True)  # past the typical radius sqrt(d)
    step = (e @ sq.T) if full else e * sq
    u0, _ = fn(m + radii[0] * step)
    u1, _ = fn(m + radii[1] * step)
    rise = torch.nan_to_num(u1 - u0, nan=math.inf, posinf=math.inf)
    rise = torch.where(torch.isfinite(u0) & torch.isfinite(u1), rise, torch.full_like(rise, math.inf))
    return float(rise.min())


def _covering(reps, local_cov, full):
    """Centre and square root of ``Cov(minima) + local_cov`` (matrix, or (d,) when diagonal)."""
    c = reps.mean(0)
    r = reps - c
    if full:
        return c, _sqrt_psd(r.T @ r / reps.shape[0] + local_cov)
    return c, ((r * r).mean(0) + local_cov).sqrt()


def _distinct(x, u, local_cov, full, radius: float = 0.5):
    """Greedy clustering, lowest energy first: a point within Mahalanobis distance ``radius``
    (in the harmonic metric ``local_cov^{-1}``) of a kept minimum is the same minimum."""
    order = torch.argsort(u)
    x, u = x[order], u[order]
    zz = x @ torch.linalg.cholesky(torch.linalg.inv(local_cov)) if full else x / local_cov.sqrt()
    close = (torch.cdist(zz, zz) <= radius).cpu()
    keep = torch.zeros(x.shape[0], dtype=torch.bool)
    for i in range(x.shape[0]):  # greedy over the probe's few hundred minima at most
        keep[i] = not bool((close[i] & keep).any())
    idx = keep.nonzero().flatten().to(x.device)
    return x[idx].clone(), u[idx].clone()


def probe_frame(target, *, generator: "torch.Generator | None" = None, **options):
    """The helper the continuous samplers call when the user gave no scale: probe ``target``
    and return ``(target in the probe's frame, the frame as a PriorHint, the ScaleProbe)``.

    ``options`` go to :func:`probe_scale`. The framed target is a
    :class:`~boltzkit.energies.base.FramedEnergy`, the same object a target-given hint
    produces, so samples, weights and log Z map back to ``x`` exactly as with a hint.
    """
    from .energies.base import FramedEnergy

    pr = probe_scale(target, generator=generator, **options)
    if pr.receding:
        e = pr.extra["extents"]
        raise TargetError(
            f"{getattr(target, 'name', target)}: the scale probe's minima kept receding (over its "
            f"{pr.rounds} search rounds they spread from {e[0]:.3g} to {e[-1]:.3g} about their "
            f"centre): the energy does not confine the states along some direction (a periodic "
            f"coordinate, a flat direction), so its mass on Reals({pr.dim}) is infinite, or spread "
            f"too wide for a covering frame (a funnel). Sample a "
            f"periodic energy on one period (boltzkit.energies.internal.TorusWindowedEnergy), "
            f"confine flat directions, or, if the target really is that wide, give it a "
            f"prior_hint() or pass init_std")
    if pr.heavy_tail:
        import warnings

        from .errors import UnreliableEstimateWarning

        warnings.warn(f"{getattr(target, 'name', target)}: {HEAVY_TAIL}", UnreliableEstimateWarning, stacklevel=3)
    hint = pr.hint()
    return FramedEnergy(target, hint), hint, pr
