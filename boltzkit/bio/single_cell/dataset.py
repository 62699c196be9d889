r"""Single-cell expression data as boltzkit targets: cells x genes with a cell-type label.

:class:`CellDataset` is a target of kind ``"dataset"`` on a :class:`CellExpressionDomain`
(non-negative expression vectors of named genes, either raw ``"counts"`` or ``"log1p"``
log-normalised values). It carries one categorical label per cell (``obs[label_key]``), which
conditional generators (``"sc_diffusion"``) condition on.

* :meth:`CellDataset.from_anndata` / :func:`as_target` -- read an AnnData (``X`` or a layer;
  a sparse matrix is kept sparse as CSR and only mini-batches of rows are densified),
  with the checks biologists need before any training: a missing ``label_key`` (the ``obs``
  columns are listed), genes with NaN, negative values (scaled data or negative counts), an
  empty matrix.
* :func:`pbmc68k` -- scanpy's bundled ``pbmc68k_reduced`` (700 real PBMCs, 765 genes, 10
  ``bulk_labels``) with the raw counts rebuilt exactly and ``X`` set to the log-normalised
  values ``log1p(counts / n_counts * 1e4)``. Both file layouts are read: scanpy <= 1.12
  (``raw.X`` log-normalised, ``X`` scaled) and scanpy >= 1.13 (``layers["counts"]``).
* :class:`SyntheticCellLaw` -- a per-type mixture of product negative binomials whose
  component means move along a low-rank gene subspace: exact samples, exact log-probabilities,
  exact per-type means and covariances. Known truth for tests and benchmarks.
* :func:`result_to_anndata` / :func:`generated_anndata` -- generated cells (a
  :class:`~boltzkit.result.Result` of ``"sc_latent"`` / ``"sc_diffusion"``, or a baseline's
  counts) back to a sparse AnnData: counts in ``layers["counts"]``, scanpy's log-normalised
  values in ``X``, ``obs["boltzkit_origin"] = "generated"``, the training ``var`` -- ready for
  ``sc.pp.neighbors`` / ``sc.tl.umap``.

Helpers shared by the generator, baselines and metrics: :func:`log_normalize`,
:class:`PCABasis`, :func:`allocate`. anndata and scanpy are imported only where needed
(extra ``boltzkit[bio]``).
"""

from __future__ import annotations

import sys
from typing import Sequence

import numpy as np
import torch
from scipy.special import gammaln, logsumexp

from ...domains.base import Domain
from ...errors import ConfigError, DatasetError, TargetError, require
from ..spatial.dataset import checked_gene_names

__all__ = ["CellDataset", "CellExpressionDomain", "SyntheticCellLaw", "pbmc68k", "as_target",
           "is_anndata", "result_to_anndata", "log_normalize", "PCABasis", "allocate",
           "REPRESENTATIONS", "ANNDATA_KIND", "generated_anndata", "dense_rows", "row_sums",
           "ORIGIN_KEY", "var_to_json"]

REPRESENTATIONS = ("counts", "log1p")
ANNDATA_KIND = "single_cell"  # Result.diagnostics["anndata_kind"] of generated cells
TARGET_SUM = 1e4


# ---------------------------------------------------------------------------- helpers
def _dense(m) -> np.ndarray:
    return np.asarray(m.toarray() if hasattr(m, "toarray") else m, dtype=np.float64)


def _issparse(m) -> bool:
    from scipy import sparse

    return sparse.issparse(m)


def _as_matrix(m):
    """float32 CSR for sparse input (never densified), float32 ndarray otherwise."""
    if _issparse(m):
        from scipy import sparse

        return sparse.csr_matrix(m, dtype=np.float32)
    return np.asarray(m, dtype=np.float32)


def dense_rows(x, idx=None, dtype=np.float64) -> np.ndarray:
    """Rows ``idx`` (all rows when None) of a dense or sparse matrix as a dense array: the one
    place where mini-batches of a sparse matrix are densified."""
    sub = x if idx is None else x[np.asarray(idx)]
    return np.asarray(sub.toarray() if hasattr(sub, "toarray") else sub, dtype=dtype)


