r"""Metrics for generated gene expression (spatial and single-cell).

Point-prediction metrics compare a prediction ``pred`` with the truth ``true``, both
``(n, G)`` (spots or cells by genes), on the scale the data are modelled on (Stem: log2(1+x)):

* :func:`pearson_per_gene` -- Pearson correlation across spots for each gene;
  :func:`pcc_summary` averages it over all genes and over the top-k genes chosen by the
  *truth's* variance (the paper's PCC-k picks genes by the model's own PCC, which is optimistic;
  it is reported too, labelled ``by_model``);
* :func:`mse`, :func:`mae`;
* :func:`relative_variance_distance` -- Stem's RVD, ``mean_g (Var_pred - Var_true)^2 / Var_true^2``
  with variances across spots: a regressor that shrinks spot-to-spot variation scores badly.

Distributional metrics compare per-spot samples ``(n, k, G)`` with draws from the true law
``(n, m, G)``: :func:`energy_distance` (per spot) and :func:`interval_coverage`.

Clustering: :func:`kmeans` (scipy) and :func:`adjusted_rand_index`.
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.vq import kmeans2
from scipy.special import comb

from ..common import as_2d as _as2d
from ..common import energy_distance

__all__ = ["pearson_per_gene", "pcc_summary", "mse", "mae", "relative_variance_distance",
           "energy_distance", "interval_coverage", "kmeans", "adjusted_rand_index",
           "point_metrics"]


def pearson_per_gene(pred, true) -> np.ndarray:
    """Pearson correlation across rows for each column ``(G,)``; NaN where either is constant."""
    p, t = _as2d(pred, "pred"), _as2d(true, "true")
    if p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and true {t.shape} differ in shape")
    pc, tc = p - p.mean(0), t - t.mean(0)
    den = np.sqrt((pc ** 2).sum(0) * (tc ** 2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (pc * tc).sum(0) / den
    return np.where(den > 0, r, np.nan)


def pcc_summary(pred, true, ks=(10, 50)) -> dict:
    """Mean PCC over all genes and over top-k genes (by true variance, and by the model's PCC)."""
    r = pearson_per_gene(pred, true)
    out = {"pcc_all": float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")}
    by_var = np.argsort(-_as2d(true, "true").var(0), kind="stable")
    by_model = np.argsort(-np.nan_to_num(r, nan=-np.inf), kind="stable")
    for k in ks:
        k = min(int(k), r.size)
        out[f"pcc_top{k}_by_true_variance"] = float(np.nanmean(r[by_var[:k]]))
        out[f"pcc_top{k}_by_model"] = float(np.nanmean(r[by_model[:k]]))
    return out


def mse(pred, true) -> float:
    """Mean squared error over all entries."""
    return float(np.mean((_as2d(pred, "pred") - _as2d(true, "true")) ** 2))


def mae(pred, true) -> float:
    """Mean absolute error over all entries."""
    return float(np.mean(np.abs(_as2d(pred, "pred") - _as2d(true, "true"))))


def relative_variance_distance(pred, true) -> float:
    """Stem's RVD: mean over genes of ``(Var_pred - Var_true)^2 / Var_true^2`` (variance across
    rows); genes with zero true variance are skipped."""
    vp, vt = _as2d(pred, "pred").var(0), _as2d(true, "true").var(0)
    ok = vt > 0
    return float(np.mean((vp[ok] - vt[ok]) ** 2 / vt[ok] ** 2))


def point_metrics(pred, true, ks=(10, 50)) -> dict:
    """PCC summary, MSE, MAE and RVD in one dict."""
    return {**pcc_summary(pred, true, ks), "mse": mse(pred, true), "mae": mae(pred, true),
            "rvd": relative_variance_distance(pred, true)}


def interval_coverage(samples, reference, level: float = 0.8) -> float:
    """Fraction of reference draws inside the samples' central ``level`` interval, per gene and
    row, averaged. ``samples`` ``(n, k, G)``; ``reference`` ``(n, m, G)``."""
    s, r = np.asarray(samples, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    lo, hi = np.quantile(s, [(1 - level) / 2, (1 + level) / 2], axis=1)  # (n, G) each
    inside = (r >= lo[:, None]) & (r <= hi[:, None])
    return float(inside.mean())


def kmeans(x, k: int, *, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """k-means labels ``(n,)`` (scipy ``kmeans2``, k-means++ start, best of ``n_init`` runs)."""
    x = _as2d(x, "x")
    best, best_inertia = None, np.inf
    rng = np.random.default_rng(seed)
    for _ in range(n_init):
        cent, lab = kmeans2(x, int(k), minit="++", seed=rng)
        inertia = ((x - cent[lab]) ** 2).sum()
        if inertia < best_inertia:
            best, best_inertia = lab, inertia
    return best


def adjusted_rand_index(a, b) -> float:
    """Adjusted Rand index of two labelings (Hubert & Arabie 1985): 1 identical, ~0 random."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.size != b.size:
        raise ValueError(f"labelings have different lengths {a.size} and {b.size}")
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    table = np.zeros((ia.max() + 1, ib.max() + 1), dtype=np.int64)
    np.add.at(table, (ia, ib), 1)
    sum_cells = comb(table, 2).sum()
    sum_a, sum_b = comb(table.sum(1), 2).sum(), comb(table.sum(0), 2).sum()
    expected = sum_a * sum_b / comb(a.size, 2)
    max_index = (sum_a + sum_b) / 2
    if max_index == expected:
        return 1.0
    return float((sum_cells - expected) / (max_index - expected))
