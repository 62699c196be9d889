"""Benchmark: cell-type-conditional single-cell generation against baselines and the noise floor.

Datasets
  * ``pbmc``: scanpy's pbmc68k_reduced (real: 700 10x PBMCs, 765 genes, 10 bulk_labels),
    log-normalised;
  * ``synthetic``: a per-type NB-mixture law with low-rank gene covariance
    (boltzkit.datasets.single_cell.SyntheticCellLaw; fully synthetic, exact log-probabilities),
    1500 exact draws, counts.
Each seed splits the cells (stratified by type) into train 60% / test 20% / floor 20%: models,
the PCA representation and the type classifier are fitted on train; generated cells (as many
per type as the test set has) and the floor cells are both compared with the test cells, so
both are out of sample. (A floor made of training cells is biased: the PCA fits their noise.)

Methods: ``sc_diffusion`` (gene space; and ``sc_diffusion_pca``), the baselines of
boltzkit.bio.sc_baselines (per-type Gaussian in PCA space, per-gene NB, conditional VAE) and
the real-vs-real noise floor. Every metric of boltzkit.bio.sc_metrics is computed against the
test cells, on the log-normalised scale, for >= 3 seeds (mean +- std). On the synthetic law the exact mean
log-likelihood ``log p(x | type)`` of the generated cells is reported next to that of exact draws.

Writes benchmarks/results/single_cell.json and single_cell_umap.png (PBMC, seed 0: real and
generated cells on one UMAP coloured by type).

    python benchmarks/single_cell.py                  # full (3 seeds, about an hour on 2 busy cores)
    python benchmarks/single_cell.py --quick          # smoke run (1 seed, few steps)
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from boltzkit.bio import sc_metrics
from boltzkit.bio.sc_baselines import (ConditionalVAEBaseline, GaussianPCABaseline,
                                       NegativeBinomialBaseline)
from boltzkit.datasets.single_cell import CellDataset, SyntheticCellLaw, log_normalize, pbmc68k
from boltzkit.samplers.single_cell import SCDiffusion

OUT = Path(__file__).parent / "results"
HIGHER_BETTER = {"mmd2_pvalue", "label_accuracy", "label_macro_f1", "mean_pearson", "mean_spearman",
                 "var_pearson", "var_spearman", "mean_pearson_all", "var_pearson_all", "marker_jaccard",
                 "true_loglik"}


def load(name, seed_law=0):
    if name == "pbmc":
        ad = pbmc68k()
        return CellDataset.from_anndata(ad, "bulk_labels", name="pbmc68k",
                                        provenance="real: 10x PBMC 68k reduced (700 cells)"), None
    law = SyntheticCellLaw.make(n_types=5, n_genes=100, n_states=3, rank=3, seed=seed_law)
    return law.dataset(1500, seed=1000 + seed_law), law


def lognorm(ds: CellDataset, x):
    return x if ds.representation == "log1p" else log_normalize(x)


def run_method(name, train, test_counts, seed, args):
    torch.set_num_threads(args.threads)  # scanpy / scikit-learn calls can reset torch's thread count
    t0 = time.perf_counter()
    if name.startswith("sc_diffusion"):
        kw = dict(n_steps=args.steps, sampling_steps=args.sampling_steps, guidance=args.guidance)
        if name == "sc_diffusion_pca":
            kw.update(space="pca")
        model = SCDiffusion(seed=seed, device=args.device, progress=False, **kw).fit(train)
        t1 = time.perf_counter()
        res = model.generate(condition=test_counts)
        x, labels = res.samples.numpy().astype(np.float64), np.asarray(res.config["labels"])
        extra = {"n_params": model.info["n_params"], "final_loss": float(np.mean(model.history["loss"][-100:]))}
    else:
        cls = {"gaussian_pca": GaussianPCABaseline, "negative_binomial": NegativeBinomialBaseline,
               "conditional_vae": ConditionalVAEBaseline}[name]
        kw = {"n_steps": args.vae_steps} if name == "conditional_vae" else {}
        model = cls(seed=seed, **kw).fit(train)
        t1 = time.perf_counter()
        x, labels = model.generate(test_counts)
        extra = {}
    t2 = time.perf_counter()
    return x, labels, {"train_s": t1 - t0, "sample_s": t2 - t1, **extra}


def evaluate(train, test, x, labels, law, seed, args):
    m = sc_metrics.evaluate(lognorm(train, train.x.astype(np.float64)), train.labels,
                            lognorm(test, test.x.astype(np.float64)), test.labels,
                            lognorm(train, x), labels, train.gene_names, seed=seed,
                            n_perm=args.n_perm, min_cells=args.min_cells,
                            embedding=sc_metrics.CellEmbedding(lognorm(train, train.x.astype(np.float64)), 50))
    if law is not None:
        codes = np.array([law.categories.index(str(l)) for l in labels])
        m["true_loglik"] = float(np.mean(law.log_prob(x, codes)))
    return m


def summarize(runs):
    keys = sorted({k for r in runs for k, v in r.items() if isinstance(v, (int, float))})
    return {k: {"mean": float(np.nanmean([r[k] for r in runs if k in r])),
                "std": float(np.nanstd([r[k] for r in runs if k in r]))} for k in keys}


def umap_figure(train, test, x, labels, path):
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    real = np.concatenate([train.x, test.x]).astype(np.float32)
    a = ad.AnnData(np.concatenate([real, x.astype(np.float32)]))
    a.obs["type"] = np.concatenate([train.labels, test.labels, labels]).astype(str)
    a.obs["source"] = ["real"] * real.shape[0] + ["generated"] * x.shape[0]
    emb = sc_metrics.CellEmbedding(train.x, 50)
    a.obsm["X_pca"] = emb(a.X)
    sc.pp.neighbors(a, use_rep="X_pca", random_state=0)
    sc.tl.umap(a, random_state=0)
    u = a.obsm["X_umap"]
    types = sorted(set(a.obs["type"]))
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharex=True, sharey=True)
    for ax, src in zip(axes, ("real", "generated")):
        for i, t in enumerate(types):
            sel = (a.obs["type"] == t).to_numpy()
            other = (a.obs["source"] != src).to_numpy()
            ax.scatter(u[sel & other, 0], u[sel & other, 1], s=4, color="0.85")
        for i, t in enumerate(types):
            sel = ((a.obs["type"] == t) & (a.obs["source"] == src)).to_numpy()
            ax.scatter(u[sel, 0], u[sel, 1], s=7, color=cmap(i % 10), label=t)
        ax.set_title(f"{src} cells (grey: the other set)")
        ax.set_xticks([]), ax.set_yticks([])
    axes[1].legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.suptitle("PBMC68k: real vs sc_diffusion cells on one UMAP (PCA fitted on real training cells)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--datasets", nargs="+", default=["pbmc", "synthetic"])
    ap.add_argument("--methods", nargs="+", default=["sc_diffusion", "sc_diffusion_pca", "gaussian_pca",
                                                     "negative_binomial", "conditional_vae"])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--sampling-steps", type=int, default=100)
    ap.add_argument("--guidance", type=float, default=0.0)
    ap.add_argument("--vae-steps", type=int, default=3000)
    ap.add_argument("--n-perm", type=int, default=200)
    ap.add_argument("--min-cells", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(OUT / "single_cell.json"))
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.steps, args.vae_steps, args.n_perm, args.sampling_steps = [0], 300, 300, 50, 50
    torch.set_num_threads(args.threads)
    out = {"env": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                   "torch": torch.__version__, "device": args.device},
           "args": vars(args), "datasets": {}}
    for dname in args.datasets:
        ds, law = load(dname)
        print(f"\n== {dname}: {ds}")
        per = {m: [] for m in ["floor", *args.methods]}
        for seed in args.seeds:
            # three disjoint real sets: train (generator, PCA, classifier), test (reference) and
            # floor (held-out real cells: the noise floor, out of sample like generated cells)
            train, held = ds.split(0.4, seed=seed)
            test, floor_set = held.split(0.5, seed=seed)
            test_counts = test.label_counts()
            floor = evaluate(train, test, floor_set.x.astype(np.float64), floor_set.labels, law, seed, args)
            if law is not None:  # exact draws: the likelihood a perfect model would reach
                xt, tt = law.sample([test_counts[c] for c in law.categories], seed=10_000 + seed)
                floor["true_loglik"] = float(np.mean(law.log_prob(xt, tt)))
            per["floor"].append(floor)
            for mname in args.methods:
                x, labels, timing = run_method(mname, train, test_counts, seed, args)
                met = evaluate(train, test, x, labels, law, seed, args)
                met.update(timing)
                per[mname].append(met)
                print(f"  seed {seed} {mname:18s} train {timing['train_s']:6.1f}s  mmd2 {met['mmd2']:.4f} "
                      f"(floor {floor['mmd2']:.4f})  auc_knn {met['auc_knn']:.3f} ({floor['auc_knn']:.3f})  "
                      f"label_acc {met['label_accuracy']:.3f} ({floor['label_accuracy']:.3f})", flush=True)
                if dname == "pbmc" and seed == args.seeds[0] and mname == "sc_diffusion":
                    umap_figure(train, test, x, labels, Path(args.out).with_name("single_cell_umap.png"))
        out["datasets"][dname] = {"description": str(ds), "provenance": ds.provenance,
                                  "runs": per, "summary": {m: summarize(r) for m, r in per.items()}}
        print_table(dname, out["datasets"][dname]["summary"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    print(f"\nwrote {args.out}")


def print_table(dname, summary):
    methods = list(summary)
    keys = ["mmd2", "mmd2_pvalue", "w2", "sliced_w2", "energy_distance", "auc_knn", "auc_logreg",
            "label_accuracy", "label_macro_f1", "mean_pearson", "var_pearson", "marker_jaccard",
            "corr_error", "true_loglik", "train_s", "sample_s"]
    print(f"\n{dname}: mean +- std over seeds (floor = held-out real cells vs the real test cells)")
    print(f"{'metric':18s}" + "".join(f"{m[:17]:>19s}" for m in methods))
    for k in keys:
        if not any(k in summary[m] for m in methods):
            continue
        arrow = "^" if k in HIGHER_BETTER else ("v" if k not in ("train_s", "sample_s") else " ")
        row = f"{k:16s} {arrow}"
        for m in methods:
            s = summary[m].get(k)
            row += f"{s['mean']:>11.4g} ±{s['std']:<6.2g}" if s else f"{'-':>19s}"
        print(row)


if __name__ == "__main__":
    main()
