"""TR2-D2 vs baselines on real sequence data at equal reward calls (CPU size; not run in CI).

Tasks
-----
* ``peptides`` (primary): modlamp AMP-vs-UniProt peptides (length <= 48, right-padded), a masked
  diffusion model pretrained on them, reward = P(AMP) from a logistic oracle trained on one half
  of the data; evaluated with a second oracle trained on the other half.
* ``ars``: logomaker's yeast ARS1 library (150 bp), reward = an additive enrichment regressor
  (one half), evaluated with a second one (other half).

Methods (same number of fine-tuning reward calls, ``steps / resample_every * n_expansions *
n_children``): ``pretrained``; ``best_of_n`` (N = that budget of pretrained samples, keep the top
``n_top``); ``onpolicy_wdce`` (search="none", buffer="all": MDNS-style WDCE);
``onpolicy_topk`` (search="none", buffer="topk"); ``tr2d2`` (search="mcts", buffer="topk", the
paper's); ``tr2d2_all`` (search="mcts", buffer="all").

Metrics per run: fine-tune / evaluation oracle reward (mean, median) and their gap, the ELBO under
the pretrained model (mean, median, and per residue: padded peptides get a higher ELBO the
shorter they are, so the raw ELBO confounds length with likelihood), the mean length, diversity (unique fraction, mean pairwise Hamming), novelty
against the training data, ESS fraction of the final importance weights for p*, wall time.

Usage::

    python benchmarks/tr2d2_sequences.py                     # the small configuration
    python benchmarks/tr2d2_sequences.py --tasks peptides --seeds 0 1 2 --alphas 0.1 1.0 \
        --out benchmarks/results/tr2d2_peptides.json

Writes the JSON (default ``benchmarks/results/tr2d2_sequences.json``) and a PNG beside it. The
pretrained models are cached in ``benchmarks/results/cache/``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import boltzkit as bk
from boltzkit.bio.sequences.metrics import best_of_n, diversity, novelty
from boltzkit.bio.sequences.oracles import amp_oracles, ars_oracles
from boltzkit.samplers.tr2d2 import TR2D2

RESULTS = Path(__file__).parent / "results"
METHODS = {"onpolicy_wdce": dict(search="none", buffer="all"),
           "onpolicy_topk": dict(search="none", buffer="topk"),
           "tr2d2": dict(search="mcts", buffer="topk"),
           "tr2d2_all": dict(search="mcts", buffer="all")}

TASKS = {
    "peptides": dict(pretrain=dict(net="transformer", hidden=64, n_layers=2, n_heads=4, n_steps=1500,
                                   batch_size=64, lr=2e-3),
                     n_unmask_steps=16, lr=3e-4),
    "ars": dict(pretrain=dict(net="transformer", hidden=64, n_layers=2, n_heads=4, n_steps=800,
                              batch_size=64, lr=2e-3),
                n_unmask_steps=25, lr=3e-4),
}


def load_task(name, seed=0):
    if name == "peptides":
        data = bk.datasets.peptides()
        ft, ev = amp_oracles(data, seed=seed)
    else:
        data = bk.datasets.ars_dna(20_000, seed=seed)
        ft, ev = ars_oracles(data, seed=seed)
    return data, ft, ev


def pretrained_model(name, data, cfg, cache: Path):
    path = cache / f"{name}_mdm.pt"
    if path.exists():
        return bk.MaskedDiffusion.load(path)
    t0 = time.perf_counter()
    model = bk.MaskedDiffusion.pretrain(data, seed=0, device="cpu", progress=False, **cfg["pretrain"])
    model.history["pretrain_wall_time_s"] = [time.perf_counter() - t0]
    model.save(path)
    return model


def evaluate(x, model, ft, ev, data, *, seed, n_elbo=128):
    """Metrics of samples x; the ELBO (one random order each) on the first n_elbo samples."""
    with torch.no_grad():
        rf, re = ft(x).double(), ev(x).double()
        elbo = model.elbo(x[:n_elbo], n_mc=1, seed=seed)
    # residues = non-pad positions; the ELBO of padded sequences grows as they get shorter
    res = (x[:n_elbo] != model.domain.alphabet.index(model.pad)).sum(1).double() if model.pad else \
        torch.full((min(n_elbo, x.shape[0]),), float(x.shape[1]), dtype=torch.float64)
    return {"ft_mean": float(rf.mean()), "ft_median": float(rf.median()),
            "mean_length": float(res.mean()), "elbo_per_residue_mean": float((elbo / res.clamp_min(1)).mean()),
            "eval_mean": float(re.mean()), "eval_median": float(re.median()),
            "gap_mean": float(rf.mean() - re.mean()),
            "elbo_mean": float(elbo.mean()), "elbo_median": float(elbo.median()),
            **diversity(x), "novelty": novelty(x, data.tokens)}


def run(args):
    torch.set_num_threads(1)
    cache = RESULTS / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    out = {"config": vars(args), "tasks": {}}
    for task in args.tasks:
        cfg = TASKS[task]
        data, ft, ev = load_task(task)
        model = pretrained_model(task, data, cfg, cache)
        model.n_unmask_steps = cfg["n_unmask_steps"]
        budget = args.steps // args.resample_every * args.n_expansions * args.n_children
        info = {"n_data": len(data), "length": data.length, "reward_call_budget": budget,
                "oracles": {"finetune": ft.info, "eval": ev.info}, "runs": []}
        print(f"[{task}] {len(data)} sequences, budget {budget} reward calls", flush=True)
        for seed in args.seeds:
            t0 = time.perf_counter()
            x = model.sample(args.n_eval, seed=1000 + seed)
            info["runs"].append({"method": "pretrained", "seed": seed, "alpha": None,
                                 "wall_s": time.perf_counter() - t0, "reward_calls": 0,
                                 **evaluate(x, model, ft, ev, data, seed=seed)})
            t0 = time.perf_counter()
            top = best_of_n(model, ft, budget, args.n_top, seed=2000 + seed)
            info["runs"].append({"method": "best_of_n", "seed": seed, "alpha": None,
                                 "wall_s": time.perf_counter() - t0, "reward_calls": budget,
                                 **evaluate(top, model, ft, ev, data, seed=seed)})
            for alpha in args.alphas:
                target = bk.RewardTarget(model, ft, alpha=alpha, name=f"{task}_finetune_oracle")
                for method in args.methods:
                    t0 = time.perf_counter()
                    sampler = TR2D2(device="cpu", seed=seed, progress=False, lr=cfg["lr"],
                                    n_expansions=args.n_expansions, n_children=args.n_children,
                                    parallel=args.parallel, resample_every=args.resample_every,
                                    n_replicates=args.n_replicates, elbo_orders=0, **METHODS[method])
                    sampler.fit(target, n_steps=args.steps)
                    res = sampler.sample(args.n_eval)
                    wall = time.perf_counter() - t0
                    h = sampler.history
                    run = {"method": method, "seed": seed, "alpha": alpha, "wall_s": wall,
                           "reward_calls": int(res.diagnostics["reward_calls"]),
                           "ess_frac_final": float(res.diagnostics["ess_frac"]),
                           "log_z": res.log_z,
                           **evaluate(res.samples, model, ft, ev, data, seed=seed),
                           "curve_reward_calls": h["reward_calls"][::args.resample_every],
                           "curve_rollout_reward": h["rollout_mean_reward"][::args.resample_every],
                           "curve_buffer_ess": h["buffer_ess_frac"][::args.resample_every],
                           "examples": res.diagnostics["strings"][:5]}
                    info["runs"].append(run)
                    print(f"  seed {seed} alpha {alpha} {method:14s} ft {run['ft_mean']:.3f} eval "
                          f"{run['eval_mean']:.3f} elbo {run['elbo_mean']:.1f} uniq {run['unique_fraction']:.2f} "
                          f"ess {run['ess_frac_final']:.3f} ({wall:.0f} s)", flush=True)
        out["tasks"][task] = info
        write(out, args.out)
    return out


def summarize(runs):
    """mean and sd over seeds per (method, alpha)."""
    groups = {}
    for r in runs:
        groups.setdefault((r["method"], r["alpha"]), []).append(r)
    rows = []
    for (method, alpha), rs in groups.items():
        row = {"method": method, "alpha": alpha, "n_seeds": len(rs)}
        for k in ("ft_mean", "eval_mean", "eval_median", "gap_mean", "elbo_mean", "elbo_median",
                  "mean_length", "elbo_per_residue_mean", "unique_fraction", "mean_hamming", "novelty",
                  "wall_s"):
            v = np.array([r.get(k, np.nan) for r in rs], dtype=float)
            row[k] = float(v.mean())
            row[k + "_sd"] = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
        if "ess_frac_final" in rs[0]:
            row["ess_frac_final"] = float(np.mean([r["ess_frac_final"] for r in rs]))
        rows.append(row)
    return rows


def write(out, path):
    for info in out["tasks"].values():
        info["summary"] = summarize(info["runs"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=float))
    plot(out, path.with_suffix(".png"))


def plot(out, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(out["tasks"])
    fig, axes = plt.subplots(len(tasks), 3, figsize=(15, 4.2 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        info = out["tasks"][task]
        summ = info["summary"]
        labels = [f"{s['method']}" + ("" if s["alpha"] is None else f"\na={s['alpha']}") for s in summ]
        pos = np.arange(len(summ))
        row[0].bar(pos - 0.2, [s["ft_mean"] for s in summ], 0.4, yerr=[s["ft_mean_sd"] for s in summ],
                   label="fine-tune oracle")
        row[0].bar(pos + 0.2, [s["eval_mean"] for s in summ], 0.4, yerr=[s["eval_mean_sd"] for s in summ],
                   label="eval oracle")
        row[0].set_xticks(pos, labels, rotation=60, fontsize=7)
        row[0].set_title(f"{task}: mean reward (mean +- sd over seeds)")
        row[0].legend(fontsize=8)
        for s in summ:
            row[1].errorbar(s["elbo_mean"], s["eval_mean"], xerr=s["elbo_mean_sd"], yerr=s["eval_mean_sd"],
                            fmt="o", label=s["method"] + ("" if s["alpha"] is None else f" a={s['alpha']}"))
        row[1].set_xlabel("ELBO under the pretrained model (mean)")
        row[1].set_ylabel("eval-oracle reward (mean)")
        row[1].legend(fontsize=6)
        row[1].set_title("reward vs likelihood")
        for r in info["runs"]:
            if "curve_reward_calls" in r and r["seed"] == out["config"]["seeds"][0]:
                row[2].plot(r["curve_reward_calls"], r["curve_rollout_reward"],
                            label=f"{r['method']} a={r['alpha']}")
        row[2].set_xlabel("reward calls")
        row[2].set_ylabel("mean reward of the refresh's rollouts")
        row[2].set_title("training rollouts (first seed)")
        row[2].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["peptides", "ars"], choices=list(TASKS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--alphas", nargs="+", type=float, default=[0.1, 1.0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--resample-every", type=int, default=5)
    p.add_argument("--n-expansions", type=int, default=8)
    p.add_argument("--n-children", type=int, default=16)
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--n-replicates", type=int, default=2)
    p.add_argument("--n-eval", type=int, default=256)
    p.add_argument("--n-top", type=int, default=64)
    p.add_argument("--out", default=str(RESULTS / "tr2d2_sequences.json"))
    args = p.parse_args()
    t0 = time.perf_counter()
    run(args)
    print(f"done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
