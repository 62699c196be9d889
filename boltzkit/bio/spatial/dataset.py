r"""Spatial transcriptomics data: spots with expression, coordinates and a tissue image.

:class:`SpatialDataset` is a boltzkit target of kind ``"dataset"`` on an
:class:`ExpressionDomain` (gene-expression vectors on the ``log2(1 + count)`` scale, Stem's
transform). It holds one or more slides: per spot its expression (optional for spots to
predict), its pixel coordinates ``(x, y)`` in its slide's image, the slide name, and optionally
precomputed image embeddings; per slide the RGB image. Patches of ``patch_size`` pixels are
cut around the spots on demand.

Readers:

* :meth:`SpatialDataset.from_anndata` -- the scanpy / squidpy / Visium convention (spot pixel
  coordinates in ``adata.obsm["spatial"]``, images and scale factors in ``adata.uns["spatial"]``);
* :meth:`SpatialDataset.from_hest` -- one HEST-1k sample (``st/<id>.h5ad`` + ``wsis/<id>.tif``).

Gene selection (:func:`select_genes`) follows Stem. :func:`~boltzkit.bio.spatial.io.result_to_anndata`
turns a Stem :class:`~boltzkit.result.Result` back into AnnData.

anndata, scanpy and image readers are imported only when used (extra ``boltzkit[bio]``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ...domains.base import Domain
from ...errors import DatasetError, require
from ..common import anndata_matrix, checked_gene_names, dense_rows

__all__ = ["ExpressionDomain", "SpatialDataset", "select_genes", "hex_grid", "cut_patches",
           "load_image", "SCALE"]

SCALE = "log2(1+x)"


class ExpressionDomain(Domain):
    """Expression vectors of the named genes on the ``log2(1 + count)`` scale (finite, >= 0)."""

    is_discrete = False

    def __init__(self, gene_names: Sequence[str]):
        self.gene_names = names = checked_gene_names(gene_names, "an expression domain")
        self.event_shape = (len(names),)
        self.dtype = torch.float32

    def reference(self, n, *, generator=None, device="cpu"):
        """|N(0, 1)| draws (a valid, uninformative point set on the domain)."""
        return torch.randn(n, *self.event_shape, generator=generator, device=device).abs()

    def contains(self, x):
        return (torch.isfinite(x) & (x >= 0)).all(dim=-1)

    def _range_hint(self):
        return f"expression must be finite and non-negative on the {SCALE} scale"

    def to_config(self):
        return {"type": "Expression", "n_genes": len(self.gene_names), "scale": SCALE,
                "gene_names": list(self.gene_names)}

    def __repr__(self):
        return f"ExpressionDomain({len(self.gene_names)} genes)"


# ---------------------------------------------------------------------------- helpers
def load_image(path) -> np.ndarray:
    """Read an RGB image file (PNG/JPEG/TIFF via Pillow or tifffile, ``.npy`` via numpy)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"no image file at {path}")
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            import tifffile

            return np.asarray(tifffile.imread(path))
        except ImportError:
            pass
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def _check_image(image, what: str = "image") -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        hint = ("drop the alpha channel with image[..., :3]" if img.ndim == 3 and img.shape[2] == 4
                else "convert it to RGB (height, width, 3)")
        raise DatasetError(f"{what} must be an RGB array of shape (height, width, 3), got shape "
                           f"{img.shape}; {hint}")
    if img.dtype == np.uint8:
        return img
    if np.issubdtype(img.dtype, np.floating):
        if not np.isfinite(img).all() or img.min() < 0 or img.max() > 1:
            raise DatasetError(f"a float {what} must hold values in [0, 1]; found "
                               f"[{np.nanmin(img):.3g}, {np.nanmax(img):.3g}]. Pass 8-bit images as uint8")
        return np.round(img * 255).astype(np.uint8)
    raise DatasetError(f"{what} has dtype {img.dtype}; pass uint8 (0..255) or float in [0, 1]")


def hex_grid(height: int, width: int, spacing: float, margin: float = 0.0) -> np.ndarray:
    """Centres ``(n, 2)`` as ``(x, y)`` of a hexagonal grid (Visium layout) inside an image."""
    dy = spacing * math.sqrt(3) / 2
    ys = np.arange(margin, height - margin, dy)
    pts = [(x, y) for i, y in enumerate(ys)
           for x in np.arange(margin + (spacing / 2 if i % 2 else 0.0), width - margin, spacing)]
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2)


