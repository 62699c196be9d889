"""Stem vs a regressor vs nearest-neighbour retrieval on semi-synthetic tissue with a known law.

DATA: semi-synthetic -- NOT real H&E / spatial transcriptomics. The images are scikit-image's
real IHC colon image (split 70% train / 30% test by x) plus procedural H&E-like slides; the
expression is drawn from the documented law of ``boltzkit.bio.synthetic`` (image features ->
NB counts, with a hidden state that makes many spots bimodal). Train: procedural slides 1 and
2 + IHC left; test: procedural slide 3 + IHC right (leave-slide-out). Because the law is known,
the oracle conditional mean E[x | patch] and fresh draws from the true p(x | patch) are
available; they give the ceiling for point metrics and the reference for calibration.

Per method and seed (models use the offline stain-statistics encoder; the paper's UNI/CONCH
encoders are gated downloads and are not used):

* point metrics of the per-spot mean vs the observed test expression: PCC (all genes; top-10
  by true variance; top-10 by the model's own PCC, the paper's optimistic choice), MSE, MAE,
  RVD; and the MSE to the oracle conditional mean;
* a single sample per spot: RVD (does a draw keep the spot-to-spot variance?);
* calibration against 200 draws of the true law per spot: energy distance and coverage of the
  central 80% interval, with the truth-vs-truth floor at the same number of samples;
* bimodal spots (0.25 < pi < 0.75): share showing both modes, |mixture weight - pi|, and the
  correlation of the mixture weight with pi over all spots;
* ARI of k-means (k = 3) on the predicted means against the region map;
* wall time of training and sampling.

Writes ``benchmarks/results/stem_spatial.json`` and ``stem_spatial.png`` (expression maps over
the test images). ``--quick`` is a smoke run (minutes). Defaults take about half an hour on a
loaded 2-core CPU (about 10 minutes per seed).

    python benchmarks/stem_spatial.py
    python benchmarks/stem_spatial.py --quick
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from boltzkit._utils import versions
from boltzkit.bio.spatial import metrics
from boltzkit.bio.spatial.baselines import EmbeddingRegressor, NearestNeighbourRetrieval
from boltzkit.bio.spatial.synthetic import benchmark_split
from boltzkit.datasets import SpatialDataset
from boltzkit.bio.spatial.stem import Stem

RESULTS = Path(__file__).resolve().parent / "results"
LABEL = ("semi-synthetic: real stained-tissue image (scikit-image IHC colon) + procedural images, "
         "synthetic expression from a known law; not real H&E / spatial transcriptomics data")


def evaluate(samples: np.ndarray, test: list, truth: dict) -> dict:
    """All metrics for per-spot samples (n, k, G) of the concatenated test slides."""
    obs, cm, draws, pi, modes, regions = (truth[k] for k in ("obs", "cond_mean", "draws", "pi", "modes", "regions"))
    mean = samples.mean(1)
    out = metrics.point_metrics(mean, obs, ks=(10,))
    out["mse_to_oracle_mean"] = metrics.mse(mean, cm)
    out["rvd_single_draw"] = metrics.relative_variance_distance(samples[:, 0], obs)
    k = samples.shape[1]
    if k >= 2:
        out["energy_distance"] = float(metrics.energy_distance(samples, draws).mean())
        out["coverage80"] = metrics.interval_coverage(samples, draws)
    law = test[0].law
    score = samples[..., law.module].mean(-1)
    d0, d1 = np.abs(score - modes[:, :1]), np.abs(score - modes[:, 1:])
    high = (d1 < d0).mean(1)
    bim = (pi > 0.25) & (pi < 0.75)
    if k >= 2:
        out["bimodal_spots_both_modes"] = float(((high[bim] >= 0.1) & (high[bim] <= 0.9)).mean())
        out["mixture_weight_abs_error"] = float(np.abs(high[bim] - pi[bim]).mean())
        out["mixture_weight_corr_with_pi"] = float(np.corrcoef(high, pi)[0, 1])
    out["ari_kmeans3"] = metrics.adjusted_rand_index(metrics.kmeans(mean, 3, seed=0), regions)
    return out


def truth_info(test: list, n_draws: int) -> dict:
    obs = np.concatenate([t.dataset.expression for t in test])
    cm = np.concatenate([t.conditional_mean(m=2000) for t in test])
    draws = np.concatenate([t.truth_samples(n_draws, seed=11) for t in test])
    pi = np.concatenate([t.pi for t in test])
    modes = np.concatenate([t.law.module_modes(t.features) for t in test])
    regions = np.concatenate([t.regions for t in test])
    return {"obs": obs, "cond_mean": cm, "draws": draws, "pi": pi, "modes": modes, "regions": regions}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-genes", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--sampling-steps", type=int, default=50)
    ap.add_argument("--size", default="cpu")
    ap.add_argument("--standardize", action="store_true")
    ap.add_argument("--no-ihc", action="store_true", help="procedural slides only (no scikit-image)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, short training")
    ap.add_argument("--out", default=str(RESULTS / "stem_spatial.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.samples, args.sampling_steps = [0], 300, 8, 20
    torch.set_num_threads(1)

    train, test = benchmark_split(n_genes=args.n_genes, use_ihc=not args.no_ihc)
    train_ds = SpatialDataset.concat([t.dataset for t in train], name="train")
    test_ds = SpatialDataset.concat([t.dataset for t in test], name="test")
    truth = truth_info(test, 200)
    k = args.samples
    floor = truth_info(test, k)  # truth draws used as the "model": the floor at k samples
    report = {"data": LABEL, "train_slides": [t.dataset.name for t in train],
              "test_slides": [t.dataset.name for t in test], "n_train_spots": train_ds.n_spots,
              "n_test_spots": test_ds.n_spots, "n_genes": args.n_genes, "samples_per_spot": k,
              "args": vars(args), "versions": versions(), "cpu": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "runs": {}}
    report["oracle"] = evaluate(truth["cond_mean"][:, None].repeat(2, 1), test, truth)
    report["oracle"].update({key: v for key, v in evaluate(floor["draws"], test, truth).items()
                             if key in ("energy_distance", "coverage80", "bimodal_spots_both_modes",
                                        "mixture_weight_abs_error", "mixture_weight_corr_with_pi",
                                        "rvd_single_draw")})
    report["oracle"]["note"] = ("point metrics: the exact conditional mean; distributional metrics: "
                                f"{k} fresh draws of the true law (the floor)")
    print(f"[{LABEL}]\ntrain {train_ds.n_spots} spots, test {test_ds.n_spots} spots, {args.n_genes} genes")
    maps = {}
    for seed in args.seeds:
        runs = {}
        t0 = time.perf_counter()
        stem = Stem(seed=seed, device="cpu", n_steps=args.steps, size=args.size,
                    sampling_steps=args.sampling_steps, standardize=args.standardize).fit(train_ds)
        t_fit = time.perf_counter() - t0
        res = stem.predict(test_ds, n_samples=k)
        s = res.samples.numpy()
        runs["stem"] = {**evaluate(s, test, truth), "train_wall_s": t_fit,
                        "sample_wall_s": res.diagnostics["sample_wall_time_s"], "n_params": res.diagnostics["n_params"],
                        "final_loss": float(np.mean(stem.history["loss"][-100:]))}
        t0 = time.perf_counter()
        reg = EmbeddingRegressor(n_steps=args.steps, seed=seed).fit(train_ds)
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        p = reg.predict(test_ds)
        runs["regressor"] = {**evaluate(p[:, None].repeat(2, 1), test, truth), "train_wall_s": t_fit,
                             "sample_wall_s": time.perf_counter() - t0}
        point = p[:, None].repeat(k, 1)  # a point mass, as k identical "samples"
        runs["regressor"]["energy_distance"] = float(metrics.energy_distance(point, truth["draws"]).mean())
        runs["regressor"]["coverage80"] = metrics.interval_coverage(point, truth["draws"])
        t0 = time.perf_counter()
        knn = NearestNeighbourRetrieval(k=k).fit(train_ds)
        ks = knn.sample(test_ds)
        runs["retrieval"] = {**evaluate(ks, test, truth), "train_wall_s": 0.0,
                             "sample_wall_s": time.perf_counter() - t0}
        report["runs"][str(seed)] = runs
        if seed == args.seeds[0]:
            maps = {"stem": s.mean(1), "stem_draw": s[:, 0], "regressor": p, "retrieval": ks.mean(1),
                    "stem_high": s, "history": stem.history["loss"]}
        print(f"seed {seed}: " + "; ".join(f"{m}: PCC {r['pcc_all']:.3f} MSE {r['mse']:.3f} "
                                             f"RVD(draw) {r['rvd_single_draw']:.3f}" for m, r in runs.items()))
    # mean +- std over seeds
    summary = {}
    for method in ("stem", "regressor", "retrieval"):
        keys = report["runs"][str(args.seeds[0])][method].keys()
        summary[method] = {}
        for key in keys:
            vals = np.array([report["runs"][str(s)][method][key] for s in args.seeds], dtype=float)
            summary[method][key] = {"mean": float(vals.mean()),
                                    "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
    report["summary"] = summary
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    plot(test, truth, maps, report, out.with_suffix(".png"))
    _print_table(report)


def _print_table(report):
    rows = ["pcc_all", "pcc_top10_by_true_variance", "pcc_top10_by_model", "mse", "mae", "rvd",
            "mse_to_oracle_mean", "rvd_single_draw", "energy_distance", "coverage80",
            "bimodal_spots_both_modes", "mixture_weight_abs_error", "mixture_weight_corr_with_pi",
            "ari_kmeans3", "train_wall_s", "sample_wall_s"]
    print(f"\n{'metric':<30}{'oracle':>10}" + "".join(f"{m:>22}" for m in report["summary"]))
    for r in rows:
        o = report["oracle"].get(r)
        line = f"{r:<30}{(f'{o:.3f}' if isinstance(o, float) else '-'):>10}"
        for m in report["summary"]:
            v = report["summary"][m].get(r)
            cell = f"{v['mean']:.3f} +- {v['std']:.3f}" if v else "-"
            line += f"{cell:>22}"
        print(line)


def plot(test, truth, maps, report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    law = test[0].law
    genes = [0, int(np.argmax(~law.module))]  # a module gene and an image-driven gene
    cols = [("observed", truth["obs"]), ("oracle E[x|patch]", truth["cond_mean"]),
            ("Stem mean", maps["stem"]), ("Stem one draw", maps["stem_draw"]),
            ("regressor", maps["regressor"]), ("retrieval mean", maps["retrieval"])]
    n_rows = len(test) * len(genes)
    fig, axes = plt.subplots(n_rows + 1, len(cols), figsize=(3 * len(cols), 3 * (n_rows + 1)))
    start = 0
    r = 0
    for t in test:
        n = t.dataset.n_spots
        sl = slice(start, start + n)
        for g in genes:
            vmin, vmax = np.quantile(truth["obs"][sl, g], [0.02, 0.98])
            for c, (title, arr) in enumerate(cols):
                ax = axes[r, c]
                ax.imshow(t.image)
                ax.scatter(*t.dataset.coords.T, c=arr[sl, g], s=10, cmap="viridis", vmin=vmin, vmax=vmax)
                ax.set_xticks([]), ax.set_yticks([])
                ax.set_title(f"{title}\n{t.dataset.name}, {law.gene_names[g]}", fontsize=8)
            r += 1
        start += n
    s = maps["stem_high"]
    score = s[..., law.module].mean(-1)
    modes = truth["modes"]
    high = (np.abs(score - modes[:, 1:]) < np.abs(score - modes[:, :1])).mean(1)
    ax = axes[-1, 0]
    ax.scatter(truth["pi"], high, s=5)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("true P(u=1 | patch)"), ax.set_ylabel("Stem share in high mode")
    ax = axes[-1, 1]
    bim = np.flatnonzero((truth["pi"] > 0.4) & (truth["pi"] < 0.6))[:1]
    if bim.size:
        i = bim[0]
        ax.hist(truth["draws"][i, :, law.module].mean(0), bins=30, density=True, alpha=0.5, label="true law")
        ax.hist(score[i], bins=15, density=True, alpha=0.5, label="Stem")
        ax.axvline(maps["regressor"][i, law.module].mean(), color="r", label="regressor")
        ax.set_title(f"module score, spot with pi={truth['pi'][i]:.2f}", fontsize=8)
        ax.legend(fontsize=7)
    ax = axes[-1, 2]
    ax.plot(np.convolve(maps["history"], np.ones(50) / 50, mode="valid"))
    ax.set_yscale("log"), ax.set_title("Stem training loss (50-step mean)", fontsize=8)
    for ax in axes[-1, 3:]:
        ax.axis("off")
    fig.suptitle(LABEL, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
