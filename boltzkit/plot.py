"""Figures scientists expect: sample histograms, lattice snapshots, weights, training curves."""

from __future__ import annotations

import importlib
import inspect
import math
import os
import textwrap

import numpy as np


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
    lattice = x.ndim == 3
    panels = ["snapshots"] * lattice + ["samples"] + ["weights"] * (result.log_weights is not None)
    panels += [f"history:{k}" for k in ("loss", "ess_frac", "log_z") if k in result.history]
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.6 * nrow), squeeze=False)
    axes = axes.ravel()
    for ax, panel in zip(axes, panels):
        if panel == "snapshots":
            k = min(n_snapshots, x.shape[0])
            tiles = np.concatenate([np.pad(x[i].float().numpy(), ((0, 0), (0, 1)), constant_values=np.nan)
                                    for i in range(k)], axis=1)
            values = np.unique(x[:k].float().numpy())
            lo, hi = float(values.min()), float(values.max())
            cmap = plt.get_cmap("coolwarm")
            ax.imshow(tiles, cmap=cmap, interpolation="nearest", vmin=lo, vmax=hi)
            ax.set_title(f"{k} samples")
            ax.axis("off")
            if values.size <= 10:  # a legend of the site values (spins, colours)
                from matplotlib.patches import Patch

                norm = (lambda v: 0.5) if hi == lo else (lambda v: (v - lo) / (hi - lo))
                ax.legend(handles=[Patch(color=cmap(norm(float(v))), label=f"s = {float(v):+g}"
                                         if lo < 0 else f"s = {float(v):g}") for v in values],
                          loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(values.size, 5),
                          fontsize=8, frameon=False)
        elif panel == "samples":
            drawer = _sample_plot_of(result.target) or (lattice_sample_plot if lattice else None)
            if drawer is not None:  # the target's own view (Ramachandran map, lattice order parameter)
                drawer(ax, x, w, result.target, **_hook_extras(drawer, result=result, target=target))
                if lattice:
                    ax.set_ylabel("density (weighted)" if result.log_weights is not None else "density")
            else:
                flat = x.reshape(x.shape[0], -1).float().numpy()
                if flat.shape[1] >= 2:
                    ax.hist2d(flat[:, 0], flat[:, 1], bins=80, weights=w, cmap="viridis")
                    ax.set(xlabel="x[0]", ylabel="x[1]")
                else:
                    ax.hist(flat[:, 0], bins=80, weights=w, density=True)
                    ax.set_xlabel("x")
            if not ax.get_title():  # a sample_plot hook may title its own panel
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
            if key == "log_z":
                _scale_log_z_panel(ax, y, result)
            if key == "loss" and np.all(y > 0):
                ax.set_yscale("log")
            ax.set(xlabel="training step", title=key)
    for ax in axes[len(panels):]:
        ax.axis("off")
    fig.suptitle(figure_title(result), fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def _sample_plot_of(config: dict):
    """The target's ``sample_plot`` hook (``"module:function"`` in its saved config), or None."""
    spec = config.get("sample_plot") if isinstance(config, dict) else None
    if not spec:
        return None
    module, _, name = str(spec).partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):  # e.g. saved by another version: the generic view
        return None


def _hook_extras(drawer, **extras) -> dict:
    """The keyword arguments among ``extras`` (the Result, the target passed to ``plot``) that
    a ``sample_plot`` hook declares; hooks taking only ``(ax, x, w, config)`` get none."""
    try:
        params = inspect.signature(drawer).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in extras.items() if k in params}


def lattice_sample_plot(ax, x, w, config: dict) -> None:
    """Histogram of the lattice order parameter: magnetization per site for two states,
    the largest colour fraction for ``q > 2`` (Potts)."""
    vals = x.float().numpy().reshape(x.shape[0], -1)
    q = int(config.get("q", 2))
    if q > 2:
        stat = np.stack([(vals == c).mean(1) for c in range(q)], 1).max(1)
        label = "largest colour fraction"
    else:
        stat, label = vals.mean(1), "magnetization per site m"
    ax.hist(stat, bins=min(50, max(10, int(np.sqrt(len(stat))))), weights=w, density=True,
            color="C0", alpha=0.8)
    ax.set_xlabel(label)


def figure_title(result) -> str:
    """Two lines: whether the result can be trusted (and the next step when not), then the
    target, the estimate and the exact value where known."""
    trusted, verdict, step = result.trust()
    head = verdict if trusted else f"{verdict.split('. ')[0]}. {step}"
    line = f"{result.target.get('name', '')} ({result.method})"
    if result.log_z is not None:
        line += f"   log Z = {result.log_z:.4f} ± {result.log_z_stderr:.2g}"
    exact = result.diagnostics.get("exact_log_z")
    if exact is not None:
        line += f"   exact {float(exact):.4f}"
    return "\n".join(textwrap.wrap(head, 110) + [line])


def _scale_log_z_panel(ax, y, result):
    """Scale the running log Z panel to its second half and the exact value, so the final
    agreement (or not) is visible rather than the first steps' transient."""
    exact = result.diagnostics.get("exact_log_z")
    tail = y[len(y) // 2:]
    tail = tail[np.isfinite(tail)]
    if tail.size == 0:
        return
    lo, hi = float(tail.min()), float(tail.max())
    if exact is not None:
        lo, hi = min(lo, float(exact)), max(hi, float(exact))
        ax.axhline(float(exact), color="k", ls="--", lw=0.8, label=f"exact {float(exact):.4f}")
    if result.log_z is not None and result.log_z_stderr is not None and math.isfinite(result.log_z_stderr):
        se = float(result.log_z_stderr)
        ax.errorbar([len(y)], [result.log_z], yerr=[se], fmt="o", color="C3", ms=3,
                    label=f"final {result.log_z:.4f} ± {se:.2g}")
        lo, hi = min(lo, result.log_z - se), max(hi, result.log_z + se)
    pad = max(0.15 * (hi - lo), 1e-3 * max(1.0, abs(hi)))
    ax.set_ylim(lo - pad, hi + pad)
    ax.legend(fontsize=8)
