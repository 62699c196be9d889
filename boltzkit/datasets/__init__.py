"""Datasets as boltzkit targets (kind ``"dataset"``): the ``bk.datasets`` namespace.

Spatial and single-cell data live in their slices (:mod:`boltzkit.bio.spatial`,
:mod:`boltzkit.bio.single_cell`, :mod:`boltzkit.bio.sequences`); their dataset names are
re-exported here. Importing this package is cheap; anndata and scanpy are
imported only by the readers that need them (install ``boltzkit[bio]``).
"""

from ..bio.single_cell import CellDataset, CellExpressionDomain, SyntheticCellLaw, as_target, pbmc68k
from ..bio.spatial import (SCALE, ExpressionDomain, SpatialDataset, hex_grid, load_image,
                           result_to_anndata, select_genes)
from ..bio.sequences import SequenceDataset, ars_dna, peptides  # (modlamp/logomaker located, not imported)

__all__ = ["SpatialDataset", "ExpressionDomain", "select_genes", "result_to_anndata", "hex_grid",
           "load_image", "SCALE", "SequenceDataset", "peptides", "ars_dna", "CellDataset",
           "CellExpressionDomain", "SyntheticCellLaw", "pbmc68k", "as_target"]
