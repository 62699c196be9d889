"""Sampler registry and the rule that picks a sampler for a target.

Choice by priority alone (``select(target)``), or within a time budget (``select(target,
profile=probe(target), budget=600)``): each compatible method's time on this device is
estimated from a :class:`DeviceProfile` (one timed energy evaluation and one timed network
pass, :func:`probe`), the target's size and the method's known scaling
(:func:`estimate_seconds`), and the highest-priority method that gives log Z within the budget
is chosen. ``select`` stays a pure function of the target's metadata, the profile and the budget.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ._utils import resolve_device
from .errors import IncompatibleMethodError, TargetError


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    cls: type
    kinds: frozenset
    domains: tuple
    priority: "int | dict | Callable" = 0  # int, {DomainType: int}, or target -> int
    provides_log_z: bool = True
    paper: str = ""
    description: str = ""
    supports: "Callable | None" = None  # target -> None if fine, else the reason it is not
    pays: str = ""  # when the method is worth choosing, as measured (shown by explain)

    def priority_for(self, target) -> int:
        if callable(self.priority):
            return int(self.priority(target))
        if isinstance(self.priority, dict):
            return max((p for d, p in self.priority.items() if isinstance(target.domain, d)), default=0)
        return int(self.priority)

    def incompatibility(self, target) -> "str | None":
        kind = getattr(target, "kind", None)
        if kind not in self.kinds:
            return f"handles {sorted(self.kinds)} targets, not {kind!r}"
        dom = getattr(target, "domain", None)
        if not isinstance(dom, self.domains):
            names = ", ".join(d.__name__ for d in self.domains)
            return f"needs a domain of type {names}, got {type(dom).__name__}"
        return None if self.supports is None else self.supports(target)


_REGISTRY: dict[str, SamplerSpec] = {}


def register(name: str, *, kinds=("energy",), domains=(), priority: int = 0,
             provides_log_z: bool = True, paper: str = "", description: str = "",
             supports=None, pays: str = ""):
    """Class decorator that records a sampler under ``name``; ``pays`` says in a sentence when
    the method is worth choosing (what was measured), for :func:`explain`."""

    def deco(cls):
        cls.name = name
        _REGISTRY[name] = SamplerSpec(name, cls, frozenset(kinds), tuple(domains), priority,
                                      provides_log_z, paper, description or (cls.__doc__ or "").strip().split("\n")[0],
                                      supports, pays)
        return cls

    return deco


def registry() -> dict[str, SamplerSpec]:
    # importing the samplers package and the bio slices' sampler modules registers every built-in method
    from . import samplers  # noqa: F401
    from .bio import load_samplers

    load_samplers()
    return dict(_REGISTRY)


@dataclass(frozen=True)
class Choice:
    name: str
    reason: str
    alternatives: tuple = field(default=())


# ------------------------------------------------------------------------ time estimates
PROBE_BATCH = 1024
NET_WIDTH = 64
# Neural samplers on a categorical target: one training step costs about
# NEURAL_STEP_FACTOR * batch * n_sites^2 reference network passes per state-site (rollouts unmask
# one site per pass, each pass touches every site). Fitted to MDNS on a 2-core CPU (reference
# pass 650 ns per row): 6 x 6 Ising 0.24 s / step, 16 x 16 about 10 s / step (README).
NEURAL_STEP_FACTOR = 1.1
PROBE_ROWS = 4096
NEURAL_STEPS_PER_SITE = 14      # 6 x 6 Ising: ~500 steps reach ESS 0.9 (README, MDNS)
NEURAL_STEPS_RANGE = (100, 20_000)
BUDGET_FACTOR = 3.0             # stated accuracy of the estimates: actual / estimated within 3x
CPU_PREFERENCE_MARGIN = 2.0     # a training-free method displaces a neural one within half the budget


@dataclass(frozen=True)
class DeviceProfile:
    """Measured speed of this device for one target (:func:`probe`).

    device : "cpu" or "cuda".
    energy_s : seconds per state of one batched energy evaluation (batch ``PROBE_BATCH``).
    net_s : seconds per row of a reference network pass (two ``NET_WIDTH``-wide layers on
        ``PROBE_ROWS`` rows: a state-site of a per-site network).
    grad_s : seconds per state of one batched energy-and-gradient evaluation (continuous targets
        with ``grad_energy``; NaN where not measured). An autograd gradient costs ~3 energies, a
        force field's (OpenMM returns forces with the energy) about one.
    """

    device: str
    energy_s: float
    net_s: float
    grad_s: float = float("nan")


def probe(target, device="auto") -> DeviceProfile:
    """Time one batched energy evaluation of ``target`` and one reference network pass on
    ``device`` (a fraction of a second; the target's reference draws are its states)."""
    dev = resolve_device(device)
    dom = target.domain
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    def timed(fn, reps=5):  # the median: a loaded machine is slower for the whole run too
        fn()
        times = []
        for _ in range(reps):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return sorted(times)[reps // 2]

    gen = torch.Generator(device=dev).manual_seed(0)
    try:
        x = dom.reference(PROBE_BATCH, generator=gen, device=dev)
        t = target.to(dev) if isinstance(target, torch.nn.Module) else target
        with torch.no_grad():
            energy_s = timed(lambda: t.energy(x)) / PROBE_BATCH
    except Exception:  # a target without reference draws: no energy timing
        energy_s = float("nan")
    grad_s = float("nan")
    if math.isfinite(energy_s) and not getattr(dom, "is_discrete", True) and callable(getattr(t, "grad_energy", None)):
        try:
            grad_s = timed(lambda: t.grad_energy(x), reps=3) / PROBE_BATCH
        except Exception:  # no usable gradient: the samplers' estimates assume ~3 energies
            grad_s = float("nan")
    h = torch.randn(PROBE_ROWS, NET_WIDTH, generator=gen, device=dev)
    w1 = torch.randn(NET_WIDTH, NET_WIDTH, generator=gen, device=dev)
    w2 = torch.randn(NET_WIDTH, NET_WIDTH, generator=gen, device=dev)
    with torch.no_grad():
        net_s = timed(lambda: torch.relu(h @ w1) @ w2) / h.shape[0]
    return DeviceProfile(dev.type, float(energy_s), float(net_s), float(grad_s))


def default_training_steps(target, cls) -> "int | None":
    """Training steps for a neural sampler on a categorical energy: NEURAL_STEPS_PER_SITE per
    site (within NEURAL_STEPS_RANGE; 504 for 6 x 6, 3584 for 16 x 16). None (the method's own
    default) for other targets or where the method has no ``n_steps`` option."""
    sites = getattr(getattr(target, "domain", None), "n_sites", None)
    names = {f.name for f in dataclasses.fields(cls.Config)}
    if "n_steps" not in names or sites is None or getattr(target, "kind", None) != "energy":
        return None
    lo, hi = NEURAL_STEPS_RANGE
    return int(min(hi, max(lo, NEURAL_STEPS_PER_SITE * sites)))


def estimate_seconds(spec: SamplerSpec, target, profile: DeviceProfile,
                     n_samples: "int | None" = None) -> "float | None":
    """Estimated wall time of ``spec`` on ``target`` with its default options (None: unknown).

    A sampler class may provide ``estimate_seconds(target, profile, n_samples)``; neural
    samplers (``TrainableSampler``) on categorical targets use the scaling in this module.
    """
    hook = getattr(spec.cls, "estimate_seconds", None)
    if callable(hook):
        return hook(target, profile, n_samples)
    from .samplers.base import TrainableSampler

    sites = getattr(target.domain, "n_sites", None)
    if issubclass(spec.cls, TrainableSampler) and sites is not None and math.isfinite(profile.net_s):
        steps = default_training_steps(target, spec.cls) or 500
        batch = int(getattr(spec.cls.Config(), "batch_size", 256))
        per_step = NEURAL_STEP_FACTOR * batch * sites ** 2 * profile.net_s
        if math.isfinite(profile.energy_s):
            per_step += batch * profile.energy_s
        return float(steps * per_step)
    return None


def select(target, method: "str | None" = None, *, profile: "DeviceProfile | None" = None,
           budget: "float | None" = None) -> Choice:
    """Pick the sampler for ``target``: a pure function of the target's metadata and, when
    given, the device ``profile`` (:func:`probe`) and the time ``budget`` in seconds.

    Without a profile or budget: the compatible method of highest priority. With both: the
    highest-priority method whose estimated time fits the budget, among the methods that give
    log Z when any compatible one does (a method without an estimate counts as fitting); on a CPU,
    methods that need no training come first among those that fit. When none fits, the fastest."""
    if getattr(target, "kind", None) is None or not hasattr(target, "domain"):
        raise TargetError(f"{type(target).__name__} is not a boltzkit target: it needs a `domain` and a "
                          "`kind`. Wrap a callable with bk.energies.Energy.from_function(fn, domain=...)")
    reg = registry()
    if method is not None:
        if method not in reg:
            near = difflib.get_close_matches(str(method), list(reg), n=1, cutoff=0.6)
            raise IncompatibleMethodError(f"unknown method {method!r}"
                                          + (f" (did you mean {near[0]!r}?)" if near else "")
                                          + f"; available: {', '.join(sorted(reg))}")
        why = reg[method].incompatibility(target)
        if why is not None:
            ok = [s.name for s in reg.values() if s.incompatibility(target) is None]
            raise IncompatibleMethodError(f"method {method!r} cannot sample {_describe(target)}: it {why}. "
                                          f"Methods that can: {', '.join(ok) or 'none'}")
        return Choice(method, "requested with method=", ())
    ok = sorted((s for s in reg.values() if s.incompatibility(target) is None),
                key=lambda s: (-s.priority_for(target), s.name))
    if not ok:
        raise IncompatibleMethodError(f"no registered method can sample {_describe(target)}")
    best = ok[0]
    article = "an" if str(target.kind)[:1] in "aeiou" else "a"
    head = f"{_describe(target)} is {article} {target.kind} target on {type(target.domain).__name__}; "
    if profile is None or budget is None:
        reason = (head + f"{best.name!r} has the highest priority ({best.priority_for(target)}) among "
                  "compatible methods" + (f" ({best.paper})" if best.paper else ""))
        return Choice(best.name, reason, tuple(s.name for s in ok[1:]))
    pool = [s for s in ok if s.provides_log_z] or ok
    est = {s.name: estimate_seconds(s, target, profile) for s in pool}
    fits = [s for s in pool if est[s.name] is None or est[s.name] <= budget]
    if profile.device == "cpu":
        from .samplers.base import TrainableSampler

        # Measured (benchmarks smc_lattice, smc_neural, discrete_asbs_regime, scale_defaults): on a
        # CPU the training-free annealers match or beat the neural samplers' log Z in a fraction of
        # their time, so a method that must train (or has no estimate) is chosen only when none of
        # them is known to fit.
        # "Known to fit" means within half the budget (CPU_PREFERENCE_MARGIN, as SMC sizes its
        # particles): a training-free method near the budget's edge does not displace the
        # higher-priority method. AIS on alanine in internal coordinates: 3.0 of 10 min estimated
        # (2.8 measured) with its gradient cost probed, so it is chosen.
        fits.sort(key=lambda s: issubclass(s.cls, TrainableSampler) or est[s.name] is None
                  or est[s.name] * CPU_PREFERENCE_MARGIN > budget)
    if fits:
        best = fits[0]
        passed = [s.name for s in fits if pool.index(s) < pool.index(best)]
        rank = "a method needing no training, preferred on a CPU," if passed else "the highest-priority method"
        why = (f"{best.name!r} is {rank} giving log Z that fits the budget of "
               f"{budget:g} s on {profile.device}" + (f" (estimated {_fmt_s(est[best.name])})"
                                                     if est[best.name] is not None else ""))
        if passed:
            why += f"; {', '.join(map(repr, passed))} must train first (pass method= to use it)"
        skipped = [s for s in pool[:pool.index(best)] if s not in fits]
        if skipped:
            why += "; " + ", ".join(f"{s.name!r} would need {_fmt_s(est[s.name])}" for s in skipped)
    else:
        best = min(pool, key=lambda s: est[s.name])
        why = (f"no method fits the budget of {budget:g} s on {profile.device}; {best.name!r} is the "
               f"fastest (estimated {_fmt_s(est[best.name])}): expect to wait, or raise the budget")
    return Choice(best.name, head + why + (f" ({best.paper})" if best.paper else ""),
                  tuple(s.name for s in ok if s is not best))


def _fmt_s(sec: float) -> str:
    if sec < 120:
        return f"{sec:.3g} s"
    if sec < 7200:
        return f"{sec / 60:.3g} min"
    return f"{sec / 3600:.3g} h"


def sampling_view_of(target):
    """``target.sampling_view()`` where the target has one (:meth:`Energy.sampling_view`), else None."""
    fn = getattr(target, "sampling_view", None)
    return fn() if callable(fn) else None


def _describe(target) -> str:
    return getattr(target, "name", type(target).__name__)


class Explanation(str):
    """The text of :func:`explain`; shows as the table itself in a REPL or notebook."""

    def __repr__(self) -> str:
        return str(self)


DEFAULT_BUDGET = 600.0


def explain(target, *, budget: float = DEFAULT_BUDGET, device="auto", file=None) -> Explanation:
    """Say which method ``bk.sample(target, budget=budget)`` would choose and why, with the table
    of methods and each compatible method's estimated time on this device (:func:`probe`).

    Returns the text (it displays as the table in a REPL); ``file`` also writes it there
    (e.g. ``file=sys.stdout``).
    """
    view = sampling_view_of(target)
    head = []
    if view is not None:
        head = [f"{_describe(target)} is sampled in other coordinates: {view.description}"]
        target = view.target
    profile = probe(target, device)
    choice = select(target, profile=profile, budget=budget)
    specs = registry().values()
    rows = head + [f"boltzkit would use {choice.name!r}: {choice.reason}", "",
                   f"device {profile.device}: energy {profile.energy_s * 1e6:.3g} us/state, "
                   + (f"energy and gradient {profile.grad_s * 1e6:.3g} us/state, "
                      if math.isfinite(profile.grad_s) else "") + "reference "
                   f"network pass {profile.net_s * 1e9:.3g} ns/state-site; estimates are good to a "
                   f"factor ~{BUDGET_FACTOR:g}", "",
                   f"{'method':<20} {'priority':>8}  {'log Z':<5}  {'estimate':>9}  status"]
    for spec in sorted(specs, key=lambda s: (-s.priority_for(target), s.name)):
        why = spec.incompatibility(target)
        status = "compatible" if why is None else f"no: {why}"
        sec = estimate_seconds(spec, target, profile) if why is None else None
        est = "-" if sec is None else _fmt_s(sec)
        if sec is not None:
            status += ", fits the budget" if sec <= budget else ", over the budget"
        rows.append(f"{spec.name:<20} {spec.priority_for(target):>8}  "
                    f"{'yes' if spec.provides_log_z else 'no':<5}  {est:>9}  {status}")
    pays = [f"  {spec.name}: {spec.pays}" for spec in sorted(specs, key=lambda s: s.name)
            if spec.pays and spec.incompatibility(target) is None]
    if pays:
        rows += ["", "when each compatible method pays:"] + pays
    text = Explanation("\n".join(rows))
    if file is not None:
        print(text, file=file)
    return text
