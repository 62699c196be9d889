"""Spatial transcriptomics: spots with expression, coordinates and a tissue image.

* :mod:`~boltzkit.bio.spatial.dataset` -- the domain, :class:`SpatialDataset` with its readers
  (AnnData / Visium, HEST), gene selection, patches;
* :mod:`~boltzkit.bio.spatial.io` -- Stem results back to AnnData;
* :mod:`~boltzkit.bio.spatial.encoders` -- image encoders for tissue patches;
* :mod:`~boltzkit.bio.spatial.synthetic` -- semi-synthetic tissue with a known image-to-expression law;
* :mod:`~boltzkit.bio.spatial.metrics` -- PCC, MSE, MAE, relative variance distance, calibration, ARI;
* :mod:`~boltzkit.bio.spatial.baselines` -- embedding regressor and nearest-neighbour retrieval;
* :mod:`~boltzkit.bio.spatial.stem` -- the Stem sampler (``"stem"``).

The dataset names are imported here; the other modules on first use.
"""

from .. import lazy_submodules
from .dataset import SCALE, ExpressionDomain, SpatialDataset, cut_patches, hex_grid, load_image, select_genes
from .io import result_to_anndata

__all__ = ["SpatialDataset", "ExpressionDomain", "select_genes", "result_to_anndata", "hex_grid",
           "cut_patches", "load_image", "SCALE"]
__getattr__ = lazy_submodules(__name__, ("encoders", "synthetic", "metrics", "baselines", "stem"))
