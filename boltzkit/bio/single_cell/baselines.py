r"""Baselines for cell-type-conditional single-cell generation (compare with ``"sc_diffusion"``).

* :class:`GaussianPCABaseline` -- per type a multivariate Gaussian on the top principal axes of
  the (log-scale) training cells, decoded to genes with an independent Gaussian residual per gene;
* :class:`NegativeBinomialBaseline` -- per type and gene an independent negative binomial on
  counts with a per-cell size factor (no gene-gene correlation);
* :class:`ConditionalVAEBaseline` -- a small conditional VAE with a negative-binomial decoder
  (scVI-like): sample ``z ~ N(0, I)``, decode with the label, draw NB counts.

Every baseline has ``fit(dataset)`` (a :class:`~boltzkit.bio.single_cell.dataset.CellDataset`) and
``generate(cells_per_label) -> (x, labels)`` with ``x`` in the dataset's representation. The
count models need counts: a counts dataset, or a log-normalised one with ``size_factors``
(counts are then rebuilt as ``round(expm1(x) * size_factor / 1e4)``, exact for
:func:`~boltzkit.bio.single_cell.io.pbmc68k`).
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
from torch import nn

from ...errors import ConfigError, DatasetError, TrainingDivergedError
from ..common import dense_rows
from .dataset import TARGET_SUM, CellDataset, PCABasis, log_normalize, row_sums
from .nb import nb_log_prob, sample_nb

__all__ = ["GaussianPCABaseline", "NegativeBinomialBaseline", "ConditionalVAEBaseline", "ScVIBaseline"]


def _check(ds):
    if not isinstance(ds, CellDataset):
        raise DatasetError(f"baselines fit a CellDataset, got {type(ds).__name__}; build one with "
                           "bk.datasets.as_target(adata, label_key=...)")


def _per_label(spec, categories) -> "tuple[np.ndarray, np.ndarray, np.ndarray]":
    """(cells per label, the label code of each cell to generate, grouped by label, the labels as
    names) for a request ``{label: n}`` or an array of one count per label."""
    if isinstance(spec, Mapping):
        unknown = [k for k in spec if k not in set(categories)]
        if unknown:
            raise ConfigError(f"unknown label(s) {unknown}; the labels are {list(categories)}")
        spec = [int(spec.get(c, 0)) for c in categories]
    n = np.asarray(spec, dtype=np.int64)
    if n.shape != (len(categories),):
        raise ConfigError(f"give cells per label as a dict or an array of {len(categories)} counts")
    codes = np.repeat(np.arange(len(categories)), n)
    return n, codes, np.asarray(categories, dtype=object)[codes]


def _bootstrap(ds: CellDataset, cells_per_label, rng) -> "tuple[np.ndarray, np.ndarray, np.ndarray]":
    """(label code of each cell to generate, grouped by label; a training cell of the same label
    drawn for each, whose library and size factor it takes; the labels as names)."""
    n, codes, labels = _per_label(cells_per_label, ds.categories)
    pick = np.concatenate([rng.choice(np.flatnonzero(ds.codes == c), k) for c, k in enumerate(n)]
                          ).astype(np.int64) if n.sum() else np.zeros(0, np.int64)
    return codes, pick, labels


def _counts_and_size(ds: CellDataset):
    """(counts (n, G), library of the modelled genes (n,), size factor used for normalisation (n,))."""
    if ds.representation == "counts":
        c = ds.x.astype(np.float64)  # stays sparse when the dataset is sparse
        lib = row_sums(c)
        return c, lib, (lib if ds.size_factors is None else ds.size_factors)
    if ds.size_factors is None:
        raise DatasetError("count baselines need counts: pass a counts dataset (layer='counts') or a "
                           "log-normalised one with size factors (obs['n_counts'])")
    c = np.round(np.expm1(ds.rows()) * ds.size_factors[:, None] / TARGET_SUM)
    return c, c.sum(1), ds.size_factors


def _to_representation(ds, counts, size):
    return counts if ds.representation == "counts" else log_normalize(counts, size)


class GaussianPCABaseline:
    """Per-type Gaussian on principal axes of the log-scale cells (``log1p(counts)`` for counts).

    Parameters
    ----------
    n_pcs : int
    shrinkage : float
        Covariance ``(1 - s) C + s diag(C)`` (stabilises small types).
    seed : int
    """

    name = "gaussian_pca"

    def __init__(self, n_pcs: int = 50, shrinkage: float = 0.1, seed: int = 0):
        self.n_pcs, self.shrinkage, self.seed = int(n_pcs), float(shrinkage), int(seed)

    def fit(self, ds: CellDataset) -> "GaussianPCABaseline":
        _check(ds)
        self.ds_info = (ds.categories, ds.representation)
        y = ds.log1p()
        self.basis = PCABasis(y, self.n_pcs)
        z = self.basis.transform(y)
        self.means, self.chols = [], []
        for c in range(len(ds.categories)):
            zc = z[ds.codes == c]
            cov = np.atleast_2d(np.cov(zc.T)) if zc.shape[0] > 1 else np.zeros((z.shape[1], z.shape[1]))
            cov = (1 - self.shrinkage) * cov + self.shrinkage * np.diag(np.diag(cov))
            w, v = np.linalg.eigh(cov)
            self.means.append(zc.mean(0))
            self.chols.append(v * np.sqrt(np.clip(w, 0, None)))
        return self

    def generate(self, cells_per_label) -> "tuple[np.ndarray, np.ndarray]":
        cats, rep = self.ds_info
        n, _, labels = _per_label(cells_per_label, cats)
        rng = np.random.default_rng(self.seed)
        z = np.concatenate([self.means[c] + rng.standard_normal((k, self.means[c].size)) @ self.chols[c].T
                            for c, k in enumerate(n)]) if n.sum() else np.zeros((0, self.basis.n_components))
        y = self.basis.inverse(z) + rng.standard_normal((z.shape[0], self.basis.mean.size)) * np.sqrt(
            self.basis.residual_variance)
        y = np.clip(y, 0, None)
        return (np.round(np.expm1(y)) if rep == "counts" else y), labels


class NegativeBinomialBaseline:
    """Per type and gene ``counts ~ NB(s * rho, theta)``, genes independent given the type.

    ``rho[t, g]`` is the maximum-likelihood rate per unit size factor, ``theta[t, g]`` a
    method-of-moments inverse dispersion (clipped to [1e-2, 1e4]); ``s`` is drawn with the
    cell's normalisation factor from the training cells of the type (bootstrap).
    """

    name = "negative_binomial"

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def fit(self, ds: CellDataset) -> "NegativeBinomialBaseline":
        _check(ds)
        self.ds = ds
        counts, _, self.size = _counts_and_size(ds)
        T = len(ds.categories)
        self.rho = np.zeros((T, ds.n_genes))
        self.theta = np.full((T, ds.n_genes), 1e4)
        for c in range(T):  # sums of x, s x and x^2 only: a sparse matrix stays sparse
            sel = np.flatnonzero(ds.codes == c)
            x, s = counts[sel], self.size[sel]
            sx = np.asarray(x.sum(0)).reshape(-1)
            rho = sx / s.sum()
            sx2 = np.asarray(x.multiply(x).sum(0) if hasattr(x, "multiply") else (x * x).sum(0)).reshape(-1)
            sxs = np.asarray(x.T @ s).reshape(-1)
            mu2 = (s ** 2).sum() * rho ** 2  # sum_i mu_ig^2
            excess = sx2 - 2 * rho * sxs + mu2 - s.sum() * rho  # sum_i (x - mu)^2 - mu
            with np.errstate(divide="ignore", invalid="ignore"):
                theta = np.where(excess > 0, mu2 / excess, 1e4)
            self.rho[c], self.theta[c] = rho, np.clip(theta, 1e-2, 1e4)
        return self

    def generate(self, cells_per_label) -> "tuple[np.ndarray, np.ndarray]":
        rng = np.random.default_rng(self.seed)
        codes, pick, labels = _bootstrap(self.ds, cells_per_label, rng)
        s = self.size[pick]
        mu = s[:, None] * self.rho[codes]
        theta = self.theta[codes]
        counts = rng.poisson(rng.gamma(theta, np.where(mu > 0, mu / theta, 0.0))).astype(np.float64)
        return _to_representation(self.ds, counts, s), labels


class _CVAE(nn.Module):
    def __init__(self, n_genes, n_labels, hidden, latent):
        super().__init__()
        self.n_labels = n_labels
        self.enc = nn.Sequential(nn.Linear(n_genes + n_labels, hidden), nn.LayerNorm(hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2 * latent))
        self.dec = nn.Sequential(nn.Linear(latent + n_labels, hidden), nn.LayerNorm(hidden), nn.SiLU(),
                                 nn.Linear(hidden, n_genes))
        self.log_theta = nn.Parameter(torch.zeros(n_genes))

    def decode(self, z, onehot):
        return torch.softmax(self.dec(torch.cat([z, onehot], -1)), -1)


class ConditionalVAEBaseline:
    """A small conditional VAE with a negative-binomial decoder (scVI-like sampling).

    Encoder ``q(z | log1p(counts), y)``, decoder ``rho(z, y)`` (softmax over genes); counts
    ``~ NB(l * rho, theta_g)`` with ``l`` the cell's library of the modelled genes. Trained on
    the ELBO (KL weight warmed up over the first third of the steps) with Adam. Generation:
    ``z ~ N(0, I)``, ``l`` and the normalisation factor bootstrapped from cells of the type.

    Parameters
    ----------
    latent, hidden : int
    n_steps, batch_size, lr : training
    seed : int
    device : str
    """

    name = "conditional_vae"

    def __init__(self, latent: int = 10, hidden: int = 128, n_steps: int = 2000, batch_size: int = 128,
                 lr: float = 1e-3, seed: int = 0, device: str = "cpu"):
        self.latent, self.hidden, self.n_steps = int(latent), int(hidden), int(n_steps)
        self.batch_size, self.lr, self.seed, self.device = int(batch_size), float(lr), int(seed), device

    def fit(self, ds: CellDataset) -> "ConditionalVAEBaseline":
        _check(ds)
        self.ds = ds
        counts, self.lib, self.size = _counts_and_size(ds)
        counts = dense_rows(counts)  # (small data: the VAE trains on the dense matrix)
        dev = torch.device(self.device)
        gen = torch.Generator(device=dev).manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = _CVAE(ds.n_genes, len(ds.categories), self.hidden, self.latent).to(dev)
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        x = torch.as_tensor(counts, dtype=torch.float32, device=dev)
        logx = torch.log1p(x)
        onehot = nn.functional.one_hot(torch.as_tensor(ds.codes, device=dev), len(ds.categories)).float()
        l = torch.as_tensor(self.lib, dtype=torch.float32, device=dev)
        self.history = []
        for step in range(self.n_steps):
            idx = torch.randint(0, x.shape[0], (self.batch_size,), generator=gen, device=dev)
            m, logv = self.net.enc(torch.cat([logx[idx], onehot[idx]], -1)).chunk(2, -1)
            logv = logv.clamp(-10, 10)
            z = m + torch.exp(0.5 * logv) * torch.randn(m.shape, generator=gen, device=dev)
            mu = l[idx, None] * self.net.decode(z, onehot[idx])
            rec = nb_log_prob(x[idx], mu, torch.exp(self.net.log_theta)).sum(-1)
            kl = 0.5 * (torch.exp(logv) + m ** 2 - 1 - logv).sum(-1)
            beta = min(1.0, (step + 1) / max(self.n_steps / 3, 1))
            loss = (-rec + beta * kl).mean()
            if not math.isfinite(float(loss.detach())):
                raise TrainingDivergedError(f"conditional VAE diverged at step {step}; lower lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.history.append(float(loss.detach()))
        return self

    @torch.no_grad()
    def generate(self, cells_per_label) -> "tuple[np.ndarray, np.ndarray]":
        dev = torch.device(self.device)
        gen = torch.Generator(device=dev).manual_seed(self.seed + 1)
        codes, pick, labels = _bootstrap(self.ds, cells_per_label, np.random.default_rng(self.seed))
        onehot = nn.functional.one_hot(torch.as_tensor(codes, device=dev), len(self.ds.categories)).float()
        z = torch.randn(codes.size, self.latent, generator=gen, device=dev)
        mu = torch.as_tensor(self.lib[pick], dtype=torch.float32, device=dev)[:, None] * self.net.decode(z, onehot)
        counts = sample_nb(mu, torch.exp(self.net.log_theta), gen).cpu().numpy().astype(np.float64)
        return _to_representation(self.ds, counts, self.size[pick]), labels


class ScVIBaseline:
    """scVI (scvi-tools) as a label-conditioned generator: the cell type is scVI's batch
    covariate (the decoder is conditioned on it); generation draws ``z ~ N(0, I)``, the log
    library from training cells of the type (bootstrap), and counts from the decoder's ZINB.

    Needs the optional ``scvi-tools`` package (``pip install scvi-tools``). Lopez et al.,
    "Deep generative modeling for single-cell transcriptomics", Nature Methods 15 (2018).

    Parameters
    ----------
    n_latent : int
    max_epochs : int
    seed : int
    """

    name = "scvi"

    def __init__(self, n_latent: int = 10, max_epochs: int = 200, seed: int = 0):
        self.n_latent, self.max_epochs, self.seed = int(n_latent), int(max_epochs), int(seed)

    def fit(self, ds: CellDataset) -> "ScVIBaseline":
        _check(ds)
        try:
            import scvi
        except ImportError as exc:  # optional: scvi-tools is not a boltzkit dependency
            from ...errors import MissingDependencyError

            raise MissingDependencyError("the scVI baseline needs scvi-tools: pip install scvi-tools") from exc
        import logging
        import warnings

        import anndata as ad
        import pandas as pd

        counts, lib, size = _counts_and_size(ds)
        self.ds, self.size, self.lib = ds, size, lib
        counts = dense_rows(counts)
        a = ad.AnnData(X=np.asarray(counts, dtype=np.float32))
        a.obs["label"] = pd.Categorical(np.asarray(ds.categories, dtype=object)[ds.codes],
                                        categories=list(ds.categories))
        threads = torch.get_num_threads()
        for logger in ("scvi", "lightning", "lightning.pytorch"):
            logging.getLogger(logger).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scvi.settings.seed = self.seed
            scvi.model.SCVI.setup_anndata(a, batch_key="label")
            self.model = scvi.model.SCVI(a, n_latent=self.n_latent)
            self.model.train(max_epochs=self.max_epochs, accelerator="cpu", devices=1,
                             enable_progress_bar=False, check_val_every_n_epoch=None, train_size=1.0)
        torch.set_num_threads(threads)
        return self

    @torch.no_grad()
    def generate(self, cells_per_label) -> "tuple[np.ndarray, np.ndarray]":
        gen = torch.Generator().manual_seed(self.seed + 1)
        codes, pick, labels = _bootstrap(self.ds, cells_per_label, np.random.default_rng(self.seed))
        module = self.model.module.eval()
        z = torch.randn(codes.size, self.n_latent, generator=gen)
        library = torch.log(torch.as_tensor(self.lib[pick], dtype=torch.float32))[:, None]
        batch = torch.as_tensor(codes, dtype=torch.long)[:, None]
        px = module.generative(z=z, library=library, batch_index=batch)["px"]
        torch.manual_seed(self.seed + 2)  # scvi's distributions draw from the global generator
        counts = px.sample().cpu().numpy().astype(np.float64)
        return _to_representation(self.ds, counts, self.size[pick]), labels
