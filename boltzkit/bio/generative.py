r"""What the bio samplers share: their conditional denoisers and a base for diffusion models of data.

Stem (:mod:`boltzkit.bio.spatial.stem`) and ``sc_diffusion`` / ``sc_latent``
(:mod:`boltzkit.bio.single_cell`) are DDPMs over expression vectors (or latents) ``x`` given a
condition ``c`` (an image embedding, a cell type), trained on the denoising loss of
:func:`~boltzkit.nn.gaussian_diffusion.optimize_denoiser`::

    L = E_{t, (x_0, c), eps} || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t, c) ||^2

* :class:`GeneTokenDiT` -- one token per gene (Stem; ``sc_diffusion`` with ``network="dit"``);
* :class:`ConditionalMLP` -- flat vectors (``sc_diffusion``; the latent prior of ``sc_latent``);

both conditioned through adaLN-Zero, so that they start at exactly zero.
:class:`DataDiffusionSampler` is the base of these samplers; the :class:`~boltzkit.result.Result`
of a model of data has ``log_z`` None (there is no energy and no normalizing constant).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..nn.ema import EMA
from ..nn.gaussian_diffusion import GaussianDiffusion, optimize_denoiser
from ..nn.time_embedding import SinusoidalTimeEmbedding, _zero_
from ..result import Result
from ..samplers.base import TrainableSampler

__all__ = ["GeneTokenDiT", "ConditionalMLP", "DataDiffusionSampler"]


# ---------------------------------------------------------------------------- denoisers
def _modulate(h, shift, scale):
    return h * (1 + scale) + shift


class _AdaLNZeroBlock(nn.Module):
    """Transformer block whose LayerNorm shift/scale and residual gates come from the condition
    (DiT adaLN-Zero: the modulation starts at zero, so each block starts as the identity)."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        width = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, width), nn.GELU(approximate="tanh"),
                                 nn.Linear(width, hidden))
        self.ada = nn.Sequential(nn.SiLU(), _zero_(nn.Linear(hidden, 6 * hidden)))

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c)[:, None].chunk(6, dim=-1)
        a = _modulate(self.norm1(h), sh1, sc1)
        b, n, d = a.shape
        q, k, v = self.qkv(a).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        h = h + g1 * self.proj(att)
        return h + g2 * self.mlp(_modulate(self.norm2(h), sh2, sc2))


