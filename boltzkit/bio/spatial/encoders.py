r"""Image encoders: tissue patches ``(B, 3, H, W)`` to embeddings ``(B, D)``.

One small protocol, :class:`ImageEncoder`: an object with ``out_dim`` that maps a batch of
RGB patches to a float32 ``(B, out_dim)`` tensor. Patches arrive as ``uint8`` in ``[0, 255]``
or floats in ``[0, 1]`` (see :func:`as_float_patches`). Implementations:

* :class:`StainStatsEncoder` -- offline and parameter-free. RGB to optical density
  ``OD = -log((I + 1) / 256)``, unmixed with the fixed Ruifrok--Johnston hematoxylin / eosin /
  DAB stain matrix (Ruifrok & Johnston 2001); features are per-stain mean, standard deviation
  and quantiles, a coarse pooled grid of each stain, gradient (texture) energy and the nuclear
  pixel fraction.
* :class:`SmallCNNEncoder` -- a small convolutional network trained jointly with the model
  that uses it (``trainable = True``).
* :class:`CallableEncoder` -- wraps any user function, e.g. a locally installed pathology
  foundation model (UNI, CONCH): ``CallableEncoder(my_uni, out_dim=1024)``. No foundation
  model weights are downloaded or shipped.

Embeddings precomputed elsewhere can instead be stored in ``adata.obsm`` and read with
``SpatialDataset.from_anndata(..., embedding_key=...)``.

:func:`dihedral` applies one of the 8 flips/rotations of a square patch (Stem's augmentation)
and :func:`embed_patches` runs an encoder over a dataset in chunks (:func:`embed_dataset`: or
takes its precomputed embeddings; :func:`standardization`: their per-feature scale).
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError, DatasetError

__all__ = ["ImageEncoder", "StainStatsEncoder", "SmallCNNEncoder", "CallableEncoder",
           "RGB_FROM_HED", "as_float_patches", "optical_density", "stain_concentrations",
           "dihedral", "make_encoder", "embed_patches", "embed_dataset", "standardization"]

# Ruifrok & Johnston (2001) stain OD vectors (rows: hematoxylin, eosin, DAB), normalized to
# unit length; the unmixing is the inverse of this matrix.
_RAW = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
RGB_FROM_HED = _RAW / np.linalg.norm(_RAW, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)


@runtime_checkable
class ImageEncoder(Protocol):
    """Maps patches ``(B, 3, H, W)`` (uint8 or float in [0, 1]) to ``(B, out_dim)`` float32."""

    out_dim: int

    def __call__(self, patches: torch.Tensor) -> torch.Tensor:  # pragma: no cover - protocol
        ...


def as_float_patches(patches: torch.Tensor) -> torch.Tensor:
    """Check a patch batch and return it as float32 in ``[0, 1]``.

    Raises
    ------
    DatasetError
        Wrong shape (not ``(B, 3, H, W)``), dtype other than uint8/float, or float values
        outside ``[0, 1]``.
    """
    if not isinstance(patches, torch.Tensor):
        patches = torch.as_tensor(np.asarray(patches))
    if patches.ndim != 4 or patches.shape[1] != 3:
        raise DatasetError(f"patches must have shape (batch, 3, height, width) (RGB, channels first), "
                           f"got {tuple(patches.shape)}; convert grayscale/RGBA images to RGB first")
    if patches.dtype == torch.uint8:
        return patches.float() / 255.0
    if not patches.dtype.is_floating_point:
        raise DatasetError(f"patches must be uint8 in [0, 255] or float in [0, 1], got {patches.dtype}")
    lo, hi = float(patches.min()), float(patches.max())
    if lo < 0.0 or hi > 1.0:
        raise DatasetError(f"float patches must lie in [0, 1], found values in [{lo:.3g}, {hi:.3g}]; "
                           "divide 8-bit images by 255 or pass them as uint8")
    return patches.float()


def optical_density(patches: torch.Tensor) -> torch.Tensor:
    """Optical density ``-log((I + 1) / 256)`` per RGB channel, ``I`` on the 8-bit scale."""
    rgb = as_float_patches(patches) * 255.0
    return -torch.log((rgb + 1.0) / 256.0)


def stain_concentrations(patches: torch.Tensor) -> torch.Tensor:
    """Hematoxylin, eosin and DAB concentrations ``(B, 3, H, W)`` by Ruifrok--Johnston unmixing."""
    od = optical_density(patches)
    m = torch.as_tensor(HED_FROM_RGB, dtype=od.dtype, device=od.device)
    return torch.einsum("bchw,cs->bshw", od, m)


def dihedral(patches: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th (0..7) element of the dihedral group of the square: rotate by ``k % 4``
    quarter turns, then transpose-flip when ``k >= 4``. ``k = 0`` is the identity."""
    out = torch.rot90(patches, int(k) % 4, dims=(-2, -1))
    return out.flip(-1) if int(k) >= 4 else out


