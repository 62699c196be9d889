r"""Semi-synthetic spatial transcriptomics with a known image-to-expression law.

No installable package ships paired tissue images and spot expression, so boltzkit's
demonstration data are *semi-synthetic*: a real stained-tissue image (scikit-image's
``immunohistochemistry()``: human colon, DAB immunostain with hematoxylin counterstain, shipped
inside the scikit-image wheel) or a procedural one, spots on a hexagonal (Visium-like) grid, and
expression drawn from the documented law below. Results on these data say whether a method
recovers a *known* conditional law; they are not results on real H&E / spatial
transcriptomics data, and every dataset made here says so in its ``provenance``.

The law (:class:`TissueLaw`), for a spot ``s`` with image patch ``P(s)``:

1. Visible features ``f(s)`` from the patch by Ruifrok--Johnston stain unmixing: mean
   hematoxylin, mean DAB, nuclear-pixel fraction (hematoxylin > 0.5), hematoxylin gradient
   energy; standardized ``z = (f - center) / scale`` with constants fixed when the law is made.
2. A hidden state ``u(s) ~ Bernoulli(pi(s))``, ``pi = sigmoid(a0 + a1 z_hematoxylin)``,
   independent between spots given the patch. It is the part of expression the image does not
   determine: spots with ``pi`` away from 0 and 1 have a bimodal expression law.
3. Log-means ``eta_g = b_g + W_g . tanh(V z) + delta_g u`` with ``delta_g = delta`` on a gene
   module and 0 elsewhere; library size ``l ~ LogNormal(log L0, sigma_l)``.
4. Counts ``x_g ~ NegativeBinomial(mean l softmax(eta)_g, dispersion theta_g)``; the observed
   value is Stem's ``log2(1 + x_g)``.

Because ``p(x | patch)`` depends on the patch only through ``z(s)``, exact conditional
quantities (the conditional mean, the two mode centres of the module score, ``pi``) are
available by Monte Carlo from the law to any precision -- the oracle against which methods are
scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from .dataset import SpatialDataset, cut_patches, hex_grid
from ...errors import ConfigError, require
from .encoders import RGB_FROM_HED, stain_concentrations

__all__ = ["procedural_tissue", "ihc_tissue", "TissueLaw", "SemiSyntheticTissue", "make_tissue",
           "spot_features", "benchmark_split", "PROVENANCE"]

PROVENANCE = {
    "procedural": "fully synthetic: procedural tissue image and synthetic expression from a known "
                  "law (boltzkit.bio.spatial.synthetic)",
    "ihc": "semi-synthetic: real stained-tissue image (scikit-image immunohistochemistry(), human "
           "colon, DAB + hematoxylin), synthetic expression from a known law (boltzkit.bio.spatial.synthetic)",
}
FEATURES = ("hematoxylin_mean", "dab_mean", "nuclear_fraction", "hematoxylin_texture")


def _to_rgb(conc: np.ndarray, rng: np.random.Generator, pixel_noise: float = 3.0) -> np.ndarray:
    """Beer--Lambert rendering of stain concentrations (H, W, 3) to an 8-bit RGB image."""
    od = conc @ RGB_FROM_HED
    rgb = 256.0 * np.exp(-od) - 1.0 + rng.normal(0.0, pixel_noise, od.shape)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def procedural_tissue(size: int = 256, *, seed: int = 0, cell: float = 48.0):
    """A procedural H&E/DAB-like image with a known region map.

    Voronoi regions (mean side ``cell`` pixels) are stroma (0: eosin, sparse nuclei), epithelium
    (1: dense nuclei) or DAB-positive epithelium (2); nuclei are disks of hematoxylin; smooth
    stain-intensity variation and pixel noise are added.

    Returns
    -------
    image : uint8 (size, size, 3)
    regions : int (size, size)
    """
    size = int(size)
    if size < 16:
        raise ConfigError(f"size must be >= 16 pixels, got {size}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    pix = np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float64)
    n_seeds = max(4, int((size / cell) ** 2))
    seeds = rng.uniform(0, size, (n_seeds, 2))
    kinds = rng.choice(3, n_seeds, p=[0.45, 0.35, 0.20])
    kinds[:3] = [0, 1, 2]  # every region type appears
    regions = kinds[cKDTree(seeds).query(pix)[1]].reshape(size, size)
    density = np.array([0.10, 0.45, 0.40]) / 100.0  # nuclei per pixel by region
    n_nuc = rng.poisson(density[regions].sum())
    cand = rng.uniform(0, size, (6 * n_nuc + 16, 2))
    dens_at = density[regions[cand[:, 1].astype(int), cand[:, 0].astype(int)]]
    nuclei = cand[rng.uniform(0, 1, len(cand)) < dens_at / density.max()][:n_nuc]
    radius = rng.uniform(2.5, 4.0, len(nuclei))
    if len(nuclei):
        dist, which = cKDTree(nuclei).query(pix)
        in_nuc = (dist < radius[which]).reshape(size, size)
    else:
        in_nuc = np.zeros((size, size), dtype=bool)
    wobble = np.clip(1.0 + 1.5 * ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 6), 0.6, 1.4)
    conc = np.zeros((size, size, 3))
    conc[..., 0] = np.array([0.10, 0.25, 0.20])[regions] + 1.1 * in_nuc
    conc[..., 1] = np.array([0.70, 0.35, 0.30])[regions] * (1 - 0.6 * in_nuc)
    conc[..., 2] = np.array([0.0, 0.0, 0.55])[regions] * (1 - 0.5 * in_nuc)
    conc *= wobble[..., None]
    return _to_rgb(conc, rng), regions


def ihc_tissue(*, smoothing: float = 6.0):
    """scikit-image's IHC colon image (512 x 512) and a region map derived from it.

    The image is real; its region map is *defined* here from smoothed stain concentrations:
    2 = DAB-rich (smoothed DAB above its 70th percentile), 1 = hematoxylin-rich (smoothed
    hematoxylin above its 60th percentile), 0 = the rest.
    """
    data = require("skimage.data", "bio")
    image = np.asarray(data.immunohistochemistry())
    conc = stain_concentrations(torch.from_numpy(image).permute(2, 0, 1)[None])[0].numpy()
    h = ndimage.gaussian_filter(conc[0], smoothing)
    d = ndimage.gaussian_filter(conc[2], smoothing)
    regions = np.where(d > np.quantile(d, 0.7), 2, np.where(h > np.quantile(h, 0.6), 1, 0))
    return image, regions


def spot_features(patches: torch.Tensor) -> np.ndarray:
    """The law's visible features ``(n, 4)`` of uint8 patches ``(n, 3, P, P)``: see FEATURES."""
    c = stain_concentrations(patches)
    h, dab = c[:, 0], c[:, 2]
    tex = (h.diff(dim=-1) ** 2).flatten(1).mean(1) + (h.diff(dim=-2) ** 2).flatten(1).mean(1)
    f = torch.stack([h.flatten(1).mean(1), dab.flatten(1).mean(1),
                     (h > 0.5).float().flatten(1).mean(1), tex], dim=1)
    return f.double().numpy()


