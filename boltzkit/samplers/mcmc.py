r"""Classic Markov-chain Monte Carlo for Ising and Potts lattices (reference baselines).

Papers
------
* Metropolis, Rosenbluth, Rosenbluth, Teller & Teller, "Equation of State Calculations by Fast
  Computing Machines", J. Chem. Phys. 21, 1087 (1953) -- single-site Metropolis.
* Glauber, "Time-dependent statistics of the Ising model", J. Math. Phys. 4, 294 (1963) --
  heat-bath (Gibbs) updates.
* Swendsen & Wang, "Nonuniversal critical dynamics in Monte Carlo simulations",
  Phys. Rev. Lett. 58, 86 (1987) -- cluster updates of the Fortuin-Kasteleyn representation.
* Wolff, "Collective Monte Carlo Updating for Spin Systems", Phys. Rev. Lett. 62, 361 (1989).

Objective
---------
Every update leaves pi_s(x) = exp(-s U(x)) / Z_s invariant (detailed balance), where U is the
reduced energy of the target and s = ``scale`` (s = 1 is the target, s = 0 the uniform
distribution; AIS anneals s). Single-site updates use local fields computed with
``torch.roll``; sites are updated one colour class at a time (a checkerboard for even L; odd
periodic L needs three classes), so a sweep visits every site once. Cluster updates put a
bond on each satisfied edge with p = 1 - exp(-2 s beta J) (Ising) or 1 - exp(-s beta J)
(Potts), find the clusters of all chains at once with
``scipy.sparse.csgraph.connected_components`` and recolour them.

Returns
-------
A :class:`~boltzkit.result.Result` of unweighted, correlated samples (``log_weights=None``,
``log_z=None``; use ``method="ais"`` for log Z), ordered step-major: sample
``k = t * n_chains + c`` is chain ``c`` after recorded step ``t``. ``ess = N / tau_int`` of
the energy (convention of :mod:`boltzkit.estimators.diagnostics`).

Failure modes
-------------
* Critical slowing down of local updates: tau ~ L^z with z ~ 2.17 at the 2-D Ising critical
  point; below T_c the chains of Metropolis/heat bath get stuck in one magnetized phase.
* Swendsen-Wang and Wolff need h = 0 and ferromagnetic J >= 0; for q > 4 Potts (first-order
  transition) every method here tunnels exponentially slowly between phases.
* Burn-in is not detected automatically; the autocorrelation warning
  (:class:`~boltzkit.errors.ConvergenceWarning`) fires when chains are shorter than 50 tau_int.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from .._registry import register
from .._utils import progress_bar
from ..domains import Lattice
from ..energies.lattice import Ising, Potts
from ..errors import ConfigError, DomainError, IncompatibleMethodError
from ..estimators.diagnostics import autocorr_estimate
from ..result import Result
from .base import Sampler, SamplerConfig, _check_positive

LOG_Z_UNAVAILABLE = "MCMC draws samples without a normalizing constant; use method='ais' for log Z"


# ============================================================================ model access
@dataclass(frozen=True)
class LatticeModel:
    """Parameters of an Ising or Potts energy, read from the energy object."""

    kind: str  # "ising" or "potts"
    L: int
    beta: float
    J: float
    h: float
    q: int


def lattice_model(energy) -> LatticeModel:
    """Read L, beta, J, h, q from an :class:`Ising` or :class:`Potts` energy."""
    if isinstance(energy, Ising):
        return LatticeModel("ising", energy.L, energy.beta, energy.J, energy.h, 2)
    if isinstance(energy, Potts):
        return LatticeModel("potts", energy.L, energy.beta, energy.J, 0.0, energy.q)
    raise IncompatibleMethodError(
        f"lattice MCMC updates need a boltzkit.energies.Ising or Potts energy, got "
        f"{type(energy).__name__}; for other discrete targets use a generic sampler")


def _local_incompatibility(target) -> "str | None":
    if not isinstance(target, (Ising, Potts)):
        return (f"needs an Ising or Potts energy (boltzkit.energies.Ising/Potts), got "
                f"{type(target).__name__}")
    return None


def _cluster_incompatibility(target) -> "str | None":
    why = _local_incompatibility(target)
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
    flat = idx.reshape(idx.shape[0], -1)
    return table.expand(idx.shape[0], -1).gather(1, flat).view(idx.shape)


@functools.lru_cache(maxsize=None)
def _colour_classes(L: int) -> tuple:
    """Partition the periodic L x L lattice into classes with no two neighbours in one class.

    With a proper colouring a(i) of the ring of L sites (alternating 0, 1, plus colour 2 on
    the last site when L is odd), c(i, j) = (a(i) + a(j)) mod k is a proper colouring of the
    torus: a checkerboard (k = 2) for even L, three classes for odd L.
    """
    a = np.arange(L) % 2
    k = 2
    if L % 2:
        a[-1], k = 2, 3
    colour = (a[:, None] + a[None, :]) % k
    return tuple(colour == c for c in range(k))


@functools.lru_cache(maxsize=None)
def _colour_masks(L: int, device: torch.device) -> tuple:
    return tuple(torch.as_tensor(m, device=device) for m in _colour_classes(L))


def _neighbour_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of the four periodic nearest neighbours of every site; t is (B, L, L[, ...])."""
    return (torch.roll(t, 1, 1) + torch.roll(t, -1, 1) + torch.roll(t, 1, 2) + torch.roll(t, -1, 2))


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
        upd = mask & (new != x)
        x = torch.where(upd, new, x)
        changed += upd.flatten(1).sum(1)
    return x, changed / model.L ** 2


