r"""Metrics for generated single cells, each with a real-vs-real noise floor.

All distribution metrics compare a *candidate* set (generated cells) with a *reference* set
(held-out real cells) on a PCA fitted on the two sets pooled (:class:`CellEmbedding`:
log-normalised expression -> highly variable genes -> PCA); the type classifier of the label
fidelity is fitted on other real cells:

* :func:`mmd2` -- unbiased MMD^2 with a sum of RBF kernels and a permutation p-value;
* :func:`wasserstein2` -- exact W2; :func:`sliced_wasserstein` -- sliced W1/W2;
* :func:`energy_distance` -- from :func:`boltzkit.bio.common.energy_distance`;
* :func:`classifier_auc` -- cross-validated real-vs-generated AUC (0.5 = indistinguishable);
* :func:`label_fidelity` -- accuracy and macro-F1 of a cell-type classifier trained on real cells;
* :func:`moment_correlations` -- per type, correlations of the per-gene means and variances;
* :func:`marker_overlap` -- per type, Jaccard overlap of the top markers (scanpy, Wilcoxon);
* :func:`correlation_error` -- error of the gene-gene correlation matrix;
  :func:`within_type_correlation_error` -- the same within each type (what a per-gene
  independent model cannot carry).

:func:`evaluate` computes all of them for one candidate; :func:`evaluate_with_floor` also
computes them for other held-out real cells against the same reference (the noise floor: a
model cannot meaningfully beat it). scikit-learn and scanpy come with the ``bio`` extra and are
imported when used.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from scipy.stats import pearsonr, spearmanr

from .dataset import PCABasis
from ...errors import require
from ..common import as_2d
from ..common import energy_distance as _energy_distance_rows

__all__ = ["CellEmbedding", "mmd2", "wasserstein2", "sliced_wasserstein", "energy_distance",
           "classifier_auc", "label_fidelity", "moment_correlations", "marker_overlap",
           "correlation_error", "within_type_correlation_error", "evaluate", "evaluate_with_floor"]


def _as2d(a, what="x") -> np.ndarray:
    return as_2d(a, what, min_rows=2)


def _logreg(**kw):
    """Standardised logistic regression (scikit-learn)."""
    require("sklearn", "bio")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(**kw))


# ---------------------------------------------------------------------------- representation
class CellEmbedding:
    """Log-normalised cells -> top ``n_hvg`` genes by variance -> PCA, fitted on real cells.

    Parameters
    ----------
    x : array (n, G)
        Log-normalised real training cells.
    n_pcs : int
    n_hvg : int, optional
        Keep the genes with the largest variance (None: all genes).
    """

    def __init__(self, x, n_pcs: int = 50, n_hvg: "int | None" = None):
        x = _as2d(x, "x")
        self.genes = (np.arange(x.shape[1]) if n_hvg is None or n_hvg >= x.shape[1]
                      else np.sort(np.argsort(-x.var(0), kind="stable")[:n_hvg]))
        self.pca = PCABasis(x[:, self.genes], n_pcs)

    def __call__(self, x) -> np.ndarray:
        return self.pca.transform(np.asarray(x, dtype=np.float64)[:, self.genes])


# ---------------------------------------------------------------------------- two-sample metrics
def mmd2(x, y, *, n_perm: int = 200, seed: int = 0) -> "tuple[float, float]":
    """Unbiased MMD^2 and its permutation p-value.

    Kernel: sum of RBF kernels ``exp(-|a - b|^2 / (c h))`` for ``c`` in {1/4, 1/2, 1, 2, 4}
    with ``h`` the median pairwise squared distance of the pooled sets. The p-value is
    ``(1 + #{perm >= observed}) / (1 + n_perm)`` over random relabelings of the pooled cells.
    """
    x, y = _as2d(x, "x"), _as2d(y, "y")
    z = np.concatenate([x, y])
    d2 = cdist(z, z, "sqeuclidean")
    h = float(np.median(d2[np.triu_indices_from(d2, 1)]))
    k = sum(np.exp(-d2 / (c * max(h, 1e-12))) for c in (0.25, 0.5, 1.0, 2.0, 4.0))
    np.fill_diagonal(k, 0.0)
    n, m = x.shape[0], y.shape[0]

    def stat(mask):  # mask: True for the first set
        a, b = mask.astype(np.float64), (~mask).astype(np.float64)
        kxx = a @ k @ a / (n * (n - 1))
        kyy = b @ k @ b / (m * (m - 1))
        kxy = a @ k @ b / (n * m)
        return kxx + kyy - 2 * kxy

    first = np.arange(n + m) < n
    obs = stat(first)
    rng = np.random.default_rng(seed)
    perms = np.array([stat(rng.permutation(first)) for _ in range(n_perm)])
    return float(obs), float((1 + np.sum(perms >= obs)) / (1 + n_perm))


def _equal_sizes(x, y, seed: int, *, shuffle: bool) -> "list[np.ndarray]":
    """``x`` and ``y`` as 2-D arrays of the smaller one's size: rows drawn without replacement
    (``seed``) from the larger one, and from both when ``shuffle``."""
    x, y = _as2d(x, "x"), _as2d(y, "y")
    rng = np.random.default_rng(seed)
    n = min(x.shape[0], y.shape[0])
    return [a[rng.choice(a.shape[0], n, replace=False)] if shuffle or a.shape[0] > n else a for a in (x, y)]


def wasserstein2(x, y, *, seed: int = 0) -> float:
    """Exact W2 between empirical sets by optimal assignment; the larger set is subsampled to
    the size of the smaller (``seed``)."""
    x, y = _equal_sizes(x, y, seed, shuffle=False)
    c = cdist(x, y, "sqeuclidean")
    r, col = linear_sum_assignment(c)
    return float(np.sqrt(c[r, col].mean()))


def sliced_wasserstein(x, y, *, n_proj: int = 256, p: int = 2, seed: int = 0) -> float:
    """Sliced W_p: ``(mean over random unit directions of W_p^p of the 1-D projections)^(1/p)``.

    Each 1-D distance is exact between the two empirical measures (sizes may differ):
    ``int_0^1 |F^-1(u) - G^-1(u)|^p du``, a sum over the merged quantile breakpoints."""
    x, y = _as2d(x, "x"), _as2d(y, "y")
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((x.shape[1], n_proj))
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    n, m = x.shape[0], y.shape[0]
    cuts = np.union1d(np.arange(n + 1) / n, np.arange(m + 1) / m)
    mid, w = (cuts[1:] + cuts[:-1]) / 2, np.diff(cuts)
    px, py = np.sort(x @ dirs, axis=0), np.sort(y @ dirs, axis=0)
    qx, qy = px[np.minimum((mid * n).astype(int), n - 1)], py[np.minimum((mid * m).astype(int), m - 1)]
    return float((w @ np.abs(qx - qy) ** p).mean() ** (1.0 / p))


def energy_distance(x, y) -> float:
    """Energy distance ``2E|X-Y| - E|X-X'| - E|Y-Y'|`` (unbiased within-set terms)."""
    return float(_energy_distance_rows(_as2d(x, "x")[None], _as2d(y, "y")[None])[0])


def classifier_auc(x, y, *, method: str = "knn", folds: int = 5, seed: int = 0) -> float:
    """Cross-validated ROC AUC of a classifier separating ``x`` from ``y`` (0.5: indistinguishable).

    The larger set is subsampled to the smaller one's size. ``method``: "knn" (k = 5) or
    "logreg" (standardised logistic regression).
    """
    require("sklearn", "bio")
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    x, y = _equal_sizes(x, y, seed, shuffle=True)
    n = x.shape[0]
    z = np.concatenate([x, y])
    lab = np.r_[np.zeros(n), np.ones(n)]
    makers = {"knn": lambda: KNeighborsClassifier(n_neighbors=5), "logreg": lambda: _logreg(max_iter=2000)}
    if method not in makers:
        raise ValueError(f"method must be 'knn' or 'logreg', got {method!r}")
    clf = makers[method]()
    cv = StratifiedKFold(n_splits=min(folds, n), shuffle=True, random_state=seed)
    prob = cross_val_predict(clf, z, lab, cv=cv, method="predict_proba")[:, 1]
    return float(roc_auc_score(lab, prob))


# ---------------------------------------------------------------------------- labels
def label_fidelity(train_x, train_labels, x, labels, *, seed: int = 0) -> dict:
    """Accuracy and macro-F1 of a real-trained type classifier on cells ``x`` against the labels
    they were generated for (``labels``)."""
    clf = _logreg(max_iter=3000, random_state=seed).fit(_as2d(train_x), np.asarray(train_labels).astype(str))
    from sklearn.metrics import f1_score

    pred = clf.predict(_as2d(x))
    labels = np.asarray(labels).astype(str)
    present = sorted(set(labels))
    return {"label_accuracy": float(np.mean(pred == labels)),
            "label_macro_f1": float(f1_score(labels, pred, labels=present, average="macro", zero_division=0))}


def _types(ref_labels, cand_labels, min_cells):
    """The types (str label arrays) with at least ``min_cells`` cells in both sets, sorted."""
    return [t for t in sorted(set(ref_labels))
            if (ref_labels == t).sum() >= min_cells and (cand_labels == t).sum() >= min_cells]


def _corr(a, b, fn):
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(fn(a[ok], b[ok])[0])


def _log_dispersion(a):
    """Per-gene log(variance / mean) (scanpy's dispersion), NaN where the mean is 0."""
    m, v = a.mean(0), a.var(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((m > 0) & (v > 0), np.log(v / m), np.nan)


def moment_correlations(ref, ref_labels, cand, cand_labels, *, min_cells: int = 10) -> dict:
    """Per type (with >= ``min_cells`` cells in both sets): Pearson and Spearman correlation
    across genes of per-gene means and of per-gene variances, and Pearson correlation of the
    per-gene log dispersions ``log(var / mean)``; also their averages over types (keys
    ``mean_pearson``, ``mean_spearman``, ``var_pearson``, ``var_spearman``, ``disp_pearson``) and
    the mean / variance correlations on all cells pooled (``*_all``)."""
    ref, cand = _as2d(ref, "ref"), _as2d(cand, "cand")
    rl, cl = np.asarray(ref_labels).astype(str), np.asarray(cand_labels).astype(str)
    out, per = {}, {}
    for t in _types(rl, cl, min_cells):
        a, b = ref[rl == t], cand[cl == t]
        (ma, mb), (va, vb) = (a.mean(0), b.mean(0)), (a.var(0), b.var(0))
        per[t] = {"mean_pearson": _corr(ma, mb, pearsonr), "mean_spearman": _corr(ma, mb, spearmanr),
                  "var_pearson": _corr(va, vb, pearsonr), "var_spearman": _corr(va, vb, spearmanr),
                  "disp_pearson": _corr(_log_dispersion(a), _log_dispersion(b), pearsonr)}
    for key in ("mean_pearson", "mean_spearman", "var_pearson", "var_spearman", "disp_pearson"):
        vals = [v[key] for v in per.values()]
        out[key] = float(np.nanmean(vals)) if vals else float("nan")
    out["mean_pearson_all"] = _corr(ref.mean(0), cand.mean(0), pearsonr)
    out["var_pearson_all"] = _corr(ref.var(0), cand.var(0), pearsonr)
    out["per_type"] = per
    return out


def _markers(x, labels, genes, groups, top):
    sc = require("scanpy", "bio")
    ad = require("anndata", "bio")
    import pandas as pd
    import warnings

    a = ad.AnnData(np.asarray(x, dtype=np.float32))
    a.var_names = list(genes)
    a.obs["type"] = pd.Categorical(np.asarray(labels).astype(str))
    a.uns["log1p"] = {"base": None}
    threads = torch.get_num_threads()  # scanpy's numba kernels reset the shared OpenMP pool
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sc.tl.rank_genes_groups(a, "type", groups=list(groups), method="wilcoxon", n_genes=top,
                                    use_raw=False)
    finally:
        torch.set_num_threads(threads)
    names = a.uns["rank_genes_groups"]["names"]
    return {g: set(map(str, names[g][:top])) for g in groups}


def marker_overlap(ref, ref_labels, cand, cand_labels, genes, *, top: int = 20,
                   min_cells: int = 10) -> dict:
    """Per type, Jaccard overlap of the top-``top`` marker genes (``scanpy.tl.rank_genes_groups``,
    Wilcoxon, each type against the rest) found in the reference and in the candidate; keys
    ``marker_jaccard`` (mean over types) and ``per_type``. Needs >= 2 qualifying types."""
    rl, cl = np.asarray(ref_labels).astype(str), np.asarray(cand_labels).astype(str)
    groups = _types(rl, cl, min_cells)
    if len(groups) < 2:
        return {"marker_jaccard": float("nan"), "per_type": {}}
    top = min(top, len(genes))
    mr = _markers(ref, rl, genes, groups, top)
    mc = _markers(cand, cl, genes, groups, top)
    per = {g: len(mr[g] & mc[g]) / len(mr[g] | mc[g]) for g in groups}
    return {"marker_jaccard": float(np.mean(list(per.values()))), "per_type": per}


def correlation_error(ref, cand, *, n_genes: int = 50) -> float:
    """Frobenius norm of ``corr(cand) - corr(ref)`` over the ``n_genes`` genes with the largest
    reference variance (a constant gene's correlations count as 0)."""
    ref, cand = _as2d(ref, "ref"), _as2d(cand, "cand")
    idx = np.argsort(-ref.var(0), kind="stable")[:n_genes]

    def corr(a):
        with np.errstate(invalid="ignore", divide="ignore"):
            c = np.corrcoef(a[:, idx].T)
        return np.nan_to_num(np.atleast_2d(c))
    return float(np.linalg.norm(corr(cand) - corr(ref)))


def within_type_correlation_error(ref, ref_labels, cand, cand_labels, *, n_genes: int = 50,
                                  min_cells: int = 10) -> dict:
    """Per type (>= ``min_cells`` cells in both sets), :func:`correlation_error` over the
    ``n_genes`` genes most variable *within that type* in the reference: the gene-gene
    covariance a per-gene independent model cannot carry. Keys ``corr_error_within`` (mean over
    types) and ``per_type``. Finite samples put a floor under it: compare two real sets."""
    ref, cand = _as2d(ref, "ref"), _as2d(cand, "cand")
    rl, cl = np.asarray(ref_labels).astype(str), np.asarray(cand_labels).astype(str)
    per = {t: correlation_error(ref[rl == t], cand[cl == t], n_genes=n_genes)
           for t in _types(rl, cl, min_cells)}
    return {"corr_error_within": float(np.mean(list(per.values()))) if per else float("nan"),
            "per_type": per}


# ---------------------------------------------------------------------------- all together
def evaluate(train_x, train_labels, ref_x, ref_labels, cand_x, cand_labels, genes, *,
             n_pcs: int = 50, n_hvg: "int | None" = None, n_perm: int = 200, min_cells: int = 10,
             markers: bool = True, seed: int = 0, embedding: "CellEmbedding | None" = None) -> dict:
    """Every metric of this module for one candidate set against a reference set.

    All inputs are log-normalised (cells x genes). Distribution metrics (MMD^2, W2, energy,
    classifier AUCs) are computed on a PCA fitted on the *pooled* reference and candidate cells
    (as scDiffusion's evaluation does: a PCA fitted on one side alone fits that side's noise and
    biases the comparison). ``train_*`` (real cells, disjoint from both sets) fit the type
    classifier of :func:`label_fidelity`, on the PCA ``embedding`` of the training cells
    (default: fitted on them). Moment, marker and correlation metrics are computed on genes.
    """
    emb = embedding or CellEmbedding(train_x, n_pcs, n_hvg)
    pooled = CellEmbedding(np.concatenate([np.asarray(ref_x, np.float64), np.asarray(cand_x, np.float64)]),
                           n_pcs, n_hvg)
    zr, zc = pooled(ref_x), pooled(cand_x)
    mmd, p = mmd2(zc, zr, n_perm=n_perm, seed=seed)
    out = {"mmd2": mmd, "mmd2_pvalue": p, "w2": wasserstein2(zc, zr, seed=seed),
           "sliced_w2": sliced_wasserstein(zc, zr, seed=seed),
           "energy_distance": energy_distance(zc, zr),
           "auc_knn": classifier_auc(zc, zr, method="knn", seed=seed),
           "auc_logreg": classifier_auc(zc, zr, method="logreg", seed=seed)}
    out.update(label_fidelity(emb(train_x), train_labels, emb(cand_x), cand_labels, seed=seed))
    mc = moment_correlations(ref_x, ref_labels, cand_x, cand_labels, min_cells=min_cells)
    out.update({k: v for k, v in mc.items() if k != "per_type"})
    if markers:
        out["marker_jaccard"] = marker_overlap(ref_x, ref_labels, cand_x, cand_labels, genes,
                                               min_cells=min_cells)["marker_jaccard"]
    out["corr_error"] = correlation_error(ref_x, cand_x)
    out["corr_error_within"] = within_type_correlation_error(ref_x, ref_labels, cand_x, cand_labels,
                                                             min_cells=min_cells)["corr_error_within"]
    return out


def evaluate_with_floor(train_x, train_labels, ref_x, ref_labels, floor_x, floor_labels, cand_x,
                        cand_labels, genes, *, seed: int = 0, n_pcs: int = 50,
                        n_hvg: "int | None" = None, **kw) -> "dict[str, dict]":
    """``{"model": ..., "floor": ...}``: the candidate against the reference cells, and the
    real-vs-real noise floor -- other held-out real cells (``floor_*``) against the same
    reference.

    Use three disjoint real sets: ``train`` (fits the generator, the PCA and the type
    classifier), ``ref`` and ``floor``. The floor cells must not be training cells: a PCA fitted
    on 50 axes of a few hundred cells fits their noise, so training cells look farther from
    held-out cells than fresh cells do, and such a floor would be too pessimistic.
    """
    emb = CellEmbedding(train_x, n_pcs, n_hvg)
    common = dict(seed=seed, embedding=emb, **kw)
    return {"model": evaluate(train_x, train_labels, ref_x, ref_labels, cand_x, cand_labels, genes, **common),
            "floor": evaluate(train_x, train_labels, ref_x, ref_labels, floor_x, floor_labels, genes, **common)}
