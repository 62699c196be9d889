r"""Discrete ASBS: the discrete adjoint Schrödinger bridge sampler.

Paper: W. Guo, Y. Zhu, X. Du, J. Nam, Y. Chen, R. Gómez-Bombarelli, G.-H. Liu, M. Tao,
J. Choi, "Discrete Adjoint Schrödinger Bridge Sampler", ICML 2026, arXiv:2602.08243
(reference code: AlexandreGUO2001/DASBS, read for understanding only).

What it does. A configuration of D sites with q values each is read as an element of the
cyclic group Z_q^D. A uniform reference CTMC (every site jumps to each other value at rate
``gamma(t)/q``; :mod:`boltzkit.nn.cyclic`) is translation invariant on that
group, so adjoint matching carries over from continuous space. A time-conditioned
*controller* ``log phi_t(x)`` (B, D, q) multiplies the reference rates; a time-free
*corrector* ``log phihat(x)`` is the terminal Schrödinger-bridge potential ratio. Starting
from x_0 drawn from a source (uniform on Z_q^D, or uniform over the q constant
configurations), the controlled chain should end at x_1 ~ pi = exp(-U) / Z.

Objective (Bregman ``D_F(a || b) = a log(a/b) - a + b`` on rates, F = t log t), fitted on a
replay buffer of EMA-controller trajectories (x_0, x_1) with bridge states x_t:

    controller (adjoint matching):  min E_{t, x_t ~ bridge(x_0, x_1)} w(x_0, x_1) sum_{d, n != x_t^d}
        D_F( phi_1^tgt(x_1)_{d, (n + x_1^d - x_t^d) mod q} || phi_t(x_t)_{d, n} ),
        log phi_1^tgt(x) = [U(x) - U(x^{d <- n})] - log phihat(x)_{d, n};
    corrector:  min E w(x_0, x_1) sum_{d, n != x_1^d} D_F( 1 / phi_{t_0}(x_0)_{d, (n + x_0^d - x_1^d) mod q}
        || phihat(x_1)_{d, n} )   (uniform source, so its discrete score is 0;
        ``corrector_loss="dm"`` for the delta source),

with w = B softmax(log w) over the batch (``use_weights``) or 1. The controller target is the
exact discrete score of the target (minus the corrector) read at the group-translated value,
so no gradient or kernel score of the reference is needed. ASBS alternates the two fits
(``n_stages`` x (``controller_steps`` + ``corrector_steps``), a fresh buffer per phase, each
network set to its EMA at the end of its phase); ``controller_loss="dm"`` /
``corrector_loss="dm"`` select the denoising-matching variants (targets ``p^r_{1|t}`` ratios,
``t <= 1 - dm_eps``), ``corrector_loss="none"`` keeps the corrector at 0 and
``corrector_loss="closed_form"`` (default, see below) fixes it to the discrete score of the
reference's terminal law, exact for the delta source on shift-invariant targets.

Returns. :meth:`DiscreteASBS.sample` returns a :class:`~boltzkit.result.Result` with samples
in the domain's physical representation and the *exact* float64 path log-weights

    log w = -U(x_1) - log p^r_1(x_1)
            + sum_k [log p^r_{k+1|k}(x_{k+1} | x_k) - log p^u_{k+1|k}(x_{k+1} | x_k)],

for which ``E[w] = Z`` whatever the controller and the step count (``p^r_1 = q^-D`` for the
uniform source, which is stationary; closed form for the delta source; brief section 2.4),
so log Z +- stderr and the ESS come
from :func:`boltzkit.result.result_from_log_weights` exactly as for MDNS. ``history`` holds per
step the loss, the warm-up energy factor, and the ESS fraction and log Z estimate of the latest
buffer batch w.r.t. the true target, also during the warm-up (as MDNS's). Diagnostics include
the network evaluations per sample, the fraction of capped tau-leaping rows, jumps per site,
wall times, and the energy cost: ``energy_evaluations`` counts every configuration passed to
the target's ``energy`` for this result, training (one per buffered trajectory, plus
``1 + D (q - 1)`` per discrete score on energies without closed-form local fields) and this
sampling call (one per sample); ``train_score_evals`` counts the discrete scores (closed-form
local fields on ``Ising`` / ``Potts``, about one energy's work each).

Choices where the paper / brief leave details open (and why)
------------------------------------------------------------
* Exact weights instead of the paper's continuous-time Girsanov proxy: the proxy is exact only
  at the optimum and carries time-discretization error; ours is unbiased for any controller.
* Tau-leaping uses the exact reference move probability ``(1 - exp(-Gamma_k)) / q`` per step
  instead of ``Gamma_k / q``, so ``phi = 1`` reproduces the reference kernel exactly (then
  ``log w = -U(x_1) + D log q``). Rows whose jump probability would exceed ``max_jump`` are
  scaled down (and counted) rather than frozen: the step stays a valid kernel with full
  support, so the weights stay exact (freezing, as in the reference code, biases them).
* Default source, reference and corrector (chosen by :func:`resolve_source`). On Ising
  without field and Potts (targets invariant under the global shift ``x -> x + c``): the
  delta source, the paper's log-linear schedule (``g = 1``, ``alpha = 0.5``, total noise
  ``Gamma(0, 1) = log 3``) and the *closed-form corrector* ``corrector_loss="closed_form"``.
  For a delta source and a shift-invariant target the Schrödinger-bridge potential on the q
  source states is constant, so the corrector ``phihat = K^T a`` is proportional to the
  reference's terminal law ``p^r_1``, known in closed form: no corrector network, no
  alternation, and the controller's fixed point *is* the bridge, whose exact weights are then
  constant (ESS ceiling 1 for any noise level; with the corrector left at 0 instead, the
  ceiling is 0.21 on 4x4 Ising and 0.31 on 3x3 Potts q=3 at beta_c). With less total noise
  the optimal rates are closer to the reference, so tau-leaping is more accurate: with the
  exact controller and K = 50 steps, the ESS is 0.98 (delta, ``Gamma = log 3``) vs 0.89
  (uniform, ``Gamma = log 21``) on 4x4 Ising and 0.98 vs 0.88 on 3x3 Potts q=3 at beta_c
  (Sinkhorn on the full state space). Measured after 600 steps (2-core CPU, batch
  128, K = 50, 10^4 samples, seed 0): ESS 0.93 vs 0.75 on 4x4 Ising beta_c, 0.91 vs 0.61 on
  3x3 Potts q=3 beta_c, against the previous default (uniform source, ``alpha = 0.05``, no
  corrector). ``alpha = 1`` gave 0.94 / 0.95 there but 0.65 vs 0.81 on 6x6 Ising, so the
  paper's 0.5 stays.
* Other targets (fields, generic energies, sequences): the uniform source with
  ``alpha = 0.05`` (``Gamma = log 21 = 3.04``). The exact weights compare the sampler with
  the reference bridge *backwards from x_1*, so with a uniform source and an x_1 that
  remembers x_0, even the exact Schrödinger bridge has ESS < 1. Computed by Sinkhorn on the
  full state space (``benchmarks/discrete_asbs_lattice.py``), this ceiling is 0.89 / 0.51 /
  0.39 on 4x4 Ising at beta = 0.28 / 0.4407 / 0.6 with ``Gamma = log 3`` and above 0.999 with
  ``Gamma = 3`` (measured: uniform source with ``alpha = 0.5`` reached ESS 0.42 on 4x4 Ising
  beta_c). With ``Gamma = 3`` the exact corrector is within ``O(e^-Gamma)`` of 0, which
  ``"closed_form"`` (0 for the uniform source) uses; training a corrector only adds noise to
  the controller's target. Measured (2-core CPU, Ising 3x3 beta = 0.6, 300 controller steps, K
  = 20): ESS 0.56 without the corrector vs 0.12 with 2 x (150 + 30) alternation; on 4x4 Ising
  beta = 0.28 (unweighted losses) 0.84 vs 0.78 at 600 controller steps. Use
  ``corrector_loss="tm"`` or ``"dm"`` with ``n_stages > 1`` to run the paper's alternation
  (``"dm"`` with the delta source, as the paper does at critical and low temperature).
* Importance-weighted losses by default (``use_weights=True``; the paper's default is
  unweighted) and a temperature warm-up (``warmup_steps=200`` from 0.3): on cold targets the
  unweighted adjoint-matching fixed-point iteration is unstable. Targets computed on
  off-equilibrium x_1 (many high-energy sites) average to rates far above the reference's, the
  controller jumps ever more, and the weights collapse (observed: jumps per site 1.4 -> 12 in
  50 steps on Ising 3x3 beta = 0.6, and a log Z estimate 30 nats low with batch 256 x 16
  replicates). Self-normalized weights make the regression target the target path measure's
  conditional mean; the warm-up keeps them informative while the controller catches up.
* Controller network: the shared site networks of :mod:`boltzkit.nn.discrete_nets` (``net="auto"``:
  ``SiteCNN`` on periodic lattices, else ``SiteTransformer``) with their optional time input
  (``time_conditioned=True``; t scaled by 1000, as in the paper). The corrector is the same
  network without time. Outputs are soft-clamped to ``log_phi_max * tanh(. / log_phi_max)``
  (float32 exp cannot overflow; brief pitfall 2.9).
* Source (``source=``): ``"uniform"`` (the paper's ``beta_init = 0``), ``"delta"``, uniform
  over the q constant configurations (``beta_init = inf``, used by the paper at critical and
  low temperature), or ``"auto"`` (see above). With the delta source the exact weights divide
  by the closed-form reference terminal law ``p^r_1(x_1) = q^-1 sum_c B^{n_c} A^{D - n_c}``
  (n_c = number of sites equal to c) instead of ``q^-D``, so they stay unbiased. Its
  discrete score is infinite, so corr-TM is refused.
* The uniform kernel only asks whether a site changed, so it is invariant under every
  permutation of a site's values: any bijection sending x_t^d to n gives a valid target (the
  exact fixed-point test finds the cyclic translation and its reflection equally right). We use
  the cyclic translation, the paper's choice (needed for its general translation-invariant
  kernels).

Measured
--------
``benchmarks/discrete_asbs_lattice.py`` (2 shared CPU cores, 1 thread, seed 0, 10^4 samples,
DASBS batch 128 and K = 50; MDNS with its defaults for 600 steps sets the wall-time and
energy budgets; errors are estimate - exact with the estimator's own stderr):

==========================  ================  ======================  ======================
target (exact log Z)        MDNS              DASBS, equal time       DASBS, equal evals
==========================  ================  ======================  ======================
Ising 6x6 beta_c (34.1115)  ESS 0.942         ESS 0.823 (2820 st.)    ESS 0.764 (1200 st.)
                            err +.002+-.002   err -.0005+-.0046       err -.004+-.006
  previous default                            ESS 0.724, -.015+-.006  ESS 0.641, +.004+-.007
Potts q=3 4x4 beta_c        ESS 0.884         ESS 0.826 (940 st.)     ESS 0.770 (1200 st.)
(34.1726)                   err -.008+-.004   err -.008+-.005         err +.004+-.005
  previous default                            ESS 0.271, +.027+-.016  ESS 0.308, -.001+-.015
Ising 4x4 beta_c (15.5219)  ESS 0.954         ESS 0.932 (960 st.)     ESS 0.919 (1200 st.)
                            err -.003+-.002   err -.005+-.003         err +.001+-.003
  previous default                            ESS 0.751, +.001+-.006  ESS 0.778, -.000+-.005
Potts q=3 3x3 beta_c        ESS 0.963         ESS 0.930 (820 st.)     ESS 0.956 (1200 st.)
(19.6889)                   err +.001+-.002   err +.000+-.003         err -.003+-.002
  previous default                            ESS 0.600, +.007+-.008  ESS 0.544, +.001+-.009
==========================  ================  ======================  ======================

MDNS trained 217 s (Ising 6x6), 48 s (Potts 4x4), 24 s (Ising 4x4) and 14 s (Potts 3x3);
<|m|> and G(r) of every run agree with a long Swendsen-Wang reference (6x6, 4x4 Potts) or
exact enumeration within about one of their standard errors (|m| errors 3e-4 to 5e-3), and
on the enumerable lattices the weighted-histogram TV to the exact pmf is the same for both
methods (0.15 / 0.12, dominated by the 10^4-sample noise). So at equal training cost discrete
ASBS reaches log Z and observables of the same accuracy; its ESS is close to MDNS's on the
small lattices (0.92-0.96 vs 0.95-0.96) but lower at the larger sizes (0.82-0.83 vs
0.88-0.94), i.e. it needs more samples there for the same error bar. Measured against pi,
the training curves (batch ESS, ``*_cpu_ising6.png``) show no early lead of DASBS either.
The previous default (uniform source, ``alpha = 0.05``) is shown for comparison.

Where it pays (``benchmarks/discrete_asbs_regime.py``; critical Ising / Potts, one thread of a
shared 2-core CPU, defaults of both samplers; cost to reach ESS/N >= 0.1 and a log Z error
within min(0.1, 3 stderr) with stderr <= 0.1 at N = 512, training + sampling, against the
exact log Z; medians of 3 seeds at q = 2, 3 with L = 4, one seed elsewhere; energy
evaluations counted on the target, a closed-form discrete score counted as one):

=================  =======  =========================  ========================  ==================
q, L (log2 |X|)    method   energy evals (black-box)   CPU-s to target           SMC (lattice)
=================  =======  =========================  ========================  ==================
2, 4 (16)          MDNS     2312                       7.3                       21896 evals, 0.2 s
2, 4 (16)          DASBS    3848 (20232)               17.8
3, 4 (25)          MDNS     5512                       14.6                      35336 evals, 0.3 s
3, 4 (25)          DASBS    5000 (45960)               23.0
4, 4 (32)          MDNS     7688                       30.3                      28808 evals, 0.3 s
4, 4 (32)          DASBS    5128 (78856)               27.2
2, 6 (36)          MDNS     5000                       70                        32264 evals, 0.4 s
2, 6 (36)          DASBS    3976 (50056)               76
8, 4 (48)          both     not reached                cap 40 (log Z low 2-4)    32264 evals, 0.4 s
3, 6 (57)          both     not reached                cap 90                    73736 evals, 0.7 s
2, 8 (64)          both     not reached                cap 160 (stderr 0.12)     138248 evals, 0.7 s
=================  =======  =========================  ========================  ==================

So a crossover in the paper's direction shows up only in energy evaluations and only where
the discrete score is closed form: DASBS needed 1.7x MDNS's evaluations on 4x4 Ising (every
seed), about the same on 4x4 Potts q = 3 (0.9x; 4488-5128 vs 5000-6024 over seeds) and
0.67x / 0.80x on 4x4 Potts q = 4 and 6x6 Ising (one seed each; the checkpoints resolve
about 25 %). In CPU time it was never clearly cheaper (0.9-2.4x MDNS's), and with a
black-box energy (every score costs ``1 + D (q - 1)`` energies, in brackets) it needs 8-10x
MDNS's evaluations. Neither reached the target on the largest spaces within the CPU budget.
Lattice SMC reached the same target with 4-10x more lattice passes but 30-210x less CPU time
than either; at the neural methods' evaluation budgets it cannot run at all (its smallest run,
64 particles, already uses 18-27 thousand passes).

Sampling alone (untrained networks, q = 2, CPU seconds per sample): DASBS's K = 50 full
network passes cost 8.8x / 3.7x / 1.9x / 0.9x MDNS's D one-site passes at L = 4 / 8 / 12 /
16. On a CPU a full pass costs about D site evaluations, so DASBS's sampling grows like D and
MDNS's (receptive-field passes) like D^2; they cross near 16 x 16 (D = 256). Per effective
sample after training DASBS was 5-39x slower up to 6 x 6 and 4x at 8 x 8. The paper's regime
(D well above K, every pass parallel over sites) is therefore a GPU regime or lattices of
16 x 16 and beyond; the sites are updated in parallel here as in the paper (checked: one
controller pass per tau-leaping step for all sites).

Known failure modes (brief 2.9)
-------------------------------
* Too few time steps: near t = 1 the optimal rates approach ``exp(beta * max local dE)`` (e^8beta
  for an Ising spin surrounded by opposite spins); capped rows (``capped_frac``) and a falling
  ESS mean ``n_time_steps`` should grow. The weights stay unbiased, only noisier.
* Uniform source with a weak total noise (``alpha = 0.5``): x_1 remembers x_0 and the exact
  weights have an ESS ceiling below 1 even at the exact bridge, which shrinks exponentially
  with D: raise ``noise_scale`` or lower ``noise_alpha`` (the ``"auto"`` default does).
* Delta source on a target that is *not* shift invariant (a field, a generic energy, forced
  with ``source="delta"``): the closed-form corrector is then only approximate, the q source
  states reach the target with different potentials ``h_0(c)``, and the weights (still exact)
  vary with x_0: the ESS can drop by up to a factor q. Use the uniform source (``"auto"``
  does) or a trained corrector (``corrector_loss="dm"``, ``n_stages > 1``).
* Mode collapse at low temperature (one of the two Ising ordered states) still gives a high
  self-normalized ESS; log Z is then low by about log 2. Compare with an exact value.
* Training is slow and noisy compared with MDNS at equal cost: each regression target is one
  draw of x_1 given x_t (large variance at early t), the paper uses 8192 rows per step. With
  ``use_weights=False`` cold targets can blow up (see above); with weights, a degenerate batch
  (ESS of a few samples) makes the step follow those few paths. The self-normalized ESS and
  error bar are themselves estimates (Pareto k > 0.7 is flagged).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from .. import distributed as dist
from .._registry import register
from ..domains import Categorical
from ..energies.base import index_energy
from ..errors import ConfigError
from ..estimators.importance import log_z_from_log_weights
from ..result import Result, result_from_log_weights
from ..nn.buffers import ReplayBuffer
from ..nn.cyclic import (SOURCES, CyclicPath, cyclic_rollout, log_c, make_noise, sample_bridge,
                             sample_source, shift_index, source_log_terminal,
                             source_log_terminal_score)
from ..nn.ctmc import PRECISIONS, amp_dtype, autocast_net
from ..nn.discrete_nets import discrete_net_from_config
from ..nn.ema import EMA
from .._utils import check_fraction, check_training_options
from .base import SamplerConfig, TrainableSampler, check_choice, check_count, check_number
from .smc import NeuralStartSMC

__all__ = ["DiscreteASBS", "DiscreteASBSConfig", "log_discrete_score", "score_energy_cost", "bregman_divergence",
           "controller_tm_target", "corrector_tm_target", "resolve_source", "shift_invariant"]

BREGMAN = ("tlogt", "-logt", "t2")
CORRECTOR_LOSSES = ("tm", "dm", "none", "closed_form")


# ============================================================================ target pieces
def log_discrete_score(energy, x: torch.Tensor, *, chunk: int = 2**15) -> torch.Tensor:
    """``log pi(x^{d <- n}) - log pi(x) = U(x) - U(x^{d <- n})`` for every site and value.

    Parameters
    ----------
    energy : an energy on a :class:`~boltzkit.domains.Categorical` domain.
    x : int64 (B, D) index configurations (sites flattened row-major).
    chunk : most configurations per energy call in the generic path.

    Returns
    -------
    float64 (B, D, q); the entry at the current value of each site is 0.

    Notes
    -----
    Energies with a ``local_log_ratios(x)`` hook (``Ising``, ``Potts``) give them in closed
    form; any other energy is evaluated on all ``D (q - 1)`` single-site changes.
    """
    dom = energy.domain
    b, d, q = x.shape[0], dom.n_sites, dom.q
    hook = getattr(energy, "local_log_ratios", None)  # closed form where the target offers it
    if callable(hook):
        return hook(x)
    score = torch.zeros(b, d, q, dtype=torch.float64, device=x.device)
    u0 = index_energy(energy, x)
    eye = torch.eye(d, dtype=torch.long, device=x.device)
    rows_per_call = max(1, chunk // d)
    for k in range(1, q):
        for s in range(0, b, rows_per_call):
            xs = x[s:s + rows_per_call]
            moved = torch.remainder(xs.unsqueeze(1) + k * eye, q)  # (b', D, D): row d moves site d
            u = index_energy(energy, moved.reshape(-1, d)).view(xs.shape[0], d)
            score[s:s + rows_per_call].scatter_(-1, torch.remainder(xs + k, q).unsqueeze(-1),
                                                (u0[s:s + rows_per_call, None] - u).unsqueeze(-1))
    return score


def score_energy_cost(energy) -> int:
    """Energy evaluations (configurations passed to ``energy.energy``) that one
    :func:`log_discrete_score` row costs: 0 where the energy gives closed-form local log-ratios
    (``local_log_ratios`` hook), else ``1 + D (q - 1)`` (the configuration and its single-site
    changes)."""
    if callable(getattr(energy, "local_log_ratios", None)):
        return 0
    return 1 + energy.domain.n_sites * (energy.domain.q - 1)


def bregman_divergence(log_a: torch.Tensor, log_b: torch.Tensor, kind: str = "tlogt") -> torch.Tensor:
    """Elementwise Bregman divergence ``D_F(a || b)`` of positive rates given as logs.

    ``"tlogt"``: ``a log(a/b) - a + b``; ``"-logt"``: ``a/b - log(a/b) - 1``; ``"t2"``: ``(a - b)^2``.
    """
    if kind == "tlogt":
        a = log_a.exp()
        return a * (log_a - log_b - 1.0) + log_b.exp()
    if kind == "-logt":
        r = log_a - log_b
        return r.exp() - r - 1.0
    if kind == "t2":
        return (log_a.exp() - log_b.exp()) ** 2
    raise ConfigError(f"unknown Bregman function {kind!r}; choose one of {', '.join(BREGMAN)}")


def controller_tm_target(terminal: torch.Tensor, x1: torch.Tensor, xt: torch.Tensor, q: int) -> torch.Tensor:
    """Adjoint-matching target for ``log phi_t(x_t)``: the terminal target read at the
    group-translated value, ``terminal[d, (n + x1^d - xt^d) mod q]``.

    Parameters
    ----------
    terminal : (B, D, q) ``log phi_1^tgt(x_1) = log discrete score(x_1) - log phihat(x_1)``.
    x1, xt : int64 (B, D) end point and bridge state.
    """
    return terminal.gather(-1, shift_index(xt, x1, q))


def corrector_tm_target(log_phi0: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, q: int) -> torch.Tensor:
    """Target for ``log phihat(x_1)`` under a uniform source: ``-log phi_{t0}(x_0)`` read at the
    group-translated value ``(n + x0^d - x1^d) mod q``."""
    return (-log_phi0).gather(-1, shift_index(x1, x0, q))


def shift_invariant(energy) -> bool:
    """True for targets known to be invariant under the global shift ``x -> x + c`` (mod q):
    lattice models (``lattice_model()`` hook) that are Potts, or Ising without field; other
    energies are not inspected."""
    hook = getattr(energy, "lattice_model", None)
    if not callable(hook):
        return False
    model = hook()
    return model.kind == "potts" or (model.kind == "ising" and model.h == 0.0)


def resolve_source(energy, source: str = "auto", corrector_loss: str = "closed_form",
                   noise_alpha: "float | None" = None) -> "tuple[str, float]":
    """The (source, noise_alpha) that :class:`DiscreteASBS` uses for ``energy``: ``source="auto"``
    is ``"delta"`` for shift-invariant targets (:func:`shift_invariant`) unless
    ``corrector_loss="tm"`` (which needs a finite source score), else ``"uniform"``;
    ``noise_alpha=None`` is 0.5 for the delta source and 0.05 for the uniform source (the module
    notes give the reasons)."""
    if source == "auto":
        source = "delta" if shift_invariant(energy) and corrector_loss != "tm" else "uniform"
    if noise_alpha is None:
        noise_alpha = 0.5 if source == "delta" else 0.05
    return source, float(noise_alpha)


# ============================================================================ networks
class _SoftClamp(nn.Module):
    """``m * tanh(net(x, ...) / m)``: smooth bound on log-rates (float32 exp never overflows).

    Extra positional arguments (the time of a time-conditioned site network) are passed on.
    """

    def __init__(self, net: nn.Module, bound: float):
        super().__init__()
        self.net, self.bound = net, float(bound)

    def forward(self, x, *args):
        return self.bound * torch.tanh(self.net(x, *args) / self.bound)


# ============================================================================ config
@dataclass(frozen=True, kw_only=True)
class DiscreteASBSConfig(SamplerConfig):
    """Options of :class:`DiscreteASBS`.

    Attributes
    ----------
    n_stages : number of (controller phase, corrector phase) alternations.
    controller_steps, corrector_steps : optimizer steps per phase. ``n_steps`` defaults to
        ``n_stages * (controller_steps + corrector_steps)``; training continues the same
        alternation beyond it if asked.
    batch_size : trajectories per buffer refresh and (x_0, x_1) pairs per optimizer step.
    n_replicates : bridge times drawn per pair and step.
    buffer_size : FIFO capacity (reset at the start of every phase).
    init_buffer_size : trajectories simulated at the start of a phase (None = batch_size).
    resample_every : optimizer steps between EMA-controller refreshes of the buffer.
    n_time_steps : tau-leaping steps K (network evaluations per trajectory).
    noise, noise_scale, noise_alpha : reference schedule, ``"log_linear"`` (rate
        ``g / (alpha + t)``) or ``"const"`` (rate ``g``). ``noise_alpha=None``: 0.5 with the
        delta source, 0.05 with the uniform source (:func:`resolve_source`).
    t0 : start time of the grid (the paper's memoryless runs use 0.01 with alpha = 0.01).
    source : law of x_0, ``"uniform"``, ``"delta"`` or ``"auto"`` (default; see the module notes
        and :func:`resolve_source`); ``"delta"`` cannot be used with ``corrector_loss="tm"``.
    controller_loss : ``"tm"`` (adjoint / target matching, default) or ``"dm"``.
    corrector_loss : ``"tm"``, ``"dm"``, ``"none"`` (corrector fixed at 0) or
        ``"closed_form"`` (default): no corrector network; the controller's terminal target
        subtracts the discrete score of the reference's terminal law ``p^r_1``
        (:func:`~boltzkit.nn.cyclic.source_log_terminal_score`; see the module notes).
    bregman : ``"tlogt"`` (default), ``"-logt"`` or ``"t2"``.
    dm_eps : DM losses draw ``t`` in ``[t0, 1 - dm_eps (1 - t0)]``.
    use_weights : weight each pair's loss by ``B softmax(log w)`` (the paper's ``use_log_rnd``).
    warmup_steps, warmup_start : temperature warm-up: during the first ``warmup_steps`` steps
        the energy (terminal weights and discrete scores of the buffer) is multiplied by a
        factor rising linearly from ``warmup_start`` to 1 (needed for cold targets).
    lr, weight_decay, grad_clip : AdamW settings (``grad_clip=None`` disables clipping).
    ema_decay : EMA of both networks; the EMA controller generates the buffer and the samples,
        and each network is set to its EMA at the end of its phase.
    net, hidden, n_layers, n_heads, absolute_positions : the site network, "auto", "cnn" or
        "transformer", and its size (:func:`~boltzkit.nn.discrete_nets.make_discrete_net`).
    log_phi_max : soft bound on the network outputs (log-rates).
    max_jump : cap on a site's jump probability per tau-leaping step.
    sample_batch_size : trajectories per chunk in :meth:`DiscreteASBS.sample`.
    precision : network arithmetic, "auto" (bf16 autocast on CUDA, float32 on CPU), "float32" or
        "bf16"; the weights stay exact at any precision (:class:`~boltzkit.nn.ctmc.AutocastNet`).
    """

    n_stages: int = 1
    controller_steps: int = 1000
    corrector_steps: int = 100
    batch_size: int = 128
    n_replicates: int = 4
    buffer_size: int = 512
    init_buffer_size: "int | None" = None
    resample_every: int = 20
    n_time_steps: int = 50
    noise: str = "log_linear"
    noise_scale: float = 1.0
    noise_alpha: "float | None" = None
    t0: float = 0.0
    source: str = "auto"
    controller_loss: str = "tm"
    corrector_loss: str = "closed_form"
    bregman: str = "tlogt"
    dm_eps: float = 0.01
    use_weights: bool = True
    warmup_steps: int = 200
    warmup_start: float = 0.3
    lr: float = 3e-3
    weight_decay: float = 0.0
    grad_clip: "float | None" = 10.0
    ema_decay: float = 0.999
    net: str = "auto"
    hidden: int = 32
    n_layers: "int | None" = None
    n_heads: int = 2
    absolute_positions: "bool | None" = None
    log_phi_max: float = 30.0
    max_jump: float = 0.99
    sample_batch_size: int = 1024
    precision: str = "auto"

    def __post_init__(self):
        for name in ("n_stages", "controller_steps", "n_replicates", "buffer_size",
                     "resample_every", "n_time_steps", "hidden", "n_heads", "sample_batch_size"):
            check_count(name, getattr(self, name))
        check_count("batch_size", self.batch_size, minimum=2)
        check_count("n_layers", self.n_layers, allow_none=True)
        check_count("corrector_steps", self.corrector_steps, minimum=0)
        check_count("init_buffer_size", self.init_buffer_size, allow_none=True)
        if self.buffer_size < self.batch_size:
            raise ConfigError(f"buffer_size ({self.buffer_size}) must be >= batch_size "
                              f"({self.batch_size}); each step draws batch_size pairs from it")
        check_choice("noise", self.noise, ("log_linear", "const"))
        check_number("noise_scale", self.noise_scale)
        check_number("noise_alpha", self.noise_alpha, allow_none=True)
        check_fraction("t0", self.t0)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("controller_loss", self.controller_loss, ("tm", "dm"))
        check_choice("corrector_loss", self.corrector_loss, CORRECTOR_LOSSES)
        check_choice("source", self.source, ("auto",) + SOURCES)
        if self.source == "delta" and self.corrector_loss == "tm":
            raise ConfigError("source='delta' has an infinite discrete score, so the corrector's target "
                              "matching is undefined; use corrector_loss='closed_form', 'dm' or 'none'")
        check_choice("bregman", self.bregman, BREGMAN)
        for name in ("dm_eps", "max_jump"):  # in (0, 1)
            check_fraction(name, getattr(self, name))
            check_number(name, getattr(self, name))
        check_count("warmup_steps", self.warmup_steps, minimum=0)
        check_number("warmup_start", self.warmup_start, upper=1)
        check_training_options(self)
        check_number("weight_decay", self.weight_decay, allow_zero=True)
        check_choice("net", self.net, ("auto", "transformer", "cnn"))
        check_number("log_phi_max", self.log_phi_max)

    @property
    def phase_lengths(self) -> "tuple[int, int]":
        """(controller, corrector) steps per stage; the corrector phase is empty for 'none'."""
        trained = self.corrector_loss in ("tm", "dm")
        return self.controller_steps, (self.corrector_steps if trained else 0)


# ============================================================================ sampler
@register("discrete_asbs", kinds=("energy",), domains=(Categorical,), priority=6,
          paper="Guo et al. 2026, arXiv 2602.08243",
          pays="lattices with closed-form local fields (Ising, Potts) when energy evaluations are the "
               "budget: to a fixed log Z target it used 0.7-0.9x MDNS's evaluations on 4x4 Potts q=3,4 and "
               "6x6 Ising (1.7x on 4x4 Ising) but never less CPU time, and lattice SMC was 30-200x faster; "
               "its parallel sampling matches MDNS's one-site passes only near 16x16 on a CPU (a GPU regime "
               "below that); a black-box energy costs 1 + D(q-1) evaluations per score (8-10x MDNS's)")
class DiscreteASBS(NeuralStartSMC, TrainableSampler):
    """Discrete adjoint Schrödinger bridge sampler for categorical (lattice, sequence) energies.

    Examples
    --------
    >>> import boltzkit as bk
    >>> res = bk.sample(bk.energies.Ising(L=4, beta=0.3), method="discrete_asbs",
    ...                 n_samples=4000, seed=0)                      # doctest: +SKIP
    >>> res.log_z, res.log_z_stderr, res.ess                         # doctest: +SKIP
    """

    Config = DiscreteASBSConfig

    def default_n_steps(self) -> int:
        return self.config.n_stages * sum(self.config.phase_lengths)

    # ------------------------------------------------------------------ setup
    def _setup(self, target) -> None:
        dom = self._categorical_domain(target, "discrete ASBS")
        cfg = self.config
        self.source, self.noise_alpha = resolve_source(target, cfg.source, cfg.corrector_loss,
                                                       cfg.noise_alpha)
        self.noise = make_noise(cfg.noise, cfg.noise_scale, self.noise_alpha)
        self.times = torch.linspace(cfg.t0, 1.0, cfg.n_time_steps + 1, dtype=torch.float64,
                                    device=self.device)
        with self._seeded_init():  # network init from the sampler's own stream
            self.controller = _SoftClamp(discrete_net_from_config(dom, cfg, time_conditioned=True),
                                         cfg.log_phi_max).to(self.device)
            self.corrector = _SoftClamp(discrete_net_from_config(dom, cfg), cfg.log_phi_max).to(self.device)
        self._amp = amp_dtype(cfg.precision, self.device)
        nets = (self.controller, self.corrector)
        self.opt_controller, self.opt_corrector = (
            torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay) for net in nets)
        self.ema_controller, self.ema_corrector = (EMA(net, cfg.ema_decay) for net in nets)
        self.buffer = ReplayBuffer(cfg.buffer_size)
        self.n_energy_evals = self.n_score_evals = 0
        self._batch_stats: dict = {}

    # ------------------------------------------------------------------ pieces
    def phase(self, step: "int | None" = None) -> "tuple[int, str, int, int]":
        """(stage, "controller" | "corrector", index within the phase, phase length) of a step."""
        step = self.step if step is None else step
        c, k = self.config.phase_lengths
        stage, pos = divmod(step, c + k)
        return (stage, "controller", pos, c) if pos < c else (stage, "corrector", pos - c, k)

    def energy_scale(self, step: "int | None" = None) -> float:
        """Temperature warm-up factor multiplying the energy at training ``step``."""
        cfg, step = self.config, self.step if step is None else step
        return (1.0 if step >= cfg.warmup_steps  # also without warm-up (warmup_steps=0)
                else cfg.warmup_start + (1.0 - cfg.warmup_start) * step / cfg.warmup_steps)

    def rollout(self, controller, n: int, *, generator, scale: float = 1.0
                ) -> "tuple[CyclicPath, torch.Tensor]":
        """``n`` trajectories of ``controller`` from the source: (CyclicPath, float64 log w).

        ``scale`` multiplies the energy (temperature warm-up); the weights target
        ``exp(-scale U)``: ``log w = -scale U(x_1) - log p^r_1(x_1) + log p^r(path) - log p^u(path)``.
        """
        path, lw, u = self._rollout(controller, n, generator=generator)
        return path, lw + (1.0 - scale) * u

    def _rollout(self, controller, n: int, *, generator
                 ) -> "tuple[CyclicPath, torch.Tensor, torch.Tensor]":
        """(CyclicPath, float64 log w for the true target, float64 energies U(x_1))."""
        cfg = self.config
        x0 = sample_source(self.source, n, self.n_sites, self.q, generator=generator, device=self.device)
        path = cyclic_rollout(self._net(controller), x0, self.times, self.noise, self.q, generator=generator,
                              max_jump=cfg.max_jump)
        log_p1 = source_log_terminal(self.source, path.x1, self.noise.integral(cfg.t0, 1.0), self.q)
        u = index_energy(self.target, path.x1)
        return path, -u - log_p1 + path.log_ratio, u

    def _refill(self, phase: str, gen) -> None:
        scale = self.energy_scale()
        path, lw_target, u = self._rollout(self.ema_controller.shadow, self.config.batch_size, generator=gen)
        lw = lw_target + (1.0 - scale) * u  # the weights of the warm-up target exp(-scale U)
        self.n_energy_evals += len(path)
        extras = {"x0": path.x0}
        if phase == "controller" and self.config.controller_loss == "tm":
            extras["score"] = (scale * log_discrete_score(self.target, path.x1)).float()
            self.n_score_evals += len(path)
            self.n_energy_evals += len(path) * score_energy_cost(self.target)  # generic energies
        self.buffer.add(path.x1, lw, **extras)
        est = log_z_from_log_weights(lw_target, warn=False)  # w.r.t. the true target, as MDNS's
        rows = len(path) * self.n_sites * (len(self.times) - 1)
        self._batch_stats = {"ess_frac": est.ess_frac, "log_z": est.log_z, "log_z_stderr": est.stderr,
                             "capped_frac": path.n_capped / rows,
                             "jumps_per_site": float(path.n_jumps.mean()) / self.n_sites}

    def _net(self, net):
        """``net`` under the configured autocast (itself in float32)."""
        return autocast_net(net, self.device, self._amp)

    def _bridge(self, batch: dict, n_rep: int, gen, *, dm: bool):
        """(x_1, t, x_t, Gamma(t, 1)) at ``n_rep`` bridge times per buffered pair (x_0, x_1), t
        uniform on [t0, 1] (``dm``: on [t0, 1 - dm_eps (1 - t0)])."""
        cfg = self.config
        x0, x1 = batch["x0"].repeat_interleave(n_rep, 0), batch["samples"].repeat_interleave(n_rep, 0)
        t_max = 1.0 - cfg.dm_eps * (1.0 - cfg.t0) if dm else 1.0
        t = cfg.t0 + (t_max - cfg.t0) * torch.rand(x0.shape[0], generator=gen, device=self.device,
                                                   dtype=torch.float64)
        gt1 = self.noise.integral(t, 1.0)
        return x1, t, sample_bridge(x0, x1, self.noise.integral(cfg.t0, t), gt1, self.q, generator=gen), gt1

    def _dm_target(self, a: torch.Tensor, b: torch.Tensor, gt1: torch.Tensor) -> torch.Tensor:
        """Denoising-matching target ``(1[a^d != n] - 1[a^d != b^d]) log c(Gamma(t, 1))``."""
        n = torch.arange(self.q, device=self.device)
        ind = (a.unsqueeze(-1) != n).float() - (b != a).float().unsqueeze(-1)
        return ind * log_c(gt1, self.q).float().view(-1, 1, 1)

    def _loss(self, target, log_rates, x, batch: dict, n_rep: int) -> torch.Tensor:
        """Mean Bregman divergence of ``log_rates`` from ``target`` over the values n != x^d,
        each pair weighted by ``B softmax(log w)`` over every rank's batch (``use_weights``)."""
        keep = x.unsqueeze(-1) != torch.arange(self.q, device=self.device)
        div = bregman_divergence(target.float(), log_rates, self.config.bregman)
        per_row = (div * keep).sum(dim=(1, 2)) / (self.n_sites * self.q)
        if self.config.use_weights:
            lw = batch["log_weights"]
            per_row = per_row * (lw.shape[0] * dist.softmax_across_ranks(lw)).float().repeat_interleave(n_rep)
        return per_row.mean()

    def controller_loss(self, batch: dict, gen) -> torch.Tensor:
        """Adjoint (target) matching or denoising matching loss of the controller."""
        cfg, q, r = self.config, self.q, self.config.n_replicates
        x1, t, xt, gt1 = self._bridge(batch, r, gen, dm=cfg.controller_loss == "dm")
        if cfg.controller_loss == "tm":
            target1 = batch["score"]  # (B, D, q)
            if cfg.corrector_loss in ("tm", "dm"):
                with torch.no_grad():
                    target1 = target1 - self._net(self.corrector)(batch["samples"])
            elif cfg.corrector_loss == "closed_form":
                target1 = target1 - source_log_terminal_score(
                    self.source, batch["samples"], self.noise.integral(cfg.t0, 1.0), q).float()
            target = controller_tm_target(target1.repeat_interleave(r, 0), x1, xt, q)
        else:  # log p^r_{1|t}(x1 | xt^{d<-n}) - log p^r_{1|t}(x1 | xt)
            target = self._dm_target(x1, xt, gt1)
        return self._loss(target, self._net(self.controller)(xt, t.float()), xt, batch, r)

    def corrector_loss(self, batch: dict, gen) -> torch.Tensor:
        """Target matching or denoising matching loss of the corrector."""
        cfg, n_rep = self.config, 1
        if cfg.corrector_loss == "tm":
            x0, x1 = batch["x0"], batch["samples"]
            with torch.no_grad():
                t0 = torch.full((x0.shape[0],), float(cfg.t0), device=self.device)
                target = corrector_tm_target(self._net(self.controller)(x0, t0), x0, x1, self.q)
        else:  # log p^r_{1|t}(x1^{d<-n} | xt) - log p^r_{1|t}(x1 | xt)
            n_rep = cfg.n_replicates
            x1, _, xt, gt1 = self._bridge(batch, n_rep, gen, dm=True)
            target = self._dm_target(xt, x1, gt1)
        return self._loss(target, self._net(self.corrector)(x1), x1, batch, n_rep)

    # ------------------------------------------------------------------ training
    def train_step(self) -> dict:
        cfg, gen = self.config, self.gens["train"]
        stage, phase, i, length = self.phase()
        net, ema, opt, loss_fn = {
            "controller": (self.controller, self.ema_controller, self.opt_controller, self.controller_loss),
            "corrector": (self.corrector, self.ema_corrector, self.opt_corrector, self.corrector_loss)}[phase]
        if i == 0:
            self.buffer.clear()
            for _ in range(max((cfg.init_buffer_size or cfg.batch_size) // cfg.batch_size, 1)):
                self._refill(phase, gen)
        elif i % cfg.resample_every == 0:
            self._refill(phase, gen)
        net.train()
        loss = loss_fn(self.buffer.sample(cfg.batch_size, generator=gen), gen)
        self._optimizer_step(net, opt, loss, grad_clip=cfg.grad_clip, ema=ema)
        if i == length - 1:  # end of the phase: the network continues from its EMA
            net.load_state_dict(ema.shadow.state_dict())
        out = {"loss": float(loss.detach()), "stage": stage, "phase": float(phase == "corrector"),
               **self._batch_stats}
        if cfg.warmup_steps:
            out["energy_scale"] = self.energy_scale()
        return out

    # ------------------------------------------------------------------ state
    components = ("controller", "corrector", "opt_controller", "opt_corrector", "ema_controller",
                  "ema_corrector", "buffer")

    def _extra_state(self) -> dict:
        return {"n_energy_evals": self.n_energy_evals, "n_score_evals": self.n_score_evals,
                "batch_stats": {k: float(v) for k, v in self._batch_stats.items()}}

    def _load_extra_state(self, state: dict) -> None:
        self.n_energy_evals = int(state["n_energy_evals"])
        self.n_score_evals = int(state["n_score_evals"])
        self._batch_stats = dict(state["batch_stats"])

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample_paths(self, n_samples: int, *, generator: "torch.Generator | None" = None
                     ) -> "tuple[CyclicPath, torch.Tensor]":
        """Raw trajectories of the EMA controller, in chunks: (CyclicPath, float64 log w)."""
        self._require_fit()
        gen = self.gens["sample"] if generator is None else generator
        paths, lws = self._chunked(lambda m: self.rollout(self.ema_controller.shadow, m, generator=gen),
                                   n_samples)
        joined = CyclicPath(torch.cat([p.x0 for p in paths]), torch.cat([p.x1 for p in paths]),
                            torch.cat([p.log_ratio for p in paths]), sum(p.n_capped for p in paths),
                            torch.cat([p.n_jumps for p in paths]))
        return joined, torch.cat(lws)

    def _smc_proposal(self, n: int, generator) -> "tuple[torch.Tensor, torch.Tensor, torch.Tensor]":
        """:meth:`sample_smc` (SMC over inverse temperature started from these paths; see
        :class:`~boltzkit.samplers.smc.NeuralStartSMC`): (flat index x_1, float64 U(x_1), float64
        path log-weights); U is read back from the weight, no second energy evaluation."""
        path, lw = self.sample_paths(n, generator=generator)
        log_p1 = source_log_terminal(self.source, path.x1, self.noise.integral(self.config.t0, 1.0), self.q)
        return path.x1, -lw - log_p1 + path.log_ratio, lw

    def sample(self, n_samples: int) -> Result:
        """Draw ``n_samples`` weighted samples from the trained (EMA) controller.

        Parameters
        ----------
        n_samples : number of samples (>= 2).
        """
        self._require_fit()
        check_count("n_samples", n_samples, minimum=2)
        t_start = time.perf_counter()
        path, lw = self.sample_paths(n_samples)
        k = len(self.times) - 1
        diag = {"n_time_steps": k, "nfe_per_sample": k, **self._train_diagnostics(),
                "sample_wall_time_s": time.perf_counter() - t_start,
                "train_energy_evals": self.n_energy_evals, "train_score_evals": self.n_score_evals,
                "sample_energy_evals": n_samples,
                "energy_evaluations": self.n_energy_evals + n_samples,
                "capped_frac": path.n_capped / (n_samples * self.n_sites * k),
                "jumps_per_site": float(path.n_jumps.mean()) / self.n_sites,
                "reference_total_noise": float(self.noise.integral(self.config.t0, 1.0)),
                "source": self.source, "noise_alpha": self.noise_alpha}
        samples = self.domain.decode_flat(path.x1)
        return result_from_log_weights(samples, lw, diagnostics=diag, **self._result_kwargs())
