"""Biology helpers shared by the spatial (Stem) and single-cell generative models.

* :mod:`boltzkit.bio.encoders` -- image encoders for tissue patches;
* :mod:`boltzkit.bio.metrics` -- PCC, MSE, MAE, relative variance distance, calibration, ARI;
* :mod:`boltzkit.bio.synthetic` -- semi-synthetic tissue with a known image-to-expression law;
* :mod:`boltzkit.bio.baselines` -- embedding regressor and nearest-neighbour retrieval;
* :mod:`boltzkit.bio.sc_metrics` -- single-cell generation metrics with a real-vs-real floor;
* :mod:`boltzkit.bio.sc_baselines` -- single-cell generation baselines (NB, Gaussian-PCA,
  conditional VAE, scVI when scvi-tools is installed).

Submodules are imported on first use.
"""

import importlib

__all__ = ["encoders", "metrics", "synthetic", "baselines", "sc_metrics", "sc_baselines"]


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'boltzkit.bio' has no attribute {name!r}")
