"""Single cells: cells x genes with a cell-type label, and their cell-type-conditional generators.

* :mod:`~boltzkit.bio.single_cell.dataset` -- the domain, :class:`CellDataset` (read from
  AnnData with :func:`as_target`) and the matrix helpers the rest of the slice shares;
* :mod:`~boltzkit.bio.single_cell.io` -- generated cells back to AnnData
  (:func:`result_to_anndata`) and scanpy's PBMC cells (:func:`pbmc68k`);
* :mod:`~boltzkit.bio.single_cell.synthetic` -- :class:`SyntheticCellLaw`, a law with exact answers;
* :mod:`~boltzkit.bio.single_cell.metrics` -- generation metrics with a real-vs-real floor;
* :mod:`~boltzkit.bio.single_cell.baselines` -- NB, Gaussian-PCA, conditional VAE, scVI;
* :mod:`~boltzkit.bio.single_cell.plots` -- the ``sample_plot`` hook of a cells dataset;
* :mod:`~boltzkit.bio.single_cell.diffusion` -- the ``sc_diffusion`` sampler;
* :mod:`~boltzkit.bio.single_cell.latent` -- the ``sc_latent`` sampler (NB autoencoder + latent diffusion);
* :mod:`~boltzkit.bio.single_cell.generator` -- what those two share; :mod:`~boltzkit.bio.single_cell.nb`
  -- the negative binomial of counts in torch.

The dataset names are imported here; the other modules on first use.
"""

from .. import lazy_submodules
from .dataset import CellDataset, CellExpressionDomain, allocate, as_target, log_normalize
from .io import pbmc68k, result_to_anndata
from .synthetic import SyntheticCellLaw

__all__ = ["CellDataset", "CellExpressionDomain", "SyntheticCellLaw", "pbmc68k", "as_target",
           "result_to_anndata", "log_normalize", "allocate"]
__getattr__ = lazy_submodules(__name__, ("metrics", "baselines", "plots", "diffusion", "latent", "generator", "nb"))
