"""Time-conditioned vector fields ``net(t, x) -> (B, D)`` for continuous samplers.

* :class:`FourierMLP` -- for ``Reals(d)``: ``x`` through a linear embedding, added to a Fourier
  time embedding, then an MLP. Its output layer starts at zero, so a sampler built on it
  starts exactly at its reference process.
* :class:`EGNNLite` -- for :class:`~boltzkit.domains.ParticleCloud`: a small E(n)-equivariant
  graph network (Satorras et al. 2021, arXiv 2102.09844) on the fully connected graph.
  Its output is permutation equivariant, rotation/reflection equivariant, translation
  invariant and mean-free (zero centre of mass), and exactly zero at initialization.
* :func:`make_control_net` -- picks one of them for a domain.

Both take ``t`` as a float or a ``(B,)`` tensor and ``x`` flat, shape ``(B, D)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..domains import Reals
from ..domains.particles import ParticleCloud
from ..errors import ConfigError
from .time_embedding import FourierTimeEmbedding, _zero_

__all__ = ["FourierMLP", "EGNNLite", "make_control_net"]


class FourierMLP(nn.Module):
    """MLP control network for ``Reals(dim)``.

    Parameters
    ----------
    dim : int
        State dimension (input and output width).
    hidden : int
        Width of the hidden layers (64 in the Adjoint Sampling configs).
    n_layers : int
        Number of hidden layers after the embedding (4 in the configs).
    input_scale, output_scale : float
        The network sees ``x / input_scale`` and its raw output is multiplied by
        ``output_scale``; set them to the natural length scale and force scale of the target.
    zero_init : bool
        Initialize the output layer to zero (the sampler starts as its reference).
    """

    def __init__(self, dim: int, hidden: int = 64, n_layers: int = 4, *, input_scale: float = 1.0,
                 output_scale: float = 1.0, zero_init: bool = True, act: type = nn.GELU):
        super().__init__()
        self.dim = int(dim)
        self.input_scale, self.output_scale = float(input_scale), float(output_scale)
        self.time_embed = FourierTimeEmbedding(hidden, act=act)
        self.x_embed = nn.Linear(self.dim, hidden)
        hidden_layers = (m for _ in range(max(n_layers - 1, 0)) for m in (act(), nn.Linear(hidden, hidden)))
        self.body = nn.Sequential(*hidden_layers, act())
        self.out = nn.Linear(hidden, self.dim)
        if zero_init:
            _zero_(self.out)

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:
        h = self.x_embed(x / self.input_scale) + self.time_embed(t, x.shape[0])
        return self.output_scale * self.out(self.body(h))


class _EGNNLayer(nn.Module):
    def __init__(self, hidden: int, act: type, zero_init: bool):
        super().__init__()
        self.edge = nn.Sequential(nn.Linear(2 * hidden + 1, hidden), act(),
                                  nn.Linear(hidden, hidden), act())
        self.node = nn.Sequential(nn.Linear(2 * hidden, hidden), act(), nn.Linear(hidden, hidden))
        last = nn.Linear(hidden, 1)
        self.coord = nn.Sequential(nn.Linear(hidden, hidden), act(), _zero_(last) if zero_init else last)

    def forward(self, h, p, mask):
        # h (B, n, H) invariant features; p (B, n, d) positions; mask (n, n) off-diagonal
        n = p.shape[1]
        diff = p[:, :, None, :] - p[:, None, :, :]                     # (B, n, n, d)
        d2 = (diff * diff).sum(-1, keepdim=True)                       # (B, n, n, 1)
        hi = h[:, :, None, :].expand(-1, -1, n, -1)
        hj = h[:, None, :, :].expand(-1, n, -1, -1)
        m = self.edge(torch.cat([hi, hj, d2], dim=-1)) * mask         # (B, n, n, H)
        unit = diff / (torch.sqrt(d2 + 1e-8) + 1.0)                   # bounded direction
        p = p + (unit * self.coord(m) * mask).sum(2) / (n - 1)
        h = h + self.node(torch.cat([h, m.sum(2) / (n - 1)], dim=-1))
        return h, p


class EGNNLite(nn.Module):
    """E(n)-equivariant, permutation-equivariant, mean-free vector field on particle clouds.

    Node features start as an embedding of ``t`` (identical for all particles); edge inputs are
    the two node features and the squared distance. Each layer moves the particles along
    the pair directions; the output is ``output_scale * (p_final - p_initial)`` with its
    centre of mass removed.

    Parameters
    ----------
    n_particles, spatial_dim, hidden, n_layers : int
    input_scale, output_scale : float
        Positions are divided by ``input_scale`` on input; the displacement is multiplied
        by ``output_scale``.
    zero_init : bool
        Zero the last layer of every coordinate head, so the output starts at exactly 0.
    """

    def __init__(self, n_particles: int, spatial_dim: int, hidden: int = 64, n_layers: int = 3, *,
                 input_scale: float = 1.0, output_scale: float = 1.0, zero_init: bool = True,
                 act: type = nn.SiLU):
        super().__init__()
        self.n, self.d = int(n_particles), int(spatial_dim)
        self.input_scale, self.output_scale = float(input_scale), float(output_scale)
        self.time_embed = FourierTimeEmbedding(hidden, act=act)
        self.layers = nn.ModuleList(_EGNNLayer(hidden, act, zero_init) for _ in range(n_layers))
        self.register_buffer("mask", (1.0 - torch.eye(self.n))[None, :, :, None], persistent=False)

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        p0 = x.reshape(b, self.n, self.d) / self.input_scale
        h = self.time_embed(t, b)[:, None, :].expand(-1, self.n, -1)
        p = p0
        for layer in self.layers:
            h, p = layer(h, p, self.mask)
        v = p - p0
        v = v - v.mean(1, keepdim=True)
        return self.output_scale * v.reshape(b, self.n * self.d)


def make_control_net(domain, *, hidden: int = 64, n_layers: "int | None" = None,
                     input_scale: float = 1.0, output_scale: float = 1.0) -> nn.Module:
    """The default control network for ``domain``: :class:`FourierMLP` on ``Reals``,
    :class:`EGNNLite` on a mean-free :class:`ParticleCloud` (an MLP otherwise)."""
    if isinstance(domain, ParticleCloud) and domain.mean_free:
        return EGNNLite(domain.n_particles, domain.spatial_dim, hidden, n_layers or 3,
                        input_scale=input_scale, output_scale=output_scale)
    if isinstance(domain, (Reals, ParticleCloud)):
        return FourierMLP(domain.event_numel, hidden, n_layers or 4, input_scale=input_scale,
                          output_scale=output_scale)
    raise ConfigError(f"no continuous control network for domain {domain!r}; "
                      "use a Reals or ParticleCloud domain")
