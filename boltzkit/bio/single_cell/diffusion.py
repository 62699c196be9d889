r"""Conditional diffusion that generates single cells of a requested type (scDiffusion-style).

Papers: E. Luo, M. Hao, L. Wei, X. Zhang, "scDiffusion: conditional generation of high-quality
single-cell data using diffusion model", Bioinformatics 40(9) btae518 (2024) -- the design
(DDPM over cell expression vectors, MLP denoiser, conditioning on cell type); J. Ho,
T. Salimans, "Classifier-Free Diffusion Guidance", arXiv:2207.12598 -- the conditioning
(scDiffusion used a separate noisy-data classifier; here one network learns both the
conditional and the unconditional noise predictor by dropping the label).

Objective (``t`` uniform, label ``y`` replaced by the null label with probability
``cond_dropout``)::

    L = E_{t, (x_0, y), eps} || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t, y) ||^2

with ``x_0`` the cell on a log scale (log-normalised values as given, or ``log1p(counts)`` for
count data), standardised per gene (``space="genes"``), or its standardised coordinates on
the top principal axes of the training cells (``space="pca"``). Sampling uses classifier-free
guidance with weight ``w`` (:mod:`~boltzkit.bio.single_cell.generator`; ``w = 0``, the default,
samples the learned conditional law itself); counts are generated as ``log1p`` values, inverted
and rounded. ``bk.sample(adata, label_key=..., n_samples=..., condition=...)`` returns what
:meth:`~boltzkit.bio.single_cell.generator.CellGenerator.generate` describes.

Known failure modes.

* Rare types (a handful of cells) are learned poorly: their generated cells drift towards
  neighbouring types. Check per-type metrics only for types with enough cells.
* In gene space, zero-inflated genes come out as continuous values clipped at 0; the fraction
  of exact zeros is approximate. ``space="pca"`` smooths genes: the top axes carry the
  structure and an independent Gaussian residual per gene restores marginal variances only.
* Guidance ``w > 0`` raises label fidelity but shrinks within-type variance (over-confident,
  too-typical cells); distribution metrics then get worse.
* Too few training steps leave cells over-dispersed; compare with the real-vs-real noise floor
  (:mod:`boltzkit.bio.single_cell.metrics`) and look at ``result.history``.
* There is no likelihood or log Z; evaluate against held-out cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..._registry import register
from ..._utils import check_choice, check_count
from ...errors import ConfigError
from ..generative import ConditionalMLP, GeneTokenDiT
from .dataset import CellExpressionDomain, PCABasis
from .generator import CellGenerator, CellGeneratorOptions

__all__ = ["SCDiffusion", "SCDiffusionConfig"]


class _DiTLabels(nn.Module):
    """Stem's gene-token transformer with a one-hot label as its condition (null = zeros)."""

    def __init__(self, dim, n_labels, learn_sigma, **arch):
        super().__init__()
        self.n_labels = int(n_labels)
        self.net = GeneTokenDiT(dim, n_labels, learn_sigma=learn_sigma, **arch)

    def forward(self, x, t, y):
        onehot = nn.functional.one_hot(y, self.n_labels + 1)[:, :self.n_labels].to(x.dtype)
        return self.net(x, t, onehot)


# ---------------------------------------------------------------------------- config
@dataclass(frozen=True, kw_only=True)
class SCDiffusionConfig(CellGeneratorOptions):
    """Options of :class:`SCDiffusion` (and those of
    :class:`~boltzkit.bio.single_cell.generator.CellGeneratorOptions`).

    Attributes
    ----------
    space : "genes" (diffuse every gene, standardised) or "pca" (top ``n_pcs`` axes).
    n_pcs : principal axes for ``space="pca"``.
    network : "mlp" (:class:`~boltzkit.bio.generative.ConditionalMLP`) or "dit" (Stem's
        gene-token transformer; for a few dozen genes at most).
    hidden, depth, mlp_ratio, heads : network size (``heads`` for "dit").
    n_steps : training steps (the learning rate decays from ``lr`` to ``lr_min`` over them).
    clip_x0 : clamp the predicted clean cell to [0, largest training value] (on the log scale)
        while sampling (gene space), and the generated cells to that range (both spaces).
    """

    space: str = "genes"
    n_pcs: int = 50
    network: str = "mlp"
    hidden: int = 256
    depth: int = 3
    mlp_ratio: float = 2.0
    heads: int = 4
    n_steps: int = 3000
    clip_x0: bool = True

    def __post_init__(self):
        check_choice("space", self.space, ("genes", "pca"))
        check_choice("network", self.network, ("mlp", "dit"))
        for name in ("n_pcs", "hidden", "depth", "heads", "n_steps"):
            check_count(name, getattr(self, name))
        super().__post_init__()


