r"""Training on SMC-resampled sub-trajectories (Sequential Controlled Langevin Diffusions).

Paper
-----
Chen, Richter, Berner, Blessing, Neumann & Anandkumar, "Sequential Controlled Langevin
Diffusions", ICLR 2025, arXiv 2412.07081. A controlled annealed Langevin sampler runs as SMC:
the path ``t_0 < ... < t_K`` is cut into ``S`` segments ``[t_a, t_b]``, the particles are
resampled (and optionally moved by MCMC) at each segment boundary, and the control is trained
with a log-variance loss on each segment, started from the resampled (detached) particles. As in
their reference code (the CMCD parametrization) the backward kernel can be learned too, with the
same network and the opposite sign (:func:`controlled_backward`): NAAS's default under
``train_on="smc"``; ``scld_backward="fixed"`` (and PDNS, whose Brownian-bridge backward starts
with a Dirac kernel) keep the fixed backward kernel and learn the forward control only.

Objective
---------
For a segment ``s = [a, b]`` with start points ``x_a`` (resampled, detached) and stored states
``x_{a..b}`` (detached), the segment's incremental SMC log-weight under control ``theta`` is

    log w_s(theta) = log gamma_b(x_b) - log gamma_a(x_a) + sum_{k=a}^{b-1} [log B_k(x_k | x_{k+1})
                     - log q^theta_k(x_{k+1} | x_k)],

and the loss is the mean over segments of its variance over the segment's rows,

    L(theta) = (1 / S) sum_s Var_{rows of s}[ log w_s(theta) ].

For an Euler-Maruyama kernel whose control shifts the mean by ``m_k(theta)``,
``-log q^theta_k = |r_k - m_k(theta)|^2 / (2 var_k) + const`` with ``r_k = x_{k+1} - x_k -
h_k b_k(x_k)`` the residual of the reference drift, so a stored row needs ``(x_k, r_k)`` and one
constant; the loss costs network passes only, no energy evaluations
(:func:`segment_loss`, :func:`segment_log_variance`). The states are held fixed, so rows
from older controls (a replay buffer) are valid inputs: the log-variance loss needs no
reparametrization and no importance weights.

Failure modes
-------------
* With a fixed backward kernel no control makes ``log w_s`` constant in general: the best
  forward kernel leaves a weight ``int gamma_b prod_k B_k / gamma_a(x_a)`` that depends on the
  start point (for reverse-ULA kernels, about ``gamma_{k+1}(x_k) / gamma_k(x_k)`` per step: the
  annealing increment itself, which no forward control can flatten), so the loss stays above
  zero and only the discretization and lag part of the spread is removable. A learned backward
  kernel lifts this bound (the forward and backward drifts can then transport the particles
  with the annealing), at one more network pass per step.
* Variance over a few rows per segment is noisy; a segment whose increments are heavy-tailed
  (many-well-32 early on) dominates the mean; gradients are clipped by norm.
* A mode that no particle reaches in the training SMC pass gets no rows and no training signal,
  as in any on-policy scheme; resampling concentrates the rows on the modes the particles hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ...errors import ConfigError
from ...estimators.importance import ess_kish
from ...nn.buffers import ReplayBuffer
from ...nn.sde import euler_maruyama
from .smc import resample_islands

__all__ = ["SegmentRun", "segment_rollout", "segment_loss", "segment_log_variance",
           "controlled_backward", "control_shift", "check_smc_config", "segment_buffer",
           "SCLD_BUFFER_ITERATIONS"]

SCLD_BUFFER_ITERATIONS = 4  # the segment buffer holds this many training passes' rows by default


def check_smc_config(cfg) -> None:
    """Check the SMC and SCLD options of a NAAS or PDNS config: ``resample_ess`` (None or a
    fraction in (0, 1]), ``n_islands``, ``smc_mcmc_steps``, ``train_on``, ``scld_segments``
    (with ``train_on="smc"`` a divisor of ``n_time_steps``) and ``scld_buffer_size``."""
    from ..base import check_choice, check_count, check_number

    check_number("resample_ess", cfg.resample_ess, allow_none=True, upper=1)
    check_count("n_islands", cfg.n_islands)
    check_count("smc_mcmc_steps", cfg.smc_mcmc_steps, minimum=0)
    check_choice("train_on", cfg.train_on, ("paths", "smc"))
    check_count("scld_segments", cfg.scld_segments)
    check_count("scld_buffer_size", cfg.scld_buffer_size, allow_none=True)
    n_time_steps, n_segments = cfg.n_time_steps, cfg.scld_segments
    if cfg.train_on == "smc" and n_time_steps % n_segments:
        raise ConfigError(
            f"train_on='smc' cuts the path into scld_segments={n_segments} segments of "
            f"equal length, so n_time_steps={n_time_steps} must be a multiple of it; e.g. "
            f"scld_segments={math.gcd(n_time_steps, n_segments)} or n_time_steps="
            f"{n_segments * max(1, round(n_time_steps / n_segments))}")


def segment_buffer(batch_size: int, n_segments: int, size: "int | None") -> ReplayBuffer:
    """The replay buffer of segment rows: ``size`` rows, by default
    ``SCLD_BUFFER_ITERATIONS`` passes of ``batch_size`` particles x ``n_segments`` segments."""
    return ReplayBuffer(SCLD_BUFFER_ITERATIONS * batch_size * n_segments if size is None else size,
                        replace=True)


@dataclass
class SegmentRun:
    """Output of :func:`segment_rollout`: ``rows`` (one per particle and segment: ``x``
    ((L + 1) * D) the states ``x_a..x_b``, ``r`` (L * D) the residuals of the reference step,
    with a learned backward kernel ``br`` (L * D) the residuals of the fixed backward kernel,
    ``c`` (float64) the control-free part of the segment log-weight (``log gamma_b - log gamma_a
    + sum_k (n_dof / 2) log(2 pi var_k)`` plus ``sum_k log B_k``, of a learned backward kernel
    only its normalizers), ``seg`` the segment index), ``log_w`` (S, n) the segments' actual
    incremental log-weights, ``start`` (S, n, D) the segments' start points (resampled after the
    first), ``x`` the final particles, ``log_z`` the pass's SMC estimate, ``ess_frac`` the mean
    ESS fraction of the segment increments."""

    rows: dict
    log_w: torch.Tensor
    start: torch.Tensor
    x: torch.Tensor
    log_z: float
    ess_frac: float


@torch.no_grad()
def segment_rollout(x: torch.Tensor, log_g: torch.Tensor, ts: torch.Tensor, n_segments: int, *,
                    ref_drift: "Callable | None", control: Callable, noise_var: Callable, backward: Callable,
                    log_gamma: Callable, generator, project=None, n_dof: "int | None" = None,
                    rejuvenate: "Callable | None" = None, on_nonfinite: "Callable | None" = None,
                    backward_control: "Callable | None" = None) -> SegmentRun:
    """One SMC pass along the controlled path ``x_{k+1} = x_k + h_k [b(t_k, x_k) + c(t_k, x_k)] +
    sqrt(var_k) eps``, cut into ``n_segments`` equal segments, resampled (systematic, one
    population) at every segment boundary and optionally moved there by ``rejuvenate``.

    ``x`` (n, D) and ``log_g`` (n,) float64: the start particles (exact draws of ``gamma_0``)
    and ``log gamma_0`` there; ``ref_drift(t, x)`` the control-free drift ``b`` (None: zero);
    ``control(t, x)`` the control's drift ``c``; ``noise_var(t, t_next)`` the step variance;
    ``backward`` the backward kernels (:mod:`boltzkit.nn.sde` convention); ``log_gamma(k, x)``
    the intermediate targets (float64); ``rejuvenate(k, x, carry, generator) -> (x, carry)``
    with ``carry = (log gamma_k,)`` (:func:`~boltzkit.samplers._shared.smc.run_islands`'s
    convention); ``on_nonfinite(message)`` raises when a state is not finite;
    ``backward_control(t, t_next, x_next)``, when given, is a learned backward drift (see
    :func:`controlled_backward`).
    """
    n, K = x.shape[0], ts.numel() - 1
    L = K // n_segments
    lw = torch.zeros(n, dtype=torch.float64, device=x.device)
    log_acc = torch.zeros(1, dtype=torch.float64, device=x.device)
    rows, incs, starts, ess = [], [], [], []
    learned = None if backward_control is None else controlled_backward(backward, backward_control, project)
    for s in range(n_segments):
        a, b = s * L, (s + 1) * L
        refs, brefs = [], []

        def drift(t, y, refs=refs):  # records the (projected) control-free drift of each step
            d = torch.zeros_like(y) if ref_drift is None else ref_drift(t, y)
            refs.append(d if project is None else project(d))
            return d + control(t, y)

        def back(t, t_next, y, y_next, brefs=brefs):  # records the fixed kernels' residuals
            shift, var = backward(t, t_next, y, y_next)
            if backward_control is not None:
                brefs.append(((y - y_next) - shift, var))
                return learned(t, t_next, y, y_next)
            return shift, var

        mv = euler_maruyama(drift, None, x, ts[a:b + 1], generator=generator, project=project, n_dof=n_dof,
                            noise_var=noise_var, backward=back, record=True)
        if not bool(torch.isfinite(mv.x).all()) and on_nonfinite is not None:
            on_nonfinite("non-finite states in the SCLD training SMC pass")
        log_g_new = log_gamma(b, mv.x)
        inc = log_g_new - log_g + mv.log_bwd - mv.log_fwd
        dof = x.shape[1] if n_dof is None else n_dof
        log_norm = sum(0.5 * dof * math.log(2 * math.pi * noise_var(float(ts[k]), float(ts[k + 1])))
                       for k in range(a, b))
        h = torch.diff(ts[a:b + 1]).to(x.device, x.dtype)
        resid = mv.xs[1:] - mv.xs[:-1] - h[:, None, None] * torch.stack(refs)
        row = {"x": mv.xs.transpose(0, 1).reshape(n, -1), "r": resid.transpose(0, 1).reshape(n, -1),
               "c": log_g_new - log_g + mv.log_bwd + log_norm,
               "seg": torch.full((n,), s, dtype=torch.long, device=x.device)}
        if backward_control is not None:  # the backward quadratic terms are recomputed by the loss
            row["br"] = torch.stack([r for r, _ in brefs]).transpose(0, 1).reshape(n, -1)
            row["c"] = log_g_new - log_g + log_norm - sum(0.5 * dof * math.log(2 * math.pi * v) for _, v in brefs)
        rows.append(row)
        incs.append(inc)
        starts.append(x)
        ess.append(ess_kish(inc) / n)
        lw = lw + inc
        x, log_g = mv.x, log_g_new
        if s < n_segments - 1:  # frac 1: every boundary resamples (unless all weights are equal)
            (x, log_g), lw, log_acc, _ = resample_islands((x, log_g), lw, log_acc, 1.0, generator)
            if rejuvenate is not None:
                x, (log_g,) = rejuvenate(b, x, (log_g,), generator)
    return SegmentRun(rows={k: torch.cat([r[k] for r in rows]) for k in rows[0]}, log_w=torch.stack(incs),
                      start=torch.stack(starts), x=x,
                      log_z=float(log_acc[0] + torch.logsumexp(lw, 0) - math.log(n)),
                      ess_frac=sum(ess) / n_segments)


def controlled_backward(backward: Callable, backward_control: Callable, project=None) -> Callable:
    """Backward kernels with a learned drift subtracted from the fixed kernels' mean (the CMCD /
    SCLD form, one network in both directions with opposite signs):
    ``B_k = N(x_{k+1} + shift_k - h_k c_B(t_k, t_{k+1}, x_{k+1}), var^B_k)``; still normalized,
    so path weights stay unbiased for Z for any ``c_B``. The fixed kernels need positive
    variances (a Dirac kernel cannot be shifted)."""

    def back(t, t_next, x, x_next):
        shift, var = backward(t, t_next, x, x_next)
        if not var > 0:
            raise ValueError("a learned backward drift needs backward kernels with positive variance")
        d = backward_control(t, t_next, x_next)
        return shift - (t_next - t) * (d if project is None else project(d)), var

    return back


def control_shift(net, times: torch.Tensor, scale: torch.Tensor, project=None) -> Callable:
    """``shift(k, x) = scale_k net(times_k, x)`` (projected) at level indices ``k``: the control's
    shift of the Gaussian kernels' means, as :func:`segment_loss` takes it."""

    def shift(k, x):
        v = net(times[k], x)
        return scale[k, None] * (v if project is None else project(v))

    return shift


