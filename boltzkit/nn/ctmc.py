"""The masked (absorbing-state) CTMC on categorical configurations.

State: D sites, each holding a value in ``0..q-1`` or the mask token ``q``. The generative
process starts fully masked and reveals sites until none is masked. When every masked site
unmasks at the same total rate, the order of unmasking is a uniform random permutation and
the time schedule only decides *how many* sites are revealed per network evaluation. We
therefore simulate it exactly as random-order autoregressive sampling in ``K`` blocks:

1. draw an order sigma (uniform permutation) per sample;
2. at step k, evaluate the network once on the current partial configuration and draw the
   values of the next ``n_k`` sites of sigma independently from their per-site conditionals.

``K = D`` (one site per step) is exact any-order autoregressive sampling; ``K < D`` reveals
several sites from one forward pass (a linear masking schedule on a K-point time grid). In
both cases the path probability of the draw is tractable,

    log q(x | sigma) = sum_k sum_{d in block k} log s_theta(x_<k)_{d, x_d},

so ``log w = -U(x) - log q(x | sigma)`` is an exact log importance weight on the extended
space of (order, values): ``E[exp(log w)] = Z`` exactly, whatever K and whatever the network.
No ``-log q`` per step constant is involved.

This module holds the pieces shared by masked-diffusion samplers (MDNS, PDNS, TR2-D2): block
schedules, batched rollouts, teacher-forced path log-likelihoods (with a memory-bounded backward
pass) and the random re-masking of the weighted denoising cross-entropy (WDCE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch.nn import functional as F

from ..errors import ConfigError

__all__ = ["unmask_schedule", "site_log_probs", "logits_at", "autocast_net", "MaskedPath", "masked_rollout", "path_log_prob",
           "backward_path_log_prob", "remask", "wdce_loss"]


def unmask_schedule(n_sites: int, n_steps: "int | None" = None) -> "list[int]":
    """Number of sites revealed at each of ``n_steps`` steps (equal blocks, sums to n_sites).

    ``None`` means one site per step (``n_sites`` steps). Larger blocks come first when the
    division is not exact.
    """
    k = n_sites if n_steps is None else int(n_steps)
    if not 1 <= k <= n_sites:
        raise ConfigError(f"the number of unmasking steps must be in [1, {n_sites}] (the number "
                          f"of sites), got {n_steps!r}")
    base, extra = divmod(n_sites, k)
    return [base + (1 if i < extra else 0) for i in range(k)]


@dataclass
class MaskedPath:
    """One batch of generated paths.

    Attributes
    ----------
    x : int64 (B, D) final configuration (index representation, flattened sites).
    order : int64 (B, D) permutation; ``order[b, j]`` is the j-th site revealed.
    log_q : float64 (B,) path log-probability ``log q(x | order)`` under the sampling network.
    blocks : number of sites revealed per step.
    """

    x: torch.Tensor
    order: torch.Tensor
    log_q: torch.Tensor
    blocks: "list[int]"

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @classmethod
    def join(cls, paths: "list[MaskedPath]", blocks: "list[int]") -> "MaskedPath":
        """The batches ``paths`` (drawn with the same ``blocks``) as one batch, in order."""
        return cls(*(torch.cat([getattr(p, k) for p in paths]) for k in ("x", "order", "log_q")), blocks)


def gather_sites(logits: torch.Tensor, sites: torch.Tensor) -> torch.Tensor:
    """The rows (B, k, q) of per-site ``logits`` (B, D, q) at ``sites`` (B, k)."""
    return logits.gather(1, sites.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))


def site_log_probs(logits: torch.Tensor, sites: torch.Tensor) -> torch.Tensor:
    """float64 log-probabilities (B, k, q) of the rows of ``logits`` at ``sites`` (B, k)."""
    return F.log_softmax(gather_sites(logits, sites).double(), dim=-1)


def draw_sites(logp: torch.Tensor, generator: torch.Generator) -> "tuple[torch.Tensor, torch.Tensor]":
    """One reveal step: values (B, k) drawn from the float64 log-probabilities ``logp`` (B, k, q)
    of k sites, and the log-probability (B,) of the values drawn (summed over the sites)."""
    values = torch.multinomial(logp.exp().reshape(-1, logp.shape[-1]), 1, generator=generator)
    values = values.view(logp.shape[:-1])
    return values, logp.gather(-1, values.unsqueeze(-1)).squeeze(-1).sum(-1)


def logits_at(net: Callable, tokens: torch.Tensor, sites: torch.Tensor) -> torch.Tensor:
    """Logits (B, k, q) of ``net`` at ``sites`` (B, k): ``net(tokens)`` gathered there.

    A network may provide the hook ``net.site_logits(tokens, sites)`` that computes only the
    requested sites' logits (e.g. :meth:`SiteCNN.site_logits
    <boltzkit.nn.discrete_nets.SiteCNN.site_logits>`, on the receptive field of
    each site); otherwise the whole configuration is evaluated and gathered.
    """
    hook = getattr(net, "site_logits", None)
    return hook(tokens, sites) if hook is not None else gather_sites(net(tokens), sites)


class AutocastNet:
    """``net`` evaluated under ``torch.autocast(dtype)`` with float32 logits out.

    Reduced-precision networks (bf16 on a GPU) keep the path weights exact: the rollout draws
    from, and scores with, the same float64 log-softmax of the logits actually produced. The
    :func:`logits_at` hook is forwarded. ``dtype=None`` returns ``net`` itself (see
    :func:`autocast_net`).
    """

    def __init__(self, net: Callable, device_type: str, dtype: torch.dtype):
        self.net, self.device_type, self.dtype = net, device_type, dtype

    def __call__(self, tokens, *args):
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.net(tokens, *args)
        return out.float()

    def site_logits(self, tokens, sites):
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = logits_at(self.net, tokens, sites)
        return out.float()


PRECISIONS = ("auto", "float32", "bf16")


def amp_dtype(precision: str, device) -> "torch.dtype | None":
    """The autocast dtype of a ``precision`` option (:data:`PRECISIONS`): bf16 for "bf16", and
    for "auto" on CUDA; None (float32) otherwise."""
    bf16 = precision == "bf16" or (precision == "auto" and torch.device(device).type == "cuda")
    return torch.bfloat16 if bf16 else None


def autocast_net(net: Callable, device, dtype: "torch.dtype | None") -> Callable:
    """``net`` under autocast to ``dtype`` on ``device`` (``None``: ``net`` unchanged)."""
    return net if dtype is None else AutocastNet(net, torch.device(device).type, dtype)


@torch.no_grad()
def masked_rollout(net: Callable, n: int, n_sites: int, q: int, *, generator: torch.Generator,
                   n_steps: "int | None" = None, device="cpu") -> MaskedPath:
    """Simulate the masked CTMC from all-masked to fully revealed, batched over ``n`` paths.

    Parameters
    ----------
    net : callable ``tokens (B, D) -> logits (B, D, q)``; the token ``q`` is the mask.
    n, n_sites, q : batch size, number of sites D, values per site.
    generator : torch generator (on ``device``) for the order and the values.
    n_steps : number of network evaluations K (None = D: one site per step).

    Returns
    -------
    MaskedPath with the exact ``log q(x | order)`` of the values actually drawn.
    """
    blocks = unmask_schedule(n_sites, n_steps)
    x = torch.full((n, n_sites), q, dtype=torch.long, device=device)
    order = torch.argsort(torch.rand(n, n_sites, generator=generator, device=device), dim=1)
    log_q = torch.zeros(n, dtype=torch.float64, device=device)
    for sites in order.split(blocks, dim=1):
        values, log_p = draw_sites(F.log_softmax(logits_at(net, x, sites).double(), dim=-1), generator)
        log_q += log_p
        x.scatter_(1, sites, values)
    return MaskedPath(x, order, log_q, blocks)


def _teacher_forced_chunks(net, path: MaskedPath, q: int, max_rows: int) -> Iterator[torch.Tensor]:
    """Yield (B,) log-probability contributions of groups of steps, recomputed from ``path``.

    The input of step k is ``x`` with every site revealed at step >= k masked; the step
    contributes the log-probabilities of its own block's values. Several steps are stacked
    into one forward pass of at most ``max_rows`` rows.
    """
    x, order = path.x, path.order
    b, d = x.shape
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(d, device=x.device).expand(b, d))  # reveal step of each site
    starts = torch.tensor([0] + list(path.blocks), device=x.device).cumsum(0)
    n_blocks = len(path.blocks)
    per_chunk = max(1, max_rows // max(b, 1))
    for c0 in range(0, n_blocks, per_chunk):
        c1 = min(c0 + per_chunk, n_blocks)
        lo, hi = starts[c0:c1], starts[c0 + 1:c1 + 1]  # (c,) first and last+1 rank of each step
        r = rank.unsqueeze(0)  # (1, B, D)
        inputs = torch.where(r >= lo.view(-1, 1, 1), q, x.unsqueeze(0))  # (c, B, D)
        mine = (r >= lo.view(-1, 1, 1)) & (r < hi.view(-1, 1, 1))  # sites scored at each step
        logp = F.log_softmax(net(inputs.reshape(-1, d)).view(len(lo), b, d, q).double(), dim=-1)
        picked = logp.gather(-1, x.expand(len(lo), b, d).unsqueeze(-1)).squeeze(-1)
        yield (picked * mine).sum(dim=(0, 2))


def path_log_prob(net: Callable, path: MaskedPath, q: int, *, max_rows: int = 4096) -> torch.Tensor:
    """Teacher-forced ``log q(x | order)`` (float64, (B,)) of stored paths under ``net``.

    Differentiable when called with gradients enabled (memory grows with B x K; for large
    problems use :func:`backward_path_log_prob`).
    """
    return sum(_teacher_forced_chunks(net, path, q, max_rows))


def backward_path_log_prob(net: Callable, path: MaskedPath, q: int, coeffs: torch.Tensor, *,
                           max_rows: int = 4096) -> torch.Tensor:
    """Accumulate the gradient of ``sum_b coeffs_b * log q(x_b | order_b)`` into ``net``.

    The path log-likelihood is a sum over steps, so the backward pass runs step-group by
    step-group and memory stays bounded by ``max_rows`` rows. Every path-space objective whose
    gradient is ``sum_b c_b grad log q_b`` with detached ``c`` (log-variance, REINFORCE
    relative entropy, cross-entropy) is trained this way.

    Returns
    -------
    The detached ``log q`` (float64, (B,)) under ``net``.
    """
    coeffs = coeffs.detach().to(torch.float64)
    total = torch.zeros(len(path), dtype=torch.float64, device=path.x.device)
    with torch.enable_grad():
        for part in _teacher_forced_chunks(net, path, q, max_rows):
            (coeffs * part).sum().backward()
            total += part.detach()
    return total


def remask(x: torch.Tensor, q: int, n_replicates: int, *, generator: torch.Generator,
           mode: str = "lambda", clamp: float = 1e5):
    """Random re-masking of clean configurations for denoising cross-entropy losses.

    Each row of ``x`` (B, D) is replicated ``n_replicates`` times (rows ``b * R + r``) and
    masked at random, with an ELBO weight that makes the weighted masked-site NLL an unbiased
    estimate of the any-order autoregressive NLL ``-E_sigma log q(x | sigma)``:

    * ``"lambda"`` (the paper's): lambda ~ U(0, 1) per row, each site masked with probability
      lambda, weight ``min(1 / lambda, clamp)``;
    * ``"count"``: m ~ U{1..D} sites masked per row (a uniform random subset), weight ``D / m``
      (bounded by D, lower variance at small masking rates).

    Returns
    -------
    tokens : int64 (B R, D), masked sites set to ``q``.
    masked : bool (B R, D).
    weight : float32 (B R,).
    """
    xr = x.repeat_interleave(n_replicates, dim=0)
    n, d = xr.shape
    u = torch.rand(n, d, generator=generator, device=x.device)
    if mode == "lambda":
        lam = torch.rand(n, generator=generator, device=x.device)
        masked = u < lam.unsqueeze(1)
        weight = (1.0 / lam).clamp(max=clamp)
    elif mode == "count":
        m = torch.randint(1, d + 1, (n,), generator=generator, device=x.device)
        masked = u.argsort(dim=1).argsort(dim=1) < m.unsqueeze(1)  # m uniformly chosen sites
        weight = d / m.to(torch.float32)
    else:
        raise ConfigError(f"unknown masking mode {mode!r}; choose 'lambda' or 'count'")
    return torch.where(masked, q, xr), masked, weight


def wdce_loss(net: Callable, x: torch.Tensor, weights: torch.Tensor, q: int, n_replicates: int, *,
              generator: torch.Generator, mode: str = "lambda", clamp: float = 1e5) -> torch.Tensor:
    """Weighted denoising cross-entropy, per site.

    ``loss = sum_b w_b * mean_r [ elbo_weight_br * sum_{d masked} -log s_theta(x~_br)_{d, x_bd} ] / D``

    Parameters
    ----------
    x : int64 (B, D) clean configurations (from any proposal).
    weights : (B,) self-normalized importance weights of ``x`` w.r.t. the target (sum to one);
        uniform weights give the plain denoising cross-entropy on data.
    """
    tokens, masked, elbo_w = remask(x, q, n_replicates, generator=generator, mode=mode, clamp=clamp)
    logp = F.log_softmax(net(tokens).float(), dim=-1)
    nll = -logp.gather(-1, x.repeat_interleave(n_replicates, 0).unsqueeze(-1)).squeeze(-1)
    per_row = (nll * masked).sum(-1) * elbo_w  # (B R,)
    w = weights.to(per_row.dtype).repeat_interleave(n_replicates) / n_replicates
    return (w * per_row).sum() / x.shape[1]
