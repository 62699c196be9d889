"""Benchmark: cell-type-conditional single-cell generation against baselines and the noise floor.

Data: scanpy's pbmc68k_reduced (real: 700 10x PBMCs, 765 genes, 10 bulk_labels), integer UMI
counts rebuilt exactly from its raw log-normalised values (boltzkit.datasets.single_cell.pbmc68k;
the file has no counts layer in scanpy <= 1.12), kept sparse.

Protocol, per seed: a stratified 80/20 split into train (560) and test (140). Every model is
trained on train and generates as many cells per type as test has. The real-vs-real noise floor
is a disjoint real set of the same size and type make-up: ``floor`` cells drawn (stratified) from
train. The label-fidelity classifier is fitted on train minus the floor cells, so floor and test
cells are both out of sample for it ("real held-out" label accuracy). Metrics
(boltzkit.bio.sc_metrics.evaluate, on log1p(normalize_total 1e4) of counts, row-sum size
factors for real and generated cells alike): MMD^2 (PCA fitted on test + candidate pooled, with
permutation p-value), W2, energy distance, kNN / logistic real-vs-generated AUC, label accuracy,
per-type mean / variance / dispersion correlations, marker Jaccard@20, gene-gene correlation
error over the top-50 genes (all cells, and within each type with >= 10 test cells).

Methods: ``sc_latent`` (NB autoencoder + latent diffusion, the default for counts), the
baselines of boltzkit.bio.sc_baselines (per-gene NB, conditional NB-VAE, Gaussian-PCA, and
scVI when scvi-tools is installed), and ``sc_diffusion`` (gene-space diffusion; on the seeds of
``--diffusion-seeds`` only, it is the slow one on CPU).

Writes benchmarks/results/single_cell.json and, for seed 0, single_cell_umap.png (real and
generated cells on one UMAP, coloured by type and by origin), single_cell_meanvar.png
(per-gene mean-variance of counts, real vs each model) and single_cell_dotplot.png (marker
dot plot, real vs sc_latent).

    python benchmarks/single_cell.py                  # 3 seeds (~15 CPU-min on a busy core)
    python benchmarks/single_cell.py --quick          # smoke run (1 seed, few steps)
    python benchmarks/single_cell.py --tune           # latent size / AE steps / KL / prior steps /
                                                      # guidance sweep on the seed-0 split (~30 CPU-min)
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from boltzkit.bio.single_cell import metrics as sc_metrics
from boltzkit.bio.single_cell.baselines import (ConditionalVAEBaseline, GaussianPCABaseline,
                                       NegativeBinomialBaseline, ScVIBaseline)
from boltzkit.bio.single_cell import as_target, log_normalize, pbmc68k
from boltzkit.bio.single_cell.latent import SCLatentDiffusion
from boltzkit.bio.single_cell.diffusion import SCDiffusion

OUT = Path(__file__).parent / "results"
HIGHER_BETTER = {"mmd2_pvalue", "label_accuracy", "label_macro_f1", "mean_pearson", "mean_spearman",
                 "var_pearson", "var_spearman", "disp_pearson", "mean_pearson_all", "var_pearson_all",
                 "marker_jaccard"}
KEYS = ["mmd2", "mmd2_pvalue", "w2", "energy_distance", "auc_knn", "auc_logreg", "label_accuracy",
        "mean_pearson", "var_pearson", "disp_pearson", "marker_jaccard", "corr_error", "corr_error_within",
        "train_s", "sample_s"]


def lognorm(counts):
    return log_normalize(counts)  # row-sum size factors, scanpy's normalize_total(1e4) + log1p


def split(ds, seed):
    """train / test (stratified 80/20) and a floor set drawn from train with test's type counts."""
    train, test = ds.split(0.2, seed=seed)
    rng = np.random.default_rng(10_000 + seed)
    want = test.label_counts()
    floor_idx = np.concatenate([rng.choice(np.flatnonzero(train.codes == c), want[name], replace=False)
                                for c, name in enumerate(train.categories)])
    rest = np.setdiff1d(np.arange(train.n_cells), floor_idx)
    return train, test, train.subset(floor_idx, name="floor"), train.subset(rest, name="classifier")


def make_latent(seed, args, **kw):
    opts = dict(latent=args.latent, ae_steps=args.ae_steps, n_steps=args.prior_steps,
                guidance=args.guidance, sampling_steps=args.latent_sampling_steps)
    opts.update(kw)
    return SCLatentDiffusion(seed=seed, device=args.device, progress=False, **opts)


