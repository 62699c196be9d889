r"""Lattice kernels for Ising and Potts energies: checkerboard Metropolis / heat bath and
Swendsen-Wang / Wolff cluster moves, batched over chains, with a per-chain inverse-temperature
multiplier ``scale`` (AIS and SMC anneal it).

Papers
------
* Metropolis et al., J. Chem. Phys. 21, 1087 (1953); Glauber, J. Math. Phys. 4, 294 (1963).
* Swendsen & Wang, Phys. Rev. Lett. 58, 86 (1987); Wolff, Phys. Rev. Lett. 62, 361 (1989).

Objective
---------
Every update leaves pi_s(x) = exp(-s U(x)) / Z_s invariant (detailed balance). The target
describes itself through its ``lattice_model()`` hook (:class:`~boltzkit.energies.lattice.LatticeModel`:
L, beta, J, h, q); single-site updates read Boltzmann factors from small tables indexed by
the neighbour counts (:func:`~boltzkit.energies.lattice.neighbour_sum`) one colour class at a
time (:func:`~boltzkit.energies.lattice.colour_classes`); cluster updates bond satisfied edges
with p = 1 - exp(-2 s beta J) (Ising) or 1 - exp(-s beta J) (Potts) and find the clusters of all
chains at once (scipy connected components, on CPU).

Failure modes
-------------
Critical slowing down of local updates (tau ~ L^2.17 at the 2-D Ising beta_c); cluster moves
need h = 0 and J >= 0; no move here tunnels through a first-order transition (Potts q > 4).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from ..energies.lattice import LatticeModel, colour_classes, neighbour_sum
from ..errors import ConfigError, DomainError, IncompatibleMethodError


# ============================================================================ model access
def lattice_model(energy) -> LatticeModel:
    """The :class:`~boltzkit.energies.lattice.LatticeModel` (L, beta, J, h, q) of an energy that
    describes itself as a nearest-neighbour lattice model (the ``lattice_model()`` hook of
    :class:`~boltzkit.energies.Ising` and :class:`~boltzkit.energies.Potts`)."""
    hook = getattr(energy, "lattice_model", None)
    if callable(hook):
        return hook()
    raise IncompatibleMethodError(
        f"lattice updates need an energy with a lattice_model() hook (boltzkit.energies.Ising, "
        f"Potts), got {type(energy).__name__}; for other discrete targets use a generic sampler")


def local_incompatibility(target) -> "str | None":
    """None when ``target`` offers the ``lattice_model()`` hook (checkerboard updates work),
    else the reason."""
    if not callable(getattr(target, "lattice_model", None)):
        return (f"needs an Ising or Potts energy (an energy with a lattice_model() hook), got "
                f"{type(target).__name__}")
    return None


def cluster_incompatibility(target) -> "str | None":
    """None when Swendsen-Wang / Wolff moves are valid for ``target`` (h = 0, J >= 0), else why."""
    why = local_incompatibility(target)
    if why is not None:
        return why
    m = lattice_model(target)
    if m.h != 0.0:
        return (f"needs zero field h = 0 (got h = {m.h:g}): cluster flips do not respect the "
                "field; use method='metropolis' or 'heat_bath'")
    if m.J < 0.0:
        return (f"needs a ferromagnetic coupling J >= 0 (got J = {m.J:g}); use "
                "method='metropolis' or 'heat_bath'")
    return None


def _check_states(model: LatticeModel, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 3 or tuple(x.shape[1:]) != (model.L, model.L):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DomainError(f"x must be a tensor (batch, {model.L}, {model.L}) of lattice states, "
                          f"got {shape}; add a batch dimension with x[None] for one state")
    if model.kind == "potts" and x.dtype.is_floating_point:
        raise DomainError(f"Potts states must be integer colours in [0, {model.q}) (int64), got "
                          f"dtype {x.dtype}; convert with x.long()")


def _scale(scale, batch: int, device) -> torch.Tensor:
    """The inverse-temperature multiplier as a float64 tensor (1, 1) or, per chain, (batch, 1)."""
    if isinstance(scale, torch.Tensor) and scale.numel() > 1:
        if scale.ndim != 1 or scale.shape[0] != batch:
            raise ConfigError(f"scale must be a number or a tensor of shape ({batch},), one per "
                              f"chain; got shape {tuple(scale.shape)}")
        if bool((scale < 0).any()) or not bool(torch.isfinite(scale).all()):
            raise ConfigError("scale must be finite and >= 0 (0 = uniform, 1 = target)")
        return scale.to(device=device, dtype=torch.float64).view(batch, 1)
    value = float(scale)
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"scale must be finite and >= 0 (0 = uniform, 1 = target), got {scale!r}")
    return torch.full((1, 1), value, dtype=torch.float64, device=device)


# ============================================================================ local updates
# A site's update depends only on its own value and its neighbours' (at most 4 aligned
# neighbours), so acceptance probabilities are read from small precomputed tables of
# Boltzmann factors -- one row per chain when the scale differs between chains.


def _lookup(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """table (1 or B, K) indexed by idx (B, ...) in [0, K): returns float64 (B, ...)."""
    if table.shape[0] == 1:  # one table for every chain: a flat take, no expanded gather
        return table.reshape(-1).take(idx)
    flat = idx.reshape(idx.shape[0], -1)
    return table.gather(1, flat).view(idx.shape)


@functools.lru_cache(maxsize=None)
def _colour_masks(L: int, device: torch.device) -> tuple:
    return tuple(torch.as_tensor(m, device=device) for m in colour_classes(L))


def checkerboard_sweep(energy, x: torch.Tensor, *, generator: torch.Generator, scale=1.0,
                       rule: str = "metropolis") -> "tuple[torch.Tensor, torch.Tensor]":
    """One sweep of single-site updates of every chain, targeting exp(-scale * U(x)).

    Parameters
    ----------
    energy : Ising or Potts
        The target; L, beta, J, h and q are read from it.
    x : Tensor (B, L, L)
        Current states in the physical representation (Ising: float +-1, Potts: int64).
    generator : torch.Generator
        The only source of randomness (on the device of ``x``).
    scale : float or Tensor (B,)
        Inverse-temperature multiplier s >= 0: the sweep leaves exp(-s U) invariant.
    rule : "metropolis" or "heat_bath"
        Metropolis flips (Ising) or a uniformly proposed other colour (Potts), accepted with
        min(1, exp(-s dU)); heat bath draws the site from its conditional distribution.

    Returns
    -------
    x_new : Tensor (B, L, L), same dtype as ``x``.
    acceptance : float Tensor (B,), fraction of sites whose value changed in this sweep.
    """
    if rule not in ("metropolis", "heat_bath"):
        raise ConfigError(f"rule must be 'metropolis' or 'heat_bath', got {rule!r}")
    model = lattice_model(energy)
    _check_states(model, x)
    B = x.shape[0]
    s = _scale(scale, B, x.device)
    update = _ising_site_update if model.kind == "ising" else _potts_site_update
    x = x.clone()
    changed = torch.zeros(B, device=x.device, dtype=torch.float64)
    for mask in _colour_masks(model.L, x.device):
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float64)
        new = update(model, x, u, s, rule, generator)
        upd = (new != x).logical_and_(mask)
        x = torch.where(upd, new, x)
        changed += upd.flatten(1).sum(1)
    return x, changed / model.L ** 2


def _ising_site_update(model, x, u, s, rule, generator):
    # neighbour sum + 4 = 2 n_up is an even index 0..8 into tables whose odd entries are unused
    # (no division; the tables hold the same values at 2 n_up as the 5-entry ones did)
    idx = neighbour_sum(x).add_(4).long()                 # 2 x aligned-up neighbours
    field = model.beta * (model.J * (2.0 * torch.arange(5, dtype=torch.float64, device=x.device) - 4.0)
                          + model.h)                      # -dU/ds_i for each n_up
    if rule == "metropolis":
        # flipping s_i changes U by 2 s_i field: row 0 for s_i = -1, row 1 for s_i = +1
        table = _spread(torch.exp(-s * 2.0 * torch.cat([-field, field])))  # (1 or B, 20)
        flip = u < _lookup(table, idx.add_((x > 0).long() * 10))
        return torch.where(flip, -x, x)
    up = u < _lookup(_spread(torch.sigmoid(2.0 * s * field)), idx)
    return up.to(x.dtype).mul_(2.0).sub_(1.0)                   # +1 where up, else -1


def _spread(table: torch.Tensor) -> torch.Tensor:
    """(1 or B, K) -> (1 or B, 2K) with entry k at 2k (odd entries 0)."""
    out = table.new_zeros(table.shape[0], 2 * table.shape[1])
    out[:, ::2] = table
    return out


def _potts_site_update(model, x, u, s, rule, generator):
    counts = neighbour_sum(torch.nn.functional.one_hot(x, model.q))  # (B, L, L, q), 0..4
    k = model.beta * model.J
    if rule == "metropolis":
        shift = torch.randint(1, model.q, x.shape, generator=generator, device=x.device)
        prop = (x + shift) % model.q
        gain = (counts.gather(-1, prop[..., None]) - counts.gather(-1, x[..., None]))[..., 0]
        gains = torch.arange(-4, 5, dtype=torch.float64, device=x.device)
        accept = u < _lookup(torch.exp(s * k * gains), gain + 4)  # dU = -beta J (n_new - n_old)
        return torch.where(accept, prop, x)
    logits = s * k * torch.arange(5, dtype=torch.float64, device=x.device)
    weights = _lookup(torch.exp(logits - logits.max(1, keepdim=True).values), counts)
    cdf = weights.cumsum(-1)
    return (u[..., None] * cdf[..., -1:] > cdf).sum(-1).clamp_(max=model.q - 1)


# ============================================================================ cluster updates
def fk_clusters(energy, x: torch.Tensor, *, generator: torch.Generator, scale=1.0) -> torch.Tensor:
    """Fortuin-Kasteleyn clusters of every chain, as labels (B, L, L) unique across chains.

    Each satisfied nearest-neighbour edge carries a bond with probability
    p = 1 - exp(-2 s beta J) (Ising) or 1 - exp(-s beta J) (Potts); clusters are the
    connected components of one sparse graph spanning all chains (scipy, on CPU).
    """
    model = lattice_model(energy)
    why = cluster_incompatibility(energy)
    if why is not None:
        raise IncompatibleMethodError(f"Swendsen-Wang/Wolff cluster updates of {energy.name}: {why}")
    _check_states(model, x)
    B, L = x.shape[0], model.L
    s = _scale(scale, B, x.device)
    coupling = (2.0 if model.kind == "ising" else 1.0) * model.beta * model.J
    p_bond = -torch.expm1(-coupling * s).view(-1, 1, 1)
    u = torch.rand((2, B, L, L), generator=generator, device=x.device, dtype=torch.float64)
    bond_right = (x == torch.roll(x, -1, 2)) & (u[0] < p_bond)
    bond_down = (x == torch.roll(x, -1, 1)) & (u[1] < p_bond)
    n = B * L * L
    idx = np.arange(n, dtype=np.int64).reshape(B, L, L)
    right_np, down_np = bond_right.cpu().numpy(), bond_down.cpu().numpy()
    rows = np.concatenate([idx[right_np], idx[down_np]])
    cols = np.concatenate([np.roll(idx, -1, 2)[right_np], np.roll(idx, -1, 1)[down_np]])
    graph = sparse.coo_array((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    return torch.from_numpy(labels.astype(np.int64)).to(x.device).view(B, L, L)


def swendsen_wang_update(energy, x: torch.Tensor, *, generator: torch.Generator,
                         scale=1.0) -> "tuple[torch.Tensor, torch.Tensor]":
    """One Swendsen-Wang update of every chain (Ising or Potts with h = 0, J >= 0).

    Every FK cluster is recoloured independently: Ising clusters flip with probability 1/2,
    Potts clusters get a uniformly drawn colour. Leaves exp(-scale * U) invariant.

    Returns
    -------
    x_new : Tensor (B, L, L)
    changed : float Tensor (B,), fraction of sites whose value changed.
    """
    model = lattice_model(energy)
    labels = fk_clusters(energy, x, generator=generator, scale=scale)
    n, flat = labels.numel(), labels.view(-1)  # gather, not fancy indexing: no threaded kernel
    if model.kind == "ising":
        flip = (torch.rand(n, generator=generator, device=x.device) < 0.5).gather(0, flat)
        new = torch.where(flip.view_as(x), -x, x)
    else:
        colour = torch.randint(0, model.q, (n,), generator=generator, device=x.device)
        new = colour.gather(0, flat).view_as(x)
    return new, (new != x).flatten(1).double().mean(1)


def wolff_update(energy, x: torch.Tensor, *, generator: torch.Generator,
                 scale=1.0) -> "tuple[torch.Tensor, torch.Tensor]":
    """One Wolff update per chain: recolour the FK cluster of a uniformly chosen seed site.

    The cluster containing the seed in a full FK bond configuration has exactly the
    distribution of Wolff's growth process. Ising: the cluster flips; Potts: it takes a
    uniformly chosen different colour.

    Returns
    -------
    x_new : Tensor (B, L, L)
    cluster_fraction : float Tensor (B,), size of the flipped cluster / L^2.
    """
    model = lattice_model(energy)
    labels = fk_clusters(energy, x, generator=generator, scale=scale)
    B = x.shape[0]
    seed = torch.randint(0, model.L ** 2, (B, 1), generator=generator, device=x.device)
    flat = labels.view(B, -1)
    in_cluster = (flat == flat.gather(1, seed)).view_as(x)
    if model.kind == "ising":
        new = torch.where(in_cluster, -x, x)
    else:
        shift = torch.randint(1, model.q, (B, 1, 1), generator=generator, device=x.device)
        new = torch.where(in_cluster, (x + shift) % model.q, x)
    return new, in_cluster.flatten(1).double().mean(1)


__all__ = ["lattice_model", "local_incompatibility", "cluster_incompatibility", "checkerboard_sweep",
           "fk_clusters", "swendsen_wang_update", "wolff_update"]
