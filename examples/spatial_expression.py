"""Spatial gene expression from tissue images with Stem, end to end.

DATA: semi-synthetic. No installable package ships paired tissue images and spot expression,
so this example uses scikit-image's real IHC colon image (when scikit-image is installed) or a
procedural H&E-like image, spots on a Visium-like hexagonal grid, and expression drawn from a
known image-to-expression law (``boltzkit.bio.spatial.synthetic``). It is a demonstration of the
workflow, not a result on real H&E / spatial transcriptomics data. With your own Visium or
HEST data, replace the data section by ``SpatialDataset.from_anndata(adata)`` or
``SpatialDataset.from_hest(root, sample_id)``.

Steps: build train / test slides -> (AnnData round trip in the scanpy/Visium layout) ->
``bk.sample(train, condition=test)`` trains Stem and draws several profiles per test spot ->
``result_to_anndata`` -> maps of true vs predicted expression over the test image.

    python examples/spatial_expression.py --quick      # about a minute on a CPU
    python examples/spatial_expression.py              # longer training, better maps
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import boltzkit as bk
from boltzkit.bio.spatial import metrics
from boltzkit.bio.spatial.synthetic import make_tissue
from boltzkit.datasets import SpatialDataset, result_to_anndata


def as_visium_anndata(tissue):
    """The slide as AnnData in the scanpy/Visium layout (counts in X, image in uns)."""
    import anndata

    d = tissue.dataset
    counts = np.round(2.0 ** d.expression - 1.0)
    a = anndata.AnnData(counts.astype(np.float32))
    a.obs_names, a.var_names = d.obs_names, d.gene_names
    a.obsm["spatial"] = d.coords  # full-resolution pixels = image pixels here
    a.uns["spatial"] = {d.name: {"images": {"hires": tissue.image},
                                 "scalefactors": {"tissue_hires_scalef": 1.0,
                                                  "spot_diameter_fullres": float(d.patch_size)}}}
    return a


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small tissue, short training")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="spatial_expression.png")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    steps = args.steps or (400 if args.quick else 3000)
    size = 128 if args.quick else 256

    # ---------------------------------------------------------------- data (semi-synthetic)
    try:
        import skimage  # noqa: F401
        kinds = ("procedural", "ihc")
    except ImportError:
        kinds = ("procedural",)
    train = make_tissue("procedural", seed=1, size=size, n_genes=16)
    law = train.law
    test = (make_tissue("ihc", seed=2, law=law, x_range=(0.7, 1.0), name="ihc-right")
            if "ihc" in kinds and not args.quick else make_tissue("procedural", seed=2, size=size, law=law))
    print(f"[{test.dataset.provenance}]")
    train_ds = train.dataset
    try:
        adata = as_visium_anndata(train)
        train_ds = SpatialDataset.from_anndata(adata, patch_size=train.dataset.patch_size,
                                               provenance=train.dataset.provenance)
        print(f"read back from AnnData (Visium layout): {train_ds}")
    except ImportError:
        print("anndata not installed: skipping the AnnData round trip (pip install 'boltzkit[bio]')")

    # ---------------------------------------------------------------- Stem
    res = bk.sample(train_ds, condition=test.dataset, n_samples=8 if args.quick else 20,
                    n_steps=steps, seed=args.seed, device="auto",
                    sampling_steps=20 if args.quick else 50)
    print(res.summary())
    samples = res.samples.numpy()
    mean = samples.mean(1)
    oracle = test.conditional_mean(m=1000)
    print("Stem mean vs observed:", {k: round(v, 3) for k, v in
                                     metrics.point_metrics(mean, test.dataset.expression, ks=(10,)).items()})
    print("oracle E[x|patch] vs observed:", {k: round(v, 3) for k, v in
                                              metrics.point_metrics(oracle, test.dataset.expression, ks=(10,)).items()})
    try:
        ad = result_to_anndata(res)
        print(f"as AnnData: {ad.n_obs} spots x {ad.n_vars} genes, layers {sorted(ad.layers)[:4]}...")
    except ImportError:
        pass

    # ---------------------------------------------------------------- maps
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    genes = [0, int(np.argmax(~law.module))]
    cols = [("observed", test.dataset.expression), ("oracle E[x|patch]", oracle), ("Stem mean", mean),
            ("Stem one draw", samples[:, 0])]
    fig, axes = plt.subplots(len(genes), len(cols), figsize=(3.2 * len(cols), 3.2 * len(genes)))
    for r, g in enumerate(genes):
        vmin, vmax = np.quantile(test.dataset.expression[:, g], [0.02, 0.98])
        for c, (title, arr) in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(test.image)
            ax.scatter(*test.dataset.coords.T, c=arr[:, g], s=12, cmap="viridis", vmin=vmin, vmax=vmax)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{title}: {law.gene_names[g]}", fontsize=9)
    fig.suptitle(f"{test.dataset.provenance}", fontsize=8)
    fig.tight_layout()
    out = Path(args.out)
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
