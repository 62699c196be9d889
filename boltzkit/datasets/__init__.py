"""Datasets as boltzkit targets (kind ``"dataset"``): spatial transcriptomics.

Importing this package is cheap; anndata and scanpy are imported only by the readers that
need them (install ``boltzkit[bio]``).
"""

from .spatial import (SCALE, ExpressionDomain, SpatialDataset, hex_grid, load_image,
                      result_to_anndata, select_genes)

__all__ = ["SpatialDataset", "ExpressionDomain", "select_genes", "result_to_anndata", "hex_grid",
           "load_image", "SCALE"]

from .sequences import SequenceDataset, ars_dna, peptides  # noqa: E402  (modlamp/logomaker located, not imported)

__all__ += ["SequenceDataset", "peptides", "ars_dna"]

from .single_cell import (CellDataset, CellExpressionDomain, SyntheticCellLaw, as_target,  # noqa: E402
                          pbmc68k)

__all__ += ["CellDataset", "CellExpressionDomain", "SyntheticCellLaw", "pbmc68k", "as_target"]
