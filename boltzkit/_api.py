"""The one call: ``bk.sample(target)``."""

from __future__ import annotations

from ._registry import DEFAULT_BUDGET, default_training_steps, probe, registry, sampling_view_of, select
from .errors import ConfigError
from .result import Result


def sample(target, method: "str | None" = None, *, n_samples: "int | None" = None,
           n_steps: "int | None" = None, seed: "int | None" = None, device="auto",
           progress: "bool | None" = None, checkpoint=None, budget: float = DEFAULT_BUDGET,
           **options) -> Result:
    """Sample ``target`` and estimate its free energy.

    Parameters
    ----------
    target : an :class:`~boltzkit.energies.Energy` (or another boltzkit target).
    method : registry name (``bk.explain(target)`` lists them); None picks the default.
    n_samples : number of samples to return (None: the method's ``default_n_samples``,
        10 000 unless the method says otherwise, e.g. samples per spot for Stem).
    n_steps : training steps (neural samplers) or sweeps / annealing steps (MCMC, AIS);
        None uses the method's default.
    seed : int for reproducible runs; None draws fresh entropy (recorded in the Result).
    device : "auto" (CUDA when available), "cpu" or "cuda".
    progress : show a progress bar; None = when stderr is a terminal and CI is unset.
    checkpoint : path of a training checkpoint (neural samplers resume from it).
    budget : seconds the default choice may take: without ``method``, the highest-priority
        method giving log Z whose estimated time on this device fits (``bk.explain`` shows the
        estimates, good to a factor ~3); a method that sizes itself to it (SMC) does so.
    **options : method options (the method's Config fields); unknown names are an error.

    A target may ask to be sampled in other coordinates (:meth:`Energy.sampling_view`, e.g.
    :class:`~boltzkit.energies.AlanineDipeptide` in internal coordinates); the method then
    runs there and the Result is mapped back to the target's own states.
    """
    from .adapters import adapt  # e.g. an AnnData becomes a CellDataset (boltzkit.adapters)

    target, n_samples, options = adapt(target, n_samples, options)
    if isinstance(budget, bool) or not (isinstance(budget, (int, float)) and budget > 0):
        raise ConfigError(f"budget must be a positive number of seconds, got {budget!r}")
    view = sampling_view_of(target)
    if view is not None:  # e.g. a molecule sampled in internal coordinates, returned in Cartesian
        vt = view.target
        choice = select(vt, method, profile=None if method else probe(vt, device), budget=budget)
        defaults = dict(view.method_options.get(choice.name, {}))
        view_steps = defaults.pop("n_steps", None)
        n_steps = view_steps if n_steps is None else n_steps
        options = {**defaults, **options}
        res = sample(view.target, choice.name, n_samples=n_samples, n_steps=n_steps, seed=seed,
                     device=device, progress=progress, checkpoint=checkpoint, budget=budget, **options)
        return view.pull_back(res, target)
    is_target = hasattr(target, "domain") and getattr(target, "kind", None) is not None
    profile = probe(target, device) if is_target and method is None else None
    choice = select(target, method, profile=profile, budget=budget)
    cls = registry()[choice.name].cls
    sized = getattr(cls, "n_samples_for_budget", None)
    if n_samples is None and callable(sized):  # e.g. SMC: as many particles as the budget allows
        n_samples = sized(target, profile or probe(target, device), budget,
                          {k: v for k, v in options.items() if k in cls.Config.__dataclass_fields__})
    if n_samples is None:
        n_samples = int(getattr(cls, "default_n_samples", 10_000))
    if n_steps is None and "n_steps" not in options and hasattr(cls, "default_n_steps"):
        n_steps = default_training_steps(target, cls)  # neural samplers: scaled to the target
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
        raise ConfigError(f"n_samples must be a positive integer, got {n_samples!r}")
    sampler = cls(device=device, seed=seed, progress=progress, **options)
    sampler.fit(target, n_steps=n_steps, checkpoint=checkpoint)
    from . import distributed

    return distributed.sample_across_ranks(sampler, n_samples)  # pooled under torchrun
