"""boltzkit: neural samplers and free-energy estimators for hard distributions.

    import boltzkit as bk
    res = bk.sample(bk.energies.Ising(L=16, beta=0.4407))
    res.samples, res.log_z, res.log_z_stderr, res.ess
"""

__version__ = "0.1.0"

from . import domains, energies, errors, estimators  # noqa: E402
from ._api import sample  # noqa: E402
from ._registry import Choice, explain, register, registry, select  # noqa: E402
from .result import Result  # noqa: E402
from .constraints import constrain  # noqa: E402
from . import cv, free_energy  # noqa: E402,F401  (public; pymbar loads on first use)
from .free_energy import free_energy_difference, mbar  # noqa: E402,F401  (public)
from . import bio, datasets  # noqa: E402  (cheap: anndata/scanpy load only inside its readers)


def methods() -> str:
    """The registered methods as an aligned table (what ``boltzkit methods`` prints): name,
    target kinds, domains, whether it estimates log Z, and its paper. Shows as the table in a
    REPL or notebook."""
    from ._registry import Explanation

    def rank(spec):
        p = spec.priority
        return -(max(p.values()) if isinstance(p, dict) and p else p if isinstance(p, int) else 0)

    specs = sorted(registry().values(), key=lambda s: (rank(s), s.name))
    rows = [("method", "kinds", "domains", "log Z", "paper / description")]
    rows += [(s.name, "/".join(sorted(s.kinds)), ", ".join(d.__name__ for d in s.domains),
              "yes" if s.provides_log_z else "no", s.paper or s.description) for s in specs]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * len(rows[0][4]))
    return Explanation("\n".join(line.rstrip() for line in lines))


def load(path) -> Result:
    """Load a :class:`Result` saved with ``Result.save``."""
    return Result.load(path)


# lazy: samplers import torch machinery that plain users may not need
_lazy_submodule = bio.lazy_submodules(__name__, ("samplers", "models", "rewards", "adapters", "nn"))
_LAZY_NAMES = {"MaskedDiffusion": ".bio.sequences.masked_diffusion", "RewardTarget": ".rewards"}


def __getattr__(name):
    if name in _LAZY_NAMES:
        import importlib

        return getattr(importlib.import_module(_LAZY_NAMES[name], __name__), name)
    return _lazy_submodule(name)


__all__ = ["sample", "select", "explain", "methods", "register", "registry", "Choice", "Result", "load",
           "constrain", "domains", "energies", "estimators", "errors", "samplers", "datasets",
           "__version__"]
