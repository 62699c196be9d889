"""Generate PBMCs of chosen cell types from an AnnData, end to end.

DATA: real. scanpy's bundled ``pbmc68k_reduced`` (700 PBMCs from 10x Genomics' 68k data set,
765 genes, 10 ``bulk_labels``); :func:`boltzkit.bio.single_cell.io.pbmc68k` rebuilds its UMI
counts and puts log-normalised values in ``X``.

Steps: load PBMC -> stratified 60/20/20 split -> ``bk.sample`` trains the cell-type-conditional
diffusion (``sc_diffusion``) on the training cells and generates as many cells per type as the
test split holds -> ``result_to_anndata`` (AnnData with ``obs["bulk_labels"]``, same genes,
log-normalised like the input) -> real and generated cells on one UMAP coloured by type ->
the metrics table against the real-vs-real noise floor.

    python examples/single_cell.py --quick      # a few minutes on a CPU
    python examples/single_cell.py              # longer training
"""

from __future__ import annotations

import argparse
import warnings

import torch

import boltzkit as bk
from boltzkit.bio.single_cell import metrics as sc_metrics
from boltzkit.bio.single_cell import as_target, pbmc68k, result_to_anndata

ROWS = [("mmd2", "v"), ("mmd2_pvalue", "^"), ("sliced_w2", "v"), ("energy_distance", "v"),
        ("auc_knn", "0.5"), ("auc_logreg", "0.5"), ("label_accuracy", "^"), ("label_macro_f1", "^"),
        ("mean_pearson", "^"), ("var_pearson", "^"), ("marker_jaccard", "^"), ("corr_error", "v")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short training")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--space", default="genes", choices=["genes", "pca"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="single_cell_umap.png")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=FutureWarning)
    steps = args.steps or (600 if args.quick else 3000)

    # ---------------------------------------------------------------- data (real PBMCs)
    adata = pbmc68k()
    print(adata)
    ds = as_target(adata, label_key="bulk_labels")
    # train 60% (generator, PCA, classifier); test 20% (reference); floor 20% (held-out real cells)
    train, held = ds.split(0.4, seed=args.seed)
    test, floor = held.split(0.5, seed=args.seed)
    print(f"train {train.n_cells}, test {test.n_cells}, floor {floor.n_cells} cells; "
          f"test composition {test.label_counts()}")

    # ---------------------------------------------------------------- train and generate
    # bk.sample(adata, label_key="bulk_labels", ...) does the same on the whole AnnData
    res = bk.sample(train, n_samples=test.n_cells, n_steps=steps, seed=args.seed, device="auto",
                    condition=test.label_counts(), space=args.space)
    print(res.summary())
    gen = result_to_anndata(res)
    print(gen)

    # ---------------------------------------------------------------- one UMAP, real and generated
    import anndata
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    both = anndata.concat({"real": test.to_anndata(), "generated": gen}, label="source", index_unique="-")
    emb = sc_metrics.CellEmbedding(train.x, 50)
    both.obsm["X_pca"] = emb(both.X)
    sc.pp.neighbors(both, use_rep="X_pca", random_state=0)
    sc.tl.umap(both, random_state=0)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharex=True, sharey=True)
    for ax, src in zip(axes, ("real", "generated")):
        sc.pl.umap(both, color="bulk_labels", ax=ax, show=False, size=12,
                   legend_loc="none" if src == "real" else "right margin",
                   title=f"{src} cells", mask_obs=(both.obs["source"] == src).to_numpy())
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")

    # ---------------------------------------------------------------- metrics vs the noise floor
    torch.set_num_threads(1)
    out = sc_metrics.evaluate_with_floor(train.x, train.labels, test.x, test.labels, floor.x, floor.labels,
                                         gen.X, gen.obs["bulk_labels"].to_numpy(), train.gene_names,
                                         seed=args.seed, n_perm=100 if args.quick else 500)
    print(f"\n{'metric':18s} {'better':>6s} {'sc_diffusion':>13s} {'noise floor':>12s}")
    for k, better in ROWS:
        print(f"{k:18s} {better:>6s} {out['model'][k]:13.4f} {out['floor'][k]:12.4f}")
    print("(noise floor: other held-out real cells vs the same real test cells)")
    return res, out


if __name__ == "__main__":
    main()
