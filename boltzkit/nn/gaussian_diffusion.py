r"""Discrete-time Gaussian diffusion (DDPM / IDDPM / DDIM), generic over network and condition.

Forward process over ``T`` steps with noise schedule ``beta_t``::

    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),      abar_t = prod_{s <= t} (1 - beta_s)

The network ``model(x_t, t)`` is any callable; conditioning is the caller's business (close
over it: ``lambda x, t: net(x, t, cond)``). ``t`` is a ``(B,)`` int64 tensor of indices into the
*original* schedule, also after respacing, so a network trained on the full process can be
sampled with fewer steps. The network predicts one of (``parametrization``):

* ``"eps"`` -- the noise ``eps`` (DDPM, Stem, scDiffusion);
* ``"x0"``  -- the clean data ``x_0``;
* ``"v"``   -- ``v = sqrt(abar) eps - sqrt(1 - abar) x_0`` (Salimans & Ho 2022).

Reverse variance (``variance``): ``"fixed_small"`` (posterior variance ``beta~_t``),
``"fixed_large"`` (``beta_t``) or ``"learned_range"`` (IDDPM, Nichol & Dhariwal 2021, arXiv
2102.09672): the network also outputs ``v_t in [-1, 1]`` and
``log sigma^2 = (v+1)/2 log beta_t + (1-v)/2 log beta~_t``. Output contract: ``(B, *event)``
for fixed variances, ``(B, 2, *event)`` for the learned one (channel 0 the prediction,
channel 1 ``v``).

Training loss (:meth:`GaussianDiffusion.training_losses`): the mean squared error of the
prediction, plus for learned variance the variational-bound term ``KL(q(x_{t-1}|x_t,x_0) ||
p(x_{t-1}|x_t))`` (Gaussian negative log-density of ``x_0`` at ``t = 0``) computed with a
stop-gradient on the mean -- the IDDPM / DiT "hybrid" loss. Both are averaged over the event
dimensions and reported in nats.

Samplers: ancestral (:meth:`~GaussianDiffusion.p_sample_loop`) and DDIM
(:meth:`~GaussianDiffusion.ddim_sample_loop`, Song et al. 2020, arXiv 2010.02502, ``eta = 0``
deterministic); either runs on a respaced process from :meth:`~GaussianDiffusion.respaced`.
All randomness is drawn from the ``generator`` passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .. import distributed as dist
from .._utils import check_choice, check_count, check_fraction, check_training_options
from ..errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class DiffusionOptions:
    """The options every conditional diffusion sampler shares (training of the denoiser, the
    forward process and the sampler); a method's Config inherits them and may change a default.

    Attributes
    ----------
    lr, weight_decay, grad_clip, ema_decay : AdamW training of the denoiser, EMA of its weights.
    n_timesteps, schedule, parametrization, variance : the diffusion (see :class:`GaussianDiffusion`).
    sampler, sampling_steps, ddim_eta : "ancestral" or "ddim" on respaced steps (None = all), DDIM noise.
    sample_batch_size : rows per sampling chunk.
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: "float | None" = 1.0
    ema_decay: float = 0.999
    n_timesteps: int = 1000
    schedule: str = "linear"
    parametrization: str = "eps"
    variance: str = "fixed_small"
    sampler: str = "ancestral"
    sampling_steps: "int | None" = 100
    ddim_eta: float = 0.0
    sample_batch_size: int = 4096

__all__ = ["GaussianDiffusion", "beta_schedule", "space_timesteps", "PARAMETRIZATIONS",
           "VARIANCES", "SCHEDULES"]

PARAMETRIZATIONS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large", "learned_range")
SCHEDULES = ("linear", "cosine")
SAMPLERS = ("ancestral", "ddim")


def optimize_denoiser(diffusion, denoise, x0: torch.Tensor, *, generator, optimizer, model, ema,
                      grad_clip: "float | None" = None) -> dict:
    """One optimizer step of the diffusion training loss for a conditional denoiser.

    ``denoise(x_t, t)`` closes over the condition. A non-finite loss skips the update (the
    shared training loop then reports the divergence). Returns the mean of each loss term.
    """
    t = diffusion.sample_timesteps(x0.shape[0], generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device)
    losses = diffusion.training_losses(denoise, x0, t, noise)
    loss = losses["loss"].mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # under torchrun every rank must take the same branch, or the gradient all-reduce hangs
    if dist.all_true(math.isfinite(float(loss.detach()))):
        if grad_clip is not None:
            dist.sync_gradients(optimizer)  # clip the rank-averaged gradient, as on one process
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        ema.update(model)
    return {k: float(v.detach().mean()) for k, v in losses.items()}


