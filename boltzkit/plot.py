"""Figures scientists expect: sample histograms, lattice snapshots, weights, training curves."""

from __future__ import annotations

import math
import os

import numpy as np
import torch


def _plt():
    import matplotlib

    if os.environ.get("MPLBACKEND") is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_result(result, path=None, *, target=None, n_snapshots: int = 4):
    """One figure summarising a :class:`~boltzkit.Result`.

    Panels: the samples (lattice snapshots and the magnetization histogram for lattices, the
    Ramachandran map for alanine dipeptide, a 2-D histogram of the first two coordinates for
    other continuous targets), the log-weight histogram, and the training curves.
    Returns the matplotlib Figure; writes it to ``path`` when given.
    """
    plt = _plt()
    x = result.samples
    w = result.weights()
    panels = ["samples"]
    lattice = x.ndim == 3
    if lattice:
        panels.insert(0, "snapshots")
    if result.log_weights is not None:
        panels.append("weights")
    hist_keys = [k for k in ("loss", "ess_frac", "log_z") if k in result.history]
    panels += [f"history:{k}" for k in hist_keys]
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.6 * nrow), squeeze=False)
    axes = axes.ravel()
    for ax, panel in zip(axes, panels):
        if panel == "snapshots":
            k = min(n_snapshots, x.shape[0])
            tiles = np.concatenate([np.pad(x[i].float().numpy(), ((0, 0), (0, 1)), constant_values=np.nan)
                                    for i in range(k)], axis=1)
            ax.imshow(tiles, cmap="coolwarm", interpolation="nearest")
            ax.set_title(f"{k} samples")
            ax.axis("off")
        elif panel == "samples":
            if result.target.get("type") == "AlanineDipeptide":  # the Ramachandran map
                from .analysis import dihedral, plot_ramachandran
                from .energies.molecular import AlanineDipeptide as ala

                ang = dihedral(x.double(), [ala.PHI_ATOMS, ala.PSI_ATOMS]).numpy()
                lw = None if result.log_weights is None else result.log_weights.numpy()
                plot_ramachandran(ang[:, 0], ang[:, 1], lw, ax=ax, bins=36)
            elif lattice:
                vals = x.float().numpy().reshape(x.shape[0], -1)
                if result.target.get("type") == "Potts":
                    q = int(result.target["q"])
                    stat = np.stack([(vals == c).mean(1) for c in range(q)], 1).max(1)
                    label = "largest colour fraction"
                else:
                    stat = vals.mean(1)
                    label = "magnetization per site m"
                ax.hist(stat, bins=min(50, max(10, int(np.sqrt(len(stat))))), weights=w, density=True,
                        color="C0", alpha=0.8)
                ax.set_xlabel(label)
                ax.set_ylabel("density (weighted)")
            else:
                flat = x.reshape(x.shape[0], -1).float().numpy()
                if flat.shape[1] >= 2:
                    ax.hist2d(flat[:, 0], flat[:, 1], bins=80, weights=w, cmap="viridis")
                    ax.set_xlabel("x[0]")
                    ax.set_ylabel("x[1]")
                else:
                    ax.hist(flat[:, 0], bins=80, weights=w, density=True)
                    ax.set_xlabel("x")
            ax.set_title(f"{result.method}: samples")
        elif panel == "weights":
            lw = result.log_weights.numpy()
            rel = lw - lw.max()
            far = int((rel < -50).sum())  # e.g. clashes: off the scale, counted instead
            ax.hist(rel[rel >= -50], bins=60, color="C1")
            ax.set_xlabel("log w - max log w" + (f" ({far} below -50 not shown)" if far else ""))
            ax.set_title(f"log-weights (ESS {result.ess / result.n_samples:.2f} of n)")
        else:
            key = panel.split(":", 1)[1]
            y = np.asarray(result.history[key], dtype=float)
            ax.plot(np.arange(1, len(y) + 1), y, lw=0.8)
            exact = result.diagnostics.get("exact_log_z")
            if key == "log_z" and exact is not None:
                ax.axhline(exact, color="k", ls="--", lw=0.8, label="exact")
                ax.legend()
            if key == "loss" and np.all(y > 0):
                ax.set_yscale("log")
            ax.set_xlabel("training step")
            ax.set_title(key)
    for ax in axes[len(panels):]:
        ax.axis("off")
    title = result.target.get("name", "")
    if result.log_z is not None:
        title += f"   log Z = {result.log_z:.4f} ± {result.log_z_stderr:.2g}"
    fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
