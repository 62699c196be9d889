r"""Single cells in and out of files: generated cells back to AnnData, and scanpy's PBMC data.

* :func:`result_to_anndata` / :func:`generated_anndata` -- generated cells (a
  :class:`~boltzkit.result.Result` of ``"sc_latent"`` / ``"sc_diffusion"``, or a baseline's
  counts) back to a sparse AnnData, ready for ``sc.pp.neighbors`` / ``sc.tl.umap``;
* :func:`pbmc68k` -- scanpy's bundled ``pbmc68k_reduced`` with the raw counts rebuilt exactly.

Reading an AnnData into a dataset is :meth:`~boltzkit.bio.single_cell.dataset.CellDataset.
from_anndata`. anndata and scanpy are imported only here, when used (extra ``boltzkit[bio]``).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse

from ...errors import DatasetError, require
from ..common import dense_rows
from .dataset import ANNDATA_KIND, TARGET_SUM, cells_anndata, is_integer_valued, row_sums

__all__ = ["result_to_anndata", "generated_anndata", "var_to_json", "pbmc68k", "ORIGIN_KEY"]


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
    pd = require("pandas", "bio")
    m = sparse.csr_matrix(x, dtype=np.float32)
    m.eliminate_zeros()
    n = m.shape[0]
    if isinstance(var, dict):
        var = pd.DataFrame(var, index=list(gene_names))
    elif var is not None:
        var = var.copy()
        var.index = list(gene_names)
    a = cells_anndata(m.copy(), labels, categories=categories, label_key=label_key, gene_names=gene_names,
                      obs_names=[f"{obs_prefix}{i}" for i in range(n)], layer=layer,
                      representation=representation, uns_log1p=uns_log1p, var=var,
                      info={**(info or {}), "representation": representation, "source": "generated"})
    a.obs[ORIGIN_KEY] = pd.Categorical(["generated"] * n, categories=["real", "generated"])
    if representation == "counts":
        sc = require("scanpy", "bio")
        a.layers["counts"] = m
        threads = torch.get_num_threads()  # scanpy's numba kernels reset the shared OpenMP pool
        try:
            sc.pp.normalize_total(a, target_sum=TARGET_SUM)
            sc.pp.log1p(a)
        finally:
            torch.set_num_threads(threads)
    return a


def result_to_anndata(result):
    """Generated cells of a single-cell :class:`~boltzkit.result.Result` as AnnData laid out by
    :func:`generated_anndata`: ``obs[label_key]`` the label each cell was generated for, ``var``
    of the training AnnData, ``uns["boltzkit"]`` the method, seed and provenance."""
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
    size = np.asarray(adata.obs["n_counts"], dtype=np.float64) if "n_counts" in adata.obs.columns else None
    if "counts" in adata.layers:
        layout = "counts layer (scanpy >= 1.13)"
        counts = sparse.csr_matrix(adata.layers["counts"], dtype=np.float64)
        if not is_integer_valued(counts) or (counts.data < 0).any():
            raise DatasetError("layers['counts'] does not hold non-negative integer counts")
    elif adata.raw is not None:
        layout = "raw log-normalised (scanpy <= 1.12)"
        if size is None:
            raise DatasetError("rebuilding counts from raw.X needs obs['n_counts'] (library sizes)")
        pos = {str(g): i for i, g in enumerate(adata.raw.var_names)}
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
        x0 = dense_rows(x0)
        if (x0 < 0).any():
            out.layers["scaled"] = x0.astype(np.float32)
    for slot in ("obsm", "varm"):
        getattr(out, slot).update({k: np.asarray(v) for k, v in getattr(adata, slot).items()})
    out.obsp.update(adata.obsp)
    out.uns.update({k: v for k, v in adata.uns.items() if k != "log1p"})
    out.uns["log1p"] = {"base": None}
    out.uns["boltzkit"] = {"provenance": "real: 10x PBMC 68k (scanpy pbmc68k_reduced, 700 cells)",
                           "layout": layout, "target_sum": float(target_sum),
                           "size_factor_key": "n_counts"}
    return out