def _ising_site_update(model, x, u, s, rule, generator):
    n_up = ((_neighbour_sum(x) + 4) / 2).long()            # aligned-up neighbours, 0..4
    field = model.beta * (model.J * (2.0 * torch.arange(5, dtype=torch.float64, device=x.device) - 4.0)
                          + model.h)                      # -dU/ds_i for each n_up
    if rule == "metropolis":
        # flipping s_i changes U by 2 s_i field: row 0 for s_i = -1, row 1 for s_i = +1
        table = torch.exp(-s * 2.0 * torch.cat([-field, field]))      # (1 or B, 10)
        flip = u < _lookup(table, (x > 0).long() * 5 + n_up)
        return torch.where(flip, -x, x)
    p_up = _lookup(torch.sigmoid(2.0 * s * field), n_up)
    return torch.where(u < p_up, torch.ones_like(x), -torch.ones_like(x))


def _potts_site_update(model, x, u, s, rule, generator):
    counts = _neighbour_sum(torch.nn.functional.one_hot(x, model.q))  # (B, L, L, q), 0..4
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
    why = _cluster_incompatibility(energy)
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


# ============================================================================ samplers
def order_parameter(model: LatticeModel, x: torch.Tensor) -> torch.Tensor:
    """|m| per state (B,): Ising |mean spin|; Potts (q max_c n_c / N - 1) / (q - 1)."""
    if model.kind == "ising":
        return x.flatten(1).to(torch.float64).mean(1).abs()
    frac = torch.nn.functional.one_hot(x.flatten(1), model.q).to(torch.float64).mean(1)
    return (model.q * frac.amax(1) - 1.0) / (model.q - 1)


@dataclass(frozen=True, kw_only=True)
class LatticeMCMCConfig(SamplerConfig):
    """Options of the lattice MCMC samplers.

    n_chains : independent chains run in parallel (batch dimension). The default keeps
        chains long (n_samples / n_chains steps) so that tau_int can be checked; raise it
        on a GPU or for large n_samples.
    burn_in : sweeps discarded by ``fit`` (``fit(n_steps=...)`` overrides it).
    thin : sweeps between recorded states.
    """

    n_chains: int = 16
    burn_in: int = 500
    thin: int = 1

    def __post_init__(self):
        _check_positive("n_chains", self.n_chains)
        _check_positive("thin", self.thin)
        if not isinstance(self.burn_in, (int, np.integer)) or isinstance(self.burn_in, bool) \
                or self.burn_in < 0:
            raise ConfigError(f"burn_in must be a non-negative integer (sweeps), got {self.burn_in!r}")


@dataclass(frozen=True, kw_only=True)
class ClusterConfig(LatticeMCMCConfig):
    burn_in: int = 100


