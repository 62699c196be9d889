"""Single cells: cells x genes with a cell-type label, and their cell-type-conditional generators.

* :mod:`~boltzkit.bio.single_cell.dataset` -- the domain, :class:`CellDataset` and its AnnData
  IO (:func:`as_target`, :func:`pbmc68k`, :func:`result_to_anndata`), the exact
  :class:`SyntheticCellLaw`, and the matrix helpers the rest of the slice shares;
* :mod:`~boltzkit.bio.single_cell.metrics` -- generation metrics with a real-vs-real floor;
* :mod:`~boltzkit.bio.single_cell.baselines` -- NB, Gaussian-PCA, conditional VAE, scVI;
* :mod:`~boltzkit.bio.single_cell.plots` -- the ``sample_plot`` hook of a cells dataset;
* :mod:`~boltzkit.bio.single_cell.diffusion` -- the ``sc_diffusion`` sampler;
* :mod:`~boltzkit.bio.single_cell.latent` -- the ``sc_latent`` sampler (NB autoencoder + latent diffusion).

The dataset names are imported here; the other modules on first use.
"""

from .. import lazy_submodules
from .dataset import (CellDataset, CellExpressionDomain, SyntheticCellLaw, as_target, pbmc68k,
                      result_to_anndata)

__all__ = ["CellDataset", "CellExpressionDomain", "SyntheticCellLaw", "pbmc68k", "as_target",
           "result_to_anndata"]
__getattr__ = lazy_submodules(__name__, ("metrics", "baselines", "plots", "diffusion", "latent"))
