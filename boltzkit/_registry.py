"""Sampler registry and the rule that picks a sampler for a target."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .errors import IncompatibleMethodError


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
        if self.supports is not None:
            return self.supports(target)
        return None


_REGISTRY: dict[str, SamplerSpec] = {}


def register(name: str, *, kinds=("energy",), domains=(), priority: int = 0,
             provides_log_z: bool = True, paper: str = "", description: str = "",
             supports=None):
    """Class decorator that records a sampler under ``name``."""

    def deco(cls):
        cls.name = name
        _REGISTRY[name] = SamplerSpec(name, cls, frozenset(kinds), tuple(domains), priority,
                                      provides_log_z, paper, description or (cls.__doc__ or "").strip().split("\n")[0],
                                      supports)
        return cls

    return deco


def _load_builtin():
    # importing the samplers package registers every built-in method
    from . import samplers  # noqa: F401


def registry() -> dict[str, SamplerSpec]:
    _load_builtin()
    return dict(_REGISTRY)


@dataclass(frozen=True)
class Choice:
    name: str
    reason: str
    alternatives: tuple = field(default=())


def select(target, method: "str | None" = None) -> Choice:
    """Pick the sampler for ``target`` (a pure function of the target's metadata)."""
    if getattr(target, "kind", None) is None or not hasattr(target, "domain"):
        from .errors import TargetError

        raise TargetError(f"{type(target).__name__} is not a boltzkit target: it needs a `domain` and a "
                          "`kind`. Wrap a callable with bk.energies.Energy.from_function(fn, domain=...)")
    reg = registry()
    if method is not None:
        if method not in reg:
            import difflib

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
    reason = (f"{_describe(target)} is {article} {target.kind} target on {type(target.domain).__name__}; "
              f"{best.name!r} has the highest priority ({best.priority_for(target)}) among compatible methods"
              + (f" ({best.paper})" if best.paper else ""))
    return Choice(best.name, reason, tuple(s.name for s in ok[1:]))


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


def explain(target, *, file=None) -> Explanation:
    """Say which method ``bk.sample`` would choose for ``target`` and why, with the table of methods.

    Returns the text (it displays as the table in a REPL); ``file`` also writes it there
    (e.g. ``file=sys.stdout``).
    """
    view = sampling_view_of(target)
    head = []
    if view is not None:
        head = [f"{_describe(target)} is sampled in other coordinates: {view.description}"]
        target = view.target
    choice = select(target)
    rows = head + [f"boltzkit would use {choice.name!r}: {choice.reason}", "",
            f"{'method':<20} {'priority':>8}  {'log Z':<5}  status"]
    for spec in sorted(registry().values(), key=lambda s: (-s.priority_for(target), s.name)):
        why = spec.incompatibility(target)
        status = "compatible" if why is None else f"no: {why}"
        rows.append(f"{spec.name:<20} {spec.priority_for(target):>8}  {'yes' if spec.provides_log_z else 'no':<5}  {status}")
    text = Explanation("\n".join(rows))
    if file is not None:
        print(text, file=file)
    return text
