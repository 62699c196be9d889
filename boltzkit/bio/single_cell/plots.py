"""Figures of generated single cells: the ``sample_plot`` hook of a cells dataset.

:meth:`boltzkit.Result.plot` draws a target's samples through the hook named in its saved
config (``"sample_plot": "module:function"``); a :class:`~boltzkit.bio.single_cell.dataset.
CellDataset` names :func:`cell_sample_plot`, so every generator of cells (``sc_latent``,
``sc_diffusion``, ...) gets the same two panels without the plotting code knowing the method:

* per-gene mean vs variance (log-log) of the generated cells, with the real cells when the
  training data are passed (``result.plot(target=dataset)``) and the Poisson line for counts;
* the cells on the first two principal axes of log1p(normalize_total 1e4) values, the PCA
  fitted on real and generated cells pooled (a PCA fitted on one side alone widens the other
  side's spread), generated cells coloured by type, real cells in grey.
"""

from __future__ import annotations

import numpy as np

from ..common import dense_rows
from .dataset import PCABasis, log_normalize

__all__ = ["cell_sample_plot"]

_MAX_CELLS = 3000  # cells per side in the figure (a seeded subsample beyond that)


def _subsample(n: int, seed: int) -> np.ndarray:
    if n <= _MAX_CELLS:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, _MAX_CELLS, replace=False))


def _log_scale(x: np.ndarray, representation: str) -> np.ndarray:
    return log_normalize(x) if representation == "counts" else x


def _real_cells(target, config: dict):
    """(matrix, labels) of the real cells passed as ``target``: a CellDataset, or an AnnData read
    with the result's label key and layer; None when no target was given."""
    if target is None:
        return None
    from .dataset import CellDataset, as_target, is_anndata

    if is_anndata(target):
        target = as_target(target, label_key=config.get("label_key"), layer=config.get("layer"))
    if not isinstance(target, CellDataset):
        return None
    idx = _subsample(target.n_cells, 1)
    return dense_rows(target.x, idx), np.asarray(target.labels)[idx]


def cell_sample_plot(ax, x, w, config: dict, *, result=None, target=None) -> None:
    """Draw the mean-variance and PCA panels into the space of ``ax`` (split in two).

    Parameters
    ----------
    ax : matplotlib Axes (shrunk to the left half, the PCA panel added on the right)
    x : tensor (n_cells, n_genes), the generated cells
    w : weights (unused: generated cells are unweighted)
    config : the dataset's saved config (``result.target``)
    result : the Result (its ``config["labels"]`` colour the cells by type)
    target : optional real cells (CellDataset or AnnData) to overlay
    """
    fig = ax.figure
    halves = ax.get_subplotspec().subgridspec(1, 2, wspace=0.4)
    left = ax
    left.set_subplotspec(halves[0])
    right = fig.add_subplot(halves[1])
    fig.set_figwidth(fig.get_figwidth() + 4.2)  # room for the second panel
    representation = (config.get("domain") or {}).get("representation", "counts")
    rcfg = getattr(result, "config", None) or {}
    gen = np.asarray(x.float().numpy() if hasattr(x, "float") else x, dtype=np.float64)
    idx = _subsample(gen.shape[0], 0)
    gen = gen[idx]
    labels = rcfg.get("labels")
    labels = np.asarray(labels)[idx] if labels is not None and len(labels) == x.shape[0] else None
    real = _real_cells(target, {**config, **rcfg})
    what = "count" if representation == "counts" else "log value"
    # mean-variance per gene
    seen = []
    for cells, style, name in ([(real[0], {"color": "k", "ms": 3}, "real")] if real else []) + [
            (gen, {"color": "C3", "ms": 2.5, "alpha": 0.7}, "generated")]:
        m, v = cells.mean(0), cells.var(0)
        keep = (m > 0) & (v > 0)
        left.loglog(m[keep], v[keep], ".", label=name, **style)
        seen.append(m[keep])
    seen = np.concatenate(seen)
    if representation == "counts" and seen.size:
        left.loglog([seen.min(), seen.max()], [seen.min(), seen.max()], ":", color="0.5",
                    label="Poisson (var = mean)")
    left.set_xlabel(f"per-gene mean {what}")
    left.set_ylabel(f"per-gene variance of the {what}")
    left.set_title("mean-variance per gene")
    left.legend(fontsize=7, markerscale=3)
    # PCA of log-normalised cells, fitted on both sides pooled
    lg = _log_scale(gen, representation)
    lr = _log_scale(real[0], representation) if real else None
    basis = PCABasis(lg if lr is None else np.concatenate([lr, lg]), 2)
    if basis.n_components < 2 or lg.shape[0] < 2:
        right.text(0.5, 0.5, "too few cells for a PCA", ha="center", transform=right.transAxes)
        return
    if lr is not None:
        pr = basis.transform(lr)
        right.scatter(pr[:, 0], pr[:, 1], s=6, c="0.7", label="real", rasterized=True)
    pg = basis.transform(lg)
    if labels is None:
        right.scatter(pg[:, 0], pg[:, 1], s=6, c="C3", label="generated", rasterized=True)
    else:
        cats = list(rcfg.get("label_categories") or sorted(set(labels)))
        for i, c in enumerate(cats):
            sel = labels == c
            if sel.any():
                right.scatter(pg[sel, 0], pg[sel, 1], s=6, color=f"C{i % 10}", label=f"{c}", rasterized=True)
    right.set_xlabel("PC1")
    right.set_ylabel("PC2")
    right.set_title("PCA (real grey, generated by type)" if lr is not None else "PCA of generated cells")
    right.legend(fontsize=6, markerscale=2, loc="best")
