"""Data-parallel training and pooled results on PyTorch's ``torch.distributed``.

Launch any boltzkit script with ``torchrun --nproc_per_node=N script.py`` (or
``torchrun ... -m boltzkit sample ...``): every process builds the same sampler, the process
group is set up from torchrun's environment variables the first time a sampler is created,
and :meth:`boltzkit.samplers.base.TrainableSampler.fit` then trains data-parallel. On one
process (no torchrun variables) every function here is a no-op and nothing changes.

What happens across ranks
-------------------------
* Random streams: the ``init`` stream is shared (every rank builds the same networks; the
  parameters are broadcast from rank 0 as well, to be safe), every other stream (``train``,
  ``sample``, ...) is per rank, derived from the one seed (:func:`boltzkit._utils.rank_generators`).
  Rank 0's streams are those of a single-process run with the same seed.
* Batches: ``batch_size`` is per rank. A run on N ranks uses a global batch of N x batch_size;
  each rank rolls out, evaluates the energy of, and buffers its own batch (energy evaluations
  are spread over the ranks, replay buffers are per rank). The learning rate is not rescaled.
* Gradients: averaged over the ranks with one flat ``all_reduce`` per optimizer step (a hook
  on every optimizer of the sampler; :func:`sync_gradients`). For losses that are a mean over
  the batch this is the gradient of the global batch. MDNS, PDNS and TR2-D2 normalize their
  self-normalized weights over all the ranks' batches (:func:`softmax_across_ranks`) and
  pick MDNS's warm-up factor and PDNS's proximal step on the pooled batch, so a step is that
  of one process with the global batch; discrete ASBS still normalizes per rank. Samplers
  that clip gradients clip the averaged gradient (they call :func:`sync_gradients` first).
* Why not ``DistributedDataParallel``: DDP's reducer expects the wrapped module to be called
  once per backward. Neural samplers call their networks many times per backward (one pass
  per unmasking or SDE step of a rollout, several re-maskings per sample, chunked backward
  passes, an EMA copy, two networks with two optimizers in ASBS and NAAS), so the
  all-reduce is done on the accumulated gradients just before the optimizer step: the same
  arithmetic as DDP, without DDP's overlap of communication with the backward pass.
* Metrics logged in ``history`` are averaged over the ranks, so every rank sees the same
  loss (and a divergence stops every rank at the same step).
* Checkpoints are written by rank 0 only (atomically); they hold the per-rank generator
  states, so a run resumes on the same or a different number of ranks.
* Results: :func:`sample_across_ranks` draws ``n`` samples split over the ranks and
  all-gathers them; log Z, its standard error and the ESS are those of the pooled sample.
  ``Sampler.sample_to`` streams each rank's share to its own shards and rank 0 writes one
  index with the pooled estimate (merged :class:`~boltzkit.estimators.LogWeightAccumulator`).
* A rank that raises makes torchrun (or ``torch.multiprocessing.spawn``) stop the others.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import os
import warnings
import weakref

import numpy as np
import torch

from .errors import UnreliableEstimateWarning
from .estimators.importance import log_z_from_log_weights
from .result import result_from_log_weights

__all__ = ["init", "shutdown", "is_distributed", "rank", "world_size", "local_rank", "is_main",
           "barrier", "device_for_rank", "local_count", "all_gather_tensor", "all_gather_log_weights",
           "all_reduce_mean", "softmax_across_ranks", "broadcast_int", "broadcast_object",
           "broadcast_modules", "sync_gradients", "attach_gradient_sync", "gather_result",
           "sample_across_ranks"]


# ---------------------------------------------------------------------------- process group
_STARTED_HERE = False  # whether init() (rather than the caller) created the process group


def _dist():
    return torch.distributed if torch.distributed.is_available() else None


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialized."""
    d = _dist()
    return bool(d is not None and d.is_initialized() and d.get_world_size() > 1)


def init(backend: "str | None" = None, *, timeout_s: float = 1800.0) -> bool:
    """Initialize the default process group from torchrun's environment, once.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``
    (set by ``torchrun`` and by ``srun`` wrappers that export them). Does nothing when
    ``WORLD_SIZE`` is unset or 1, or when a group is already initialized.

    Parameters
    ----------
    backend : "nccl" or "gloo"; None picks NCCL when CUDA is available, else gloo.
    timeout_s : collective timeout.

    Returns
    -------
    bool : whether the process now runs with more than one rank.
    """
    d = _dist()
    if d is None or d.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return is_distributed()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    d.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    global _STARTED_HERE
    _STARTED_HERE = True
    return is_distributed()