def run_method(name, train, test_counts, seed, args):
    torch.set_num_threads(args.threads)  # scanpy / scikit-learn calls can reset torch's thread count
    t0 = time.perf_counter()
    extra = {}
    if name in ("sc_latent", "sc_diffusion"):
        if name == "sc_latent":
            model = make_latent(seed, args).fit(train)
        else:
            model = SCDiffusion(seed=seed, device=args.device, progress=False, n_steps=args.diffusion_steps,
                                sampling_steps=args.sampling_steps).fit(train)
        t1 = time.perf_counter()
        res = model.generate(condition=test_counts)
        x, labels = res.samples.numpy().astype(np.float64), np.asarray(res.config["labels"])
        extra = {"n_params": model.info["n_params"]}
    else:
        cls = {"gaussian_pca": GaussianPCABaseline, "negative_binomial": NegativeBinomialBaseline,
               "conditional_vae": ConditionalVAEBaseline, "scvi": ScVIBaseline}[name]
        kw = ({"n_steps": args.vae_steps} if name == "conditional_vae" else
              {"max_epochs": args.scvi_epochs} if name == "scvi" else {})
        model = cls(seed=seed, **kw).fit(train)
        t1 = time.perf_counter()
        x, labels = model.generate(test_counts)
    t2 = time.perf_counter()
    return x, labels, {"train_s": t1 - t0, "sample_s": t2 - t1, **extra}


def evaluate(clf, test, x_counts, labels, seed, args, markers=True):
    torch.set_num_threads(args.threads)
    emb = sc_metrics.CellEmbedding(lognorm(clf.x), 50)
    return sc_metrics.evaluate(lognorm(clf.x), clf.labels, lognorm(test.x), test.labels,
                               lognorm(x_counts), labels, test.gene_names, seed=seed,
                               n_perm=args.n_perm, min_cells=args.min_cells, markers=markers, embedding=emb)


def summarize(runs):
    keys = sorted({k for r in runs for k, v in r.items() if isinstance(v, (int, float))})
    return {k: {"mean": float(np.nanmean([r[k] for r in runs if k in r])),
                "std": float(np.nanstd([r[k] for r in runs if k in r]))} for k in keys}


