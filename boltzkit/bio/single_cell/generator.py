r"""What the cell-type-conditional generators (``sc_diffusion``, ``sc_latent``) share.

:class:`CellGenerator` trains on a :class:`~boltzkit.bio.single_cell.dataset.CellDataset` (or
an AnnData with ``label_key``) and generates cells of requested types (``condition``, see
:class:`CellGeneratorOptions`; types without training cells are refused). Training drops the
label with probability ``cond_dropout`` (the null label ``n_types``), so one network carries the
conditional and the unconditional noise predictor, and sampling uses classifier-free guidance
(Ho & Salimans, arXiv 2207.12598)::

    eps = (1 + w) eps(x, t, y) - w eps(x, t, null)

with weight ``w = guidance`` (0: the learned conditional law itself). The learning rate decays
on a cosine from ``lr`` to ``lr_min``. Generated cells come back as :meth:`CellGenerator.generate`
describes, with what :func:`~boltzkit.bio.single_cell.io.result_to_anndata` needs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from ..._utils import check_count, check_number
from ...errors import ConfigError, DatasetError, TargetError
from ...nn.gaussian_diffusion import DiffusionOptions, check_diffusion_options, check_guidance_options
from ...result import Result
from ...samplers.base import SamplerConfig
from ..generative import DataDiffusionSampler
from .dataset import ANNDATA_KIND, CellDataset, allocate, as_target, is_anndata
from .io import var_to_json

__all__ = ["CellGenerator", "CellGeneratorOptions"]


@dataclass(frozen=True, kw_only=True)
class CellGeneratorOptions(DiffusionOptions, SamplerConfig):
    """Options every cell generator has.

    Attributes
    ----------
    label_key : str, optional
        ``obs`` column of the cell types (``bk.sample(adata, label_key=...)``); must match the
        dataset's when given.
    condition : None, str or {label: int}
        What ``sample`` generates: None = every label in the training proportions; a label =
        only that label; a dict = that many cells per label.
    guidance : classifier-free guidance weight ``w >= 0`` (0 = plain conditional sampling).
    cond_dropout : probability of training on the null label.
    batch_size : training batch; lr_min : end of the cosine learning-rate decay from ``lr``.

    The diffusion's options are those of :class:`~boltzkit.nn.gaussian_diffusion.DiffusionOptions`.
    """

    label_key: "str | None" = None
    condition: Any = None
    guidance: float = 0.0
    cond_dropout: float = 0.1
    batch_size: int = 128
    lr_min: float = 1e-4

    def __post_init__(self):
        check_count("batch_size", self.batch_size)
        check_number("lr_min", self.lr_min)
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


class CellGenerator(DataDiffusionSampler):
    """Base of the cell generators: the dataset checks and ``info``, label dropout, guidance,
    the cosine learning rate, generation in chunks and the Result. A subclass builds its
    networks in ``_build(dim, n_labels)`` (``dim = info[dim_key]``), prepares its training data
    in ``_setup_cells(dataset)``, gives ``_drawer() -> draw(label codes of a chunk) -> cells`` and
    may refuse a dataset in ``unsuitable(dataset)``."""

    dim_key = "dim"
    as_target_hint = "label_key=..."

    @staticmethod
    def unsuitable(target) -> "str | None":
        """Why ``target`` cannot be modelled (None: it can)."""
        return None

    def fit(self, target, *, n_steps: "int | None" = None, checkpoint=None, checkpoint_every: int = 100):
        """Train on a :class:`~boltzkit.bio.single_cell.dataset.CellDataset` (or an AnnData with
        ``label_key`` set in the config) until ``n_steps`` total steps."""
        if is_anndata(target) or isinstance(target, CellDataset):
            target = as_target(target, label_key=self.config.label_key)
        self._n_total = self.default_n_steps() if n_steps is None else n_steps
        return super().fit(target, n_steps=n_steps, checkpoint=checkpoint, checkpoint_every=checkpoint_every)

    def _setup(self, target) -> None:
        if not isinstance(target, CellDataset):
            raise TargetError(f"{self.name!r} trains on a CellDataset, got {type(target).__name__}; "
                              f"build one with bk.datasets.as_target(adata, {self.as_target_hint})")
        why = self.unsuitable(target)
        if why is not None:
            raise DatasetError(f"{self.name!r} {why}")
        if target.n_cells < 2:
            raise DatasetError(f"dataset {target.name!r} has {target.n_cells} cell(s); need >= 2")
        cats, empty = list(target.categories), list(getattr(target, "empty_categories", []))
        self._resolve_condition(self.config.condition, cats, empty)  # bad labels fail here
        self.info = {"gene_names": list(target.gene_names), "categories": cats, "label_key": target.label_key,
                     "representation": target.representation, "layer": target.layer,
                     "uns_log1p": target.uns_log1p, "empty_categories": empty,
                     "proportions": [float(p) for p in np.bincount(target.codes, minlength=len(cats))
                                     / target.n_cells],
                     "train_target": target.to_config(), "provenance": target.provenance,
                     "var": var_to_json(getattr(target, "var", None))}
        self._y = torch.as_tensor(target.codes, device=self.device)
        self._setup_cells(target)

    # ------------------------------------------------------------------ training
    def _set_lr(self, frac: float) -> None:
        """Cosine decay from ``lr`` (``frac = 0``) to ``lr_min`` (``frac >= 1``)."""
        cfg = self.config
        lr = cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * min(max(frac, 0.0), 1.0)))
        for group in self.opt.param_groups:
            group["lr"] = lr

    def _drop_labels(self, y: torch.Tensor) -> torch.Tensor:
        """Each label replaced by the null label with probability ``cond_dropout``."""
        if self.config.cond_dropout > 0:
            drop = torch.rand(y.shape[0], generator=self.gens["train"], device=self.device) < self.config.cond_dropout
            y = torch.where(drop, torch.full_like(y, len(self.info["categories"])), y)
        return y

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
        check_count("n_samples", n_samples)
        if spec is None:
            return allocate(int(n_samples), self.info["proportions"])
        out = np.zeros(len(cats), dtype=np.int64)
        out[cats.index(spec)] = int(n_samples)
        return out

    def _denoiser(self, y: torch.Tensor):
        """The EMA denoiser for labels ``y``, with classifier-free guidance when ``guidance > 0``."""
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

    @torch.no_grad()
    def generate(self, n_samples: "int | None" = None, condition=None) -> Result:
        """Generate cells.

        Parameters
        ----------
        n_samples : int, optional
            Number of cells (not used when ``condition`` is a dict).
        condition : None, str or {label: int}, optional
            As :class:`CellGeneratorOptions`'s ``condition``; None: the configured one.

        Returns
        -------
        Result
            ``samples`` ``(n_cells, n_genes)`` in the training representation (integer counts,
            or log-normalised values), grouped by label in category order; the label of each
            cell in ``result.config["labels"]``; ``result.to_anndata()`` gives the sparse AnnData.
        """
        self._require_model()
        draw = self._drawer()
        cond = self.config.condition if condition is None else condition
        counts = self._label_counts(cond, n_samples)
        t0 = time.perf_counter()
        codes = torch.as_tensor(np.repeat(np.arange(counts.size), counts), device=self.device)
        out = [draw(c) for c in codes.split(self.config.sample_batch_size)]
        samples = torch.cat(out).float().cpu()  # never empty: a request asks for >= 1 cell
        cats, cfg = self.info["categories"], self.config
        condition = {str(k): int(v) for k, v in cfg.condition.items()} if isinstance(cfg.condition, Mapping) \
            else cfg.condition
        return self._data_result(
            samples, time.perf_counter() - t0,
            {"anndata_kind": ANNDATA_KIND, "n_cells": int(samples.shape[0]), "n_genes": int(samples.shape[1]),
             "cells_per_label": {c: int(n) for c, n in zip(cats, counts)},
             "representation": self.info["representation"], "space": getattr(cfg, "space", "latent"),
             "guidance": float(cfg.guidance)},
            {"condition": condition, "gene_names": list(self.info["gene_names"]),
             "label_key": self.info["label_key"], "label_categories": list(cats),
             "labels": [cats[i] for i in codes.cpu().numpy()], "representation": self.info["representation"],
             "layer": self.info["layer"], "uns_log1p": bool(self.info["uns_log1p"]), "var": self.info.get("var")},
            self.drawn)

    drawn = "values"  # what the drawer makes, for the non-finite error

    def sample(self, n_samples: "int | None" = None) -> Result:
        """``generate(n_samples)`` with the configured condition; used by ``bk.sample``."""
        return self.generate(n_samples)

    # ------------------------------------------------------------------ persistence
    @classmethod
    def load(cls, path, *, device="auto", progress=None):
        """Load a model written by :meth:`save` (``torch.load(weights_only=True)``)."""
        state = cls._read_saved_model(path)
        obj = cls(cls._saved_config(state), device=device, seed=state["seed"], progress=progress)
        obj.info = dict(state["sampler"]["info"])
        obj._build(obj.info[cls.dim_key], len(obj.info["categories"]))
        obj.load_state_dict(state)
        return obj
