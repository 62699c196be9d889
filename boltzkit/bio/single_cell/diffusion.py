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
the top principal axes of the training cells (``space="pca"``). Sampling uses
``eps = (1 + w) eps_theta(x, t, y) - w eps_theta(x, t, null)`` with guidance weight ``w``
(``w = 0``, the default, samples the learned conditional law itself; ``w > 0`` sharpens the
types at the cost of within-type diversity).

Returns. ``bk.sample(adata, label_key=..., n_samples=..., condition=...)`` (and
:meth:`SCDiffusion.sample` / :meth:`SCDiffusion.generate`) return a
:class:`~boltzkit.result.Result` whose ``samples`` ``(n_cells, n_genes)`` are in the
representation of the training matrix (log-normalised values, or integer counts obtained by
inverting ``log1p`` and rounding), with the genes, the requested label of every cell and the
label key in ``result.config``; ``log_z`` is None. ``condition``: None (every label in the
training proportions), one label, or ``{label: n_cells}`` (then ``n_samples`` is not used).
:func:`boltzkit.bio.single_cell.dataset.result_to_anndata` gives the AnnData.

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

import math
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..._registry import register
from .dataset import (ANNDATA_KIND, CellDataset, CellExpressionDomain, PCABasis, allocate,
                                    var_to_json)
from ...errors import ConfigError, DatasetError, TargetError
from ...result import Result
from ...nn.ema import EMA
from ...nn.gaussian_diffusion import (DiffusionOptions, GaussianDiffusion, check_diffusion_options,
                                         check_guidance_options, optimize_denoiser)
from ...nn.time_embedding import SinusoidalTimeEmbedding
from ...samplers.base import SamplerConfig, TrainableSampler, _check_count, check_choice
from ..spatial.stem import GeneTokenDiT

__all__ = ["SCDiffusion", "SCDiffusionConfig", "ConditionalMLP"]

_NO_LOG_Z = ("sc_diffusion is a conditional generative model of data: there is no energy and no "
             "normalizing constant to estimate")


# ---------------------------------------------------------------------------- the network
class _Block(nn.Module):
    """Residual MLP block with adaLN-Zero conditioning (starts as the identity)."""

    def __init__(self, hidden: int, mlp_ratio: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        width = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, width), nn.SiLU(), nn.Linear(width, hidden))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 3 * hidden))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, h, c):
        shift, scale, gate = self.ada(c).chunk(3, dim=-1)
        return h + gate * self.mlp(self.norm(h) * (1 + scale) + shift)