def check_diffusion_options(cfg) -> None:
    """Validate the diffusion fields shared by the dataset models' configs (Stem, single cell):
    the fields of :class:`DiffusionOptions`."""
    for name in ("n_timesteps", "sample_batch_size"):
        check_count(name, getattr(cfg, name))
    check_count("sampling_steps", cfg.sampling_steps, allow_none=True)
    if cfg.sampling_steps is not None and cfg.sampling_steps > cfg.n_timesteps:
        raise ConfigError(f"sampling_steps ({cfg.sampling_steps}) cannot exceed n_timesteps "
                          f"({cfg.n_timesteps})")
    check_training_options(cfg)
    for name, choices in (("schedule", SCHEDULES), ("parametrization", PARAMETRIZATIONS),
                          ("variance", VARIANCES), ("sampler", SAMPLERS)):
        check_choice(name, getattr(cfg, name), choices)
    if not cfg.ddim_eta >= 0:
        raise ConfigError(f"ddim_eta must be >= 0, got {cfg.ddim_eta!r}")


def check_guidance_options(cfg) -> None:
    """Validate classifier-free guidance: weight ``guidance >= 0`` and label dropout
    ``cond_dropout`` in [0, 1), which must be positive for any guidance (the unconditional model)."""
    if not (isinstance(cfg.guidance, (int, float)) and cfg.guidance >= 0):
        raise ConfigError(f"guidance must be a number >= 0, got {cfg.guidance!r}")
    check_fraction("cond_dropout", cfg.cond_dropout)
    if cfg.guidance > 0 and cfg.cond_dropout == 0:
        raise ConfigError("guidance > 0 needs an unconditional model: set cond_dropout > 0 (e.g. 0.1)")


Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def beta_schedule(name: str, n_timesteps: int) -> np.ndarray:
    """Noise schedule ``beta_1..beta_T`` as a float64 array.

    Parameters
    ----------
    name : "linear" or "cosine"
        ``"linear"``: DDPM's linear ramp from ``1e-4`` to ``0.02``, both scaled by
        ``1000 / T`` so any ``T`` has the same end points in continuous time (IDDPM).
        ``"cosine"``: ``abar(t) = cos^2((t/T + s) / (1 + s) * pi / 2)`` with ``s = 0.008``,
        betas capped at 0.999 (IDDPM).
    n_timesteps : int
        Number of diffusion steps ``T``.
    """
    check_count("n_timesteps", n_timesteps, minimum=2)
    if name == "linear":
        if n_timesteps < 20:
            raise ConfigError(f"the linear schedule needs n_timesteps >= 20 (its last beta is "
                              f"20 / n_timesteps), got {n_timesteps}; use 'cosine' for fewer steps")
        scale = 1000.0 / n_timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, n_timesteps, dtype=np.float64)
    if name == "cosine":
        s = 0.008
        grid = np.arange(n_timesteps + 1, dtype=np.float64) / n_timesteps
        abar = np.cos((grid + s) / (1 + s) * math.pi / 2) ** 2
        return np.minimum(1.0 - abar[1:] / abar[:-1], 0.999)
    raise ConfigError(f"unknown noise schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def space_timesteps(n_timesteps: int, n_steps: int) -> np.ndarray:
    """``n_steps`` evenly spaced step indices of a ``n_timesteps`` process, first and last kept."""
    if not isinstance(n_steps, (int, np.integer)) or not 1 <= n_steps <= n_timesteps:
        raise ConfigError(f"the number of sampling steps must be an integer in [1, {n_timesteps}], "
                          f"got {n_steps!r}")
    if n_steps == 1:
        return np.array([n_timesteps - 1])
    return np.unique(np.round(np.linspace(0, n_timesteps - 1, n_steps)).astype(np.int64))


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).mean(dim=1)