def rank() -> int:
    """This process's global rank (0 on one process)."""
    return torch.distributed.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return torch.distributed.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """Rank within the node (torchrun's ``LOCAL_RANK``; 0 on one process)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on rank 0: the rank that prints, writes results and checkpoints."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op on one process)."""
    if is_distributed():
        torch.distributed.barrier()


def device_for_rank(device: torch.device) -> torch.device:
    """A CUDA device without an index becomes this rank's GPU (``cuda:LOCAL_RANK``)."""
    if device.type == "cuda" and device.index is None and is_distributed():
        return torch.device("cuda", local_rank() % max(torch.cuda.device_count(), 1))
    return device


def broadcast_int(value: int) -> int:
    """Rank 0's ``value`` on every rank (e.g. a seed drawn from entropy)."""
    return int(broadcast_object(int(value)))


def _comm_device() -> torch.device:
    """Where tensors must live for collectives: this rank's GPU under NCCL, else the CPU."""
    if is_distributed() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def local_count(n: int) -> int:
    """This rank's share of ``n`` items: ``n // W``, plus one on the first ``n % W`` ranks."""
    w, r = world_size(), rank()
    return n // w + (1 if r < n % w else 0)


# ---------------------------------------------------------------------------- collectives
def all_gather_tensor(t: "torch.Tensor | None") -> "torch.Tensor | None":
    """Concatenate every rank's ``t`` along dim 0, in rank order (lengths may differ).

    The result is on ``t``'s device; on one process (or for ``t=None``) ``t`` itself is returned.
    """
    if t is None or not is_distributed():
        return t
    d, dev = torch.distributed, _comm_device()
    x = t.detach().to(dev).contiguous()
    n = torch.tensor([x.shape[0]], device=dev, dtype=torch.int64)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    d.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    width = max(sizes)
    pad = torch.zeros((width - x.shape[0], *x.shape[1:]), dtype=x.dtype, device=dev)
    parts = [torch.empty((width, *x.shape[1:]), dtype=x.dtype, device=dev) for _ in sizes]
    d.all_gather(parts, torch.cat([x, pad]))
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(t.device)


def all_gather_log_weights(log_weights) -> np.ndarray:
    """Every rank's log-weights, concatenated in rank order, as a float64 numpy array."""
    lw = torch.as_tensor(np.asarray(log_weights.detach().cpu() if torch.is_tensor(log_weights)
                                    else log_weights, dtype=np.float64)).reshape(-1)
    return all_gather_tensor(lw).numpy()


def all_reduce_mean(values: "dict[str, float]") -> "dict[str, float]":
    """Average a dict of floats over the ranks (float64; every rank must pass the same keys)."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys] + [float(len(keys))], dtype=torch.float64,
                     device=_comm_device())
    torch.distributed.all_reduce(t)
    if int(round(float(t[-1]))) != len(keys) * world_size():
        raise RuntimeError(f"ranks logged different metric names; this rank logged {keys}")
    t = (t[:-1] / world_size()).cpu()
    return dict(zip(keys, map(float, t)))


def all_true(flag: bool) -> bool:
    """True on every rank iff ``flag`` is true on every rank (one tiny all-reduce; no-op on one
    process). Use it before a local decision that changes which collectives follow (skipping an
    optimizer step, raising on divergence), so that no rank waits for a peer that left."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([0.0 if flag else 1.0], dtype=torch.float64, device=_comm_device())
    torch.distributed.all_reduce(t)
    return float(t) == 0.0


def softmax_across_ranks(log_weights: torch.Tensor) -> torch.Tensor:
    """Self-normalized weights of this rank's batch, normalized over every rank's batch.

    Returns ``W * exp(lw - logsumexp(lw of all ranks))`` (W = world size), so that the mean
    over the ranks of ``sum_b w_b * loss_b`` is the single-batch weighted loss of the union of
    the batches, as with one process and a W times larger batch. On one process this is
    ``softmax(lw)``. Only the float64 normalizer (a max and a sum) is communicated.
    """
    if not is_distributed():
        return torch.softmax(log_weights, 0)
    dev, lw = _comm_device(), log_weights.detach()
    m = lw.max().to(dev, torch.float64).reshape(1)
    torch.distributed.all_reduce(m, op=torch.distributed.ReduceOp.MAX)
    m = m.to(lw.device)
    total = torch.exp(lw.double() - m).sum().to(dev).reshape(1)
    torch.distributed.all_reduce(total)
    log_norm = m + torch.log(total.to(lw.device))
    return (world_size() * torch.exp(log_weights.double() - log_norm)).to(log_weights.dtype)


def broadcast_modules(modules, src: int = 0) -> None:
    """Copy the parameters and buffers of every module from rank ``src`` to all ranks."""
    if not is_distributed():
        return
    dev = _comm_device()
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            buf = t.data.to(dev)
            torch.distributed.broadcast(buf, src)
            if buf is not t.data:
                t.data.copy_(buf)


