r"""Single-cell expression data as boltzkit targets: cells x genes with a cell-type label.

:class:`CellDataset` is a target of kind ``"dataset"`` on a :class:`CellExpressionDomain`
(non-negative expression vectors of named genes, either raw ``"counts"`` or ``"log1p"``
log-normalised values). It carries one categorical label per cell (``obs[label_key]``), which
conditional generators (``"sc_diffusion"``, ``"sc_latent"``) condition on.

* :meth:`CellDataset.from_anndata` / :func:`as_target` -- read an AnnData (``X`` or a layer;
  a sparse matrix is kept sparse as CSR and only mini-batches of rows are densified), with the
  checks biologists need before any training; :meth:`CellDataset.to_anndata` writes the cells back.

Generated cells go back to AnnData in :mod:`~boltzkit.bio.single_cell.io` (with the PBMC
reader), the exact synthetic law is in :mod:`~boltzkit.bio.single_cell.synthetic`.
Helpers shared by the generators, baselines and metrics: :func:`log_normalize`,
:class:`PCABasis`, :func:`allocate`. anndata and scanpy are imported only where needed
(extra ``boltzkit[bio]``).
"""

from __future__ import annotations

import sys
from typing import Sequence

import numpy as np
import torch
from scipy import sparse

from ...domains.base import Domain
from ...errors import ConfigError, DatasetError, TargetError, require
from ..common import anndata_matrix, checked_gene_names, dense_rows

__all__ = ["CellDataset", "CellExpressionDomain", "as_target", "is_anndata", "log_normalize",
           "PCABasis", "allocate", "REPRESENTATIONS", "ANNDATA_KIND", "TARGET_SUM", "row_sums",
           "is_integer_valued", "cells_anndata"]

REPRESENTATIONS = ("counts", "log1p")
ANNDATA_KIND = "single_cell"  # Result.diagnostics["anndata_kind"] of generated cells
TARGET_SUM = 1e4


# ---------------------------------------------------------------------------- helpers
def _as_matrix(m):
    """float32 CSR for sparse input (never densified), float32 ndarray otherwise."""
    return sparse.csr_matrix(m, dtype=np.float32) if sparse.issparse(m) else np.asarray(m, dtype=np.float32)


def row_sums(x) -> np.ndarray:
    """Row sums of a dense or sparse matrix (float64, no densification)."""
    return np.asarray(x.sum(1), dtype=np.float64).reshape(-1)


def _values(x) -> np.ndarray:
    """The stored values (the non-zeros of a sparse matrix; every entry of a dense one)."""
    return x.data if sparse.issparse(x) else np.asarray(x).reshape(-1)


def is_integer_valued(x) -> bool:
    v = _values(x)
    return bool(np.all(v == np.round(v)))


def log_normalize(counts, size_factors=None, target_sum: float = TARGET_SUM) -> np.ndarray:
    """``log1p(counts / size_factor * target_sum)`` (scanpy ``normalize_total`` + ``log1p``), dense.

    ``size_factors`` default to the row sums; rows whose size factor is 0 stay 0. A sparse
    ``counts`` is densified: pass mini-batches of rows.
    """
    c = dense_rows(counts)
    s = c.sum(1) if size_factors is None else np.asarray(size_factors, dtype=np.float64).reshape(-1)
    if s.shape[0] != c.shape[0]:
        raise DatasetError(f"{s.shape[0]} size factors for {c.shape[0]} cells")
    scale = np.divide(target_sum, s, out=np.zeros_like(s), where=s > 0)
    return np.log1p(c * scale[:, None])


def allocate(n: int, weights) -> np.ndarray:
    """Split ``n`` into integer parts proportional to ``weights`` (largest remainder)."""
    w = np.asarray(weights, dtype=np.float64)
    share = n * w / w.sum()
    out = np.floor(share).astype(np.int64)
    rest = int(n - out.sum())
    if rest:
        out[np.argsort(-(share - out), kind="stable")[:rest]] += 1
    return out