class ConditionalMLP(nn.Module):
    """Denoiser for flat expression vectors: residual MLP conditioned on step and label.

    Condition = sinusoidal embedding of the step index + a learned label embedding (index
    ``n_labels`` is the null label of classifier-free guidance). The prediction is the MLP's
    output plus a condition-dependent per-dimension gain times the input, so that the
    near-identity maps a denoiser needs (``eps ~ x_t`` at high noise) stay available when
    ``dim`` exceeds ``hidden``. Output ``(B, D)``, or ``(B, 2, D)`` with ``learn_sigma``; it
    starts at exactly zero.

    Parameters
    ----------
    dim : int
        Data dimension (genes or principal components).
    n_labels : int
    hidden, depth : int
        Width and number of residual blocks.
    mlp_ratio : float
    learn_sigma : bool
    """

    def __init__(self, dim: int, n_labels: int, hidden: int = 256, depth: int = 3,
                 mlp_ratio: float = 2.0, learn_sigma: bool = False):
        super().__init__()
        self.dim, self.n_labels, self.learn_sigma = int(dim), int(n_labels), bool(learn_sigma)
        self.inp = nn.Linear(dim, hidden)
        self.t_embed = SinusoidalTimeEmbedding(out_dim=hidden, n_freq=64, scale=1.0)
        self.y_embed = nn.Embedding(n_labels + 1, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, mlp_ratio) for _ in range(depth))
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.out = nn.Linear(hidden, dim * (2 if learn_sigma else 1))
        self.gain = nn.Linear(hidden, dim)
        for layer in (self.final_ada[1], self.out, self.gain):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x, t, y):
        h = self.inp(x)
        c = self.t_embed(t.to(h.dtype)) + self.y_embed(y)
        for blk in self.blocks:
            h = blk(h, c)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        out = self.out(self.final_norm(h) * (1 + scale) + shift)
        skip = self.gain(c) * x
        if self.learn_sigma:
            out = out.reshape(x.shape[0], 2, self.dim)
            return torch.stack([out[:, 0] + skip, out[:, 1]], dim=1)
        return out + skip


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
class SCDiffusionConfig(DiffusionOptions, SamplerConfig):
    """Options of :class:`SCDiffusion`.

    Attributes
    ----------
    label_key : str, optional
        ``obs`` column of the labels (``bk.sample(adata, label_key=...)``); must match the
        dataset's when given.
    condition : None, str or {label: int}
        What :meth:`SCDiffusion.sample` generates: None = every label in the training
        proportions; a label = only that label; a dict = that many cells per label.
    space : "genes" (diffuse every gene, standardised) or "pca" (top ``n_pcs`` axes).
    n_pcs : principal axes for ``space="pca"``.
    network : "mlp" (:class:`ConditionalMLP`) or "dit" (Stem's gene-token transformer; for a
        few dozen genes at most).
    hidden, depth, mlp_ratio, heads : network size (``heads`` for "dit").
    guidance : classifier-free guidance weight ``w >= 0`` (0 = plain conditional sampling).
    cond_dropout : probability of training on the null label.
    n_steps, batch_size, lr, lr_min, weight_decay, grad_clip, ema_decay : AdamW training with a
        cosine learning-rate decay from ``lr`` to ``lr_min`` over the training steps.
    n_timesteps, schedule, parametrization, variance : the diffusion (see
        :class:`~boltzkit.nn.gaussian_diffusion.GaussianDiffusion`).
    sampler, sampling_steps, ddim_eta : "ancestral" or "ddim" on respaced steps.
    clip_x0 : clamp the predicted clean cell to [0, largest training value] (on the log scale)
        while sampling (gene space), and the generated cells to that range (both spaces).
    sample_batch_size : cells per sampling chunk.
    """

    label_key: "str | None" = None
    condition: Any = None
    space: str = "genes"
    n_pcs: int = 50
    network: str = "mlp"
    hidden: int = 256
    depth: int = 3
    mlp_ratio: float = 2.0
    heads: int = 4
    guidance: float = 0.0
    cond_dropout: float = 0.1
    n_steps: int = 3000
    batch_size: int = 128
    lr_min: float = 1e-4
    clip_x0: bool = True

    def __post_init__(self):
        check_choice("space", self.space, ("genes", "pca"))
        check_choice("network", self.network, ("mlp", "dit"))
        for name in ("n_pcs", "hidden", "depth", "heads", "n_steps", "batch_size", "n_timesteps",
                     "sample_batch_size"):
            _check_count(name, getattr(self, name))
        _check_count("sampling_steps", self.sampling_steps, allow_none=True)
        if not (isinstance(self.lr_min, (int, float)) and self.lr_min > 0 and math.isfinite(self.lr_min)):
            raise ConfigError(f"lr_min must be a positive number, got {self.lr_min!r}")
        check_guidance_options(self)
        check_diffusion_options(self)
        _check_condition_type(self.condition)


def _check_condition_type(c):
    if c is None or isinstance(c, str):
        return
    if isinstance(c, Mapping):
        for k, v in c.items():
            if not isinstance(k, str):
                raise ConfigError(f"condition keys must be label names (str), got {k!r}")
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"condition[{k!r}] must be a number of cells (int >= 0), got {v!r}")
        if sum(int(v) for v in c.values()) < 1:
            raise ConfigError("condition asks for no cells; give at least one label a count >= 1")
        return
    raise ConfigError(f"condition must be None, a label (str) or a dict {{label: n_cells}}, "
                      f"got {type(c).__name__}")


# ---------------------------------------------------------------------------- the sampler
@register("sc_diffusion", kinds=("dataset",), domains=(CellExpressionDomain,), priority=10,
          provides_log_z=False, paper="Luo et al. 2024 (scDiffusion) + Ho & Salimans, arXiv 2207.12598")