@dataclass
class TissueLaw:
    """The image-to-expression law (see the module docstring); parameters are public arrays."""

    center: np.ndarray
    scale: np.ndarray
    b: np.ndarray
    V: np.ndarray
    W: np.ndarray
    delta: np.ndarray
    theta: np.ndarray
    a0: float = 0.0
    a1: float = 1.5
    log_library: float = 8.0
    library_sigma: float = 0.2
    gene_names: list = field(default_factory=list)

    @classmethod
    def random(cls, features_ref: np.ndarray, *, n_genes: int = 32, n_module: "int | None" = None,
               delta: float = 2.0, seed: int = 0, hidden: int = 4, **kw) -> "TissueLaw":
        """Draw law parameters; features are standardized with ``features_ref``'s mean / std."""
        if n_genes < 2:
            raise ConfigError(f"n_genes must be >= 2, got {n_genes}")
        rng = np.random.default_rng(seed)
        n_module = max(1, n_genes // 4) if n_module is None else int(n_module)
        d = features_ref.shape[1]
        dvec = np.zeros(n_genes)
        dvec[:n_module] = delta
        return cls(center=features_ref.mean(0), scale=features_ref.std(0) + 1e-9,
                   b=rng.normal(0, 0.5, n_genes), V=rng.normal(0, 1 / np.sqrt(d), (hidden, d)),
                   W=rng.normal(0, 0.8, (n_genes, hidden)), delta=dvec,
                   theta=rng.uniform(4.0, 20.0, n_genes),
                   gene_names=[f"{'MOD' if g < n_module else 'GENE'}{g:02d}" for g in range(n_genes)],
                   **kw)

    @property
    def n_genes(self) -> int:
        return self.b.size

    @property
    def module(self) -> np.ndarray:
        """Boolean mask of the genes switched by the hidden state."""
        return self.delta != 0

    def z(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=np.float64) - self.center) / self.scale

    def pi(self, features: np.ndarray) -> np.ndarray:
        """P(u = 1 | patch) per spot."""
        return 1.0 / (1.0 + np.exp(-(self.a0 + self.a1 * self.z(features)[:, 0])))

    def sample(self, features: np.ndarray, k: int, rng: np.random.Generator, *, u=None):
        """``k`` draws per spot of ``log2(1 + x)``, shape ``(n, k, G)``, and the hidden states
        ``(n, k)``; ``u`` (0 or 1) fixes the hidden state."""
        z = self.z(features)
        n = z.shape[0]
        u = ((rng.uniform(size=(n, k)) < self.pi(features)[:, None]).astype(np.float64) if u is None
             else np.full((n, k), float(u)))
        eta = self.b + np.tanh(z @ self.V.T) @ self.W.T  # (n, G)
        eta = eta[:, None, :] + u[..., None] * self.delta  # (n, k, G)
        p = np.exp(eta - eta.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        lib = np.exp(self.log_library + self.library_sigma * rng.normal(size=(n, k, 1)))
        counts = rng.poisson(rng.gamma(self.theta, lib * p / self.theta))  # NB(lib p, theta), gamma-Poisson
        return np.log2(1.0 + counts), u

    def conditional_mean(self, features, *, m: int = 2000, seed: int = 0) -> np.ndarray:
        """E[log2(1 + x) | patch] ``(n, G)`` by Monte Carlo with ``m`` draws per spot."""
        x, _ = self.sample(features, m, np.random.default_rng(seed))
        return x.mean(1)

    def module_modes(self, features, *, m: int = 500, seed: int = 0) -> np.ndarray:
        """Centres ``(n, 2)`` of the module score (mean log2 expression of the module genes)
        given u = 0 and u = 1."""
        rng = np.random.default_rng(seed)
        return np.stack([self.sample(features, m, rng, u=u)[0][..., self.module].mean(-1).mean(1)
                         for u in (0, 1)], axis=1)

    def to_config(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}


@dataclass
class SemiSyntheticTissue:
    """A slide made by :func:`make_tissue`: the dataset plus the truth behind it."""

    dataset: SpatialDataset
    law: TissueLaw
    features: np.ndarray       # (n, 4) visible features of each spot's patch
    hidden: np.ndarray         # (n,) hidden state used for the observed expression
    regions: np.ndarray        # (n,) region label at each spot centre
    image: np.ndarray
    region_map: np.ndarray

    @property
    def pi(self) -> np.ndarray:
        return self.law.pi(self.features)

    def truth_samples(self, m: int, *, seed: int = 0) -> np.ndarray:
        """``m`` fresh draws per spot from the true conditional law, ``(n, m, G)``."""
        return self.law.sample(self.features, m, np.random.default_rng(seed))[0]

    def conditional_mean(self, *, m: int = 2000, seed: int = 0) -> np.ndarray:
        return self.law.conditional_mean(self.features, m=m, seed=seed)


def _layout(kind, *, size, spacing, patch_size, seed, x_range, name):
    """Image, region map, spot coordinates and visible features of one slide."""
    if kind == "procedural":
        image, region_map = procedural_tissue(size, seed=seed)
    elif kind == "ihc":
        image, region_map = ihc_tissue()
    else:
        raise ConfigError(f"kind must be 'procedural' or 'ihc', got {kind!r}")
    h, w = region_map.shape
    coords = hex_grid(h, w, spacing, margin=patch_size / 2)
    keep = (coords[:, 0] >= x_range[0] * w) & (coords[:, 0] < x_range[1] * w)
    coords = coords[keep]
    feats = spot_features(torch.from_numpy(cut_patches(image, coords, patch_size)))
    name = name or (f"procedural-{seed}" if kind == "procedural" else "ihc")
    return {"kind": kind, "image": image, "region_map": region_map, "coords": coords,
            "features": feats, "name": name, "patch_size": patch_size, "seed": seed}


def _finish(lay, law: TissueLaw) -> SemiSyntheticTissue:
    """Draw the slide's expression from ``law`` and wrap everything up."""
    rng = np.random.default_rng([lay["seed"], 7])
    x, u = law.sample(lay["features"], 1, rng)
    coords, name, image, region_map = lay["coords"], lay["name"], lay["image"], lay["region_map"]
    h, w = region_map.shape
    ds = SpatialDataset(expression=x[:, 0], gene_names=law.gene_names, coords=coords, images={name: image},
                        slide=np.full(len(coords), name, dtype=object), patch_size=lay["patch_size"],
                        obs_names=[f"{name}-{i}" for i in range(len(coords))], name=name,
                        provenance=PROVENANCE[lay["kind"]])
    reg = region_map[np.clip(coords[:, 1].astype(int), 0, h - 1), np.clip(coords[:, 0].astype(int), 0, w - 1)]
    return SemiSyntheticTissue(ds, law, lay["features"], u[:, 0], reg, image, region_map)


def make_tissue(kind: str = "procedural", *, size: int = 256, spacing: float = 16.0,
                patch_size: int = 32, n_genes: int = 32, seed: int = 0, law: "TissueLaw | None" = None,
                law_seed: int = 0, x_range=(0.0, 1.0), name: "str | None" = None,
                **law_kw) -> SemiSyntheticTissue:
    """One semi-synthetic (``"ihc"``) or fully synthetic (``"procedural"``) slide.

    Parameters
    ----------
    kind : "procedural" or "ihc" (needs scikit-image)
    size : side of the procedural image (the IHC image is 512).
    spacing, patch_size : hexagonal spot spacing and patch side, pixels.
    n_genes : genes of a new law (ignored when ``law`` is given).
    seed : image (procedural) and expression randomness.
    law : reuse a law (e.g. the training slide's) so slides share one truth; a new law
        standardizes features with this slide's mean and standard deviation.
    law_seed, **law_kw : parameters of a new law (:meth:`TissueLaw.random`).
    x_range : keep spots whose x lies in this fraction of the width (e.g. (0, 0.7)).
    """
    lay = _layout(kind, size=size, spacing=spacing, patch_size=patch_size, seed=seed,
                  x_range=x_range, name=name)
    if law is None:
        law = TissueLaw.random(lay["features"], n_genes=n_genes, seed=law_seed, **law_kw)
    return _finish(lay, law)


def benchmark_split(*, n_genes: int = 32, use_ihc: bool = True, size: int = 256, spacing: float = 16.0,
                    patch_size: int = 32, law_seed: int = 0, **law_kw):
    """Train / test slides mimicking leave-one-slide-out (brief section 4.3).

    Train: procedural slides with seeds 1 and 2 (+ the left 70% of the IHC image); test: the
    procedural slide with seed 3 (+ the right 30% of the IHC image). All share one law whose
    feature standardization comes from the pooled training spots.

    Returns
    -------
    train, test : lists of SemiSyntheticTissue
    """
    kw = dict(size=size, spacing=spacing, patch_size=patch_size)
    train = [_layout("procedural", seed=s, x_range=(0.0, 1.0), name=None, **kw) for s in (1, 2)]
    test = [_layout("procedural", seed=3, x_range=(0.0, 1.0), name=None, **kw)]
    if use_ihc:
        train.append(_layout("ihc", seed=4, x_range=(0.0, 0.7), name="ihc-left", **kw))
        test.append(_layout("ihc", seed=5, x_range=(0.7, 1.0), name="ihc-right", **kw))
    law = TissueLaw.random(np.concatenate([t["features"] for t in train]), n_genes=n_genes,
                           seed=law_seed, **law_kw)
    return [_finish(t, law) for t in train], [_finish(t, law) for t in test]