@dataclass(frozen=True, kw_only=True)
class WolffConfig(ClusterConfig):
    """n_flips : Wolff cluster flips per chain per step (one step = one recorded sweep)."""

    n_flips: int = 1

    def __post_init__(self):
        super().__post_init__()
        _check_positive("n_flips", self.n_flips)


class LatticeMCMC(Sampler):
    """Shared driver: burn-in in ``fit``, recorded sweeps in ``sample``."""

    Config = LatticeMCMCConfig
    streams = ("init", "train", "sample")
    _incompatibility = staticmethod(_local_incompatibility)

    def __init__(self, config=None, /, **kw):
        super().__init__(config, **kw)
        self.x = None
        self.model = None
        self.n_sweeps = 0
        self.history = {"mean_energy": [], "acceptance": []}

    def _update(self, x, generator):  # pragma: no cover - abstract
        raise NotImplementedError

    def _sweep(self, generator) -> None:
        self.x, acc = self._update(self.x, generator)
        self.n_sweeps += 1
        with torch.no_grad():
            self._last_energy = self.target.energy(self.x).to(torch.float64)
        self._last_acc = acc
        # kept as device tensors (no host sync per sweep); converted in sample()
        self.history["mean_energy"].append(self._last_energy.mean())
        self.history["acceptance"].append(acc.mean())

    def fit(self, target, *, n_steps: "int | None" = None, checkpoint=None) -> "LatticeMCMC":
        """Attach ``target``, draw random initial states and run ``n_steps`` burn-in sweeps.

        ``n_steps`` defaults to ``config.burn_in``.
        """
        if checkpoint is not None:
            raise ConfigError(f"{self.name!r} keeps no checkpoints (it does not train); "
                              "leave checkpoint=None")
        burn_in = self.config.burn_in if n_steps is None else n_steps
        if not isinstance(burn_in, (int, np.integer)) or isinstance(burn_in, bool) or burn_in < 0:
            raise ConfigError(f"n_steps (burn-in sweeps) must be a non-negative integer, got {n_steps!r}")
        why = self._incompatibility(target)
        if why is not None:
            raise IncompatibleMethodError(f"method {self.name!r} cannot sample "
                                          f"{getattr(target, 'name', type(target).__name__)}: it {why}")
        self._attach(target)
        self.model = lattice_model(self.target)
        self.n_sweeps = 0
        self.history = {"mean_energy": [], "acceptance": []}
        self.x = self.target.domain.reference(self.config.n_chains, generator=self.gens["init"],
                                              device=self.device)
        self.burn_in = int(burn_in)
        for _ in progress_bar(range(self.burn_in), desc=f"{self.name} burn-in", enabled=self.progress):
            self._sweep(self.gens["train"])
        return self

    def sample(self, n_samples: int) -> Result:
        """Continue the chains and return ``n_samples`` states (n_chains per recorded step).

        Returns
        -------
        Result
            ``samples`` (n_samples, L, L) ordered step-major (sample t * n_chains + c is chain
            c at step t), ``ess = n_samples / tau_int(energy)``, ``log_z = None``; diagnostics
            hold tau_int of the energy and of |m| (in recorded steps of ``thin`` sweeps),
            acceptance, sweeps and wall time; ``history`` the mean energy and acceptance per
            sweep since ``fit`` began.
        """
        self._require_fit()
        _check_positive("n_samples", n_samples)
        t0 = time.perf_counter()
        B, thin = self.config.n_chains, self.config.thin
        n_rec = -(-int(n_samples) // B)
        states, energies, orders, accs = [], [], [], []
        for _ in progress_bar(range(n_rec), desc=self.name, enabled=self.progress):
            acc = 0.0
            for _ in range(thin):
                self._sweep(self.gens["sample"])
                acc = acc + self._last_acc
            states.append(self.x.cpu())
            energies.append(self._last_energy.cpu())
            orders.append(order_parameter(self.model, self.x).cpu())
            accs.append(acc / thin)
        wall = time.perf_counter() - t0
        samples = torch.stack(states).flatten(0, 1)[:n_samples]
        e_trace, m_trace = torch.stack(energies), torch.stack(orders)
        diag = {"log_z_unavailable": LOG_Z_UNAVAILABLE, "n_chains": B,
                "steps_per_chain": n_rec, "thin": thin, "sweeps": n_rec * thin,
                "burn_in": self.burn_in, "total_sweeps": self.n_sweeps,
                "acceptance": float(torch.stack(accs).mean()), "wall_time_s": wall,
                "mean_energy": float(e_trace.mean()), "mean_abs_m": float(m_trace.mean())}
        if n_rec >= 2:
            est_e = autocorr_estimate(e_trace)
            est_m = autocorr_estimate(m_trace, warn=False)
            ess = n_samples / est_e.tau
            diag.update({"tau_int_energy": est_e.tau, "tau_int_energy_stderr": est_e.stderr,
                         "tau_int_abs_m": est_m.tau, "tau_int_abs_m_stderr": est_m.stderr,
                         "tau_converged": est_e.converged})
        else:  # one state per chain: independent draws (given burn-in), tau not estimable
            ess = float(n_samples)
            diag.update({"tau_int_energy": float("nan"), "tau_int_abs_m": float("nan"),
                         "tau_converged": False})
        diag["ess_per_second"] = ess / wall if wall > 0 else float("inf")
        diag.update(self._extra_diagnostics())
        kw = self._result_kwargs()
        kw["history"] = {k: torch.stack(v).cpu().double().numpy() for k, v in self.history.items()}
        return Result(samples=samples, log_weights=None, log_z=None, log_z_stderr=None, ess=ess,
                      diagnostics=diag, **kw)

    def _extra_diagnostics(self) -> dict:
        return {}


_LATTICE_DOMAINS = (Lattice,)


@register("metropolis", domains=_LATTICE_DOMAINS, priority=1, provides_log_z=False,
          paper="Metropolis et al., J. Chem. Phys. 21, 1087 (1953)",
          supports=_local_incompatibility)
class Metropolis(LatticeMCMC):
    """Checkerboard single-site Metropolis for Ising and Potts lattices."""

    def _update(self, x, generator):
        return checkerboard_sweep(self.target, x, generator=generator, rule="metropolis")


@register("heat_bath", domains=_LATTICE_DOMAINS, priority=2, provides_log_z=False,
          paper="Glauber, J. Math. Phys. 4, 294 (1963)", supports=_local_incompatibility)
class HeatBath(LatticeMCMC):
    """Checkerboard single-site heat-bath (Gibbs) updates for Ising and Potts lattices."""

    def _update(self, x, generator):
        return checkerboard_sweep(self.target, x, generator=generator, rule="heat_bath")


@register("swendsen_wang", domains=_LATTICE_DOMAINS, priority=5, provides_log_z=False,
          paper="Swendsen & Wang, Phys. Rev. Lett. 58, 86 (1987)",
          supports=_cluster_incompatibility)
class SwendsenWang(LatticeMCMC):
    """Swendsen-Wang cluster updates for Ising (h = 0) and Potts lattices."""

    Config = ClusterConfig
    _incompatibility = staticmethod(_cluster_incompatibility)

    def _update(self, x, generator):
        return swendsen_wang_update(self.target, x, generator=generator)


@register("wolff", domains=_LATTICE_DOMAINS, priority=3, provides_log_z=False,
          paper="Wolff, Phys. Rev. Lett. 62, 361 (1989)", supports=_cluster_incompatibility)
class Wolff(LatticeMCMC):
    """Wolff single-cluster updates for Ising (h = 0) and Potts lattices.

    One step (the unit of burn_in, thin and tau_int here) is ``n_flips`` cluster flips per
    chain; ``diagnostics["mean_cluster_fraction"]`` converts it to sweeps
    (sweeps per step = n_flips * mean_cluster_fraction). "acceptance" is the flipped fraction.
    """

    Config = WolffConfig
    _incompatibility = staticmethod(_cluster_incompatibility)

    def __init__(self, config=None, /, **kw):
        super().__init__(config, **kw)
        self._cluster_sum, self._cluster_n = 0.0, 0

    def _update(self, x, generator):
        changed = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for _ in range(self.config.n_flips):
            x, frac = wolff_update(self.target, x, generator=generator)
            changed += frac
            self._cluster_sum += float(frac.sum())
            self._cluster_n += frac.numel()
        return x, changed

    def _extra_diagnostics(self) -> dict:
        return {"mean_cluster_fraction": self._cluster_sum / max(self._cluster_n, 1),
                "n_flips": self.config.n_flips}