class PCABasis:
    """Principal axes of a cells x genes matrix (centred SVD; numpy only).

    Parameters
    ----------
    x : array (n, G)
    n_components : int
        Clipped to ``min(n - 1, G)``.
    """

    def __init__(self, x, n_components: int = 50):
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise DatasetError(f"PCA needs a (cells >= 2, genes) matrix, got shape {x.shape}")
        k = int(max(1, min(n_components, x.shape[0] - 1, x.shape[1])))
        self.mean = x.mean(0)
        _, _, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        self.components = vt[:k]  # (k, G)
        resid = (x - self.mean) - ((x - self.mean) @ self.components.T) @ self.components
        self.residual_variance = resid.var(0, ddof=1)  # per gene, outside the k axes

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    def transform(self, x) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) @ self.components.T

    def inverse(self, z) -> np.ndarray:
        return np.asarray(z, dtype=np.float64) @ self.components + self.mean


def is_anndata(obj) -> bool:
    """True for an ``anndata.AnnData`` (without importing anndata when it is not loaded)."""
    ad = sys.modules.get("anndata")
    return ad is not None and isinstance(obj, ad.AnnData)


# ---------------------------------------------------------------------------- domain
class CellExpressionDomain(Domain):
    """Expression vectors of named genes: ``"counts"`` (non-negative integers) or ``"log1p"``
    (non-negative log-normalised values)."""

    is_discrete = False

    def __init__(self, gene_names: Sequence[str], representation: str = "log1p"):
        names = checked_gene_names(gene_names, "a cell expression domain")
        if representation not in REPRESENTATIONS:
            raise DatasetError(f"representation must be one of {REPRESENTATIONS}, got {representation!r}")
        self.gene_names = names
        self.representation = representation
        self.event_shape = (len(names),)
        self.dtype = torch.float32

    def reference(self, n, *, generator=None, device="cpu"):
        """|N(0, 1)| draws (rounded for counts): valid, uninformative states."""
        x = torch.randn(n, *self.event_shape, generator=generator, device=device).abs()
        return x.round() if self.representation == "counts" else x

    def contains(self, x):
        ok = torch.isfinite(x) & (x >= 0)
        if self.representation == "counts":
            ok = ok & (x == x.round())
        return ok.all(dim=-1)

    def _range_hint(self):
        return ("counts must be non-negative integers" if self.representation == "counts"
                else "log-normalised expression must be finite and non-negative")

    def to_config(self):
        return {"type": "CellExpression", "n_genes": len(self.gene_names),
                "representation": self.representation, "gene_names": list(self.gene_names)}

    def __repr__(self):
        return f"CellExpressionDomain({len(self.gene_names)} genes, {self.representation})"