def row_sums(x) -> np.ndarray:
    """Row sums of a dense or sparse matrix (float64, no densification)."""
    return np.asarray(x.sum(1), dtype=np.float64).reshape(-1)


def _values(x) -> np.ndarray:
    """The stored values (the non-zeros of a sparse matrix; every entry of a dense one)."""
    return x.data if _issparse(x) else np.asarray(x).reshape(-1)


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
        _, s, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        self.components = vt[:k]  # (k, G)
        self.explained_variance = s[:k] ** 2 / (x.shape[0] - 1)
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
        present = sorted(set(labels))
        cats = present if categories is None else [str(c) for c in categories if str(c) in set(present)]
        # declared categories without a single cell (e.g. after subsetting): not generable
        self.empty_categories = ([] if categories is None else
                                 [str(c) for c in categories if str(c) not in set(present)])
        missing = sorted(set(present) - set(cats))
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
        return _issparse(self.x)

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

    def log_normalized(self, target_sum: float = TARGET_SUM, *, size_factors=None) -> np.ndarray:
        """log1p(normalize_total) values (dense), the representation metrics are computed on.
        For counts the size factors are ``size_factors`` if given, else the dataset's, else
        the row sums."""
        if self.representation == "log1p":
            return self.rows()
        sf = self.size_factors if size_factors is None else size_factors
        return log_normalize(self.rows(), sf, target_sum)

    def subset(self, idx, *, name: "str | None" = None) -> "CellDataset":
        """The cells ``idx`` (indices or boolean mask); categories keep their order."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
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
        if layer is None:
            mat = adata.X
            if mat is None:
                raise DatasetError(f"adata.X is empty; pass layer=... (layers: {list(adata.layers)})")
        elif layer in adata.layers:
            mat = adata.layers[layer]
        else:
            raise DatasetError(f"adata.layers has no {layer!r}; layers are {list(adata.layers)}. "
                               "Pass layer=None to use adata.X")
        x = _as_matrix(mat)  # sparse stays sparse (CSR); nothing is densified here
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
        cats = None
        if hasattr(lab, "cat"):
            cats = [str(c) for c in lab.cat.categories]
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
        """The cells as AnnData (matrix in ``X``, and in ``layers[layer]`` if it came from one)."""
        return _make_anndata(self.x, self.labels, self.categories, self.label_key, self.gene_names,
                             self.obs_names, self.layer, self.representation, self.uns_log1p,
                             {"provenance": self.provenance, "source": "real"})


def _bad_columns(x, mask_values) -> np.ndarray:
    """Gene indices holding a flagged stored value (``mask_values`` over :func:`_values`)."""
    if _issparse(x):
        return np.unique(x.indices[mask_values])
    return np.flatnonzero(mask_values.reshape(x.shape).any(0))


def _check_values(x, genes, representation, where="the matrix"):
    v = _values(x)
    bad = ~np.isfinite(v)
    if bad.any():
        cols = _bad_columns(x, bad)
        names = [genes[i] for i in cols[:5]]
        raise DatasetError(f"{where} has NaN or infinite values in {cols.size} gene(s), e.g. {names}; "
                           "remove those genes (adata = adata[:, ~mask].copy()) or fix the values")
    neg = v < 0
    if neg.any():
        cols = _bad_columns(x, neg)
        names = [genes[i] for i in cols[:5]]
        ints = np.all(v == np.round(v))
        what = "negative counts" if (representation == "counts" or ints) else "negative values"
        raise DatasetError(
            f"{where} has {what} in {cols.size} gene(s), e.g. {names} (min {v.min():.3g}). Cells are "
            "generated as counts or log-normalised expression, both non-negative; scaled or centred "
            "data (sc.pp.scale) cannot be used. Pass layer='counts' or the log-normalised layer "
            "(bk.datasets.pbmc68k() stores log-normalised values in X and counts in layers['counts'])")
    if representation == "counts":
        frac = v != np.round(v)
        if frac.any():
            cols = _bad_columns(x, frac)
            raise DatasetError(
                f"{where} should hold counts but has non-integer values in {cols.size} gene(s), e.g. "
                f"{[genes[i] for i in cols[:5]]}; pass the raw UMI counts (often layer='counts'), "
                "not normalised or log-transformed values")


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


def _make_anndata(x, labels, categories, label_key, genes, obs_names, layer, representation,
                  uns_log1p, info):
    ad = require("anndata", "bio")
    pd = require("pandas", "bio")
    a = ad.AnnData(X=_as_matrix(x))
    a.obs_names = list(obs_names)
    a.var_names = list(genes)
    a.obs[label_key] = pd.Categorical(list(labels), categories=list(categories))
    if layer is not None:
        a.layers[layer] = a.X.copy()
    if representation == "log1p" and uns_log1p:
        a.uns["log1p"] = {"base": None}
    a.uns["boltzkit"] = {**info, "representation": representation}
    return a


# ---------------------------------------------------------------------------- results
ORIGIN_KEY = "boltzkit_origin"  # obs column of generated AnnData: "generated"


def var_to_json(var) -> "dict | None":
    """An AnnData ``var`` DataFrame as ``{column: list}`` (JSON-able; categories become str),
    so that a :class:`~boltzkit.result.Result` can carry it through save/load."""
    if var is None or len(var.columns) == 0:
        return None
    out = {}
    for col in var.columns:
        v = var[col]
        if v.dtype.kind in "biuf":
            vals = v.to_numpy()
            out[str(col)] = [bool(a) for a in vals] if v.dtype.kind == "b" else vals.astype(float).tolist()
        else:
            out[str(col)] = [None if a is None else str(a) for a in v.tolist()]
    return out


def generated_anndata(x, labels, *, categories, label_key, gene_names, representation="counts",
                      layer=None, uns_log1p=False, var=None, info=None, obs_prefix="gen"):
    """Generated cells as an AnnData laid out the way scanpy users keep their data.

    * ``representation="counts"``: ``layers["counts"]`` holds the integer counts (CSR) and ``X``
      the log-normalised values computed by scanpy itself (``sc.pp.normalize_total(target_sum=
      1e4)`` then ``sc.pp.log1p``, sparse), so ``sc.pp.pca`` / ``neighbors`` / ``tl.umap`` run
      on the output directly; ``layers[layer]`` too when training read another layer.
    * ``representation="log1p"``: ``X`` holds the values (CSR), and ``layers[layer]`` when
      training read one.

    ``obs[label_key]`` is categorical over ``categories``, ``obs["boltzkit_origin"]`` is
    "generated"; ``var`` (a DataFrame or the dict of :func:`var_to_json`) is restored.
    """
    ad = require("anndata", "bio")
    pd = require("pandas", "bio")
    from scipy import sparse

    m = sparse.csr_matrix(x, dtype=np.float32)
    m.eliminate_zeros()
    n = m.shape[0]
    if isinstance(var, dict):
        var = pd.DataFrame(var, index=list(gene_names))
    elif var is not None:
        var = var.copy()
        var.index = list(gene_names)
    a = ad.AnnData(X=m.copy(), var=var)
    a.obs_names = [f"{obs_prefix}{i}" for i in range(n)]
    a.var_names = list(gene_names)
    a.obs[label_key] = pd.Categorical(list(labels), categories=list(categories))
    a.obs[ORIGIN_KEY] = pd.Categorical(["generated"] * n, categories=["real", "generated"])
    if representation == "counts":
        sc = require("scanpy", "bio")
        a.layers["counts"] = m
        if layer not in (None, "counts"):
            a.layers[layer] = m.copy()
        threads = torch.get_num_threads()  # scanpy's numba kernels reset the shared OpenMP pool
        try:
            sc.pp.normalize_total(a, target_sum=TARGET_SUM)
            sc.pp.log1p(a)
        finally:
            torch.set_num_threads(threads)
    else:
        if layer is not None:
            a.layers[layer] = m.copy()
        if uns_log1p:
            a.uns["log1p"] = {"base": None}
    a.uns["boltzkit"] = {**(info or {}), "representation": representation, "source": "generated"}
    return a


def result_to_anndata(result):
    """Generated cells of a single-cell :class:`~boltzkit.result.Result` as AnnData
    (:func:`generated_anndata`): counts in ``layers["counts"]`` and scanpy's log-normalised
    values in ``X`` for count models, the values in ``X`` for log-normalised ones; sparse;
    ``obs[label_key]`` the label each cell was generated for (the training categories),
    ``obs["boltzkit_origin"] = "generated"``, ``var`` of the training AnnData, and
    ``uns["boltzkit"]`` the method, seed and provenance."""
    cfg = result.config
    need = ("gene_names", "label_key", "labels", "label_categories", "representation")
    if result.diagnostics.get("anndata_kind") != ANNDATA_KIND or any(k not in cfg for k in need):
        raise DatasetError("this Result holds no generated cells (it lacks the gene names and labels "
                           "of a single-cell generator such as 'sc_diffusion')")
    return generated_anndata(result.samples.detach().cpu().numpy(), cfg["labels"],
                             categories=cfg["label_categories"], label_key=cfg["label_key"],
                             gene_names=cfg["gene_names"], representation=cfg["representation"],
                             layer=cfg.get("layer"), uns_log1p=bool(cfg.get("uns_log1p", False)),
                             var=cfg.get("var"),
                             info={"method": result.method, "seed": result.seed,
                                   "provenance": str(result.target.get("provenance", ""))})


# ---------------------------------------------------------------------------- PBMC
def pbmc68k(adata=None, *, target_sum: float = TARGET_SUM):
    """scanpy's ``pbmc68k_reduced``: 700 real PBMCs, 765 genes, 10 ``bulk_labels``.

    Returns a new AnnData with

    * ``layers["counts"]`` -- UMI counts of the 765 genes (integers, float32, sparse CSR);
    * ``X`` -- log-normalised values (sparse CSR) ``log1p(counts / n_counts * target_sum)``, with
      ``obs["n_counts"]`` the library size over *all* genes that passed the original filtering
      (so rows of the counts sum to less than ``n_counts``); ``uns["log1p"]`` is set;
    * ``layers["scaled"]`` -- the file's z-scored ``X``, when it has one (do not generate in it);
    * ``obs``, ``obsm`` (``X_pca``, ``X_umap``), ``var`` and ``uns`` of the file; ``raw`` removed.

    Layouts. scanpy <= 1.12 ships an ``.h5ad`` whose ``raw.X`` is ``log1p(counts / n_counts *
    1e4)`` rounded to 3 decimals: counts are rebuilt as ``round(expm1(raw.X) * n_counts / 1e4)``
    (largest distance from an integer 0.08). scanpy >= 1.13 ships ``layers["counts"]``, used as is.

    Parameters
    ----------
    adata : AnnData, optional
        An already loaded ``pbmc68k_reduced`` (either layout); default: load scanpy's copy.
    target_sum : float
    """
    sc = require("scanpy", "bio")
    ad = require("anndata", "bio")
    if adata is None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata = sc.datasets.pbmc68k_reduced()
    genes = [str(g) for g in adata.var_names]
    if "n_counts" in adata.obs.columns:
        size = np.asarray(adata.obs["n_counts"], dtype=np.float64)
    else:
        size = None
    from scipy import sparse

    if "counts" in adata.layers:
        layout = "counts layer (scanpy >= 1.13)"
        counts = sparse.csr_matrix(adata.layers["counts"], dtype=np.float64)
        if not is_integer_valued(counts) or (counts.data < 0).any():
            raise DatasetError("layers['counts'] does not hold non-negative integer counts")
    elif adata.raw is not None:
        layout = "raw log-normalised (scanpy <= 1.12)"
        if size is None:
            raise DatasetError("rebuilding counts from raw.X needs obs['n_counts'] (library sizes)")
        raw_genes = [str(g) for g in adata.raw.var_names]
        pos = {g: i for i, g in enumerate(raw_genes)}
        if any(g not in pos for g in genes):
            raise DatasetError("raw.var_names do not contain all of var_names; not a pbmc68k_reduced file")
        logn = sparse.csr_matrix(adata.raw.X, dtype=np.float64)[:, [pos[g] for g in genes]]
        rows = np.repeat(np.arange(logn.shape[0]), np.diff(logn.indptr))
        exact = np.expm1(logn.data) * size[rows] / target_sum  # on the non-zeros only
        counts = logn.copy()
        counts.data = np.round(exact)
        counts.eliminate_zeros()
        resid = float(np.abs(exact - np.round(exact)).max()) if exact.size else 0.0
        if resid > 0.25:
            raise DatasetError(f"raw.X is not log1p(counts / n_counts * {target_sum:g}): rebuilt counts "
                               f"are {resid:.2f} away from integers")
    else:
        raise DatasetError("this AnnData has neither layers['counts'] nor raw.X; it is not a "
                           "pbmc68k_reduced file")
    if size is None:
        size = row_sums(counts)
    lognorm = counts.multiply((target_sum / size)[:, None]).tocsr()
    lognorm.data = np.log1p(lognorm.data)
    out = ad.AnnData(X=lognorm.astype(np.float32), obs=adata.obs.copy(), var=adata.var.copy())
    out.layers["counts"] = counts.astype(np.float32)
    x0 = adata.X
    if x0 is not None:
        x0 = _dense(x0)
        if (x0 < 0).any():
            out.layers["scaled"] = x0.astype(np.float32)
    for k in adata.obsm.keys():
        out.obsm[k] = np.asarray(adata.obsm[k])
    for k in adata.varm.keys():
        out.varm[k] = np.asarray(adata.varm[k])
    for k in adata.obsp.keys():
        out.obsp[k] = adata.obsp[k]
    out.uns.update({k: v for k, v in adata.uns.items() if k != "log1p"})
    out.uns["log1p"] = {"base": None}
    out.uns["boltzkit"] = {"provenance": "real: 10x PBMC 68k (scanpy pbmc68k_reduced, 700 cells)",
                           "layout": layout, "target_sum": float(target_sum),
                           "size_factor_key": "n_counts"}
    return out


# ---------------------------------------------------------------------------- synthetic law
def _nb_logpmf(x, mu, theta):
    """log NB(x; mean mu, inverse dispersion theta), broadcasting."""
    return (gammaln(x + theta) - gammaln(theta) - gammaln(x + 1)
            + theta * np.log(theta / (theta + mu)) + x * np.log(mu / (theta + mu)))


class SyntheticCellLaw:
    r"""Per-type mixtures of product negative binomials with a low-rank mean structure.

    Cell type ``t`` (probability ``type_probs[t]``) has ``K`` sub-states with weights
    ``pi[t, k]``; given the sub-state, gene counts are independent::

        x_g | t, k ~ NB(mean mu[t, k, g], inverse dispersion theta[g])
        log mu[t, k, g] = b[g] + a[t, g] + (W u[t, k])[g],     W: (G, rank)

    so within a type the genes covary through a rank-``min(K - 1, rank)`` term. Everything is
    exact: samples, ``log p(x | t)`` (log-sum-exp over sub-states), the per-type mean and
    covariance, and the Bayes posterior ``p(t | x)``.

    Build one with :meth:`make`.
    """

    def __init__(self, mu, pi, theta, type_probs, *, gene_names=None, categories=None):
        self.mu = np.asarray(mu, dtype=np.float64)          # (T, K, G)
        self.pi = np.asarray(pi, dtype=np.float64)          # (T, K)
        self.theta = np.asarray(theta, dtype=np.float64)    # (G,)
        self.type_probs = np.asarray(type_probs, dtype=np.float64)
        t, k, g = self.mu.shape
        if self.pi.shape != (t, k) or self.theta.shape != (g,) or self.type_probs.shape != (t,):
            raise DatasetError("inconsistent shapes of mu (T, K, G), pi (T, K), theta (G,), type_probs (T,)")
        if not (np.allclose(self.pi.sum(1), 1) and np.isclose(self.type_probs.sum(), 1)):
            raise DatasetError("pi rows and type_probs must sum to 1")
        self.gene_names = [f"gene{i}" for i in range(g)] if gene_names is None else list(gene_names)
        self.categories = [f"type{i}" for i in range(t)] if categories is None else list(categories)

    @classmethod
    def make(cls, n_types: int = 3, n_genes: int = 8, n_states: int = 3, rank: int = 2, *,
             type_effect: float = 1.0, state_effect: float = 0.8, seed: int = 0) -> "SyntheticCellLaw":
        """A random law: base means 2-30 counts, type effects ``N(0, type_effect^2)`` on each
        gene, sub-state shifts ``W u`` with ``W, u ~ N(0, state_effect^2 / rank), N(0, 1)``,
        ``theta`` uniform in [2, 10], sub-state weights Dirichlet(5), type proportions
        Dirichlet(10)."""
        rng = np.random.default_rng(seed)
        b = np.log(rng.uniform(2.0, 30.0, n_genes))
        a = rng.normal(0.0, type_effect, (n_types, n_genes))
        w = rng.normal(0.0, state_effect / np.sqrt(rank), (n_genes, rank))
        u = rng.normal(0.0, 1.0, (n_types, n_states, rank))
        mu = np.exp(b + a[:, None, :] + u @ w.T)
        pi = rng.dirichlet(np.full(n_states, 5.0), size=n_types)
        theta = rng.uniform(2.0, 10.0, n_genes)
        type_probs = rng.dirichlet(np.full(n_types, 10.0))
        return cls(mu, pi, theta, type_probs)

    @property
    def n_types(self) -> int:
        return self.mu.shape[0]

    @property
    def n_genes(self) -> int:
        return self.mu.shape[2]

    def mean(self, t: int) -> np.ndarray:
        """Exact ``E[x | t]`` (G,)."""
        return self.pi[t] @ self.mu[t]

    def cov(self, t: int) -> np.ndarray:
        """Exact ``Cov[x | t]`` (G, G): mixture of NB variances plus the spread of the means."""
        m = self.mu[t]
        within = self.pi[t] @ (m + m ** 2 / self.theta)
        d = m - self.mean(t)
        return np.diag(within) + (d.T * self.pi[t]) @ d

    def log_prob(self, x, t) -> np.ndarray:
        """Exact ``log p(x | t)`` for counts ``x`` (n, G) and types ``t`` (n,) or an int."""
        x = np.asarray(x, dtype=np.float64)
        t = np.broadcast_to(np.asarray(t), (x.shape[0],))
        comp = _nb_logpmf(x[:, None, :], self.mu[t], self.theta).sum(-1)  # (n, K)
        return logsumexp(comp + np.log(self.pi[t]), axis=1)

    def posterior(self, x) -> np.ndarray:
        """Exact ``p(t | x)`` (n, T)."""
        x = np.asarray(x, dtype=np.float64)
        lp = np.stack([self.log_prob(x, t) for t in range(self.n_types)], 1) + np.log(self.type_probs)
        return np.exp(lp - logsumexp(lp, axis=1, keepdims=True))

    def sample(self, counts_per_type, *, seed: int = 0) -> "tuple[np.ndarray, np.ndarray]":
        """Exact draws: ``(x (n, G) counts, t (n,) type codes)`` with ``counts_per_type[t]``
        cells of type ``t`` (grouped by type)."""
        rng = np.random.default_rng(seed)
        counts_per_type = np.asarray(counts_per_type, dtype=np.int64)
        t = np.repeat(np.arange(self.n_types), counts_per_type)
        k = np.concatenate([rng.choice(self.pi.shape[1], size=int(n), p=self.pi[ti])
                            for ti, n in enumerate(counts_per_type)]).astype(np.int64)
        mu = self.mu[t, k]
        p = self.theta / (self.theta + mu)
        x = rng.negative_binomial(np.broadcast_to(self.theta, mu.shape), p).astype(np.float64)
        return x, t

    def dataset(self, n_cells: int, *, seed: int = 0, label_key: str = "cell_type") -> CellDataset:
        """``n_cells`` exact draws, types in the law's proportions, as a counts CellDataset."""
        x, t = self.sample(allocate(n_cells, self.type_probs), seed=seed)
        return CellDataset(x, np.asarray(self.categories, dtype=object)[t], gene_names=self.gene_names,
                           label_key=label_key, representation="counts", categories=self.categories,
                           name="synthetic-nb", provenance="fully synthetic: per-type NB mixture law")

    def to_anndata(self, n_cells: int, *, seed: int = 0, label_key: str = "cell_type"):
        """Exact draws as an AnnData (counts in ``X``, types in ``obs[label_key]``)."""
        return self.dataset(n_cells, seed=seed, label_key=label_key).to_anndata()
