"""Datasets as boltzkit targets (kind ``"dataset"``): spatial transcriptomics.

Importing this package is cheap; anndata and scanpy are imported only by the readers that
need them (install ``boltzkit[bio]``).
"""

from .spatial import (SCALE, ExpressionDomain, SpatialDataset, hex_grid, load_image,
                      result_to_anndata, select_genes)

__all__ = ["SpatialDataset", "ExpressionDomain", "select_genes", "result_to_anndata", "hex_grid",
           "load_image", "SCALE"]
