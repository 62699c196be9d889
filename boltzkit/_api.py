"""The one call: ``bk.sample(target)``."""

from __future__ import annotations

from ._registry import registry, sampling_view_of, select
from .errors import ConfigError
from .result import Result


def sample(target, method: "str | None" = None, *, n_samples: "int | None" = None,
           n_steps: "int | None" = None, seed: "int | None" = None, device="auto",
           progress: "bool | None" = None, checkpoint=None, **options) -> Result:
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
    **options : method options (the method's Config fields); unknown names are an error.

    A target may ask to be sampled in other coordinates (:meth:`Energy.sampling_view`, e.g.
    :class:`~boltzkit.energies.AlanineDipeptide` in internal coordinates); the method then
    runs there and the Result is mapped back to the target's own states.
    """
    from .adapters import adapt  # e.g. an AnnData becomes a CellDataset (boltzkit.adapters)

    target, n_samples, options = adapt(target, n_samples, options)
    view = sampling_view_of(target)
    if view is not None:  # e.g. a molecule sampled in internal coordinates, returned in Cartesian
        choice = select(view.target, method)
        defaults = dict(view.method_options.get(choice.name, {}))
        view_steps = defaults.pop("n_steps", None)
        n_steps = view_steps if n_steps is None else n_steps
        options = {**defaults, **options}
        res = sample(view.target, choice.name, n_samples=n_samples, n_steps=n_steps, seed=seed,
                     device=device, progress=progress, checkpoint=checkpoint, **options)
        return view.pull_back(res, target)
    choice = select(target, method)
    cls = registry()[choice.name].cls
    if n_samples is None:
        n_samples = int(getattr(cls, "default_n_samples", 10_000))
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
        raise ConfigError(f"n_samples must be a positive integer, got {n_samples!r}")
    sampler = cls(device=device, seed=seed, progress=progress, **options)
    fit_kw = {"n_steps": n_steps}
    if checkpoint is not None:
        fit_kw["checkpoint"] = checkpoint
    sampler.fit(target, **fit_kw)
    from . import distributed

    return distributed.sample_across_ranks(sampler, n_samples)  # pooled under torchrun