# ---------------------------------------------------------------------------- gradients
_SYNCED = weakref.WeakKeyDictionary()  # optimizer -> True once its grads are averaged this step


def sync_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Average the gradients of ``optimizer``'s parameters over the ranks, once per step.

    Called automatically just before every ``optimizer.step()`` of a sampler trained under a
    process group (:func:`attach_gradient_sync`). A sampler that clips gradients may call it
    itself just before clipping, so that the global gradient is clipped exactly as on one
    process; the automatic call then does nothing. Parameters without a gradient on any rank
    keep ``grad = None`` (so optimizers skip them, as on one process). No-op on one process.
    """
    if not is_distributed() or _SYNCED.get(optimizer):
        return
    params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
    dev, w = _comm_device(), world_size()
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float64, device=dev)
    torch.distributed.all_reduce(present)
    by_dtype: dict = {}
    for p, has in zip(params, present.tolist()):
        if has:
            by_dtype.setdefault(p.dtype, []).append(p)
    for dtype, ps in by_dtype.items():
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dev)
                          for p in ps])
        torch.distributed.all_reduce(flat)
        flat /= w
        for p, g in zip(ps, flat.split([p.numel() for p in ps])):
            g = g.view_as(p).to(p.device)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
    _SYNCED[optimizer] = True


def attach_gradient_sync(optimizer: torch.optim.Optimizer) -> None:
    """Make every ``optimizer.step()`` average the gradients over the ranks first (idempotent)."""
    if getattr(optimizer, "_boltzkit_grad_sync", False):
        return
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: sync_gradients(opt))
    optimizer.register_step_post_hook(lambda opt, args, kwargs: _SYNCED.pop(opt, None))
    optimizer._boltzkit_grad_sync = True


# ---------------------------------------------------------------------------- results
def gather_result(res):
    """Pool every rank's weighted :class:`~boltzkit.result.Result` into one.

    Samples and float64 log-weights are all-gathered in rank order; log Z, its standard error
    and the ESS are recomputed on the pooled log-weights with the shared estimator, so they
    are exactly those of the concatenated sample. Diagnostics and metadata are rank 0's
    (with ``world_size`` added). Every rank returns the pooled Result; on one process ``res``
    is returned unchanged.

    Unweighted results (MCMC chains, refined MDNS samples) are pooled as independent runs:
    the samples are concatenated and the ESS is the sum of the ranks' ESS; a log Z, if
    there is one, is rank 0's (refined MDNS samples: sample without refinement to pool it).
    """
    if not is_distributed():
        return res
    samples = all_gather_tensor(res.samples)
    d0 = broadcast_object(dict(res.diagnostics))
    if res.log_weights is None:
        ess = torch.tensor([float(res.ess)], dtype=torch.float64, device=_comm_device())
        torch.distributed.all_reduce(ess)
        head = broadcast_object((res.log_z, res.log_z_stderr))
        return dataclasses.replace(res, samples=samples, ess=float(ess), log_z=head[0], log_z_stderr=head[1],
                                   diagnostics={**d0, "world_size": world_size()})
    meta = {k: getattr(res, k) for k in ("history", "method", "target", "config", "seed", "device")}
    lw = torch.from_numpy(all_gather_log_weights(res.log_weights))
    local_keys = set(log_z_from_log_weights(res.log_weights, warn=False).diagnostics())
    keep = {k: v for k, v in d0.items() if k not in local_keys}  # rank 0's estimate: recomputed
    keep["world_size"] = world_size()
    return result_from_log_weights(samples, lw, diagnostics=keep, **meta)


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s picklable ``obj`` on every rank (``obj`` itself on one process)."""
    if not is_distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def sample_across_ranks(sampler, n_samples: int, **kw):
    """Draw ``n_samples`` from a fitted sampler, split over the ranks, and pool them.

    Rank r draws :func:`local_count` (``n_samples``) samples from its own ``sample`` stream;
    see :func:`gather_result`. On one process this is ``sampler.sample(n_samples, **kw)``.
    """
    if not is_distributed():
        return sampler.sample(n_samples, **kw)
    with warnings.catch_warnings():  # one rank's share says little; the pooled estimate warns
        warnings.simplefilter("ignore", UnreliableEstimateWarning)
        part = sampler.sample(local_count(n_samples), **kw)
    return gather_result(part)


def shutdown() -> None:
    """Leave the process group this module started (no-op otherwise); call at the end of a run."""
    if is_distributed() and _STARTED_HERE:
        gc.collect()  # free tensors still tied to gloo work before its threads go away
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
