"""Embeddings of a scalar time ``t`` (usually in [0, 1]) for time-conditioned networks.

* :class:`FourierTimeEmbedding` -- ``[sin(k t + phi), cos(k t + phi)]`` with fixed frequencies
  ``k`` spaced linearly in ``[min_freq, max_freq]`` and a learned phase ``phi`` (the
  FourierMLP embedding of the PIS / Adjoint Sampling lineage), then a small MLP.
* :class:`SinusoidalTimeEmbedding` -- the fixed transformer / DDPM embedding with
  geometrically spaced frequencies, then an optional MLP.
* :class:`TimeFiLM` -- a sinusoidal embedding plus zero-initialized per-block injections and
  a FiLM shift/scale, the time-conditioning hook of the shared discrete site networks.

The embeddings accept ``t`` as a Python float, a 0-d tensor, or a tensor of shape ``(B,)`` / ``(B, 1)``,
and return ``(B, out_dim)`` (``B = 1`` for a scalar unless ``batch`` is given).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["FourierTimeEmbedding", "SinusoidalTimeEmbedding", "TimeFiLM", "as_time_column"]


def _zero_(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def as_time_column(t, batch: "int | None" = None, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalize ``t`` to a ``(B, 1)`` tensor; a scalar is broadcast to ``batch`` rows."""
    t = torch.as_tensor(t, device=device, dtype=dtype)
    if t.ndim == 0:
        t = t.reshape(1, 1)
    elif t.ndim == 1:
        t = t[:, None]
    elif t.ndim != 2 or t.shape[1] != 1:
        raise ValueError(f"time must be a scalar, (B,) or (B, 1) tensor, got shape {tuple(t.shape)}")
    if batch is not None and t.shape[0] == 1 and batch != 1:
        t = t.expand(batch, 1)
    return t


def _mlp(in_dim: int, out_dim: int, act: type) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, out_dim), act(), nn.Linear(out_dim, out_dim))


class FourierTimeEmbedding(nn.Module):
    """Fixed-frequency Fourier features with a learned phase, followed by a 2-layer MLP.

    Parameters
    ----------
    out_dim : int
        Output width.
    n_freq : int
        Number of frequencies (the raw feature has ``2 * n_freq`` entries).
    min_freq, max_freq : float
        Frequencies are ``linspace(min_freq, max_freq, n_freq)``.
    act : activation class used in the MLP.
    """

    def __init__(self, out_dim: int = 64, n_freq: int = 64, min_freq: float = 0.1,
                 max_freq: float = 100.0, act: type = nn.GELU):
        super().__init__()
        self.register_buffer("freq", torch.linspace(min_freq, max_freq, n_freq)[None])
        self.phase = nn.Parameter(torch.randn(1, n_freq))
        self.mlp = _mlp(2 * n_freq, out_dim, act)
        self.out_dim = out_dim

    def forward(self, t, batch: "int | None" = None) -> torch.Tensor:
        t = as_time_column(t, batch, device=self.freq.device, dtype=self.freq.dtype)
        arg = self.freq * t + self.phase
        return self.mlp(torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1))


class SinusoidalTimeEmbedding(nn.Module):
    """Fixed ``[sin(w_i s t), cos(w_i s t)]`` features with ``w_i = max_period^(-i / n_freq)``.

    Parameters
    ----------
    out_dim : int or None
        Width of the MLP applied to the features; None returns the raw ``2 * n_freq`` features.
    n_freq : int
    scale : float
        ``s``, multiplies ``t`` first (1000 makes ``t`` in [0, 1] look like DDPM step indices).
    max_period : float
    """

    def __init__(self, out_dim: "int | None" = 64, n_freq: int = 32, scale: float = 1000.0,
                 max_period: float = 10_000.0, act: type = nn.SiLU):
        super().__init__()
        w = torch.exp(-math.log(max_period) * torch.arange(n_freq, dtype=torch.float32) / n_freq)
        self.register_buffer("freq", (scale * w)[None])
        self.mlp = None if out_dim is None else _mlp(2 * n_freq, out_dim, act)
        self.out_dim = 2 * n_freq if out_dim is None else out_dim

    def forward(self, t, batch: "int | None" = None) -> torch.Tensor:
        t = as_time_column(t, batch, device=self.freq.device, dtype=self.freq.dtype)
        arg = self.freq * t
        emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)
        return emb if self.mlp is None else self.mlp(emb)


class TimeFiLM(nn.Module):
    """Time conditioning for a residual network of ``n_blocks`` blocks of width ``hidden``.

    One call returns everything a backbone needs to become time-dependent:

    * ``embedding`` (B, hidden): :class:`SinusoidalTimeEmbedding` of ``t`` (scaled by
      ``scale``), to be added to the input features;
    * ``injections``: ``n_blocks`` tensors (B, hidden), added to the residual stream before
      each block;
    * ``shift``, ``scale`` (B, hidden): a FiLM / adaLN-style modulation
      ``h * (1 + scale) + shift`` of the features before the output head.

    The injection and FiLM projections are zero-initialized, so at initialization only the
    embedding added to the input depends on ``t``.

    Parameters
    ----------
    hidden : int
        Feature width of the backbone.
    n_blocks : int
        Number of residual blocks that receive an injection.
    scale : float
        Multiplies ``t`` before the sinusoidal features (:class:`SinusoidalTimeEmbedding`).
    """

    def __init__(self, hidden: int, n_blocks: int, *, scale: float = 1000.0):
        super().__init__()
        self.embed = SinusoidalTimeEmbedding(out_dim=hidden, n_freq=max(hidden // 2, 8), scale=scale)
        self.inject = _zero_(nn.Linear(hidden, hidden * n_blocks))
        self.film = _zero_(nn.Linear(hidden, 2 * hidden))
        self.n_blocks = int(n_blocks)

    def forward(self, t, batch: "int | None" = None):
        """Returns ``(embedding, injections, shift, scale)`` for times ``t`` (see the class)."""
        c = self.embed(t, batch)
        act = nn.functional.silu(c)
        injections = self.inject(act).chunk(self.n_blocks, dim=-1)
        shift, scale = self.film(act).chunk(2, dim=-1)
        return c, injections, shift, scale