class GaussianDiffusion:
    """A discrete Gaussian diffusion process and its training loss and samplers.

    Parameters
    ----------
    betas : array (T,)
        Noise schedule (see :func:`beta_schedule`).
    parametrization : "eps", "x0" or "v"
        What the network predicts.
    variance : "fixed_small", "fixed_large" or "learned_range"
        Reverse-step variance.
    timestep_map : array (T,) of int, optional
        Original-schedule index of each step (set by :meth:`respaced`; identity otherwise).
    """

    def __init__(self, betas, *, parametrization: str = "eps", variance: str = "fixed_small",
                 timestep_map=None):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 1 or not np.all((betas > 0) & (betas <= 1)):
            raise ConfigError("betas must be a 1-D array of values in (0, 1]")
        check_choice("parametrization", parametrization, PARAMETRIZATIONS)
        check_choice("variance", variance, VARIANCES)
        self.parametrization, self.variance = parametrization, variance
        self.n_timesteps = int(betas.size)
        self.timestep_map = (np.arange(self.n_timesteps) if timestep_map is None
                             else np.asarray(timestep_map, dtype=np.int64))
        self.betas, self.log_betas = betas, np.log(betas)
        abar = np.cumprod(1.0 - betas)
        abar_prev = np.append(1.0, abar[:-1])
        self.alphas_cumprod, self.alphas_cumprod_prev = abar, abar_prev
        self.sqrt_abar, self.sqrt_1m_abar = np.sqrt(abar), np.sqrt(1.0 - abar)
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        # beta~_0 = 0: clip its log at beta~_1 (IDDPM); a 1-step process keeps beta_0
        post_var_1 = post_var[1] if post_var.size > 1 else betas[0]
        self.posterior_variance = post_var
        self.posterior_log_variance = np.log(np.append(post_var_1, post_var[1:]))
        # "fixed_large": beta_t, with beta~_1 at t = 0 (IDDPM) so the last step stays small
        self._large_log_variance = np.log(np.append(post_var_1, betas[1:]))
        self.posterior_coef_x0 = betas * np.sqrt(abar_prev) / (1.0 - abar)
        self.posterior_coef_xt = (1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar)
        self._cache: dict = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_schedule(cls, schedule: str = "linear", n_timesteps: int = 1000, **kw) -> "GaussianDiffusion":
        """Build from a named schedule (see :func:`beta_schedule`)."""
        return cls(beta_schedule(schedule, n_timesteps), **kw)

    def respaced(self, n_steps: "int | None") -> "GaussianDiffusion":
        """The same process on ``n_steps`` evenly spaced steps (IDDPM respacing).

        The kept steps have the same ``abar``; their betas are ``1 - abar_i / abar_{i-1}``.
        ``None`` or ``n_steps == T`` returns ``self``.
        """
        if n_steps is None or n_steps == self.n_timesteps:
            return self
        keep = space_timesteps(self.n_timesteps, n_steps)
        abar = self.alphas_cumprod[keep]
        betas = 1.0 - abar / np.append(1.0, abar[:-1])
        return type(self)(betas, parametrization=self.parametrization, variance=self.variance,
                          timestep_map=self.timestep_map[keep])

    def to_config(self) -> dict:
        return {"n_timesteps": self.n_timesteps, "parametrization": self.parametrization,
                "variance": self.variance}

    # ------------------------------------------------------------------ helpers
    def _table(self, name: str, device) -> torch.Tensor:
        """Schedule array ``name`` as a tensor on ``device`` (converted once per device)."""
        key = (name, device)
        if key not in self._cache:
            self._cache[key] = torch.as_tensor(getattr(self, name), device=device)
        return self._cache[key]

    def _coef(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Schedule array ``name`` at steps ``t``, shaped to broadcast against ``like``."""
        vals = self._table(name, like.device)[t].to(like.dtype)
        return vals.reshape(-1, *([1] * (like.ndim - 1)))

    def _model_t(self, t: torch.Tensor) -> torch.Tensor:
        return self._table("timestep_map", t.device)[t]

    def sample_timesteps(self, batch: int, *, generator=None, device="cpu") -> torch.Tensor:
        """Uniform step indices ``(batch,)`` for training."""
        return torch.randint(0, self.n_timesteps, (batch,), generator=generator, device=device)

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw ``x_t ~ q(x_t | x_0)`` with the given standard-normal ``noise``."""
        return self._coef("sqrt_abar", t, x0) * x0 + self._coef("sqrt_1m_abar", t, x0) * noise

    def q_posterior(self, x0, xt, t):
        """Mean, variance and log variance of ``q(x_{t-1} | x_t, x_0)``."""
        mean = self._coef("posterior_coef_x0", t, xt) * x0 + self._coef("posterior_coef_xt", t, xt) * xt
        return (mean, self._coef("posterior_variance", t, xt),
                self._coef("posterior_log_variance", t, xt))

    # ------------------------------------------------------------------ conversions
    def predict_x0_eps(self, pred: torch.Tensor, xt: torch.Tensor, t: torch.Tensor):
        """Both ``x_0`` and ``eps`` implied by a network prediction in this parametrization."""
        a = self._coef("sqrt_abar", t, xt)
        s = self._coef("sqrt_1m_abar", t, xt)
        if self.parametrization == "eps":
            eps = pred
            x0 = (xt - s * eps) / a
        elif self.parametrization == "x0":
            x0 = pred
            eps = (xt - a * x0) / s
        else:  # v
            x0 = a * xt - s * pred
            eps = s * xt + a * pred
        return x0, eps

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The regression target of the network in this parametrization."""
        if self.parametrization == "eps":
            return noise
        if self.parametrization == "x0":
            return x0
        return self._coef("sqrt_abar", t, x0) * noise - self._coef("sqrt_1m_abar", t, x0) * x0

    def _split_output(self, out: torch.Tensor, xt: torch.Tensor):
        learned = self.variance == "learned_range"
        want = (xt.shape[0], 2, *xt.shape[1:]) if learned else tuple(xt.shape)
        if tuple(out.shape) != want:
            raise ConfigError(f"the diffusion network returned shape {tuple(out.shape)}, expected "
                              f"{want} (variance={self.variance!r}: "
                              + ("prediction and variance value stacked on dim 1)" if learned
                                 else "one prediction per entry)"))
        return (out[:, 0], out[:, 1]) if learned else (out, None)

    def p_mean_variance(self, model: Model, xt: torch.Tensor, t: torch.Tensor, *,
                        clip_x0: "tuple[float, float] | None" = None, out: "torch.Tensor | None" = None):
        """Reverse-step Gaussian ``p(x_{t-1} | x_t)``: dict with mean, variance, log_variance,
        x0, eps and the raw variance value ``v`` (None for fixed variances).

        ``clip_x0 = (lo, hi)`` clamps the predicted ``x_0`` (bounds: numbers or tensors that
        broadcast against ``x_t``) before the posterior mean is formed."""
        if out is None:
            out = model(xt, self._model_t(t))
        pred, v = self._split_output(out, xt)
        # fixed variances stay (B, 1, ...) and broadcast against x_t
        if v is None:
            fixed = "_large_log_variance" if self.variance == "fixed_large" else "posterior_log_variance"
            logvar = self._coef(fixed, t, xt)
        else:
            frac = (v.clamp(-1.0, 1.0) + 1.0) / 2.0
            logvar = (frac * self._coef("log_betas", t, xt)
                      + (1.0 - frac) * self._coef("posterior_log_variance", t, xt))
        x0, eps = self.predict_x0_eps(pred, xt, t)
        if clip_x0 is not None:
            lo, hi = (torch.as_tensor(b, dtype=x0.dtype, device=x0.device) for b in clip_x0)
            x0 = torch.minimum(torch.maximum(x0, lo), hi)
            eps = (xt - self._coef("sqrt_abar", t, xt) * x0) / self._coef("sqrt_1m_abar", t, xt)
        mean, _, _ = self.q_posterior(x0, xt, t)
        return {"mean": mean, "variance": logvar.exp(), "log_variance": logvar, "x0": x0,
                "eps": eps, "v": v}

    # ------------------------------------------------------------------ training
    def training_losses(self, model: Model, x0: torch.Tensor, t: torch.Tensor,
                        noise: torch.Tensor) -> dict:
        """Per-example losses ``(B,)``: ``loss`` = ``mse`` (+ ``vb`` for learned variance, with
        the predicted mean detached: the hybrid loss of the module docstring), nats per entry."""
        xt = self.q_sample(x0, t, noise)
        out = model(xt, self._model_t(t))
        pred, v = self._split_output(out, xt)
        mse = _mean_flat((pred - self.target(x0, noise, t)) ** 2)
        if v is None:
            return {"mse": mse, "loss": mse}
        frozen = torch.stack([pred.detach(), v], dim=1)
        vb = self.vb_term(self.p_mean_variance(model, xt, t, out=frozen), x0, xt, t)
        return {"mse": mse, "vb": vb, "loss": mse + vb}

    def vb_term(self, p: dict, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One term of the variational bound, in nats per entry, from ``p_mean_variance``'s dict."""
        q_mean, _, q_logvar = self.q_posterior(x0, xt, t)
        kl = 0.5 * (p["log_variance"] - q_logvar + torch.exp(q_logvar - p["log_variance"])
                    + (q_mean - p["mean"]) ** 2 * torch.exp(-p["log_variance"]) - 1.0)
        nll = 0.5 * (math.log(2 * math.pi) + p["log_variance"]
                     + (x0 - p["mean"]) ** 2 * torch.exp(-p["log_variance"]))
        first = (t == 0).reshape(-1, *([1] * (xt.ndim - 1)))
        return _mean_flat(torch.where(first, nll, kl))

    # ------------------------------------------------------------------ sampling
    def _reverse(self, model: Model, shape, step, *, generator, device, noise, clip_x0, dtype):
        """From ``x_T ~ N(0, I)`` (or ``noise``) down to ``x_0``: ``x = step(i, p, x)`` at each step
        ``i = T-1, ..., 0``, with ``p`` the reverse-step dict of :meth:`p_mean_variance`."""
        x = (torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
             if noise is None else noise)
        for i in range(self.n_timesteps - 1, -1, -1):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            x = step(i, self.p_mean_variance(model, x, t, clip_x0=clip_x0), x)
        return x

    @torch.no_grad()
    def p_sample_loop(self, model: Model, shape, *, generator: "torch.Generator | None" = None,
                      device="cpu", noise: "torch.Tensor | None" = None,
                      clip_x0: "tuple[float, float] | None" = None, dtype=torch.float32) -> torch.Tensor:
        """Ancestral sampling from ``x_T ~ N(0, I)`` (or ``noise``) down to ``x_0``."""
        def step(i, p, x):
            if i == 0:
                return p["mean"]
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return p["mean"] + torch.exp(0.5 * p["log_variance"]) * z
        return self._reverse(model, shape, step, generator=generator, device=device, noise=noise,
                             clip_x0=clip_x0, dtype=dtype)

    @torch.no_grad()
    def ddim_sample_loop(self, model: Model, shape, *, eta: float = 0.0,
                         generator: "torch.Generator | None" = None, device="cpu",
                         noise: "torch.Tensor | None" = None,
                         clip_x0: "tuple[float, float] | None" = None, dtype=torch.float32) -> torch.Tensor:
        """DDIM sampling; ``eta = 0`` is deterministic, ``eta = 1`` matches ancestral variance."""
        if not 0.0 <= eta:
            raise ConfigError(f"ddim eta must be >= 0, got {eta!r}")

        def step(i, p, x):
            ab = float(self.alphas_cumprod[i])
            ab_prev = float(self.alphas_cumprod_prev[i])
            sigma = eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
            x = (math.sqrt(ab_prev) * p["x0"]
                 + math.sqrt(max(1.0 - ab_prev - sigma ** 2, 0.0)) * p["eps"])
            if i > 0 and sigma > 0:
                x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return x
        return self._reverse(model, shape, step, generator=generator, device=device, noise=noise,
                             clip_x0=clip_x0, dtype=dtype)

    def sample(self, model: Model, shape, *, method: str = "ancestral", n_steps: "int | None" = None,
               eta: float = 0.0, **kw) -> torch.Tensor:
        """Sample with ``method`` ("ancestral" or "ddim") on ``n_steps`` respaced steps."""
        check_choice("sampler", method, SAMPLERS)
        if method == "ddim":
            return self.respaced(n_steps).ddim_sample_loop(model, shape, eta=eta, **kw)
        return self.respaced(n_steps).p_sample_loop(model, shape, **kw)
