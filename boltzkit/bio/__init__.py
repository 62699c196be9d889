"""Biology as vertical slices: each holds its data, domain, IO, metrics, baselines and models.

* :mod:`boltzkit.bio.spatial` -- spatial transcriptomics (the Stem sampler);
* :mod:`boltzkit.bio.single_cell` -- single cells (the ``sc_diffusion`` / ``sc_latent`` samplers);
* :mod:`boltzkit.bio.sequences` -- peptides and DNA (the masked diffusion model ``tr2d2`` fine-tunes).

Each slice's package docstring lists its modules. The datasets are re-exported by
:mod:`boltzkit.datasets` (``bk.datasets``). A slice's sampler modules register their methods when
imported; the registry imports them (:data:`SAMPLERS`) on first use, so ``import boltzkit`` loads
none of them. Submodules are imported on first use.
"""

import importlib

__all__ = ["spatial", "single_cell", "sequences"]

SAMPLERS = ("spatial.stem", "single_cell.diffusion", "single_cell.latent")  # modules that register


def load_samplers() -> None:
    """Import the slices' sampler modules (which registers their methods)."""
    for name in SAMPLERS:
        importlib.import_module(f".{name}", __name__)


def lazy_submodules(package: str, names):
    """A module ``__getattr__`` importing the submodules ``names`` of ``package`` on first use."""
    def __getattr__(name):
        if name in names:
            return importlib.import_module(f".{name}", package)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return __getattr__


__getattr__ = lazy_submodules(__name__, __all__)