def segment_loss(rows: dict, shift: Callable, n_segments: int, seg_len: int, var: torch.Tensor, *,
                 bshift: "Callable | None" = None, bvar: "torch.Tensor | None" = None) -> torch.Tensor:
    """The SCLD loss of stored segment ``rows`` (:class:`SegmentRun` rows): the mean over
    segments of the variance of their log-weights, recomputed under the current control.

    ``shift(k, x) -> (R * L, D)``: the control's shift ``h_k c(t_k, x)`` of the forward mean
    (projected) at level indices ``k`` (R * L,) and states ``x`` (R * L, D), differentiable in
    the network's parameters; ``var`` (K,): the forward step variances of all levels. With a
    learned backward kernel (rows with ``br``), ``bshift(k, x_next)`` is its shift
    ``h_k c_B(t_{k+1}, x_{k+1})`` and ``bvar`` (K,) its variances. A row's log-weight is
    ``c + sum_k |r_k - m_k|^2 / (2 var_k)`` (``m_k`` the shift; ``- sum_k |r^B_k + m^B_k|^2 /
    (2 var^B_k)`` more with the learned backward kernel, ``r^B_k`` the stored ``br``).
    """
    seg = rows["seg"]
    R, L = seg.shape[0], seg_len
    k = (seg[:, None] * L + torch.arange(L, device=seg.device)).reshape(-1)
    D = rows["x"].shape[1] // (L + 1)
    xs = rows["x"].view(R, L + 1, D)
    m = shift(k, xs[:, :-1].reshape(R * L, D)).view(R, L, D)
    quad = (rows["r"].view(R, L, D) - m).pow(2).sum(-1) / (2.0 * var.to(m)[k].view(R, L))
    if "br" in rows:
        mb = bshift(k, xs[:, 1:].reshape(R * L, D)).view(R, L, D)
        quad = quad - (rows["br"].view(R, L, D) + mb).pow(2).sum(-1) / (2.0 * bvar.to(m)[k].view(R, L))
    return segment_log_variance(rows["c"] + quad.sum(-1).to(torch.float64), seg, n_segments)


def segment_log_variance(log_w: torch.Tensor, segment: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Mean over the segments present of the within-segment variance of ``log_w`` (R,),
    rows labelled by ``segment`` (R,) in ``[0, n_segments)``; segments with fewer than two rows
    are left out. Differentiable through ``log_w``."""
    seg = segment.to(torch.long)
    cnt = torch.bincount(seg, minlength=n_segments).to(log_w.dtype)
    mean = torch.zeros(n_segments, dtype=log_w.dtype, device=log_w.device).index_add(0, seg, log_w)
    mean = mean / cnt.clamp_min(1.0)
    dev2 = (log_w - mean[seg]).pow(2)
    var = torch.zeros_like(mean).index_add(0, seg, dev2) / (cnt - 1.0).clamp_min(1.0)
    used = cnt > 1
    if not bool(used.any()):
        return (log_w * 0.0).sum()
    return var[used].mean()