# ---------------------------------------------------------------------------- the sampler
@register("sc_diffusion", kinds=("dataset",), domains=(CellExpressionDomain,), priority=10,
          provides_log_z=False, paper="Luo et al. 2024 (scDiffusion) + Ho & Salimans, arXiv 2207.12598")
class SCDiffusion(CellGenerator):
    """Cell-type-conditional diffusion for single-cell expression (classifier-free guidance).

    Examples
    --------
    >>> import boltzkit as bk
    >>> from boltzkit.bio.single_cell import pbmc68k, as_target
    >>> adata = pbmc68k()                                                    # doctest: +SKIP
    >>> ds = as_target(adata, label_key="bulk_labels")                       # doctest: +SKIP
    >>> res = bk.sample(ds, n_samples=700, seed=0)                           # doctest: +SKIP
    >>> gen = res.to_anndata()                                               # doctest: +SKIP
    """

    Config = SCDiffusionConfig
    tensors = ("z_mean", "z_std")

    # ------------------------------------------------------------------ setup
    def _build(self, dim: int, n_labels: int) -> None:
        cfg = self.config
        learn = cfg.variance == "learned_range"
        with self._seeded_init():  # network init from the sampler's own stream
            if cfg.network == "mlp":
                net = ConditionalMLP(dim, n_labels, cfg.hidden, cfg.depth, cfg.mlp_ratio, learn)
            else:
                net = _DiTLabels(dim, n_labels, learn, hidden=cfg.hidden, depth=cfg.depth,
                                 heads=cfg.heads, mlp_ratio=cfg.mlp_ratio)
        self._denoiser_parts(net)

    def _setup_cells(self, target) -> None:
        cfg = self.config
        y = target.log1p()  # (n, G) on the log scale the model works on
        if cfg.network == "dit" and cfg.space == "pca":
            raise ConfigError("network='dit' has one token per gene; use it with space='genes'")
        basis = PCABasis(y, cfg.n_pcs) if cfg.space == "pca" else None
        z = y if basis is None else basis.transform(y)
        mean, std = z.mean(0), z.std(0)
        std = np.maximum(std, 1e-3 * max(float(std.max()), 1e-12))
        self.info.update({"dim": int(z.shape[1]), "max_value": float(y.max())})
        dev = self.device
        self.z_mean = torch.as_tensor(mean, dtype=torch.float32, device=dev)
        self.z_std = torch.as_tensor(std, dtype=torch.float32, device=dev)
        self.basis = None if basis is None else {
            k: torch.as_tensor(v, dtype=torch.float32, device=dev)
            for k, v in (("mean", basis.mean), ("components", basis.components),
                         ("residual_std", np.sqrt(basis.residual_variance)))}
        self._z0 = ((torch.as_tensor(z, dtype=torch.float32, device=dev) - self.z_mean) / self.z_std)
        self._build(z.shape[1], len(target.categories))

    # ------------------------------------------------------------------ training
    def train_step(self) -> dict:
        idx = torch.randint(0, self._z0.shape[0], (self.config.batch_size,), generator=self.gens["train"],
                            device=self.device)
        y = self._drop_labels(self._y[idx])
        self._set_lr(self.step / max(self._n_total, 1))
        return self._denoiser_step(self.model, self._z0[idx], y)

    # ------------------------------------------------------------------ sampling
    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion space -> the training representation (counts or log-normalised)."""
        x = z * self.z_std + self.z_mean
        if self.basis is not None:
            x = x @ self.basis["components"] + self.basis["mean"]
            x = x + self.basis["residual_std"] * torch.randn(x.shape, generator=self.gens["sample"],
                                                             device=x.device)
        x = x.clamp(0.0, self.info["max_value"]) if self.config.clip_x0 else x.clamp_min(0.0)
        if self.info["representation"] == "counts":
            x = torch.expm1(x).round()
        return x

    def _drawer(self):
        clip = None
        if self.config.clip_x0 and self.basis is None:  # 0 <= x0 <= largest training value, on the data scale
            clip = (-self.z_mean / self.z_std, (self.info["max_value"] - self.z_mean) / self.z_std)
        return lambda y: self._decode(self._draw(self._denoiser(y), (y.numel(), self.info["dim"]), clip))

    # ------------------------------------------------------------------ persistence
    def _extra_state(self) -> dict:
        return {**super()._extra_state(),
                "basis": None if self.basis is None else {k: v.cpu() for k, v in self.basis.items()}}

    def _load_extra_state(self, state: dict) -> None:
        super()._load_extra_state(state)
        self.basis = None if state["basis"] is None else {k: v.to(self.device) for k, v in state["basis"].items()}
