"""Stem results back to AnnData (reading spatial data is :meth:`~boltzkit.bio.spatial.dataset.
SpatialDataset.from_anndata` / ``from_hest``)."""

from __future__ import annotations

import numpy as np

from ...errors import DatasetError, require
from .dataset import SCALE

__all__ = ["result_to_anndata"]


def result_to_anndata(result, *, samples_as_layers: bool = True):
    """A Stem :class:`~boltzkit.result.Result` as AnnData: one row per condition spot.

    ``X`` and ``layers["mean"]`` hold the per-spot mean over samples and ``layers["std"]`` their
    standard deviation, all on the ``log2(1 + count)`` scale; ``layers["sample_<i>"]`` hold the
    individual samples. ``obs_names`` are the condition spots' names in order, ``var_names`` the
    genes in the order of ``result.samples``; ``obsm["spatial"]`` the spot coordinates when
    known and ``uns["boltzkit"]`` the method, provenance and scale.
    """
    ad = require("anndata", "bio")
    s = result.samples.detach().cpu().numpy()
    if s.ndim != 3:
        raise DatasetError(f"result.samples must have shape (spots, samples, genes), got {s.shape}")
    cfg = result.config
    genes = cfg.get("gene_names")
    cond = cfg.get("condition") or {}
    obs = cond.get("obs_names")
    if genes is None or obs is None:
        raise DatasetError("this Result carries no gene/spot names (config['gene_names'], "
                           "config['condition']['obs_names']); only results of spatial methods "
                           "such as 'stem' convert to AnnData")
    mean = s.mean(axis=1)
    a = ad.AnnData(X=mean.astype(np.float32))
    a.obs_names = list(obs)
    a.var_names = list(genes)
    a.layers["mean"] = mean.astype(np.float32)
    a.layers["std"] = s.std(axis=1).astype(np.float32)
    if samples_as_layers:
        for i in range(s.shape[1]):
            a.layers[f"sample_{i}"] = s[:, i].astype(np.float32)
    if cond.get("coords") is not None:
        a.obsm["spatial"] = np.asarray(cond["coords"], dtype=np.float64)
    if cond.get("slide") is not None:
        a.obs["slide"] = list(cond["slide"])
    a.uns["boltzkit"] = {"method": result.method, "scale": SCALE, "samples_per_spot": int(s.shape[1]),
                         "provenance": str(cond.get("provenance", "")), "seed": result.seed}
    return a