class StainStatsEncoder:
    """Stain-statistics features of a patch (no parameters, no downloads).

    Parameters
    ----------
    grid : int
        Side of the pooled grid of each stain channel (``grid**2 * 3`` features).
    quantiles : tuple of float
        Per-stain quantiles reported.
    nuclear_threshold : float
        Hematoxylin concentration above which a pixel counts as nuclear.

    Notes
    -----
    ``out_dim = 3 * (2 + len(quantiles) + grid**2 + 1) + 1``: mean, std, quantiles, pooled
    grid and gradient energy of each stain, plus the nuclear fraction. All but the grid are
    invariant under the dihedral transforms.
    """

    trainable = False

    def __init__(self, grid: int = 4, quantiles=(0.1, 0.25, 0.5, 0.75, 0.9),
                 nuclear_threshold: float = 0.5):
        if int(grid) < 1:
            raise ConfigError(f"grid must be a positive integer, got {grid!r}")
        self.grid = int(grid)
        self.quantiles = tuple(float(q) for q in quantiles)
        self.nuclear_threshold = float(nuclear_threshold)
        self.out_dim = 3 * (2 + len(self.quantiles) + self.grid ** 2 + 1) + 1

    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        c = stain_concentrations(patches)
        flat = c.flatten(2)
        q = torch.quantile(flat, torch.tensor(self.quantiles, device=c.device), dim=-1)  # (Q, B, 3)
        grid = F.adaptive_avg_pool2d(c, self.grid).flatten(1)
        gy, gx = c.diff(dim=-2), c.diff(dim=-1)
        texture = (gy ** 2).flatten(2).mean(-1) + (gx ** 2).flatten(2).mean(-1)
        nuclear = (c[:, 0] > self.nuclear_threshold).float().flatten(1).mean(-1, keepdim=True)
        feats = [flat.mean(-1), flat.std(-1), q.permute(1, 2, 0).flatten(1), grid, texture, nuclear]
        return torch.cat(feats, dim=1).float()

    def __repr__(self):
        return f"StainStatsEncoder(grid={self.grid})"


class SmallCNNEncoder(nn.Module):
    """Three stride-2 convolutions on RGB + optical density, global mean and max pooling, linear;
    trained jointly with the model that uses it (``trainable = True``)."""

    trainable = True

    def __init__(self, out_dim: int = 64, width: int = 32):
        super().__init__()
        self.out_dim = int(out_dim)
        w = int(width)
        self.convs = nn.Sequential(
            nn.Conv2d(6, w // 2, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(w // 2, w, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(w, w, 3, stride=2, padding=1), nn.GELU())
        self.head = nn.Linear(2 * w, self.out_dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        h = self.convs(torch.cat([as_float_patches(patches), optical_density(patches)], dim=1))
        return self.head(torch.cat([h.mean((-2, -1)), h.amax((-2, -1))], dim=1))


class CallableEncoder:
    """Wrap a user function ``fn(patches_float_0_1) -> (B, out_dim)`` as an encoder.

    ``fn`` receives float32 patches in ``[0, 1]``, shape ``(B, 3, H, W)``; resizing and the
    normalization a foundation model expects are its own business.
    """

    trainable = False

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], out_dim: int, name: "str | None" = None):
        if not callable(fn):
            raise ConfigError(f"encoder must be callable, got {type(fn).__name__}")
        self.fn, self.out_dim = fn, int(out_dim)
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, patches):
        with torch.no_grad():
            out = torch.as_tensor(self.fn(as_float_patches(patches)))
        if out.ndim != 2 or out.shape[0] != patches.shape[0] or out.shape[1] != self.out_dim:
            raise ConfigError(f"encoder {self.name!r} returned shape {tuple(out.shape)}; expected "
                              f"({patches.shape[0]}, {self.out_dim})")
        return out.float()

    def __repr__(self):
        return f"CallableEncoder({self.name}, out_dim={self.out_dim})"


def make_encoder(spec, *, cnn_dim: int = 64):
    """Encoder from a name ("stain", "cnn") or an object; ``None`` for "precomputed"."""
    named = {"stain": StainStatsEncoder, "cnn": lambda: SmallCNNEncoder(cnn_dim), "precomputed": lambda: None}
    if isinstance(spec, str) and spec in named:
        return named[spec]()
    if isinstance(spec, str):
        raise ConfigError(f"unknown encoder {spec!r}; use 'stain', 'cnn', 'precomputed' "
                          "(embeddings from adata.obsm) or an ImageEncoder object")
    if isinstance(spec, ImageEncoder):
        return spec
    if callable(spec):
        raise ConfigError("a plain function has no out_dim; wrap it as "
                          "boltzkit.bio.spatial.encoders.CallableEncoder(fn, out_dim=...)")
    raise ConfigError(f"encoder must be 'stain', 'cnn', 'precomputed' or an ImageEncoder, "
                      f"got {type(spec).__name__}")


def embed_dataset(encoder, dataset, *, transforms=(0,), device="cpu") -> torch.Tensor:
    """Embeddings ``(len(transforms), n, D)`` of a :class:`SpatialDataset`'s spots: ``encoder``
    on its patches, or its precomputed ``embeddings`` (one copy) when ``encoder`` is None."""
    if encoder is not None:
        return embed_patches(encoder, dataset.patches, dataset.n_spots, transforms=transforms, device=device)
    if dataset.embeddings is None:
        raise DatasetError(f"dataset {dataset.name!r} has no precomputed embeddings")
    return torch.as_tensor(dataset.embeddings, device=device)[None]


def standardization(emb: torch.Tensor) -> "tuple[torch.Tensor, torch.Tensor]":
    """Per-feature mean and standard deviation (at least 1e-6; 1 for a single row) of
    embeddings ``(..., D)``."""
    flat = emb.reshape(-1, emb.shape[-1])
    mean = flat.mean(0)
    return mean, flat.std(0).clamp_min(1e-6) if flat.shape[0] > 1 else torch.ones_like(mean)


@torch.no_grad()
def embed_patches(encoder, get_patches: Callable[[np.ndarray], torch.Tensor], n: int, *,
                  transforms=(0,), chunk: int = 256, device="cpu") -> torch.Tensor:
    """Embeddings ``(len(transforms), n, D)`` of ``n`` patches under dihedral ``transforms``.

    ``get_patches(idx)`` returns the uint8 patches of spots ``idx``.
    """
    chunks = np.split(np.arange(n), np.arange(chunk, n, chunk))
    return torch.stack([torch.cat([encoder(dihedral(get_patches(idx).to(device), k)).float()
                                   for idx in chunks]) for k in transforms])