class SCDiffusion(TrainableSampler):
    """Cell-type-conditional diffusion for single-cell expression (classifier-free guidance).

    Examples
    --------
    >>> import boltzkit as bk
    >>> from boltzkit.bio.single_cell.dataset import pbmc68k, as_target
    >>> adata = pbmc68k()                                                    # doctest: +SKIP
    >>> ds = as_target(adata, label_key="bulk_labels")                       # doctest: +SKIP
    >>> res = bk.sample(ds, n_samples=700, seed=0)                           # doctest: +SKIP
    >>> gen = res.to_anndata()                                                # doctest: +SKIP
    """

    Config = SCDiffusionConfig

    def __init__(self, config=None, /, **kw):
        super().__init__(config, **kw)
        self.model = None
        self.info: dict = {}
        self._n_total = self.config.n_steps

    def default_n_steps(self) -> int:
        return int(self.config.n_steps)

    def fit(self, target, *, n_steps: "int | None" = None, checkpoint=None, checkpoint_every: int = 100):
        """Train on a :class:`~boltzkit.bio.single_cell.dataset.CellDataset` (or an AnnData with
        ``label_key`` set in the config) until ``n_steps`` total steps."""
        target = _as_dataset(target, self.config.label_key)
        self._n_total = self.default_n_steps() if n_steps is None else n_steps
        return super().fit(target, n_steps=n_steps, checkpoint=checkpoint, checkpoint_every=checkpoint_every)

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
        self.model = net.to(self.device)
        self.ema = EMA(self.model, cfg.ema_decay)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.diffusion = GaussianDiffusion.from_schedule(cfg.schedule, cfg.n_timesteps,
                                                         parametrization=cfg.parametrization,
                                                         variance=cfg.variance)
        self.info["n_params"] = int(sum(p.numel() for p in self.model.parameters()))

    def _setup(self, target) -> None:
        if not isinstance(target, CellDataset):
            raise TargetError(f"'sc_diffusion' trains on a CellDataset, got {type(target).__name__}; "
                              "build one with bk.datasets.as_target(adata, label_key=...)")
        if target.n_cells < 2:
            raise DatasetError(f"dataset {target.name!r} has {target.n_cells} cell(s); need >= 2")
        self._resolve_condition(self.config.condition, target.categories,  # bad labels fail here
                                getattr(target, "empty_categories", ()))
        cfg = self.config
        y = target.log1p()  # (n, G) on the log scale the model works on
        if cfg.network == "dit" and cfg.space == "pca":
            raise ConfigError("network='dit' has one token per gene; use it with space='genes'")
        basis = None
        if cfg.space == "pca":
            basis = PCABasis(y, cfg.n_pcs)
            z = basis.transform(y)
        else:
            z = y
        mean, std = z.mean(0), z.std(0)
        std = np.maximum(std, 1e-3 * max(float(std.max()), 1e-12))
        self.info = {"gene_names": list(target.gene_names), "categories": list(target.categories),
                     "label_key": target.label_key, "representation": target.representation,
                     "layer": target.layer, "uns_log1p": target.uns_log1p,
                     "proportions": [float(p) for p in np.bincount(target.codes, minlength=len(target.categories))
                                     / target.n_cells],
                     "train_target": target.to_config(), "provenance": target.provenance,
                     "dim": int(z.shape[1]), "max_value": float(y.max()),
                     "empty_categories": list(getattr(target, "empty_categories", [])),
                     "var": var_to_json(getattr(target, "var", None))}
        dev = self.device
        self.z_mean = torch.as_tensor(mean, dtype=torch.float32, device=dev)
        self.z_std = torch.as_tensor(std, dtype=torch.float32, device=dev)
        self.basis = None
        if basis is not None:
            self.basis = {k: torch.as_tensor(v, dtype=torch.float32, device=dev) for k, v in
                          (("mean", basis.mean), ("components", basis.components),
                           ("residual_std", np.sqrt(basis.residual_variance)))}
        self._z0 = ((torch.as_tensor(z, dtype=torch.float32, device=dev) - self.z_mean) / self.z_std)
        self._y = torch.as_tensor(target.codes, device=dev)
        self._build(z.shape[1], len(target.categories))

    # ------------------------------------------------------------------ training
    def _lr(self) -> float:
        cfg = self.config
        frac = min(self.step / max(self._n_total, 1), 1.0)
        return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * frac))

    def train_step(self) -> dict:
        cfg, g, dev = self.config, self.gens["train"], self.device
        self.model.train()
        idx = torch.randint(0, self._z0.shape[0], (cfg.batch_size,), generator=g, device=dev)
        x0, y = self._z0[idx], self._y[idx]
        if cfg.cond_dropout > 0:
            drop = torch.rand(cfg.batch_size, generator=g, device=dev) < cfg.cond_dropout
            y = torch.where(drop, torch.full_like(y, len(self.info["categories"])), y)
        for group in self.opt.param_groups:
            group["lr"] = self._lr()
        net = self.model
        metrics = optimize_denoiser(self.diffusion, lambda x, s: net(x, s, y), x0, generator=g,
                                    optimizer=self.opt, model=self.model, ema=self.ema,
                                    grad_clip=cfg.grad_clip)
        return metrics

    # ------------------------------------------------------------------ sampling
    @staticmethod
    def _resolve_condition(condition, categories, empty=()) -> "np.ndarray | str | None":
        """Per-label cell counts (array) for a dict, the label for a str, None for None;
        unknown labels raise, listing the known ones; a label with no training cells
        (``empty``: declared categories without cells) raises saying so."""
        _check_condition_type(condition)
        if condition is None:
            return None
        names = [condition] if isinstance(condition, str) else list(condition)
        hollow = [c for c in names if c in set(empty) and (isinstance(condition, str) or condition[c] > 0)]
        if hollow:
            raise ConfigError(f"cell type(s) {hollow} have no cells in the training data, so no cells "
                              "can be generated for them; drop them from the request or add cells of "
                              "those types")
        names = [c for c in names if c not in set(empty)]
        unknown = [c for c in names if c not in set(categories)]
        if unknown:
            raise ConfigError(f"unknown condition label(s) {unknown}; the labels are {list(categories)}")
        if isinstance(condition, str):
            return condition
        return np.array([int(condition.get(c, 0)) for c in categories], dtype=np.int64)

    def _label_counts(self, condition, n_samples) -> np.ndarray:
        cats = self.info["categories"]
        spec = self._resolve_condition(condition, cats, self.info.get("empty_categories", ()))
        if isinstance(spec, np.ndarray):
            return spec
        _check_count("n_samples", n_samples)
        if spec is None:
            return allocate(int(n_samples), self.info["proportions"])
        out = np.zeros(len(cats), dtype=np.int64)
        out[cats.index(spec)] = int(n_samples)
        return out

    def _denoiser(self, y: torch.Tensor):
        net, w = self.ema.shadow, float(self.config.guidance)
        if w == 0:
            return lambda x, s: net(x, s, y)
        null = torch.full_like(y, len(self.info["categories"]))

        def guided(x, s):
            out = net(torch.cat([x, x]), torch.cat([s, s]), torch.cat([y, null]))
            c, u = out.chunk(2)
            if out.ndim == 3:  # learned variance: guide the prediction, keep the conditional variance
                return torch.stack([(1 + w) * c[:, 0] - w * u[:, 0], c[:, 1]], dim=1)
            return (1 + w) * c - w * u
        return guided

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

    @torch.no_grad()
    def generate(self, n_samples: "int | None" = None, condition=None) -> Result:
        """Generate cells.

        Parameters
        ----------
        n_samples : int, optional
            Number of cells (not used when ``condition`` is a dict).
        condition : None, str or {label: int}, optional
            None: the configured ``condition``; if that is None too, every label in the
            training proportions (largest-remainder rounding).

        Returns
        -------
        Result
            ``samples`` ``(n_cells, n_genes)`` grouped by label in category order; the label
            of each cell in ``result.config["labels"]``.
        """
        self._require_model()
        cfg, dim = self.config, self.info["dim"]
        clip = None
        if cfg.clip_x0 and self.basis is None:  # 0 <= x0 <= largest training value, on the data scale
            clip = (-self.z_mean / self.z_std, (self.info["max_value"] - self.z_mean) / self.z_std)

        def draw(y):
            z = self.diffusion.sample(self._denoiser(y), (y.numel(), dim), method=cfg.sampler,
                                      n_steps=cfg.sampling_steps, eta=cfg.ddim_eta,
                                      generator=self.gens["sample"], device=self.device, clip_x0=clip)
            return self._decode(z)

        return self._generate(n_samples, condition, draw, "values")

    def _generate(self, n_samples, condition, draw, what: str) -> Result:
        """The cells of ``generate``: per-label counts, then ``draw(labels)`` on chunks of
        ``sample_batch_size`` labels, checked finite, as a Result (shared with sc_latent)."""
        cond = self.config.condition if condition is None else condition
        counts = self._label_counts(cond, n_samples)
        t0 = time.perf_counter()
        codes = torch.as_tensor(np.repeat(np.arange(counts.size), counts), device=self.device)
        size = self.config.sample_batch_size
        out = [draw(codes[s:s + size]) for s in range(0, codes.numel(), size)]
        samples = torch.cat(out).float().cpu() if out else torch.zeros(0, len(self.info["gene_names"]))
        if not bool(torch.isfinite(samples).all()):
            raise ConfigError(f"sampling produced non-finite {what}; the model is not trained "
                              "enough or diverged (check result.history, lower lr)")
        return SCDiffusion._result(self, samples, codes.cpu().numpy(), counts, time.perf_counter() - t0)

    def sample(self, n_samples: "int | None" = None) -> Result:
        """``generate(n_samples)`` with the configured condition; used by ``bk.sample``."""
        return self.generate(n_samples)

    def _result(self, samples, codes, counts, wall) -> Result:
        cats, cfg = self.info["categories"], self.config
        diagnostics = {"log_z_unavailable": _NO_LOG_Z, "anndata_kind": ANNDATA_KIND,
                       "n_cells": int(samples.shape[0]), "n_genes": int(samples.shape[1]),
                       "cells_per_label": {c: int(n) for c, n in zip(cats, counts)},
                       "representation": self.info["representation"],
                       "space": getattr(cfg, "space", "latent"),
                       "guidance": float(cfg.guidance), "sampler": cfg.sampler,
                       "sampling_steps": cfg.sampling_steps or cfg.n_timesteps,
                       **self._train_diagnostics(), "sample_wall_time_s": float(wall), "n_params": int(self.info["n_params"]),
                       "training_data": str(self.info.get("provenance", ""))}
        kw = self._result_kwargs()
        if not kw["target"]:
            kw["target"] = dict(self.info.get("train_target") or {})
        kw["config"] = {**self.config_dict(), "condition": _jsonable_condition(cfg.condition),
                        "gene_names": list(self.info["gene_names"]),
                        "label_key": self.info["label_key"], "label_categories": list(cats),
                        "labels": [cats[i] for i in codes], "representation": self.info["representation"],
                        "layer": self.info["layer"], "uns_log1p": bool(self.info["uns_log1p"]),
                        "var": self.info.get("var")}
        return Result(samples=samples, log_z=None, diagnostics=diagnostics, **kw)

    # ------------------------------------------------------------------ persistence
    components = ("model", "ema", "opt")
    tensors = ("z_mean", "z_std")

    def _extra_state(self) -> dict:
        self._require_model()
        return {"basis": None if self.basis is None else {k: v.cpu() for k, v in self.basis.items()},
                "info": dict(self.info)}

    def _load_extra_state(self, state: dict) -> None:
        self.basis = None if state["basis"] is None else {k: v.to(self.device) for k, v in state["basis"].items()}
        self.info = dict(state["info"])

    def save(self, path) -> None:
        """Write the trained model (weights, EMA, optimizer, normalisation, genes, labels); atomic."""
        self._require_model()
        self.save_checkpoint(path)

    @classmethod
    def load(cls, path, *, device="auto", progress=None) -> "SCDiffusion":
        """Load a model written by :meth:`save` (``torch.load(weights_only=True)``)."""
        state = cls._read_saved_model(path)
        obj = cls(cls._saved_config(state), device=device, seed=state["seed"], progress=progress)
        info = state["sampler"]["info"]
        obj.info = dict(info)
        obj._build(info["dim"], len(info["categories"]))
        obj.load_state_dict(state)
        obj._n_total = obj.config.n_steps
        return obj


def _as_dataset(target, label_key):
    from .dataset import as_target, is_anndata

    if is_anndata(target) or isinstance(target, CellDataset):
        return as_target(target, label_key=label_key)
    return target


def _jsonable_condition(c):
    if isinstance(c, Mapping):
        return {str(k): int(v) for k, v in c.items()}
    return c