# ---------------------------------------------------------------------------- the dataset
class CellDataset:
    """Cells x genes with one categorical label per cell: a boltzkit ``"dataset"`` target.

    Parameters
    ----------
    x : array (n_cells, n_genes)
        Non-negative expression: raw counts or log-normalised values (``representation``).
    labels : sequence (n_cells,)
        Cell type (or any category) of each cell; converted to str.
    gene_names : sequence of str
    label_key : str
        Name of the label column (``obs[label_key]`` in AnnData).
    representation : "counts" or "log1p"
    categories : sequence of str, optional
        Label order (default: sorted labels present).
    obs_names : sequence of str, optional
    layer : str, optional
        AnnData layer the matrix came from (None: ``X``); generated cells are written back there.
    size_factors : array (n_cells,), optional
        Library sizes (e.g. ``obs["n_counts"]``), used by count baselines.
    name, provenance : str
    """

    kind = "dataset"

    def __init__(self, x, labels, *, gene_names, label_key: str = "label",
                 representation: str = "log1p", categories=None, obs_names=None,
                 layer: "str | None" = None, size_factors=None, name: str = "cells",
                 provenance: str = "user data", uns_log1p: bool = False, var=None):
        x = _as_matrix(x)
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise DatasetError(f"the expression matrix is empty or not 2-D (shape {x.shape}); "
                               "a cell dataset needs at least one cell and one gene")
        self.domain = CellExpressionDomain(gene_names, representation)
        if x.shape[1] != len(self.domain.gene_names):
            raise DatasetError(f"the matrix has {x.shape[1]} genes but {len(self.domain.gene_names)} "
                               "gene names were given")
        _check_values(x, self.domain.gene_names, representation)
        labels = np.asarray([str(v) for v in labels], dtype=object)
        if labels.shape != (x.shape[0],):
            raise DatasetError(f"{labels.size} labels for {x.shape[0]} cells")
        present = set(labels)
        declared = sorted(present) if categories is None else [str(c) for c in categories]
        cats = [c for c in declared if c in present]
        # declared categories without a single cell (e.g. after subsetting): not generable
        self.empty_categories = [c for c in declared if c not in present]
        missing = sorted(present - set(declared))
        if missing:
            raise DatasetError(f"labels {missing[:5]} are not among the categories {cats}")
        self.x = x
        self.labels = labels
        self.categories = cats
        code = {c: i for i, c in enumerate(cats)}
        self.codes = np.array([code[v] for v in labels], dtype=np.int64)
        self.label_key = str(label_key)
        self.obs_names = ([f"cell{i}" for i in range(x.shape[0])] if obs_names is None
                          else [str(o) for o in obs_names])
        if len(self.obs_names) != x.shape[0]:
            raise DatasetError(f"{len(self.obs_names)} obs_names for {x.shape[0]} cells")
        self.layer = layer
        self.size_factors = None
        if size_factors is not None:
            s = np.asarray(size_factors, dtype=np.float64).reshape(-1)
            if s.shape != (x.shape[0],) or not np.isfinite(s).all() or (s <= 0).any():
                raise DatasetError("size_factors must be one positive finite number per cell")
            self.size_factors = s
        self.name, self.provenance = str(name), str(provenance)
        self.uns_log1p = bool(uns_log1p)
        self.var = None if var is None else var.copy()  # AnnData var (a DataFrame), kept for the output

    @property
    def is_sparse(self) -> bool:
        return sparse.issparse(self.x)

    def rows(self, idx=None, dtype=np.float64) -> np.ndarray:
        """Dense rows ``idx`` of the matrix (all rows when None; for a sparse matrix only the
        rows asked for are densified)."""
        return dense_rows(self.x, idx, dtype)

    def library_sizes(self) -> np.ndarray:
        """Row sums of the matrix (the library over the modelled genes, for counts)."""
        return row_sums(self.x)

    # ------------------------------------------------------------------ basics
    @property
    def gene_names(self) -> list:
        return self.domain.gene_names

    @property
    def representation(self) -> str:
        return self.domain.representation

    @property
    def n_cells(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_genes(self) -> int:
        return int(self.x.shape[1])

    def __len__(self):
        return self.n_cells

    def label_counts(self) -> dict:
        """``{label: number of cells}`` in category order."""
        return {c: int(n) for c, n in zip(self.categories, np.bincount(self.codes, minlength=len(self.categories)))}

    def log1p(self) -> np.ndarray:
        """The matrix on a log scale, dense: ``log1p(counts)`` for counts (no library
        normalisation, so it inverts exactly), the values themselves for log-normalised data.
        (Densifies the whole matrix: gene-space models and small data only.)"""
        x = self.rows()
        return np.log1p(x) if self.representation == "counts" else x

    def subset(self, idx, *, name: "str | None" = None) -> "CellDataset":
        """The cells ``idx`` (indices or boolean mask); categories keep their order."""
        idx = np.arange(self.n_cells)[np.asarray(idx)]
        return CellDataset(self.x[idx], self.labels[idx], gene_names=self.gene_names,
                           label_key=self.label_key, representation=self.representation,
                           categories=self.categories, obs_names=[self.obs_names[i] for i in idx],
                           layer=self.layer,
                           size_factors=None if self.size_factors is None else self.size_factors[idx],
                           name=name or self.name, provenance=self.provenance, uns_log1p=self.uns_log1p,
                           var=self.var)

    def split(self, test_fraction: float = 0.2, *, seed: int = 0) -> "tuple[CellDataset, CellDataset]":
        """Stratified (train, test) split: each label keeps ``test_fraction`` of its cells in test
        (rounded, at least one cell on each side for labels with >= 2 cells)."""
        if not 0 < test_fraction < 1:
            raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
        rng = np.random.default_rng(seed)
        test = np.zeros(self.n_cells, dtype=bool)
        for c in range(len(self.categories)):
            idx = rng.permutation(np.flatnonzero(self.codes == c))
            k = int(round(test_fraction * idx.size))
            k = min(max(k, 1), idx.size - 1) if idx.size >= 2 else 0
            test[idx[:k]] = True
        return self.subset(~test, name=f"{self.name}-train"), self.subset(test, name=f"{self.name}-test")

    sample_plot = "boltzkit.bio.single_cell.plots:cell_sample_plot"  # Result.plot: mean-variance + PCA overlay

    def to_config(self) -> dict:
        """JSON-able description (stored in ``Result.target``)."""
        return {"name": self.name, "kind": self.kind, "n_cells": self.n_cells,
                "label_key": self.label_key, "label_counts": self.label_counts(),
                "layer": self.layer, "provenance": self.provenance, "domain": self.domain.to_config(),
                "sample_plot": self.sample_plot}

    def __repr__(self):
        return (f"CellDataset({self.name!r}: {self.n_cells} cells x {self.n_genes} genes, "
                f"{self.representation}, {len(self.categories)} labels in obs[{self.label_key!r}])")

    # ------------------------------------------------------------------ AnnData
    @classmethod
    def from_anndata(cls, adata, label_key: "str | None" = None, layer: "str | None" = None, *,
                     representation: str = "auto", size_factor_key: "str | None" = "n_counts",
                     name: "str | None" = None, provenance: "str | None" = None) -> "CellDataset":
        """Read cells from an AnnData.

        Parameters
        ----------
        adata : anndata.AnnData
        label_key : str
            Categorical ``obs`` column to condition on (e.g. ``"bulk_labels"``).
        layer : str, optional
            Layer with the expression (default ``adata.X``). Generated cells come back in the
            same layer and representation.
        representation : "auto", "counts" or "log1p"
            "auto": integer-valued matrices are counts, other non-negative ones log-normalised.
        size_factor_key : str, optional
            ``obs`` column with library sizes, used when present (count baselines).
        name : str, optional
        provenance : str, optional
            Where the cells come from (default: ``adata.uns["boltzkit"]["provenance"]`` when
            present, as for :func:`pbmc68k`, else "user data").

        Raises
        ------
        DatasetError
            Empty AnnData, ``label_key`` missing (the ``obs`` columns are listed), missing
            layer, NaN or infinite values (the genes are named), negative values.
        """
        require("anndata", "bio")
        if not is_anndata(adata):
            raise TargetError(f"expected an anndata.AnnData, got {type(adata).__name__}")
        if adata.n_obs == 0 or adata.n_vars == 0:
            raise DatasetError(f"the AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes); "
                               "check the filtering that produced it")
        cols = list(map(str, adata.obs.columns))
        if label_key is None:
            raise DatasetError(f"label_key is required: the obs column with the cell types to "
                               f"condition on; obs columns are {cols}")
        if label_key not in adata.obs.columns:
            raise DatasetError(f"label_key {label_key!r} is not a column of adata.obs; obs columns "
                               f"are {cols}")
        x = _as_matrix(anndata_matrix(adata, layer))  # sparse stays sparse (CSR); nothing is densified here
        genes = [str(g) for g in adata.var_names]
        where = f"adata.layers[{layer!r}]" if layer is not None else "adata.X"
        if representation not in ("auto", *REPRESENTATIONS):
            raise DatasetError(f"representation must be 'auto', 'counts' or 'log1p', got {representation!r}")
        _check_values(x, genes, None if representation == "auto" else representation, where=where)
        if representation == "auto":
            representation = "counts" if is_integer_valued(x) else "log1p"
        lab = adata.obs[label_key]
        if lab.isna().any():
            raise DatasetError(f"obs[{label_key!r}] has {int(lab.isna().sum())} missing labels; drop "
                               "those cells or fill the labels first")
        cats = [str(c) for c in lab.cat.categories] if hasattr(lab, "cat") else None
        if provenance is None:
            info = adata.uns.get("boltzkit", {})
            provenance = str(info.get("provenance", "user data")) if hasattr(info, "get") else "user data"
        sf = None
        if size_factor_key is not None and size_factor_key in adata.obs.columns:
            sf = np.asarray(adata.obs[size_factor_key], dtype=np.float64)
            if not (np.isfinite(sf).all() and (sf > 0).all()):
                sf = None
        return cls(x, lab.astype(str).to_numpy(), gene_names=genes, label_key=label_key,
                   representation=representation, categories=cats,
                   obs_names=[str(o) for o in adata.obs_names], layer=layer, size_factors=sf,
                   name=name or "adata", provenance=provenance,
                   uns_log1p="log1p" in adata.uns, var=adata.var)

    def to_anndata(self):
        """The cells as AnnData (matrix in ``X``, and in ``layers[layer]`` if it came from one;
        the gene table ``var`` of the AnnData it was read from)."""
        return cells_anndata(_as_matrix(self.x), self.labels, categories=self.categories,
                             label_key=self.label_key, gene_names=self.gene_names, obs_names=self.obs_names,
                             layer=self.layer, representation=self.representation, uns_log1p=self.uns_log1p,
                             info={"provenance": self.provenance, "source": "real"}, var=self.var)


def _check_values(x, genes, representation, where="the matrix"):
    v = _values(x)

    def genes_with(flagged):  # "n gene(s), e.g. [first five names]" holding a flagged stored value
        cols = np.unique(x.indices[flagged]) if sparse.issparse(x) else np.flatnonzero(
            flagged.reshape(x.shape).any(0))
        return f"{cols.size} gene(s), e.g. {[genes[i] for i in cols[:5]]}"

    bad = ~np.isfinite(v)
    if bad.any():
        raise DatasetError(f"{where} has NaN or infinite values in {genes_with(bad)}; "
                           "remove those genes (adata = adata[:, ~mask].copy()) or fix the values")
    neg = v < 0
    if neg.any():
        what = "negative counts" if representation == "counts" or is_integer_valued(x) else "negative values"
        raise DatasetError(
            f"{where} has {what} in {genes_with(neg)} (min {v.min():.3g}). Cells are "
            "generated as counts or log-normalised expression, both non-negative; scaled or centred "
            "data (sc.pp.scale) cannot be used. Pass layer='counts' or the log-normalised layer "
            "(bk.datasets.pbmc68k() stores log-normalised values in X and counts in layers['counts'])")
    if representation == "counts" and (frac := v != np.round(v)).any():
        raise DatasetError(
            f"{where} should hold counts but has non-integer values in {genes_with(frac)}; pass the "
            "raw UMI counts (often layer='counts'), not normalised or log-transformed values")


def as_target(obj, label_key: "str | None" = None, layer: "str | None" = None, **kw) -> CellDataset:
    """Turn an AnnData (with ``label_key``) into a :class:`CellDataset`; pass a CellDataset through.

    Used by ``bk.sample(adata, label_key=...)`` (with ``layer="auto"``: ``layers["counts"]``
    when the AnnData has it, else ``X``). Other keyword arguments go to
    :meth:`CellDataset.from_anndata`.
    """
    if layer == "auto":  # the field's convention: raw counts in layers["counts"] when present
        layer = "counts" if is_anndata(obj) and "counts" in obj.layers else None
    if isinstance(obj, CellDataset):
        if label_key is not None and label_key != obj.label_key:
            raise ConfigError(f"label_key={label_key!r} but the dataset is labelled by "
                              f"{obj.label_key!r}; rebuild it with CellDataset.from_anndata(adata, "
                              f"label_key={label_key!r})")
        return obj
    if is_anndata(obj):
        return CellDataset.from_anndata(obj, label_key, layer, **kw)
    raise TargetError(f"cannot make a single-cell target from {type(obj).__name__}; pass an "
                      "anndata.AnnData with label_key=... or a boltzkit CellDataset")


def cells_anndata(x, labels, *, categories, label_key, gene_names, obs_names, layer, representation,
                  uns_log1p, info, var=None):
    """Cells as an AnnData: the matrix ``x`` in ``X`` (and a copy in ``layers[layer]``),
    ``obs[label_key]`` categorical over ``categories``, ``uns["log1p"]`` for log-normalised
    values that scanpy made, ``uns["boltzkit"] = {**info, "representation": ...}``."""
    ad = require("anndata", "bio")
    pd = require("pandas", "bio")
    a = ad.AnnData(X=x, var=var)
    a.obs_names = list(obs_names)
    a.var_names = list(gene_names)
    a.obs[label_key] = pd.Categorical(list(labels), categories=list(categories))
    if layer is not None:
        a.layers[layer] = a.X.copy()
    if representation == "log1p" and uns_log1p:
        a.uns["log1p"] = {"base": None}
    a.uns["boltzkit"] = {**info, "representation": representation}
    return a
