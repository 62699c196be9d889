"""What the spatial and single-cell slices share: gene names, matrices read from AnnData, and
the energy distance between sample sets."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DatasetError

__all__ = ["checked_gene_names", "dense_rows", "anndata_matrix", "as_2d", "energy_distance"]


def checked_gene_names(gene_names, what: str) -> "list[str]":
    """``gene_names`` as strings, or DatasetError unless there is at least one and all are unique."""
    names = [str(g) for g in gene_names]
    if not names:
        raise DatasetError(f"{what} needs at least one gene")
    if len(set(names)) != len(names):
        dup = sorted({g for g in names if names.count(g) > 1})[:5]
        raise DatasetError(f"gene names must be unique; repeated: {dup}. "
                           "Make them unique with adata.var_names_make_unique()")
    return names


def dense_rows(x, idx=None, dtype=np.float64) -> np.ndarray:
    """Rows ``idx`` (all rows when None) of a dense or sparse matrix as a dense array: the one
    place where mini-batches of a sparse matrix are densified."""
    sub = x if idx is None else x[np.asarray(idx)]
    return np.asarray(sub.toarray() if hasattr(sub, "toarray") else sub, dtype=dtype)


def anndata_matrix(adata, layer: "str | None"):
    """``adata.X`` (``layer=None``) or ``adata.layers[layer]``, as stored; DatasetError naming the
    layers there are when it is missing or empty."""
    if layer is not None and layer not in adata.layers:
        raise DatasetError(f"adata.layers has no {layer!r}; layers are {list(adata.layers)}. "
                           "Pass layer=None to use adata.X")
    mat = adata.X if layer is None else adata.layers[layer]
    if mat is None:
        raise DatasetError(f"adata.X is empty; pass layer=... naming the layer with the expression "
                           f"(layers: {list(adata.layers)})")
    return mat


def as_2d(a, what: str, min_rows: int = 1) -> np.ndarray:
    """``a`` as a float64 ``(n, d)`` array with ``n >= min_rows``, else ValueError naming ``what``."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < min_rows:
        raise ValueError(f"{what} must be a 2-D (n, genes) array with n >= {min_rows}, got shape {a.shape}")
    return a


def energy_distance(samples, reference) -> np.ndarray:
    r"""Per-row energy distance between sample sets, ``(n,)``.

    ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` with ``X`` from ``samples`` ``(n, k, G)`` and ``Y``
    from ``reference`` ``(n, m, G)``; the within-set terms use distinct pairs (unbiased U-
    statistics), so it is zero in expectation when both sets come from the same law.
    """
    x = torch.as_tensor(np.asarray(samples), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(reference), dtype=torch.float64)
    if x.ndim != 3 or y.ndim != 3 or x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(f"samples {tuple(x.shape)} and reference {tuple(y.shape)} must be "
                         "(n, k, G) and (n, m, G)")
    k, m = x.shape[1], y.shape[1]
    if k < 2 or m < 2:
        raise ValueError("energy distance needs at least 2 samples per row in each set")
    xy = torch.cdist(x, y).mean((1, 2))
    xx = torch.cdist(x, x).sum((1, 2)) / (k * (k - 1))
    yy = torch.cdist(y, y).sum((1, 2)) / (m * (m - 1))
    return (2 * xy - xx - yy).numpy()