# ---------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figures(test, generated: dict, out_dir: Path, label_key="bulk_labels"):
    """UMAP (type / origin), mean-variance and marker dot plot from real test + generated cells."""
    import anndata as ad
    import pandas as pd
    import scanpy as sc

    plt = _plt()
    threads = torch.get_num_threads()
    x, lab = generated["sc_latent"]
    real = ad.AnnData(test.x.copy())
    real.obs[label_key] = pd.Categorical(test.labels, categories=test.categories)
    real.obs["origin"] = "real"
    gen = ad.AnnData(__import__("scipy.sparse", fromlist=["csr_matrix"]).csr_matrix(x.astype(np.float32)))
    gen.obs[label_key] = pd.Categorical(lab, categories=test.categories)
    gen.obs["origin"] = "generated (sc_latent)"
    both = ad.concat([real, gen], index_unique="-")
    both.var_names = test.gene_names
    both.layers["counts"] = both.X.copy()
    sc.pp.normalize_total(both, target_sum=1e4)
    sc.pp.log1p(both)
    sc.pp.pca(both, n_comps=30)
    sc.pp.neighbors(both, random_state=0)
    sc.tl.umap(both, random_state=0)
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    sc.pl.umap(both, color=label_key, ax=axes[0], show=False, s=25, title="cell type")
    sc.pl.umap(both, color="origin", ax=axes[1], show=False, s=25, title="origin (real test vs generated)")
    fig.suptitle("PBMC68k: real held-out cells and sc_latent cells on one UMAP (PCA on both)")
    fig.tight_layout()
    fig.savefig(out_dir / "single_cell_umap.png", dpi=110)
    plt.close(fig)
    # per-gene mean-variance of counts
    def mv(c):
        c = np.asarray(c.toarray() if hasattr(c, "toarray") else c, dtype=np.float64)
        return c.mean(0), c.var(0)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    m, v = mv(test.x)
    ax.loglog(m, v, "k.", ms=3, label="real test")
    for (name, (xc, _)), col in zip(generated.items(), ("C3", "C0", "C2", "C1", "C4", "C5")):
        gm, gv = mv(xc)
        ax.loglog(gm, gv, ".", ms=2.5, color=col, alpha=0.7, label=name)
    ax.loglog([1e-3, 1e2], [1e-3, 1e2], ":", color="0.5", label="Poisson (var = mean)")
    ax.set_xlabel("per-gene mean count"), ax.set_ylabel("per-gene variance")
    ax.set_title("mean-variance of counts (all types)")
    ax.legend(fontsize=7, markerscale=3)
    fig.tight_layout()
    fig.savefig(out_dir / "single_cell_meanvar.png", dpi=110)
    plt.close(fig)
    # marker dot plot: top-3 real markers of each type with >= 10 test cells, real vs generated
    keep = [c for c, n in test.label_counts().items() if n >= 10]
    sub = both[both.obs[label_key].isin(keep)].copy()
    sub.obs[label_key] = sub.obs[label_key].cat.remove_unused_categories()
    realsub = sub[sub.obs["origin"] == "real"].copy()
    sc.tl.rank_genes_groups(realsub, label_key, method="wilcoxon", n_genes=3)
    markers = {g: list(realsub.uns["rank_genes_groups"]["names"][g][:3]) for g in keep}
    sub.obs["group"] = pd.Categorical([f"{t} | {'real' if o == 'real' else 'gen'}" for t, o in
                                       zip(sub.obs[label_key], sub.obs["origin"])])
    dp = sc.pl.dotplot(sub, markers, groupby="group", show=False, return_fig=True)
    dp.savefig(out_dir / "single_cell_dotplot.png", dpi=110)
    plt.close("all")
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------- tuning
def tune(ds, args):
    """Seed-0 split: for each ``latent:ae_steps:ae_kl`` in ``--tune-configs``, one sc_latent run
    evaluated at the prior checkpoints ``--tune-steps``; guidance ``--tune-guidance`` on the
    last checkpoint of the first config. MMD^2 with 50 permutations, no marker metric."""
    train, test, floor_set, clf = split(ds, 0)
    want = test.label_counts()
    keys = ("mmd2", "auc_knn", "auc_logreg", "label_accuracy", "corr_error_within", "var_pearson", "disp_pearson")
    targs = argparse.Namespace(**{**vars(args), "n_perm": 50})
    floor = evaluate(clf, test, floor_set.x, floor_set.labels, 0, targs, markers=False)
    rows = [{"what": "floor", **{k: floor[k] for k in keys}}]
    print(rows[-1], flush=True)
    for ci, conf in enumerate(args.tune_configs):
        latent, ae_steps, kl = conf.split(":")
        latent, ae_steps, kl = int(latent), int(ae_steps), float(kl)
        model = make_latent(0, args, latent=latent, ae_steps=ae_steps, ae_kl=kl, n_steps=max(args.tune_steps))
        t0 = time.perf_counter()
        guid = args.tune_guidance if ci == 0 else [args.guidance]
        for steps in sorted(args.tune_steps):
            model.fit(train, n_steps=ae_steps + steps)
            for w in (guid if steps == max(args.tune_steps) else [args.guidance]):
                object.__setattr__(model.config, "guidance", float(w))
                res = model.generate(condition=want)
                m = evaluate(clf, test, res.samples.numpy().astype(np.float64), res.config["labels"], 0, targs,
                             markers=False)
                rows.append({"latent": latent, "ae_steps": ae_steps, "ae_kl": kl, "prior_steps": steps,
                             "guidance": float(w), "wall_s": time.perf_counter() - t0, **{k: m[k] for k in keys}})
                print(rows[-1], flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tune", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["sc_latent", "negative_binomial", "conditional_vae",
                                                     "gaussian_pca", "scvi"])
    ap.add_argument("--latent", type=int, default=SCLatentDiffusion.Config.latent)
    ap.add_argument("--ae-steps", type=int, default=SCLatentDiffusion.Config.ae_steps)
    ap.add_argument("--prior-steps", type=int, default=SCLatentDiffusion.Config.n_steps)
    ap.add_argument("--guidance", type=float, default=SCLatentDiffusion.Config.guidance)
    ap.add_argument("--sampling-steps", type=int, default=100, help="sc_diffusion's sampling steps")
    ap.add_argument("--latent-sampling-steps", type=int, default=SCLatentDiffusion.Config.sampling_steps,
                    help="sc_latent's sampling steps (default: its config's, all diffusion steps)")
    ap.add_argument("--diffusion-steps", type=int, default=2000)
    ap.add_argument("--diffusion-seeds", type=int, nargs="*", default=[0],
                    help="seeds on which sc_diffusion (gene-space diffusion, slow on CPU) also runs")
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--scvi-epochs", type=int, default=200)
    ap.add_argument("--tune-configs", nargs="+", default=["8:800:1e-3", "16:800:1e-3", "32:800:1e-3",
                                                          "8:1500:1e-3", "8:800:0.1", "4:800:1e-3"],
                    help="latent:ae_steps:ae_kl of each tuning run")
    ap.add_argument("--tune-steps", type=int, nargs="+", default=[500, 1500])
    ap.add_argument("--tune-guidance", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    ap.add_argument("--n-perm", type=int, default=200)
    ap.add_argument("--min-cells", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.ae_steps, args.prior_steps, args.vae_steps, args.n_perm = [0], 100, 100, 100, 50
        args.scvi_epochs, args.diffusion_steps = 5, 100
    if "scvi" in args.methods:
        try:
            import scvi  # noqa: F401
        except ImportError:
            print("scvi-tools is not installed: the scVI baseline is skipped")
            args.methods = [m for m in args.methods if m != "scvi"]
    torch.set_num_threads(args.threads)
    ds = as_target(pbmc68k(), label_key="bulk_labels", layer="counts")
    ds.name, ds.provenance = "pbmc68k", "real: 10x PBMC 68k reduced (700 cells), counts rebuilt from raw"
    env = {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
           "torch": torch.__version__, "device": args.device,
           "note": "CPU shared by several jobs: timings are under contention"}
    if args.tune:
        rows = tune(ds, args)
        path = Path(args.out or OUT / "single_cell_tune.json")
        path.write_text(json.dumps({"env": env, "args": vars(args), "rows": rows}, indent=1, default=float))
        print(f"wrote {path}")
        return
    out = {"env": env, "args": vars(args), "protocol": __doc__.split("Methods:")[0].strip()}
    print(f"== {ds}")
    with_diffusion = bool(args.diffusion_seeds) and "sc_diffusion" not in args.methods
    per = {m: [] for m in ["floor", *args.methods, *(["sc_diffusion"] if with_diffusion else [])]}
    for seed in args.seeds:
        train, test, floor_set, clf = split(ds, seed)
        want = test.label_counts()
        floor = evaluate(clf, test, floor_set.x, floor_set.labels, seed, args)
        per["floor"].append(floor)
        gens = {}
        methods = list(args.methods) + (["sc_diffusion"] if with_diffusion and seed in args.diffusion_seeds else [])
        for mname in methods:
            x, labels, timing = run_method(mname, train, want, seed, args)
            gens[mname] = (x, labels)
            met = evaluate(clf, test, x, labels, seed, args)
            met.update(timing)
            per[mname].append(met)
            print(f"  seed {seed} {mname:18s} train {timing['train_s']:6.1f}s  mmd2 {met['mmd2']:.4f} "
                  f"(floor {floor['mmd2']:.4f})  auc_knn {met['auc_knn']:.3f} ({floor['auc_knn']:.3f})  "
                  f"label_acc {met['label_accuracy']:.3f} ({floor['label_accuracy']:.3f})  corr_within "
                  f"{met['corr_error_within']:.2f} ({floor['corr_error_within']:.2f})", flush=True)
        gens.pop("sc_diffusion", None)
        if seed == args.seeds[0] and "sc_latent" in gens:
            out_dir = Path(args.out).parent if args.out else OUT
            out_dir.mkdir(parents=True, exist_ok=True)
            figures(test, gens, out_dir)
    summary = {m: summarize(r) for m, r in per.items()}
    out.update(dataset=str(ds), provenance=ds.provenance, runs=per, summary=summary,
               ratio_to_floor=ratios(summary))
    print_table(summary)
    path = Path(args.out or OUT / "single_cell.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=float))
    print(f"\nwrote {path}")


def ratios(summary):
    """Per method, how far each metric sits from the real-vs-real floor: for metrics whose floor
    is near 0 or negative (MMD^2, energy distance, the AUCs' distance from 0.5) the excess over
    the floor, also in units of the floor's seed spread for MMD^2; for errors (W2, correlation
    errors) value / floor; for correlations and Jaccard (1 - value) / (1 - floor); label accuracy
    minus the real held-out cells' (too typical > 0)."""
    f = summary["floor"]
    out = {}
    for m, s in summary.items():
        if m == "floor":
            continue
        r = {}
        for k in ("mmd2", "energy_distance", "auc_knn", "auc_logreg"):
            r[f"{k}_minus_floor"] = s[k]["mean"] - f[k]["mean"]
        r["mmd2_excess_in_floor_sd"] = (s["mmd2"]["mean"] - f["mmd2"]["mean"]) / max(f["mmd2"]["std"], 1e-6)
        for k in ("w2", "corr_error", "corr_error_within"):
            r[f"{k}_over_floor"] = s[k]["mean"] / f[k]["mean"]
        for k in ("mean_pearson", "var_pearson", "disp_pearson", "marker_jaccard"):
            r[f"{k}_gap_over_floor"] = (1 - s[k]["mean"]) / max(1 - f[k]["mean"], 1e-6)
        r["label_accuracy_minus_real"] = s["label_accuracy"]["mean"] - f["label_accuracy"]["mean"]
        out[m] = r
    return out


def print_table(summary):
    methods = list(summary)
    print("\npbmc68k: mean +- std over seeds (floor = held-out real cells vs the real test cells)")
    print(f"{'metric':18s}" + "".join(f"{m[:17]:>19s}" for m in methods))
    for k in KEYS:
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
