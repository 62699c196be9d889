r"""Baselines for image-to-expression prediction, on the same embeddings as Stem.

* :class:`EmbeddingRegressor` -- an MLP trained with squared error from the (standardized)
  patch embedding to the expression vector: the stand-in for the regression models Stem is
  compared with (ST-Net, BLEEP, foundation-model feature regression). It returns one point
  per spot, the estimated conditional mean, and therefore no spread.
* :class:`NearestNeighbourRetrieval` -- the ``k`` training spots closest in embedding space;
  their expression profiles serve as ``k`` "samples" and their mean as the prediction.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .dataset import SpatialDataset
from ...errors import ConfigError, DatasetError
from .encoders import embed_dataset, make_encoder, standardization

__all__ = ["EmbeddingRegressor", "NearestNeighbourRetrieval"]


class _Embedder:
    """Encoder + standardization fitted on training spots."""

    def __init__(self, encoder):
        self.encoder = make_encoder(encoder)
        if getattr(self.encoder, "trainable", False):
            raise ConfigError("baselines use a fixed encoder ('stain', 'precomputed' or an object)")

    def fit(self, ds, transforms):
        emb = embed_dataset(self.encoder, ds, transforms=transforms)
        self.mean, self.std = standardization(emb)
        return (emb - self.mean) / self.std

    def __call__(self, ds):
        return (embed_dataset(self.encoder, ds)[0] - self.mean) / self.std


def _training_data(ds):
    if not isinstance(ds, SpatialDataset) or ds.expression is None:
        raise DatasetError("baselines train on a SpatialDataset with expression")
    return torch.as_tensor(ds.expression)


class EmbeddingRegressor:
    """MLP regressor ``embedding -> expression`` (mean squared error, AdamW, dihedral augmentation).

    Parameters
    ----------
    encoder : "stain", "precomputed" or an ImageEncoder
    hidden : width of the two hidden layers
    n_steps, batch_size, lr, weight_decay : training
    augment : train on the 8 dihedral transforms of each patch
    seed : int
    """

    def __init__(self, encoder="stain", *, hidden: int = 128, n_steps: int = 2000, batch_size: int = 64,
                 lr: float = 1e-3, weight_decay: float = 1e-4, augment: bool = True, seed: int = 0):
        self.embedder = _Embedder(encoder)
        self.hidden, self.n_steps, self.batch_size = int(hidden), int(n_steps), int(batch_size)
        self.lr, self.weight_decay, self.augment, self.seed = lr, weight_decay, augment, int(seed)
        self.net = None

    def fit(self, dataset: SpatialDataset) -> "EmbeddingRegressor":
        y = _training_data(dataset)
        emb = self.embedder.fit(dataset, tuple(range(8)) if self.augment else (0,))
        gen = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = nn.Sequential(nn.Linear(emb.shape[-1], self.hidden), nn.GELU(),
                                     nn.Linear(self.hidden, self.hidden), nn.GELU(),
                                     nn.Linear(self.hidden, y.shape[1]))
        with torch.no_grad():
            self.net[-1].bias.copy_(y.mean(0))
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.n_steps)
        self.history = []
        for _ in range(self.n_steps):
            idx = torch.randint(0, y.shape[0], (self.batch_size,), generator=gen)
            k = torch.randint(0, emb.shape[0], (self.batch_size,), generator=gen)
            loss = ((self.net(emb[k, idx]) - y[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            self.history.append(float(loss.detach()))
        return self

    @torch.no_grad()
    def predict(self, dataset: SpatialDataset) -> np.ndarray:
        """Point predictions ``(n, G)`` on the log2(1+x) scale."""
        if self.net is None:
            raise ConfigError("call fit(dataset) before predict")
        return self.net(self.embedder(dataset)).numpy()


class NearestNeighbourRetrieval:
    """Expression of the ``k`` training spots nearest in (standardized) embedding space."""

    def __init__(self, encoder="stain", *, k: int = 20):
        if int(k) < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        self.embedder, self.k = _Embedder(encoder), int(k)

    def fit(self, dataset: SpatialDataset) -> "NearestNeighbourRetrieval":
        self.y = _training_data(dataset)
        self.emb = self.embedder.fit(dataset, (0,))[0]
        return self

    @torch.no_grad()
    def sample(self, dataset: SpatialDataset) -> np.ndarray:
        """The neighbours' profiles ``(n, k, G)``."""
        q = self.embedder(dataset)
        idx = torch.cdist(q, self.emb).topk(min(self.k, self.emb.shape[0]), largest=False).indices
        return self.y[idx].numpy()

    def predict(self, dataset: SpatialDataset) -> np.ndarray:
        """Mean of the neighbours' profiles ``(n, G)``."""
        return self.sample(dataset).mean(1)