def cut_patches(image: np.ndarray, coords: np.ndarray, size: int, fill: int = 255) -> np.ndarray:
    """Square ``size`` x ``size`` patches ``(n, 3, size, size)`` uint8 centred on ``(x, y)``.

    Parts of a patch that fall outside the image are filled with ``fill`` (white glass).
    """
    size = int(size)
    pad = size
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), constant_values=fill)
    x0 = np.floor(coords[:, 0] - size / 2 + 0.5).astype(np.int64) + pad
    y0 = np.floor(coords[:, 1] - size / 2 + 0.5).astype(np.int64) + pad
    off = np.arange(size)
    rows = (y0[:, None] + off)[:, :, None]
    cols = (x0[:, None] + off)[:, None, :]
    return np.ascontiguousarray(padded[rows, cols].transpose(0, 3, 1, 2))


_EXCLUDE = ("MT", "mt", "RPS", "RPL")


def select_genes(counts, gene_names: Sequence[str], n_genes: int = 200, *, slides=None,
                 n_top_hvg: int = 2000, exclude_prefixes=_EXCLUDE) -> np.ndarray:
    """Stem's gene selection; returns the kept column indices in their original order.

    With ``len(gene_names) <= n_genes`` every gene is kept. Otherwise: (1) when there are more
    than ``n_top_hvg`` genes, the union over slides of scanpy's highly variable genes
    (filter, ``normalize_total``, ``log1p``, ``highly_variable_genes(n_top_genes=n_top_hvg)``);
    (2) genes whose names start with ``exclude_prefixes`` are dropped; (3) on raw counts (NaN as
    0) the smallest ``k`` is found for which the top-``k`` genes by mean and the top-``k`` by
    standard deviation share at least ``n_genes`` genes; of those the ``n_genes`` with the
    highest mean are kept.
    """
    names = np.asarray([str(g) for g in gene_names])
    counts = np.nan_to_num(np.asarray(counts, dtype=np.float64))
    if counts.ndim != 2 or counts.shape[1] != names.size:
        raise DatasetError(f"counts has shape {counts.shape} for {names.size} gene names")
    if names.size <= n_genes:
        return np.arange(names.size)
    candidates = np.arange(names.size)
    if names.size > n_top_hvg:
        sc = require("scanpy", "bio")
        ad = require("anndata", "bio")
        slides = np.zeros(counts.shape[0], dtype=int) if slides is None else np.asarray(slides)
        hvg = np.zeros(names.size, dtype=bool)
        for s in np.unique(slides):
            a = ad.AnnData(counts[slides == s].astype(np.float32))
            a.var_names = names
            sc.pp.filter_cells(a, min_genes=1)
            sc.pp.filter_genes(a, min_cells=1)
            sc.pp.normalize_total(a)
            sc.pp.log1p(a)
            sc.pp.highly_variable_genes(a, n_top_genes=min(n_top_hvg, a.n_vars))
            hvg |= np.isin(names, a.var_names[a.var["highly_variable"].to_numpy()])
        candidates = np.flatnonzero(hvg)
    keep = np.array([not str(names[i]).startswith(tuple(exclude_prefixes)) for i in candidates], bool)
    candidates = candidates[keep]
    if candidates.size <= n_genes:
        return np.sort(candidates)
    sub = counts[:, candidates]
    by_mean = np.argsort(-sub.mean(0), kind="stable")
    by_std = np.argsort(-sub.std(0), kind="stable")
    rank_std = np.argsort(by_std)  # the inverse permutation: each gene's rank by std
    # the i-th gene by mean is in top_k(mean) & top_k(std) from k = max(i, its std rank) + 1 on,
    # so the first k >= n_genes where they share n_genes genes is the n_genes-th smallest such k
    first = np.maximum(np.arange(by_mean.size), rank_std[by_mean])
    k = max(n_genes, int(np.sort(first)[n_genes - 1]) + 1)
    common = by_mean[first < k]  # in order of mean
    return np.sort(candidates[common[:n_genes]])


