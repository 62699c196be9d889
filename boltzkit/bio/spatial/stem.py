r"""Stem: conditional diffusion that generates spot gene expression from the tissue image.

Paper: S. Zhu, Y. Zhu, M. Tao, P. Qiu, "Diffusion Generative Modeling for Spatially Resolved
Gene Expression Inference from Histology Images", ICLR 2025, arXiv:2501.15598.

What it does. For every spot of a spatial-transcriptomics slide, Stem learns the conditional
law ``p(x | patch)`` of the spot's expression vector ``x`` (``log2(1 + count)`` of G genes)
given the image patch around it, with a DDPM over ``x`` whose denoiser is a transformer with one
token per gene (:class:`GeneTokenDiT`), conditioned through adaLN-Zero on an image embedding
``c = encoder(patch)`` plus the diffusion time. Objective (IDDPM hybrid loss, ``t`` uniform)::

    L = E_{t, x_0, eps} || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t, c) ||^2
        + L_vb(sigma_theta)          (variance head only; stop-gradient on the mean)

Training pairs each spot's expression with the embedding of a random one of the 8 dihedral
transforms of its patch (Stem's augmentation). At test time several samples are drawn per
spot; their mean is the point prediction and their spread the predicted heterogeneity.

Returns. :meth:`Stem.predict` (and :meth:`Stem.sample`, used by ``bk.sample``) returns a
:class:`~boltzkit.result.Result` whose ``samples`` have shape ``(spots, samples per spot,
genes)`` on the ``log2(1 + count)`` scale, ``log_z = None`` (a data model has no normalizing
constant), the gene names and the condition spots' names in ``result.config``, and training
and sampling times in ``result.diagnostics``; :func:`boltzkit.datasets.result_to_anndata`
converts it to AnnData.

Sizes. ``size="cpu"`` (default): hidden 64, depth 2, 4 heads, 50 respaced sampling steps. ``size="paper"``: hidden 384,
depth 12, 6 heads, the configuration of the reference scripts (200 genes, 1536-d UNI+CONCH
embeddings, 1000 ancestral steps, 20 samples per spot, ~300k steps at batch 256 on a GPU).
The paper's foundation-model encoders are gated downloads and are not used here; pass your
own encoder object or precomputed embeddings (``encoder="precomputed"``). The default encoder
is the offline :class:`~boltzkit.bio.spatial.encoders.StainStatsEncoder`.

Measured (``benchmarks/stem_spatial.py``; SEMI-SYNTHETIC data: real IHC colon image + procedural
images, expression from a known law -- not real H&E / ST data; 32 genes, 1229 train / 535
held-out-slide test spots, stain-statistics encoder, default CPU size, 2000 steps, 20 samples x 50
ancestral steps; mean +- sd over 3 seeds, loaded 2-core CPU):

==========================  =======  =============  =============  =========
metric                      oracle   Stem           regressor      retrieval
==========================  =======  =============  =============  =========
PCC, all genes              0.765    0.743 +- .002  0.754 +- .002  0.717
MSE                         0.767    0.829 +- .004  0.805 +- .004  1.013
RVD of one draw per spot    0.005    0.007 +- .001  0.173 +- .002  0.009
energy distance to truth    0.009    0.138 +- .020  3.098          0.842
bimodal spots, both modes   0.987    0.987 +- .007  0              0.997
corr(mixture weight, pi)    0.901    0.891 +- .011  0.806          0.874
train / sample wall time    --       187 s / 459 s  10 s / 1 s     -- / 2 s
==========================  =======  =============  =============  =========

(oracle: exact conditional mean for point metrics, 20 draws of the true law for the others.)
The regressor is slightly better on point metrics; Stem reproduces the per-spot law (spread,
bimodality, mixture weights) that the regressor cannot.

Known failure modes.

* Results depend on the image encoder: stain statistics only see colour, texture and nuclear
  density; morphology that they miss cannot be predicted (a trained CNN or a foundation model
  can do better).
* Too few training steps give over-dispersed samples (noise not yet removed) and a shrunk
  point prediction; check the loss curve (``result.history``) and compare with a regressor.
* Respaced sampling (``sampling_steps`` < 1000) with a fixed variance biases the spread; the
  learned variance (default) keeps it close.
* Slides unlike the training slides (stain, scanner, tissue) are out of distribution: samples
  are then confident but wrong. Hold out whole slides to measure this.
* There is no likelihood or log Z; compare samples with held-out spots instead.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..._registry import register
from ..._utils import check_choice, check_count
from ...errors import ConfigError, DatasetError, TargetError
from ...nn.gaussian_diffusion import DiffusionOptions, check_diffusion_options
from ...result import Result
from ...samplers.base import SamplerConfig
from ..generative import DataDiffusionSampler, GeneTokenDiT
from .dataset import SCALE, ExpressionDomain, SpatialDataset
from .encoders import dihedral, embed_dataset, make_encoder, standardization

__all__ = ["Stem", "StemConfig", "SIZES"]

SIZES = {"cpu": {"hidden": 64, "depth": 2, "heads": 4},
         "paper": {"hidden": 384, "depth": 12, "heads": 6}}
_ENCODER_NAMES = ("stain", "cnn", "precomputed")


# ---------------------------------------------------------------------------- config
@dataclass(frozen=True, kw_only=True)
class StemConfig(DiffusionOptions, SamplerConfig):
    """Options of :class:`Stem`.

    Attributes
    ----------
    condition : SpatialDataset or array (n, D), optional
        Spots to generate expression for in :meth:`Stem.sample` / ``bk.sample`` (their images
        or, with ``encoder="precomputed"``, their embeddings). None: the training spots.
    size : "cpu" (hidden 64, depth 2, 4 heads) or "paper" (384, 12, 6).
    hidden, depth, heads : override the size preset.
    mlp_ratio : transformer MLP width / hidden.
    encoder : "stain" (default), "cnn" (trained jointly), "precomputed" (the dataset's
        ``embeddings``) or an :class:`~boltzkit.bio.spatial.encoders.ImageEncoder` object.
    cnn_dim : embedding width of the "cnn" encoder.
    augment : train on random dihedral transforms of the patches (Stem).
    n_steps, batch_size : training steps and batch; with the
        :class:`~boltzkit.nn.gaussian_diffusion.DiffusionOptions` (paper: lr 1e-4, batch 256,
        EMA 0.9999, ~300k steps; 1000 "linear" steps, "eps", "learned_range", "ancestral").
    clip_x0 : clamp the predicted clean expression at 0 during sampling (paper: off).
    standardize : diffuse per-gene standardized expression (centred, unit variance over the
        training spots) instead of the raw log2(1+x) values (paper: raw).
    sample_batch_size : rows (spots x samples) per sampling chunk.
    """

    condition: Any = None
    size: str = "cpu"
    hidden: "int | None" = None
    depth: "int | None" = None
    heads: "int | None" = None
    mlp_ratio: float = 4.0
    encoder: Any = "stain"
    cnn_dim: int = 64
    augment: bool = True
    n_steps: int = 3000
    batch_size: int = 64
    variance: str = "learned_range"
    sampling_steps: "int | None" = 50
    clip_x0: bool = False
    standardize: bool = False

    def __post_init__(self):
        check_choice("size", self.size, SIZES)
        for name in ("n_steps", "batch_size", "cnn_dim"):
            check_count(name, getattr(self, name))
        for name in ("hidden", "depth", "heads"):
            check_count(name, getattr(self, name), allow_none=True)
        check_diffusion_options(self)
        if isinstance(self.encoder, str) and self.encoder not in _ENCODER_NAMES:
            raise ConfigError(f"encoder must be one of {_ENCODER_NAMES} or an ImageEncoder object, "
                              f"got {self.encoder!r}")
        c = self.condition
        if not (c is None or isinstance(c, (SpatialDataset, np.ndarray, torch.Tensor))):
            raise ConfigError(f"condition must be a SpatialDataset (build one with "
                              f"bk.datasets.SpatialDataset.from_anndata(adata, ...)) or an "
                              f"(n_spots, dim) array of embeddings, got {type(c).__name__}")

    def arch(self) -> dict:
        return {k: v if getattr(self, k) is None else getattr(self, k) for k, v in SIZES[self.size].items()}


# ---------------------------------------------------------------------------- the sampler
def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _describe(cond) -> dict:
    if isinstance(cond, SpatialDataset):
        return {"name": cond.name, "n_spots": cond.n_spots, "provenance": cond.provenance}
    return {"name": "embeddings", "n_spots": int(len(cond))}


@register("stem", kinds=("dataset",), domains=(ExpressionDomain,), priority=10, provides_log_z=False,
          paper="Zhu et al. 2025, arXiv 2501.15598")
class Stem(DataDiffusionSampler):
    """Conditional diffusion generating spot gene expression from tissue-image patches.

    Examples
    --------
    >>> import boltzkit as bk
    >>> from boltzkit.bio.spatial.synthetic import make_tissue
    >>> train = make_tissue("procedural", seed=1).dataset                  # doctest: +SKIP
    >>> test = make_tissue("procedural", seed=2).dataset                   # doctest: +SKIP
    >>> res = bk.sample(train, condition=test, n_samples=20, seed=0)       # doctest: +SKIP
    >>> res.samples.shape        # (spots, 20, genes)                      # doctest: +SKIP
    >>> adata = bk.datasets.result_to_anndata(res)                        # doctest: +SKIP
    """

    Config = StemConfig
    default_n_samples: ClassVar[int] = 20

    # ------------------------------------------------------------------ config
    def config_dict(self) -> dict:  # (dataclasses.asdict would deep-copy a condition dataset)
        out = {f.name: getattr(self.config, f.name) for f in dataclasses.fields(self.config)}
        out["condition"] = None if out["condition"] is None else _describe(out["condition"])
        out["encoder"] = out["encoder"] if isinstance(out["encoder"], str) else repr(out["encoder"])
        return out

    # ------------------------------------------------------------------ setup
    def _check_condition_source(self, ds, what: str) -> None:
        """Raise if ``ds`` cannot be encoded by this model's encoder."""
        if isinstance(ds, SpatialDataset):
            if self.encoder is None:
                if ds.embeddings is None:
                    raise DatasetError(f"{what} has no precomputed embeddings but encoder='precomputed'; "
                                       "read them with SpatialDataset.from_anndata(..., embedding_key=...)")
                if ds.embeddings.shape[1] != self.info["cond_dim"]:
                    raise DatasetError(f"{what} has {ds.embeddings.shape[1]}-d embeddings; the model "
                                       f"uses {self.info['cond_dim']}-d ones")
            elif not ds.has_images:
                raise DatasetError(f"{what} has no tissue image to encode; pass images=... (or use "
                                   "encoder='precomputed' with embeddings)")
        else:
            e = _as_tensor(ds)
            if e.ndim != 2 or e.shape[1] != self.info["cond_dim"] or e.shape[0] == 0:
                raise DatasetError(f"{what} as an array must be non-empty embeddings of shape "
                                   f"(n_spots, {self.info['cond_dim']}), got {tuple(e.shape)}")
            if not bool(torch.isfinite(e).all()):
                raise DatasetError(f"{what} contains NaN or infinite embeddings")

    def _build(self, n_genes: int, cond_dim: int, gene_names) -> None:
        cfg = self.config
        with self._seeded_init():
            net = GeneTokenDiT(n_genes, cond_dim, mlp_ratio=cfg.mlp_ratio,
                               learn_sigma=cfg.variance == "learned_range", **cfg.arch())
        mods = {"net": net}
        if self.trainable_encoder:
            mods["encoder"] = self.encoder
        self._denoiser_parts(nn.ModuleDict(mods))
        self.info.update({"n_genes": int(n_genes), "cond_dim": int(cond_dim), "gene_names": list(gene_names)})

    def _make_encoder(self):
        with self._seeded_init():
            enc = make_encoder(self.config.encoder, cnn_dim=self.config.cnn_dim)
        self.encoder = enc
        self.trainable_encoder = isinstance(enc, nn.Module) and getattr(enc, "trainable", False)
        return enc

    def _setup(self, target) -> None:
        if not isinstance(target, SpatialDataset):
            raise TargetError(f"'stem' trains on a boltzkit SpatialDataset, got {type(target).__name__}; "
                              "build one with bk.datasets.SpatialDataset.from_anndata(adata, ...)")
        if target.expression is None:
            raise DatasetError(f"training dataset {target.name!r} has no expression; Stem learns "
                               "expression given images, so it needs spots with measured expression")
        if target.n_spots < 2:
            raise DatasetError(f"training dataset {target.name!r} has {target.n_spots} spot(s); need >= 2")
        enc = self._make_encoder()
        no_emb = enc is None and target.embeddings is None
        cond_dim = enc.out_dim if enc is not None else 0 if no_emb else target.embeddings.shape[1]
        self.info = {"cond_dim": int(cond_dim)}
        self._check_condition_source(target, f"training dataset {target.name!r}")
        if self.config.condition is not None:
            self._check_condition_source(self.config.condition, "condition")
        self._build(target.n_genes, cond_dim, target.gene_names)
        transforms = tuple(range(8)) if self.config.augment else (0,)
        x = torch.as_tensor(target.expression, device=self.device)
        self.x_mean, self.x_std = torch.zeros_like(x[0]), torch.ones_like(x[0])
        if self.config.standardize:
            self.x_mean, self.x_std = x.mean(0), x.std(0).clamp_min(1e-3)
        self._x0 = (x - self.x_mean) / self.x_std
        if self.trainable_encoder:
            self._patches = target.patches().to(self.device)
            self._transforms = transforms
            self.emb_mean = torch.zeros(cond_dim, device=self.device)
            self.emb_std = torch.ones(cond_dim, device=self.device)
        else:
            emb = embed_dataset(enc, target, transforms=transforms, device=self.device)
            self.emb_mean, self.emb_std = standardization(emb)
            self._emb = (emb - self.emb_mean) / self.emb_std
        self.info.update({"train_target": target.to_config(),
                          "provenance": target.provenance})

    # ------------------------------------------------------------------ training
    def _train_cond(self, idx: torch.Tensor) -> torch.Tensor:
        g = self.gens["train"]
        if self.trainable_encoder:
            ks = torch.randint(0, len(self._transforms), (idx.numel(),), generator=g, device=self.device)
            p = self._patches[idx]
            out = torch.empty_like(p)
            for k in ks.unique().tolist():
                sel = ks == k
                out[sel] = dihedral(p[sel], self._transforms[k])
            return self.model["encoder"](out)
        ks = torch.randint(0, self._emb.shape[0], (idx.numel(),), generator=g, device=self.device)
        return self._emb[ks, idx]

    def train_step(self) -> dict:
        idx = torch.randint(0, self._x0.shape[0], (self.config.batch_size,), generator=self.gens["train"],
                            device=self.device)
        return self._denoiser_step(self.model["net"], self._x0[idx], self._train_cond(idx))

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def embed(self, condition) -> torch.Tensor:
        """Standardized condition embeddings ``(n, D)`` (EMA encoder) of a dataset or array."""
        self._require_model()
        self._check_condition_source(condition, "condition")
        if not isinstance(condition, SpatialDataset):
            e = _as_tensor(condition).float()
        else:
            enc = self.ema.shadow["encoder"] if self.trainable_encoder else self.encoder
            e = embed_dataset(enc, condition, device=self.device)[0]
        return (e.to(self.device) - self.emb_mean) / self.emb_std

    @torch.no_grad()
    def predict(self, condition=None, n_samples: "int | None" = None) -> Result:
        """Draw ``n_samples`` expression profiles for every spot of ``condition``: the Result of
        the module docstring's "Returns", ``samples`` ``(spots, n_samples, genes)``.

        Parameters
        ----------
        condition : SpatialDataset or array (n, D), optional
            Spots to predict (as :class:`StemConfig`'s); default the configured ones, else the training spots.
        n_samples : int, optional
            Samples per spot (default 20, as in the paper).
        """
        self._require_model()
        k = self.default_n_samples if n_samples is None else n_samples
        check_count("n_samples (samples per spot)", k)
        if condition is None:
            condition = self.config.condition if self.config.condition is not None else self.target
        if condition is None:
            raise ConfigError("no condition: pass the spots to predict (a SpatialDataset)")
        t0 = time.perf_counter()
        cond = self.embed(condition)
        n, g = cond.shape[0], self.info["n_genes"]
        net = self.ema.shadow["net"]
        # x0 >= 0 on the data scale is x0 >= -mean / std on the diffused scale (per gene)
        clip = (-self.x_mean / self.x_std, float("inf")) if self.config.clip_x0 else None
        out = [self._draw(lambda x, s, c=c: net(x, s, c), (c.shape[0], g), clip) * self.x_std + self.x_mean
               for c in cond.repeat_interleave(k, dim=0).split(self.config.sample_batch_size)]
        samples = torch.cat(out).reshape(n, k, g).float().cpu()
        return self._result(samples, condition, time.perf_counter() - t0)

    def _result(self, samples, condition, wall) -> Result:
        if isinstance(condition, SpatialDataset):
            cinfo = {**_describe(condition), "obs_names": list(condition.obs_names),
                     "coords": None if condition.coords is None else condition.coords.tolist(),
                     "slide": [str(s) for s in condition.slide]}
        else:
            cinfo = {**_describe(condition), "obs_names": [f"spot{i}" for i in range(samples.shape[0])],
                     "coords": None, "slide": None, "provenance": "embeddings given as an array"}
        n, k, g = samples.shape
        return self._data_result(samples, wall, {"n_spots": n, "samples_per_spot": k, "n_genes": g, "scale": SCALE},
                                 {"gene_names": list(self.info["gene_names"]), "condition": cinfo},
                                 condition_data=str(cinfo["provenance"]))

    def sample(self, n_samples: "int | None" = None) -> Result:
        """``predict(config.condition or the training spots, n_samples)``; used by ``bk.sample``."""
        self._require_model()
        return self.predict(None, n_samples)

    # ------------------------------------------------------------------ persistence
    tensors = ("emb_mean", "emb_std", "x_mean", "x_std")

    @classmethod
    def load(cls, path, *, encoder=None, device="auto", progress=None) -> "Stem":
        """Load a model written by :meth:`save` (``torch.load(weights_only=True)``).

        ``encoder`` is required when the model was trained with a user encoder object.
        """
        state = cls._read_saved_model(path)
        saved_enc = state["config"]["encoder"]
        if encoder is None:
            if saved_enc not in _ENCODER_NAMES:
                raise ConfigError(f"this model was trained with the encoder {saved_enc}; pass the same "
                                  "encoder object: Stem.load(path, encoder=...)")
            encoder = saved_enc
        obj = cls(cls._saved_config(state, encoder=encoder, condition=None),
                  device=device, seed=state["seed"], progress=progress)
        enc = obj._make_encoder()
        info = state["sampler"]["info"]
        if enc is not None and enc.out_dim != info["cond_dim"]:
            raise ConfigError(f"the encoder gives {enc.out_dim}-d embeddings; the model expects "
                              f"{info['cond_dim']}-d")
        obj.info = {"cond_dim": info["cond_dim"]}
        obj._build(info["n_genes"], info["cond_dim"], info["gene_names"])
        obj.load_state_dict(state)
        return obj