class GeneTokenDiT(nn.Module):
    """Stem's denoiser: one token per gene, adaLN-Zero conditioning on time + image embedding.

    Token ``g`` = learned gene vector + MLP(noisy value ``x_g``); no positional encoding (the
    gene vector identifies the gene). Condition = sinusoidal embedding of the step index + MLP
    of the image embedding. Output ``(B, 2, G)`` (prediction and variance value) with
    ``learn_sigma``, else ``(B, G)``; it starts at exactly zero.

    Parameters
    ----------
    n_genes, cond_dim : int
        Number of genes (tokens) and width of the image embedding.
    hidden, depth, heads : int
        Transformer width, number of blocks and attention heads (``hidden % heads == 0``).
    mlp_ratio : float
    learn_sigma : bool
    """

    def __init__(self, n_genes: int, cond_dim: int, hidden: int = 64, depth: int = 3, heads: int = 4,
                 mlp_ratio: float = 4.0, learn_sigma: bool = True):
        super().__init__()
        if hidden % heads:
            raise ConfigError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        self.n_genes, self.cond_dim, self.learn_sigma = int(n_genes), int(cond_dim), bool(learn_sigma)
        self.gene_embed = nn.Parameter(torch.randn(n_genes, hidden) * 0.02)
        self.value_embed = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.t_embed = SinusoidalTimeEmbedding(out_dim=hidden, n_freq=128, scale=1.0)
        width = max(cond_dim, hidden)  # Stem: cond_dim (1536); wider for small embeddings
        self.c_embed = nn.Sequential(nn.Linear(cond_dim, width), nn.SiLU(), nn.Linear(width, hidden))
        self.blocks = nn.ModuleList(_AdaLNZeroBlock(hidden, heads, mlp_ratio) for _ in range(depth))
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), _zero_(nn.Linear(hidden, 2 * hidden)))
        self.out = _zero_(nn.Linear(hidden, 2 if learn_sigma else 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.gene_embed + self.value_embed(x[..., None])
        c = self.t_embed(t.to(h.dtype)) + self.c_embed(cond)
        for blk in self.blocks:
            h = blk(h, c)
        shift, scale = self.final_ada(c)[:, None].chunk(2, dim=-1)
        out = self.out(_modulate(self.final_norm(h), shift, scale))  # (B, G, C)
        return out.permute(0, 2, 1) if self.learn_sigma else out[..., 0]


class _Block(nn.Module):
    """Residual MLP block with adaLN-Zero conditioning (starts as the identity)."""

    def __init__(self, hidden: int, mlp_ratio: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        width = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, width), nn.SiLU(), nn.Linear(width, hidden))
        self.ada = nn.Sequential(nn.SiLU(), _zero_(nn.Linear(hidden, 3 * hidden)))

    def forward(self, h, c):
        shift, scale, gate = self.ada(c).chunk(3, dim=-1)
        return h + gate * self.mlp(_modulate(self.norm(h), shift, scale))


class ConditionalMLP(nn.Module):
    """Denoiser for flat vectors: residual MLP conditioned on step and label.

    Condition = sinusoidal embedding of the step index + a learned label embedding (index
    ``n_labels`` is the null label of classifier-free guidance). The prediction is the MLP's
    output plus a condition-dependent per-dimension gain times the input, so that the
    near-identity maps a denoiser needs (``eps ~ x_t`` at high noise) stay available when
    ``dim`` exceeds ``hidden``. Output ``(B, D)``, or ``(B, 2, D)`` with ``learn_sigma``; it
    starts at exactly zero.

    Parameters
    ----------
    dim : int
        Data dimension (genes, principal components or latent dimensions).
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
        self.final_ada = nn.Sequential(nn.SiLU(), _zero_(nn.Linear(hidden, 2 * hidden)))
        self.out = _zero_(nn.Linear(hidden, dim * (2 if learn_sigma else 1)))
        self.gain = _zero_(nn.Linear(hidden, dim))

    def forward(self, x, t, y):
        h = self.inp(x)
        c = self.t_embed(t.to(h.dtype)) + self.y_embed(y)
        for blk in self.blocks:
            h = blk(h, c)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        out = self.out(_modulate(self.final_norm(h), shift, scale))
        skip = self.gain(c) * x
        if self.learn_sigma:
            out = out.reshape(x.shape[0], 2, self.dim)
            return torch.stack([out[:, 0] + skip, out[:, 1]], dim=1)
        return out + skip


# ---------------------------------------------------------------------------- the sampler base
class DataDiffusionSampler(TrainableSampler):
    """A conditional diffusion model of data: ``model`` (the denoiser), its ``ema`` copy,
    ``opt`` (AdamW) and ``diffusion``, built by :meth:`_denoiser_parts` from the config's
    :class:`~boltzkit.nn.gaussian_diffusion.DiffusionOptions`; ``info`` holds what generation
    needs (names, normalisation, ``n_params``) and is saved with the model."""

    components = ("model", "ema", "opt")

    def __init__(self, config=None, /, **kw):
        super().__init__(config, **kw)
        self.model = None
        self.info: dict = {}

    def _denoiser_parts(self, model: nn.Module, *others: nn.Module) -> None:
        """Keep ``model`` on the device with its EMA copy, AdamW and the diffusion process;
        ``info["n_params"]`` counts the parameters of ``model`` and ``others``."""
        cfg = self.config
        self.model = model.to(self.device)
        self.ema = EMA(self.model, cfg.ema_decay)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.diffusion = GaussianDiffusion.from_schedule(cfg.schedule, cfg.n_timesteps,
                                                         parametrization=cfg.parametrization,
                                                         variance=cfg.variance)
        self.info["n_params"] = int(sum(p.numel() for m in (self.model, *others) for p in m.parameters()))

    def _denoiser_step(self, net, x0: torch.Tensor, cond) -> dict:
        """One optimizer step of the denoising loss of ``net(x_t, t, cond)`` on the batch ``x0``."""
        self.model.train()
        return optimize_denoiser(self.diffusion, lambda x, s: net(x, s, cond), x0, generator=self.gens["train"],
                                 optimizer=self.opt, model=self.model, ema=self.ema,
                                 grad_clip=self.config.grad_clip)

    def _draw(self, denoise, shape, clip=None) -> torch.Tensor:
        """Samples of the diffusion with the configured sampler and steps (``"sample"`` stream)."""
        cfg = self.config
        return self.diffusion.sample(denoise, shape, method=cfg.sampler, n_steps=cfg.sampling_steps,
                                     eta=cfg.ddim_eta, generator=self.gens["sample"], device=self.device,
                                     clip_x0=clip)

    def _data_result(self, samples, wall: float, diagnostics: dict, config: dict, what: str = "values",
                     **after) -> Result:
        """The Result of generated data: ``diagnostics`` then the keys every data model reports,
        then ``after``; the config with ``config`` added; the training data's config as target
        when the sampler has none (a loaded model). Non-finite samples (of ``what``) raise."""
        if not bool(torch.isfinite(samples).all()):
            raise ConfigError(f"sampling produced non-finite {what}; the model is not trained "
                              "enough or diverged (check result.history, lower lr)")
        cfg = self.config
        diag = {"log_z_unavailable": f"{self.name} is a conditional generative model of data: there is "
                                     "no energy and no normalizing constant to estimate",
                **diagnostics, "sampler": cfg.sampler, "sampling_steps": cfg.sampling_steps or cfg.n_timesteps,
                **self._train_diagnostics(), "sample_wall_time_s": float(wall),
                "n_params": int(self.info["n_params"]), "training_data": str(self.info.get("provenance", "")),
                **after}
        kw = self._result_kwargs()
        kw["target"] = kw["target"] or dict(self.info.get("train_target") or {})
        kw["config"] = {**self.config_dict(), **config}
        return Result(samples=samples, log_z=None, diagnostics=diag, **kw)

    def _extra_state(self) -> dict:
        self._require_model()
        return {"info": dict(self.info)}

    def _load_extra_state(self, state: dict) -> None:
        self.info = dict(state["info"])

    def save(self, path) -> None:
        """Write the trained model (networks, EMA, optimizers, normalisation, names); atomic."""
        self.save_checkpoint(path)  # (_extra_state raises first when there is no model)