# ---------------------------------------------------------------------------- the dataset
class SpatialDataset:
    """Spots of one or more tissue slides: expression, coordinates, images, embeddings.

    Parameters
    ----------
    expression : array (n_spots, n_genes), optional
        Expression on the ``log2(1 + count)`` scale (None for spots to predict).
    gene_names : sequence of str, optional
        Required with ``expression``.
    coords : array (n_spots, 2), optional
        Spot centres ``(x, y)`` in pixels of their slide's image (x = column, y = row).
    images : dict slide -> RGB array (H, W, 3), or one array, optional
        uint8, or float in [0, 1].
    slide : array (n_spots,) of str, optional
        Slide of each spot (default: one slide called ``name``).
    patch_size : int, optional
        Side in image pixels of the square patch cut around each spot.
    embeddings : array (n_spots, D), optional
        Precomputed image embeddings (e.g. UNI features from ``adata.obsm``).
    obs_names : sequence of str, optional
        Spot names (default ``"spot0"``, ...).
    name : str
    provenance : str
        Where the data come from; carried into results (e.g. "semi-synthetic: ...").
    """

    kind = "dataset"

    def __init__(self, *, expression=None, gene_names=None, coords=None, images=None, slide=None,
                 patch_size: "int | None" = None, embeddings=None, obs_names=None,
                 name: str = "spatial", provenance: str = "user data"):
        n = None
        for arr, what in ((expression, "expression"), (coords, "coords"), (embeddings, "embeddings"),
                          (obs_names, "obs_names")):
            if arr is not None:
                n = len(arr) if n is None else n
                if len(arr) != n:
                    raise DatasetError(f"{what} has {len(arr)} rows but the dataset has {n} spots")
        if not n:
            raise DatasetError("the dataset is empty (no spots); check the filtering of the input "
                               "(spots with all-zero expression are dropped)")
        self.name, self.provenance = str(name), str(provenance)
        self.obs_names = [f"spot{i}" for i in range(n)] if obs_names is None else [str(o) for o in obs_names]
        self.slide = (np.full(n, self.name, dtype=object) if slide is None
                      else np.asarray([str(s) for s in slide], dtype=object))
        if self.slide.shape != (n,):
            raise DatasetError(f"slide must have one entry per spot ({n}), got shape {self.slide.shape}")
        self.gene_names = None if gene_names is None else [str(g) for g in gene_names]
        self.expression = None
        if expression is not None:
            x = np.asarray(expression, dtype=np.float32)
            if self.gene_names is None:
                raise DatasetError("expression needs gene_names (one name per column)")
            if x.ndim != 2 or x.shape[1] != len(self.gene_names):
                raise DatasetError(f"expression has shape {x.shape} but there are "
                                   f"{len(self.gene_names)} gene names")
            if not np.isfinite(x).all() or (x < 0).any():
                raise DatasetError(f"expression must be finite and non-negative on the {SCALE} "
                                   "scale; found NaN/inf or negative values (scaled or centred data?). "
                                   "Pass raw counts with transform='log2'")
            self.expression = x
        self.domain = None if self.gene_names is None else ExpressionDomain(self.gene_names)
        self.coords = None if coords is None else np.asarray(coords, dtype=np.float64)
        if self.coords is not None and (self.coords.shape != (n, 2) or not np.isfinite(self.coords).all()):
            raise DatasetError(f"coords must be finite with shape ({n}, 2) as (x, y) pixels, "
                               f"got shape {self.coords.shape}")
        if images is not None and not isinstance(images, dict):
            slides = np.unique(self.slide)
            if slides.size != 1:
                raise DatasetError("with several slides pass images as a dict {slide: image}")
            images = {str(slides[0]): images}
        self.images = {} if images is None else {str(k): _check_image(v, f"image of slide {k!r}")
                                                 for k, v in images.items()}
        self.patch_size = None if patch_size is None else int(patch_size)
        if self.images:
            if self.coords is None:
                raise DatasetError("an image needs spot coordinates (coords=...) to cut patches")
            if self.patch_size is None or self.patch_size < 2:
                raise DatasetError(f"patch_size (pixels) must be an integer >= 2, got {patch_size!r}")
            missing = sorted(set(self.slide) - set(self.images))
            if missing:
                raise DatasetError(f"no image for slide(s) {missing[:5]}; pass images={{slide: array}}")
            for s, img in self.images.items():
                sel = self.slide == s
                c = self.coords[sel]
                out = (c[:, 0] < 0) | (c[:, 1] < 0) | (c[:, 0] >= img.shape[1]) | (c[:, 1] >= img.shape[0])
                if out.any():
                    first = np.asarray(self.obs_names, dtype=object)[sel][out][0]
                    raise DatasetError(
                        f"{int(out.sum())} of {int(sel.sum())} spots of slide {s!r} lie outside its "
                        f"{img.shape[1]}x{img.shape[0]} image (first: {first!r} at {tuple(c[out][0])}). "
                        "Coordinates must be (x, y) pixels of this image: check image_key / the "
                        "scale factor, or pass the full-resolution image with image=...")
        self.embeddings = None
        if embeddings is not None:
            e = np.asarray(embeddings, dtype=np.float32)
            if e.ndim != 2 or not np.isfinite(e).all():
                raise DatasetError(f"embeddings must be a finite (n_spots, dim) array, got shape {e.shape}")
            self.embeddings = e
        self.meta: dict = {}

    # ------------------------------------------------------------------ basics
    @property
    def n_spots(self) -> int:
        return len(self.obs_names)

    @property
    def n_genes(self) -> int:
        return 0 if self.gene_names is None else len(self.gene_names)

    def __len__(self):
        return self.n_spots

    @property
    def has_images(self) -> bool:
        return bool(self.images)

    def patches(self, idx=None) -> torch.Tensor:
        """uint8 patches ``(len(idx), 3, P, P)`` around spots ``idx`` (all by default)."""
        if not self.images:
            raise DatasetError(f"dataset {self.name!r} has no image to cut patches from; pass "
                               "images=... (or use precomputed embeddings with encoder='precomputed')")
        idx = np.arange(self.n_spots) if idx is None else np.asarray(idx)
        out = np.empty((idx.size, 3, self.patch_size, self.patch_size), dtype=np.uint8)
        slides = self.slide[idx]
        for s in np.unique(slides):
            sel = slides == s
            out[sel] = cut_patches(self.images[s], self.coords[idx[sel]], self.patch_size)
        return torch.from_numpy(out)

    def subset(self, idx, *, name: "str | None" = None) -> "SpatialDataset":
        """The spots ``idx`` (indices or a boolean mask) as a new dataset."""
        idx = np.arange(self.n_spots)[np.asarray(idx)]
        take = (lambda a: None if a is None else a[idx])
        slides = set(self.slide[idx])
        ds = SpatialDataset(expression=take(self.expression), gene_names=self.gene_names,
                            coords=take(self.coords),
                            images={s: im for s, im in self.images.items() if s in slides} or None,
                            slide=self.slide[idx], patch_size=self.patch_size,
                            embeddings=take(self.embeddings),
                            obs_names=[self.obs_names[i] for i in idx], name=name or self.name,
                            provenance=self.provenance)
        ds.meta = dict(self.meta)
        return ds

    @classmethod
    def concat(cls, datasets: "Sequence[SpatialDataset]", *, name: str = "spatial") -> "SpatialDataset":
        """Join slides (same genes, same patch size); slide names must be distinct."""
        datasets = list(datasets)
        if not datasets:
            raise DatasetError("concat needs at least one dataset")
        first = datasets[0]
        for d in datasets[1:]:
            if d.gene_names != first.gene_names:
                raise DatasetError(f"datasets {first.name!r} and {d.name!r} have different genes; "
                                   "select the same genes in both (genes=[...])")
            if d.patch_size != first.patch_size:
                raise DatasetError("datasets have different patch sizes; pass the same patch_size")
        images = {}
        for d in datasets:
            for s, im in d.images.items():
                if s in images:
                    raise DatasetError(f"slide name {s!r} appears in two datasets; rename one")
                images[s] = im
        cat = (lambda attr: None if any(getattr(d, attr) is None for d in datasets)
               else np.concatenate([getattr(d, attr) for d in datasets]))
        provenance = "; ".join(dict.fromkeys(d.provenance for d in datasets))
        return cls(expression=cat("expression"), gene_names=first.gene_names, coords=cat("coords"),
                   images=images or None, slide=np.concatenate([d.slide for d in datasets]),
                   patch_size=first.patch_size, embeddings=cat("embeddings"),
                   obs_names=[o for d in datasets for o in d.obs_names], name=name,
                   provenance=provenance)

    def to_config(self) -> dict:
        """JSON-able description (stored in ``Result.target``)."""
        return {"name": self.name, "kind": self.kind, "n_spots": self.n_spots,
                "slides": sorted(set(map(str, self.slide))), "patch_size": self.patch_size,
                "has_images": self.has_images,
                "embedding_dim": None if self.embeddings is None else int(self.embeddings.shape[1]),
                "provenance": self.provenance,
                "domain": None if self.domain is None else self.domain.to_config()}

    def __repr__(self):
        return (f"SpatialDataset({self.name!r}: {self.n_spots} spots, {self.n_genes} genes, "
                f"{len(set(self.slide))} slide(s), provenance={self.provenance!r})")

    # ------------------------------------------------------------------ readers
    @classmethod
    def from_anndata(cls, adata, layer: "str | None" = None, *, spatial_key: str = "spatial",
                     library_id: "str | None" = None, image=None, image_key: str = "hires",
                     image_scale: "float | None" = None, patch_size: "int | None" = None,
                     genes: "Sequence[str] | None" = None, n_genes: int = 200,
                     transform: "str | None" = "log2", embedding_key: "str | None" = None,
                     drop_empty: bool = True, name: "str | None" = None,
                     provenance: str = "user data") -> "SpatialDataset":
        """Read one slide stored the scanpy / Visium way.

        Parameters
        ----------
        adata : anndata.AnnData
            Spots x genes.
        layer : str, optional
            Layer holding the expression (default ``adata.X``).
        spatial_key : str
            ``adata.obsm`` key of the full-resolution spot pixel coordinates ``(x, y)``.
        library_id : str, optional
            Key in ``adata.uns["spatial"]``; needed only when there are several.
        image : array or path, optional
            The tissue image to cut patches from, overriding ``uns["spatial"]``. Its pixels are
            full-resolution ones unless ``image_scale`` says otherwise.
        image_key : str
            Which image of ``uns["spatial"][library_id]["images"]`` to use ("hires", "lowres").
            Its scale factor ``tissue_<image_key>_scalef`` maps full-resolution coordinates.
        image_scale : float, optional
            Image pixels per full-resolution pixel (overrides the stored scale factor).
        patch_size : int, optional
            Patch side in full-resolution pixels; default ``max(224, spot_diameter_fullres)``
            (Stem).
        genes : sequence of str, optional
            Use exactly these genes (all must be present). Default: :func:`select_genes`.
        n_genes : int
            Number of genes to select (all genes are kept when there are this many or fewer).
        transform : "log2" or None
            "log2": the matrix holds raw counts, apply ``log2(1 + x)``. None: it already is on
            that scale.
        embedding_key : str, optional
            ``adata.obsm`` key of precomputed image embeddings (then no image is required).
        drop_empty : bool
            Drop spots whose selected genes are all zero (Stem).
        """
        require("anndata", "bio")
        if adata.n_obs == 0 or adata.n_vars == 0:
            raise DatasetError(f"the AnnData is empty ({adata.n_obs} spots x {adata.n_vars} genes)")
        mat = anndata_matrix(adata, layer)
        var_names = [str(v) for v in adata.var_names]
        if genes is not None:
            genes = [str(g) for g in genes]
            pos = {g: i for i, g in enumerate(var_names)}
            missing = [g for g in genes if g not in pos]
            if missing:
                raise DatasetError(f"{len(missing)} requested gene(s) are absent from the data, e.g. "
                                   f"{missing[:5]}; check genes=... against adata.var_names")
            cols = np.array([pos[g] for g in genes])
            x = dense_rows(mat[:, cols])
        else:
            full = dense_rows(mat)
            cols = select_genes(full, var_names, n_genes)
            x = full[:, cols]
        x = np.nan_to_num(x)
        if transform == "log2":
            if (x < 0).any():
                raise DatasetError("transform='log2' needs raw counts but the matrix has negative "
                                   "values; pass the counts layer (layer=...) or transform=None")
            x = np.log2(1.0 + x)
        elif transform is not None:
            raise DatasetError(f"transform must be 'log2' or None, got {transform!r}")
        names = [var_names[i] for i in cols]

        emb = None
        if embedding_key is not None:
            if embedding_key not in adata.obsm:
                raise DatasetError(f"adata.obsm has no {embedding_key!r}; available: "
                                   f"{list(adata.obsm)}. Pass embedding_key=... naming the embeddings")
            emb = np.asarray(adata.obsm[embedding_key], dtype=np.float32)
        coords = None
        if spatial_key in adata.obsm:
            coords = np.asarray(adata.obsm[spatial_key], dtype=np.float64)[:, :2]
        elif emb is None or image is not None:
            raise DatasetError(f"adata.obsm has no {spatial_key!r} entry (spot pixel coordinates); "
                               f"available: {list(adata.obsm)}. Pass spatial_key=... naming the key")
        img, scale, spot_diam, lib = None, 1.0, None, library_id
        spatial = adata.uns.get("spatial")
        if spatial is not None and hasattr(spatial, "keys") and len(spatial) > 0:
            libs = list(spatial.keys())
            if lib is None:
                if len(libs) > 1:
                    raise DatasetError(f"adata.uns['spatial'] holds several libraries {libs}; "
                                       "pass library_id=... to choose one")
                lib = libs[0]
            elif lib not in spatial:
                raise DatasetError(f"library_id {lib!r} is not in adata.uns['spatial'] (has {libs})")
            sf = dict(spatial[lib].get("scalefactors", {}))
            spot_diam = sf.get("spot_diameter_fullres")
            if image is None and coords is not None and emb is None:
                imgs = spatial[lib].get("images", {})
                if image_key not in imgs:
                    raise DatasetError(f"adata.uns['spatial'][{lib!r}]['images'] has no {image_key!r} "
                                       f"(has {list(imgs)}); pass image_key=... or image=...")
                img = imgs[image_key]
                key = f"tissue_{image_key}_scalef"
                if image_scale is None and key not in sf:
                    raise DatasetError(f"adata.uns['spatial'][{lib!r}]['scalefactors'] has no {key!r}; "
                                       "pass image_scale=... (image pixels per full-resolution pixel)")
                scale = float(sf[key]) if image_scale is None else float(image_scale)
        elif image is None and emb is None:
            raise DatasetError("adata.uns has no 'spatial' entry with the tissue image; pass image=... "
                               "(an RGB array or an image path) or embedding_key=... (obsm embeddings)")
        if image is not None:
            img = load_image(image) if isinstance(image, (str, Path)) else image
            scale = 1.0 if image_scale is None else float(image_scale)
        psize = None
        if img is not None:
            if patch_size is None and spot_diam is None:
                raise DatasetError("cannot size the patches: no 'spot_diameter_fullres' scale factor; "
                                   "pass patch_size=... (full-resolution pixels)")
            full = max(224.0, float(spot_diam)) if patch_size is None else float(patch_size)
            psize = max(2, int(round(full * scale)))
        keep = x.sum(1) > 0 if drop_empty else np.ones(x.shape[0], dtype=bool)
        slide_name = str(lib) if lib is not None else (name or "slide")
        ds = cls(expression=x[keep], gene_names=names,
                 coords=None if coords is None else coords[keep] * scale,
                 images=None if img is None else {slide_name: img},
                 slide=np.full(int(keep.sum()), slide_name, dtype=object), patch_size=psize,
                 embeddings=None if emb is None else emb[keep], obs_names=np.asarray(adata.obs_names)[keep],
                 name=name or slide_name, provenance=provenance)
        ds.meta = {"n_dropped_empty": int((~keep).sum()), "image_scale": scale,
                   "library_id": None if lib is None else str(lib)}
        return ds

    @classmethod
    def from_hest(cls, root, sample_id: str, **kw) -> "SpatialDataset":
        """Read HEST-1k sample ``sample_id`` from ``root`` (``st/<id>.h5ad``, ``wsis/<id>.tif``).

        HEST stores spot pixel coordinates of the full-resolution WSI in ``obsm["spatial"]`` and
        the spot diameter in ``uns["spatial"]["ST"]["scalefactors"]``. Other keyword arguments
        go to :meth:`from_anndata`. HEST is a gated download; boltzkit ships none of it.
        """
        ad = require("anndata", "bio")
        root = Path(root)
        h5ad = root / "st" / f"{sample_id}.h5ad"
        if not h5ad.exists():
            raise DatasetError(f"no {h5ad}: a HEST sample needs st/{sample_id}.h5ad under {root}")
        wsi = kw.pop("image", None)
        if wsi is None:
            found = sorted((root / "wsis").glob(f"{sample_id}.*"))
            if not found:
                raise DatasetError(f"no image wsis/{sample_id}.* under {root}; pass image=...")
            wsi = found[0]
        adata = ad.read_h5ad(h5ad)
        kw.setdefault("name", sample_id)
        return cls.from_anndata(adata, image=wsi, **kw)
