r"""Training on SMC-resampled sub-trajectories (Sequential Controlled Langevin Diffusions).

Paper
-----
Chen, Richter, Berner, Blessing, Neumann & Anandkumar, "Sequential Controlled Langevin
Diffusions", ICLR 2025, arXiv 2412.07081. A controlled annealed Langevin sampler runs as SMC:
the path ``t_0 < ... < t_K`` is cut into ``S`` segments ``[t_a, t_b]``, the particles are
resampled (and optionally moved by MCMC) at each segment boundary, and the control is trained
with a log-variance loss on each segment, started from the resampled (detached) particles. Their
reference code learns the backward kernel too; boltzkit's NAAS keeps its fixed reverse-ULA
backward kernel (so the sampler's weights, ``sample`` and ``sample_smc`` are unchanged) and
learns the forward control only.

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
(:func:`segment_log_weights`, :func:`segment_log_variance`). The states are held fixed, so rows
from older controls (a replay buffer) are valid inputs: the log-variance loss needs no
reparametrization and no importance weights.

Failure modes
-------------
* With a fixed backward kernel no control makes ``log w_s`` constant in general: the best
  forward kernel leaves a weight that depends on the start point (through the segment's value
  function at ``t_a``), so the loss does not go to zero, and its minimizer depends on the law
  of the rows (resampled particles of recent controls) -- it minimizes exactly the spread of the
  increments that the SMC's resampling sees, which is what sets its ESS, not a path KL.
* Variance over a few rows per segment is noisy; a segment whose increments are heavy-tailed
  (many-well-32 early on) dominates the mean; gradients are clipped by norm.
* A mode that no particle reaches in the training SMC pass gets no rows and no training signal,
  as in any on-policy scheme; resampling concentrates the rows on the modes the particles hold.
"""

from __future__ import annotations

import torch

__all__ = ["segment_log_weights", "segment_log_variance"]


def segment_log_weights(const: torch.Tensor, resid: torch.Tensor, shift: torch.Tensor,
                        var: torch.Tensor) -> torch.Tensor:
    """``log w = const + sum_k |r_k - m_k|^2 / (2 var_k)`` for rows of stored segments.

    ``const`` (R,) float64: the control-free part of the segment log-weight (``log gamma_b -
    log gamma_a + sum log B_k + sum (n_dof / 2) log(2 pi var_k)``); ``resid`` (R, L, D): the
    residuals ``r_k`` of the reference step; ``shift`` (R, L, D): the control's shift ``m_k`` of
    the forward mean (carries the gradient); ``var`` (R, L) or (L,): the forward step variances.
    Returns float64 (R,), differentiable through ``shift``.
    """
    quad = (resid - shift).pow(2).sum(-1) / (2.0 * var)
    return const + quad.sum(-1).to(torch.float64)


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
